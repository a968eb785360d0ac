//! One module per metric family: each declares its families' names, help,
//! types and labels, and writes them; where a family's figures are its own
//! (listeners, processes) the module computes them too, fed socket by
//! socket by `aggregate`. Semantics shared by several families (ports,
//! destinations, exclusivity) stay in `aggregate`.
//!
//! Adding a metric from data already sampled touches its family's module,
//! its row in `docs/metrics.md`, and the golden snapshots that show it
//! (see `docs/metrics.md`, "Adding a metric").
//!
//! This module itself imports nothing from the crate: it holds only the
//! builder the family modules share.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

pub mod build;
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
    metrics: Vec<Metric>,
    /// Labels every series of the family starts with.
    base: Vec<(&'static str, String)>,
}

impl Family {
    /// A family with no series yet whose series all start with `base`.
    pub fn new(name: &str, help: &str, base: &BaseLabels) -> Family {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        Family {
            family,
            metrics: Vec::new(),
            base: base.to_vec(),
        }
    }

    /// Adds a gauge series.
    pub fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        self.family.set_field_type(MetricType::GAUGE);
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_gauge(gauge);
        metric.set_label(self.label_pairs(labels));
        self.metrics.push(metric);
    }

    /// Adds a counter series.
    pub fn counter(&mut self, labels: &[(&str, &str)], value: f64) {
        self.family.set_field_type(MetricType::COUNTER);
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        metric.set_label(self.label_pairs(labels));
        self.metrics.push(metric);
    }

    /// Appends the finished family to `out`, unless it has no series: the
    /// text format has no way to write a family without samples.
    pub fn finish(mut self, out: &mut Vec<MetricFamily>) {
        if self.metrics.is_empty() {
            return;
        }
        self.family.set_metric(self.metrics);
        out.push(self.family);
    }

    fn label_pairs(&self, labels: &[(&str, &str)]) -> Vec<LabelPair> {
        self.base
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .chain(labels.iter().copied())
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect()
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
