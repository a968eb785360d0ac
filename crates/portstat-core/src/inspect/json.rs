//! The shape of `inspect --json`: one object, its fields in the order
//! written here, serialized by serde.

use serde::Serialize;
use serde::ser::SerializeMap;

use super::PortHolder;
use crate::aggregate::nat::NatFigures;
use crate::aggregate::processes::{Pids, ProcessUsage};
use crate::aggregate::{ExclusiveReason, Snapshot};
use crate::metrics::failures;
use crate::model::{NamespaceFailures, Protocol};

/// Pairs written as a JSON object, keys in their order.
struct Ordered<T>(Vec<(&'static str, T)>);

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
pub(super) struct Report<'a> {
    range: Range,
    reserved: u32,
    capacity: u32,
    protocols: Vec<Occupancy>,
    exclusive: u32,
    exclusive_by_reason: Ordered<u32>,
    new_destination_headroom: u32,
    headroom_exact: bool,
    headroom_slack: u32,
    time_wait_reusable: u64,
    destination_count: u64,
    destination_max_used_ratio: f64,
    destinations: Vec<Destination>,
    processes: Vec<Process<'a>>,
    bind_before_connect_processes: Vec<Process<'a>>,
    listeners: Vec<Listener<'a>>,
    listeners_omitted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<Failures<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nat: Option<Nat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<Port<'a>>,
}

impl<'a> Report<'a> {
    pub(super) fn of(snapshot: &'a Snapshot, port: Option<(u16, &'a [PortHolder])>) -> Report<'a> {
        Report {
            range: Range {
                start: snapshot.range.start,
                end: snapshot.range.end,
            },
            reserved: snapshot.reserved_in_range,
            capacity: snapshot.capacity,
            protocols: snapshot
                .occupancy
                .iter()
                .map(|occupancy| Occupancy {
                    protocol: occupancy.protocol.label(),
                    used: occupancy.ports_used,
                    used_ratio: occupancy.used_ratio,
                    sockets: Ordered(
                        occupancy
                            .sockets_by_state
                            .iter()
                            .map(|(state, count)| (state.label(), *count))
                            .collect(),
                    ),
                })
                .collect(),
            exclusive: snapshot.exclusive.total(),
            exclusive_by_reason: Ordered(
                ExclusiveReason::ALL
                    .iter()
                    .map(|&reason| (reason.label(), snapshot.exclusive.get(reason)))
                    .collect(),
            ),
            new_destination_headroom: snapshot.new_destination_headroom,
            headroom_exact: snapshot.headroom_exact(),
            headroom_slack: snapshot.headroom_slack,
            time_wait_reusable: snapshot.time_wait_reusable,
            destination_count: snapshot.destination_count,
            destination_max_used_ratio: snapshot.destination_max_used_ratio,
            destinations: snapshot
                .destinations
                .iter()
                .map(|usage| Destination {
                    local_address: usage.destination.local_address.to_string(),
                    remote_address: usage.destination.remote_address.to_string(),
                    remote_port: usage.destination.remote_port,
                    used: usage.ports_used,
                    headroom: usage.headroom,
                })
                .collect(),
            processes: snapshot.processes.iter().map(Process::of).collect(),
            bind_before_connect_processes: snapshot
                .bind_before_connect_processes
                .iter()
                .map(Process::of)
                .collect(),
            listeners: snapshot
                .listeners
                .iter()
                .map(|listener| Listener {
                    protocol: listener.protocol.label(),
                    address: listener.address_label(),
                    port: listener.port,
                    process: &listener.process,
                    pids: &listener.pids.lowest,
                    process_count: listener.pids.count,
                    sockets: listener.sockets,
                    in_ephemeral_range: listener.in_ephemeral_range,
                })
                .collect(),
            listeners_omitted: snapshot.listeners_omitted,
            failures: snapshot.failures.as_ref().map(Failures::of),
            nat: snapshot.nat.as_ref().map(Nat::of),
            port: port.map(|(port, holders)| Port {
                port,
                sockets: holders
                    .iter()
                    .map(|holder| Socket {
                        protocol: holder.protocol,
                        state: holder.state,
                        local: &holder.local,
                        remote: &holder.remote,
                        process: &holder.process,
                        pid: holder.pid,
                        process_exited: holder.exited,
                    })
                    .collect(),
            }),
        }
    }
}

#[derive(Serialize)]
struct Range {
    start: u16,
    end: u16,
}

#[derive(Serialize)]
struct Occupancy {
    protocol: &'static str,
    used: u32,
    used_ratio: f64,
    sockets: Ordered<u64>,
}

#[derive(Serialize)]
struct Destination {
    local_address: String,
    remote_address: String,
    remote_port: u16,
    used: u32,
    headroom: u32,
}

