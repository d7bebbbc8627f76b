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
            fields(&mut Json { line, scratch }, r, o);
            line.push_str("},\"target\":\"");
            line.push_str(access::TARGET);
            line.push_str("\"}");
        } else {
            format::text_head(line, now, Level::INFO, access::TARGET);
            line.push_str(o.message);
            fields(&mut Text(line), r, o);
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

trait Fields {
    fn str(&mut self, k: Key, v: &str);
    /// A string the gateway made itself (a label, an address, a version):
    /// nothing in it to escape, so no look for it.
    fn plain(&mut self, k: Key, v: &str);
    fn u64(&mut self, k: Key, v: u64);
    fn bool(&mut self, k: Key, v: bool);
    fn display(&mut self, k: Key, v: &dyn Display);
}

/// Every field after the message, in `log_with_tracing`'s order; a field
/// without a value is left out, as `tracing` leaves out a `None`.
fn fields(f: &mut impl Fields, r: &Request<'_>, o: &Outcome<'_>) {
    f.plain(key!("decision"), o.decision);
    if let Some(v) = o.reason {
        f.plain(key!("reason"), v);
    }
    if let Some(v) = o.key_id {
        f.str(key!("key.id"), v);
    }
    f.plain(key!("http.request.method"), r.method.as_str());
    f.str(key!("url.path"), r.path);
    f.u64(key!("http.response.status_code"), o.status.into());
    f.str(key!("client.address"), r.client);
    f.plain(key!("network.peer.address"), r.peer_ip);
    f.u64(key!("network.peer.port"), r.peer.port().into());
    f.plain(
        key!("network.protocol.version"),
        access::protocol(r.version),
    );
    if let Some(v) = r.request_id.and_then(|v| v.to_str().ok()) {
        f.str(key!("request.id"), v);
    }
    if let Some(v) = r.bytes_in {
        f.u64(key!("http.request.body.size"), v);
    }
    if let Some(v) = o.bytes_out {
        f.u64(key!("http.response.body.size"), v);
    }
    f.u64(key!("duration_us"), access::micros(o.duration));
    if let Some(v) = o.upstream {
        f.u64(key!("upstream.duration_us"), access::micros(v));
    }
    if let Some(v) = o.complete {
        f.bool(key!("response.complete"), v);
    }
    if let Some(v) = o.limit {
        f.display(key!("ratelimit.limit"), v);
    }
    if let Some(v) = o.scope {
        f.plain(key!("ratelimit.scope"), v);
    }
}

struct Text<'a>(&'a mut String);

impl Fields for Text<'_> {
    fn str(&mut self, k: Key, v: &str) {
        self.0.push_str(k.text);
        format::text_string(self.0, v);
    }
    fn plain(&mut self, k: Key, v: &str) {
        debug_assert!(!format::needs_escape(v), "{v:?}");
        self.0.push_str(k.text);
        self.0.push('"');
        self.0.push_str(v);
        self.0.push('"');
    }
    fn u64(&mut self, k: Key, v: u64) {
        self.0.push_str(k.text);
        format::push_u64(self.0, v);
    }
    fn bool(&mut self, k: Key, v: bool) {
        self.0.push_str(k.text);
        self.0.push_str(if v { "true" } else { "false" });
    }
    fn display(&mut self, k: Key, v: &dyn Display) {
        self.0.push_str(k.text);
        let _ = write!(self.0, "{v}");
    }
}

struct Json<'a> {
    line: &'a mut String,
    scratch: &'a mut String,
}

impl Fields for Json<'_> {
    fn str(&mut self, k: Key, v: &str) {
        self.line.push_str(k.json);
        format::json_string(self.line, v);
    }
    fn plain(&mut self, k: Key, v: &str) {
        debug_assert!(!format::needs_escape(v), "{v:?}");
        self.line.push_str(k.json);
        self.line.push('"');
        self.line.push_str(v);
        self.line.push('"');
    }
    fn u64(&mut self, k: Key, v: u64) {
        self.line.push_str(k.json);
        format::push_u64(self.line, v);
    }
    fn bool(&mut self, k: Key, v: bool) {
        self.line.push_str(k.json);
        self.line.push_str(if v { "true" } else { "false" });
    }
    fn display(&mut self, k: Key, v: &dyn Display) {
        self.line.push_str(k.json);
        self.scratch.clear();
        let _ = write!(self.scratch, "{v}");
        format::json_string(self.line, self.scratch);
    }
}

#[cfg(test)]
mod tests;
