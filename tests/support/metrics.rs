//! One exposition, parsed into series.

use super::*;

/// One exposition, as series text (`name{labels}`) to value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub series: BTreeMap<String, f64>,
    pub text: String,
}

impl Metrics {
    /// Parses the Prometheus text format.
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                (series.to_string(), value.parse().expect("a sample value"))
            })
            .collect();
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// The value of one series, written as the exporter writes it, such as
    /// `portstat_ephemeral_ports_used{protocol="tcp"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// The value of one series; fails the test when it is absent.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// Every series of one family.
    pub fn family(&self, name: &str) -> BTreeMap<String, f64> {
        self.series
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(series, value)| (series.clone(), *value))
            .collect()
    }
}
