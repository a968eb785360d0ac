//! The calls that found no free local port, as the kernel's maps count
//! them, and the connections named after the process that closed them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::{Protocol, comm_text, process_label};

/// A call that asked the kernel for a local port of the range and got none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// `connect()` (TCP: `EADDRNOTAVAIL`), or UDP's `connect()` or
    /// `sendto()`/`sendmsg()` whose automatic bind found no port (`EAGAIN`).
    Connect,
    /// `bind()` to port 0 (`EADDRINUSE`).
    Bind,
}

impl FailureKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [FailureKind; 2] = [FailureKind::Connect, FailureKind::Bind];

    /// The call, as people name it.
    pub fn call(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect()",
            FailureKind::Bind => "bind()",
        }
    }
}

/// Failures counted in the kernel toward one destination, from one
/// process name, since the exporter started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFailure {
    /// The network namespace's inode.
    pub netns: u64,
    /// What failed.
    pub kind: FailureKind,
    /// The protocol.
    pub protocol: Protocol,
    /// The local address the connection would have left from; an
    /// IPv4-mapped socket's is its IPv4 address.
    pub local_address: IpAddr,
    /// The remote address, IPv4 for an IPv4-mapped peer.
    pub remote_address: IpAddr,
    /// The remote port.
    pub remote_port: u16,
    /// Whether the calls came from AF_INET6 sockets to IPv4-mapped peers.
    pub ipv4_mapped: bool,
    /// The calling process's `comm`.
    pub process: String,
    /// The process id of the last call that failed.
    pub last_pid: u32,
    /// Whether the calls came from more than one process of that name
    /// (`last_pid` is then one of several).
    pub several_pids: bool,
    /// Failures so far; only rises.
    pub count: u64,
}

/// What tells failures apart in metrics: namespace, kind, protocol,
/// destination and process name.
pub type PortFailureKey<'a> = (u64, FailureKind, Protocol, IpAddr, IpAddr, u16, &'a str);

impl PortFailure {
    /// The failure's identity in metrics: IPv4 and IPv4-mapped calls to
    /// one destination are one.
    pub fn key(&self) -> PortFailureKey<'_> {
        (
            self.netns,
            self.kind,
            self.protocol,
            self.local_address,
            self.remote_address,
            self.remote_port,
            &self.process,
        )
    }
}

/// Every count of the failure counter at one moment, for every namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortFailureCounts {
    /// Failures by destination and process, as far as the kernel's map
    /// holds them, sorted by `PortFailure::key`.
    pub failures: Vec<PortFailure>,
    /// Failures by namespace, kind and protocol: every one counted, at
    /// least the sum of its namespace's `failures`.
    pub totals: BTreeMap<(u64, FailureKind, Protocol), u64>,
    /// TCP `connect()` calls that asked for a port, by namespace, as far
    /// as the kernel's map holds them.
    pub attempts: BTreeMap<u64, u64>,
    /// Such calls the kernel's map had no room to count by namespace.
    pub attempts_unrecorded: u64,
    /// Failures the kernel's map had no room to record by destination and
    /// process: counted here, and in their namespace's total.
    pub unrecorded: u64,
    /// TCP `connect()` calls that took a port of the range by the kernel's
    /// choice, by destination and process, as far as the kernel's map holds
    /// them, sorted by `PortFailure::key` (their `kind` is `Connect`).
    pub connects: Vec<PortFailure>,
    /// Such connects by namespace and protocol: every one counted.
    pub connect_totals: BTreeMap<(u64, Protocol), u64>,
    /// Connects the kernel's maps had no room to record by key.
    pub connects_unrecorded: u64,
}

impl PortFailureCounts {
    /// Adds `count` failures to a namespace's total.
    pub fn add_total(&mut self, netns: u64, kind: FailureKind, protocol: Protocol, count: u64) {
        *self.totals.entry((netns, kind, protocol)).or_default() += count;
    }

    /// Adds `count` connect attempts to a namespace's.
    pub fn add_connect_attempts(&mut self, netns: u64, count: u64) {
        *self.attempts.entry(netns).or_default() += count;
    }

    /// A namespace's failures of one kind and protocol.
    pub fn total(&self, netns: u64, kind: FailureKind, protocol: Protocol) -> u64 {
        self.totals
            .get(&(netns, kind, protocol))
            .copied()
            .unwrap_or(0)
    }

    /// A namespace's TCP connect attempts.
    pub fn connect_attempts(&self, netns: u64) -> u64 {
        self.attempts.get(&netns).copied().unwrap_or(0)
    }

