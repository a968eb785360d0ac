//! Turns what the kernel reported into the figures the exporter publishes.
//!
//! Pure: socket records, the range and the reserved ports in, a `Snapshot`
//! out. Every metric's meaning is decided here; the README's metric table
//! states the same definitions for users.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

pub mod failures;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod listeners;
pub mod nat;
pub mod processes;

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

/// Bounds on the families whose size follows the host, not the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Destinations listed by ports used; 0 lists none.
    pub destinations_top: usize,
    /// Processes listed by ports held; 0 lists none.
    pub processes_top: usize,
    /// Listener groups listed; the rest are summed as omitted.
    pub listeners_max: usize,
    /// The ports NAT rules pick from, the capacity of each (NAT address,
    /// destination): `--collector.nat.port-range`.
    pub nat_ports: PortRange,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            destinations_top: 10,
            processes_top: 10,
            listeners_max: 1000,
            nat_ports: nat::DEFAULT_PORTS,
        }
    }
}

/// The figures of one network namespace at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The ephemeral port range.
    pub range: PortRange,
    /// Reserved ports that lie inside the range.
    pub reserved_in_range: u32,
    /// Ports the kernel can hand out automatically: range length minus reserved.
    pub capacity: u32,
    /// Occupancy of each protocol.
    pub occupancy: PerProtocol<ProtocolOccupancy>,
    /// Listening sockets, grouped by protocol, address, port and process:
    /// those inside the range first, at most `Limits::listeners_max` groups.
    pub listeners: Vec<Listener>,
    /// Sockets of the listener groups beyond `Limits::listeners_max`.
    pub listeners_omitted: u64,
    /// Unreserved TCP ports inside the range that no destination can share,
    /// by why.
    pub exclusive: ExclusivePorts,
    /// TCP sockets in TIME_WAIT on unreserved, shared ports inside the range
    /// that `connect()` may take over now.
    pub time_wait_reusable: u64,
    /// How long a port whose connection was closed first stays unusable to
    /// a new `connect()` toward the same destination, in milliseconds:
    /// toward loopback, then toward another destination.
    pub port_hold_ms: [u32; 2],
    /// Processes holding the most ports bound before `connect()`, at most
    /// `Limits::processes_top`, most first; empty unless the TCP source
    /// sees bindings.
    pub bind_before_connect_processes: Vec<ProcessUsage>,
    /// Destinations with the most ports used, at most
    /// `Limits::destinations_top`, most used first.
    pub destinations: Vec<DestinationUsage>,
    /// How many distinct destinations there are.
    pub destination_count: u64,
    /// The most ports any one destination uses, over all destinations.
    pub busiest_destination_ports: u32,
    /// The fewest further `connect()` calls that surely get a port, for a
    /// destination not yet connected to.
    pub new_destination_headroom: u32,
    /// The fewest further `connect()` calls that surely get a port, for the
    /// destination that has fewest, over all destinations (a new one when
    /// there is none).
    pub min_destination_headroom: u32,
    /// How many more `connect()` calls than each headroom says may still
    /// get a port: 1 on a range whose scan leaves out the first or the last
    /// port by a secret offset (`rules::ScanReach`), else 0.
    pub headroom_slack: u32,
    /// (capacity - the fewest headroom any destination has) / capacity: 1
    /// when `connect()` to that destination fails, and on a range with
    /// slack possibly one port before. 1 when the capacity is 0.
    pub destination_max_used_ratio: f64,
    /// Processes holding the most ports, at most `Limits::processes_top`,
    /// most first.
    pub processes: Vec<ProcessUsage>,
    /// Where each protocol's sockets were read from.
    pub sources: PerProtocol<SourceKind>,
    /// Whether every TCP socket bound and neither listening nor connected
    /// was seen: found by the source, or none can exist (`census`).
    pub bound_inactive_seen: bool,
    /// How the owners of sockets were found.
    pub owner_lookup: OwnerLookup,
    /// The namespace, when several are sampled; `None` labels nothing.
    pub namespace: Option<NamespaceIdentity>,
    /// Source NAT from conntrack, where the namespace translates sources.
    pub nat: Option<NatFigures>,
    /// The failures counted in the kernel, where they are counted.
    pub failures: Option<NamespaceFailures>,
}

impl Snapshot {
    /// Whether headroom is exact (within `headroom_slack`): the TCP source
    /// sees which ports were bound before `connect()`, and every socket
    /// bound but idle was seen. Otherwise such ports count as shared or
    /// free, so headroom is an upper bound and the used ratios are lower
    /// bounds.
    pub fn headroom_exact(&self) -> bool {
        self.sources.tcp.sees_bindings() && self.bound_inactive_seen
    }
}

/// What `Aggregator::finish_with` needs besides the sockets: whatever a
/// snapshot holds that the sockets do not tell.
pub struct Finishing<'a> {
    /// The owners of the sockets, by inode, that owner records did not
    /// name.
    pub owners: &'a SocketOwners,
    /// The namespace, when several are sampled.
    pub namespace: Option<NamespaceIdentity>,
    /// Whether process `pid` runs still under the name given: where set,
    /// the processes named after a pid that does not are marked exited
    /// (sockets no process holds are named after who closed them).
    pub runs_as: Option<&'a RunsAs<'a>>,
    /// The failures counted in the kernel in this namespace, which are
    /// weighed against the figures of the rest of the snapshot.
    pub failures: Option<&'a mut FailuresOf<'a>>,
}

/// Whether process `pid` runs still under the name given.
pub type RunsAs<'a> = dyn Fn(u32, &str) -> bool + 'a;

/// A namespace's failures, from the rest of its snapshot.
pub type FailuresOf<'a> = dyn FnMut(&Snapshot) -> Option<NamespaceFailures> + 'a;

impl<'a> Finishing<'a> {
    /// Owners from `owners`, and nothing else.
    pub fn named_by(owners: &'a SocketOwners) -> Finishing<'a> {
        Finishing {
            owners,
            namespace: None,
            runs_as: None,
            failures: None,
        }
    }
}

/// Exclusive ports by reason. A port is counted once, under the first
/// reason of `ExclusiveReason::ALL` that holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExclusivePorts {
    /// Ports, in `ExclusiveReason::ALL` order.
    pub by_reason: [u32; 3],
}

impl ExclusivePorts {
    /// All exclusive ports, whatever the reason.
    pub fn total(&self) -> u32 {
        self.by_reason.iter().sum()
    }

    /// Exclusive ports for one reason.
    pub fn get(&self, reason: ExclusiveReason) -> u32 {
        self.by_reason[reason as usize]
    }
}

/// How many ports of the range connections to one destination use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationUsage {
    /// The destination.
    pub destination: Destination,
    /// Distinct unreserved local ports inside the range its sockets hold.
    pub ports_used: u32,
    /// The fewest further `connect()` calls to it that surely get a port:
    /// the free ports its scan reaches (`rules::ScanReach::connects`).
    pub headroom: u32,
}

/// How much of the range one protocol uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolOccupancy {
    /// The protocol whose port space this is.
    pub protocol: Protocol,
    /// Distinct unreserved ports inside the range held by at least one socket.
    pub ports_used: u32,
    /// `ports_used / capacity`, from 0 to 1; 1 when the capacity is 0.
    pub used_ratio: f64,
    /// Sockets whose local port is inside the range, for every state of the
    /// protocol the source can see, zeros included (`bound_inactive` only
    /// with the netlink source).
    pub sockets_by_state: Vec<(SocketState, u64)>,
    /// Every socket of the protocol that was read, inside the range or not.
    pub sockets_scanned: u64,
}

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

