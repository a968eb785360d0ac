//! The collectors that read inside a namespace, and the BPF programs they
//! read with, loading on a thread of their own: `NamespaceReader` holds the
//! sockets and owners collectors and those that read each namespace after
//! its sockets (conntrack), with which `read::read_namespace` reads the
//! namespace the calling thread is in, and hands each program to its
//! collector as it loads.

use std::path::{Path, PathBuf};

use portstat_core::model::{NamespaceSample, OwnerLookup, PerProtocol, SocketOwners, SourceKind};
use portstat_core::status::Collector;

use super::conntrack::Conntrack;
use super::namespace_read::NamespaceRead;
use super::owners::Owners;
use super::sockets::Sockets;
use super::{Collectors, NamespaceCollector};
use crate::source::{
    NatSource, OwnerSource, PortSettings, SharedWalk, SocketSource, SourceChoice, SourceError, bpf,
    conntrack,
};

/// Reads the network namespace the calling thread is in, one sample at a
/// time, with its collectors.
pub struct NamespaceReader {
    procfs_root: PathBuf,
    /// Settings and sockets, and the one walk of the shared tables.
    pub(super) sockets: Sockets,
    /// The sockets' owners.
    pub(super) owners: Owners,
    /// The collectors that read each namespace after its sockets, in
    /// order: source NAT where asked for (`with_nat`).
    pub(super) after_sockets: Vec<Box<dyn NamespaceCollector + Send>>,
    /// The BPF programs loading on a thread of their own
    /// (`load_programs_in_background`); TCP is read over netlink meanwhile.
    loading: Option<bpf::background::ProgramLoad>,
}

impl NamespaceReader {
    /// A reader of the namespace through `choice`, with procfs at
    /// `procfs_root` (normally `/proc`); `attribution` resolves socket owners.
    ///
    /// With `thread_namespace`, procfs tables are read from `thread-self/net`,
    /// the namespace of the calling thread (which `namespaces::Entered` may
    /// have moved), rather than `net`, that of the process.
    pub fn new(
        procfs_root: PathBuf,
        choice: SourceChoice,
        attribution: bool,
        thread_namespace: bool,
    ) -> NamespaceReader {
        let tables = if thread_namespace {
            procfs_root.join("thread-self").join("net")
        } else {
            procfs_root.join("net")
        };
        let lookup = OwnerSource::lookup_before_load(attribution);
        NamespaceReader {
            sockets: Sockets::new(
                SocketSource::new(&procfs_root, tables, choice, lookup),
                SharedWalk::new(&procfs_root, false),
            ),
            owners: Owners::new(OwnerSource::new(&procfs_root, attribution)),
            procfs_root,
            after_sockets: Vec::new(),
            loading: None,
        }
    }

    /// Loads the BPF program from `object` rather than the one built in:
    /// for a rebuilt program, and for the tests that make it fail.
    pub fn with_bpf_object(mut self, object: Option<PathBuf>) -> NamespaceReader {
        let lookup = self.owner_lookup();
        self.sockets.source.set_bpf_object(object, lookup);
        self
    }

    /// Reads the TCP sockets of every namespace on the host's shared tables
    /// in one walk where the BPF source runs, rather than namespace by
    /// namespace.
    pub fn with_shared_tables(mut self, shared: bool) -> NamespaceReader {
        self.sockets.shared = SharedWalk::new(&self.procfs_root, shared);
        self
    }

    /// Also reads source NAT from conntrack, only the entries `mark`
    /// matches where given.
    pub fn with_nat(mut self, mark: Option<conntrack::wire::MarkFilter>) -> NamespaceReader {
        let source = NatSource::new(&self.procfs_root, self.sockets.source.net(), mark);
        self.after_sockets.push(Box::new(Conntrack::new(source)));
        self
    }

    /// Whether socket owners are found.
    pub fn finds_owners(&self) -> bool {
        self.owners.source.finds_owners()
    }

    /// Reads the namespace's port settings, and what the socket counts say
    /// is there to find.
    pub fn read_settings(&mut self) -> Result<PortSettings, SourceError> {
        self.sockets.read_settings()
    }

    /// Reads the namespace's settings and every socket whole, into memory:
    /// for tests and fixtures. Owners are left empty.
    pub fn read(&mut self) -> Result<NamespaceSample, SourceError> {
        let settings = self.read_settings()?;
        let mut sockets = Vec::new();
        let lookup = self.owner_lookup();
        let report = self
            .sockets
            .read(settings.range, None, &mut sockets, lookup)?;
        Ok(NamespaceSample {
            range: settings.range,
            reserved: settings.reserved,
            time_wait_reuse: settings.time_wait_reuse,
            sockets,
            owners: SocketOwners::default(),
            report,
        })
    }

