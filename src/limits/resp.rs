//! Just enough of the Redis protocol (RESP2) for the fleet sync: commands
//! out, replies in, every read bounded in bytes and in time. A client
//! crate would bring a connection manager, cluster support and a dozen
//! dependencies for three commands (AUTH, SELECT, EVAL); the parser here
//! is pure and property-tested.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::RedisTarget;

/// The largest reply accepted (a sync's reply is a few bytes per key).
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting accepted in a reply (ours are one level deep).
const MAX_DEPTH: usize = 4;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// An error reply (`-ERR ...`): the command failed, the connection is fine.
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A protocol violation: the connection cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(buf, 0)
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..end], end + 2))
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError("a length or integer that is not a number".into()))
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("reply nested too deep".into()));
    }
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((text, head)) = line(&buf[1..]) else {
        if buf.len() > 1024 {
            return Err(ProtocolError("reply line longer than 1 KiB".into()));
        }
        return Ok(None);
    };
    let head = head + 1;
    let utf8 = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(utf8(text)), head))),
        b'-' => Ok(Some((Reply::Error(utf8(text)), head))),
        b':' => Ok(Some((Reply::Int(number(text)?), head))),
        b'$' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), head)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_REPLY_BYTES)
                .ok_or_else(|| ProtocolError("bulk length out of range".into()))?;
            if buf.len() < head + n + 2 {
                return Ok(None);
            }
            if &buf[head + n..head + n + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not ended by CRLF".into()));
            }
            Ok(Some((
                Reply::Bulk(Some(buf[head..head + n].to_vec())),
                head + n + 2,
            )))
        }
        b'*' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), head)));
            }
            // Each element takes at least 3 bytes: a larger count is a lie.
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_REPLY_BYTES / 3)
                .ok_or_else(|| ProtocolError("array length out of range".into()))?;
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = head;
            for _ in 0..n {
                match parse_at(&buf[at..], depth + 1)? {
                    None => return Ok(None),
                    Some((r, used)) => {
                        items.push(r);
                        at += used;
                    }
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(ProtocolError(format!(
            "unknown reply type byte 0x{other:02x}"
        ))),
    }
}

/// A connection failure of any kind, worded for a log line (never with
/// the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisError(pub String);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection to Redis.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Connects, authenticates, selects the database and checks that the
    /// server answers; each step within `timeout`.
    pub async fn connect(target: &RedisTarget, timeout: Duration) -> Result<Conn, RedisError> {
        let addr = (target.host.as_str(), target.port);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RedisError(format!("connecting to {target} timed out")))?
            .map_err(|e| RedisError(format!("cannot connect to {target}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            timeout,
        };
        if let Some(password) = &target.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.expect_ok(&args, "AUTH").await?;
        }
        if target.db != 0 {
            let db = target.db.to_string();
            conn.expect_ok(&[b"SELECT", db.as_bytes()], "SELECT")
                .await?;
        }
        // A server that accepts but does not answer is not connected.
        conn.expect_ok(&[b"PING"], "PING").await?;
        Ok(conn)
    }

    async fn expect_ok(&mut self, args: &[&[u8]], what: &str) -> Result<(), RedisError> {
        match self.call(&[args.to_vec()]).await?.pop() {
            Some(Reply::Simple(_)) => Ok(()),
            Some(Reply::Error(e)) => Err(RedisError(format!("{what} refused: {e}"))),
            other => Err(RedisError(format!("{what}: unexpected reply {other:?}"))),
        }
    }

    /// Sends commands in one write (a pipeline) and reads one reply per
    /// command, all within the connection's timeout.
    pub async fn call(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RedisError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.call_unbounded(commands))
            .await
            .map_err(|_| RedisError(format!("no reply within {timeout:?}")))?
    }

    async fn call_unbounded(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RedisError> {
        let mut out = Vec::new();
        for c in commands {
            encode(c, &mut out);
        }
        let io = |e: std::io::Error| RedisError(format!("connection lost: {e}"));
        self.stream.write_all(&out).await.map_err(io)?;
        let mut replies = Vec::with_capacity(commands.len());
        while replies.len() < commands.len() {
            match parse(&self.buf).map_err(|e| RedisError(format!("protocol error: {}", e.0)))? {
                Some((reply, used)) => {
                    self.buf.drain(..used);
                    replies.push(reply);
                }
                None => {
                    if self.buf.len() > MAX_REPLY_BYTES {
                        return Err(RedisError("reply larger than 4 MiB".into()));
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    let n = self.stream.read(&mut chunk).await.map_err(io)?;
                    if n == 0 {
                        return Err(RedisError("connection closed by the server".into()));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_reply_type_and_waits_for_more() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (b"-ERR no\r\n", Reply::Error("ERR no".into())),
            (b":-42\r\n", Reply::Int(-42)),
            (b"$3\r\nabc\r\n", Reply::Bulk(Some(b"abc".to_vec()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (
                b"*2\r\n:1\r\n:0\r\n",
                Reply::Array(Some(vec![Reply::Int(1), Reply::Int(0)])),
            ),
            (b"*-1\r\n", Reply::Array(None)),
        ];
        for (wire, want) in cases {
            assert_eq!(parse(wire), Ok(Some((want, wire.len()))));
            for cut in 0..wire.len() {
                assert_eq!(parse(&wire[..cut]), Ok(None), "{wire:?} cut at {cut}");
            }
        }
        for bad in [
            &b"?x\r\n"[..],
            b":x\r\n",
            b"$5\r\nabcdefg",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let mut out = Vec::new();
        encode(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, used))) = parse(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