    /// Whether every TCP connect attempt of namespace `netns` since the
    /// counts `previous` is counted: none found the kernel's map full, or
    /// the namespace has its entry since before.
    pub fn attempts_counted_since(&self, previous: &PortFailureCounts, netns: u64) -> bool {
        self.attempts_unrecorded == previous.attempts_unrecorded
            || (self.attempts.contains_key(&netns) && previous.attempts.contains_key(&netns))
    }

    /// The namespaces counted in any of the maps.
    pub fn namespaces(&self) -> Vec<u64> {
        let mut counted: Vec<u64> = self
            .totals
            .keys()
            .map(|&(netns, _, _)| netns)
            .chain(self.attempts.keys().copied())
            .chain(self.failures.iter().map(|failure| failure.netns))
            .chain(self.connect_totals.keys().map(|&(netns, _)| netns))
            .chain(self.connects.iter().map(|connect| connect.netns))
            .collect();
        counted.sort_unstable();
        counted.dedup();
        counted
    }
}

/// One namespace's failures, as its metrics show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceFailures {
    /// Every failure so far, by kind and protocol.
    pub totals: BTreeMap<(FailureKind, Protocol), u64>,
    /// Failures by destination and process, as far as the kernel's map
    /// holds them, IPv4-mapped calls merged into their IPv4 destination.
    pub by_destination_and_process: Vec<PortFailure>,
    /// TCP connect failures toward destinations whose headroom, at the
    /// sample before, was more than every connect attempt made since could
    /// have used: the model disagreed with the kernel.
    pub unpredicted: u64,
    /// TCP connects that took a port of the range, by protocol.
    pub connect_totals: BTreeMap<Protocol, u64>,
    /// Those connects by destination and process, as far as the kernel's
    /// map holds them, IPv4-mapped calls merged into their IPv4 destination.
    pub connects: Vec<PortFailure>,
}

impl NamespaceFailures {
    /// The namespace's failures that the kernel's map had no room to
    /// record by destination and process: its totals less what that map
    /// holds of it.
    pub fn failures_unrecorded(&self) -> u64 {
        let recorded: u64 = self
            .by_destination_and_process
            .iter()
            .map(|failure| failure.count)
            .sum();
        self.totals.values().sum::<u64>().saturating_sub(recorded)
    }

    /// The namespace's connects that the kernel's map had no room to
    /// record by destination and process.
    pub fn connects_unrecorded(&self) -> u64 {
        let recorded: u64 = self.connects.iter().map(|connect| connect.count).sum();
        self.connect_totals
            .values()
            .sum::<u64>()
            .saturating_sub(recorded)
    }
}

/// A TCP connection as its 4-tuple, IPv4-mapped addresses as IPv4: how a
/// socket is matched with the process that closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Connection {
    /// The local address and port.
    pub local: SocketAddr,
    /// The remote address and port.
    pub remote: SocketAddr,
}

impl Connection {
    /// The connection of a socket between `local` and `remote`.
    pub fn between(local: SocketAddr, remote: SocketAddr) -> Connection {
        let canonical =
            |address: SocketAddr| SocketAddr::new(address.ip().to_canonical(), address.port());
        Connection {
            local: canonical(local),
            remote: canonical(remote),
        }
    }
}

/// The process that closed a connection, as the kernel recorded it then:
/// the one that held the socket last, which connected it unless it was
/// handed the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connector {
    /// Its thread group id.
    pub tgid: u32,
    /// Its thread group leader's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Whether the socket was AF_INET6 with an IPv4-mapped peer.
    pub ipv4_mapped: bool,
}

impl Connector {
    /// The process label of the connector's `comm`.
    pub fn label(&self) -> String {
        comm_label(&self.comm)
    }
}

/// The label of a `comm` as the kernel's records carry it, NUL-padded.
pub fn comm_label(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&byte| byte == 0).unwrap_or(16);
    process_label(comm_text(&comm[..end]))
}

/// Who closed each connection of one namespace that the kernel still
/// remembers, read whole.
pub type ConnectionNames = HashMap<Connection, Connector>;

/// Who closed the connections of one namespace, asked one socket at a
/// time: the kernel's map itself, so that a sample holds no copy of it
/// however many connections it names, or names read whole
/// (`ConnectionNames`).
pub trait ConnectionNamer: Send {
    /// Who closed the connection of a TCP socket between `local` and
    /// `remote`, its addresses as read (an AF_INET6 socket's IPv4-mapped
    /// ones as such); `None` where nothing names it.
    fn name(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<Connector>;
}

impl ConnectionNamer for ConnectionNames {
    fn name(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<Connector> {
        self.get(&Connection::between(local, remote)).copied()
    }
}
