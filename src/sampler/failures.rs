//! The sampler's failure counter: loaded once for the sampler's life, read
//! before each sample's sockets, and its counts weighed against each
//! namespace's figures as the sample is finished; and the same counts read
//! from a running exporter's maps for `inspect`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{NamespaceScope, Sampled, Sampler};
use crate::source::bpf::failures::{
    Counting, PortFailureCounter, RawCounts, RunningExporter, names_capacity,
};
use crate::source::{NameSource, namespaces};
use portstat_core::aggregate::failures::FailureHistory;
use portstat_core::aggregate::{Finishing, Snapshot};
use portstat_core::model::{NamespaceFailures, PortFailureCounts};
use portstat_core::status::{Collector, FailureCounting};

/// The ports of the kernel's default range, 32768-60999, where the range
/// cannot be read.
const DEFAULT_RANGE_PORTS: u32 = 28232;

/// How often the failure counter's namespaces are checked against the
/// host's: a namespace gone is forgotten at the second check that misses it.
const FORGET_EVERY: Duration = Duration::from_secs(60);

impl Sampler {
    /// Counts failed `connect()` calls in the kernel from now on, for as
    /// long as the sampler lives, where the BPF program loads, and what
    /// `counting` asks for besides; logs why once where it cannot. For a
    /// sampler that runs (`run`): a one-shot sample would only count its
    /// own instant.
    pub fn count_failures(&mut self, counting: Counting) {
        // Connections are named in a map sized against the range of the
        // exporter's own namespace.
        let ports = self
            .reader
            .read_settings()
            .map_or(DEFAULT_RANGE_PORTS, |settings| settings.range.port_count());
        let names = names_capacity(ports);
        // The autobind program reads the system call's arguments from
        // x86-64's registers; elsewhere it is not loaded, and a kernel that
        // refuses it keeps the TCP counter.
        let mut counting = counting;
        if counting.autobind && !cfg!(target_arch = "x86_64") {
            tracing::warn!(
                "--collector.failures.autobind reads x86-64 system calls only; \
                 counting TCP connect() failures without it"
            );
            counting.autobind = false;
        }
        // The programs record only the namespaces sampled: room for each.
        let namespaces = match self.namespaces {
            NamespaceScope::Own => 1,
            NamespaceScope::All { max } => u32::try_from(max).unwrap_or(u32::MAX),
        };
        let mut loaded = PortFailureCounter::load(counting, names, namespaces);
        if counting.autobind
            && let Err(error) = &loaded
        {
            tracing::warn!(err = %error, "cannot count bind() and UDP failures; counting TCP connect() failures without them");
            counting.autobind = false;
            loaded = PortFailureCounter::load(counting, names, namespaces);
        }
        match loaded {
            Ok(mut counter) => {
                // The exporter's own namespace is recorded from now; with
                // every namespace, each from the sample that first finds it.
                if let Some(own) = namespaces::own_namespace_inode()
                    && let Err(error) = counter.sample_namespaces(&[own])
                {
                    tracing::warn!(err = %error, "cannot record the exporter's own namespace");
                }
                self.failure_counter = Some(counter);
                let plan = self.plan();
                self.collectors.replan(&plan);
                let Counting { autobind, connects } = counting;
                self.status.failure_counting = FailureCounting::Bpf { autobind, connects };
                tracing::info!(
                    autobind,
                    connects,
                    connection_names = connects.then_some(names),
                    "counting failed connect() calls in the kernel"
                );
            }
            Err(error) => {
                let stage = match &error {
                    crate::source::bpf::BpfError::Unavailable { stage, .. } => {
                        stage.to_lowercase().replace(" ", "_")
                    }
                    _ => "read".to_string(),
                };
                tracing::info!(
                    err = %error,
                    "cannot count failed connect() calls ({}); the failure families are absent",
                    why_bpf_failed(&error.to_string())
                );
                self.status.failure_counting = FailureCounting::Unavailable { stage };
            }
        }
    }

    /// The failure counter's counts now, where it counts.
    pub(super) fn read_failures(&mut self) -> Option<RawCounts> {
        let counter = self.failure_counter.as_ref()?;
        let counts = self
            .collectors
            .execute(Collector::Failures, || counter.read())?;
        // Where the kernel does not say (before Linux 5.12), 0.
        self.status.counting_runs_missed = counter.runs_missed().unwrap_or(0);
        Some(counts)
    }

