//! Log lines in the two formats Prometheus exporters use: logfmt and JSON.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use clap::ValueEnum;
use portstat_core::text::{push_escaped, push_json_string, rfc3339};

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

/// The current UTC time as `2026-11-26T12:03:49.123Z`.
fn rfc3339_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch.as_secs(), since_epoch.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
