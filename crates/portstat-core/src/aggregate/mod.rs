//! Turns what the kernel reported into the figures the exporter publishes.
//!
//! Pure: socket records, the range and the reserved ports in, a `Snapshot`
//! out. Every metric's meaning is decided here; the README's metric table
//! states the same definitions for users.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

pub mod failures;
mod figures;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod listeners;
pub mod nat;
mod owners;
pub mod processes;
mod snapshot;
#[cfg(test)]
mod tests;

pub use owners::OwnerRecords;
pub use snapshot::{
    DestinationUsage, ExclusivePorts, Finishing, Limits, ProtocolOccupancy, Snapshot,
};

pub use crate::model::OwnerLookup;
use crate::model::{
    Connection, ConnectionNamer, ConnectionNames, Connector, ConntrackCounters, INODE_NOT_READ,
    NamespaceFailures, NamespaceIdentity, NamespaceSample, NatEntry, NatSink, OwnedSocket,
    PerProtocol, PortList, PortRange, PortSet, Protocol, ReadReport, ReservedPorts, SocketOwners,
    SocketRecord, SocketSink, SocketState, SourceKind, TcpState, TimeWaitReuse, UdpState,
    comm_label, process_label,
};
use listeners::{Listener, ListenerGroups, is_listener};
use nat::{NatFigures, NatTable};
use processes::{Holders, ProcessUsage};

pub use crate::model::{NO_PROCESS, UNKNOWN_PROCESS};
pub use crate::rules::{Destination, ExclusiveReason};
use crate::rules::{
    connect_destination, exclusive_reason, inet_hash_connect_scan, port_hold_ms, tcp_twsk_unique,
};

/// Computes the figures of a namespace sample held whole in memory: its
/// sockets streamed through an `Aggregator`.
pub fn aggregate(sample: &NamespaceSample, limits: &Limits) -> Snapshot {
    let mut aggregator = Aggregator::new(
        sample.range,
        sample.reserved.clone(),
        sample.time_wait_reuse,
        *limits,
    );
    for socket in &sample.sockets {
        aggregator.add(socket);
    }
    aggregator.finish(&sample.owners, &sample.report)
}

/// Computes the figures of one namespace from its sockets, taken one at a
/// time as a source reads them.
///
/// What it keeps follows the range, the destinations, the listeners and
/// the processes, not the sockets: bitmaps over the ports, a compact port
/// list per destination, the listening sockets, and, while processes are
/// counted, 16 bytes per socket on a port of the range that a file holds,
/// until its owner is known; and the names of the connections the kernel
/// recorded, at most its map's size.
pub struct Aggregator {
    range: PortRange,
    reserved: ReservedPorts,
    time_wait_reuse: TimeWaitReuse,
    limits: Limits,
    /// The port whose sockets are kept whole (`inspect PORT`).
    keep_port: Option<u16>,
    tallies: PerProtocol<ProtocolTally>,
    /// How owners are learnt.
    lookup: OwnerLookup,
    /// Owners learnt from records (`OwnerLookup::Records`).
    records: OwnerRecords,
    /// Source-NAT'd conntrack entries, made at the first.
    nat: Option<NatTable>,
    /// Whether NAT figures are written, with the table's counters.
    nat_shown: Option<Option<ConntrackCounters>>,
    /// Who closed the connections of the sockets no process holds
    /// (`name_connections`).
    names: Option<Box<dyn ConnectionNamer>>,
    /// Who connected the kept sockets that no process holds.
    kept_names: ConnectionNames,
}

