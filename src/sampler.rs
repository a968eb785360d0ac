//! Runs source → aggregate → render and publishes each result for `serve`.
//!
//! A sample runs the collectors (`crate::collector`) at their points: the
//! failure counter's read first, then the namespaces to read, then each
//! namespace's read (sockets and source NAT inside it), then the owners of
//! them all; the failures collector finishes the snapshots. What the
//! sampler thread asks of the system (priority, time slice, memory handed
//! back, gzip) is in `sampler::thread`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use crate::collector::Collectors;
use crate::collector::all::{NamespacesRead, read_all};
use crate::collector::failures::{Failures, Reads};
use crate::collector::namespaces::{Namespaces, NetnsChoice};
use crate::collector::read::{NamespaceRead, Reading, SocketsRead, read_namespace};
use crate::collector::reader::NamespaceReader;
use crate::plan::{self, Plan};
use crate::render::Renderer;
use crate::scrapes::ScrapeClock;
use crate::source::bpf::failures::Counting;
use crate::source::{NameSource, ReadReport, SourceError, namespaces};
use portstat_core::aggregate::{Limits, Snapshot};
use portstat_core::model::{PerProtocol, SocketOwners};
use portstat_core::page::landing_page;
use portstat_core::status::{Collector, NamespaceCounts, SampleStatus, Stage};
use thread::{gzip, lower_thread_priority, release_free_memory};

mod thread;

pub use crate::collector::failures::{connection_names_of, failures_counted_by, running_exporter};

/// Which network namespaces a sampler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The one the exporter runs in; series carry no namespace labels.
    Own,
    /// Every one on the host, at most `max`; series carry `netns` labels.
    All {
        /// The most namespaces sampled; the rest are counted as omitted.
        max: usize,
    },
}

impl NamespaceScope {
    /// The scope `choice` names, with at most `max` namespaces for `all`.
    pub fn new(choice: NetnsChoice, max: usize) -> NamespaceScope {
        match choice {
            NetnsChoice::Own => NamespaceScope::Own,
            NetnsChoice::All => NamespaceScope::All { max },
        }
    }
}

/// One rendered exposition, ready to be sent as it is.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// The Prometheus text.
    pub text: Bytes,
    /// The same text, gzip-compressed once here rather than at every scrape.
    pub gzip: Bytes,
    /// The landing page.
    pub page: Bytes,
    /// Whether any sample has succeeded yet.
    pub ready: bool,
}

/// Samples the namespace and keeps what is needed across samples: the last good
/// snapshot, the error counts, and whether the sampler is failing.
pub struct Sampler {
    reader: NamespaceReader,
    renderer: Renderer,
    limits: Limits,
    namespaces: NamespaceScope,
    /// The last good snapshots, one per namespace; empty before any.
    last_good: Vec<Snapshot>,
    status: SampleStatus,
    last_exposition: Exposition,
    /// Whether a server serves what it renders (`run`), or the figures are
    /// printed once (`--once`).
    serving: bool,
    /// Whether the cost of sharing the host's TCP table was logged.
    sharing_logged: bool,
    /// The failures collector.
    failures: Failures,
    /// The namespaces collector, where every namespace is read.
    found: Option<Namespaces>,
    /// The plan last logged.
    plan_logged: Option<Plan>,
    /// The health of each collector.
    collectors: Collectors,
}

/// The ports of the kernel's default range, 32768-60999, where the range
/// cannot be read.
const DEFAULT_RANGE_PORTS: u32 = 28232;

/// How long a daemon's first sample waits for the BPF programs to load
/// before it reads without them.
const FIRST_SAMPLE_WAITS_FOR_PROGRAMS: Duration = Duration::from_millis(500);

/// The share of the interval past which a sample slowed by namespaces that
/// share the host's TCP table is logged.
const SHARING_LOG_SHARE: f64 = 0.25;

