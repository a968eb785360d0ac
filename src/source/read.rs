//! One namespace's read: its settings, its sockets streamed into an
//! `Aggregator`, its source NAT, then its sockets' owners, each read timed
//! and its failures noted for its collector (`crate::collector`). The
//! sampler reads the namespaces it samples with these, and `inspect` and
//! `--once` the exporter's own; `all` reads every namespace with them and
//! `walk`.

use std::collections::HashMap;

use portstat_core::aggregate::{Aggregator, Finishing, Limits, Snapshot};
use portstat_core::model::{OwnerLookup, PortRange, ReadReport, SocketOwners};
use portstat_core::status::Collector;

use super::{
    NameSource, NamespaceReader, NatError, NatRead, SharedTablesUse, SourceError, namespaces,
};
use crate::collector::Collectors;

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

/// Finds the owners of the sockets of `reads`, each with its namespace's
/// inode, in one pass over the processes: with BPF, each owner record goes
/// to its namespace's aggregator; otherwise the walk of `/proc/<pid>/fd`
/// names the inodes every aggregator wants, returned for `finish`.
pub fn resolve_owners(
    reader: &mut NamespaceReader,
    reads: &mut [(Option<u64>, &mut NamespaceRead)],
    collectors: &mut Collectors,
) -> SocketOwners {
    let (owners, result) = collectors.time(Collector::Owners, || owners_of(reader, reads));
    // The owners found are kept where the BPF records failed part-way.
    if let Err(error) = result {
        collectors.failed(Collector::Owners, error);
    }
    owners
}

/// The owners `resolve_owners` finds, and whether the BPF records read.
fn owners_of(
    reader: &mut NamespaceReader,
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
        let result = reader.read_owner_records(keep_port, &mut |owned| {
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
    (reader.resolve_owners(&wanted), Ok(()))
}

/// What one read of a namespace reads, besides its settings and sockets.
pub struct Reading<'a> {
    /// The bounds the figures keep within.
    pub limits: &'a Limits,
    /// The port whose sockets are kept whole (`inspect PORT`).
    pub keep_port: Option<u16>,
    /// Who closed the connections no process holds, by namespace: the
    /// namespace's namer is taken as its read starts.
    pub names: Option<&'a mut (dyn NameSource + 'static)>,
    /// How its sockets are read.
    pub sockets: SocketsRead,
}

impl<'a> Reading<'a> {
    /// Settings, sockets and NAT within `limits`, nothing kept, nothing
    /// named.
    pub fn alone(limits: &'a Limits) -> Reading<'a> {
        Reading {
            limits,
            keep_port: None,
            names: None,
            sockets: SocketsRead::Alone,
        }
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

/// Reads the namespace the calling thread is in: its settings, then its
/// sockets, streamed into an `Aggregator` as `reading` says, then its
/// source NAT where NAT is read.
pub fn read_namespace(
    reader: &mut NamespaceReader,
    reading: Reading<'_>,
    collectors: &mut Collectors,
) -> Result<NamespaceRead, SourceError> {
    let Reading {
        limits,
        keep_port,
        names,
        sockets,
    } = reading;
    let (range, mut aggregator, lookup) =
        start_namespace(reader, limits, keep_port, names, collectors)?;
    let mut left = None;
    let report = match sockets {
        SocketsRead::WithOwners if lookup == OwnerLookup::Records => {
            read_beside_owner_records(reader, range, keep_port, &mut aggregator, collectors)?
        }
        SocketsRead::LeavingTheWalk => {
            let using = reader.on_shared_tables();
            let report = collectors.time(Collector::Sockets, || {
                reader.read_sockets_but_shared(range, using, &mut aggregator)
            })?;
            left = using.tcp.then(|| LeftToTheWalk {
                range,
                may_hold_bound_inactive: reader.may_hold_bound_inactive(),
                using,
            });
            report
        }
        _ => collectors.time(Collector::Sockets, || {
            reader.read_sockets(range, keep_port, &mut aggregator)
        })?,
    };
    let mut read = end_namespace(reader, aggregator, report, lookup, collectors);
    read.left_to_the_walk = left;
    if sockets == SocketsRead::WithOwners && lookup != OwnerLookup::Records {
        let own = namespaces::own_namespace_inode();
        read.owners = Some(resolve_owners(reader, &mut [(own, &mut read)], collectors));
    }
    Ok(read)
}

/// The sockets of a namespace read with the owner records beside them, on
/// a second thread, each record of the exporter's own namespace added up in
/// the aggregator's owner records: both passes are timed as the sockets
/// collector's.
fn read_beside_owner_records(
    reader: &mut NamespaceReader,
    range: PortRange,
    keep_port: Option<u16>,
    aggregator: &mut Aggregator,
    collectors: &mut Collectors,
) -> Result<ReadReport, SourceError> {
    let own = namespaces::own_namespace_inode();
    let mut records = aggregator.owner_records();
    let (report, owned) = collectors.time(Collector::Sockets, || {
        reader.read_sockets_beside_owner_records(range, keep_port, aggregator, &mut |owned| {
            if Some(u64::from(owned.netns)) == own {
                records.add(owned);
            }
        })
    })?;
    if let Err(error) = owned {
        collectors.failed(Collector::Owners, error);
    }
    aggregator.take_owner_records(records);
    Ok(report)
}

/// Reads the settings and makes the aggregator of a namespace read.
fn start_namespace(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
    names: Option<&mut (dyn NameSource + 'static)>,
    collectors: &mut Collectors,
) -> Result<(PortRange, Aggregator, OwnerLookup), SourceError> {
    let settings = collectors.time(Collector::Sockets, || reader.read_settings())?;
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
    if let Some(namer) = names.and_then(|names| {
        let inode = namespaces::thread_namespace_inode(reader.procfs_root())?;
        names.namer(inode, namespaces::thread_namespace_cookie().ok())
    }) {
        aggregator.name_connections(namer);
    }
    Ok((settings.range, aggregator, lookup))
}

/// Adds source NAT to a namespace whose sockets were read, where NAT is
/// read.
fn end_namespace(
    reader: &mut NamespaceReader,
    mut aggregator: Aggregator,
    report: ReadReport,
    lookup: OwnerLookup,
    collectors: &mut Collectors,
) -> NamespaceRead {
    if reader.reads_nat() {
        match collectors.time(Collector::Conntrack, || reader.read_nat(&mut aggregator)) {
            Ok(NatRead::Figures { counters }) => aggregator.show_nat(counters),
            Ok(NatRead::Nothing) => {}
            Err(NatError::Unavailable(error)) => collectors.unavailable(
                Collector::Conntrack,
                error,
                "conntrack cannot be read (it needs CAP_NET_ADMIN and nf_conntrack_netlink); no NAT figures",
            ),
            Err(error) => collectors.failed(Collector::Conntrack, error),
        }
    }
    NamespaceRead {
        aggregator,
        report,
        lookup,
        left_to_the_walk: None,
        owners: None,
    }
}
