//! Request lines written from `proxy::access`'s typed fields, in the line
//! format every other line has (`format`), without going through
//! `tracing`.
//!
//! Through `tracing` a line's 19 fields are a value set walked by a
//! visitor: a dynamic call per field, each name pushed in three pieces, each
//! value told apart by type at run time. That was 3,350 instructions of a
//! refusal's 15,400, and SPEC asks for a line on every refusal. Here the
//! names are literals made at compile time (` name=` for text, `,"name":`
//! for JSON) and the fields are written in the order `log_with_tracing`
//! records them, so the two give the same bytes (a test holds them equal
//! for every kind of line, in both formats).

use std::fmt::{Display, Write};

use tracing::Level;

use super::format::{self, Buffers};
use crate::proxy::access::{self, LineWriter, Outcome, Request};

/// The installed writer: the format, whether the log filter lets request
/// lines through (fixed at start, as the filter is), and where lines go.
pub struct AccessLines {
    pub json: bool,
    pub enabled: bool,
    pub sink: fn(&[u8]),
}

impl LineWriter for AccessLines {
    fn write(&self, r: &Request<'_>, o: &Outcome<'_>) {
        if self.enabled {
            format::emit(self.sink, |b, now| self.format(b, now, r, o));
        }
    }
}

impl AccessLines {
    fn format(&self, b: &mut Buffers, now: std::time::Duration, r: &Request<'_>, o: &Outcome<'_>) {
        let Buffers { line, scratch, .. } = b;
        // The path is the one value of unbounded length (cut to 256 bytes).
        line.reserve(512 + r.path.len());
        if self.json {
            format::json_head(line, now, Level::INFO);
            line.push_str("\"message\":");
            format::json_string(line, o.message);
            Fields::<true> { line, scratch }.all(r, o);
            line.push_str("},\"target\":\"");
            line.push_str(access::TARGET);
            line.push_str("\"}");
        } else {
            format::text_head(line, now, Level::INFO, access::TARGET);
            line.push_str(o.message);
            Fields::<false> { line, scratch }.all(r, o);
        }
    }
}

/// A field's name as it starts the field in each format.
#[derive(Clone, Copy)]
struct Key {
    text: &'static str,
    json: &'static str,
}

macro_rules! key {
    ($name:literal) => {
        Key {
            text: concat!(" ", $name, "="),
            json: concat!(",\"", $name, "\":"),
        }
    };
}

/// The fields after the message, written into `line` as JSON or as text:
/// the format is a constant, so each is compiled without a branch on it
/// per field (a run-time flag cost 170-230 instructions a line).
struct Fields<'a, const JSON: bool> {
    line: &'a mut String,
    scratch: &'a mut String,
}

impl<const JSON: bool> Fields<'_, JSON> {
    /// Every field after the message, in `log_with_tracing`'s order; a
    /// field without a value is left out, as `tracing` leaves out a `None`.
    fn all(&mut self, r: &Request<'_>, o: &Outcome<'_>) {
        self.plain(key!("decision"), o.decision);
        if let Some(v) = o.reason {
            self.plain(key!("reason"), v);
        }
        if let Some(v) = o.key_id {
            self.str(key!("key.id"), v);
        }
        self.plain(key!("http.request.method"), r.method.as_str());
        self.str(key!("url.path"), r.path);
        self.u64(key!("http.response.status_code"), o.status.into());
        self.str(key!("client.address"), r.client);
        self.plain(key!("network.peer.address"), r.peer_ip);
        self.u64(key!("network.peer.port"), r.peer.port().into());
        self.plain(
            key!("network.protocol.version"),
            access::protocol(r.version),
        );
        if let Some(v) = r.request_id.and_then(|v| v.to_str().ok()) {
            self.str(key!("request.id"), v);
        }
        if let Some(v) = r.bytes_in {
            self.u64(key!("http.request.body.size"), v);
        }
        if let Some(v) = o.bytes_out {
            self.u64(key!("http.response.body.size"), v);
        }
        self.u64(key!("duration_us"), access::micros(o.duration));
        if let Some(v) = o.upstream {
            self.u64(key!("upstream.duration_us"), access::micros(v));
        }
        if let Some(v) = o.complete {
            self.key(key!("response.complete"));
            self.line.push_str(if v { "true" } else { "false" });
        }
        if let Some(v) = o.limit {
            self.display(key!("ratelimit.limit"), v);
        }
        if let Some(v) = o.scope {
            self.plain(key!("ratelimit.scope"), v);
        }
    }

    fn key(&mut self, k: Key) {
        self.line.push_str(if JSON { k.json } else { k.text });
    }

    fn str(&mut self, k: Key, v: &str) {
        self.key(k);
        if JSON {
            format::json_string(self.line, v);
        } else {
            format::text_string(self.line, v);
        }
    }

    /// A string the gateway made itself (a label, an address, a version):
    /// nothing in it to escape, so no look for it; both formats quote it.
    fn plain(&mut self, k: Key, v: &str) {
        debug_assert!(!format::needs_escape(v), "{v:?}");
        self.key(k);
        self.line.push('"');
        self.line.push_str(v);
        self.line.push('"');
    }

    fn u64(&mut self, k: Key, v: u64) {
        self.key(k);
        format::push_u64(self.line, v);
    }

    /// A `%` value: written as displayed in text, as a string in JSON.
    fn display(&mut self, k: Key, v: &dyn Display) {
        self.key(k);
        if JSON {
            self.scratch.clear();
            let _ = write!(self.scratch, "{v}");
            format::json_string(self.line, self.scratch);
        } else {
            let _ = write!(self.line, "{v}");
        }
    }
}

#[cfg(test)]
mod tests;
