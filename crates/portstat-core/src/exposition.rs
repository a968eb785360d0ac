//! The Prometheus text format (version 0.0.4): metric families of gauges
//! and counters, and their encoding. The family modules of `metrics` build
//! them; `render` encodes them.

use std::fmt::Write as _;

/// The type of a family's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// A value that goes up and down.
    Gauge,
    /// A value that only rises, until the exporter restarts.
    Counter,
}

impl MetricType {
    /// The name the `# TYPE` line gives the type.
    pub fn name(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        }
    }
}

/// One series: its labels, in order, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names and values, in the order they are written.
    pub labels: Vec<(&'static str, String)>,
    /// The sample's value.
    pub value: f64,
}

/// A metric family: a name, its help, its type and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// The family's name.
    pub name: String,
    /// The `# HELP` text.
    pub help: String,
    /// The type of every series.
    pub metric_type: MetricType,
    /// The series, in the order they are written.
    pub series: Vec<Series>,
}

/// Joins families of the same name (one per namespace) into one, keeping
/// the order in which names first appear: the text format lists each
/// family once.
pub fn merge_by_name(families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::with_capacity(families.len());
    for family in families {
        match merged.iter_mut().find(|seen| seen.name == family.name) {
            Some(seen) => seen.series.extend(family.series),
            None => merged.push(family),
        }
    }
    merged
}

/// Appends `families` to `out` in the text format. A family with no series
/// is left out: the format has no way to write one.
pub fn encode(families: &[MetricFamily], out: &mut String) {
    for family in families.iter().filter(|family| !family.series.is_empty()) {
        if !family.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            push_escaped(out, &family.help, false);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&family.name);
        out.push(' ');
        out.push_str(family.metric_type.name());
        out.push('\n');
        for series in &family.series {
            out.push_str(&family.name);
            let mut separator = '{';
            for (name, value) in &series.labels {
                out.push(separator);
                out.push_str(name);
                out.push_str("=\"");
                push_escaped(out, value, true);
                out.push('"');
                separator = ',';
            }
            if !series.labels.is_empty() {
                out.push('}');
            }
            out.push(' ');
            push_value(out, series.value);
            out.push('\n');
        }
    }
}

/// Escapes a backslash and a line feed, and in a label value a double
/// quote, with a backslash.
fn push_escaped(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A value as the format writes it: the shortest decimal that reads back
/// as the same number, and `+Inf`, `-Inf` and `NaN`.
fn push_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(name: &str, series: Vec<Series>) -> MetricFamily {
        MetricFamily {
            name: name.to_string(),
            help: "Help with a \\ and a\nline feed, and \"quotes\".".to_string(),
            metric_type: MetricType::Counter,
            series,
        }
    }

    #[test]
    fn families_are_written_with_escapes_and_exact_values() {
        let mut text = String::new();
        let series = |labels: Vec<(&'static str, String)>, value| Series { labels, value };
        encode(
            &[
                family(
                    "a_total",
                    vec![
                        series(vec![("path", "C:\\x \"y\"\nz".to_string())], 0.1 + 0.2),
                        series(vec![("le", "1".to_string()), ("m", String::new())], 3.0),
                    ],
                ),
                family("empty", Vec::new()),
                family(
                    "b",
                    vec![
                        series(Vec::new(), f64::INFINITY),
                        series(Vec::new(), f64::NEG_INFINITY),
                        series(Vec::new(), f64::NAN),
                        series(Vec::new(), 1e21),
                        series(Vec::new(), -0.5),
                    ],
                ),
            ],
            &mut text,
        );
        let help = "Help with a \\\\ and a\\nline feed, and \"quotes\".";
        assert_eq!(
            text,
            format!(
                "# HELP a_total {help}\n# TYPE a_total counter\n\
                 a_total{{path=\"C:\\\\x \\\"y\\\"\\nz\"}} 0.30000000000000004\n\
                 a_total{{le=\"1\",m=\"\"}} 3\n\
                 # HELP b {help}\n# TYPE b counter\n\
                 b +Inf\nb -Inf\nb NaN\nb 1000000000000000000000\nb -0.5\n"
            )
        );
    }

    #[test]
    fn families_of_one_name_are_merged_in_first_order() {
        let one = |name: &str, value| {
            family(
                name,
                vec![Series {
                    labels: Vec::new(),
                    value,
                }],
            )
        };
        let merged = merge_by_name(vec![one("x", 1.0), one("y", 2.0), one("x", 3.0)]);
        let names: Vec<&str> = merged.iter().map(|family| family.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(merged[0].series.len(), 2);
        assert_eq!(merged[0].series[1].value, 3.0);
    }
}
