//! The exposition the server answers with: `portstat_core::render`'s text
//! of the snapshots and the status, followed by the standard `process_*`
//! families of the exporter's own process, which the `prometheus` crate
//! reads from `/proc/self`.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use portstat_core::aggregate::Snapshot;
use portstat_core::status::{Build, SampleStatus};

/// What this binary is: its version and the source revision it was built
/// from (`build.rs`), or `unknown`.
pub const BUILD: Build = Build {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("PORTSTAT_REVISION"),
};

/// Renders expositions and landing pages; owns the collectors of the
/// exporter's own process.
pub struct Renderer {
    process: Option<prometheus::process_collector::ProcessCollector>,
    metrics_path: String,
}

impl Renderer {
    /// A renderer; `exporter_metrics` adds the standard `process_*` families,
    /// and pages link to the metrics at `metrics_path`.
    pub fn new(exporter_metrics: bool, metrics_path: &str) -> Renderer {
        Renderer {
            process: exporter_metrics
                .then(prometheus::process_collector::ProcessCollector::for_self),
            metrics_path: metrics_path.to_string(),
        }
    }

    /// The path the metrics are served at, which pages link to.
    pub fn metrics_path(&self) -> &str {
        &self.metrics_path
    }

    /// Renders the snapshots, one per namespace sampled, and the status as
    /// text.
    pub fn render(
        &self,
        snapshots: &[Snapshot],
        status: &SampleStatus,
    ) -> Result<String, prometheus::Error> {
        let mut text = portstat_core::render::render(snapshots, status);
        if let Some(process) = &self.process {
            let mut families = process.collect();
            precise_cpu_seconds(&mut families, cpu_seconds());
            let mut process_text = Vec::with_capacity(1024);
            TextEncoder::new().encode(&families, &mut process_text)?;
            // The text encoder writes only UTF-8 (it escapes label values
            // itself).
            text.push_str(
                &String::from_utf8(process_text)
                    .map_err(|e| prometheus::Error::Msg(e.to_string()))?,
            );
        }
        Ok(text)
    }
}

/// The CPU time the process has used, user and system, from
/// `getrusage(2)` in microseconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: `usage` is a plain C struct that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` outlives the call, which only writes it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Sets `process_cpu_seconds_total` to `seconds`: the process collector
/// counts whole seconds (clock ticks divided, as integers, by their rate),
/// so a `rate()` of it moves in steps of one second.
fn precise_cpu_seconds(families: &mut [MetricFamily], seconds: Option<f64>) {
    let Some(seconds) = seconds else {
        return;
    };
    for family in families
        .iter_mut()
        .filter(|family| family.name() == "process_cpu_seconds_total")
    {
        for metric in family.mut_metric() {
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(seconds);
            metric.set_counter(counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_seconds_are_not_truncated() {
        // Some CPU time, so that truncation to whole seconds would show.
        let mut spin = 0u64;
        while cpu_seconds().unwrap() < 0.3 {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        let renderer = Renderer::new(true, "/metrics");
        let before = cpu_seconds().unwrap();
        let text = renderer.render(&[], &SampleStatus::default()).unwrap();
        let after = cpu_seconds().unwrap();
        let value: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            before <= value && value <= after,
            "{before} <= {value} <= {after}"
        );
    }
}
