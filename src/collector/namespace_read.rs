//! What one read of a namespace holds: the namespace as its collectors
//! read into it (`InNamespace`), how its sockets are read (`SocketsRead`),
//! and what the read gives (`NamespaceRead`), with what it left to the one
//! walk of the host's tables (`LeftToTheWalk`).

use portstat_core::aggregate::{Aggregator, Finishing, Snapshot};
use portstat_core::model::{OwnerLookup, PortRange, ReadReport, SocketOwners};

use crate::source::SharedTablesUse;

/// A namespace being read by the calling thread, which is inside it: what
/// a `NamespaceCollector` reads into.
pub struct InNamespace<'a> {
    /// The namespace's figures so far.
    pub aggregator: &'a mut Aggregator,
    /// Its ephemeral range, from its settings.
    pub range: PortRange,
    /// The port whose sockets are kept whole (`inspect PORT`).
    pub keep_port: Option<u16>,
    /// How its sockets are read.
    pub sockets: SocketsRead,
    /// How their owners are found, which says which inodes are read.
    pub owner_lookup: OwnerLookup,
    /// What the sockets' read found besides the sockets, once read.
    pub report: Option<ReadReport>,
    /// What is left to the one walk of the host's tables
    /// (`SocketsRead::LeavingTheWalk`).
    pub left_to_the_walk: Option<LeftToTheWalk>,
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
    /// What the one walk of the host's tables is to read of it
    /// (`SocketsRead::LeavingTheWalk`).
    pub left_to_the_walk: Option<LeftToTheWalk>,
    /// Its owners, where they were found with its sockets
    /// (`SocketsRead::WithOwners` without owner records).
    pub owners: Option<SocketOwners>,
}

impl NamespaceRead {
    /// The namespace's figures, naming processes with `owners`.
    pub fn finish(self, owners: &SocketOwners) -> Snapshot {
        self.aggregator.finish(owners, &self.report)
    }

    /// The namespace's figures, with what `finishing` gives besides.
    pub fn finish_with(self, finishing: Finishing<'_>) -> Snapshot {
        self.aggregator.finish_with(&self.report, finishing)
    }
}

/// How a namespace's sockets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketsRead {
    /// On their own; owners are found afterwards, with `resolve_owners`.
    Alone,
    /// With their owners: where owners come from BPF records, that pass
    /// over the host's processes runs beside the socket pass, on a second
    /// thread, so that the read takes about as long as the longer of the
    /// two. For one-shot commands (`--once`, `inspect`) in the exporter's
    /// own namespace; the daemon reads them one after the other, leaving the
    /// second core to the server.
    WithOwners,
    /// Those the one walk of the host's tables reads (a namespace's TCP
    /// sockets, maybe its UDP ones) are left to it
    /// (`--collector.netns=all`).
    LeavingTheWalk,
}

/// What a namespace left to the one walk of the host's tables.
pub struct LeftToTheWalk {
    /// Its ephemeral range.
    pub range: PortRange,
    /// Whether its counts allow sockets bound but neither listening nor
    /// connected.
    pub may_hold_bound_inactive: bool,
    /// What the walk is to read of it.
    pub using: SharedTablesUse,
}
