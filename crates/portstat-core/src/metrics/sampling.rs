//! The sampler's own health: whether the last sample succeeded, how long it
//! took, how often samples run, and the failures since start.

use crate::exposition::MetricFamily;

use super::{Family, single_gauge};
use crate::status::{SampleStatus, Stage};

/// Writes the sampling families.
pub fn render(status: &SampleStatus, out: &mut Vec<MetricFamily>) {
    single_gauge(
        out,
        &[],
        "portstat_sample_success",
        "1 if the last sample succeeded, 0 if it failed.",
        if status.success { 1.0 } else { 0.0 },
    );
    single_gauge(
        out,
        &[],
        "portstat_sample_duration_seconds",
        "Wall time the last sample took, in seconds.",
        status.duration_seconds,
    );
    if let Some(seconds) = status.interval_seconds {
        single_gauge(
            out,
            &[],
            "portstat_sample_interval_seconds",
            "Time between samples (--collector.interval), in seconds: a sample that takes nearly as long cannot keep up.",
            seconds,
        );
    }
    if let Some(seconds) = status.last_success_seconds {
        single_gauge(
            out,
            &[],
            "portstat_sample_timestamp_seconds",
            "Unix time of the last successful sample, in seconds.",
            seconds,
        );
    }
    let mut errors = Family::new(
        "portstat_sample_errors_total",
        "Samples that failed since start, by the stage that failed.",
        &[],
    );
    for (stage, count) in Stage::ALL.iter().zip(status.errors) {
        errors.counter(&[("stage", stage.label())], count as f64);
    }
    errors.finish(out);
}
