//! What the aggregate gives: the figures of one namespace (`Snapshot`),
//! what finishing one needs (`Finishing`), and the bounds it keeps within
//! (`Limits`).

use super::*;

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