#[derive(Serialize)]
struct Process<'a> {
    process: &'a str,
    pids: &'a [u32],
    /// Those of `pids` whose process has exited.
    exited_pids: &'a [u32],
    process_count: u32,
    ports: u32,
}

impl<'a> Process<'a> {
    fn of(usage: &'a ProcessUsage) -> Process<'a> {
        let Pids {
            lowest,
            count,
            exited,
        } = &usage.pids;
        Process {
            process: &usage.process,
            pids: lowest,
            exited_pids: exited,
            process_count: *count,
            ports: usage.ports_used,
        }
    }
}

#[derive(Serialize)]
struct Listener<'a> {
    protocol: &'static str,
    address: String,
    port: u16,
    process: &'a str,
    pids: &'a [u32],
    process_count: u32,
    sockets: u64,
    in_ephemeral_range: bool,
}

#[derive(Serialize)]
struct Failures<'a> {
    totals: Vec<FailureTotal>,
    destinations: Vec<FailedDestination>,
    processes: Vec<FailedProcess<'a>>,
}

impl<'a> Failures<'a> {
    fn of(figures: &'a NamespaceFailures) -> Failures<'a> {
        Failures {
            totals: figures
                .totals
                .iter()
                .map(|((kind, protocol), count)| FailureTotal {
                    call: kind.call().trim_end_matches("()"),
                    protocol: protocol.label(),
                    failed: *count,
                })
                .collect(),
            destinations: failures::most(
                &failures::by_destination(&figures.by_destination_and_process),
                usize::MAX,
            )
            .into_iter()
            .map(|((protocol, destination), count)| FailedDestination {
                protocol: protocol.label(),
                local_address: destination.local_address.to_string(),
                remote_address: destination.remote_address.to_string(),
                remote_port: destination.remote_port,
                failed: count,
            })
            .collect(),
            processes: failures::most(
                &failures::by_process(&figures.by_destination_and_process),
                usize::MAX,
            )
            .into_iter()
            .map(|((kind, protocol, process), count)| {
                let pids = failures::failing_pids(figures, kind, protocol, process);
                FailedProcess {
                    process,
                    pid: pids.first(),
                    other_pids: pids.others,
                    pids: pids.pids,
                    call: kind.call().trim_end_matches("()"),
                    protocol: protocol.label(),
                    failed: count,
                }
            })
            .collect(),
        }
    }
}

#[derive(Serialize)]
struct FailureTotal {
    call: &'static str,
    protocol: &'static str,
    failed: u64,
}

#[derive(Serialize)]
struct FailedDestination {
    protocol: &'static str,
    local_address: String,
    remote_address: String,
    remote_port: u16,
    failed: u64,
}

#[derive(Serialize)]
struct FailedProcess<'a> {
    process: &'a str,
    /// The last caller of its busiest destination, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// The last caller of each of its destinations.
    pids: Vec<u32>,
    /// Whether other processes of the name failed too, whose pids the
    /// kernel did not keep.
    other_pids: bool,
    call: &'static str,
    protocol: &'static str,
    failed: u64,
}

#[derive(Serialize)]
struct Nat {
    capacity: u32,
    tcp: NatProtocol,
    udp: NatProtocol,
    destinations: Vec<NatDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conntrack: Option<Conntrack>,
}

impl Nat {
    fn of(nat: &NatFigures) -> Nat {
        let protocol = |protocol| NatProtocol {
            max_used_ratio: nat.max_used_ratio(protocol),
            destination_count: nat.pairs(protocol),
        };
        Nat {
            capacity: nat.capacity,
            tcp: protocol(Protocol::Tcp),
            udp: protocol(Protocol::Udp),
            destinations: nat
                .destinations
                .iter()
                .map(|usage| NatDestination {
                    protocol: usage.destination.protocol.label(),
                    nat_address: usage.destination.nat_address.to_string(),
                    remote_address: usage.destination.remote.ip().to_string(),
                    remote_port: usage.destination.remote.port(),
                    used: usage.ports_used,
                })
                .collect(),
            conntrack: nat.counters.as_ref().map(|counters| Conntrack {
                entries: counters.entries,
                limit: counters.limit,
                insert_failed: counters.insert_failed,
                drop: counters.drop,
            }),
        }
    }
}

#[derive(Serialize)]
struct NatProtocol {
    max_used_ratio: f64,
    destination_count: u64,
}

#[derive(Serialize)]
struct NatDestination {
    protocol: &'static str,
    nat_address: String,
    remote_address: String,
    remote_port: u16,
    used: u32,
}

#[derive(Serialize)]
struct Conntrack {
    entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    insert_failed: u64,
    drop: u64,
}

#[derive(Serialize)]
struct Port<'a> {
    port: u16,
    sockets: Vec<Socket<'a>>,
}

#[derive(Serialize)]
struct Socket<'a> {
    protocol: &'static str,
    state: &'static str,
    local: &'a str,
    remote: &'a str,
    process: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    process_exited: bool,
}
