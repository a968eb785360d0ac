//! The failures collector (`--collector.failures`): `connect()` calls that
//! found no free port, counted in the kernel by the failure counter's
//! programs (`source::bpf::failures`), loaded once for the exporter's life.
//! Its counts are read before each sample's sockets, so that every call
//! they miss is made after and is counted as an attempt by the next sample;
//! they are weighed against each namespace's figures as the sample is
//! finished. It keeps, across samples, the counter, the history of its
//! counts (`FailureHistory`), and when it last looked for namespaces gone.
//! Where connects are counted, it names the connections no process holds
//! after who connected them. It also reads another exporter's counts, for
//! `inspect`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portstat_core::aggregate::failures::{self, FailureHistory};
use portstat_core::aggregate::{Finishing, Snapshot};
use portstat_core::model::{NamespaceFailures, NamespaceIdentity, PortFailureCounts, SocketOwners};
use portstat_core::status::{Collector, FailureCounting};

use super::namespace_read::NamespaceRead;
use super::{Collectors, Registration};
use crate::source::bpf::failures::{
    Counting, PortFailureCounter, RawCounts, RunningExporter, names_capacity,
};
use crate::source::{NameSource, namespaces};

/// Runs once the counter loads; a failure is its own, and its families are
/// absent meanwhile.
pub const REGISTRATION: Registration = Registration {
    collector: Collector::Failures,
    runs: |plan| plan.failures,
    messages: Some((
        "reading the failure counter failed; its families are absent meanwhile",
        "reading the failure counter recovered",
    )),
    fails_the_read: false,
};

/// The failures collector's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FailuresFlags {
    /// Count the connect() calls that find no free local port, in the kernel
    /// as they happen, by destination and process (needs the BPF source's
    /// privileges; without them, no failure series).
    #[arg(
        long = "collector.failures",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub count: bool,

    /// Count bind() to port 0 and UDP connect()/sendto()/sendmsg() calls
    /// that find no free port too. A program then runs at the exit of every
    /// system call on the host, which costs each call about 100 ns (see
    /// docs/cost.md).
    #[arg(
        long = "collector.failures.autobind",
        value_name = "BOOL",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub autobind: bool,

    /// Count the connect() calls that take a port of the range, by
    /// destination and process, and name the TIME_WAIT ports after the
    /// process that closed them, the one that connected them unless it
    /// handed the socket on (otherwise `none`). Costs each connect()
    /// about 1 % more than counting failures alone (see docs/cost.md).
    #[arg(
        long = "collector.failures.connects",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub connects: bool,
}

/// How often the failure counter's namespaces are checked against the
/// host's: a namespace gone is forgotten at the second check that misses it.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The failure counter, and what it keeps from one sample to the next.
pub struct Failures {
    /// Where the host's namespaces are looked for.
    procfs_root: PathBuf,
    /// The kernel's count of failed `connect()` calls, where it loaded.
    counter: Option<PortFailureCounter>,
    /// What it counts, or why it does not.
    counting: FailureCounting,
    /// Its counts at the last sample, and the unpredicted failures so far.
    history: FailureHistory,
    /// When the host's namespaces were last looked for, to forget the
    /// failures of those gone.
    looked: Option<Instant>,
}

/// A sample's reads, waiting to be finished: each namespace's with its
/// identity where several are sampled, and the owners one walk of the
/// processes named for them all.
pub struct Reads {
    pub reads: Vec<(Option<NamespaceIdentity>, NamespaceRead)>,
    pub owners: SocketOwners,
}

impl Failures {
    /// Nothing counted yet, the host's namespaces below `procfs_root`.
    pub fn new(procfs_root: &Path) -> Failures {
        Failures {
            procfs_root: procfs_root.to_path_buf(),
            counter: None,
            counting: FailureCounting::Off,
            history: FailureHistory::default(),
            looked: None,
        }
    }

    /// Whether the counter counts.
    pub fn counts(&self) -> bool {
        self.counter.is_some()
    }

    /// What it counts, or why it does not.
    pub fn counting(&self) -> &FailureCounting {
        &self.counting
    }