/// What the sockets of one protocol have added up to so far.
#[derive(Default)]
struct ProtocolTally {
    scanned: u64,
    /// Distinct ephemeral ports held.
    used: PortSet,
    /// Sockets inside the range by state (TCP or UDP state numbering).
    states: [u64; TcpState::ALL.len() + 1],
    /// Listening sockets, grouped once their owners are known.
    listeners: Vec<SocketRecord>,
    /// Sockets on ephemeral ports that a file holds, until their owners
    /// are known; only while processes are counted.
    held: Vec<HeldPort>,
    /// Ephemeral ports of sockets no file holds (TIME_WAIT, orphans).
    unheld: PortSet,
    /// TCP: exclusive ports, in `ExclusiveReason::ALL` order, before a port
    /// is counted under its first reason only.
    exclusive: [PortSet; 3],
    /// TCP: ports bound before `connect()` held by sockets no file holds.
    unheld_bind_first: PortSet,
    /// TCP: ports of sockets no file holds, named after the process that
    /// connected them, by its tgid, with its `comm`.
    named: HashMap<u32, ([u8; 16], PortList)>,
    /// TCP: the ports each destination uses, exclusive ones included.
    destinations: HashMap<Destination, PortList>,
    /// TCP: TIME_WAIT sockets `connect()` may take over now, by port
    /// (index from the range's start); sized at the first one.
    reusable_by_port: Vec<u32>,
    /// Sockets on the kept port.
    kept: Vec<SocketRecord>,
    /// With `OwnerLookup::Records`: sockets a file holds on each port of
    /// the range (index from the range's start); sized at the first one.
    held_by_port: Vec<u32>,
}

/// A socket on an ephemeral port that a file holds, waiting for its owner.
#[derive(Debug, Clone, Copy)]
struct HeldPort {
    inode: u64,
    port: u16,
}

impl Aggregator {
    /// An aggregator for a namespace whose range, reserved ports and
    /// TIME_WAIT reuse settings are these.
    pub fn new(
        range: PortRange,
        reserved: ReservedPorts,
        time_wait_reuse: TimeWaitReuse,
        limits: Limits,
    ) -> Aggregator {
        Aggregator {
            records: OwnerRecords::new(range, reserved.clone(), &limits),
            range,
            reserved,
            time_wait_reuse,
            limits,
            keep_port: None,
            tallies: Default::default(),
            lookup: OwnerLookup::ByInode,
            nat: None,
            nat_shown: None,
            names: None,
            kept_names: ConnectionNames::new(),
        }
    }

    /// Names the TCP sockets of the range that no process holds
    /// (TIME_WAIT, orphans) after the process that closed them, where
    /// `names` knows their connection: each such socket is asked for once
    /// as it is read. Set before the first socket.
    pub fn name_connections(&mut self, names: Box<dyn ConnectionNamer>) {
        self.names = Some(names);
    }

    /// Writes NAT figures, with the conntrack table's `counters` where
    /// readable: the source found conntrack, and source NAT in this
    /// namespace now or before. Without this call, none are written.
    pub fn show_nat(&mut self, counters: Option<ConntrackCounters>) {
        self.nat_shown = Some(counters);
    }

    /// Learns owners as `lookup` says; `OwnerLookup::ByInode` unless set.
    /// Set before the first socket.
    pub fn set_owner_lookup(&mut self, lookup: OwnerLookup) {
        self.lookup = lookup;
    }

    /// Takes the record of one socket a process holds
    /// (`OwnerLookup::Records`); records of sockets outside this namespace
    /// are for the caller to leave out.
    pub fn add_owner(&mut self, owned: &OwnedSocket) {
        self.records.add(owned);
    }

    /// Empty owner records for this namespace, to be filled apart from the
    /// aggregator (on another thread, while it takes the sockets) and
    /// handed back with `take_owner_records`.
    pub fn owner_records(&self) -> OwnerRecords {
        OwnerRecords::new(self.range, self.reserved.clone(), &self.limits)
    }

    /// Takes the owner records filled apart, in place of any added here.
    pub fn take_owner_records(&mut self, records: OwnerRecords) {
        self.records = records;
    }

    /// Keeps every socket on `port` whole, for `kept_sockets`.
    pub fn keep_sockets_on(&mut self, port: u16) {
        self.keep_port = Some(port);
    }

