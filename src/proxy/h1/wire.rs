//! The HTTP/1.1 wire format of an upstream exchange (RFC 9112), as pure
//! functions over buffers: the request head written, the response head
//! parsed and its body's framing decided, chunks decoded.

use std::fmt::Write;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use crate::proxy::upstream::UPSTREAM_BUFFER_BYTES;

/// The longest response head (or trailer section) read: hyper's bound for
/// the same buffer (`max_buf_size`).
pub const MAX_HEAD_BYTES: usize = UPSTREAM_BUFFER_BYTES;
const _: () = assert!(MAX_HEAD_BYTES <= u16::MAX as usize + 1);
/// Header fields in a response head at most (hyper's client default).
const MAX_HEADERS: usize = 100;
/// A chunk-size line, extensions included, at most.
const MAX_CHUNK_LINE: usize = 1024;

/// What is wrong with what the upstream sent (or with the request body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    Head(httparse::Error),
    HeadTooLarge,
    BadHeader,
    BadContentLength,
    BadChunk,
    ClosedBeforeResponse,
    IncompleteBody,
    BodyTooShort,
    BodyTooLong,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Head(e) => write!(f, "malformed response head: {e}"),
            ProtocolError::HeadTooLarge => {
                write!(f, "response head over {MAX_HEAD_BYTES} bytes")
            }
            ProtocolError::BadHeader => f.write_str("invalid header field in the response"),
            ProtocolError::BadContentLength => f.write_str("invalid Content-Length"),
            ProtocolError::BadChunk => f.write_str("malformed chunked encoding"),
            ProtocolError::ClosedBeforeResponse => {
                f.write_str("connection closed before a response")
            }
            ProtocolError::IncompleteBody => f.write_str("connection closed mid-body"),
            ProtocolError::BodyTooShort => {
                f.write_str("request body shorter than its Content-Length")
            }
            ProtocolError::BodyTooLong => {
                f.write_str("request body longer than its Content-Length")
            }
        }
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
}

/// The request head, and its body's framing. `body`: `None` without a
/// body, else its exact length when known. The body is framed by the
/// client's `Content-Length` when it parses, else by its known length,
/// else chunked, and the head carries exactly one framing header for it
/// (whatever else the client sent under that name is dropped). POST, PUT
/// and PATCH without a body say `Content-Length: 0`, as nginx does.
/// `added`: fields written after the request's own (the caller keeps
/// their names out of the map).
pub fn encode_head<'n, 'v>(
    parts: &Parts,
    body: Option<Option<u64>>,
    added: impl Iterator<Item = (&'n str, &'v HeaderValue)> + Clone,
) -> (Bytes, BodyFraming) {
    // The client's `Content-Length`, if it parses (the server, `server::h1`
    // or hyper's for HTTP/2, checks the body against it); the head then says only what framing says.
    let sent = parts.headers.get(CONTENT_LENGTH);
    let had_length = sent.is_some();
    let sent_length = sent
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (framing, length) = match (body, sent_length) {
        (None, _) => {
            let needs =
                had_length || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
            (BodyFraming::Length(0), needs.then_some(0))
        }
        (Some(_), Some(n)) | (Some(Some(n)), None) => (BodyFraming::Length(n), Some(n)),
        (Some(None), None) => (BodyFraming::Chunked, None),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    let mut size = parts.method.as_str().len() + target.len() + 16 + 32;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    for (name, value) in added.clone() {
        size += name.len() + value.len() + 4;
    }
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    for (name, value) in added {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match (length, framing) {
        (Some(n), _) => {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        }
        (None, BodyFraming::Chunked) => out.put_slice(b"transfer-encoding: chunked\r\n"),
        (None, BodyFraming::Length(_)) => {}
    }
    out.put_slice(b"\r\n");
    (out.freeze(), framing)
}

/// A chunk's size line, after the CRLF that closes the previous chunk's
/// data when one is open.
pub fn chunk_size_line(close_previous: bool, len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + 16 + 2);
    if close_previous {
        out.put_slice(b"\r\n");
    }
    // Into the buffer directly: no string per chunk. Writing to a
    // `BytesMut` cannot fail.
    let _ = write!(out, "{len:x}\r\n");
    out.freeze()
}

/// The last chunk and the trailer section that ends a chunked body.
pub fn last_chunk(close_previous: bool, trailers: Option<&HeaderMap>) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    if close_previous {
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes more.
    Length(u64),
    Chunked(Chunk),
    /// At the connection's end.
    Eof,
    Done,
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    /// This many data bytes of the chunk left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// A response head, its body's framing, and whether the connection may
/// carry another exchange after it.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub decoder: Decoder,
    pub keep_alive: bool,
}

/// Parses a final response head from the front of `buf`, skipping interim
/// 1xx responses (but not 101); `Ok(None)` until the head is whole. The
/// head's headers go into `room`'s map (its allocation reused), which is
/// left empty.
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    room: &mut HeaderMap,
) -> Result<Option<Head>, ProtocolError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Where each field's name and value lie in the head, so that the
        // values become slices of one shared buffer (as in hyper), not
        // copies. u16: a head is at most 64 KiB; the array is small
        // because zeroing it is paid on every parse.
        let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
        let (len, code, version, count) = {
            let mut fields =
                [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                buf,
                &mut fields,
            ) {
                Ok(httparse::Status::Complete(len)) if len >= MAX_HEAD_BYTES => {
                    return Err(ProtocolError::HeadTooLarge);
                }
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ProtocolError::HeadTooLarge);
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
                Err(e) => return Err(ProtocolError::Head(e)),
            };
            let base = buf.as_ptr() as usize;
            // Within the head, so below MAX_HEAD_BYTES (checked above).
            let at = |p: *const u8| u16::try_from(p as usize - base).unwrap_or(u16::MAX);
            for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
                let name = at(field.name.as_ptr());
                let value = at(field.value.as_ptr());
                *span = (
                    name,
                    name.saturating_add(u16::try_from(field.name.len()).unwrap_or(u16::MAX)),
                    value,
                    value.saturating_add(u16::try_from(field.value.len()).unwrap_or(u16::MAX)),
                );
            }
            (
                len,
                parsed.code.unwrap_or(0),
                parsed.version,
                parsed.headers.len(),
            )
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        let mut headers = std::mem::take(room);
        headers.clear();
        headers.reserve(count);
        for &(ns, ne, vs, ve) in &spans[..count] {
            let (ns, ne, vs, ve): (usize, usize, usize, usize) =
                (ns.into(), ne.into(), vs.into(), ve.into());
            let name = head
                .get(ns..ne)
                .and_then(|n| HeaderName::from_bytes(n).ok())
                .ok_or(ProtocolError::BadHeader)?;
            if ve > head.len() || vs > ve {
                return Err(ProtocolError::BadHeader);
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| ProtocolError::BadHeader)?;
            headers.append(name, value);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = match version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        *response.headers_mut() = headers;
        let (decoder, clean) = framing(&response, head_request)?;
        let keep_alive = clean && decoder != Decoder::Eof && keep_alive(&response);
        return Ok(Some(Head {
            response,
            decoder,
            keep_alive,
        }));
    }
}

