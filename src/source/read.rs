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

use super::{NamespaceReader, NatError, NatRead, SharedTablesUse, SourceError, namespaces};
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

/// `read_namespace` for `--collector.netns=all`, but where the namespace's
/// TCP sockets (and maybe its UDP ones) are to come from the one walk of
/// the host's tables: then only the rest is read, and its range is
/// returned with whether it may hold sockets bound but neither listening
/// nor connected, and what the walk is to read of it.
pub fn read_namespace_but_shared(
    reader: &mut NamespaceReader,
    limits: &Limits,
    collectors: &mut Collectors,
) -> Result<(NamespaceRead, Option<LeftToTheWalk>), SourceError> {
    let (range, mut aggregator, naming) = start_namespace(reader, limits, None, collectors)?;
    let using = reader.on_shared_tables();
    if !using.tcp {
        let report = collectors.time(Collector::Sockets, || {
            reader.read_sockets(range, None, &mut aggregator)
        })?;
        return Ok((
            end_namespace(reader, aggregator, report, naming, collectors),
            None,
        ));
    }
    let report = collectors.time(Collector::Sockets, || {
        reader.read_sockets_but_shared(range, using, &mut aggregator)
    })?;
    let may_hold = reader.may_hold_bound_inactive();
    Ok((
        end_namespace(reader, aggregator, report, naming, collectors),
        Some(LeftToTheWalk {
            range,
            may_hold_bound_inactive: may_hold,
            using,
        }),
    ))
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
/// sockets, streamed into an `Aggregator` with `limits`. With `keep_port`,
/// the sockets on that port are kept whole too (`inspect PORT`). Owners are
/// found afterwards, with `resolve_owners`.
pub fn read_namespace(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
    collectors: &mut Collectors,
) -> Result<NamespaceRead, SourceError> {
    let (range, mut aggregator, naming) = start_namespace(reader, limits, keep_port, collectors)?;
    let report = collectors.time(Collector::Sockets, || {
        reader.read_sockets(range, keep_port, &mut aggregator)
    })?;
    Ok(end_namespace(
        reader, aggregator, report, naming, collectors,
    ))
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
    collectors: &mut Collectors,
) -> Result<(NamespaceRead, SocketOwners), SourceError> {
    let (range, mut aggregator, naming) = start_namespace(reader, limits, keep_port, collectors)?;
    let own = namespaces::own_namespace_inode();
    if naming.lookup != OwnerLookup::Records {
        let report = collectors.time(Collector::Sockets, || {
            reader.read_sockets(range, keep_port, &mut aggregator)
        })?;
        let mut read = end_namespace(reader, aggregator, report, naming, collectors);
        let owners = resolve_owners(reader, &mut [(own, &mut read)], collectors);
        return Ok((read, owners));
    }
    // Both passes at once: their time is the sockets collector's.
    let mut records = aggregator.owner_records();
    let (report, owned) = collectors.time(Collector::Sockets, || {
        reader.read_sockets_beside_owner_records(range, keep_port, &mut aggregator, &mut |owned| {
            if Some(u64::from(owned.netns)) == own {
                records.add(owned);
            }
        })
    })?;
    if let Err(error) = owned {
        collectors.failed(Collector::Owners, error);
    }
    aggregator.take_owner_records(records);
    Ok((
        end_namespace(reader, aggregator, report, naming, collectors),
        SocketOwners::default(),
    ))
}

/// How a namespace's read names the processes of its sockets.
#[derive(Debug, Clone, Copy)]
struct Naming {
    /// How owners are found.
    lookup: OwnerLookup,
}

/// Reads the settings and makes the aggregator of a namespace read.
fn start_namespace(
    reader: &mut NamespaceReader,
    limits: &Limits,
    keep_port: Option<u16>,
    collectors: &mut Collectors,
) -> Result<(PortRange, Aggregator, Naming), SourceError> {
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
    if let Some(names) = reader.take_connection_names() {
        aggregator.name_connections(names);
    }
    Ok((settings.range, aggregator, Naming { lookup }))
}

/// Adds source NAT to a namespace whose sockets were read, where NAT is
/// read.
fn end_namespace(
    reader: &mut NamespaceReader,
    mut aggregator: Aggregator,
    report: ReadReport,
    naming: Naming,
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
        lookup: naming.lookup,
    }
}