    /// The port whose sockets are kept whole, if any.
    pub fn kept_port(&self) -> Option<u16> {
        self.keep_port
    }

    fn is_ephemeral(&self, port: u16) -> bool {
        self.range.contains(port) && !self.reserved.contains(port)
    }

    /// The inodes of the sockets whose owning process the figures name (the
    /// listeners', and while processes are counted every socket holding an
    /// ephemeral port), with those of the kept sockets: sorted, once each.
    pub fn wanted_owners(&self) -> Vec<u64> {
        let mut inodes: Vec<u64> = self
            .tallies
            .iter()
            .flat_map(|tally| {
                tally
                    .listeners
                    .iter()
                    .chain(&tally.kept)
                    .map(|socket| socket.inode)
                    .chain(tally.held.iter().map(|held| held.inode))
            })
            .filter(|&inode| inode != 0)
            .collect();
        inodes.sort_unstable();
        inodes.dedup();
        inodes
    }

    /// The owners of the listeners and kept sockets that owner records
    /// named (`OwnerLookup::Records`).
    pub fn named_owners(&self) -> SocketOwners {
        let wanted: HashSet<u64> = self
            .tallies
            .iter()
            .flat_map(|tally| tally.listeners.iter().chain(&tally.kept))
            .map(|socket| socket.inode)
            .filter(|&inode| inode != 0)
            .collect();
        self.records.owners_of(&wanted)
    }

    /// Who connected the sockets on the kept port that no process holds,
    /// where the kernel named them.
    pub fn kept_connection_names(&self) -> &ConnectionNames {
        &self.kept_names
    }

    /// The sockets on the kept port, TCP first.
    pub fn kept_sockets(&self) -> impl Iterator<Item = &SocketRecord> {
        self.tallies.iter().flat_map(|tally| &tally.kept)
    }

    /// Computes the figures, naming processes with `owners` and link-local
    /// interfaces with the report's: `finish_with` of nothing more.
    pub fn finish(self, owners: &SocketOwners, report: &ReadReport) -> Snapshot {
        self.finish_with(report, Finishing::named_by(owners))
    }

    /// Computes the figures, with link-local interfaces named from the
    /// report and everything else `finishing` gives: the snapshot is whole
    /// when it is returned, and nothing changes it afterwards.
    pub fn finish_with(self, report: &ReadReport, finishing: Finishing<'_>) -> Snapshot {
        let mut snapshot = self.figures(finishing.owners, report);
        snapshot.namespace = finishing.namespace;
        if let Some(runs_as) = finishing.runs_as {
            processes::mark_exited(&mut snapshot.processes, runs_as);
            processes::mark_exited(&mut snapshot.bind_before_connect_processes, runs_as);
        }
        if let Some(failures) = finishing.failures {
            snapshot.failures = failures(&snapshot);
        }
        snapshot
    }
}

impl NatSink for Aggregator {
    fn add_nat(&mut self, entry: &NatEntry) {
        let ports = self.limits.nat_ports;
        self.nat
            .get_or_insert_with(|| NatTable::new(ports))
            .add(entry);
    }

    fn restart_nat(&mut self) {
        if let Some(table) = &mut self.nat {
            table.clear();
        }
    }
}

