//! Runs source → aggregate → render and publishes each result for `serve`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use crate::render::Renderer;
use crate::source::bpf::failures::PortFailureCounter;
use crate::source::bpf::shared::SharedNamespace;
use crate::source::{NamespaceReader, ReadReport, SharedTablesUse, SourceError, namespaces};
use portstat_core::aggregate::{Aggregator, Limits, Snapshot};
use portstat_core::metrics::failures::FailureHistory;
use portstat_core::model::{
    NamespaceFailures, NamespaceIdentity, OwnerLookup, PortFailureCounts, PortRange, Protocol,
    SocketOwners, SocketSink, SourceKind,
};
use portstat_core::page::landing_page;
use portstat_core::status::{FailureCounting, NamespaceCounts, SampleStatus, Stage};

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

/// The inode of the exporter's own network namespace.
pub fn own_namespace_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
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
    /// Whether reading the failure counter is failing (logged when failing
    /// starts and when it stops).
    failure_read_failing: bool,
    /// The sources of the own namespace's sample last logged, to log them
    /// at the first sample and whenever they change.
    sources_logged: Option<String>,
    /// When the host's namespaces were last looked for, to forget the
    /// failures of those gone.
    failure_namespaces_looked: Option<Instant>,
    /// Whether namespaces are failing to be sampled (logged, with the first
    /// reason, when failing starts).
    namespaces_failing: bool,
}

