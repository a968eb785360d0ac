//! One module per metric family: each declares its families' names, help,
//! types and labels, and writes them from the `Snapshot` `aggregate` made.
//! The semantics stay in `aggregate` (and its modules `listeners`, `nat`
//! and `processes` for the figures of those families): a family module
//! only reads figures, so `aggregate` never imports `metrics`.
//!
//! Adding a metric from data already sampled touches its family's module,
//! its row in `docs/metrics.md`, and the golden snapshots that show it
//! (see `docs/metrics.md`, "Adding a metric").
//!
//! This module itself holds only the builder the family modules share.

use crate::exposition::{MetricFamily, MetricType, Series};

pub mod build;
pub mod collector;
pub mod connects;
pub mod failures;
pub mod headroom;
pub mod listeners;
pub mod nat;
pub mod netns;
pub mod occupancy;
pub mod processes;
pub mod range;
pub mod sampling;
pub mod source;

/// Labels every series of a family starts with, such as a namespace's.
pub type BaseLabels = [(&'static str, String)];

/// A metric family under construction.
pub struct Family {
    family: MetricFamily,
    /// Labels every series of the family starts with.
    base: Vec<(&'static str, String)>,
}

impl Family {
    /// A family of gauges with no series yet whose series all start with
    /// `base`; the first counter added makes it a family of counters.
    pub fn new(name: &str, help: &str, base: &BaseLabels) -> Family {
        Family {
            family: MetricFamily {
                name: name.to_string(),
                help: help.to_string(),
                metric_type: MetricType::Gauge,
                series: Vec::new(),
            },
            base: base.to_vec(),
        }
    }

    /// Adds a gauge series.
    pub fn gauge(&mut self, labels: &[(&'static str, &str)], value: f64) {
        self.family.metric_type = MetricType::Gauge;
        self.push(labels, value);
    }

    /// Adds a counter series.
    pub fn counter(&mut self, labels: &[(&'static str, &str)], value: f64) {
        self.family.metric_type = MetricType::Counter;
        self.push(labels, value);
    }

    /// Appends the finished family to `out`, unless it has no series: the
    /// text format has no way to write a family without samples.
    pub fn finish(self, out: &mut Vec<MetricFamily>) {
        if !self.family.series.is_empty() {
            out.push(self.family);
        }
    }

    fn push(&mut self, labels: &[(&'static str, &str)], value: f64) {
        let labels = self
            .base
            .iter()
            .cloned()
            .chain(
                labels
                    .iter()
                    .map(|&(name, value)| (name, value.to_string())),
            )
            .collect();
        self.family.series.push(Series { labels, value });
    }
}

/// A family holding one unlabelled gauge.
pub fn single_gauge(
    out: &mut Vec<MetricFamily>,
    base: &BaseLabels,
    name: &str,
    help: &str,
    value: f64,
) {
    let mut family = Family::new(name, help, base);
    family.gauge(&[], value);
    family.finish(out);
}