    /// Finds the owners of the sockets of `reads`, each with its
    /// namespace's inode, in one pass over the processes
    /// (`Owners::resolve`).
    pub fn resolve_owners(
        &mut self,
        reads: &mut [(Option<u64>, &mut NamespaceRead)],
        collectors: &mut Collectors,
    ) -> SocketOwners {
        self.owners.resolve(reads, collectors)
    }

    /// Closes what ties the collectors to the namespace read last (netlink
    /// sockets), so that they hold nothing of it afterwards.
    pub fn leave_namespace(&mut self) {
        self.sockets.leave_namespace();
        for collector in &mut self.after_sockets {
            collector.leave_namespace();
        }
    }

    /// The procfs root this reader reads.
    pub fn procfs_root(&self) -> &Path {
        &self.procfs_root
    }

    /// How owners are found now.
    pub fn owner_lookup(&self) -> OwnerLookup {
        self.owners.lookup()
    }

    /// Where each protocol's sockets are read from now.
    pub fn sources(&self) -> PerProtocol<SourceKind> {
        self.sockets.sources()
    }

    /// Whether the one walk of the host's shared tables is on.
    pub fn walks_shared_tables(&self) -> bool {
        self.sockets.walks_shared_tables()
    }

    /// Whether source NAT is read (`with_nat`).
    pub fn reads_nat(&self) -> bool {
        self.runs(Collector::Conntrack)
    }

    /// Whether `collector` reads each namespace after its sockets.
    pub fn runs(&self, collector: Collector) -> bool {
        self.after_sockets
            .iter()
            .any(|after| after.registration().collector == collector)
    }

    /// With the `auto` source, starts loading the BPF programs (TCP,
    /// owners where they are found, the one walk where it is on) on a
    /// thread of their own, and reads TCP over netlink and owners through
    /// `/proc/<pid>/fd` until `take_loaded_programs` finds them loaded: a
    /// daemon's first samples then never wait for the verifier. Elsewhere
    /// (`bpf` asked for, which fails where BPF cannot load, or a one-shot
    /// run), the programs load where they are first used.
    pub fn load_programs_in_background(&mut self) {
        if !self.sockets.source.loads_in_background() || self.loading.is_some() {
            return;
        }
        let owners = self.owners.source.wants_program();
        match bpf::background::ProgramLoad::start(
            self.sockets.source.bpf_object().map(Path::to_path_buf),
            owners,
            self.sockets.shared.is_on(),
        ) {
            Ok(loading) => {
                self.loading = Some(loading);
                self.sockets.source.read_tcp_over_netlink_meanwhile();
            }
            Err(error) => {
                tracing::debug!(err = %error, "cannot load the BPF programs on a thread of their own; loading them at first use");
            }
        }
    }

    /// Where the programs of `load_programs_in_background` are loaded
    /// (waiting at most `wait` for them), switches to them: TCP is read
    /// with BPF from the next read on, logged once; a program that cannot
    /// load is logged once with the reason, and its fallback kept.
    pub fn take_loaded_programs(&mut self, wait: std::time::Duration) {
        let Some(loading) = &self.loading else {
            return;
        };
        let Some(loaded) = loading.finished(wait) else {
            return;
        };
        self.loading = None;
        self.sockets
            .source
            .install_tcp_program(loaded.sockets, loaded.took.as_millis() as u64);
        if let Some(owners) = loaded.owners {
            self.owners.source.install(owners);
        }
        if let Some(shared) = loaded.shared_tables {
            self.sockets.shared.install(shared);
        }
    }

    /// Loads the owners program where owners are to come from BPF records
    /// (attribution on, the `auto` or `bpf` source) and it is neither
    /// loaded nor loading in the background; where it cannot load, owners
    /// are found through `/proc/<pid>/fd`, logged once. Part of resolving
    /// what the exporter reads, at start: `owner_lookup` never loads.
    pub fn load_owner_program(&mut self) {
        if !self.owners.source.wants_program()
            || !matches!(
                self.sockets.source.choice(),
                SourceChoice::Auto | SourceChoice::Bpf
            )
            || self.loading.is_some()
        {
            return;
        }
        self.owners.source.load_program();
    }
}
