//! The owners collector (`--collector.processes`): the processes that hold
//! the sockets of every namespace read, found once a sample after the
//! namespaces were read, in one pass over the host's processes
//! (`source::OwnerSource`): the BPF owners program's records where it
//! loads, each handed to its namespace's aggregator, else a walk of
//! `/proc/<pid>/fd` for the inodes every aggregator wants. It keeps, across
//! samples, the loaded program. A one-shot read of the exporter's own
//! namespace runs the pass beside the sockets' (`read_beside_sockets`).

use std::collections::HashMap;

use portstat_core::aggregate::Aggregator;
use portstat_core::model::{OwnedSocket, OwnerLookup, PerProtocol, ReadReport, SocketOwners};
use portstat_core::status::Collector;

use super::namespace_read::NamespaceRead;
use super::sockets::Sockets;
use super::{Collectors, InNamespace, Registration};
use crate::source::{OwnerSource, SourceError, namespaces};

/// Runs where owners are looked for; a failure is its own, and the owners
/// not found show as unknown.
pub const REGISTRATION: Registration = Registration {
    collector: Collector::Owners,
    runs: |plan| plan.owners != OwnerLookup::Off,
    messages: Some((
        "reading socket owners failed; they show as unknown",
        "reading socket owners works again",
    )),
    fails_the_read: false,
};

/// The owners collector's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct OwnersFlags {
    /// Find the process that owns each socket: one BPF pass over every
    /// process's descriptors (iter/task_file) where the BPF source's
    /// privileges allow, else the walk of /proc/<pid>/fd (root, or
    /// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH). `false` labels every
    /// listener `process="unknown"` and saves that pass.
    #[arg(
        long = "collector.processes",
        global = true,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub processes: bool,

    /// Processes listed by ephemeral ports held (the top ones); 0 lists none.
    #[arg(
        long = "collector.processes.top",
        global = true,
        value_name = "K",
        default_value_t = 10
    )]
    pub top: usize,
}

/// The owners of the sockets of every namespace read.
pub struct Owners {
    pub(super) source: OwnerSource,
}

impl Owners {
    /// Finds owners with `source`.
    pub fn new(source: OwnerSource) -> Owners {
        Owners { source }
    }

    /// How owners are found now.
    pub fn lookup(&self) -> OwnerLookup {
        self.source.lookup()
    }

    /// Finds the owners of the sockets of `reads`, each with its
    /// namespace's inode, in one pass over the processes, timed as this
    /// collector's: with BPF, each owner record goes to its namespace's
    /// aggregator; otherwise the walk of `/proc/<pid>/fd` names the inodes
    /// every aggregator wants, returned for `finish`. The owners found are
    /// kept where the records failed part-way.
    pub fn resolve(
        &mut self,
        reads: &mut [(Option<u64>, &mut NamespaceRead)],
        collectors: &mut Collectors,
    ) -> SocketOwners {
        let (owners, result) = collectors.time(Collector::Owners, || self.owners_of(reads));
        if let Err(error) = result {
            collectors.failed(Collector::Owners, error);
        }
        owners
    }

    /// The owners `resolve` finds, and whether the BPF records read.
    fn owners_of(
        &mut self,
        reads: &mut [(Option<u64>, &mut NamespaceRead)],
    ) -> (SocketOwners, Result<(), SourceError>) {
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
            let result = self.source.read_records(keep_port, &mut |owned| {
                if let Some(&index) = by_namespace.get(&u64::from(owned.netns)) {
                    reads[index].1.aggregator.add_owner(owned);
                }
            });
            return (SocketOwners::default(), result);
        }
        let mut wanted: Vec<u64> = reads
            .iter()
            .flat_map(|(_, read)| read.aggregator.wanted_owners())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        (self.source.resolve(&wanted), Ok(()))
    }

    /// Reads the sockets of `namespace` with `sockets`, and the owner
    /// records beside them, on a second thread: the two passes are
    /// independent walks of the kernel (its socket tables, and every
    /// process's open files), so the wall time is the longer of the two
    /// rather than their sum. For one-shot commands, whose user waits for
    /// them; the CPU spent is the same. Each record of the exporter's own
    /// namespace is added up in the aggregator's owner records. Both passes
    /// are timed as the sockets collector's; a failure of the records is
    /// this collector's.
    pub fn read_beside_sockets(
        &mut self,
        sockets: &mut Sockets,
        namespace: &mut InNamespace<'_>,
        collectors: &mut Collectors,
    ) -> Result<(), SourceError> {
        let Some(mut program) = self.source.take_program() else {
            return collectors.read_namespace(sockets, namespace);
        };
        let own = namespaces::own_namespace_inode();
        let aggregator: &mut Aggregator = namespace.aggregator;
        let mut records = aggregator.owner_records();
        let mut take = |owned: &OwnedSocket| {
            if Some(u64::from(owned.netns)) == own {
                records.add(owned);
            }
        };
        let (range, keep_port, lookup) =
            (namespace.range, namespace.keep_port, namespace.owner_lookup);
        let (report, owned): (Result<ReadReport, SourceError>, _) =
            collectors.time(Collector::Sockets, || {
                std::thread::scope(|scope| {
                    let pass = scope.spawn(|| program.read(keep_port, &mut take));
                    let report = sockets.source.read(
                        range,
                        keep_port,
                        aggregator,
                        PerProtocol::both(true),
                        lookup,
                    );
                    match pass.join() {
                        Ok(result) => (report, result),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                })
            });
        self.source.put_back(program);
        if let Err(error) = owned {
            collectors.failed(Collector::Owners, SourceError::Bpf(error));
        }
        aggregator.take_owner_records(records);
        namespace.report = Some(report?);
        Ok(())
    }
}
