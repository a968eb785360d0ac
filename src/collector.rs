//! The collectors of a sample and their health: how long each one's reads
//! took, whether they all succeeded, and a log line when a collector starts
//! failing and when it recovers, never at every sample.
//!
//! A collector here is a kind of read (`portstat_core::status::Collector`):
//! the sampler and the namespace reads time each read they make with
//! `Collectors::time` and report failures with `Collectors::failed`; at the
//! end of a sample `Collectors::finish_sample` gives the statuses that
//! `portstat_collector_success` and `portstat_collector_duration_seconds`
//! show. Adding a collector is a variant of `Collector`, its messages in
//! `messages`, the reads it times, and the golden exposition.

use std::fmt::Display;
use std::time::{Duration, Instant};

use portstat_core::status::{Collector, CollectorStatus};

/// What is logged when a collector starts failing, and when it recovers;
/// `None` where another log line says it (a failed sample is logged as
/// such).
fn messages(collector: Collector) -> Option<(&'static str, &'static str)> {
    match collector {
        Collector::Failures => Some((
            "reading the failure counter failed; its families are absent meanwhile",
            "reading the failure counter recovered",
        )),
        Collector::Namespaces => Some((
            "some network namespaces cannot be sampled (portstat_netns_failed)",
            "every network namespace can be sampled again",
        )),
        Collector::Sockets => None,
        Collector::Conntrack => Some((
            "reading conntrack failed; no NAT figures until it works again",
            "reading conntrack works again",
        )),
        Collector::Owners => Some((
            "reading socket owners failed; they show as unknown",
            "reading socket owners works again",
        )),
    }
}

/// One collector's health.
#[derive(Debug)]
struct Health {
    collector: Collector,
    /// Whether the collector runs in this sample.
    planned: bool,
    /// Whether it failed at the last sample that ran it.
    failing: bool,
    /// Whether it was logged that there is nothing to read.
    unavailable_logged: bool,
    /// The time its reads took in this sample.
    duration: Duration,
    /// The first failure of this sample.
    failure: Option<String>,
}

/// The health of every collector.
#[derive(Debug)]
pub struct Collectors {
    health: Vec<Health>,
}

impl Collectors {
    /// Collectors of which `planned` run.
    pub fn new(planned: &[Collector]) -> Collectors {
        Collectors {
            health: Collector::ALL
                .iter()
                .map(|&collector| Health {
                    collector,
                    planned: planned.contains(&collector),
                    failing: false,
                    unavailable_logged: false,
                    duration: Duration::ZERO,
                    failure: None,
                })
                .collect(),
        }
    }

    fn health(&mut self, collector: Collector) -> &mut Health {
        let index = Collector::ALL
            .iter()
            .position(|&candidate| candidate == collector)
            .unwrap_or(0);
        &mut self.health[index]
    }

    /// Runs `collector` from the next sample on, or not.
    pub fn plan(&mut self, collector: Collector, runs: bool) {
        self.health(collector).planned = runs;
    }

    /// Whether `collector` runs.
    pub fn planned(&self, collector: Collector) -> bool {
        self.health
            .iter()
            .any(|health| health.collector == collector && health.planned)
    }

    /// Starts a sample: no time spent, no failure yet.
    pub fn start_sample(&mut self) {
        for health in &mut self.health {
            health.duration = Duration::ZERO;
            health.failure = None;
        }
    }

    /// Runs `read`, one of `collector`'s reads, adding the time it takes to
    /// the collector's.
    pub fn time<T>(&mut self, collector: Collector, read: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = read();
        self.health(collector).duration += started.elapsed();
        result
    }

    /// Notes that a read of `collector` failed, for `reason`.
    pub fn failed(&mut self, collector: Collector, reason: impl Display) {
        let health = self.health(collector);
        if health.failure.is_none() {
            health.failure = Some(reason.to_string());
        }
    }

    /// Notes that `collector` finds nothing to read here (a module not
    /// loaded, a capability missing), which is not a failure; logged once.
    pub fn unavailable(&mut self, collector: Collector, reason: impl Display, why: &str) {
        let health = self.health(collector);
        if !health.unavailable_logged {
            health.unavailable_logged = true;
            tracing::info!(collector = collector.label(), err = %reason, "{why}");
        }
    }

    /// Ends a sample: logs each collector that started failing, with the
    /// first reason, and each that recovered; returns the statuses of the
    /// collectors that ran.
    pub fn finish_sample(&mut self) -> Vec<CollectorStatus> {
        let mut statuses = Vec::new();
        for health in self.health.iter_mut().filter(|health| health.planned) {
            let failed = health.failure.is_some();
            if let Some((failing, recovered)) = messages(health.collector) {
                match (&health.failure, health.failing) {
                    (Some(reason), false) => {
                        tracing::warn!(collector = health.collector.label(), "{failing}: {reason}")
                    }
                    (None, true) => {
                        tracing::info!(collector = health.collector.label(), "{recovered}")
                    }
                    _ => {}
                }
            }
            health.failing = failed;
            statuses.push(CollectorStatus {
                collector: health.collector,
                success: !failed,
                duration_seconds: health.duration.as_secs_f64(),
            });
        }
        statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_the_planned_collectors_with_their_time_and_failures() {
        let mut collectors = Collectors::new(&[Collector::Sockets, Collector::Conntrack]);
        collectors.start_sample();
        let read = collectors.time(Collector::Sockets, || {
            std::thread::sleep(Duration::from_millis(2));
            7
        });
        assert_eq!(read, 7);
        collectors.failed(Collector::Conntrack, "refused");
        collectors.failed(Collector::Conntrack, "refused again");
        let statuses = collectors.finish_sample();
        assert_eq!(statuses.len(), 2);
        assert_eq!(statuses[0].collector, Collector::Sockets);
        assert!(statuses[0].success);
        assert!(statuses[0].duration_seconds >= 0.002);
        assert_eq!(statuses[1].collector, Collector::Conntrack);
        assert!(!statuses[1].success);
        // The next sample starts afresh.
        collectors.start_sample();
        collectors.plan(Collector::Owners, true);
        let statuses = collectors.finish_sample();
        assert!(statuses.iter().all(|status| status.success));
        assert_eq!(statuses[0].duration_seconds, 0.0);
        assert!(collectors.planned(Collector::Owners));
        assert_eq!(statuses.len(), 3);
    }
}
