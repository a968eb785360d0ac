//! Turns what the kernel reported into the figures the exporter publishes.
//!
//! Pure: socket records, the range and the reserved ports in, a `Snapshot`
//! out. Every metric's meaning is decided here; the README's metric table
//! states the same definitions for users.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use crate::model::{
    ListenQueue, NamespaceIdentity, NamespaceSample, PortRange, PortSet, Protocol, SocketRecord,
    SocketState, SourceKind, TcpState, UdpState,
};

/// The process label of a socket whose owner could not be resolved.
pub const UNKNOWN_PROCESS: &str = "unknown";
/// The process label of sockets that no process holds (TIME_WAIT, orphans).
pub const NO_PROCESS: &str = "none";

/// Bounds on the families whose size follows the host, not the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Destinations listed by ports used; 0 lists none.
    pub destinations_top: usize,
    /// Processes listed by ports held; 0 lists none.
    pub processes_top: usize,
    /// Listener groups listed; the rest are summed as omitted.
    pub listeners_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            destinations_top: 10,
            processes_top: 10,
            listeners_max: 1000,
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
    /// TCP occupancy, then UDP occupancy.
    pub occupancy: [ProtocolOccupancy; 2],
    /// Listening sockets, grouped by protocol, address, port and process:
    /// those inside the range first, at most `Limits::listeners_max` groups.
    pub listeners: Vec<Listener>,
    /// Sockets of the listener groups beyond `Limits::listeners_max`.
    pub listeners_omitted: u64,
    /// Unreserved TCP ports inside the range that no destination can share:
    /// held by listeners or by sockets bound but not connected.
    pub exclusive_ports: u32,
    /// Destinations with the most ports used, at most
    /// `Limits::destinations_top`, most used first.
    pub destinations: Vec<DestinationUsage>,
    /// How many distinct destinations there are.
    pub destination_count: u64,
    /// The most ports any one destination uses, over all destinations.
    pub busiest_destination_ports: u32,
    /// (Most ports any one destination uses + exclusive ports) / capacity:
    /// 1 when `connect()` to that destination fails. 1 when the capacity is 0.
    pub destination_max_used_ratio: f64,
    /// Processes holding the most ports, at most `Limits::processes_top`,
    /// most first.
    pub processes: Vec<ProcessUsage>,
    /// Where the TCP sockets, then the UDP sockets, were read from.
    pub sources: [SourceKind; 2],
    /// The namespace, when several are sampled; `None` labels nothing.
    pub namespace: Option<NamespaceIdentity>,
}

impl Snapshot {
    /// The ports `connect()` can still give a destination that uses `used`:
    /// the capacity less the exclusive ports and its own.
    pub fn headroom(&self, used: u32) -> u32 {
        self.capacity
            .saturating_sub(self.exclusive_ports)
            .saturating_sub(used)
    }
}

/// Where outgoing TCP connections go, as the kernel tells them apart when it
/// picks a local port: the local address, the remote address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// The local address connections leave from.
    pub local_address: IpAddr,
    /// The remote address.
    pub remote_address: IpAddr,
    /// The remote port.
    pub remote_port: u16,
}

/// How many ports of the range connections to one destination use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationUsage {
    /// The destination.
    pub destination: Destination,
    /// Distinct unreserved local ports inside the range its sockets hold.
    pub ports_used: u32,
}

/// How many ports of the range one process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUsage {
    /// The process's `comm`, `unknown`, or `none` for sockets no process holds.
    pub process: String,
    /// Distinct (protocol, port) pairs, unreserved and inside the range.
    pub ports_used: u32,
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

/// Sockets that listen on one protocol, address and port, owned by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// TCP for LISTEN sockets, UDP for unconnected bound sockets.
    pub protocol: Protocol,
    /// The local address.
    pub address: IpAddr,
    /// The local port.
    pub port: u16,
    /// The owner's `comm`, or `unknown`.
    pub process: String,
    /// How many sockets share this address and port (an SO_REUSEPORT group).
    pub sockets: u64,
    /// A TCP listener on an unreserved port inside the ephemeral range.
    pub in_ephemeral_range: bool,
    /// The accept queue summed over the group, where the source reports it.
    pub accept_queue: Option<AcceptQueue>,
}