impl Sampler {
    /// A sampler that reads the `namespaces` with `reader`, computes within
    /// `limits` and renders with `renderer`.
    pub fn new(
        reader: NamespaceReader,
        renderer: Renderer,
        limits: Limits,
        namespaces: NamespaceScope,
    ) -> Sampler {
        let found = match namespaces {
            NamespaceScope::Own => None,
            NamespaceScope::All { max } => Some(Namespaces::new(reader.procfs_root(), max)),
        };
        let mut sampler = Sampler {
            failures: Failures::new(reader.procfs_root()),
            found,
            reader,
            renderer,
            limits,
            namespaces,
            last_good: Vec::new(),
            serving: false,
            sharing_logged: false,
            plan_logged: None,
            collectors: Collectors::new(&[]),
            status: SampleStatus {
                build: crate::render::BUILD,
                ..SampleStatus::default()
            },
            last_exposition: Exposition::default(),
        };
        sampler.collectors = Collectors::for_plan(&sampler.plan());
        sampler
    }

    /// Counts failed `connect()` calls in the kernel from now on, for as
    /// long as the sampler lives, where the BPF program loads, and what
    /// `counting` asks for besides (`Failures::load`). For a sampler that
    /// runs (`run`): a one-shot sample would only count its own instant.
    pub fn count_failures(&mut self, counting: Counting) {
        // Connections are named in a map sized against the range of the
        // exporter's own namespace.
        let ports = self
            .reader
            .read_settings()
            .map_or(DEFAULT_RANGE_PORTS, |settings| settings.range.port_count());
        // The programs record only the namespaces sampled: room for each.
        let namespaces = match self.namespaces {
            NamespaceScope::Own => 1,
            NamespaceScope::All { max } => u32::try_from(max).unwrap_or(u32::MAX),
        };
        self.failures.load(counting, ports, namespaces);
        self.status.failure_counting = self.failures.counting().clone();
        let plan = self.plan();
        self.collectors.replan(&plan);
    }

    /// Resolves what the sampler reads, before its first sample: loads the
    /// programs a one-shot run or `--collector.source bpf` reads with (a
    /// daemon with `auto` loads them in the background, `run`).
    pub fn resolve_plan(&mut self) {
        self.reader.load_owner_program();
    }

    /// What the sampler reads now, and how.
    pub fn plan(&self) -> Plan {
        Plan {
            sources: self.reader.sources(),
            owners: self.reader.owner_lookup(),
            namespaces: match self.namespaces {
                NamespaceScope::Own => plan::Namespaces::Own,
                NamespaceScope::All { max } => plan::Namespaces::All {
                    max,
                    one_walk: self.reader.walks_shared_tables(),
                },
            },
            nat: self.reader.reads_nat(),
            failures: self.failures.counts(),
        }
    }

    /// Logs the plan at a daemon's first sample, and whenever the kernel
    /// changed it (a program loaded, a source fell back).
    fn log_plan(&mut self) {
        if !self.serving {
            return;
        }
        let plan = self.plan();
        plan.log_change(self.plan_logged.as_ref());
        self.plan_logged = Some(plan);
    }

    /// Whether the latest sample succeeded.
    pub fn succeeded(&self) -> bool {
        self.status.success
    }

    /// Samples once and renders the result.
    ///
    /// When reading fails the last good snapshot is rendered again with
    /// `portstat_sample_success` at 0. A warning is logged when failing starts,
    /// not at every sample; recovery is logged at info.
    pub fn sample(&mut self) -> Exposition {
        let started = Instant::now();
        self.collectors.start_sample();
        let was_failing =
            self.status.errors[stage_index(Stage::Source)] > 0 && !self.status.success;
        // Read before the sockets, so that every call the counts miss is
        // made after, and is counted as an attempt by the next sample.
        let failure_counts = self
            .failures
            .read(&mut self.collectors)
            .map(|(counts, missed)| {
                self.status.counting_runs_missed = missed;
                counts
            });
        let mut names = self.failures.connection_names();
        let result = match self.namespaces {
            NamespaceScope::Own => self.sample_own(names.as_deref_mut()),
            NamespaceScope::All { .. } => self.sample_all(names.as_deref_mut()),
        };
        drop(names);
        match result {
            Ok(sampled) => {
                let no_handles = HashMap::new();
                let handles = self.found.as_ref().map_or(&no_handles, Namespaces::handles);
                if let Some(evicted) = self
                    .failures
                    .sweep_connection_names(handles, &mut self.collectors)
                {
                    self.status.connection_names_evicted = evicted;
                }
                self.last_good =
                    self.failures
                        .finish(sampled, failure_counts, handles, &self.last_good);
                self.status.success = true;
                self.status.last_success_seconds = Some(unix_seconds());
                if was_failing {
                    tracing::info!("sampling recovered");
                }
            }
            Err(error) => {
                self.status.errors[stage_index(Stage::Source)] += 1;
                match &error {
                    SourceError::NoNamespace { reason } => {
                        self.collectors.failed(Collector::Namespaces, reason)
                    }
                    error => self.collectors.failed(Collector::Sockets, error),
                }
                if !self.serving {
                    // --once: nothing is served, and the exit status says it.
                    tracing::error!(err = %error, "sampling failed");
                } else if !was_failing {
                    tracing::warn!(err = %error, "sampling failed; serving the last good figures");
                } else {
                    tracing::debug!(err = %error, "sampling still failing");
                }
                self.status.success = false;
            }
        }
        self.status.collectors = self.collectors.finish_sample();
        self.log_plan();
        self.status.duration_seconds = started.elapsed().as_secs_f64();
        self.status.samples += 1;
        self.say_what_sharing_costs();
        match self.renderer.render(&self.last_good, &self.status) {
            Ok(text) => {
                let page = landing_page(
                    self.own_snapshot(),
                    &self.status,
                    self.renderer.metrics_path(),
                );
                self.last_exposition = Exposition {
                    gzip: gzip(text.as_bytes()),
                    text: Bytes::from(text),
                    page: Bytes::from(page),
                    ready: !self.last_good.is_empty(),
                };
            }
            Err(error) => {
                self.status.errors[stage_index(Stage::Render)] += 1;
                tracing::error!(err = %error, "rendering failed; serving the previous exposition");
            }
        }
        self.last_exposition.clone()
    }