/// Owner records (`OwnerLookup::Records`) added up apart from the sockets,
/// so that they may be read before, after or beside them: ports per
/// process, sockets owned per port, and the owners of the sockets whose
/// records carry inodes.
pub struct OwnerRecords {
    range: PortRange,
    reserved: ReservedPorts,
    /// Whether processes are counted (`Limits::processes_top` above 0).
    count_processes: bool,
    /// Owners of the sockets whose records carry inodes (listeners,
    /// unconnected UDP, the kept port), but for those shared on an
    /// ephemeral port, which are in `shared`: the first record wins, which
    /// is the lowest process id, as records come in process order.
    named: SocketOwners,
    /// Ports of the range each process holds, by `comm`, and the pids of
    /// the processes of that name that hold them.
    ports: Vec<([u8; 16], PerProtocol<PortList>, HashSet<u32>)>,
    /// The process whose records came last: records come a process at a
    /// time, so its pid is noted once, not once a socket.
    last_pid: Option<u32>,
    /// Where each `comm` is in `ports`.
    index: HashMap<[u8; 16], usize>,
    /// The last `comm` seen and where it is: records come a process at a
    /// time, so most need no lookup.
    last: Option<([u8; 16], usize)>,
    /// Sockets referred to more than once, counted once at the end under
    /// their lowest process: by inode, (process, comm, protocol, port).
    shared: HashMap<u64, (u32, [u8; 16], Protocol, u16)>,
    /// Sockets the records found on each port of the range (index from the
    /// range's start); sized at the first one.
    owned_by_port: PerProtocol<Vec<u32>>,
}

impl OwnerRecords {
    /// Empty records for a namespace whose range and reserved ports are
    /// these, counting processes within `limits`.
    pub fn new(range: PortRange, reserved: ReservedPorts, limits: &Limits) -> OwnerRecords {
        OwnerRecords {
            range,
            reserved,
            count_processes: limits.processes_top > 0,
            named: SocketOwners::default(),
            ports: Vec::new(),
            index: HashMap::new(),
            last: None,
            last_pid: None,
            shared: HashMap::new(),
            owned_by_port: Default::default(),
        }
    }

    /// Takes the record of one socket a process holds; records of sockets
    /// outside this namespace are for the caller to leave out.
    pub fn add(&mut self, owned: &OwnedSocket) {
        // Records carry inodes only where a socket must be told apart.
        let inode = (owned.inode != 0 && owned.inode != INODE_NOT_READ).then_some(owned.inode);
        let counted = self.count_processes
            && self.range.contains(owned.port)
            && !self.reserved.contains(owned.port);
        match inode {
            Some(inode) if owned.shared && counted => {
                let entry = (owned.tgid, owned.comm, owned.protocol, owned.port);
                self.shared
                    .entry(inode)
                    .and_modify(|kept| {
                        if entry.0 < kept.0 {
                            *kept = entry;
                        }
                    })
                    .or_insert(entry);
                return;
            }
            Some(inode) if !self.named.pid_by_inode.contains_key(&inode) => {
                self.named.pid_by_inode.insert(inode, owned.tgid);
                self.named
                    .comm_by_pid
                    .entry(owned.tgid)
                    .or_insert_with(|| process_label(owned.comm()));
            }
            _ => {}
        }
        if counted {
            self.count_owned(owned.tgid, owned.comm, owned.protocol, owned.port);
        }
    }

    /// Counts one socket, on an ephemeral port, that process `tgid` holds.
    fn count_owned(&mut self, tgid: u32, comm: [u8; 16], protocol: Protocol, port: u16) {
        let offset = usize::from(port - self.range.start);
        let owned = &mut self.owned_by_port[protocol];
        if owned.is_empty() {
            *owned = vec![0; self.range.port_count() as usize];
        }
        owned[offset] += 1;
        let at = match self.last {
            Some((last, at)) if last == comm => at,
            _ => {
                let ports = &mut self.ports;
                let at = *self.index.entry(comm).or_insert_with(|| {
                    ports.push((comm, Default::default(), HashSet::new()));
                    ports.len() - 1
                });
                self.last = Some((comm, at));
                at
            }
        };
        self.ports[at].1[protocol].insert(port);
        if self.last_pid != Some(tgid) {
            self.last_pid = Some(tgid);
            self.ports[at].2.insert(tgid);
        }
    }

    /// The owners of `inodes` that the records name.
    fn owners_of(&self, inodes: &HashSet<u64>) -> SocketOwners {
        let mut owners = SocketOwners::default();
        for &inode in inodes {
            let owner = match self.named.pid_by_inode.get(&inode) {
                Some(&tgid) => self
                    .named
                    .comm_by_pid
                    .get(&tgid)
                    .map(|comm| (tgid, comm.clone())),
                None => self
                    .shared
                    .get(&inode)
                    .map(|&(tgid, comm, ..)| (tgid, comm_label(&comm))),
            };
            if let Some((tgid, comm)) = owner {
                owners.pid_by_inode.insert(inode, tgid);
                owners.comm_by_pid.entry(tgid).or_insert(comm);
            }
        }
        owners
    }
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

    /// The figures of the sockets, named with `owners`.
    fn figures(mut self, owners: &SocketOwners, report: &ReadReport) -> Snapshot {
        let range = self.range;
        let reserved_in_range = self.reserved.count_in(range);
        let capacity = range.port_count() - reserved_in_range;
        let occupancy = self.occupancy(report, capacity);
        let (listeners, listeners_omitted) = self.listeners(owners, &report.interfaces);
        let exclusive = self.exclusive_ports();
        let time_wait_reusable = self.time_wait_reusable(&exclusive.all);
        let headroom = self.headroom(capacity, &exclusive);
        let (processes, bind_before_connect_processes) =
            self.processes(owners, &exclusive.bind_first);
        let nat = self.nat_shown.map(|counters| {
            self.nat
                .unwrap_or_else(|| NatTable::new(self.limits.nat_ports))
                .finish(self.limits.destinations_top, counters)
        });
        Snapshot {
            range,
            reserved_in_range,
            capacity,
            occupancy,
            listeners,
            listeners_omitted,
            exclusive: exclusive.by_reason,
            time_wait_reusable,
            port_hold_ms: [
                port_hold_ms(&self.time_wait_reuse, true),
                port_hold_ms(&self.time_wait_reuse, false),
            ],
            bind_before_connect_processes,
            destinations: headroom.destinations,
            destination_count: headroom.destination_count,
            busiest_destination_ports: headroom.busiest,
            new_destination_headroom: headroom.new_destination,
            min_destination_headroom: headroom.min_destination,
            headroom_slack: headroom.slack,
            destination_max_used_ratio: headroom.max_used_ratio,
            processes,
            sources: report.sources,
            bound_inactive_seen: report.bound_inactive_seen,
            owner_lookup: self.lookup,
            namespace: None,
            nat,
            failures: None,
        }
    }

    /// How much of the range each protocol uses, and its sockets by state.
    fn occupancy(&self, report: &ReadReport, capacity: u32) -> PerProtocol<ProtocolOccupancy> {
        PerProtocol::from_fn(|protocol| {
            let tally = &self.tallies[protocol];
            let sockets_by_state = match protocol {
                Protocol::Tcp => {
                    // procfs cannot see bound-but-inactive sockets, nor
                    // netlink before Linux 6.5 where some may exist: report
                    // the state only where they were seen, rather than a
                    // false 0.
                    let sees_bound_inactive = report.bound_inactive_seen
                        && matches!(
                            report.sources[protocol],
                            SourceKind::Netlink | SourceKind::Bpf
                        );
                    TcpState::ALL
                        .iter()
                        .copied()
                        .chain(sees_bound_inactive.then_some(TcpState::BoundInactive))
                        .map(|state| (SocketState::Tcp(state), tally.states[state as usize]))
                        .collect()
                }
                Protocol::Udp => UdpState::ALL
                    .iter()
                    .map(|&state| (SocketState::Udp(state), tally.states[state as usize]))
                    .collect(),
            };
            let ports_used = tally.used.len();
            ProtocolOccupancy {
                protocol,
                ports_used,
                used_ratio: used_ratio(ports_used, capacity),
                sockets_by_state,
                sockets_scanned: tally.scanned,
            }
        })
    }

    /// The listener groups, at most `Limits::listeners_max`, and the
    /// sockets of those beyond.
    fn listeners(
        &self,
        owners: &SocketOwners,
        interfaces: &BTreeMap<u32, String>,
    ) -> (Vec<Listener>, u64) {
        let named = self.named_owners();
        let mut groups = ListenerGroups::default();
        for tally in &self.tallies {
            for socket in &tally.listeners {
                let process = owners
                    .process_name(socket.inode)
                    .or_else(|| named.process_name(socket.inode))
                    .unwrap_or(UNKNOWN_PROCESS);
                let pid = owners
                    .pid_by_inode
                    .get(&socket.inode)
                    .or_else(|| named.pid_by_inode.get(&socket.inode))
                    .copied();
                groups.add(socket, link_local_scope(interfaces, socket), process, pid);
            }
        }
        groups.finish(self.limits.listeners_max, |port| self.is_ephemeral(port))
    }