/// A listener group's accept queue, summed over its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcceptQueue {
    /// Connections waiting for `accept()`.
    pub waiting: u64,
    /// The most that may wait.
    pub limit: u64,
}

impl AcceptQueue {
    fn add(&mut self, queue: ListenQueue) {
        self.waiting += u64::from(queue.waiting);
        self.limit += u64::from(queue.limit);
    }
}

/// What a listener group adds up while the sockets are walked.
#[derive(Default)]
struct ListenerTally {
    sockets: u64,
    accept_queue: Option<AcceptQueue>,
}

/// Computes the figures of one namespace sample.
pub fn aggregate(sample: &NamespaceSample, limits: &Limits) -> Snapshot {
    let range = sample.range;
    let reserved = &sample.reserved;
    let reserved_in_range = reserved.count_in(range);
    let capacity = range.port_count() - reserved_in_range;
    let is_ephemeral = |port: u16| range.contains(port) && !reserved.contains(port);

    let mut used = [PortSet::new(), PortSet::new()];
    let mut tcp_states = [0u64; TcpState::ALL.len() + 1];
    let mut udp_states = [0u64; UdpState::ALL.len()];
    let mut scanned = [0u64; 2];
    let mut listeners: BTreeMap<(Protocol, IpAddr, u16, &str), ListenerTally> = BTreeMap::new();
    let mut exclusive = PortSet::new();
    let mut process_ports: Vec<(&str, Protocol, u16)> = Vec::new();

    for socket in &sample.sockets {
        let protocol = socket.state.protocol();
        let index = protocol_index(protocol);
        let port = socket.local.port();
        scanned[index] += 1;
        if range.contains(port) {
            match socket.state {
                SocketState::Tcp(state) => tcp_states[tcp_index(state)] += 1,
                SocketState::Udp(state) => udp_states[udp_index(state)] += 1,
            }
        }
        if is_ephemeral(port) {
            used[index].insert(port);
            if matches!(
                socket.state,
                SocketState::Tcp(TcpState::Listen | TcpState::BoundInactive)
            ) {
                exclusive.insert(port);
            }
            if limits.processes_top > 0 {
                let process = if socket.inode == 0 {
                    NO_PROCESS
                } else {
                    sample
                        .owners
                        .process_name(socket.inode)
                        .unwrap_or(UNKNOWN_PROCESS)
                };
                process_ports.push((process, protocol, port));
            }
        }
        if is_listener(socket, &is_ephemeral) {
            let process = sample
                .owners
                .process_name(socket.inode)
                .unwrap_or(UNKNOWN_PROCESS);
            let tally = listeners
                .entry((protocol, socket.local.ip(), port, process))
                .or_default();
            tally.sockets += 1;
            if let Some(queue) = socket.listen_queue {
                tally.accept_queue.get_or_insert_default().add(queue);
            }
        }
    }

    let occupancy = Protocol::ALL.map(|protocol| {
        let index = protocol_index(protocol);
        let ports_used = used[index].len();
        let sockets_by_state = match protocol {
            Protocol::Tcp => {
                // procfs cannot see bound-but-inactive sockets: report the
                // state only where the source can, rather than a false 0.
                let sees_bound_inactive = sample.sources[index] == SourceKind::Netlink;
                TcpState::ALL
                    .iter()
                    .copied()
                    .chain(sees_bound_inactive.then_some(TcpState::BoundInactive))
                    .map(|state| (SocketState::Tcp(state), tcp_states[tcp_index(state)]))
                    .collect()
            }
            Protocol::Udp => UdpState::ALL
                .iter()
                .map(|&state| (SocketState::Udp(state), udp_states[udp_index(state)]))
                .collect(),
        };
        ProtocolOccupancy {
            protocol,
            ports_used,
            used_ratio: used_ratio(ports_used, capacity),
            sockets_by_state,
            sockets_scanned: scanned[index],
        }
    });

    let mut listeners: Vec<Listener> = listeners
        .into_iter()
        .map(|((protocol, address, port, process), tally)| Listener {
            protocol,
            address,
            port,
            process: process.to_string(),
            sockets: tally.sockets,
            in_ephemeral_range: protocol == Protocol::Tcp && is_ephemeral(port),
            accept_queue: tally.accept_queue,
        })
        .collect();
    // Listeners inside the range matter most: past the limit, they are kept
    // first (a stable sort keeps the rest in order), then listed in order.
    let mut listeners_omitted = 0;
    if listeners.len() > limits.listeners_max {
        listeners.sort_by_key(|listener| !listener.in_ephemeral_range);
        listeners_omitted = listeners[limits.listeners_max..]
            .iter()
            .map(|listener| listener.sockets)
            .sum();
        listeners.truncate(limits.listeners_max);
        listeners.sort_by(|a, b| {
            (a.protocol, a.address, a.port, &a.process)
                .cmp(&(b.protocol, b.address, b.port, &b.process))
        });
    }

    let exclusive_ports = exclusive.len();
    let (destinations, destination_count, largest) =
        destination_usage(sample, &is_ephemeral, &exclusive, limits.destinations_top);
    let destination_max_used_ratio = used_ratio(largest + exclusive_ports, capacity);

    Snapshot {
        range,
        reserved_in_range,
        capacity,
        occupancy,
        listeners,
        listeners_omitted,
        exclusive_ports,
        destinations,
        destination_count,
        busiest_destination_ports: largest,
        destination_max_used_ratio,
        processes: top_processes(process_ports, limits.processes_top),
        sources: sample.sources,
        namespace: None,
    }
}

