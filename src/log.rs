//! Log lines in the two formats Prometheus exporters use: logfmt and JSON.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use clap::ValueEnum;

/// The lowest severity that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Installs the global logger, writing to standard error.
pub fn init(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error => Level::ERROR,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(LineFormat { format })
        .init();
}

/// Formats one event as one line.
struct LineFormat {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = rfc3339_now();
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let mut line = String::with_capacity(128);
        match self.format {
            LogFormat::Logfmt => {
                line.push_str("ts=");
                line.push_str(&time);
                line.push_str(" level=");
                line.push_str(&level);
                line.push_str(" msg=");
                push_logfmt_value(&mut line, &fields.message);
                for (key, value) in &fields.pairs {
                    line.push(' ');
                    line.push_str(key);
                    line.push('=');
                    push_logfmt_value(&mut line, value);
                }
            }
            LogFormat::Json => {
                line.push_str("{\"ts\":");
                push_json_string(&mut line, &time);
                line.push_str(",\"level\":");
                push_json_string(&mut line, &level);
                line.push_str(",\"msg\":");
                push_json_string(&mut line, &fields.message);
                for (key, value) in &fields.pairs {
                    line.push(',');
                    push_json_string(&mut line, key);
                    line.push(':');
                    push_json_string(&mut line, value);
                }
                line.push('}');
            }
        }
        writeln!(writer, "{line}")
    }
}

/// The message and the other fields of an event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}

/// Appends a logfmt value, quoted when it holds a space, a quote, `=` or a
/// control character.
fn push_logfmt_value(line: &mut String, value: &str) {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if !needs_quotes {
        line.push_str(value);
        return;
    }
    line.push('"');
    push_escaped(line, value);
    line.push('"');
}

/// Appends a JSON string literal.
pub(crate) fn push_json_string(line: &mut String, value: &str) {
    line.push('"');
    push_escaped(line, value);
    line.push('"');
}

/// Escapes quotes, backslashes and control characters the way JSON does, which
/// logfmt readers accept too.
fn push_escaped(line: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
}

/// The current UTC time as `2026-11-26T12:03:49.123Z`.
fn rfc3339_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch.as_secs(), since_epoch.subsec_millis())
}

/// The (year, month, day) of a day since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's days-to-civil algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats Unix seconds and milliseconds as an RFC 3339 UTC time.
pub(crate) fn rfc3339(seconds: u64, millis: u32) -> String {
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_694_629, 123), "2026-11-26T12:03:49.123Z");
    }

    #[test]
    fn logfmt_values() {
        let mut line = String::new();
        push_logfmt_value(&mut line, "plain");
        line.push(' ');
        push_logfmt_value(&mut line, "two words \"quoted\"\n");
        line.push(' ');
        push_logfmt_value(&mut line, "");
        assert_eq!(line, r#"plain "two words \"quoted\"\n" """#);
    }

    #[test]
    fn json_strings() {
        let mut line = String::new();
        push_json_string(&mut line, "a\\b\"c\u{1}");
        assert_eq!(line, r#""a\\b\"c\u0001""#);
    }
}
