//! The HTTP/1.1 wire format of a client exchange (RFC 9112), as pure
//! functions over buffers: the request head parsed and its body's framing
//! decided (the smuggling rules of SPEC, "Edge cases"), the response head
//! written with the framing its body needs.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::proxy::h1::content_length;

/// Header fields parsed on the stack; a configured `max_headers` above it
/// costs a vector per head.
const STACK_FIELDS: usize = 128;
/// `http::Uri`'s own bound (hyper answers 414 past it too).
const MAX_TARGET: usize = 65_534;

/// The bounds of SPEC's `server.max_header_bytes` and `server.max_headers`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, and what the connection must know of it.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client allows another request on the connection after this one
    /// (HTTP/1.1 without `Connection: close`, HTTP/1.0 with `keep-alive`),
    /// and the head framed its body once.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over `max_header_bytes` or `max_headers`: 431.
    TooLarge,
    /// A request target longer than any URI: 414.
    TargetTooLong,
    /// Bad syntax or framing: 400, with what was wrong (never the bytes).
    Malformed(&'static str),
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::TargetTooLong => "request target too long",
            HeadError::Malformed(why) => why,
        }
    }
}

/// Where a field's name and value lie in the head.
pub type Span = [u32; 4];

/// Field names seen on a connection, by their bytes as sent. A name the
/// http crate does not know (`x-api-key`) costs an allocation, a copy and
/// a free in `HeaderName::from_bytes` on every request; a connection's
/// requests repeat the same few names, so each is made once here.
#[derive(Debug, Default)]
pub struct Names {
    seen: Vec<(Box<[u8]>, HeaderName)>,
}

/// Names remembered per connection at most (a client that sends ever new
/// names pays for them as before).
const NAMES: usize = 16;

impl Names {
    fn get(&mut self, raw: &[u8]) -> Option<HeaderName> {
        if let Some((_, name)) = self.seen.iter().find(|(seen, _)| **seen == *raw) {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if self.seen.len() < NAMES {
            self.seen.push((raw.into(), name.clone()));
        }
        Some(name)
    }
}

/// Parses a request head from the front of `buf`: `Ok(None)` until it is
/// whole. Its fields go into `room`'s map (its allocation reused: hyper's
/// server does the same with each response's map); `spans` and `names`
/// are kept by the connection from one request to the next.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: Limits,
    room: &mut HeaderMap,
    spans: &mut Vec<Span>,
    names: &mut Names,
) -> Result<Option<RequestHead>, HeadError> {
    // Not zeroed: httparse writes each field before it is read. The stack
    // array keeps a vector out of every request.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_FIELDS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); limits.max_headers];
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len > limits.max_head_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Token) if parsed.method.is_none() => {
            return Err(HeadError::Malformed("invalid method"));
        }
        Err(httparse::Error::Token) => return Err(HeadError::Malformed("invalid request target")),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("invalid HTTP version")),
        Err(_) => return Err(HeadError::Malformed("invalid request head")),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::Malformed("invalid request line"));
    };
    if target.len() > MAX_TARGET {
        return Err(HeadError::TargetTooLong);
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let base = buf.as_ptr() as usize;
    // Offsets within the head, which is under `len` bytes.
    let at = |p: *const u8| u32::try_from(p as usize - base).unwrap_or(u32::MAX);
    let target_at = at(target.as_ptr()) as usize;
    let target_end = target_at + target.len();
    spans.clear();
    for field in parsed.headers.iter() {
        let name = at(field.name.as_ptr());
        let value = at(field.value.as_ptr());
        spans.push([
            name,
            name.saturating_add(u32::try_from(field.name.len()).unwrap_or(u32::MAX)),
            value,
            value.saturating_add(u32::try_from(field.value.len()).unwrap_or(u32::MAX)),
        ]);
    }
    let http11 = version == 1;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_at..target_end))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;

    let mut headers = std::mem::take(room);
    headers.clear();
    headers.reserve(spans.len());
    let mut framing = Framing::None;
    let mut length: Option<u64> = None;
    let mut chunked_te = false;
    let mut saw_te = false;
    let mut saw_length = false;
    let mut keep_alive = http11;
    let mut close = false;
    let mut expect_continue = false;
    for &[ns, ne, vs, ve] in spans.iter() {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = head
            .get(ns..ne)
            .and_then(|n| names.get(n))
            .ok_or(HeadError::Malformed("invalid header name"))?;
        if vs > ve || ve > head.len() {
            return Err(HeadError::Malformed("invalid header value"));
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        if name == TRANSFER_ENCODING {
            // RFC 9112 §6.1: chunked must be the last coding of a
            // request; HTTP/1.0 has no Transfer-Encoding at all.
            if !http11 {
                return Err(HeadError::Malformed("transfer-encoding on HTTP/1.0"));
            }
            saw_te = true;
            chunked_te = last_coding_is_chunked(&value);
        } else if name == CONTENT_LENGTH {
            saw_length = true;
            let n = content_length(&value).ok_or(HeadError::Malformed("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("differing content-lengths"));
            }
            if length.is_some() {
                // The same length again: one field says it.
                continue;
            }
            length = Some(n);
        } else if name == CONNECTION {
            if has_token(&value, "close") {
                close = true;
            } else if !http11 && has_token(&value, "keep-alive") {
                keep_alive = true;
            }
        } else if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    if saw_te {
        if !chunked_te {
            return Err(HeadError::Malformed("transfer-encoding not chunked last"));
        }
        framing = Framing::Chunked;
        if saw_length {
            // Framed twice: chunked wins (RFC 9112 §6.3), the length goes,
            // and the connection closes after this exchange (SPEC).
            headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
    } else if let Some(n) = length {
        framing = if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        };
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        framing,
        keep_alive: keep_alive && !close,
        expect_continue,
    }))
}

