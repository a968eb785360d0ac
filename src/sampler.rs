//! Runs source → aggregate → render and publishes each result for `serve`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use crate::collector::Collectors;
use crate::plan::{self, Plan};
use crate::render::Renderer;
use crate::scrapes::ScrapeClock;
use crate::source::all::{NamespacesRead, read_all};
use crate::source::bpf::failures::{
    Counting, PortFailureCounter, RawCounts, RunningExporter, names_capacity,
};
use crate::source::read::{
    NamespaceRead, read_namespace, read_own_namespace_at_once, resolve_owners,
};
use crate::source::{NamespaceReader, ReadReport, SourceError, namespaces};
use portstat_core::aggregate::failures::FailureHistory;
use portstat_core::aggregate::{Finishing, Limits, Snapshot};
use portstat_core::model::{
    NamespaceFailures, NamespaceIdentity, PerProtocol, PortFailureCounts, SocketOwners,
};
use portstat_core::page::landing_page;
use portstat_core::status::{Collector, FailureCounting, NamespaceCounts, SampleStatus, Stage};

/// `--collector.netns`. Like every flag's set of values, it derives clap's
/// `ValueEnum` in the module whose choice it is (`SourceChoice` in
/// `source`, `LogLevel` in `log`), and `cli` only names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetnsChoice {
    /// The exporter's own network namespace.
    #[value(name = "self")]
    Own,
    /// Every network namespace on the host.
    All,
}

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
    /// The kernel's count of failed `connect()` calls, where it loaded.
    failure_counter: Option<PortFailureCounter>,
    /// Its counts at the last sample, and the unpredicted failures so far.
    failure_history: FailureHistory,
    /// The plan last logged.
    plan_logged: Option<Plan>,
    /// When the host's namespaces were last looked for, to forget the
    /// failures of those gone.
    failure_namespaces_looked: Option<Instant>,
    /// A file that refers to each namespace of the last sample of every
    /// namespace, by inode, to read its cookie.
    namespace_handles: HashMap<u64, PathBuf>,
    /// The health of each collector.
    collectors: Collectors,
}

