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
            "Longest time between samples (--collector.interval), in seconds, and the most a scrape at the scrapes' period gets figures past their sample: a sample that takes nearly as long cannot keep up.",
            seconds,
        );
        single_gauge(
            out,
            &[],
            "portstat_sample_scrape_period_seconds",
            "Period of the scrapes that samples follow, one just before each scrape (--collector.follow-scrapes), in seconds; 0 while samples run every --collector.interval.",
            status.scrape_period_seconds.unwrap_or(0.0),
        );
        let mut samples = Family::new("portstat_samples_total", "Samples taken since start.", &[]);
        samples.counter(&[], status.samples as f64);
        samples.finish(out);
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