/// The response body's framing (RFC 9112 §6.3), and false when the head
/// framed it twice (`Transfer-Encoding` and `Content-Length`): the
/// connection must not be reused then.
fn framing(response: &Response<()>, head_request: bool) -> Result<(Decoder, bool), ProtocolError> {
    let status = response.status();
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Decoder::Done, status != StatusCode::SWITCHING_PROTOCOLS));
    }
    let headers = response.headers();
    if headers.contains_key(TRANSFER_ENCODING) {
        let chunked_last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        let single = !headers.contains_key(CONTENT_LENGTH);
        return Ok(if chunked_last {
            (Decoder::Chunked(Chunk::Size), single)
        } else {
            (Decoder::Eof, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = content_length(value).ok_or(ProtocolError::BadContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(ProtocolError::BadContentLength);
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) => (Decoder::Length(n), true),
        None => (Decoder::Eof, true),
    })
}

/// A `Content-Length` value: digits only, or a list of one length
/// repeated (RFC 9110 §8.6); `None` when malformed or past `u64`. Both
/// sides read lengths with it: the upstream's responses and the clients'
/// requests (`server::h1`).
pub fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut length = None;
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only
/// with `Connection: keep-alive`.
fn keep_alive(response: &Response<()>) -> bool {
    let mut tokens = response
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    match response.version() {
        Version::HTTP_10 => tokens.any(|t| t.eq_ignore_ascii_case("keep-alive")),
        _ => !tokens.any(|t| t.eq_ignore_ascii_case("close")),
    }
}

/// What decoding found next in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Nothing whole yet: read more.
    More,
}

/// Up to `max` bytes from the front of `buf`; `None` when it is empty.
pub fn take_up_to(buf: &mut BytesMut, max: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(max).unwrap_or(usize::MAX).min(buf.len());
    Some(buf.split_to(n).freeze())
}

/// Decodes what it can of a chunked body from the front of `buf`.
pub fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(line) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(ProtocolError::BadChunk);
                    }
                    return Ok(Step::More);
                };
                if line > MAX_CHUNK_LINE {
                    return Err(ProtocolError::BadChunk);
                }
                let size = chunk_size(&buf[..line])?;
                buf.advance(line + 2);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                let Some(data) = take_up_to(buf, left) else {
                    return Ok(Step::More);
                };
                let left = left - data.len() as u64;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Step::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ProtocolError::BadChunk);
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for field in fields.iter() {
                            let name = HeaderName::from_bytes(field.name.as_bytes())
                                .map_err(|_| ProtocolError::BadHeader)?;
                            let value = HeaderValue::from_bytes(field.value)
                                .map_err(|_| ProtocolError::BadHeader)?;
                            trailers.append(name, value);
                        }
                        buf.advance(len);
                        Ok(if trailers.is_empty() {
                            Step::End
                        } else {
                            Step::Trailers(trailers)
                        })
                    }
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                        Err(ProtocolError::HeadTooLarge)
                    }
                    Ok(httparse::Status::Partial) => Ok(Step::More),
                    Err(_) => Err(ProtocolError::BadChunk),
                };
            }
        }
    }
}

/// The hexadecimal size at the start of a chunk-size line, before any
/// extension (`;name=value`, ignored).
fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(ProtocolError::BadChunk);
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    let rest_ok = (rest.is_empty() || rest.first() == Some(&b';'))
        && !rest.iter().any(|b| matches!(b, b'\r' | b'\n'));
    if !rest_ok {
        return Err(ProtocolError::BadChunk);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ProtocolError::BadChunk)?;
    u64::from_str_radix(text, 16).map_err(|_| ProtocolError::BadChunk)
}