/// Counts the ports each destination uses: distinct unreserved local ports
/// inside the range of TCP sockets connected to it (every state but LISTEN,
/// CLOSE and bound-inactive). Sockets on exclusive ports are left out: no
/// `connect()` can pick such a port, so they are the accepted ends of a
/// listener's connections, or sockets bound before connecting.
///
/// Returns the `top` destinations most used first (ties by destination),
/// how many destinations there are, and the largest count of all.
fn destination_usage(
    sample: &NamespaceSample,
    is_ephemeral: &impl Fn(u16) -> bool,
    exclusive: &PortSet,
    top: usize,
) -> (Vec<DestinationUsage>, u64, u32) {
    let mut pairs: Vec<(Destination, u16)> = sample
        .sockets
        .iter()
        .filter(|socket| match socket.state {
            SocketState::Tcp(state) => !matches!(
                state,
                TcpState::Listen | TcpState::Close | TcpState::BoundInactive
            ),
            SocketState::Udp(_) => false,
        })
        .filter(|socket| {
            let port = socket.local.port();
            is_ephemeral(port) && !exclusive.contains(port)
        })
        .map(|socket| {
            let destination = Destination {
                local_address: socket.local.ip(),
                remote_address: socket.remote.ip(),
                remote_port: socket.remote.port(),
            };
            (destination, socket.local.port())
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut usage: Vec<DestinationUsage> = Vec::new();
    for (destination, _) in pairs {
        match usage.last_mut() {
            Some(last) if last.destination == destination => last.ports_used += 1,
            _ => usage.push(DestinationUsage {
                destination,
                ports_used: 1,
            }),
        }
    }
    let count = usage.len() as u64;
    let largest = usage
        .iter()
        .map(|usage| usage.ports_used)
        .max()
        .unwrap_or(0);
    usage.sort_by(|a, b| {
        b.ports_used
            .cmp(&a.ports_used)
            .then(a.destination.cmp(&b.destination))
    });
    usage.truncate(top);
    (usage, count, largest)
}

/// Counts distinct (protocol, port) pairs per process, and keeps the `top`
/// most first (ties by name).
fn top_processes(mut ports: Vec<(&str, Protocol, u16)>, top: usize) -> Vec<ProcessUsage> {
    ports.sort_unstable();
    ports.dedup();
    let mut usage: Vec<ProcessUsage> = Vec::new();
    for (process, _, _) in ports {
        match usage.last_mut() {
            Some(last) if last.process == process => last.ports_used += 1,
            _ => usage.push(ProcessUsage {
                process: process.to_string(),
                ports_used: 1,
            }),
        }
    }
    usage.sort_by(|a, b| {
        b.ports_used
            .cmp(&a.ports_used)
            .then(a.process.cmp(&b.process))
    });
    usage.truncate(top);
    usage
}

/// The inodes of the sockets whose owning process the figures name: the
/// listeners', and with `per_process` every socket holding an ephemeral port.
/// Attribution is asked for these only.
pub fn sockets_needing_owners(sample: &NamespaceSample, per_process: bool) -> HashSet<u64> {
    let is_ephemeral = |port: u16| sample.range.contains(port) && !sample.reserved.contains(port);
    sample
        .sockets
        .iter()
        .filter(|socket| {
            socket.inode != 0
                && (is_listener(socket, &is_ephemeral)
                    || (per_process && is_ephemeral(socket.local.port())))
        })
        .map(|socket| socket.inode)
        .collect()
}

/// Whether a socket is a listener: TCP in LISTEN, or an unconnected bound UDP
/// socket whose port is not one the kernel hands out automatically (an
/// unconnected UDP socket on an ephemeral port is almost always a client).
fn is_listener(socket: &SocketRecord, is_ephemeral: &impl Fn(u16) -> bool) -> bool {
    match socket.state {
        SocketState::Tcp(state) => state == TcpState::Listen,
        SocketState::Udp(state) => {
            let port = socket.local.port();
            state == UdpState::Unconnected && port != 0 && !is_ephemeral(port)
        }
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

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

fn tcp_index(state: TcpState) -> usize {
    state as usize
}

fn udp_index(state: UdpState) -> usize {
    state as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SocketOwners;
    use crate::source::sysctl::parse_reserved_ports;

    fn tcp(state: TcpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
        SocketRecord {
            state: SocketState::Tcp(state),
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode,
            listen_queue: None,
        }
    }

    fn udp(state: UdpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
        SocketRecord {
            state: SocketState::Udp(state),
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode,
            listen_queue: None,
        }
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
            sources: [SourceKind::Procfs; 2],
        }
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
        assert_eq!(snapshot.occupancy[0].ports_used, 0);
        assert_eq!(snapshot.occupancy[0].used_ratio, 0.0);
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
        let tcp = &snapshot.occupancy[0];
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
        let udp = &snapshot.occupancy[1];
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
        assert_eq!(snapshot.occupancy[0].ports_used, 99);
        assert_eq!(snapshot.occupancy[0].used_ratio, 1.0);
    }

    #[test]
    fn range_with_no_capacity_is_full() {
        let snapshot = aggregate(&sample(vec![], "40000-40099"), &Limits::default());
        assert_eq!(snapshot.capacity, 0);
        assert_eq!(snapshot.occupancy[0].used_ratio, 1.0);
        assert_eq!(snapshot.occupancy[1].used_ratio, 1.0);
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
        use crate::source::procfs::parse_fixture;
        use crate::source::sysctl::parse_port_range;
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/netns/{name}",
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
            sockets,
            owners: SocketOwners::default(),
            sources: [SourceKind::Procfs; 2],
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

        let tcp = &snapshot.occupancy[0];
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

        let udp = &snapshot.occupancy[1];
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
        let wanted = sockets_needing_owners(&sample(sockets, "40050"), false);
        assert_eq!(wanted, HashSet::from([1, 3, 5]));
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
        assert_eq!(snapshot.exclusive_ports, 2);
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
        assert_eq!(snapshot.headroom(40), 99 - 2 - 40);
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
        assert_eq!(snapshot.occupancy[0].ports_used, 44);
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
