//! The collectors of a sample and their health: how long each one's reads
//! took, whether they all succeeded, and a log line when a collector starts
//! failing and when it recovers, never at every sample.
//!
//! A collector here is a kind of read (`portstat_core::status::Collector`),
//! registered once in `REGISTERED`: whether it runs follows from the plan,
//! and its health, timing and log lines from its registration. The sampler
//! and the namespace reads run each read through `Collectors::execute`
//! (or time it with `Collectors::time` where its failure is reported
//! apart); at the end of a sample `Collectors::finish_sample` gives the
//! statuses that `portstat_collector_success` and
//! `portstat_collector_duration_seconds` show. Adding a collector is a
//! variant of `Collector`, its registration here, the reads it runs, and
//! the golden exposition.

use std::fmt::Display;
use std::time::{Duration, Instant};

use portstat_core::model::OwnerLookup;
use portstat_core::status::{Collector, CollectorStatus};

use crate::plan::{Namespaces, Plan};

/// A collector as registered: whether a plan runs it, and what is logged
/// of its health.
pub struct Registration {
    /// The collector, as the `collector` label names it.
    pub collector: Collector,
    /// Whether a sample of `plan` runs it.
    pub runs: fn(&Plan) -> bool,
    /// What is logged when it starts failing, and when it recovers; `None`
    /// where another log line says it (a failed sample is logged as such).
    pub messages: Option<(&'static str, &'static str)>,
}

/// Every collector, in the order a sample runs them and metrics list them.
pub const REGISTERED: [Registration; 5] = [
    Registration {
        collector: Collector::Failures,
        runs: |plan| plan.failures,
        messages: Some((
            "reading the failure counter failed; its families are absent meanwhile",
            "reading the failure counter recovered",
        )),
    },
    Registration {
        collector: Collector::Namespaces,
        runs: |plan| matches!(plan.namespaces, Namespaces::All { .. }),
        messages: Some((
            "some network namespaces cannot be sampled (portstat_netns_failed)",
            "every network namespace can be sampled again",
        )),
    },
    Registration {
        collector: Collector::Sockets,
        runs: |_| true,
        messages: None,
    },
    Registration {
        collector: Collector::Conntrack,
        runs: |plan| plan.nat,
        messages: Some((
            "reading conntrack failed; no NAT figures until it works again",
            "reading conntrack works again",
        )),
    },
    Registration {
        collector: Collector::Owners,
        runs: |plan| plan.owners != OwnerLookup::Off,
        messages: Some((
            "reading socket owners failed; they show as unknown",
            "reading socket owners works again",
        )),
    },
];

/// The registration of `collector` (every one is: a test checks it).
fn registration(collector: Collector) -> Option<&'static Registration> {
    REGISTERED
        .iter()
        .find(|registration| registration.collector == collector)
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
    /// The collectors `plan` runs.
    pub fn for_plan(plan: &Plan) -> Collectors {
        let planned: Vec<Collector> = REGISTERED
            .iter()
            .filter(|registration| (registration.runs)(plan))
            .map(|registration| registration.collector)
            .collect();
        Collectors::new(&planned)
    }

    /// Collectors of which `planned` run (a one-shot command's reads).
    pub fn new(planned: &[Collector]) -> Collectors {
        Collectors {
            health: REGISTERED
                .iter()
                .map(|registration| Health {
                    collector: registration.collector,
                    planned: planned.contains(&registration.collector),
                    failing: false,
                    unavailable_logged: false,
                    duration: Duration::ZERO,
                    failure: None,
                })
                .collect(),
        }
    }

    fn health(&mut self, collector: Collector) -> &mut Health {
        let index = REGISTERED
            .iter()
            .position(|registration| registration.collector == collector)
            .unwrap_or(0);
        &mut self.health[index]
    }

    /// Runs the collectors `plan` runs from the next sample on: the kernel
    /// changed the plan (the failure counter loaded).
    pub fn replan(&mut self, plan: &Plan) {
        for health in &mut self.health {
            health.planned =
                registration(health.collector).is_some_and(|registered| (registered.runs)(plan));
        }
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
    /// the collector's and noting its failure; the value it read, where it
    /// succeeded. As node_exporter's `execute`, for each read of a sample.
    pub fn execute<T, E: Display>(
        &mut self,
        collector: Collector,
        read: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        match self.time(collector, read) {
            Ok(value) => Some(value),
            Err(error) => {
                self.failed(collector, error);
                None
            }
        }
    }

    /// Runs `read`, one of `collector`'s reads, adding the time it takes to
    /// the collector's, where its failure is reported apart (`failed`), or
    /// fails the whole sample.
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
            if let Some((failing, recovered)) =
                registration(health.collector).and_then(|registered| registered.messages)
            {
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
        assert_eq!(
            collectors.execute(Collector::Owners, || Err::<(), _>("unplanned")),
            None
        );
        let statuses = collectors.finish_sample();
        assert!(statuses.iter().all(|status| status.success));
        assert_eq!(statuses[0].duration_seconds, 0.0);
        assert_eq!(statuses.len(), 2);
    }

    #[test]
    fn the_plan_decides_which_registered_collectors_run() {
        use portstat_core::model::{PerProtocol, SourceKind};
        let mut plan = Plan {
            sources: PerProtocol::both(SourceKind::Netlink),
            owners: OwnerLookup::Off,
            namespaces: Namespaces::Own,
            nat: false,
            failures: false,
        };
        let mut collectors = Collectors::for_plan(&plan);
        let running = |collectors: &Collectors| -> Vec<Collector> {
            Collector::ALL
                .into_iter()
                .filter(|&collector| collectors.planned(collector))
                .collect()
        };
        assert_eq!(running(&collectors), [Collector::Sockets]);
        plan.failures = true;
        plan.nat = true;
        plan.owners = OwnerLookup::Records;
        plan.namespaces = Namespaces::All {
            max: 10,
            one_walk: true,
        };
        collectors.replan(&plan);
        assert_eq!(running(&collectors), Collector::ALL);
        // Every collector the core names is registered, once, in its order.
        let registered: Vec<Collector> = REGISTERED
            .iter()
            .map(|registration| registration.collector)
            .collect();
        assert_eq!(registered, Collector::ALL);
    }
}
