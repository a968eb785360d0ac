//! The collectors, and their health.
//!
//! A collector is one kind of read of the kernel, a type in a module of its
//! own under `collector/`, which owns what it keeps across samples and
//! declares its flags (a `clap::Args` struct, which `cli` flattens) and its
//! `REGISTRATION`: the label of its health series, whether a
//! plan runs it, what is logged when it starts failing and recovers, and
//! whether its failure fails the read it is part of. `REGISTERED` lists them,
//! one line each.
//!
//! - `sockets`: settings and sockets, through one fallback chain, and the one
//!   walk of the host's shared tables;
//! - `conntrack`: source NAT, with `--collector.nat`;
//! - `owners`: the processes that hold the sockets, with
//!   `--collector.processes`;
//! - `namespaces`: the host's namespaces, with `--collector.netns=all`;
//! - `failures`: the failure counter, once its programs load.
//!
//! Those that read inside a namespace (`sockets`, `conntrack`) are
//! `NamespaceCollector`s: the one read of a namespace (`read`) runs each,
//! inside the namespace, through `Collectors::read_namespace`. The others
//! read once a sample, across the namespaces, where the sampler puts them
//! (the namespaces first, the failure counter before the sockets, the
//! owners after), through `Collectors::execute`. Either way the read is
//! timed as its collector's and its failure noted, as node_exporter's
//! `execute` does, and at the end of a sample `Collectors::finish_sample`
//! gives the statuses that `portstat_collector_success` and
//! `portstat_collector_duration_seconds` show.

use std::fmt::Display;
use std::time::{Duration, Instant};

use portstat_core::status::{Collector, CollectorStatus};

use crate::plan::Plan;
use crate::source::SourceError;
pub use namespace_read::InNamespace;

pub mod all;
pub mod conntrack;
pub mod failures;
pub mod namespace_read;
pub mod namespaces;
pub mod owners;
pub mod read;
pub mod reader;
pub mod sockets;
pub mod walk;

pub use reader::NamespaceReader;

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
    /// Whether its failure fails the read it is part of (a namespace's
    /// sockets), rather than being noted as its own while the read goes on.
    pub fails_the_read: bool,
}

/// Every collector, in the order a sample runs them and metrics list them.
pub const REGISTERED: [&Registration; 5] = [
    &failures::REGISTRATION,
    &namespaces::REGISTRATION,
    &sockets::REGISTRATION,
    &conntrack::REGISTRATION,
    &owners::REGISTRATION,
];

/// Why a collector's read did not give its figures.
#[derive(Debug)]
pub enum CollectError {
    /// It failed, with the kernel's error.
    Source(SourceError),
    /// It failed, for this reason.
    Failed(String),
    /// There is nothing to read here (a module not loaded, a capability
    /// missing): not a failure, logged once with `why`.
    Unavailable { reason: String, why: &'static str },
}

/// A collector that reads inside one network namespace at a time.
pub trait NamespaceCollector {
    /// Its registration.
    fn registration(&self) -> &'static Registration;

    /// Reads what it reads of the namespace the calling thread is in into
    /// `namespace`.
    fn read_namespace(&mut self, namespace: &mut InNamespace<'_>) -> Result<(), CollectError>;

    /// Lets go of what ties it to the namespace it read last (a netlink
    /// socket), so that it holds nothing of it once the thread leaves.
    fn leave_namespace(&mut self);
}

/// The registration of `collector` (every one is: a test checks it).
fn registration(collector: Collector) -> Option<&'static Registration> {
    REGISTERED
        .into_iter()
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

    /// Runs `collector`'s read of `namespace`, timed as the collector's.
    /// The kernel's error of a collector that fails the read
    /// (`Registration::fails_the_read`) is returned, and is the namespace's
    /// failure; any other failure is noted as the collector's, and what is
    /// unavailable logged once, while the read goes on.
    pub fn read_namespace(
        &mut self,
        collector: &mut dyn NamespaceCollector,
        namespace: &mut InNamespace<'_>,
    ) -> Result<(), SourceError> {
        let registration = collector.registration();
        let label = registration.collector;
        match self.time(label, || collector.read_namespace(namespace)) {
            Ok(()) => Ok(()),
            Err(CollectError::Source(error)) if registration.fails_the_read => Err(error),
            Err(CollectError::Source(error)) => {
                self.failed(label, error);
                Ok(())
            }
            Err(CollectError::Failed(reason)) => {
                self.failed(label, reason);
                Ok(())
            }
            Err(CollectError::Unavailable { reason, why }) => {
                self.unavailable(label, reason, why);
                Ok(())
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
    use crate::plan::Namespaces;
    use portstat_core::model::OwnerLookup;

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

    /// A collector whose read gives what it was told to.
    struct Told {
        registration: &'static Registration,
        result: fn() -> Result<(), CollectError>,
        reads: u32,
    }

    impl NamespaceCollector for Told {
        fn registration(&self) -> &'static Registration {
            self.registration
        }

        fn read_namespace(&mut self, namespace: &mut InNamespace<'_>) -> Result<(), CollectError> {
            self.reads += 1;
            assert_eq!(namespace.range.start, 40000, "read inside its namespace");
            (self.result)()
        }

        fn leave_namespace(&mut self) {}
    }

    #[test]
    fn a_namespace_read_fails_the_read_or_is_noted_as_its_registration_says() {
        use portstat_core::aggregate::{Aggregator, Limits};
        use portstat_core::model::{PortRange, ReservedPorts, TimeWaitReuse};
        let range = PortRange {
            start: 40000,
            end: 40099,
        };
        let mut aggregator = Aggregator::new(
            range,
            ReservedPorts::default(),
            TimeWaitReuse::default(),
            Limits::default(),
        );
        let mut namespace = InNamespace {
            aggregator: &mut aggregator,
            range,
            keep_port: None,
            sockets: read::SocketsRead::Alone,
            owner_lookup: OwnerLookup::Off,
            report: None,
            left_to_the_walk: None,
        };
        let failed = || {
            Err(CollectError::Source(SourceError::NoNamespace {
                reason: "gone".to_string(),
            }))
        };
        let mut collectors = Collectors::new(&[Collector::Sockets, Collector::Conntrack]);
        collectors.start_sample();
        // The sockets' failure is the read's: returned, not noted.
        let mut sockets = Told {
            registration: &sockets::REGISTRATION,
            result: failed,
            reads: 0,
        };
        assert!(
            collectors
                .read_namespace(&mut sockets, &mut namespace)
                .is_err()
        );
        // Conntrack's is its own: noted, and the read goes on.
        let mut conntrack = Told {
            registration: &conntrack::REGISTRATION,
            result: failed,
            reads: 0,
        };
        assert!(
            collectors
                .read_namespace(&mut conntrack, &mut namespace)
                .is_ok()
        );
        let statuses = collectors.finish_sample();
        assert_eq!(
            statuses
                .iter()
                .map(|status| (status.collector, status.success))
                .collect::<Vec<_>>(),
            [(Collector::Sockets, true), (Collector::Conntrack, false)]
        );
        // Nothing to read is no failure.
        collectors.start_sample();
        conntrack.result = || {
            Err(CollectError::Unavailable {
                reason: "no module".to_string(),
                why: "conntrack cannot be read",
            })
        };
        assert!(
            collectors
                .read_namespace(&mut conntrack, &mut namespace)
                .is_ok()
        );
        assert!(
            collectors
                .finish_sample()
                .iter()
                .all(|status| status.success)
        );
        assert_eq!((sockets.reads, conntrack.reads), (1, 2));
    }
}