fn last_coding_is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// No body (HEAD, 1xx, 204, 304).
    Nothing,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// The framing of a response: how its body is sent, and the length its
/// head states (a HEAD or 304 answer keeps the length it would have had).
pub fn plan(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
    exact: Option<u64>,
    http11: bool,
) -> (Send, Option<u64>) {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return (Send::Nothing, None);
    }
    let stated = headers.get(CONTENT_LENGTH).and_then(content_length);
    if head_request || status == StatusCode::NOT_MODIFIED {
        return (Send::Nothing, stated.or(exact.filter(|&n| n > 0)));
    }
    match stated.or(exact) {
        Some(n) => (Send::Length(n), Some(n)),
        None if http11 => (Send::Chunked, None),
        None => (Send::UntilClose, None),
    }
}

/// True when the response's own fields ask to close the connection.
pub fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| has_token(v, "close"))
}

/// What the response head says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Nothing: HTTP/1.1 keeps it.
    Default,
    /// `Connection: keep-alive`, for an HTTP/1.0 client.
    KeepAlive,
    Close,
}

/// Writes a response head into `out`: the status line, the response's
/// fields but those of framing and connection (written from `length`,
/// `send` and `persist`), and `Date` when it has none.
pub fn encode_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    send: Send,
    length: Option<u64>,
    persist: Persist,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    // A protocol switch's `Connection: upgrade` goes as the upstream sent it.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || (name == CONNECTION && !switching)
        {
            continue;
        }
        dated |= name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if send == Send::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    match persist {
        Persist::Default => {}
        Persist::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The answer to a refused head: no body, the connection closed after it.
pub fn refusal(out: &mut Vec<u8>, error: HeadError, date: &[u8]) {
    encode_response(
        out,
        error.status(),
        &HeaderMap::new(),
        Send::Length(0),
        Some(0),
        Persist::Close,
        date,
    );
}

/// Drops what is left of a body from the front of `buf`, as far as it is
/// there: true when the body is then done. A refused request's body need
/// not stop the connection's next request when it came whole.
pub fn discard(state: &mut super::body::Decoding, buf: &mut BytesMut) -> bool {
    use super::body::Decoding;
    use crate::proxy::h1::{Step, decode_chunk};
    loop {
        match state {
            Decoding::Done => return true,
            Decoding::Failed => return false,
            Decoding::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                buf.advance(n);
                let left = *left - n as u64;
                *state = if left == 0 {
                    Decoding::Done
                } else {
                    Decoding::Length(left)
                };
                return left == 0;
            }
            Decoding::Chunked(chunk) => match decode_chunk(chunk, buf) {
                Ok(Step::Data(_)) => {}
                Ok(Step::Trailers(_) | Step::End) => *state = Decoding::Done,
                Ok(Step::More) => return false,
                Err(_) => {
                    *state = Decoding::Failed;
                    return false;
                }
            },
        }
    }
}
