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
    /// Where a finished line goes: the writer's batch (`super::push`), or a
    /// test's capture.
    sink: fn(&[u8]),
}

impl Lines {
    pub fn new(format: LogFormat, sink: fn(&[u8])) -> Self {
        Lines {
            json: format == LogFormat::Json,
            sink,
        }
    }
}

/// A thread's buffers: the line, a message recorded after other fields
/// (text), and room to format a value before it is escaped (JSON).
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) line: String,
    message: String,
    pub(super) scratch: String,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Formats one line with this thread's buffers (cleared) and the time now
/// since the epoch, then hands it with its newline to `sink`.
pub(super) fn emit(sink: fn(&[u8]), format: impl FnOnce(&mut Buffers, std::time::Duration)) {
    let run = |b: &mut Buffers| {
        b.line.clear();
        b.message.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format(b, now);
        b.line.push('\n');
        sink(b.line.as_bytes());
    };
    // A line logged while this thread formats another (a `Display` that
    // logs) gets buffers of its own rather than a panic.
    let _ = BUFFERS.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => run(&mut b),
        Err(_) => run(&mut Buffers::default()),
    });
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        emit(self.sink, |b, now| {
            if self.json {
                format_json(b, now, *meta.level(), meta.target(), event);
            } else {
                format_text(b, now, *meta.level(), meta.target(), event);
            }
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
    text_head(&mut b.line, now, level, target);
    // The fields are written straight into the line. The message goes
    // before them: the macros record it first, so it is nearly always
    // written in place too; one recorded later is moved in front.
    let message_at = b.line.len();
    let mut v = TextFields {
        line: &mut b.line,
        message: &mut b.message,
        message_at,
    };
    event.record(&mut v);
    if !b.message.is_empty() {
        b.line.insert_str(message_at, &b.message);
    }
}

/// `<timestamp>  INFO <target>: `, what a text line starts with.
pub(super) fn text_head(line: &mut String, now: std::time::Duration, level: Level, target: &str) {
    timestamp(line, now);
    line.push_str(match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    });
    line.push_str(target);
    line.push_str(": ");
}

/// A string field's value in a text line: quoted, escaped as `{:?}` does.
pub(super) fn text_string(line: &mut String, value: &str) {
    if needs_escape(value) {
        let _ = write!(line, "{value:?}");
    } else {
        // What `{:?}` would write, without escaping char by char.
        line.push('"');
        line.push_str(value);
        line.push('"');
    }
}

struct TextFields<'a> {
    line: &'a mut String,
    /// A message recorded after other fields, to be moved in front of them.
    message: &'a mut String,
    message_at: usize,
}

impl TextFields<'_> {
    /// ` name=`, the start of every field.
    fn name(&mut self, field: &Field, extra: usize) {
        let name = field.name();
        self.line.reserve(name.len() + extra + 4);
        self.line.push(' ');
        self.line.push_str(name);
        self.line.push('=');
    }

    fn in_place(&self) -> bool {
        self.line.len() == self.message_at
    }
}

/// True when `{:?}` would escape something in `value`: a quote, a
/// backslash or a control character. Printable ASCII, what nearly every
/// field is, is told eight bytes at a time; only other text is looked at
/// char by char.
pub(super) fn needs_escape(value: &str) -> bool {
    if plain_ascii(value.as_bytes()) {
        return false;
    }
    value.contains(|c: char| c == '"' || c == '\\' || c.is_control())
}

