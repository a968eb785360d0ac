//! One namespace's read: its settings, then each collector that reads
//! inside a namespace in turn, the sockets streamed into an `Aggregator`,
//! then source NAT; with `SocketsRead::WithOwners`, its sockets' owners
//! too. Each read is timed and its failures noted for its collector
//! (`Collectors::read_namespace`). The sampler reads the namespaces it
//! samples with this, and `inspect` and `--once` the exporter's own; `all`
//! reads every namespace with it and `walk`.

use portstat_core::aggregate::{Aggregator, Limits};
use portstat_core::model::{OwnerLookup, PortRange};
use portstat_core::status::Collector;

use super::Collectors;
use super::namespace_read::InNamespace;
pub use super::namespace_read::{LeftToTheWalk, NamespaceRead, SocketsRead};
use super::reader::NamespaceReader;
use crate::source::{NameSource, SourceError, namespaces};

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

/// Reads the namespace the calling thread is in: its settings, then its
/// sockets, streamed into an `Aggregator` as `reading` says, then its
/// source NAT where NAT is read; each collector's read inside the
/// namespace runs through `Collectors::read_namespace`.
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
    let mut namespace = InNamespace {
        aggregator: &mut aggregator,
        range,
        keep_port,
        sockets,
        owner_lookup: lookup,
        report: None,
        left_to_the_walk: None,
    };
    if sockets == SocketsRead::WithOwners && lookup == OwnerLookup::Records {
        reader
            .owners
            .read_beside_sockets(&mut reader.sockets, &mut namespace, collectors)?;
    } else {
        collectors.read_namespace(&mut reader.sockets, &mut namespace)?;
    }
    for collector in &mut reader.after_sockets {
        collectors.read_namespace(collector.as_mut(), &mut namespace)?;
    }
    let InNamespace {
        report,
        left_to_the_walk,
        ..
    } = namespace;
    // The sockets collector, which ran without failing, gave it.
    let report = report.ok_or_else(|| SourceError::Malformed {
        path: reader.procfs_root().to_path_buf(),
        reason: "the sockets were read without a report".to_string(),
    })?;
    let mut read = NamespaceRead {
        aggregator,
        report,
        lookup,
        left_to_the_walk,
        owners: None,
    };
    if sockets == SocketsRead::WithOwners && lookup != OwnerLookup::Records {
        let own = namespaces::own_namespace_inode();
        read.owners = Some(reader.resolve_owners(&mut [(own, &mut read)], collectors));
    }
    Ok(read)
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