    /// The TCP ports no destination can share, each under its first
    /// reason only.
    fn exclusive_ports(&mut self) -> Exclusive {
        let tcp = &mut self.tallies.tcp;
        let [listener_ports, mut bound_ports, mut bind_first_ports] =
            std::mem::take(&mut tcp.exclusive);
        bound_ports.remove_all(&listener_ports);
        bind_first_ports.remove_all(&listener_ports);
        bind_first_ports.remove_all(&bound_ports);
        let by_reason = ExclusivePorts {
            by_reason: [
                listener_ports.len(),
                bound_ports.len(),
                bind_first_ports.len(),
            ],
        };
        let mut all = listener_ports;
        all.insert_all(&bound_ports);
        all.insert_all(&bind_first_ports);
        Exclusive {
            by_reason,
            all,
            bind_first: bind_first_ports,
        }
    }

    /// TIME_WAIT sockets `connect()` may take over now, on ports none of
    /// `exclusive` holds.
    fn time_wait_reusable(&self, exclusive: &PortSet) -> u64 {
        let start = self.range.start;
        self.tallies
            .tcp
            .reusable_by_port
            .iter()
            .enumerate()
            .filter(|(offset, _)| !exclusive.contains(start + *offset as u16))
            .map(|(_, &count)| u64::from(count))
            .sum()
    }

    /// The headroom of each destination and of a new one. `connect()`
    /// fills the free ports its scan reaches: those of the range, less the
    /// reserved, the exclusive and the destination's own; on a range of an
    /// odd length, maybe not an end port.
    fn headroom(&mut self, capacity: u32, exclusive: &Exclusive) -> Headroom {
        let scan = inet_hash_connect_scan(self.range);
        let mut edges = PortSet::new();
        for port in scan.edge_ports() {
            if !self.reserved.contains(port) && !exclusive.all.contains(port) {
                edges.insert(port);
            }
        }
        let shared = capacity.saturating_sub(exclusive.by_reason.total());
        let headroom = |used: u32, used_edges: u32| {
            scan.connects(shared.saturating_sub(used), edges.len() - used_edges)
                .0
        };
        let new_destination = headroom(0, 0);
        let mut usage: Vec<DestinationUsage> = self
            .tallies
            .tcp
            .destinations
            .drain()
            .filter_map(|(destination, mut ports)| {
                let ports_used = ports.count_without(&exclusive.all);
                (ports_used > 0).then(|| DestinationUsage {
                    destination,
                    ports_used,
                    // Most ranges are of an even length, with no edge.
                    headroom: headroom(
                        ports_used,
                        if edges.is_empty() {
                            0
                        } else {
                            ports.count_within(&edges)
                        },
                    ),
                })
            })
            .collect();
        let destination_count = usage.len() as u64;
        let busiest = usage
            .iter()
            .map(|usage| usage.ports_used)
            .max()
            .unwrap_or(0);
        let min_destination = usage
            .iter()
            .map(|usage| usage.headroom)
            .min()
            .unwrap_or(new_destination);
        usage.sort_by(|a, b| {
            b.ports_used
                .cmp(&a.ports_used)
                .then(a.destination.cmp(&b.destination))
        });
        usage.truncate(self.limits.destinations_top);
        Headroom {
            destinations: usage,
            destination_count,
            busiest,
            new_destination,
            min_destination,
            slack: scan.slack(),
            max_used_ratio: used_ratio(capacity.saturating_sub(min_destination), capacity),
        }
    }

    /// The processes holding the most ports, then those holding the most
    /// ports bound before `connect()` (`bind_first_ports`): from owner
    /// records, or from `owners` by inode.
    fn processes(
        &mut self,
        owners: &SocketOwners,
        bind_first_ports: &PortSet,
    ) -> (Vec<ProcessUsage>, Vec<ProcessUsage>) {
        let top = self.limits.processes_top;
        if top == 0 {
            return (Vec::new(), Vec::new());
        }
        let (mut holders, unknown) = if self.lookup == OwnerLookup::Records {
            self.holders_from_records()
        } else {
            self.holders_by_inode(owners)
        };
        // TIME_WAIT and orphans named after the process that closed them.
        for (tgid, (comm, ports)) in std::mem::take(&mut self.tallies.tcp.named) {
            holders.add_ports(
                &comm_label(&comm),
                PerProtocol {
                    tcp: ports,
                    udp: PortList::default(),
                },
                [tgid],
            );
        }
        let unheld = self.tallies.iter().map(|tally| tally.unheld.len()).sum();
        let unheld_bind_first = self
            .tallies
            .tcp
            .unheld_bind_first
            .iter()
            .filter(|&port| bind_first_ports.contains(port))
            .count() as u32;
        holders.figures(bind_first_ports, unheld, unheld_bind_first, unknown, top)
    }

    /// The ports each process holds from owner records, and the ports
    /// where more sockets are held than owners were found, which have a
    /// socket whose owner is not known.
    fn holders_from_records(&mut self) -> (Holders, u32) {
        for (_, (tgid, comm, protocol, port)) in std::mem::take(&mut self.records.shared) {
            self.records.count_owned(tgid, comm, protocol, port);
        }
        let mut holders = Holders::default();
        for (comm, ports, pids) in std::mem::take(&mut self.records.ports) {
            holders.add_ports(&comm_label(&comm), ports, pids);
        }
        let range = self.range;
        let mut unknown = 0;
        for (tally, owned_by_port) in self.tallies.iter().zip(&self.records.owned_by_port) {
            unknown += tally
                .held_by_port
                .iter()
                .enumerate()
                .filter(|&(offset, &held)| {
                    held > owned_by_port.get(offset).copied().unwrap_or(0)
                        && range.contains(range.start + offset as u16)
                })
                .count() as u32;
        }
        (holders, unknown)
    }

    /// The ports each process holds, from the owners of the sockets that
    /// hold them, and how many ports sockets whose owner was not found hold.
    fn holders_by_inode(&self, owners: &SocketOwners) -> (Holders, u32) {
        let mut unknown: PerProtocol<PortList> = Default::default();
        // The ports of each process, by pid: named once, below, rather than
        // a name hashed for every socket.
        let mut by_pid: HashMap<u32, PerProtocol<PortList>> = HashMap::new();
        for (protocol, tally) in self.tallies.by_protocol() {
            for held in &tally.held {
                let ports = match owners.pid_by_inode.get(&held.inode) {
                    Some(pid) if owners.comm_by_pid.contains_key(pid) => {
                        by_pid.entry(*pid).or_default()
                    }
                    _ => &mut unknown,
                };
                ports[protocol].insert(held.port);
            }
        }
        let mut holders = Holders::default();
        for (pid, ports) in by_pid {
            if let Some(comm) = owners.comm_by_pid.get(&pid) {
                holders.add_ports(comm, ports, [pid]);
            }
        }
        let none = PortSet::new();
        let unknown = unknown
            .iter_mut()
            .map(|ports| ports.count_without(&none))
            .sum();
        (holders, unknown)
    }
}

/// The exclusive TCP ports of a namespace.
struct Exclusive {
    /// How many, by reason.
    by_reason: ExclusivePorts,
    /// All of them.
    all: PortSet,
    /// Those exclusive only because they were bound before `connect()`.
    bind_first: PortSet,
}