/// How often the failure counter's namespaces are checked against the
/// host's: a namespace gone is forgotten at the second check that misses it.
const FORGET_EVERY: Duration = Duration::from_secs(60);

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
            failure_read_failing: false,
            sources_logged: None,
            failure_namespaces_looked: None,
            namespaces_failing: false,
            status: SampleStatus {
                build: crate::render::BUILD,
                ..SampleStatus::default()
            },
            last_exposition: Exposition::default(),
        }
    }

    /// Counts failed `connect()` calls in the kernel from now on, for as
    /// long as the sampler lives, where the BPF program loads, and with
    /// `autobind` failed `bind()` to port 0 and UDP calls too; logs why
    /// once where it cannot. For a sampler that runs (`run`): a one-shot
    /// sample would only count its own instant.
    pub fn count_failures(&mut self, autobind: bool) {
        match PortFailureCounter::load(autobind) {
            Ok(counter) => {
                self.failure_counter = Some(counter);
                self.status.failure_counting = FailureCounting::Bpf { autobind };
                tracing::info!(autobind, "counting failed connect() calls in the kernel");
            }
            Err(error) => {
                let stage = match &error {
                    crate::source::bpf::BpfError::Unavailable { stage, .. } => {
                        stage.to_lowercase().replace(" ", "_")
                    }
                    _ => "read".to_string(),
                };
                tracing::info!(err = %error, "cannot count failed connect() calls (needs the BPF source's privileges); the failure families are absent");
                self.status.failure_counting = FailureCounting::Unavailable { stage };
            }
        }
    }

    /// The failure counter's counts now, where it counts.
    fn read_failures(&mut self) -> Option<PortFailureCounts> {
        let counter = self.failure_counter.as_ref()?;
        match counter.read() {
            Ok(counts) => {
                if self.failure_read_failing {
                    self.failure_read_failing = false;
                    tracing::info!("reading the failure counter recovered");
                }
                self.status.failures_unrecorded = counts.unrecorded;
                Some(counts)
            }
            Err(error) => {
                if !self.failure_read_failing {
                    self.failure_read_failing = true;
                    tracing::warn!(err = %error, "reading the failure counter failed; its families are absent meanwhile");
                }
                None
            }
        }
    }

    /// Gives each snapshot its namespace's failures from `counts`, weighed
    /// against the namespace's snapshot of the last sample.
    fn attach_failures(&mut self, snapshots: &mut [Snapshot], counts: PortFailureCounts) {
        let own = own_namespace_inode();
        let inode = |snapshot: &Snapshot| snapshot.namespace.as_ref().map(|n| n.inode).or(own);
        let counted = portstat_core::metrics::failures::counted(matches!(
            self.status.failure_counting,
            FailureCounting::Bpf { autobind: true }
        ));
        let mut sampled = Vec::with_capacity(snapshots.len());
        for snapshot in snapshots.iter_mut() {
            let Some(netns) = inode(snapshot) else {
                continue;
            };
            sampled.push(netns);
            let before = self
                .last_good
                .iter()
                .find(|previous| inode(previous) == Some(netns));
            snapshot.failures = Some(
                self.failure_history
                    .figures(netns, &counts, &counted, before, snapshot),
            );
        }
        self.forget_gone_namespaces(&counts, &sampled);
        self.failure_history.remember(counts, &sampled);
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
            .attempts
            .keys()
            .chain(counts.totals.keys().map(|(netns, _, _)| netns))
            .any(|netns| !sampled.contains(netns));
        let live: Vec<u64> = if others {
            match namespaces::discover(
                self.reader.procfs_root(),
                Path::new(namespaces::NAMED_NAMESPACES),
            ) {
                Ok(entries) => entries.iter().map(|entry| entry.identity.inode).collect(),
                Err(_) => return,
            }
        } else {
            sampled.to_vec()
        };
        let gone = self.failure_history.gone(counts, &live);
        if gone.is_empty() {
            return;
        }
        if let Some(counter) = &mut self.failure_counter {
            if let Err(error) = counter.forget(&gone) {
                tracing::debug!(err = %error, "cannot forget the failures of namespaces that are gone");
            }
        }
    }

    /// Logs where each protocol's sockets and their owners were read from,
    /// at the first sample a daemon takes and when that changes (a source
    /// fell back), for the exporter's own namespace.
    fn log_sources(&mut self, snapshots: &[Snapshot]) {
        if !self.serving {
            return;
        }
        let own = own_namespace_inode();
        let Some(snapshot) = snapshots.iter().find(|snapshot| {
            snapshot
                .namespace
                .as_ref()
                .is_none_or(|n| Some(n.inode) == own)
        }) else {
            return;
        };
        let [tcp, udp] = snapshot.sources.map(|source| source.label());
        let owners = snapshot.owner_lookup.label().unwrap_or("off");
        let sources = format!("{tcp} {udp} {owners}");
        if self.sources_logged.as_deref() == Some(sources.as_str()) {
            return;
        }
        tracing::info!(
            tcp,
            udp,
            owners,
            exact = snapshot.headroom_exact(),
            "sockets read"
        );
        self.sources_logged = Some(sources);
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
        let was_failing =
            self.status.errors[stage_index(Stage::Source)] > 0 && !self.status.success;
        // Read before the sockets, so that every call the counts miss is
        // made after, and is counted as an attempt by the next sample.
        let failure_counts = self.read_failures();
        let result = match self.namespaces {
            NamespaceScope::Own => self.sample_own(),
            NamespaceScope::All { max } => self.sample_all(max),
        };
        match result {
            Ok(mut snapshots) => {
                if let Some(counts) = failure_counts {
                    self.attach_failures(&mut snapshots, counts);
                }
                self.log_sources(&snapshots);
                self.last_good = snapshots;
                self.status.success = true;
                self.status.last_success_seconds = Some(unix_seconds());
                if was_failing {
                    tracing::info!("sampling recovered");
                }
            }
            Err(error) => {
                self.status.errors[stage_index(Stage::Source)] += 1;
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
        self.status.duration_seconds = started.elapsed().as_secs_f64();
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
        let own = own_namespace_inode();
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

    /// Samples the namespace the exporter runs in.
    fn sample_own(&mut self) -> Result<Vec<Snapshot>, SourceError> {
        if !self.serving {
            let (read, owners) = read_own_namespace_at_once(&mut self.reader, &self.limits, None)?;
            return Ok(vec![read.finish(&owners)]);
        }
        let mut read = read_namespace(&mut self.reader, &self.limits, None)?;
        let own = own_namespace_inode();
        let owners = resolve_owners(&mut self.reader, &mut [(own, &mut read)]);
        Ok(vec![read.finish(&owners)])
    }

    /// Samples every network namespace on the host, at most `max`, entering
    /// each on this thread in turn.
    fn sample_all(&mut self, max: usize) -> Result<Vec<Snapshot>, SourceError> {
        let mut entries = namespaces::discover(
            self.reader.procfs_root(),
            Path::new(namespaces::NAMED_NAMESPACES),
        )?;
        // Past the limit, the exporter's own namespace is kept first.
        let own = own_namespace_inode();
        entries.sort_by_key(|entry| Some(entry.identity.inode) != own);
        let omitted = entries.len().saturating_sub(max);
        entries.truncate(max);
        entries.sort_by_key(|entry| entry.identity.inode);

        let mut samples = Vec::with_capacity(entries.len());
        let mut failed = 0;
        let mut first_failure = None;
        // The namespaces whose TCP sockets come from one walk of the
        // host's tables, after every namespace's settings are read.
        let mut on_shared_tables = Vec::new();
        for entry in entries {
            // The exporter's own namespace needs no setns (nor the
            // CAP_SYS_ADMIN it takes).
            let inside = if Some(entry.identity.inode) == own {
                None
            } else {
                match namespaces::Entered::enter(&entry.handle) {
                    Ok(inside) => Some(inside),
                    // Gone since it was found, or its name no longer a
                    // namespace (`ip netns` creates the file before it mounts
                    // the namespace there, and unmounts it before deleting
                    // it: setns then finds no namespace, EINVAL): not a
                    // failure.
                    Err(error)
                        if error.kind() == std::io::ErrorKind::NotFound
                            || error.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        continue;
                    }
                    Err(error) => {
                        failed += 1;
                        tracing::debug!(netns = entry.identity.inode, err = %error, "cannot enter a network namespace");
                        first_failure.get_or_insert(SourceError::Enter {
                            path: entry.handle.clone(),
                            source: error,
                        });
                        continue;
                    }
                }
            };
            let result = read_namespace_but_shared(&mut self.reader, &self.limits);
            // Hold nothing of the namespace once out of it, the exporter's
            // own too: a netlink socket left open would read this namespace
            // for the next one.
            self.reader.leave_namespace();
            drop(inside);
            match result {
                Ok((sample, shared)) => {
                    if let Some(left) = shared {
                        on_shared_tables.push(OnSharedTables {
                            index: samples.len(),
                            handle: entry.handle.clone(),
                            own: Some(entry.identity.inode) == own,
                            range: left.range,
                            may_hold_bound_inactive: left.may_hold_bound_inactive,
                            udp: left.using.udp,
                            host_udp_table: left.using.host_udp_table,
                        });
                    }
                    samples.push((entry.identity, sample));
                }
                Err(error) => {
                    failed += 1;
                    tracing::debug!(netns = entry.identity.inode, err = %error, "cannot sample a network namespace");
                    first_failure.get_or_insert(error);
                }
            }
        }
        if !on_shared_tables.is_empty() {
            let failures = self.read_shared_tables(&mut samples, &on_shared_tables);
            for (index, error) in failures.into_iter().rev() {
                if let Some(error) = error {
                    failed += 1;
                    first_failure.get_or_insert(error);
                }
                samples.remove(index);
            }
        }
        let count = |keep: &dyn Fn(&ReadReport) -> bool| {
            samples
                .iter()
                .filter(|(_, read)| keep(&read.report))
                .count() as u64
        };
        self.status.namespaces = Some(NamespaceCounts {
            sampled: samples.len() as u64,
            omitted: omitted as u64,
            failed,
            sharing_host_tcp_table: count(&|report| report.shares_host_tcp_table == Some(true)),
            one_walk: count(&|report| report.one_walk),
            sharing_dumped_apart: count(&|report| {
                report.shares_host_tcp_table == Some(true) && !report.one_walk && !report.skipped[0]
            }),
            skipped: [
                count(&|report| report.skipped[0]),
                count(&|report| report.skipped[1]),
            ],
        });
        if samples.is_empty() {
            return Err(SourceError::NoNamespace {
                reason: why_no_namespace(first_failure, failed),
            });
        }
        match first_failure {
            Some(first) if !self.namespaces_failing => {
                self.namespaces_failing = true;
                tracing::warn!(
                    failed,
                    "some network namespaces cannot be sampled (portstat_netns_failed): {}",
                    why_no_namespace(Some(first), failed)
                );
            }
            Some(_) => {}
            None => self.namespaces_failing = false,
        }
        // One walk of the processes names the owners in every namespace.
        let owners = {
            let mut reads: Vec<(Option<u64>, &mut NamespaceRead)> = samples
                .iter_mut()
                .map(|(identity, read)| (Some(identity.inode), read))
                .collect();
            resolve_owners(&mut self.reader, &mut reads)
        };
        Ok(samples
            .into_iter()
            .map(|(identity, read)| {
                let mut snapshot = read.finish(&owners);
                snapshot.namespace = Some(identity);
                snapshot
            })
            .collect())
    }

    /// Reads the TCP sockets of the namespaces `on_shared` of `samples` in
    /// one walk of the host's tables, and the UDP sockets of those that
    /// left them to the walk. The walk runs from the exporter's own
    /// namespace where it is one of them, else from inside the first that
    /// can still be entered; one on the host's UDP table first where UDP is
    /// to be read. Where the walk fails or is incomplete, each namespace is
    /// read on its own instead, as without it; so is the UDP of namespaces
    /// the walk could not read it for. Returns the namespaces that could not
    /// be read either way, by index in `samples`, in order, with why
    /// (`None`: gone since their settings were read).
    fn read_shared_tables(
        &mut self,
        samples: &mut [(NamespaceIdentity, NamespaceRead)],
        on_shared: &[OnSharedTables],
    ) -> Vec<(usize, Option<SourceError>)> {
        let bound_inactive = on_shared
            .iter()
            .any(|shared| shared.may_hold_bound_inactive);
        let any_udp = on_shared.iter().any(|shared| shared.udp);
        // Whence to walk, best first: a namespace on the host's UDP table
        // too (where UDP is to be read), the exporter's own first.
        let rank = |shared: &OnSharedTables| (!(any_udp && shared.host_udp_table), !shared.own);
        let mut order: Vec<&OnSharedTables> = on_shared.iter().collect();
        order.sort_by_key(|shared| rank(shared));
        let mut from = Err(SourceError::NoNamespace {
            reason: "every namespace on the host's TCP tables is gone".into(),
        });
        let mut read_udp = false;
        for shared in order {
            from = enter_unless_own(shared);
            if from.is_ok() {
                read_udp = any_udp && shared.host_udp_table;
                break;
            }
        }
        let list: Vec<SharedNamespace> = on_shared
            .iter()
            .map(|shared| SharedNamespace {
                inode: samples[shared.index].0.inode as u32,
                range: shared.range,
                udp: shared.udp && read_udp,
            })
            .collect();
        let by_namespace: HashMap<u32, usize> = on_shared
            .iter()
            .map(|shared| (samples[shared.index].0.inode as u32, shared.index))
            .collect();
        // Link-local sockets name an interface of their namespace by index.
        let mut link_local: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
        let walked = match from {
            Ok(inside) => {
                let walked = self.reader.read_shared_tables(
                    &list,
                    read_udp,
                    bound_inactive,
                    &mut |netns, socket| {
                        let Some(&index) = by_namespace.get(&netns) else {
                            return;
                        };
                        if let IpAddr::V6(address) = socket.local.ip()
                            && address.is_unicast_link_local()
                            && socket.interface != 0
                        {
                            link_local
                                .entry(index)
                                .or_default()
                                .insert(socket.interface);
                        }
                        samples[index].1.aggregator.add(socket);
                    },
                );
                self.reader.leave_namespace();
                drop(inside);
                walked
            }
            Err(error) => Err(error),
        };
        let whole = match &walked {
            Ok(walk) => walk.complete && (!bound_inactive || walk.bound_inactive_walked),
            Err(_) => false,
        };
        // What each namespace still needs read on its own: TCP, then UDP.
        let mut apart: Vec<(&OnSharedTables, [bool; 2])> = Vec::new();
        if whole {
            for shared in on_shared {
                let report = &mut samples[shared.index].1.report;
                // Walked for, or none can exist.
                report.bound_inactive_seen = true;
                report.one_walk = true;
                if shared.udp && read_udp {
                    report.sources[1] = SourceKind::Bpf;
                } else if shared.udp {
                    apart.push((shared, [false, true]));
                }
            }
            for (index, indexes) in link_local {
                let Some(shared) = on_shared.iter().find(|shared| shared.index == index) else {
                    continue;
                };
                if let Ok(inside) = enter_unless_own(shared) {
                    let names = crate::source::interface_names(&indexes);
                    drop(inside);
                    samples[index].1.report.interfaces.extend(names);
                }
            }
        } else {
            match walked {
                Err(error) => {
                    tracing::debug!(err = %error, "the one walk of the host's TCP tables failed; each namespace is read on its own");
                }
                Ok(walk) => {
                    tracing::debug!(
                        complete = walk.complete,
                        bound_inactive_walked = walk.bound_inactive_walked,
                        "the one walk of the host's TCP tables was incomplete; each namespace is read on its own"
                    );
                }
            }
            for shared in on_shared {
                let aggregator = &mut samples[shared.index].1.aggregator;
                aggregator.restart(Protocol::Tcp);
                if shared.udp {
                    aggregator.restart(Protocol::Udp);
                }
                apart.push((shared, [true, shared.udp]));
            }
        }
        let mut failures = Vec::new();
        for (shared, protocols) in apart {
            let read = &mut samples[shared.index].1;
            let result = enter_unless_own(shared).and_then(|inside| {
                let result = self.reader.read_settings().and_then(|_| {
                    self.reader
                        .read_protocols(shared.range, protocols, &mut read.aggregator)
                });
                self.reader.leave_namespace();
                drop(inside);
                result
            });
            match result {
                Ok(report) => {
                    for (index, &read_now) in protocols.iter().enumerate() {
                        if read_now {
                            read.report.sources[index] = report.sources[index];
                        }
                    }
                    if protocols[0] {
                        read.report.bound_inactive_seen = report.bound_inactive_seen;
                    }
                    read.report.interfaces.extend(report.interfaces);
                }
                // Gone since its settings were read: left out, as a
                // namespace gone before is, not a failure.
                Err(SourceError::Enter { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        || source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    failures.push((shared.index, None));
                }
                Err(error) => failures.push((shared.index, Some(error))),
            }
        }
        failures.sort_by_key(|(index, _)| *index);
        failures
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

    /// Samples every `interval` forever on the calling thread, publishing each
    /// exposition through `sender`. Returns when every receiver is gone.
    pub fn run(mut self, interval: Duration, sender: watch::Sender<Arc<Exposition>>) {
        lower_thread_priority();
        self.serving = true;
        self.status.interval_seconds = Some(interval.as_secs_f64());
        self.reader.load_programs_in_background();
        // The first sample waits a moment for the programs, which most
        // verifiers pass in milliseconds; never longer, so that the exporter
        // is ready soon whatever the verifier does.
        let mut wait = FIRST_SAMPLE_WAITS_FOR_PROGRAMS;
        let mut next = Instant::now();
        loop {
            self.reader.take_loaded_programs(wait);
            wait = Duration::ZERO;
            let exposition = self.sample();
            if sender.send(Arc::new(exposition)).is_err() {
                return;
            }
            release_free_memory();
            next += interval;
            let now = Instant::now();
            if next <= now {
                // A sample took longer than the interval: start again from now
                // instead of running a burst of catch-up samples.
                next = now;
                continue;
            }
            std::thread::sleep(next - now);
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

/// The failures the exporter running on this host counted in the
/// snapshot's namespace (`inspect`): `Ok(None)` where none counts, `Err`
/// with why where its counts cannot be read.
pub fn running_exporter_failures(snapshot: &Snapshot) -> Result<Option<NamespaceFailures>, String> {
    let Some(counts) = crate::source::bpf::failures::running_counts().map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let Some(netns) = snapshot
        .namespace
        .as_ref()
        .map(|namespace| namespace.inode)
        .or_else(own_namespace_inode)
    else {
        return Ok(None);
    };
    // What the exporter counts: TCP connect() always, the rest where it
    // has counted some.
    let mut counted = portstat_core::metrics::failures::counted(false);
    for &(counted_netns, kind, protocol) in counts.totals.keys() {
        if counted_netns == netns && !counted.contains(&(kind, protocol)) {
            counted.push((kind, protocol));
        }
    }
    Ok(Some(
        FailureHistory::default().figures(netns, &counts, &counted, None, snapshot),
    ))
}

/// Niceness of the sampler thread above the server's.
const SAMPLER_NICENESS: i32 = 10;
/// The time slice the sampler thread asks for, in nanoseconds: short, so that
/// the server, woken by a scrape, gets the CPU back within it rather than
/// after a default slice of a few milliseconds. Linux 6.12 and later honour
/// it; older kernels refuse the call, and niceness alone applies.
const SAMPLER_SLICE_NANOSECONDS: u64 = 100_000;

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

/// One namespace's sockets, taken into an `Aggregator` as they were read,
/// waiting for their owners.
pub struct NamespaceRead {
    /// The figures so far.
    pub aggregator: Aggregator,
    /// What the read found besides the sockets.
    pub report: ReadReport,
    /// How its owners are found.
    pub lookup: OwnerLookup,
}

impl NamespaceRead {
    /// The namespace's figures, naming processes with `owners`.
    pub fn finish(self, owners: &SocketOwners) -> Snapshot {
        self.aggregator.finish(owners, &self.report)
    }
}

/// Finds the owners of the sockets of `reads`, each with its namespace's
/// inode, in one pass over the processes: with BPF, each owner record goes
/// to its namespace's aggregator; otherwise the walk of `/proc/<pid>/fd`
/// names the inodes every aggregator wants, returned for `finish`.
pub fn resolve_owners(
    reader: &mut NamespaceReader,
    reads: &mut [(Option<u64>, &mut NamespaceRead)],
) -> SocketOwners {
    if reads
        .iter()
        .any(|(_, read)| read.lookup == OwnerLookup::Records)
    {
        let by_namespace: HashMap<u64, usize> = reads
            .iter()
            .enumerate()
            .filter_map(|(index, (inode, _))| inode.map(|inode| (inode, index)))
            .collect();
        let keep_port = reads
            .iter()
            .find_map(|(_, read)| read.aggregator.kept_port());
        let result = reader.read_owner_records(keep_port, &mut |owned| {
            if let Some(&index) = by_namespace.get(&u64::from(owned.netns)) {
                reads[index].1.aggregator.add_owner(owned);
            }
        });
        if let Err(error) = result {
            tracing::warn!(err = %error, "reading socket owners failed; they show as unknown");
        }
        return SocketOwners::default();
    }
    let mut wanted: Vec<u64> = reads
        .iter()
        .flat_map(|(_, read)| read.aggregator.wanted_owners())
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    reader.resolve_owners(&wanted)
}

/// A namespace whose TCP sockets come from the one walk of the host's
/// tables.
struct OnSharedTables {
    /// Its read, in the sample's reads.
    index: usize,
    /// How to enter it.
    handle: std::path::PathBuf,
    /// Whether it is the exporter's own, which needs no entering.
    own: bool,
    /// Its ephemeral range.
    range: PortRange,
    /// Whether its counts allow sockets bound but neither listening nor
    /// connected.
    may_hold_bound_inactive: bool,
    /// Whether its UDP sockets are to come from the walk too.
    udp: bool,
    /// Whether it is on the host's UDP table, which the walk can then read
    /// from inside it.
    host_udp_table: bool,
}

/// Enters the namespace of `shared`, unless it is the exporter's own.
fn enter_unless_own(shared: &OnSharedTables) -> Result<Option<namespaces::Entered>, SourceError> {
    if shared.own {
        return Ok(None);
    }
    namespaces::Entered::enter(&shared.handle)
        .map(Some)
        .map_err(|source| SourceError::Enter {
            path: shared.handle.clone(),
            source,
        })
}

/// `read_namespace` for `--collector.netns=all`, but where the namespace's
/// TCP sockets (and maybe its UDP ones) are to come from the one walk of
/// the host's tables: then only the rest is read, and its range is
/// returned with whether it may hold sockets bound but neither listening
/// nor connected, and what the walk is to read of it.
fn read_namespace_but_shared(
    reader: &mut NamespaceReader,
    limits: &Limits,
) -> Result<(NamespaceRead, Option<LeftToTheWalk>), SourceError> {
    let (range, mut aggregator, lookup) = start_namespace(reader, limits, None)?;
    let using = reader.on_shared_tables();
    if !using.tcp {
        let report = reader.read_sockets(range, None, &mut aggregator)?;
        return Ok((end_namespace(reader, aggregator, report, lookup), None));
    }
    let report = reader.read_sockets_but_shared(range, using, &mut aggregator)?;
    let may_hold = reader.may_hold_bound_inactive();
    Ok((
        end_namespace(reader, aggregator, report, lookup),
        Some(LeftToTheWalk {
            range,
            may_hold_bound_inactive: may_hold,
            using,
        }),
    ))
}

/// What a namespace left to the one walk of the host's tables.
struct LeftToTheWalk {
    /// Its ephemeral range.
    range: PortRange,
    /// Whether its counts allow sockets bound but neither listening nor
    /// connected.
    may_hold_bound_inactive: bool,
    /// What the walk is to read of it.
    using: SharedTablesUse,
}

/// Reads the namespace the calling thread is in: its settings, then its
/// sockets, streamed into an `Aggregator` with `limits`. With `keep_port`,
/// the sockets on that port are kept whole too (`inspect PORT`). Owners are
/// found afterwards, with `resolve_owners`.
pub fn read_namespace(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
) -> Result<NamespaceRead, SourceError> {
    let (range, mut aggregator, lookup) = start_namespace(reader, limits, keep_port)?;
    let report = reader.read_sockets(range, keep_port, &mut aggregator)?;
    Ok(end_namespace(reader, aggregator, report, lookup))
}

/// `read_namespace` and `resolve_owners` for the exporter's own namespace,
/// for one-shot commands (`--once`, `inspect`): where owners come from BPF
/// records, their pass over the host's processes runs beside the socket
/// pass, on a second thread, so that the command takes about as long as the
/// longer of the two. The daemon reads them one after the other, leaving
/// the second core to the server.
pub fn read_own_namespace_at_once(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
) -> Result<(NamespaceRead, SocketOwners), SourceError> {
    let (range, mut aggregator, lookup) = start_namespace(reader, limits, keep_port)?;
    if lookup != OwnerLookup::Records {
        let report = reader.read_sockets(range, keep_port, &mut aggregator)?;
        let mut read = end_namespace(reader, aggregator, report, lookup);
        let owners = resolve_owners(reader, &mut [(own_namespace_inode(), &mut read)]);
        return Ok((read, owners));
    }
    let mut records = aggregator.owner_records();
    let own = own_namespace_inode();
    let report = reader.read_sockets_beside_owner_records(
        range,
        keep_port,
        &mut aggregator,
        &mut |owned| {
            if Some(u64::from(owned.netns)) == own {
                records.add(owned);
            }
        },
    )?;
    aggregator.take_owner_records(records);
    Ok((
        end_namespace(reader, aggregator, report, lookup),
        SocketOwners::default(),
    ))
}

/// Reads the settings and makes the aggregator of a namespace read.
fn start_namespace(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
) -> Result<(PortRange, Aggregator, OwnerLookup), SourceError> {
    let settings = reader.read_settings()?;
    let lookup = reader.owner_lookup();
    let mut aggregator = Aggregator::new(
        settings.range,
        settings.reserved,
        settings.time_wait_reuse,
        *limits,
    );
    aggregator.set_owner_lookup(lookup);
    if let Some(port) = keep_port {
        aggregator.keep_sockets_on(port);
    }
    Ok((settings.range, aggregator, lookup))
}

/// Adds source NAT to a namespace whose sockets were read.
fn end_namespace(
    reader: &mut NamespaceReader,
    mut aggregator: Aggregator,
    report: ReadReport,
    lookup: OwnerLookup,
) -> NamespaceRead {
    if let Some(counters) = reader.read_nat(&mut aggregator) {
        aggregator.show_nat(counters);
    }
    NamespaceRead {
        aggregator,
        report,
        lookup,
    }
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