    /// The snapshots of the namespaces `sampled` read, each whole when made:
    /// with its namespace, and where failures are counted its namespace's
    /// failures from `raw`, weighed against its snapshot of the last sample.
    pub(super) fn finish(&mut self, sampled: Sampled, raw: Option<RawCounts>) -> Vec<Snapshot> {
        let Sampled { reads, owners } = sampled;
        let Some(raw) = raw else {
            return reads
                .into_iter()
                .map(|(namespace, read)| {
                    read.finish_with(Finishing {
                        namespace,
                        ..Finishing::named_by(&owners)
                    })
                })
                .collect();
        };
        let own = namespaces::own_namespace_inode();
        // The entries of a namespace gone whose inode a sampled one has now
        // are left out, and removed at once.
        let read = raw.resolve(&mut live_cookies(&self.namespace_handles, own));
        let counts = read.counts;
        if !read.stale.is_empty()
            && let Some(counter) = &mut self.failure_counter
            && let Err(error) = counter.forget(&[], &read.stale)
        {
            tracing::warn!(err = %error, "cannot remove the failures of namespaces that are gone");
        }
        let inode = |snapshot: &Snapshot| snapshot.namespace.as_ref().map(|n| n.inode).or(own);
        let (autobind, connects) = match self.status.failure_counting {
            FailureCounting::Bpf { autobind, connects } => (autobind, connects),
            _ => (false, false),
        };
        let counted = portstat_core::aggregate::failures::counted(autobind);
        let mut sampled = Vec::with_capacity(reads.len());
        let history = &mut self.failure_history;
        let last_good = &self.last_good;
        let snapshots = reads
            .into_iter()
            .map(|(namespace, read)| {
                let mut failures = |snapshot: &Snapshot| {
                    let netns = inode(snapshot)?;
                    sampled.push(netns);
                    let before = last_good
                        .iter()
                        .find(|previous| inode(previous) == Some(netns));
                    Some(history.figures(netns, &counts, &counted, connects, before, snapshot))
                };
                read.finish_with(Finishing {
                    namespace,
                    failures: Some(&mut failures),
                    ..Finishing::named_by(&owners)
                })
            })
            .collect();
        self.forget_gone_namespaces(&counts, &sampled);
        self.failure_history.remember(counts, &sampled);
        snapshots
    }

    /// Removes from the failure counter's maps what it counted in
    /// namespaces that are gone from the host, which a node's churn of pods
    /// would otherwise pile up until the maps are full. Looks for the
    /// host's namespaces only when the counts hold one not sampled, and
    /// then at most once every `FORGET_EVERY`.
    fn forget_gone_namespaces(&mut self, counts: &PortFailureCounts, sampled: &[u64]) {
        if self
            .failure_namespaces_looked
            .is_some_and(|looked| looked.elapsed() < FORGET_EVERY)
        {
            return;
        }
        self.failure_namespaces_looked = Some(Instant::now());
        let others = counts
            .namespaces()
            .iter()
            .any(|netns| !sampled.contains(netns));
        let live: Vec<u64> = if others {
            match namespaces::discover(
                self.reader.procfs_root(),
                Path::new(namespaces::NAMED_NAMESPACES),
            ) {
                Ok(entries) => entries.iter().map(|entry| entry.identity.inode).collect(),
                Err(error) => {
                    tracing::warn!(err = %error, "cannot look for the host's namespaces, to remove the failures of those gone");
                    return;
                }
            }
        } else {
            sampled.to_vec()
        };
        let gone = self.failure_history.gone(counts, &live);
        if gone.is_empty() {
            return;
        }
        if let Some(counter) = &mut self.failure_counter
            && let Err(error) = counter.forget(&gone, &[])
        {
            tracing::warn!(err = %error, "cannot remove the failures of namespaces that are gone");
        }
    }

    /// The process that closed each connection the kernel names, for the
    /// sample's reads to name the sockets no process holds after it, where
    /// connects are counted.
    pub(super) fn connection_names(&mut self) -> Option<Box<dyn NameSource>> {
        let counter = naming(&self.status.failure_counting, &mut self.failure_counter)?;
        Some(Box::new(counter.names()))
    }