    /// Counts failed `connect()` calls in the kernel from now on, for as
    /// long as the collector lives, where the BPF program loads, and what
    /// `counting` asks for besides; logs why once where it cannot. The
    /// connections are named in a map sized for a range of `ports`, and
    /// room is made for `namespaces` namespaces. For a sampler that runs:
    /// a one-shot sample would only count its own instant.
    pub fn load(&mut self, counting: Counting, ports: u32, namespaces: u32) {
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
                self.counter = Some(counter);
                let Counting { autobind, connects } = counting;
                self.counting = FailureCounting::Bpf { autobind, connects };
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
                self.counting = FailureCounting::Unavailable { stage };
            }
        }
    }

    /// The counter's counts now, where it counts, with the runs of its
    /// programs the kernel skipped (0 where the kernel does not say,
    /// before Linux 5.12).
    pub fn read(&mut self, collectors: &mut Collectors) -> Option<(RawCounts, u64)> {
        let counter = self.counter.as_ref()?;
        let counts = collectors.execute(Collector::Failures, || counter.read())?;
        Some((counts, counter.runs_missed().unwrap_or(0)))
    }

    /// Records from now on the namespaces of `inodes`, the ones a sample
    /// reads, and only those.
    pub fn sample_namespaces(&mut self, inodes: &[u64], collectors: &mut Collectors) {
        if let Some(counter) = &mut self.counter
            && let Err(error) = counter.sample_namespaces(inodes)
        {
            collectors.failed(Collector::Failures, error);
        }
    }

    /// The snapshots of the namespaces `sampled` read, each whole when made:
    /// with its namespace, and where failures are counted its namespace's
    /// failures from `raw`, weighed against its snapshot of the last sample
    /// in `last_good`. `handles` refers to each namespace sampled, by inode.
    pub fn finish(
        &mut self,
        sampled: Reads,
        raw: Option<RawCounts>,
        handles: &HashMap<u64, PathBuf>,
        last_good: &[Snapshot],
    ) -> Vec<Snapshot> {
        let Reads { reads, owners } = sampled;
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
        let read = raw.resolve(&mut live_cookies(handles, own));
        let counts = read.counts;
        if !read.stale.is_empty()
            && let Some(counter) = &mut self.counter
            && let Err(error) = counter.forget(&[], &read.stale)
        {
            tracing::warn!(err = %error, "cannot remove the failures of namespaces that are gone");
        }
        let inode = |snapshot: &Snapshot| snapshot.namespace.as_ref().map(|n| n.inode).or(own);
        let (autobind, connects) = match self.counting {
            FailureCounting::Bpf { autobind, connects } => (autobind, connects),
            _ => (false, false),
        };
        let counted = failures::counted(autobind);
        let mut sampled = Vec::with_capacity(reads.len());
        let history = &mut self.history;
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
        self.history.remember(counts, &sampled);
        snapshots
    }

    /// Removes from the failure counter's maps what it counted in
    /// namespaces that are gone from the host, which a node's churn of pods
    /// would otherwise pile up until the maps are full. Looks for the
    /// host's namespaces only when the counts hold one not sampled, and
    /// then at most once every `FORGET_EVERY`.
    fn forget_gone_namespaces(&mut self, counts: &PortFailureCounts, sampled: &[u64]) {
        if self
            .looked
            .is_some_and(|looked| looked.elapsed() < FORGET_EVERY)
        {
            return;
        }
        self.looked = Some(Instant::now());
        let others = counts
            .namespaces()
            .iter()
            .any(|netns| !sampled.contains(netns));
        let live: Vec<u64> = if others {
            match namespaces::discover(&self.procfs_root, Path::new(namespaces::NAMED_NAMESPACES)) {
                Ok(entries) => entries.iter().map(|entry| entry.identity.inode).collect(),
                Err(error) => {
                    tracing::warn!(err = %error, "cannot look for the host's namespaces, to remove the failures of those gone");
                    return;
                }
            }
        } else {
            sampled.to_vec()
        };
        let gone = self.history.gone(counts, &live);
        if gone.is_empty() {
            return;
        }
        if let Some(counter) = &mut self.counter
            && let Err(error) = counter.forget(&gone, &[])
        {
            tracing::warn!(err = %error, "cannot remove the failures of namespaces that are gone");
        }
    }

    /// The process that closed each connection the kernel names, for the
    /// sample's reads to name the sockets no process holds after it, where
    /// connects are counted.
    pub fn connection_names(&mut self) -> Option<Box<dyn NameSource>> {
        let counter = naming(&self.counting, &mut self.counter)?;
        Some(Box::new(counter.names()))
    }

    /// After a sample that succeeded, removes from the kernel's map the
    /// names of connections gone (`PortFailureCounter::sweep_names`), so
    /// that the map evicts a name only when the connections still there
    /// outgrow it; returns how many names it evicted so far, where
    /// connections are named.
    pub fn sweep_connection_names(
        &mut self,
        handles: &HashMap<u64, PathBuf>,
        collectors: &mut Collectors,
    ) -> Option<u64> {
        let counter = naming(&self.counting, &mut self.counter)?;
        let mut live = live_cookies(handles, namespaces::own_namespace_inode());
        collectors
            .execute(Collector::Failures, || counter.sweep_names(&mut live))
            .map(|()| counter.names_evicted())
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
    let mut counted = failures::counted(false);
    for &(counted_netns, kind, protocol) in counts.totals.keys() {
        if counted_netns == netns && !counted.contains(&(kind, protocol)) {
            counted.push((kind, protocol));
        }
    }
    // Connects are counted where the exporter counts some.
    let connects = !counts.connect_totals.is_empty();
    Ok(FailureHistory::default().figures(netns, &counts, &counted, connects, None, snapshot))
}
