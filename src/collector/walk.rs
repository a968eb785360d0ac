//! The one walk: with `--collector.netns=all`, the TCP sockets of every
//! namespace on the host's shared TCP tables (and the UDP sockets of those
//! on its UDP table) come from one walk of the tables by the BPF iterator,
//! rather than one dump per namespace, each a walk of every namespace's
//! sockets. Each namespace's read (`read::read_namespace_but_shared`) left
//! those to the walk; `read_shared_tables` makes it and finishes their
//! reports, or reads each namespace on its own where the walk cannot serve.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use portstat_core::model::{
    NamespaceIdentity, PerProtocol, PortRange, Protocol, SocketSink, SourceKind,
};
use portstat_core::status::Collector;

use super::Collectors;
use super::NamespaceReader;
use super::read::NamespaceRead;
use crate::source::bpf::shared::{SharedNamespace, WalkOutcome};
use crate::source::{SourceError, namespaces};

/// A namespace whose TCP sockets come from the one walk of the host's
/// tables.
pub struct OnSharedTables {
    /// Its read, in the sample's reads.
    pub index: usize,
    /// How to enter it.
    pub handle: PathBuf,
    /// Whether it is the exporter's own, which needs no entering.
    pub own: bool,
    /// Its ephemeral range.
    pub range: PortRange,
    /// Whether its counts allow sockets bound but neither listening nor
    /// connected.
    pub may_hold_bound_inactive: bool,
    /// Whether its UDP sockets are to come from the walk too.
    pub udp: bool,
    /// Whether it is on the host's UDP table, which the walk can then read
    /// from inside it.
    pub host_udp_table: bool,
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

/// What the walk did.
struct Walked {
    /// Its outcome, or why it could not run.
    outcome: Result<WalkOutcome, SourceError>,
    /// Whether it read UDP too.
    udp: bool,
    /// The interfaces that link-local sockets named, by read.
    link_local: BTreeMap<usize, BTreeSet<u32>>,
}

/// Reads the TCP sockets of the namespaces `on_shared` of `samples` in
/// one walk of the host's tables, and the UDP sockets of those that left
/// them to the walk. The walk runs from the exporter's own namespace where
/// it is one of them, else from inside the first that can still be
/// entered; one on the host's UDP table first where UDP is to be read.
/// Where the walk fails or is incomplete, each namespace is read on its own
/// instead, as without it; so is the UDP of namespaces the walk could not
/// read it for. Returns the namespaces that could not be read either way,
/// by index in `samples`, in order, with why (`None`: gone since their
/// settings were read). The time is the sockets collector's.
pub fn read_shared_tables(
    reader: &mut NamespaceReader,
    samples: &mut [(NamespaceIdentity, NamespaceRead)],
    on_shared: &[OnSharedTables],
    collectors: &mut Collectors,
) -> Vec<(usize, Option<SourceError>)> {
    collectors.time(Collector::Sockets, || {
        let bound_inactive = on_shared
            .iter()
            .any(|shared| shared.may_hold_bound_inactive);
        let walked = walk(reader, samples, on_shared, bound_inactive);
        let whole = match &walked.outcome {
            Ok(walk) => walk.complete && (!bound_inactive || walk.bound_inactive_walked),
            Err(_) => false,
        };
        let apart = if whole {
            finish_walked(samples, on_shared, walked)
        } else {
            restart_unwalked(samples, on_shared, walked.outcome)
        };
        read_apart(reader, samples, apart)
    })
}

/// Walks the tables from the best namespace to walk from: one on the
/// host's UDP table too (where UDP is to be read), the exporter's own
/// first; each socket goes to its namespace's aggregator.
fn walk(
    reader: &mut NamespaceReader,
    samples: &mut [(NamespaceIdentity, NamespaceRead)],
    on_shared: &[OnSharedTables],
    bound_inactive: bool,
) -> Walked {
    // The kernel numbers namespaces with 32 bits (`ns_common.inum`), as the
    // walk reports them: a namespace whose inode does not fit could not be
    // told apart, and the namespaces are then read each on its own.
    let inodes: Option<Vec<u32>> = on_shared
        .iter()
        .map(|shared| u32::try_from(samples[shared.index].0.inode).ok())
        .collect();
    let Some(inodes) = inodes else {
        return Walked {
            outcome: Err(SourceError::NoNamespace {
                reason: "a namespace's inode does not fit the walk's 32 bits".into(),
            }),
            udp: false,
            link_local: BTreeMap::new(),
        };
    };
    let any_udp = on_shared.iter().any(|shared| shared.udp);
    let rank = |shared: &OnSharedTables| (!(any_udp && shared.host_udp_table), !shared.own);
    let mut order: Vec<&OnSharedTables> = on_shared.iter().collect();
    order.sort_by_key(|shared| rank(shared));
    let mut from = Err(SourceError::NoNamespace {
        reason: "every namespace on the host's TCP tables is gone".into(),
    });
    let mut udp = false;
    for shared in order {
        from = enter_unless_own(shared);
        if from.is_ok() {
            udp = any_udp && shared.host_udp_table;
            break;
        }
    }
    let list: Vec<SharedNamespace> = on_shared
        .iter()
        .zip(&inodes)
        .map(|(shared, &inode)| SharedNamespace {
            inode,
            range: shared.range,
            udp: shared.udp && udp,
        })
        .collect();
    let by_namespace: HashMap<u32, usize> = on_shared
        .iter()
        .zip(&inodes)
        .map(|(shared, &inode)| (inode, shared.index))
        .collect();
    // Link-local sockets name an interface of their namespace by index.
    let mut link_local: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    let outcome = from.and_then(|inside| {
        let lookup = reader.owner_lookup();
        let outcome = reader.sockets.read_shared_tables(
            &list,
            udp,
            bound_inactive,
            lookup,
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
        reader.leave_namespace();
        drop(inside);
        outcome
    });
    Walked {
        outcome,
        udp,
        link_local,
    }
}

/// After a whole walk: finishes the reports of the namespaces walked, and
/// returns those whose UDP is still to be read on their own.
fn finish_walked<'a>(
    samples: &mut [(NamespaceIdentity, NamespaceRead)],
    on_shared: &'a [OnSharedTables],
    walked: Walked,
) -> Vec<(&'a OnSharedTables, PerProtocol<bool>)> {
    let mut apart = Vec::new();
    for shared in on_shared {
        let report = &mut samples[shared.index].1.report;
        // Walked for, or none can exist.
        report.bound_inactive_seen = true;
        report.one_walk = true;
        if shared.udp && walked.udp {
            report.sources.udp = SourceKind::Bpf;
        } else if shared.udp {
            apart.push((
                shared,
                PerProtocol {
                    tcp: false,
                    udp: true,
                },
            ));
        }
    }
    for (index, indexes) in walked.link_local {
        let Some(shared) = on_shared.iter().find(|shared| shared.index == index) else {
            continue;
        };
        if let Ok(inside) = enter_unless_own(shared) {
            let names = crate::source::interface_names(&indexes);
            drop(inside);
            samples[index].1.report.interfaces.extend(names);
        }
    }
    apart
}

/// After a walk that failed or was incomplete: forgets what it read, and
/// returns every namespace, to be read on its own.
fn restart_unwalked<'a>(
    samples: &mut [(NamespaceIdentity, NamespaceRead)],
    on_shared: &'a [OnSharedTables],
    outcome: Result<WalkOutcome, SourceError>,
) -> Vec<(&'a OnSharedTables, PerProtocol<bool>)> {
    match outcome {
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
    on_shared
        .iter()
        .map(|shared| {
            let aggregator = &mut samples[shared.index].1.aggregator;
            aggregator.restart(Protocol::Tcp);
            if shared.udp {
                aggregator.restart(Protocol::Udp);
            }
            (
                shared,
                PerProtocol {
                    tcp: true,
                    udp: shared.udp,
                },
            )
        })
        .collect()
}

/// Reads the protocols each of `apart` still needs inside
/// its namespace; returns the namespaces that could not be read, in order.
fn read_apart(
    reader: &mut NamespaceReader,
    samples: &mut [(NamespaceIdentity, NamespaceRead)],
    apart: Vec<(&OnSharedTables, PerProtocol<bool>)>,
) -> Vec<(usize, Option<SourceError>)> {
    let mut failures = Vec::new();
    for (shared, protocols) in apart {
        let read = &mut samples[shared.index].1;
        let result = enter_unless_own(shared).and_then(|inside| {
            let lookup = reader.owner_lookup();
            let result = reader.read_settings().and_then(|_| {
                reader
                    .sockets
                    .read_protocols(shared.range, protocols, &mut read.aggregator, lookup)
            });
            reader.leave_namespace();
            drop(inside);
            result
        });
        match result {
            Ok(report) => {
                for (protocol, &read_now) in protocols.by_protocol() {
                    if read_now {
                        read.report.sources[protocol] = report.sources[protocol];
                    }
                }
                if protocols.tcp {
                    read.report.bound_inactive_seen = report.bound_inactive_seen;
                }
                read.report.interfaces.extend(report.interfaces);
            }
            // Gone since its settings were read: left out, as a namespace
            // gone before is, not a failure.
            Err(SourceError::Enter { source, .. }) if namespaces::is_gone(&source) => {
                failures.push((shared.index, None));
            }
            Err(error) => failures.push((shared.index, Some(error))),
        }
    }
    failures.sort_by_key(|(index, _)| *index);
    failures
}
