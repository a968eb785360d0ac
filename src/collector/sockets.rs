//! The sockets collector, which always runs: each namespace's port
//! settings and sockets, read inside it through one fallback chain, BPF →
//! netlink → procfs (`source::SocketSource`), and, with
//! `--collector.netns=all`, the one walk of the host's shared TCP tables
//! for every namespace on them (`source::SharedWalk`, run by `walk`). It
//! keeps, across samples, which source reads each protocol and the loaded
//! programs.

use std::path::PathBuf;

use portstat_core::model::{
    OwnerLookup, PerProtocol, PortRange, ReadReport, SocketRecord, SocketSink, SourceKind,
};
use portstat_core::status::Collector;

use super::namespace_read::{LeftToTheWalk, SocketsRead};
use super::{CollectError, InNamespace, NamespaceCollector, Registration};
use crate::source::{
    PortSettings, SharedTablesUse, SharedWalk, SocketSource, SourceChoice, SourceError, bpf,
    inode_reading,
};

/// Always runs; its failure is the namespace's, reported with the sample.
pub const REGISTRATION: Registration = Registration {
    collector: Collector::Sockets,
    runs: |_| true,
    messages: None,
    fails_the_read: true,
};

/// The sockets collector's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketsFlags {
    /// Where sockets are read from: a BPF program for TCP (exact headroom;
    /// needs CAP_BPF and CAP_PERFMON, and kernel BTF), netlink sock_diag,
    /// procfs, or auto: BPF, else netlink, else procfs, per protocol.
    #[arg(long = "collector.source",
        global = true, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,

    /// Load the BPF program from this object file instead of the one built
    /// in (for a program rebuilt by src/source/bpf/build.sh).
    #[arg(
        long = "collector.bpf.object",
        global = true,
        value_name = "PATH",
        hide = true
    )]
    pub bpf_object: Option<PathBuf>,
}

/// The sockets of each namespace, and the one walk of the shared tables.
pub struct Sockets {
    /// Settings, counts and sockets: the fallback chain.
    pub(super) source: SocketSource,
    /// The one walk of the host's TCP tables (`--collector.netns=all`).
    pub(super) shared: SharedWalk,
}

impl Sockets {
    /// Reads sockets from `source`, and the shared tables with `shared`.
    pub fn new(source: SocketSource, shared: SharedWalk) -> Sockets {
        Sockets { source, shared }
    }

    /// Where each protocol's sockets are read from now.
    pub fn sources(&self) -> PerProtocol<SourceKind> {
        self.source.sources()
    }

    /// Reads the namespace's port settings, and what the socket counts say
    /// is there to find.
    pub fn read_settings(&mut self) -> Result<PortSettings, SourceError> {
        self.source.read_settings()
    }

    /// Hands every socket the figures need to `sink`, for `range`, with the
    /// inodes owners are found by with `lookup`; the inodes of sockets on
    /// `keep_port` are always read.
    pub fn read(
        &mut self,
        range: PortRange,
        keep_port: Option<u16>,
        sink: &mut dyn SocketSink,
        lookup: OwnerLookup,
    ) -> Result<ReadReport, SourceError> {
        self.source
            .read(range, keep_port, sink, PerProtocol::both(true), lookup)
    }

    /// `read` for the protocols `read` says: those of a namespace that the
    /// one walk did not read.
    pub fn read_protocols(
        &mut self,
        range: PortRange,
        read: PerProtocol<bool>,
        sink: &mut dyn SocketSink,
        lookup: OwnerLookup,
    ) -> Result<ReadReport, SourceError> {
        self.source.read(range, None, sink, read, lookup)
    }

    /// Whether the one walk of the host's shared tables is on.
    pub fn walks_shared_tables(&self) -> bool {
        self.shared.is_on()
    }

    /// Walks the host's TCP tables once (`SharedWalk::walk`), reading the
    /// inodes owners are found by.
    pub fn read_shared_tables(
        &mut self,
        namespaces: &[bpf::shared::SharedNamespace],
        read_udp: bool,
        bound_inactive: bool,
        lookup: OwnerLookup,
        each: &mut dyn FnMut(u32, &SocketRecord),
    ) -> Result<bpf::shared::WalkOutcome, SourceError> {
        let inodes = inode_reading(lookup, None);
        self.shared
            .walk(namespaces, read_udp, inodes, bound_inactive, each)
    }

    /// The sockets of the namespace, but for the protocols the one walk is
    /// to read, which are left to it. For TCP, `bound_inactive_seen` in the
    /// report then says only whether no bound-but-inactive socket is
    /// possible, and is to be set from the walk.
    fn read_leaving_the_walk(
        &mut self,
        namespace: &mut InNamespace<'_>,
    ) -> Result<ReadReport, SourceError> {
        let using: SharedTablesUse = self.shared.using(&self.source);
        let read = PerProtocol {
            tcp: !using.tcp,
            udp: !using.udp,
        };
        let report = self.read_protocols(
            namespace.range,
            read,
            namespace.aggregator,
            namespace.owner_lookup,
        )?;
        namespace.left_to_the_walk = using.tcp.then(|| LeftToTheWalk {
            range: namespace.range,
            may_hold_bound_inactive: self.source.may_hold_bound_inactive(),
            using,
        });
        Ok(report)
    }
}

impl NamespaceCollector for Sockets {
    fn registration(&self) -> &'static Registration {
        &REGISTRATION
    }

    fn read_namespace(&mut self, namespace: &mut InNamespace<'_>) -> Result<(), CollectError> {
        let report = match namespace.sockets {
            SocketsRead::LeavingTheWalk => self.read_leaving_the_walk(namespace),
            SocketsRead::Alone | SocketsRead::WithOwners => self.read(
                namespace.range,
                namespace.keep_port,
                namespace.aggregator,
                namespace.owner_lookup,
            ),
        };
        namespace.report = Some(report.map_err(CollectError::Source)?);
        Ok(())
    }

    fn leave_namespace(&mut self) {
        self.source.leave_namespace();
    }
}