    /// After a sample that succeeded, removes from the kernel's map the
    /// names of connections gone (`PortFailureCounter::sweep_names`), so
    /// that the map evicts a name only when the connections still there
    /// outgrow it, and counts the names it evicted.
    pub(super) fn sweep_connection_names(&mut self) {
        let Some(counter) = naming(&self.status.failure_counting, &mut self.failure_counter) else {
            return;
        };
        let mut live = live_cookies(&self.namespace_handles, namespaces::own_namespace_inode());
        if let Some(()) = self
            .collectors
            .execute(Collector::Failures, || counter.sweep_names(&mut live))
        {
            self.status.connection_names_evicted = counter.names_evicted();
        }
    }
}

/// The counter, where it names connections: only where connects are
/// counted does anything name them.
fn naming<'a>(
    counting: &FailureCounting,
    counter: &'a mut Option<PortFailureCounter>,
) -> Option<&'a mut PortFailureCounter> {
    match counting {
        FailureCounting::Bpf { connects: true, .. } => counter.as_mut(),
        _ => None,
    }
}

/// What an operator can do about a BPF load that failed with `error`: the
/// error number says whether privileges, memory or descriptors ran short.
fn why_bpf_failed(error: &str) -> &'static str {
    if error.contains("os error 12") {
        "the kernel had no memory for the BPF maps (ENOMEM): they count against \
         the exporter's memory cgroup, whose limit is below what they need \
         (docs/deploying.md gives the figure)"
    } else if error.contains("os error 24") || error.contains("os error 23") {
        "the exporter ran out of file descriptors (EMFILE): raise its RLIMIT_NOFILE \
         (LimitNOFILE= in the unit)"
    } else {
        "needs the BPF source's privileges"
    }
}

/// The cookie of the live namespace of an inode: the exporter's own, or one
/// that `handles` refers to; `None` for another, or where it cannot be read
/// (before Linux 5.14).
fn live_cookies(
    handles: &HashMap<u64, PathBuf>,
    own: Option<u64>,
) -> impl FnMut(u64) -> Option<u64> + '_ {
    move |netns| {
        if Some(netns) == own {
            return namespaces::thread_namespace_cookie().ok();
        }
        namespaces::namespace_cookie(handles.get(&netns)?, netns)
            .ok()
            .flatten()
    }
}

/// The exporter running on this host that `inspect` reads: the one in
/// its own network namespace, else the newest; `Ok(None)` where none
/// counts, `Err` with why where the maps cannot be seen.
pub fn running_exporter() -> Result<Option<RunningExporter>, String> {
    crate::source::bpf::failures::running_exporter(namespaces::own_namespace_inode())
        .map_err(|error| error.to_string())
}

/// The names of the sockets no process holds in the exporter's own
/// namespace, after who connected them, as `exporter` has them
/// (`inspect`); `None` where its map cannot be read (it needs
/// CAP_SYS_ADMIN): they stay `none`.
pub fn connection_names_of(exporter: &RunningExporter) -> Option<Box<dyn NameSource>> {
    let netns = namespaces::own_namespace_inode()?;
    let cookie = namespaces::thread_namespace_cookie().ok();
    let names = crate::source::bpf::failures::running_names(exporter, netns, cookie).ok()?;
    Some(Box::new(HashMap::from([(netns, names)])))
}

/// The failures `exporter` counted in the snapshot's namespace
/// (`inspect`), or why they cannot be read.
pub fn failures_counted_by(
    exporter: &RunningExporter,
    snapshot: &Snapshot,
) -> Result<NamespaceFailures, String> {
    let handles = HashMap::new();
    let own = namespaces::own_namespace_inode();
    let mut live = live_cookies(&handles, own);
    let counts = crate::source::bpf::failures::running_counts(exporter, &mut live)
        .map_err(|e| e.to_string())?;
    let netns = snapshot
        .namespace
        .as_ref()
        .map(|namespace| namespace.inode)
        .or(own)
        .ok_or("the exporter's own network namespace cannot be read")?;
    // What the exporter counts: TCP connect() always, the rest where it
    // has counted some.
    let mut counted = portstat_core::aggregate::failures::counted(false);
    for &(counted_netns, kind, protocol) in counts.totals.keys() {
        if counted_netns == netns && !counted.contains(&(kind, protocol)) {
            counted.push((kind, protocol));
        }
    }
    // Connects are counted where the exporter counts some.
    let connects = !counts.connect_totals.is_empty();
    Ok(FailureHistory::default().figures(netns, &counts, &counted, connects, None, snapshot))
}
