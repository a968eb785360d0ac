//! Each collector's health, named and behaving as node_exporter's
//! `node_scrape_collector_success` and `node_scrape_collector_duration_seconds`:
//! one series per collector the latest sample ran, so that a part that
//! fails (conntrack refused, the failure counter unreadable) reads 0 here
//! while the figures of the others stay.

use crate::exposition::MetricFamily;

use super::Family;
use crate::status::SampleStatus;

/// Writes the collector families.
pub fn render(status: &SampleStatus, out: &mut Vec<MetricFamily>) {
    let mut duration = Family::new(
        "portstat_collector_duration_seconds",
        "Time a collector's reads took in the last sample, summed over the namespaces it read, in seconds.",
        &[],
    );
    let mut success = Family::new(
        "portstat_collector_success",
        "1 if every read of a collector succeeded in the last sample, 0 if one failed (the log says why).",
        &[],
    );
    for collector in &status.collectors {
        let labels = [("collector", collector.collector.label())];
        duration.gauge(&labels, collector.duration_seconds);
        success.gauge(&labels, if collector.success { 1.0 } else { 0.0 });
    }
    duration.finish(out);
    success.finish(out);
}