/// How often the failure counter's namespaces are checked against the
/// host's: a namespace gone is forgotten at the second check that misses it.
const FORGET_EVERY: Duration = Duration::from_secs(60);

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
        let planned: Vec<Collector> = Collector::ALL
            .into_iter()
            .filter(|&collector| match collector {
                Collector::Failures => false,
                Collector::Namespaces => matches!(namespaces, NamespaceScope::All { .. }),
                Collector::Sockets => true,
                Collector::Conntrack => reader.reads_nat(),
                Collector::Owners => reader.finds_owners(),
            })
            .collect();
        Sampler {
            reader,
            renderer,
            limits,
            namespaces,
            last_good: Vec::new(),
            serving: false,
            sharing_logged: false,
            failure_counter: None,
            failure_history: FailureHistory::default(),
            plan_logged: None,
            failure_namespaces_looked: None,
            namespace_handles: HashMap::new(),
            collectors: Collectors::new(&planned),
            status: SampleStatus {
                build: crate::render::BUILD,
                ..SampleStatus::default()
            },
            last_exposition: Exposition::default(),
        }
    }

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
                self.collectors.plan(Collector::Failures, true);
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
    fn read_failures(&mut self) -> Option<RawCounts> {
        let counter = self.failure_counter.as_ref()?;
        match self.collectors.time(Collector::Failures, || counter.read()) {
            Ok(counts) => {
                // Where the kernel does not say (before Linux 5.12), 0.
                self.status.counting_runs_missed = counter.runs_missed().unwrap_or(0);
                Some(counts)
            }
            Err(error) => {
                self.collectors.failed(Collector::Failures, error);
                None
            }
        }
    }

    /// The snapshots of the namespaces `sampled` read, each whole when made:
    /// with its namespace, and where failures are counted its namespace's
    /// failures from `raw`, weighed against its snapshot of the last sample.
    fn finish(&mut self, sampled: Sampled, raw: Option<RawCounts>) -> Vec<Snapshot> {
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

    /// Gives the reader the process that closed each connection the kernel
    /// names, to name the sockets no process holds after it, where connects
    /// are counted.
    fn read_connection_names(&mut self) {
        // Without connects counted, nothing names connections.
        if !matches!(
            self.status.failure_counting,
            FailureCounting::Bpf { connects: true, .. }
        ) {
            return;
        }
        let Some(counter) = &mut self.failure_counter else {
            return;
        };
        self.reader.set_connection_names(Box::new(counter.names()));
    }

    /// After a sample that succeeded, removes from the kernel's map the
    /// names of connections gone (`PortFailureCounter::sweep_names`), so
    /// that the map evicts a name only when the connections still there
    /// outgrow it, and counts the names it evicted.
    fn sweep_connection_names(&mut self) {
        if !matches!(
            self.status.failure_counting,
            FailureCounting::Bpf { connects: true, .. }
        ) {
            return;
        }
        let Some(counter) = &mut self.failure_counter else {
            return;
        };
        let mut live = live_cookies(&self.namespace_handles, namespaces::own_namespace_inode());
        match self
            .collectors
            .time(Collector::Failures, || counter.sweep_names(&mut live))
        {
            Ok(()) => self.status.connection_names_evicted = counter.names_evicted(),
            Err(error) => self.collectors.failed(Collector::Failures, error),
        }
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
            failures: self.failure_counter.is_some(),
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
        let failure_counts = self.read_failures();
        self.read_connection_names();
        let result = match self.namespaces {
            NamespaceScope::Own => self.sample_own(),
            NamespaceScope::All { max } => self.sample_all(max),
        };
        self.reader.clear_connection_names();
        match result {
            Ok(sampled) => {
                self.sweep_connection_names();
                self.last_good = self.finish(sampled, failure_counts);
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

    /// Reads the namespace the exporter runs in.
    fn sample_own(&mut self) -> Result<Sampled, SourceError> {
        if !self.serving {
            let (read, owners) = read_own_namespace_at_once(
                &mut self.reader,
                &self.limits,
                None,
                &mut self.collectors,
            )?;
            return Ok(Sampled {
                reads: vec![(None, read)],
                owners,
            });
        }
        let mut read = read_namespace(&mut self.reader, &self.limits, None, &mut self.collectors)?;
        let own = namespaces::own_namespace_inode();
        let owners = resolve_owners(
            &mut self.reader,
            &mut [(own, &mut read)],
            &mut self.collectors,
        );
        Ok(Sampled {
            reads: vec![(None, read)],
            owners,
        })
    }

    /// Reads every network namespace on the host, at most `max`, entering
    /// each on this thread in turn.
    fn sample_all(&mut self, max: usize) -> Result<Sampled, SourceError> {
        let discovered = self.collectors.time(Collector::Namespaces, || {
            namespaces::discover(
                self.reader.procfs_root(),
                Path::new(namespaces::NAMED_NAMESPACES),
            )
        });
        let mut entries = discovered.inspect_err(|error| {
            self.collectors.failed(Collector::Namespaces, error);
        })?;
        // Past the limit, the exporter's own namespace is kept first.
        let own = namespaces::own_namespace_inode();
        entries.sort_by_key(|entry| Some(entry.identity.inode) != own);
        let omitted = entries.len().saturating_sub(max);
        entries.truncate(max);
        entries.sort_by_key(|entry| entry.identity.inode);
        self.namespace_handles = entries
            .iter()
            .map(|entry| (entry.identity.inode, entry.handle.clone()))
            .collect();
        if let Some(counter) = &mut self.failure_counter {
            let inodes: Vec<u64> = entries.iter().map(|entry| entry.identity.inode).collect();
            if let Err(error) = counter.sample_namespaces(&inodes) {
                self.collectors.failed(Collector::Failures, error);
            }
        }

        let mut read = read_all(
            &mut self.reader,
            &self.limits,
            entries,
            own,
            &mut self.collectors,
        );
        self.status.namespaces = Some(namespace_counts(&read, omitted));
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
            resolve_owners(&mut self.reader, &mut reads, &mut self.collectors)
        };
        Ok(Sampled {
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

/// The exporter running on this host that `inspect` reads: the one in
/// its own network namespace, else the newest; `Ok(None)` where none
/// counts, `Err` with why where the maps cannot be seen.
pub fn running_exporter() -> Result<Option<RunningExporter>, String> {
    crate::source::bpf::failures::running_exporter(namespaces::own_namespace_inode())
        .map_err(|error| error.to_string())
}

/// Names the sockets no process holds in the exporter's own namespace
/// after who connected them, as `exporter` has them (`inspect`); where its
/// map cannot be read (it needs CAP_SYS_ADMIN), they stay `none`.
pub fn name_connections_as(exporter: &RunningExporter, reader: &mut NamespaceReader) {
    let Some(netns) = namespaces::own_namespace_inode() else {
        return;
    };
    let cookie = namespaces::thread_namespace_cookie().ok();
    if let Ok(names) = crate::source::bpf::failures::running_names(exporter, netns, cookie) {
        reader.set_connection_names(Box::new(HashMap::from([(netns, names)])));
    }
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

/// Niceness of the sampler thread above the server's.
const SAMPLER_NICENESS: i32 = 10;
/// The time slice the sampler thread asks for, in nanoseconds: short, so that
/// the server, woken by a scrape, gets the CPU back within it rather than
/// after a default slice of a few milliseconds. Linux 6.12 and later honour
/// it; older kernels refuse the call, and niceness alone applies.
const SAMPLER_SLICE_NANOSECONDS: u64 = 100_000;

/// The namespaces one sample read, each with its identity where several
/// are sampled, waiting to be finished; and the owners one walk of the
/// processes named for them all.
struct Sampled {
    reads: Vec<(Option<NamespaceIdentity>, NamespaceRead)>,
    owners: SocketOwners,
}

/// `struct sched_attr`, as `sched_setattr(2)` takes it.
#[repr(C)]
struct SchedulingAttributes {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Lowers the calling thread's scheduling priority, so that the scheduler
/// runs the server before the sampler when both want a CPU: a sample of a
/// busy host takes tens of milliseconds of CPU, and a scrape must not wait
/// behind it. Both calls act on this thread only.
fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions.
    let thread = unsafe { libc::gettid() };
    let attributes = SchedulingAttributes {
        size: std::mem::size_of::<SchedulingAttributes>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: SAMPLER_NICENESS,
        priority: 0,
        runtime: SAMPLER_SLICE_NANOSECONDS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: attributes outlives the call and carries its own size.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            thread,
            &attributes as *const SchedulingAttributes,
            0,
        )
    };
    if result == 0 {
        return;
    }
    // SAFETY: setpriority has no memory-safety preconditions.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, SAMPLER_NICENESS) };
    if result != 0 {
        tracing::debug!(
            err = %std::io::Error::last_os_error(),
            "cannot lower the sampler thread's priority"
        );
    }
}

/// Hands memory that is free in the allocator back to the kernel. A burst of
/// connections (a scrape storm, an attack) leaves freed buffers scattered in
/// the heap, which the allocator would otherwise keep for good; once per
/// sample, this returns the process to its usual size.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
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

fn gzip(text: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text);
    Bytes::from(encoder.finish().unwrap_or_default())
}
