//! A namespace's source NAT, from conntrack: the entries of the calling
//! thread's namespace and the table's counters.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use portstat_core::model::{ConntrackCounters, NatSink};

use super::{SOCKETS_BETWEEN_YIELDS, conntrack, namespaces};

/// Source NAT read from conntrack, and the namespaces where it was seen.
pub struct NatSource {
    procfs_root: PathBuf,
    /// The namespace's `net` folder below the procfs root.
    net: PathBuf,
    conntrack: conntrack::ConntrackReader,
    /// The namespaces, by inode, where source NAT was seen: their NAT
    /// figures are written from then on, at zero too, so that series do
    /// not come and go with the traffic.
    seen: HashSet<u64>,
}

/// What a read of a namespace's source NAT found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatRead {
    /// No NAT figures: conntrack is not read, or the namespace never
    /// translated a source.
    Nothing,
    /// NAT figures to write, with the table's counters where the kernel
    /// has them.
    Figures { counters: Option<ConntrackCounters> },
}

/// Why a namespace's source NAT was not read.
#[derive(Debug)]
pub enum NatError {
    /// There is nothing to read: `CAP_NET_ADMIN` or `nf_conntrack_netlink`
    /// is missing. Not a failure.
    Unavailable(conntrack::ConntrackError),
    /// The dump or the table's counters failed to read.
    Failed(String),
}

impl std::fmt::Display for NatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatError::Unavailable(error) => error.fmt(f),
            NatError::Failed(reason) => f.write_str(reason),
        }
    }
}

impl NatSource {
    /// Source NAT below `procfs_root`, with the namespace's tables in
    /// `net`, only the entries `mark` matches where given.
    pub fn new(
        procfs_root: &Path,
        net: &Path,
        mark: Option<conntrack::wire::MarkFilter>,
    ) -> NatSource {
        NatSource {
            procfs_root: procfs_root.to_path_buf(),
            net: net.to_path_buf(),
            conntrack: conntrack::ConntrackReader::new(mark),
            seen: HashSet::new(),
        }
    }

    /// Hands `sink` the source-NAT'd conntrack entries of the calling
    /// thread's namespace. Returns whether NAT figures are to be written,
    /// with the table's counters where the kernel has them: when the
    /// namespace translates sources, or did before. No NAT is no error; no
    /// permission or no module is `NatError::Unavailable`, and a failed
    /// dump, or counters that do not parse, `NatError::Failed`: either way
    /// the namespace writes no NAT figures this time.
    pub fn read(&mut self, sink: &mut dyn NatSink) -> Result<NatRead, NatError> {
        let mut counting = CountingNat { sink, added: 0 };
        // conntrack's hash table is shared by every namespace, and a dump
        // walks all of it: an empty table, as most pods' are, is not
        // dumped.
        let empty = std::fs::read_to_string(self.procfs_root.join(CONNTRACK_COUNT))
            .is_ok_and(|count| count.trim() == "0");
        if !empty {
            self.conntrack.read(&mut counting).map_err(|error| {
                if conntrack::Unavailable::is_unavailable(&error) {
                    NatError::Unavailable(error)
                } else {
                    NatError::Failed(error.to_string())
                }
            })?;
        }
        let counters = conntrack::read_counters(
            &self.net.join("stat").join("nf_conntrack"),
            &self.procfs_root.join(CONNTRACK_MAX),
        )
        .map_err(NatError::Failed)?;
        // A namespace whose inode cannot be read is not remembered: its
        // figures show only while it translates.
        let namespace = namespaces::thread_namespace_inode(&self.procfs_root);
        if counting.added > 0 {
            self.seen.extend(namespace);
        } else if !namespace.is_some_and(|namespace| self.seen.contains(&namespace)) {
            return Ok(NatRead::Nothing);
        }
        Ok(NatRead::Figures { counters })
    }

    /// Closes the netlink socket of the namespace last read.
    pub fn leave_namespace(&mut self) {
        self.conntrack.close();
    }
}

/// Entries in the namespace's conntrack table, below the procfs root.
const CONNTRACK_COUNT: &str = "sys/net/netfilter/nf_conntrack_count";
/// The most entries the table takes, below the procfs root.
const CONNTRACK_MAX: &str = "sys/net/netfilter/nf_conntrack_max";

/// Passes entries on to a sink, counting them, and yielding the CPU every
/// `SOCKETS_BETWEEN_YIELDS` entries, as the socket sources do.
struct CountingNat<'a> {
    sink: &'a mut dyn NatSink,
    added: u64,
}

impl NatSink for CountingNat<'_> {
    fn add_nat(&mut self, entry: &portstat_core::model::NatEntry) {
        self.added += 1;
        if self.added.is_multiple_of(u64::from(SOCKETS_BETWEEN_YIELDS)) {
            std::thread::yield_now();
        }
        self.sink.add_nat(entry);
    }

    fn restart_nat(&mut self) {
        self.added = 0;
        self.sink.restart_nat();
    }
}