/// The headroom figures of a namespace (`Snapshot` has their meaning).
struct Headroom {
    destinations: Vec<DestinationUsage>,
    destination_count: u64,
    busiest: u32,
    new_destination: u32,
    min_destination: u32,
    slack: u32,
    max_used_ratio: f64,
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

/// `used / capacity`. A range with no capacity cannot hand out a port, so it
/// counts as full.
fn used_ratio(used: u32, capacity: u32) -> f64 {
    if capacity == 0 {
        1.0
    } else {
        f64::from(used) / f64::from(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortBinding, SocketOwners, TimeWait};
    use crate::parse::sysctl::parse_reserved_ports;
    use std::collections::BTreeMap;

    fn tcp(state: TcpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
        SocketRecord::new(
            SocketState::Tcp(state),
            local.parse().unwrap(),
            remote.parse().unwrap(),
            inode,
        )
    }

    fn udp(state: UdpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
        SocketRecord::new(
            SocketState::Udp(state),
            local.parse().unwrap(),
            remote.parse().unwrap(),
            inode,
        )
    }

    /// A TIME_WAIT socket with what the BPF source tells of it.
    fn time_wait(
        local: &str,
        remote: &str,
        age_ms: u32,
        timestamps: bool,
        device: i32,
    ) -> SocketRecord {
        let mut socket = tcp(TcpState::TimeWait, local, remote, 0);
        socket.time_wait = Some(TimeWait {
            age_ms,
            timestamps: Some(timestamps),
            bound_device: Some(device),
        });
        socket
    }

    fn sample(sockets: Vec<SocketRecord>, reserved: &str) -> NamespaceSample {
        NamespaceSample {
            range: PortRange {
                start: 40000,
                end: 40099,
            },
            reserved: parse_reserved_ports(reserved).unwrap(),
            sockets,
            owners: SocketOwners::default(),
            time_wait_reuse: TimeWaitReuse::default(),
            report: ReadReport::complete(PerProtocol::both(SourceKind::Procfs)),
        }
    }

    #[test]
    fn reusable_time_wait_uses_no_port_of_its_destination() {
        let mut sockets: Vec<SocketRecord> = (40000..40060u16)
            .map(|port| {
                time_wait(
                    &format!("127.0.0.1:{port}"),
                    "127.0.0.1:8080",
                    5000,
                    true,
                    0,
                )
            })
            .collect();
        sockets.push(time_wait("10.0.0.1:40070", "10.0.0.9:80", 5000, true, 0));
        let snapshot = aggregate(&sample(sockets, ""), &Limits::default());
        assert_eq!(snapshot.time_wait_reusable, 60);
        // Only the remote one blocks its destination under mode 2.
        assert_eq!(snapshot.destination_count, 1);
        assert_eq!(snapshot.busiest_destination_ports, 1);
        assert_eq!(snapshot.destination_max_used_ratio, 1.0 / 100.0);
        // The ports are still held.
        assert_eq!(snapshot.occupancy.tcp.ports_used, 61);
    }

    #[test]
    fn ports_bound_before_connect_are_exclusive_with_a_reason() {
        let bound = |local: &str, remote: &str, inode| {
            let mut socket = tcp(TcpState::Established, local, remote, inode);
            socket.binding = PortBinding::Bind;
            socket
        };
        let mut bind_first_time_wait = time_wait("10.0.0.1:40005", "10.0.0.9:80", 5000, true, 0);
        bind_first_time_wait.binding = PortBinding::Bind;
        let mut sockets = vec![
            bound("10.0.0.1:40001", "10.0.0.9:80", 1),
            bound("10.0.0.1:40002", "10.0.0.9:80", 1),
            // Two destinations on one bound port count it once.
            bound("10.0.0.1:40003", "10.0.0.9:80", 2),
            bound("10.0.0.1:40003", "10.0.0.8:80", 2),
            // Its TIME_WAIT keeps the bucket, and stays exclusive under
            // tcp_tw_reuse=1.
            bind_first_time_wait,
            // A listener's port with a bound connection on it: listener.
            tcp(TcpState::Listen, "0.0.0.0:40050", "0.0.0.0:0", 3),
            bound("10.0.0.1:40050", "10.0.0.7:5000", 4),
            tcp(TcpState::BoundInactive, "0.0.0.0:40051", "0.0.0.0:0", 5),
        ];
        // Connected by connect(): shared, counted for its destination.
        let mut shared = tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.7:80", 6);
        shared.binding = PortBinding::Connect;
        sockets.push(shared);
        let mut sample = sample(sockets, "");
        sample.time_wait_reuse.mode = 1;
        sample.report.sources = PerProtocol {
            tcp: SourceKind::Bpf,
            udp: SourceKind::Netlink,
        };
        for (inode, pid) in [(1, 10), (2, 11), (4, 10)] {
            sample.owners.pid_by_inode.insert(inode, pid);
        }
        sample.owners.comm_by_pid.insert(10, "haproxy".into());
        sample.owners.comm_by_pid.insert(11, "java".into());
        let snapshot = aggregate(&sample, &Limits::default());
        let by_reason: Vec<(&str, u32)> = ExclusiveReason::ALL
            .iter()
            .map(|&reason| (reason.label(), snapshot.exclusive.get(reason)))
            .collect();
        assert_eq!(
            by_reason,
            vec![("listener", 1), ("bound", 1), ("bind_before_connect", 4)]
        );
        assert_eq!(snapshot.exclusive.total(), 6);
        assert_eq!(snapshot.time_wait_reusable, 0, "its port is skipped first");
        // Only the socket connect() placed counts for a destination, though
        // it shares port 40001 with a bound one: the port is exclusive.
        assert_eq!(snapshot.destination_count, 0);
        assert_eq!(snapshot.new_destination_headroom, 100 - 6);
        assert!(snapshot.headroom_exact());
        let holders: Vec<(String, u32)> = snapshot
            .bind_before_connect_processes
            .iter()
            .map(|usage| (usage.process.clone(), usage.ports_used))
            .collect();
        assert_eq!(
            holders,
            vec![
                ("haproxy".to_string(), 2),
                ("java".to_string(), 1),
                ("none".to_string(), 1)
            ]
        );
    }

    /// An aggregator of the range 40000-40099, with the defaults.
    fn aggregator_of_40000_to_40099() -> Aggregator {
        Aggregator::new(
            PortRange {
                start: 40000,
                end: 40099,
            },
            ReservedPorts::default(),
            TimeWaitReuse::default(),
            Limits::default(),
        )
    }

    /// Names that note each connection asked for.
    struct Asked {
        names: ConnectionNames,
        asked: std::sync::Arc<std::sync::Mutex<Vec<(std::net::SocketAddr, std::net::SocketAddr)>>>,
    }

    impl ConnectionNamer for Asked {
        fn name(
            &mut self,
            local: std::net::SocketAddr,
            remote: std::net::SocketAddr,
        ) -> Option<Connector> {
            self.asked.lock().unwrap().push((local, remote));
            self.names.name(local, remote)
        }
    }

    #[test]
    fn time_wait_is_named_after_the_process_that_connected_it() {
        let comm = |name: &[u8]| {
            let mut comm = [0u8; 16];
            comm[..name.len()].copy_from_slice(name);
            comm
        };
        let connector = |tgid, name: &[u8], ipv4_mapped| crate::model::Connector {
            tgid,
            comm: comm(name),
            ipv4_mapped,
        };
        let between = |local: &str, remote: &str| {
            Connection::between(local.parse().unwrap(), remote.parse().unwrap())
        };
        let mut names = ConnectionNames::new();
        // Two processes churning to their destinations, one of them from
        // an AF_INET6 socket to an IPv4-mapped peer.
        names.insert(
            between("127.0.0.1:40000", "127.0.0.1:80"),
            connector(10, b"nginx", false),
        );
        names.insert(
            between("127.0.0.1:40001", "127.0.0.1:80"),
            connector(10, b"nginx", false),
        );
        names.insert(
            between("127.0.0.1:40000", "127.0.0.1:81"),
            connector(11, b"curl", true),
        );
        // Established and held by a file: seen, but named by its owner.
        names.insert(
            between("127.0.0.1:40002", "127.0.0.1:80"),
            connector(10, b"nginx", false),
        );
        // Gone: no socket has it.
        names.insert(
            between("127.0.0.1:40003", "127.0.0.1:80"),
            connector(10, b"nginx", false),
        );
        let sockets = [
            time_wait("127.0.0.1:40000", "127.0.0.1:80", 5000, true, 0),
            time_wait("127.0.0.1:40001", "127.0.0.1:80", 5000, true, 0),
            time_wait(
                "[::ffff:127.0.0.1]:40000",
                "[::ffff:127.0.0.1]:81",
                5000,
                true,
                0,
            ),
            tcp(TcpState::Established, "127.0.0.1:40002", "127.0.0.1:80", 7),
            // Established with no file read (a source that reads none):
            // not closed, so never asked for, and nobody's.
            tcp(TcpState::Established, "127.0.0.1:40004", "127.0.0.1:80", 0),
            // Connected before the program counted: nobody's.
            time_wait("127.0.0.1:40009", "127.0.0.1:80", 5000, true, 0),
        ];
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut aggregator = aggregator_of_40000_to_40099();
        aggregator.name_connections(Box::new(Asked {
            names,
            asked: asked.clone(),
        }));
        for socket in &sockets {
            aggregator.add(socket);
        }
        // Only the closed sockets no process holds are asked for, as read.
        assert_eq!(
            *asked.lock().unwrap(),
            vec![
                (
                    "127.0.0.1:40000".parse().unwrap(),
                    "127.0.0.1:80".parse().unwrap()
                ),
                (
                    "127.0.0.1:40001".parse().unwrap(),
                    "127.0.0.1:80".parse().unwrap()
                ),
                (
                    "[::ffff:127.0.0.1]:40000".parse().unwrap(),
                    "[::ffff:127.0.0.1]:81".parse().unwrap()
                ),
                (
                    "127.0.0.1:40009".parse().unwrap(),
                    "127.0.0.1:80".parse().unwrap()
                ),
            ]
        );
        let mut owners = SocketOwners::default();
        owners.pid_by_inode.insert(7, 12);
        owners.comm_by_pid.insert(12, "worker".into());
        let snapshot = aggregator.finish(
            &owners,
            &ReadReport::complete(PerProtocol::both(SourceKind::Bpf)),
        );
        let processes: Vec<(String, u32, Vec<u32>)> = snapshot
            .processes
            .iter()
            .map(|usage| {
                (
                    usage.process.clone(),
                    usage.ports_used,
                    usage.pids.lowest.clone(),
                )
            })
            .collect();
        assert_eq!(
            processes,
            vec![
                ("nginx".to_string(), 2, vec![10]),
                ("none".to_string(), 2, vec![]),
                ("curl".to_string(), 1, vec![11]),
                ("worker".to_string(), 1, vec![12]),
            ]
        );
    }

    #[test]
    fn sockets_read_again_after_a_restart_keep_their_names() {
        let connection = Connection::between(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let mut names = ConnectionNames::new();
        names.insert(
            connection,
            crate::model::Connector {
                tgid: 10,
                comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
                ipv4_mapped: false,
            },
        );
        let socket = time_wait("127.0.0.1:40000", "127.0.0.1:80", 5000, true, 0);
        let mut aggregator = aggregator_of_40000_to_40099();
        aggregator.keep_sockets_on(40000);
        aggregator.name_connections(Box::new(names));
        // A walk that reads the socket, then is found incomplete: the
        // namespace's TCP sockets are read again.
        aggregator.add(&socket);
        aggregator.restart(Protocol::Tcp);
        aggregator.add(&socket);
        assert_eq!(aggregator.kept_connection_names().len(), 1);
        let snapshot = aggregator.finish(
            &SocketOwners::default(),
            &ReadReport::complete(PerProtocol::both(SourceKind::Bpf)),
        );
        let processes: Vec<(String, u32)> = snapshot
            .processes
            .iter()
            .map(|usage| (usage.process.clone(), usage.ports_used))
            .collect();
        assert_eq!(processes, vec![("nginx".to_string(), 1)]);
    }

    #[test]
    fn without_bindings_headroom_is_an_upper_bound() {
        let sockets = vec![tcp(
            TcpState::Established,
            "10.0.0.1:40001",
            "10.0.0.9:80",
            1,
        )];
        let snapshot = aggregate(&sample(sockets, ""), &Limits::default());
        assert!(!snapshot.headroom_exact());
        assert_eq!(
            snapshot.exclusive.get(ExclusiveReason::BindBeforeConnect),
            0
        );
        assert_eq!(snapshot.new_destination_headroom, 100);
        assert!(snapshot.bind_before_connect_processes.is_empty());
    }

    #[test]
    fn unseen_bound_sockets_make_bpf_inexact_and_hide_their_state() {
        let sockets = vec![tcp(
            TcpState::Established,
            "10.0.0.1:40001",
            "10.0.0.9:80",
            1,
        )];
        let mut seen = sample(sockets, "");
        seen.report.sources = PerProtocol {
            tcp: SourceKind::Bpf,
            udp: SourceKind::Netlink,
        };
        let snapshot = aggregate(&seen, &Limits::default());
        assert!(snapshot.headroom_exact());
        assert!(states(&snapshot.occupancy.tcp).contains_key("bound_inactive"));
        // Netlink before Linux 6.5 beside the program's walk that did not
        // run: some socket may be bound unseen.
        let mut unseen = seen;
        unseen.report.bound_inactive_seen = false;
        let snapshot = aggregate(&unseen, &Limits::default());
        assert!(!snapshot.headroom_exact());
        assert!(!states(&snapshot.occupancy.tcp).contains_key("bound_inactive"));
    }

    #[test]
    fn ipv4_mapped_connections_count_toward_the_ipv4_destination() {
        let mut sockets: Vec<SocketRecord> = (40000..40030u16)
            .map(|port| {
                tcp(
                    TcpState::Established,
                    &format!("127.0.0.1:{port}"),
                    "127.0.0.1:8080",
                    u64::from(port),
                )
            })
            .collect();
        // Dual-stack sockets to the same peer, on other ports and on one
        // port an IPv4 socket holds too (no conflict: not one 4-tuple).
        sockets.extend((40029..40050u16).map(|port| {
            tcp(
                TcpState::Established,
                &format!("[::ffff:127.0.0.1]:{port}"),
                "[::ffff:127.0.0.1]:8080",
                u64::from(port) + 100,
            )
        }));
        // A TIME_WAIT of a dual-stack socket blocks its 4-tuple for IPv4 too.
        sockets.push(tcp(
            TcpState::TimeWait,
            "[::ffff:127.0.0.1]:40050",
            "[::ffff:127.0.0.1]:8080",
            0,
        ));
        let snapshot = aggregate(&sample(sockets, ""), &Limits::default());
        assert_eq!(snapshot.destination_count, 1);
        let usage = &snapshot.destinations[0];
        assert_eq!(
            usage.destination.remote_address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            usage.destination.local_address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(usage.ports_used, 51);
        assert_eq!(usage.headroom, 100 - 51);
        assert_eq!(snapshot.destination_max_used_ratio, 51.0 / 100.0);
        // Real IPv6 to the same port is a destination of its own.
        let v6 = vec![tcp(TcpState::Established, "[::1]:40001", "[::1]:8080", 1)];
        let snapshot = aggregate(&sample(v6, ""), &Limits::default());
        assert!(
            snapshot.destinations[0]
                .destination
                .remote_address
                .is_ipv6()
        );
    }

    fn sample_in(range: (u16, u16), sockets: Vec<SocketRecord>) -> NamespaceSample {
        let mut sample = sample(sockets, "");
        sample.range = PortRange {
            start: range.0,
            end: range.1,
        };
        sample
    }

    fn connected(ports: impl Iterator<Item = u16>) -> Vec<SocketRecord> {
        ports
            .map(|port| {
                tcp(
                    TcpState::Established,
                    &format!("127.0.0.1:{port}"),
                    "127.0.0.1:8080",
                    u64::from(port),
                )
            })
            .collect()
    }

    #[test]
    fn three_ports_scan_two_and_the_ratio_is_one_when_connect_fails() {
        let empty = aggregate(&sample_in((40000, 40002), Vec::new()), &Limits::default());
        assert_eq!(empty.capacity, 3);
        assert_eq!(empty.new_destination_headroom, 2);
        assert_eq!(empty.headroom_slack, 0);
        // connect() got 40000 and 40001, then EADDRNOTAVAIL.
        let full = aggregate(
            &sample_in((40000, 40002), connected(40000..=40001)),
            &Limits::default(),
        );
        assert_eq!(full.destinations[0].headroom, 0);
        assert_eq!(full.min_destination_headroom, 0);
        assert_eq!(full.destination_max_used_ratio, 1.0);
        // A port the scan never reaches, held by a fixed bind(), costs no
        // destination a connect().
        let mut bound = tcp(TcpState::BoundInactive, "0.0.0.0:40002", "0.0.0.0:0", 9);
        bound.binding = PortBinding::Bind;
        let snapshot = aggregate(&sample_in((40000, 40002), vec![bound]), &Limits::default());
        assert_eq!(snapshot.new_destination_headroom, 2);
    }

    #[test]
    fn odd_ranges_give_the_safe_side_with_a_slack_of_one() {
        let empty = aggregate(&sample_in((40000, 40004), Vec::new()), &Limits::default());
        assert_eq!(empty.new_destination_headroom, 4);
        assert_eq!(empty.headroom_slack, 1);
        // Three middle ports used: both edges free, 1 or 2 connects left.
        let middle = aggregate(
            &sample_in((40000, 40004), connected(40001..=40003)),
            &Limits::default(),
        );
        assert_eq!(middle.destinations[0].headroom, 1);
        assert_eq!(middle.destination_max_used_ratio, 4.0 / 5.0);
        // The first edge used too: the last one is reached or not.
        let mut ports = connected(40000..=40003);
        let one_left = aggregate(
            &sample_in((40000, 40004), ports.clone()),
            &Limits::default(),
        );
        assert_eq!(one_left.destinations[0].headroom, 0);
        assert_eq!(one_left.destination_max_used_ratio, 1.0);
        // Only the middle free: every scan reaches it.
        ports.retain(|socket| socket.local.port() != 40002);
        ports.extend(connected(40004..=40004));
        let middle_free = aggregate(&sample_in((40000, 40004), ports), &Limits::default());
        assert_eq!(middle_free.destinations[0].headroom, 1);
        // An edge that is reserved or exclusive is no port to miss.
        let mut sample = sample_in((40000, 40004), connected(40001..=40003));
        sample.reserved = parse_reserved_ports("40000,40004").unwrap();
        let reserved = aggregate(&sample, &Limits::default());
        assert_eq!(reserved.new_destination_headroom, 3);
        assert_eq!(reserved.destinations[0].headroom, 0);
    }

    fn states(occupancy: &ProtocolOccupancy) -> BTreeMap<&'static str, u64> {
        occupancy
            .sockets_by_state
            .iter()
            .map(|(state, count)| (state.label(), *count))
            .collect()
    }

    #[test]
    fn capacity_subtracts_reserved_ports_inside_the_range_only() {
        let snapshot = aggregate(
            &sample(vec![], "80,39999-40004,40099,40100,60000"),
            &Limits::default(),
        );
        assert_eq!(snapshot.reserved_in_range, 6);
        assert_eq!(snapshot.capacity, 94);
        assert_eq!(snapshot.occupancy.tcp.ports_used, 0);
        assert_eq!(snapshot.occupancy.tcp.used_ratio, 0.0);
    }

    #[test]
    fn used_counts_distinct_unreserved_ports_in_any_state() {
        let sockets = vec![
            // Two connections from the same port to different destinations.
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80", 1),
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.8:80", 2),
            // IPv6 shares the port space with IPv4.
            tcp(TcpState::TimeWait, "[::1]:40001", "[::1]:80", 0),
            tcp(TcpState::TimeWait, "[::1]:40002", "[::1]:80", 0),
            tcp(TcpState::Listen, "0.0.0.0:40003", "0.0.0.0:0", 3),
            // Reserved: in the range, but not capacity.
            tcp(TcpState::Established, "10.0.0.1:40050", "10.0.0.9:80", 4),
            // Outside the range.
            tcp(TcpState::Established, "10.0.0.1:80", "10.0.0.9:40007", 5),
            tcp(TcpState::Established, "10.0.0.1:40100", "10.0.0.9:80", 6),
            udp(UdpState::Connected, "10.0.0.1:40001", "10.0.0.9:53", 7),
        ];
        let snapshot = aggregate(&sample(sockets, "40050"), &Limits::default());
        let tcp = &snapshot.occupancy.tcp;
        assert_eq!(tcp.protocol, Protocol::Tcp);
        assert_eq!(tcp.ports_used, 3);
        assert_eq!(tcp.used_ratio, 3.0 / 99.0);
        assert_eq!(tcp.sockets_scanned, 8);
        let tcp_states = states(tcp);
        assert_eq!(tcp_states.len(), 11);
        assert_eq!(tcp_states["established"], 3);
        assert_eq!(tcp_states["time_wait"], 2);
        assert_eq!(tcp_states["listen"], 1);
        assert_eq!(tcp_states["close_wait"], 0);
        let udp = &snapshot.occupancy.udp;
        assert_eq!(udp.ports_used, 1);
        assert_eq!(udp.sockets_scanned, 1);
        assert_eq!(states(udp)["connected"], 1);
        assert_eq!(states(udp)["unconnected"], 0);
    }

    #[test]
    fn full_range_reads_one() {
        let sockets = (40000..=40099)
            .filter(|port| *port != 40010)
            .map(|port| {
                tcp(
                    TcpState::SynSent,
                    &format!("10.0.0.1:{port}"),
                    "10.0.0.9:80",
                    0,
                )
            })
            .collect();
        let snapshot = aggregate(&sample(sockets, "40010"), &Limits::default());
        assert_eq!(snapshot.capacity, 99);
        assert_eq!(snapshot.occupancy.tcp.ports_used, 99);
        assert_eq!(snapshot.occupancy.tcp.used_ratio, 1.0);
    }

    #[test]
    fn range_with_no_capacity_is_full() {
        let snapshot = aggregate(&sample(vec![], "40000-40099"), &Limits::default());
        assert_eq!(snapshot.capacity, 0);
        assert_eq!(snapshot.occupancy.tcp.used_ratio, 1.0);
        assert_eq!(snapshot.occupancy.udp.used_ratio, 1.0);
    }

    #[test]
    fn listeners_group_by_address_port_and_process() {
        let sockets = vec![
            // An SO_REUSEPORT group of two.
            tcp(TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0", 1),
            tcp(TcpState::Listen, "127.0.0.1:8080", "0.0.0.0:0", 2),
            tcp(TcpState::Listen, "[::]:40020", "[::]:0", 3),
            // Reserved port inside the range: a listener, not "in range".
            tcp(TcpState::Listen, "0.0.0.0:40050", "0.0.0.0:0", 4),
            // UDP servers: outside the range, or on a reserved port.
            udp(UdpState::Unconnected, "0.0.0.0:53", "0.0.0.0:0", 5),
            udp(UdpState::Unconnected, "0.0.0.0:40050", "0.0.0.0:0", 6),
            // UDP clients: not listeners.
            udp(UdpState::Unconnected, "0.0.0.0:40021", "0.0.0.0:0", 7),
            udp(UdpState::Connected, "10.0.0.1:5353", "10.0.0.9:53", 8),
            // Unbound.
            udp(UdpState::Unconnected, "0.0.0.0:0", "0.0.0.0:0", 9),
            tcp(
                TcpState::Established,
                "127.0.0.1:8080",
                "127.0.0.1:40030",
                10,
            ),
        ];
        let mut sample = sample(sockets, "40050");
        let mut owners = SocketOwners::default();
        for (inode, pid) in [(1, 10), (2, 10), (3, 11), (5, 12)] {
            owners.pid_by_inode.insert(inode, pid);
        }
        owners.comm_by_pid.insert(10, "nginx".into());
        owners.comm_by_pid.insert(11, "java".into());
        owners.comm_by_pid.insert(12, "dnsmasq".into());
        sample.owners = owners;
        let listeners: Vec<(Protocol, String, u16, &str, u64, bool)> =
            aggregate(&sample, &Limits::default())
                .listeners
                .iter()
                .map(|l| {
                    (
                        l.protocol,
                        l.address.to_string(),
                        l.port,
                        match l.process.as_str() {
                            "nginx" => "nginx",
                            "java" => "java",
                            "dnsmasq" => "dnsmasq",
                            "unknown" => "unknown",
                            other => panic!("unexpected process {other}"),
                        },
                        l.sockets,
                        l.in_ephemeral_range,
                    )
                })
                .collect();
        assert_eq!(
            listeners,
            vec![
                (Protocol::Tcp, "0.0.0.0".into(), 40050, "unknown", 1, false),
                (Protocol::Tcp, "127.0.0.1".into(), 8080, "nginx", 2, false),
                (Protocol::Tcp, "::".into(), 40020, "java", 1, true),
                (Protocol::Udp, "0.0.0.0".into(), 53, "dnsmasq", 1, false),
                (Protocol::Udp, "0.0.0.0".into(), 40050, "unknown", 1, false),
            ]
        );
    }

    #[test]
    fn reserved_ports_outside_the_range_change_nothing() {
        let sockets = vec![tcp(
            TcpState::Established,
            "10.0.0.1:40001",
            "10.0.0.9:80",
            1,
        )];
        let plain = aggregate(&sample(sockets.clone(), ""), &Limits::default());
        let reserved_elsewhere =
            aggregate(&sample(sockets, "1-39999,40100-65535"), &Limits::default());
        assert_eq!(plain, reserved_elsewhere);
    }

    /// The population `tests/fixtures/capture_netns.py` describes, read back
    /// from the tables it captured.
    #[test]
    fn captured_namespace() {
        use crate::parse::procfs::parse_fixture;
        use crate::parse::sysctl::parse_port_range;
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/../../tests/fixtures/netns/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let mut sockets = Vec::new();
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            sockets.extend(parse_fixture(table, &fixture(table)));
        }
        let sample = NamespaceSample {
            range: parse_port_range(&fixture("ip_local_port_range")).unwrap(),
            reserved: parse_reserved_ports(&fixture("ip_local_reserved_ports")).unwrap(),
            time_wait_reuse: TimeWaitReuse::default(),
            sockets,
            owners: SocketOwners::default(),
            report: ReadReport::complete(PerProtocol::both(SourceKind::Procfs)),
        };
        let snapshot = aggregate(&sample, &Limits::default());
        assert_eq!(
            snapshot.range,
            PortRange {
                start: 40000,
                end: 40099
            }
        );
        assert_eq!(snapshot.reserved_in_range, 11);
        assert_eq!(snapshot.capacity, 89);

        let tcp = &snapshot.occupancy.tcp;
        // 5 + 1 established, 3 TIME_WAIT, 2 CLOSE_WAIT, the listener on 40050.
        assert_eq!(tcp.ports_used, 12);
        assert_eq!(tcp.used_ratio, 12.0 / 89.0);
        let tcp_states = states(tcp);
        assert_eq!(tcp_states["established"], 6);
        assert_eq!(tcp_states["time_wait"], 3);
        assert_eq!(tcp_states["close_wait"], 2);
        assert_eq!(tcp_states["listen"], 1);
        assert_eq!(tcp_states.values().sum::<u64>(), 12);
        // IPv4: a listener, both ends of 5 connections, 3 TIME_WAIT, and both
        // ends of the 2 half-closed ones. IPv6: 2 listeners and both ends of 1.
        assert_eq!(tcp.sockets_scanned, 1 + 10 + 3 + 4 + 2 + 2);

        let udp = &snapshot.occupancy.udp;
        assert_eq!(udp.ports_used, 5);
        assert_eq!(states(udp)["connected"], 2);
        // The socket on reserved port 40010 is inside the range but not used.
        assert_eq!(states(udp)["unconnected"], 4);
        assert_eq!(udp.sockets_scanned, 7);

        let listeners: Vec<(Protocol, String, u16, u64, bool)> = snapshot
            .listeners
            .iter()
            .map(|l| {
                assert_eq!(l.process, UNKNOWN_PROCESS);
                (
                    l.protocol,
                    l.address.to_string(),
                    l.port,
                    l.sockets,
                    l.in_ephemeral_range,
                )
            })
            .collect();
        assert_eq!(
            listeners,
            vec![
                (Protocol::Tcp, "127.0.0.1".into(), 80, 1, false),
                (Protocol::Tcp, "::".into(), 40050, 1, true),
                (Protocol::Tcp, "::1".into(), 80, 1, false),
                (Protocol::Udp, "0.0.0.0".into(), 5353, 1, false),
                (Protocol::Udp, "0.0.0.0".into(), 40010, 1, false),
            ]
        );
    }

    #[test]
    fn only_listeners_need_owners() {
        let sockets = vec![
            tcp(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 1),
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80", 2),
            udp(UdpState::Unconnected, "0.0.0.0:53", "0.0.0.0:0", 3),
            udp(UdpState::Unconnected, "0.0.0.0:40002", "0.0.0.0:0", 4),
            udp(UdpState::Unconnected, "0.0.0.0:40050", "0.0.0.0:0", 5),
            tcp(TcpState::TimeWait, "10.0.0.1:40003", "10.0.0.9:80", 0),
        ];
        let wanted = |processes_top| {
            let sample = sample(sockets.clone(), "40050");
            let limits = Limits {
                processes_top,
                ..Limits::default()
            };
            let mut aggregator = Aggregator::new(
                sample.range,
                sample.reserved,
                sample.time_wait_reuse,
                limits,
            );
            for socket in &sockets {
                aggregator.add(socket);
            }
            aggregator.wanted_owners()
        };
        assert_eq!(wanted(0), [1, 3, 5]);
        // Counting processes, every socket a file holds on an ephemeral port
        // too (40050 is reserved; TIME_WAIT has no file).
        assert_eq!(wanted(10), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn destinations_share_ports_and_the_largest_sets_the_ratio() {
        let mut sockets = Vec::new();
        // Three destinations; 40001..=40040 to each: 120 sockets, 40 ports.
        for port in 40001..=40040u16 {
            for remote in ["10.0.0.7:80", "10.0.0.8:80", "10.0.0.8:443"] {
                sockets.push(tcp(
                    TcpState::Established,
                    &format!("10.0.0.1:{port}"),
                    remote,
                    1,
                ));
            }
        }
        // A fourth destination, smaller, one socket in TIME_WAIT.
        sockets.push(tcp(
            TcpState::TimeWait,
            "10.0.0.1:40041",
            "10.0.0.9:5432",
            0,
        ));
        sockets.push(tcp(
            TcpState::Established,
            "10.0.0.1:40042",
            "10.0.0.9:5432",
            2,
        ));
        // A listener inside the range with an accepted connection on its
        // port: the port is exclusive, and the accepted end no destination.
        sockets.push(tcp(TcpState::Listen, "0.0.0.0:40090", "0.0.0.0:0", 3));
        sockets.push(tcp(
            TcpState::Established,
            "10.0.0.1:40090",
            "10.0.0.50:51000",
            4,
        ));
        // Bound, never connected: exclusive too.
        sockets.push(tcp(
            TcpState::BoundInactive,
            "0.0.0.0:40091",
            "0.0.0.0:0",
            5,
        ));
        // A reserved port is never counted.
        sockets.push(tcp(
            TcpState::Established,
            "10.0.0.1:40099",
            "10.0.0.7:80",
            6,
        ));
        let limits = Limits {
            destinations_top: 2,
            ..Limits::default()
        };
        let snapshot = aggregate(&sample(sockets, "40099"), &limits);
        assert_eq!(snapshot.capacity, 99);
        assert_eq!(snapshot.exclusive.total(), 2);
        assert_eq!(snapshot.destination_count, 4);
        let top: Vec<(String, u32)> = snapshot
            .destinations
            .iter()
            .map(|usage| {
                let d = usage.destination;
                (
                    format!("{}>{}:{}", d.local_address, d.remote_address, d.remote_port),
                    usage.ports_used,
                )
            })
            .collect();
        assert_eq!(
            top,
            vec![
                ("10.0.0.1>10.0.0.7:80".to_string(), 40),
                ("10.0.0.1>10.0.0.8:80".to_string(), 40)
            ]
        );
        assert_eq!(snapshot.destination_max_used_ratio, (40.0 + 2.0) / 99.0);
        assert_eq!(snapshot.busiest_destination_ports, 40);
        assert_eq!(snapshot.min_destination_headroom, 99 - 2 - 40);
        assert!(
            snapshot
                .destinations
                .iter()
                .all(|usage| usage.headroom == 99 - 2 - 40)
        );
        // The top K is cut, the busiest figure is not.
        let one = aggregate(
            &sample(sockets_for_top_check(), "40099"),
            &Limits {
                destinations_top: 0,
                ..Limits::default()
            },
        );
        assert!(one.destinations.is_empty());
        assert_eq!(one.busiest_destination_ports, 3);
        // The global count sees 44 ports: 42 for connections, 2 exclusive.
        assert_eq!(snapshot.occupancy.tcp.ports_used, 44);
    }

    fn sockets_for_top_check() -> Vec<SocketRecord> {
        (40001..=40003u16)
            .map(|port| {
                tcp(
                    TcpState::Established,
                    &format!("10.0.0.1:{port}"),
                    "10.0.0.7:80",
                    1,
                )
            })
            .collect()
    }

    #[test]
    fn without_destinations_the_ratio_is_the_exclusive_share() {
        let sockets = vec![tcp(TcpState::Listen, "0.0.0.0:40001", "0.0.0.0:0", 1)];
        let snapshot = aggregate(&sample(sockets, ""), &Limits::default());
        assert_eq!(snapshot.destination_count, 0);
        assert!(snapshot.destinations.is_empty());
        assert_eq!(snapshot.destination_max_used_ratio, 1.0 / 100.0);
        let none = aggregate(&sample(vec![], "40000-40099"), &Limits::default());
        assert_eq!(none.destination_max_used_ratio, 1.0, "no capacity is full");
    }

    #[test]
    fn processes_hold_distinct_protocol_ports() {
        let sockets = vec![
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80", 1),
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.8:80", 2),
            udp(UdpState::Connected, "10.0.0.1:40001", "10.0.0.9:53", 3),
            tcp(TcpState::Established, "10.0.0.1:40002", "10.0.0.9:80", 4),
            tcp(TcpState::TimeWait, "10.0.0.1:40003", "10.0.0.9:80", 0),
            tcp(TcpState::TimeWait, "10.0.0.1:40004", "10.0.0.9:80", 0),
            tcp(TcpState::Established, "10.0.0.1:40005", "10.0.0.9:80", 9),
            // Outside the range: not counted.
            tcp(TcpState::Established, "10.0.0.1:80", "10.0.0.9:40000", 1),
        ];
        let mut sample = sample(sockets, "");
        for (inode, pid) in [(1, 10), (2, 10), (3, 10), (4, 11)] {
            sample.owners.pid_by_inode.insert(inode, pid);
        }
        sample.owners.comm_by_pid.insert(10, "envoy".into());
        sample.owners.comm_by_pid.insert(11, "curl".into());
        let processes = |top| {
            let limits = Limits {
                processes_top: top,
                ..Limits::default()
            };
            aggregate(&sample, &limits)
                .processes
                .iter()
                .map(|usage| (usage.process.clone(), usage.ports_used))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            processes(10),
            vec![
                ("envoy".to_string(), 2),
                ("none".to_string(), 2),
                ("curl".to_string(), 1),
                ("unknown".to_string(), 1),
            ]
        );
        assert_eq!(processes(1), vec![("envoy".to_string(), 2)]);
        assert!(processes(0).is_empty());
    }

    /// The figures with owners learnt from records, as the BPF owners
    /// program writes them: one record per process holding each socket whose
    /// owner `sample.owners` knows, plus `others` holding it too.
    fn aggregate_from_records(
        sample: &NamespaceSample,
        limits: &Limits,
        others: &[(u64, u32, &str)],
    ) -> Snapshot {
        let mut aggregator = Aggregator::new(
            sample.range,
            sample.reserved.clone(),
            sample.time_wait_reuse,
            *limits,
        );
        aggregator.set_owner_lookup(OwnerLookup::Records);
        for socket in &sample.sockets {
            aggregator.add(socket);
        }
        let comm = |name: &str| {
            // The comm whose label `name` is.
            let name = name.strip_suffix(" (a process)").unwrap_or(name);
            let mut comm = [0u8; 16];
            comm[..name.len()].copy_from_slice(name.as_bytes());
            comm
        };
        let mut records = Vec::new();
        for socket in &sample.sockets {
            let Some(&pid) = sample.owners.pid_by_inode.get(&socket.inode) else {
                continue;
            };
            let holders: Vec<(u32, &str)> =
                std::iter::once((pid, sample.owners.comm_by_pid[&pid].as_str()))
                    .chain(
                        others
                            .iter()
                            .filter(|(inode, _, _)| *inode == socket.inode)
                            .map(|(_, pid, name)| (*pid, *name)),
                    )
                    .collect();
            for &(tgid, name) in &holders {
                records.push(OwnedSocket {
                    tgid,
                    comm: comm(name),
                    netns: 1,
                    inode: socket.inode,
                    protocol: socket.state.protocol(),
                    port: socket.local.port(),
                    shared: holders.len() > 1,
                });
            }
        }
        // Records come in process order.
        records.sort_by_key(|record| record.tgid);
        for record in &records {
            aggregator.add_owner(record);
        }
        aggregator.finish(&SocketOwners::default(), &sample.report)
    }

    #[test]
    fn owners_from_records_give_the_figures_owners_by_inode_give() {
        let mut sockets = vec![
            tcp(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 1),
            tcp(TcpState::Listen, "0.0.0.0:40050", "0.0.0.0:0", 2),
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80", 3),
            tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.8:80", 4),
            udp(UdpState::Connected, "10.0.0.1:40001", "10.0.0.9:53", 5),
            tcp(TcpState::Established, "10.0.0.1:40002", "10.0.0.9:80", 6),
            tcp(TcpState::TimeWait, "10.0.0.1:40003", "10.0.0.9:80", 0),
            // Bound before connecting, held by curl; and in TIME_WAIT.
            tcp(TcpState::Established, "10.0.0.1:40010", "10.0.0.9:80", 7),
            tcp(TcpState::TimeWait, "10.0.0.1:40011", "10.0.0.9:80", 0),
            // A socket no process was found holding.
            tcp(TcpState::Established, "10.0.0.1:40020", "10.0.0.9:80", 8),
            // Held by envoy and, inherited, by a worker with a higher pid.
            tcp(TcpState::Established, "10.0.0.1:40030", "10.0.0.9:80", 9),
            udp(UdpState::Unconnected, "0.0.0.0:53", "0.0.0.0:0", 10),
        ];
        sockets[7].binding = PortBinding::Bind;
        sockets[8].binding = PortBinding::Bind;
        let mut sample = sample(sockets, "");
        sample.report.sources = PerProtocol {
            tcp: SourceKind::Bpf,
            udp: SourceKind::Netlink,
        };
        for (inode, pid) in [
            (1, 10),
            (2, 12),
            (3, 10),
            (4, 10),
            (5, 10),
            (6, 11),
            (7, 11),
            (9, 10),
            (10, 13),
        ] {
            sample.owners.pid_by_inode.insert(inode, pid);
        }
        for (pid, comm) in [
            (10, "envoy"),
            (11, "curl"),
            (12, "unknown"),
            (13, "dnsmasq"),
        ] {
            sample
                .owners
                .comm_by_pid
                .insert(pid, crate::model::process_label(comm.to_string()));
        }
        let others = [(9, 20, "worker"), (1, 21, "worker")];
        for top in [10, 2, 0] {
            let limits = Limits {
                processes_top: top,
                ..Limits::default()
            };
            let by_inode = aggregate(&sample, &limits);
            let mut from_records = aggregate_from_records(&sample, &limits, &others);
            assert_eq!(from_records.owner_lookup, OwnerLookup::Records);
            from_records.owner_lookup = OwnerLookup::ByInode;
            assert_eq!(from_records, by_inode, "processes_top {top}");
        }
        let figures = aggregate(&sample, &Limits::default());
        let named: Vec<(&str, u32)> = figures
            .processes
            .iter()
            .map(|usage| (usage.process.as_str(), usage.ports_used))
            .collect();
        assert_eq!(
            named,
            [
                ("envoy", 3),
                ("curl", 2),
                ("none", 2),
                ("unknown", 1),
                ("unknown (a process)", 1),
            ]
        );
        assert_eq!(figures.bind_before_connect_processes.len(), 2);
    }

    #[test]
    fn listeners_beyond_the_limit_are_summed_keeping_those_in_range() {
        let mut sockets = Vec::new();
        for port in 1000..1010u16 {
            sockets.push(tcp(
                TcpState::Listen,
                &format!("0.0.0.0:{port}"),
                "0.0.0.0:0",
                1,
            ));
            sockets.push(tcp(TcpState::Listen, &format!("[::]:{port}"), "[::]:0", 2));
        }
        sockets.push(tcp(TcpState::Listen, "0.0.0.0:40007", "0.0.0.0:0", 3));
        let limits = Limits {
            listeners_max: 5,
            ..Limits::default()
        };
        let snapshot = aggregate(&sample(sockets, ""), &limits);
        assert_eq!(snapshot.listeners.len(), 5);
        assert_eq!(snapshot.listeners_omitted, 16);
        assert!(
            snapshot
                .listeners
                .iter()
                .any(|l| l.port == 40007 && l.in_ephemeral_range)
        );
        let mut sorted = snapshot.listeners.clone();
        sorted.sort_by_key(|listener| (listener.protocol, listener.address, listener.port));
        assert_eq!(sorted, snapshot.listeners, "listed in order");
    }
}