impl SocketSink for Aggregator {
    fn add(&mut self, socket: &SocketRecord) {
        let protocol = socket.state.protocol();
        let port = socket.local.port();
        let ephemeral = self.is_ephemeral(port);
        let in_range = self.range.contains(port);
        let listener = is_listener(socket, &|port| self.is_ephemeral(port));
        let count_processes = self.limits.processes_top > 0;
        let keep = self.keep_port == Some(port);
        let reusable = tcp_twsk_unique(socket, &self.time_wait_reuse);
        let range_start = self.range.start;
        let range_length = self.range.port_count() as usize;
        let tally = &mut self.tallies[protocol];
        tally.scanned += 1;
        if in_range {
            match socket.state {
                SocketState::Tcp(state) => tally.states[state as usize] += 1,
                SocketState::Udp(state) => tally.states[state as usize] += 1,
            }
        }
        if listener {
            tally.listeners.push(*socket);
        }
        if keep {
            tally.kept.push(*socket);
        }
        if !ephemeral {
            return;
        }
        tally.used.insert(port);
        let reason = exclusive_reason(socket);
        if let Some(reason) = reason {
            tally.exclusive[reason as usize].insert(port);
        }
        let bind_first = reason == Some(ExclusiveReason::BindBeforeConnect);
        let connector = name_of(&mut self.names, socket);
        if let (true, 0, Some(connector)) = (keep, socket.inode, connector) {
            self.kept_names
                .insert(Connection::between(socket.local, socket.remote), connector);
        }
        if count_processes {
            if let (0, Some(connector)) = (socket.inode, connector) {
                tally
                    .named
                    .entry(connector.tgid)
                    .or_insert_with(|| (connector.comm, PortList::default()))
                    .1
                    .insert(port);
            } else if socket.inode == 0 {
                tally.unheld.insert(port);
                if bind_first {
                    tally.unheld_bind_first.insert(port);
                }
            } else if self.lookup == OwnerLookup::Records {
                if tally.held_by_port.is_empty() {
                    tally.held_by_port = vec![0; range_length];
                }
                tally.held_by_port[usize::from(port - range_start)] += 1;
            } else {
                tally.held.push(HeldPort {
                    inode: socket.inode,
                    port,
                });
            }
        }
        // Destinations: TCP sockets connected somewhere. Those on exclusive
        // ports are left out when the figures are computed, once every
        // exclusive port is known.
        let SocketState::Tcp(state) = socket.state else {
            return;
        };
        if matches!(
            state,
            TcpState::Listen | TcpState::Close | TcpState::BoundInactive
        ) {
            return;
        }
        if reusable {
            if tally.reusable_by_port.is_empty() {
                tally.reusable_by_port = vec![0; range_length];
            }
            tally.reusable_by_port[usize::from(port - range_start)] += 1;
            return;
        }
        tally
            .destinations
            .entry(connect_destination(socket))
            .or_default()
            .insert(port);
    }

    fn restart(&mut self, protocol: Protocol) {
        self.tallies[protocol] = ProtocolTally::default();
        // The sockets read again are named again.
        if protocol == Protocol::Tcp {
            self.kept_names.clear();
        }
    }
}

/// Who closed the connection of `socket`, a TCP socket no process holds
/// in a state its close leads to, where `names` knows it; `None` for any
/// other socket, which its owner names, or nobody. The kernel names a
/// connection as its process closes it, so no other state has a name:
/// asking only for these spares a look-up for every other socket.
fn name_of(
    names: &mut Option<Box<dyn ConnectionNamer>>,
    socket: &SocketRecord,
) -> Option<Connector> {
    let closed = matches!(
        socket.state,
        SocketState::Tcp(
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::TimeWait
                | TcpState::Closing
                | TcpState::LastAck
                | TcpState::Close
        )
    );
    if !closed || socket.inode != 0 {
        return None;
    }
    names.as_mut()?.name(socket.local, socket.remote)
}

/// The interface of a socket bound to a link-local IPv6 address, by name
/// where the namespace named it, else by index; `None` for any other.
fn link_local_scope(interfaces: &BTreeMap<u32, String>, socket: &SocketRecord) -> Option<String> {
    match socket.local.ip() {
        IpAddr::V6(address) if address.is_unicast_link_local() && socket.interface != 0 => Some(
            interfaces
                .get(&socket.interface)
                .cloned()
                .unwrap_or_else(|| socket.interface.to_string()),
        ),
        _ => None,
    }
}