/// True when every byte is printable ASCII other than `"` and `\`. Each
/// eight bytes are one word tested with the classic bit tricks ("does a
/// byte lie below n", "is a byte zero"), exact for whether any byte fails;
/// the last few are padded with a plain byte.
fn plain_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let any_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let bad = |x: u64| {
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        // 0x7f and up: adding one sets the top bit, or it was set (a byte
        // of 0xff carries into the next, but is caught itself).
        let high = (x.wrapping_add(ONES) | x) & HIGH;
        control
            | high
            | any_zero(x ^ (ONES * u64::from(b'"')))
            | any_zero(x ^ (ONES * u64::from(b'\\')))
    };
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        found |= bad(u64::from_le_bytes(word));
    }
    let mut last = [b'a'; 8];
    for (to, from) in last.iter_mut().zip(words.remainder()) {
        *to = *from;
    }
    found |= bad(u64::from_le_bytes(last));
    found == 0
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if self.in_place() {
                self.line.push_str(value);
                self.message_at = usize::MAX;
            } else {
                self.message.push_str(value);
            }
        } else {
            self.name(field, value.len());
            text_string(self.line, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field, 20);
        push_u64(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field, 5);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            if self.in_place() {
                let _ = write!(self.line, "{value:?}");
                self.message_at = usize::MAX;
            } else {
                let _ = write!(self.message, "{value:?}");
            }
        } else {
            self.name(field, 0);
            let _ = write!(self.line, "{value:?}");
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
    json_head(&mut b.line, now, level);
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

/// `{"timestamp":...,"level":...,"fields":{`, what a JSON line starts with.
pub(super) fn json_head(line: &mut String, now: std::time::Duration, level: Level) {
    line.push_str("{\"timestamp\":\"");
    timestamp(line, now);
    line.push_str("\",\"level\":\"");
    line.push_str(level.as_str());
    line.push_str("\",\"fields\":{");
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
pub(super) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `s` as a JSON string.
pub(super) fn json_string(out: &mut String, s: &str) {
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
pub(in crate::cli::logging) mod tests {
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
        // Any text, mostly ASCII text, and ASCII with a few odd bytes in.
        proptest::proptest!(|(value in ".{0,40}", ascii in "[ -~]{0,40}", near in "[\\x00-\\x7f]{0,24}")| {
            proptest::prop_assert_eq!(needs_escape(&value), reference(&value));
            proptest::prop_assert_eq!(needs_escape(&ascii), reference(&ascii));
            proptest::prop_assert_eq!(needs_escape(&near), reference(&near));
        });
        // Each byte value at each place of a word and of a padded tail.
        for len in [1, 7, 8, 9, 16, 17] {
            for at in 0..len {
                for c in (0..=0x7f_u8)
                    .map(char::from)
                    .chain(['\u{80}', '\u{ff}', '\u{a0}', '\u{2028}'])
                {
                    let mut v: Vec<char> = vec!['a'; len];
                    v[at] = c;
                    let v: String = v.into_iter().collect();
                    assert_eq!(needs_escape(&v), reference(&v), "{v:?}");
                }
            }
        }
    }

    thread_local! {
        static CAPTURED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// A sink that keeps each line this thread logs, for `taken`.
    pub(in crate::cli::logging) fn capture(line: &[u8]) {
        CAPTURED.with(|c| {
            c.borrow_mut()
                .push(String::from_utf8_lossy(line).into_owned())
        });
    }

    /// The lines `capture` kept on this thread since the last call.
    pub(in crate::cli::logging) fn taken() -> Vec<String> {
        CAPTURED.with(|c| c.borrow_mut().drain(..).collect())
    }

    /// A line without its timestamp, the one part that differs run to run.
    pub(in crate::cli::logging) fn untimed(json: bool, line: &str) -> String {
        if json {
            line.replacen(&line[14..41], "T", 1)
        } else {
            line[27..].to_string()
        }
    }

    /// The lines `emit` logs in `format`, each without its timestamp.
    fn lines_of(format: LogFormat, emit: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::prelude::*;
        taken();
        let subscriber = tracing_subscriber::registry().with(Lines::new(format, capture));
        tracing::subscriber::with_default(subscriber, emit);
        taken()
            .iter()
            .map(|l| untimed(format == LogFormat::Json, l))
            .collect()
    }

    /// Every kind of field in both formats, the message first (as the
    /// macros put it), last, or absent, and values that need escaping.
    fn emit_every_kind() {
        let path = "/v1/\"odd\"";
        let none: Option<&str> = None;
        tracing::info!(
            message = "request denied",
            decision = "invalid_key",
            key.id = none,
            url.path = path,
            http.response.status_code = 401u16,
            network.peer.port = 54_321u64,
            delta = -3i64,
            ratio = 0.5f64,
            response.complete = true,
            limit = %"10/s",
        );
        tracing::warn!(kind = "connect", "upstream request failed: {}", 7);
        tracing::error!(a = 1u64, b = "x\ty");
        tracing::debug!("only a message");
        tracing::info!(a = 1u64, message = "late");
    }

    #[test]
    fn a_text_line_is_level_target_message_then_fields() {
        assert_eq!(
            lines_of(LogFormat::Text, emit_every_kind),
            [
                "  INFO keygate::cli::logging::format::tests: request denied decision=\"invalid_key\" url.path=\"/v1/\\\"odd\\\"\" http.response.status_code=401 network.peer.port=54321 delta=-3 ratio=0.5 response.complete=true limit=10/s\n",
                "  WARN keygate::cli::logging::format::tests: upstream request failed: 7 kind=\"connect\"\n",
                " ERROR keygate::cli::logging::format::tests:  a=1 b=\"x\\ty\"\n",
                " DEBUG keygate::cli::logging::format::tests: only a message\n",
                "  INFO keygate::cli::logging::format::tests: late a=1\n",
            ]
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_its_fields_typed() {
        assert_eq!(
            lines_of(LogFormat::Json, emit_every_kind),
            [
                "{\"timestamp\":\"T\",\"level\":\"INFO\",\"fields\":{\"message\":\"request denied\",\"decision\":\"invalid_key\",\"url.path\":\"/v1/\\\"odd\\\"\",\"http.response.status_code\":401,\"network.peer.port\":54321,\"delta\":-3,\"ratio\":0.5,\"response.complete\":true,\"limit\":\"10/s\"},\"target\":\"keygate::cli::logging::format::tests\"}\n",
                "{\"timestamp\":\"T\",\"level\":\"WARN\",\"fields\":{\"message\":\"upstream request failed: 7\",\"kind\":\"connect\"},\"target\":\"keygate::cli::logging::format::tests\"}\n",
                "{\"timestamp\":\"T\",\"level\":\"ERROR\",\"fields\":{\"a\":1,\"b\":\"x\\ty\"},\"target\":\"keygate::cli::logging::format::tests\"}\n",
                "{\"timestamp\":\"T\",\"level\":\"DEBUG\",\"fields\":{\"message\":\"only a message\"},\"target\":\"keygate::cli::logging::format::tests\"}\n",
                "{\"timestamp\":\"T\",\"level\":\"INFO\",\"fields\":{\"a\":1,\"message\":\"late\"},\"target\":\"keygate::cli::logging::format::tests\"}\n",
            ]
        );
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