    /// The snapshot of the exporter's own namespace, for the landing page.
    fn own_snapshot(&self) -> Option<&Snapshot> {
        let own = namespaces::own_namespace_inode();
        self.last_good
            .iter()
            .find(|snapshot| {
                snapshot
                    .namespace
                    .as_ref()
                    .is_none_or(|n| Some(n.inode) == own)
            })
            .or(self.last_good.first())
    }

    /// Reads the namespace the exporter runs in: a one-shot run reads its
    /// owners beside its sockets; the daemon, one after the other, leaving
    /// the second core to the server.
    fn sample_own(
        &mut self,
        names: Option<&mut (dyn NameSource + 'static)>,
    ) -> Result<Reads, SourceError> {
        let reading = Reading {
            limits: &self.limits,
            keep_port: None,
            names,
            sockets: if self.serving {
                SocketsRead::Alone
            } else {
                SocketsRead::WithOwners
            },
        };
        let mut read = read_namespace(&mut self.reader, reading, &mut self.collectors)?;
        let owners = match read.owners.take() {
            Some(owners) => owners,
            None if self.serving => {
                let own = namespaces::own_namespace_inode();
                self.reader
                    .resolve_owners(&mut [(own, &mut read)], &mut self.collectors)
            }
            None => SocketOwners::default(),
        };
        Ok(Reads {
            reads: vec![(None, read)],
            owners,
        })
    }

    /// Reads every network namespace on the host that the namespaces
    /// collector finds, entering each on this thread in turn.
    fn sample_all(
        &mut self,
        names: Option<&mut (dyn NameSource + 'static)>,
    ) -> Result<Reads, SourceError> {
        let Some(found) = &mut self.found else {
            return Err(SourceError::NoNamespace {
                reason: "none is looked for".to_string(),
            });
        };
        let found = found.find(&mut self.collectors)?;
        let inodes: Vec<u64> = found
            .entries
            .iter()
            .map(|entry| entry.identity.inode)
            .collect();
        self.failures
            .sample_namespaces(&inodes, &mut self.collectors);
        let own = namespaces::own_namespace_inode();
        let mut read = read_all(
            &mut self.reader,
            &self.limits,
            names,
            found.entries,
            own,
            &mut self.collectors,
        );
        self.status.namespaces = Some(namespace_counts(&read, found.omitted));
        if read.samples.is_empty() {
            return Err(SourceError::NoNamespace {
                reason: why_no_namespace(read.first_failure, read.failed),
            });
        }
        if let Some(first) = read.first_failure {
            self.collectors.failed(
                Collector::Namespaces,
                why_no_namespace(Some(first), read.failed),
            );
        }
        // One walk of the processes names the owners in every namespace.
        let owners = {
            let mut reads: Vec<(Option<u64>, &mut NamespaceRead)> = read
                .samples
                .iter_mut()
                .map(|(identity, read)| (Some(identity.inode), read))
                .collect();
            self.reader.resolve_owners(&mut reads, &mut self.collectors)
        };
        Ok(Reads {
            reads: read
                .samples
                .into_iter()
                .map(|(identity, read)| (Some(identity), read))
                .collect(),
            owners,
        })
    }

    /// Logs once, with the figures, when namespaces that share the host's
    /// TCP hash table make a sample take more than `SHARING_LOG_SHARE` of
    /// the interval, and what to do about it.
    fn say_what_sharing_costs(&mut self) {
        let (Some(counts), Some(interval)) = (self.status.namespaces, self.status.interval_seconds)
        else {
            return;
        };
        let duration = self.status.duration_seconds;
        if self.sharing_logged
            || counts.sharing_dumped_apart == 0
            || duration <= SHARING_LOG_SHARE * interval
        {
            return;
        }
        self.sharing_logged = true;
        tracing::warn!(
            sharing = counts.sharing_host_tcp_table,
            sampled = counts.sampled,
            sample_ms = (duration * 1e3).round() as u64,
            interval_ms = (interval * 1e3).round() as u64,
            "namespaces share the host's TCP hash table, so a dump of any of them walks the sockets of all; \
             set net.ipv4.tcp_child_ehash_entries (Linux 6.1+) on the node before the namespaces are created \
             to give each its own"
        );
    }

    /// Samples forever on the calling thread, at most `interval` apart and
    /// when `scrapes` says, publishing each exposition through `sender`.
    /// Returns when every receiver is gone.
    pub fn run(
        mut self,
        interval: Duration,
        scrapes: &ScrapeClock,
        sender: watch::Sender<Arc<Exposition>>,
    ) {
        lower_thread_priority();
        self.serving = true;
        self.status.interval_seconds = Some(interval.as_secs_f64());
        self.reader.load_programs_in_background();
        self.resolve_plan();
        // The first sample waits a moment for the programs, which most
        // verifiers pass in milliseconds; never longer, so that the exporter
        // is ready soon whatever the verifier does.
        let mut wait = FIRST_SAMPLE_WAITS_FOR_PROGRAMS;
        loop {
            self.reader.take_loaded_programs(wait);
            wait = Duration::ZERO;
            let started = Instant::now();
            self.status.scrape_period_seconds = scrapes.period();
            let exposition = self.sample();
            if sender.send(Arc::new(exposition)).is_err() {
                return;
            }
            release_free_memory();
            // A sample that took longer than the interval is followed by the
            // next at once, never by a burst of catch-up samples.
            scrapes.wait_for_next_sample(started, started.elapsed());
        }
    }
}

/// Why no namespace could be sampled, from the first failure of `failed`.
fn why_no_namespace(first: Option<SourceError>, failed: u64) -> String {
    let Some(first) = first else {
        return "none was found".to_string();
    };
    let denied = matches!(
        &first,
        SourceError::Enter { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES))
    );
    if denied {
        format!(
            "{first}: entering another network namespace needs CAP_SYS_ADMIN, and opening \
             other processes' needs CAP_SYS_PTRACE (run as root, or grant both); \
             --collector.netns=self needs neither"
        )
    } else {
        format!("{failed} failed; the first: {first}")
    }
}

/// How the namespaces of a sample fared: `omitted` were beyond the limit.
fn namespace_counts(read: &NamespacesRead, omitted: usize) -> NamespaceCounts {
    let count = |keep: &dyn Fn(&ReadReport) -> bool| {
        read.samples
            .iter()
            .filter(|(_, read)| keep(&read.report))
            .count() as u64
    };
    NamespaceCounts {
        sampled: read.samples.len() as u64,
        omitted: omitted as u64,
        failed: read.failed,
        sharing_host_tcp_table: count(&|report| report.shares_host_tcp_table == Some(true)),
        one_walk: count(&|report| report.one_walk),
        sharing_dumped_apart: count(&|report| {
            report.shares_host_tcp_table == Some(true) && !report.one_walk && !report.skipped.tcp
        }),
        skipped: PerProtocol::from_fn(|protocol| count(&|report| report.skipped[protocol])),
    }
}

fn stage_index(stage: Stage) -> usize {
    Stage::ALL
        .iter()
        .position(|&candidate| candidate == stage)
        .unwrap_or(0)
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
