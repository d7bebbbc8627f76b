//! The line format, text or JSON, written into a buffer each thread keeps:
//! formatting a line allocates nothing once the buffers have grown.
//!
//! Text, as `tracing-subscriber`'s default format (which keygate used
//! before): `2026-11-30T14:28:25.123456Z  INFO keygate::proxy: request
//! denied decision=invalid_key url.path=/v1 ...`, strings quoted, `%`
//! values as displayed. JSON, one object per line: `{"timestamp": ...,
//! "level": "INFO", "fields": {"message": ..., ...}, "target": ...}`,
//! numbers as numbers.

use std::cell::RefCell;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::config::LogFormat;

pub struct Lines {
    json: bool,
}

impl Lines {
    pub fn new(format: LogFormat) -> Self {
        Lines {
            json: format == LogFormat::Json,
        }
    }
}

/// A thread's buffers: the line, its message, and room to format a value
/// before it is escaped.
#[derive(Default)]
struct Buffers {
    line: String,
    message: String,
    scratch: String,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let emit = |b: &mut Buffers| {
            b.line.clear();
            b.message.clear();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if self.json {
                format_json(b, now, *meta.level(), meta.target(), event);
            } else {
                format_text(b, now, *meta.level(), meta.target(), event);
            }
            b.line.push('\n');
            super::push(b.line.as_bytes());
        };
        // A line logged while this thread formats another (a `Display` that
        // logs) gets buffers of its own rather than a panic.
        let _ = BUFFERS.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => emit(&mut b),
            Err(_) => emit(&mut Buffers::default()),
        });
    }
}

fn format_text(
    b: &mut Buffers,
    now: std::time::Duration,
    level: Level,
    target: &str,
    event: &Event<'_>,
) {
    let mut fields = std::mem::take(&mut b.scratch);
    fields.clear();
    let mut v = TextFields {
        fields: &mut fields,
        message: &mut b.message,
    };
    event.record(&mut v);
    timestamp(&mut b.line, now);
    let _ = write!(b.line, " {:>5} {target}: ", level.as_str());
    b.line.push_str(&b.message);
    b.line.push_str(&fields);
    b.scratch = fields;
}

struct TextFields<'a> {
    fields: &'a mut String,
    message: &'a mut String,
}

/// True when `{:?}` would escape something in `value`: a quote, a
/// backslash or a control character. Printable ASCII, what nearly every
/// field is, is told by a loop over bytes (the compiler vectorises it);
/// only other text is looked at char by char.
fn needs_escape(value: &str) -> bool {
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    if value.as_bytes().iter().all(plain) {
        return false;
    }
    value.contains(|c: char| c == '"' || c == '\\' || c.is_control())
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push(' ');
            self.fields.push_str(field.name());
            self.fields.push('=');
            if needs_escape(value) {
                let _ = write!(self.fields, "{value:?}");
            } else {
                // What `{:?}` would write, without escaping char by char.
                self.fields.push('"');
                self.fields.push_str(value);
                self.fields.push('"');
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push(' ');
        self.fields.push_str(field.name());
        self.fields.push('=');
        push_u64(self.fields, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push(' ');
        self.fields.push_str(field.name());
        self.fields.push_str(if value { "=true" } else { "=false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push(' ');
            self.fields.push_str(field.name());
            self.fields.push('=');
            let _ = write!(self.fields, "{value:?}");
        }
    }
}

fn format_json(
    b: &mut Buffers,
    now: std::time::Duration,
    level: Level,
    target: &str,
    event: &Event<'_>,
) {
    b.line.push_str("{\"timestamp\":\"");
    timestamp(&mut b.line, now);
    b.line.push_str("\",\"level\":\"");
    b.line.push_str(level.as_str());
    b.line.push_str("\",\"fields\":{");
    let mut v = JsonFields {
        line: &mut b.line,
        scratch: &mut b.scratch,
        first: true,
    };
    event.record(&mut v);
    b.line.push_str("},\"target\":");
    json_string(&mut b.line, target);
    b.line.push('}');
}

struct JsonFields<'a> {
    line: &'a mut String,
    scratch: &'a mut String,
    first: bool,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        push_u64(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        json_string(self.line, self.scratch);
    }
}

/// Appends `n` in decimal, without `fmt`'s machinery (a log line carries
/// several: status, port, sizes, durations).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// RFC 3339 in UTC with microseconds: `2026-11-30T14:28:25.123456Z`. The
/// date and time to the second are formatted once per second per thread.
fn timestamp(out: &mut String, since_epoch: std::time::Duration) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = since_epoch.as_secs();
    let mut write_second = |cached: &mut (u64, String)| {
        if cached.0 != secs {
            cached.1.clear();
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            let _ = write!(
                cached.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    };
    let done = SECOND.try_with(|c| match c.try_borrow_mut() {
        Ok(mut cached) => write_second(&mut cached),
        Err(_) => write_second(&mut (u64::MAX, String::new())),
    });
    if done.is_err() {
        write_second(&mut (u64::MAX, String::new()));
    }
    let mut micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend(digits.iter().map(|&d| char::from(d)));
    out.push('Z');
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_escape_check_agrees_with_the_char_by_char_one() {
        let reference = |v: &str| v.contains(|c: char| c == '"' || c == '\\' || c.is_control());
        for value in [
            "",
            "GET /v1/things?x=1",
            "a\"b",
            "a\\b",
            "tab\there",
            "del\u{7f}",
            "nel\u{85}",
            "caf\u{e9}",
            "\u{9f}",
            "\u{a0}",
            "emoji \u{1f600}",
            "line\nbreak",
        ] {
            assert_eq!(needs_escape(value), reference(value), "{value:?}");
        }
        proptest::proptest!(|(value in ".{0,40}")| {
            proptest::prop_assert_eq!(needs_escape(&value), reference(&value));
        });
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        let mut s = String::new();
        timestamp(&mut s, std::time::Duration::new(0, 0));
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2026-11-30T14:28:25.123456Z
        timestamp(&mut s, std::time::Duration::new(1_796_048_905, 123_456_789));
        assert_eq!(s, "2026-11-30T14:28:25.123456Z");
        s.clear();
        // A leap day.
        timestamp(&mut s, std::time::Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for n in [0, 7, 10, 200, 65_535, 1_234_567, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
