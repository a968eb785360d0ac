//! The domain records that flow from `source` into `aggregate`.
//!
//! These types carry no I/O and no metric semantics: they describe what the
//! kernel reported for one network namespace.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// A transport protocol with its own port space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Every protocol, in the order metrics list them.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The `protocol` label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `T` for each protocol, picked by name (`.tcp`, `.udp`) or by a
/// `Protocol` (`per[protocol]`), never by a number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerProtocol<T> {
    pub tcp: T,
    pub udp: T,
}

impl<T> PerProtocol<T> {
    /// The value `make` gives each protocol.
    pub fn from_fn(mut make: impl FnMut(Protocol) -> T) -> Self {
        PerProtocol {
            tcp: make(Protocol::Tcp),
            udp: make(Protocol::Udp),
        }
    }

    /// The values, in the order of `Protocol::ALL`.
    pub fn iter(&self) -> std::array::IntoIter<&T, 2> {
        [&self.tcp, &self.udp].into_iter()
    }

    /// The values, in the order of `Protocol::ALL`, to change.
    pub fn iter_mut(&mut self) -> std::array::IntoIter<&mut T, 2> {
        [&mut self.tcp, &mut self.udp].into_iter()
    }

    /// Each protocol with its value, in the order of `Protocol::ALL`.
    pub fn by_protocol(&self) -> impl Iterator<Item = (Protocol, &T)> {
        [(Protocol::Tcp, &self.tcp), (Protocol::Udp, &self.udp)].into_iter()
    }

    /// Each protocol's value made from its own.
    pub fn map<U>(self, mut each: impl FnMut(T) -> U) -> PerProtocol<U> {
        PerProtocol {
            tcp: each(self.tcp),
            udp: each(self.udp),
        }
    }
}

impl<T: Clone> PerProtocol<T> {
    /// `value` for both protocols.
    pub fn both(value: T) -> Self {
        PerProtocol {
            tcp: value.clone(),
            udp: value,
        }
    }
}

impl<T> IntoIterator for PerProtocol<T> {
    type Item = T;
    type IntoIter = std::array::IntoIter<T, 2>;

    fn into_iter(self) -> Self::IntoIter {
        [self.tcp, self.udp].into_iter()
    }
}

impl<'a, T> IntoIterator for &'a PerProtocol<T> {
    type Item = &'a T;
    type IntoIter = std::array::IntoIter<&'a T, 2>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T> std::ops::Index<Protocol> for PerProtocol<T> {
    type Output = T;

    fn index(&self, protocol: Protocol) -> &T {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }
}

impl<T> std::ops::IndexMut<Protocol> for PerProtocol<T> {
    fn index_mut(&mut self, protocol: Protocol) -> &mut T {
        match protocol {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }
}

/// A TCP socket state, as the kernel names it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    /// Bound to a port but neither listening nor connected (the kernel's
    /// `TCP_BOUND_INACTIVE`, reported over netlink since Linux 6.5; procfs
    /// does not list such sockets).
    BoundInactive,
}

impl TcpState {
    /// Every state `/proc/net/tcp` can show, in the kernel's numeric order.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// Maps the kernel's state number to a state. `TCP_NEW_SYN_RECV` (12), a
    /// request socket, is reported as `SynRecv`, as `ss` and `/proc/net/tcp` do.
    pub fn from_kernel(number: u8) -> Option<TcpState> {
        let state = match number {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 | 12 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            _ => return None,
        };
        Some(state)
    }

    /// The `state` label value: the kernel's name in lower case.
    pub fn label(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
            TcpState::BoundInactive => "bound_inactive",
        }
    }
}

/// A UDP socket state: whether `connect()` fixed its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UdpState {
    Connected,
    Unconnected,
}

impl UdpState {
    /// Every state, in the order metrics list them.
    pub const ALL: [UdpState; 2] = [UdpState::Connected, UdpState::Unconnected];

    /// The `state` label value.
    pub fn label(self) -> &'static str {
        match self {
            UdpState::Connected => "connected",
            UdpState::Unconnected => "unconnected",
        }
    }
}

/// A socket's protocol together with its state in that protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketState {
    Tcp(TcpState),
    Udp(UdpState),
}

impl SocketState {
    /// The protocol whose port space the socket lives in.
    pub fn protocol(self) -> Protocol {
        match self {
            SocketState::Tcp(_) => Protocol::Tcp,
            SocketState::Udp(_) => Protocol::Udp,
        }
    }

    /// The `state` label value.
    pub fn label(self) -> &'static str {
        match self {
            SocketState::Tcp(state) => state.label(),
            SocketState::Udp(state) => state.label(),
        }
    }
}

/// A listener's accept queue, as the netlink source reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenQueue {
    /// Connections completed and waiting for `accept()`.
    pub waiting: u32,
    /// The most that may wait: the `listen()` backlog, capped by
    /// `net.core.somaxconn`.
    pub limit: u32,
}

/// Who made the bind bucket of a TCP socket's port, which decides whether
/// `connect()` may pick that port for another destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortBinding {
    /// The source cannot tell (netlink and procfs cannot).
    #[default]
    Unseen,
    /// `connect()` picked the port (`fastreuse` and `fastreuseport` both
    /// -1): other destinations may share it.
    Connect,
    /// `bind()` made the bucket: `connect()` skips the port for every
    /// destination (`__inet_hash_connect`).
    Bind,
}

/// What the kernel tells of a TIME_WAIT socket that decides whether
/// `connect()` may take its 4-tuple over (`tcp_twsk_unique`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWait {
    /// Milliseconds since the socket entered TIME_WAIT.
    pub age_ms: u32,
    /// Whether the connection carried TCP timestamps (the kernel's
    /// `tw_ts_recent_stamp` is set), where the source can tell.
    pub timestamps: Option<bool>,
    /// The interface the socket is bound to (`tw_bound_dev_if`), where the
    /// source can tell; 0 for none.
    pub bound_device: Option<i32>,
}

/// One socket of one network namespace, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketRecord {
    /// Protocol and state.
    pub state: SocketState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port; unspecified with port 0 when not connected.
    pub remote: SocketAddr,
    /// The socket's inode number; 0 for sockets no file refers to (TIME_WAIT).
    pub inode: u64,
    /// For TCP listeners read over netlink or BPF, the accept queue.
    pub listen_queue: Option<ListenQueue>,
    /// For TCP, who made the port's bind bucket, where the source can tell.
    pub binding: PortBinding,
    /// For TCP sockets in TIME_WAIT, what decides their reuse.
    pub time_wait: Option<TimeWait>,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`, or the scope
    /// of a link-local address), by index; 0 for none or where the source
    /// cannot tell (procfs).
    pub interface: u32,
}

impl SocketRecord {
    /// A socket with only what every source reports: no accept queue, no
    /// binding, no TIME_WAIT detail.
    pub fn new(state: SocketState, local: SocketAddr, remote: SocketAddr, inode: u64) -> Self {
        SocketRecord {
            state,
            local,
            remote,
            inode,
            listen_queue: None,
            binding: PortBinding::Unseen,
            time_wait: None,
            interface: 0,
        }
    }
}

/// Where a protocol's sockets were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `/proc/net/*` text tables.
    Procfs,
    /// `NETLINK_SOCK_DIAG` dumps.
    Netlink,
    /// A BPF `iter/tcp` program, with a netlink dump for bound-only sockets.
    Bpf,
}

impl SourceKind {
    /// The `source` label value.
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Procfs => "procfs",
            SourceKind::Netlink => "netlink",
            SourceKind::Bpf => "bpf",
        }
    }

    /// Whether the source sees who made each port's bind bucket, so that
    /// ports bound before `connect()` are known to be exclusive.
    pub fn sees_bindings(self) -> bool {
        self == SourceKind::Bpf
    }
}

/// The ephemeral port range, `net.ipv4.ip_local_port_range`, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range.
    pub end: u16,
}

impl PortRange {
    /// Whether `port` lies inside the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    /// The number of ports in the range, reserved ones included.
    pub fn port_count(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
}

/// One socket a process holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedSocket {
    /// The process (its thread group id, in the initial PID namespace).
    pub tgid: u32,
    /// The process's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// The inode number of the socket's network namespace.
    pub netns: u32,
    /// The socket's inode.
    pub inode: u64,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The local port.
    pub port: u16,
    /// Whether the file is referred to more than once (several
    /// descriptors or processes, or a reference held for a moment): such a
    /// socket must be counted once, under its lowest process.
    pub shared: bool,
}

impl OwnedSocket {
    /// The process's `comm` as text (`comm_text`).
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&byte| byte == 0).unwrap_or(16);
        comm_text(&self.comm[..end])
    }
}

/// How the figures learn which process holds each socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLookup {
    /// By inode once the sockets are read, with `SocketOwners` (the walk of
    /// `/proc/<pid>/fd`): 16 bytes are kept meanwhile for each socket on a
    /// port of the range.
    ByInode,
    /// From records of the sockets each process holds, streamed after the
    /// sockets with `add_owner` (BPF `iter/task_file`): counts per port and
    /// ports per process are kept, nothing per socket.
    Records,
    /// Not at all (`--collector.processes=false`): every listener is
    /// `unknown`, and processes are not counted.
    Off,
}

impl OwnerLookup {
    /// The `source` label of `portstat_owners_source_info`, where owners
    /// are looked for.
    pub fn label(self) -> Option<&'static str> {
        match self {
            OwnerLookup::ByInode => Some("procfs"),
            OwnerLookup::Records => Some("bpf"),
            OwnerLookup::Off => None,
        }
    }
}

/// The inode of a socket that a file holds but whose inode was not read:
/// where owners are counted from records by port, only listeners' and
/// inspected sockets' inodes are needed (`InodeReading::Listeners`).
pub const INODE_NOT_READ: u64 = u64::MAX;

/// Where a source hands the sockets it reads, one at a time, so that no
/// table of sockets is ever held whole.
pub trait SocketSink {
    /// Takes one socket.
    fn add(&mut self, socket: &SocketRecord);

    /// Forgets every socket of `protocol` taken so far: the source reads
    /// them again (a dump the kernel interrupted, a source that gave way
    /// to the next).
    fn restart(&mut self, protocol: Protocol);
}

/// Keeps every socket: for tests, and for the few callers that need them.
impl SocketSink for Vec<SocketRecord> {
    fn add(&mut self, socket: &SocketRecord) {
        self.push(*socket);
    }

    fn restart(&mut self, protocol: Protocol) {
        self.retain(|socket| socket.state.protocol() != protocol);
    }
}

/// One connection tracking entry whose source the kernel rewrote (source
/// NAT or MASQUERADE), over TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatEntry {
    /// The protocol.
    pub protocol: Protocol,
    /// The address and port the connection leaves from once translated.
    pub nat: SocketAddr,
    /// Where the translated connection goes.
    pub remote: SocketAddr,
}

/// Where the conntrack source hands the source-NAT'd entries it reads, one
/// at a time.
pub trait NatSink {
    /// Takes one entry.
    fn add_nat(&mut self, entry: &NatEntry);

    /// Forgets every entry taken so far: the source reads them again.
    fn restart_nat(&mut self);
}

/// Keeps every entry: for tests.
impl NatSink for Vec<NatEntry> {
    fn add_nat(&mut self, entry: &NatEntry) {
        self.push(*entry);
    }

    fn restart_nat(&mut self) {
        self.clear();
    }
}

/// The connection tracking table's fill and failures, as the kernel counts
/// them for one network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackCounters {
    /// Entries in the table (`nf_conntrack_count`).
    pub entries: u64,
    /// Most entries the table takes (`nf_conntrack_max`), where readable.
    pub limit: Option<u64>,
    /// New connections whose entry could not be inserted, summed over CPUs.
    pub insert_failed: u64,
    /// Packets dropped because their connection could not be tracked,
    /// summed over CPUs.
    pub drop: u64,
}

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

/// A set of port numbers, one bit per port: 8 KiB once a port is in it,
/// nothing while it is empty (a namespace with no sockets costs no bitmap).
#[derive(Clone)]
pub struct PortSet {
    words: Option<Box<[u64; 1024]>>,
}

impl PortSet {
    /// The empty set.
    pub fn new() -> PortSet {
        PortSet { words: None }
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        let words = self.words.get_or_insert_with(|| Box::new([0; 1024]));
        words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    /// Adds every port from `first` to `last`, both included.
    pub fn insert_range(&mut self, first: u16, last: u16) {
        for port in first..=last {
            self.insert(port);
        }
    }

    /// Adds every port of `other`.
    pub fn insert_all(&mut self, other: &PortSet) {
        let Some(other) = &other.words else {
            return;
        };
        let words = self.words.get_or_insert_with(|| Box::new([0; 1024]));
        for (word, other) in words.iter_mut().zip(other.iter()) {
            *word |= other;
        }
    }

    /// Removes every port of `other`.
    pub fn remove_all(&mut self, other: &PortSet) {
        let (Some(words), Some(other)) = (&mut self.words, &other.words) else {
            return;
        };
        for (word, other) in words.iter_mut().zip(other.iter()) {
            *word &= !other;
        }
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.words
            .as_ref()
            .is_some_and(|words| words[usize::from(port >> 6)] & (1 << (port & 63)) != 0)
    }

    /// How many ports of `range` are in the set.
    pub fn count_in(&self, range: PortRange) -> u32 {
        if self.words.is_none() {
            return 0;
        }
        (range.start..=range.end)
            .filter(|&port| self.contains(port))
            .count() as u32
    }

    /// How many ports are in the set.
    pub fn len(&self) -> u32 {
        self.words
            .as_ref()
            .map_or(0, |words| words.iter().map(|word| word.count_ones()).sum())
    }

    /// Whether the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.words
            .as_ref()
            .is_none_or(|words| words.iter().all(|&word| word == 0))
    }

    /// The ports in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.words.iter().flat_map(|words| {
            words.iter().enumerate().flat_map(|(index, &word)| {
                let mut rest = word;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    Some((index as u32 * 64 + bit) as u16)
                })
            })
        })
    }
}

impl PartialEq for PortSet {
    fn eq(&self, other: &PortSet) -> bool {
        match (&self.words, &other.words) {
            (Some(a), Some(b)) => a == b,
            _ => self.is_empty() && other.is_empty(),
        }
    }
}

impl Eq for PortSet {}

/// Distinct ports, held compactly: a list while it is short, a `PortSet`
/// once the list would take more than the bitmap's 8 KiB. Memory follows the
/// ports held, never more than one bitmap.
#[derive(Debug, Clone, Default)]
pub struct PortList {
    /// Ports in the order they came, duplicates included, while short.
    list: Vec<u16>,
    /// The set, once the list grew past `PortList::LONGEST`.
    set: Option<PortSet>,
}

impl PortList {
    /// The longest list kept before it becomes a bitmap: 4,096 ports take
    /// the bitmap's 8 KiB.
    const LONGEST: usize = 4096;

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        if let Some(set) = &mut self.set {
            set.insert(port);
            return;
        }
        self.list.push(port);
        if self.list.len() > Self::LONGEST {
            self.list.sort_unstable();
            self.list.dedup();
            if self.list.len() > Self::LONGEST / 2 {
                let mut set = PortSet::new();
                for &port in &self.list {
                    set.insert(port);
                }
                self.set = Some(set);
                self.list = Vec::new();
            }
        }
    }

    /// Adds every port of `other`.
    pub fn extend(&mut self, other: PortList) {
        if self.list.is_empty() && self.set.is_none() {
            *self = other;
            return;
        }
        match other.set {
            Some(set) => set.iter().for_each(|port| self.insert(port)),
            None => other.list.into_iter().for_each(|port| self.insert(port)),
        }
    }

    /// How many distinct ports of `within` are in the list.
    pub fn count_within(&mut self, within: &PortSet) -> u32 {
        match &self.set {
            Some(set) => set.iter().filter(|&port| within.contains(port)).count() as u32,
            None => {
                self.list.sort_unstable();
                self.list.dedup();
                self.list
                    .iter()
                    .filter(|&&port| within.contains(port))
                    .count() as u32
            }
        }
    }

    /// How many distinct ports are in the list, leaving out `excluded`.
    pub fn count_without(&mut self, excluded: &PortSet) -> u32 {
        match &self.set {
            Some(set) => {
                let mut set = set.clone();
                set.remove_all(excluded);
                set.len()
            }
            None => {
                self.list.sort_unstable();
                self.list.dedup();
                self.list
                    .iter()
                    .filter(|&&port| !excluded.contains(port))
                    .count() as u32
            }
        }
    }
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet::new()
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<u16> = (0..=u16::MAX).filter(|&port| self.contains(port)).collect();
        formatter.debug_set().entries(ports).finish()
    }
}

/// The ports that `net.ipv4.ip_local_reserved_ports` keeps out of automatic
/// assignment.
pub type ReservedPorts = PortSet;

/// The namespace's TIME_WAIT reuse settings, as `tcp_twsk_unique` reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWaitReuse {
    /// `net.ipv4.tcp_tw_reuse`: 0 never, 1 always, 2 loopback only.
    pub mode: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` in milliseconds (1000 before Linux 6.13,
    /// which has no such setting).
    pub delay_ms: u32,
    /// Whether `net.ipv4.tcp_timestamps` is on: what is assumed of a
    /// TIME_WAIT socket whose own timestamp flag the source cannot see.
    pub timestamps: bool,
}

impl Default for TimeWaitReuse {
    /// The kernel's defaults.
    fn default() -> Self {
        TimeWaitReuse {
            mode: 2,
            delay_ms: 1000,
            timestamps: true,
        }
    }
}

/// Which process owns which socket inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOwners {
    /// Socket inode to the lowest pid that holds a descriptor for it.
    pub pid_by_inode: HashMap<u64, u32>,
    /// Process id to its `comm`.
    pub comm_by_pid: HashMap<u32, String>,
}

/// The process label of a socket whose owner could not be resolved.
pub const UNKNOWN_PROCESS: &str = "unknown";
/// The process label of sockets that no process holds (TIME_WAIT, orphans).
pub const NO_PROCESS: &str = "none";

/// The label of a process whose `comm` is empty (`prctl(PR_SET_NAME, "")`):
/// an empty label value is no label to Prometheus.
pub const EMPTY_PROCESS_NAME: &str = "(empty process name)";

/// The name a process goes by in labels: its `comm` as `comm_text` writes
/// it, unless that is empty or one of the built-in values, which then gains
/// ` (a process)`. The kernel cuts a `comm` at 15 bytes, so a name of 16 or
/// more without a `\` (which only `comm_text` writes) cannot be a real one.
pub fn process_label(comm: String) -> String {
    if comm.is_empty() {
        EMPTY_PROCESS_NAME.to_string()
    } else if comm == UNKNOWN_PROCESS || comm == NO_PROCESS {
        comm + " (a process)"
    } else {
        comm
    }
}

/// A `comm`'s bytes as text, one to one: UTF-8 as it is, but for `\`,
/// written `\\`, and each byte that is not UTF-8 as `\xNN`, so that two
/// different names never become one.
pub fn comm_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for character in chunk.valid().chars() {
            if character == '\\' {
                text.push_str("\\\\");
            } else {
                text.push(character);
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

impl SocketOwners {
    /// The `comm` of the process that owns the socket, if known.
    pub fn process_name(&self, inode: u64) -> Option<&str> {
        let pid = self.pid_by_inode.get(&inode)?;
        self.comm_by_pid.get(pid).map(String::as_str)
    }
}

/// Which network namespace figures belong to, as labels name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceIdentity {
    /// The namespace's inode number (`readlink /proc/<pid>/ns/net`).
    pub inode: u64,
    /// Its name under `/run/netns`, if it has one.
    pub name: Option<String>,
    /// The container whose process is in it, from that process's cgroup.
    pub container_id: Option<String>,
    /// The Kubernetes pod whose process is in it, from its cgroup.
    pub pod_uid: Option<String>,
}

/// Everything the kernel told about one network namespace in one sample.
#[derive(Debug, Clone)]
pub struct NamespaceSample {
    /// The ephemeral port range in force.
    pub range: PortRange,
    /// The reserved ports (anywhere, not only inside the range).
    pub reserved: ReservedPorts,
    /// The TIME_WAIT reuse settings in force.
    pub time_wait_reuse: TimeWaitReuse,
    /// Every TCP and UDP socket of the namespace.
    pub sockets: Vec<SocketRecord>,
    /// Owners of the sockets that could be resolved.
    pub owners: SocketOwners,
    /// What the read found besides the sockets.
    pub report: ReadReport,
}

/// What reading a namespace's sockets found besides the sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Where each protocol's sockets were read from.
    pub sources: PerProtocol<SourceKind>,
    /// For each protocol, whether the dump was skipped because the
    /// namespace's socket counts showed nothing to find.
    pub skipped: PerProtocol<bool>,
    /// The names of the interfaces link-local sockets are bound to, by
    /// index, as the namespace named them when it was read.
    pub interfaces: BTreeMap<u32, String>,
    /// Whether the namespace shares the host's TCP hash table, so that a
    /// dump of it walks every sharing namespace's sockets; `None` where the
    /// kernel does not say (before Linux 6.1).
    pub shares_host_tcp_table: Option<bool>,
    /// Whether every TCP socket bound and neither listening nor connected
    /// was seen: the source found them (a complete walk of the bind hash,
    /// or a netlink dump on a kernel that reports them), or the socket
    /// counts show that none can exist.
    pub bound_inactive_seen: bool,
    /// Whether the TCP sockets came from the one walk of the host's shared
    /// TCP tables for every namespace on them, rather than from a walk of
    /// this namespace's own.
    pub one_walk: bool,
}

#[cfg(test)]
impl ReadReport {
    /// The report of a read from `sources` that skipped nothing and saw
    /// every socket: for unit tests.
    pub fn complete(sources: PerProtocol<SourceKind>) -> ReadReport {
        ReadReport {
            sources,
            skipped: PerProtocol::both(false),
            interfaces: BTreeMap::new(),
            shares_host_tcp_table: None,
            bound_inactive_seen: true,
            one_walk: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_picks_its_own_value_in_every_form() {
        let mut per = PerProtocol::from_fn(|protocol| protocol.label().to_string());
        assert_eq!((per.tcp.as_str(), per.udp.as_str()), ("tcp", "udp"));
        for protocol in Protocol::ALL {
            assert_eq!(per[protocol], protocol.label());
        }
        let listed: Vec<Protocol> = per.by_protocol().map(|(protocol, _)| protocol).collect();
        assert_eq!(listed, Protocol::ALL);
        per[Protocol::Udp].push('!');
        assert_eq!(per.iter().cloned().collect::<Vec<_>>(), ["tcp", "udp!"]);
        assert_eq!(per.map(|label| label.len()), PerProtocol { tcp: 3, udp: 4 });
    }

    #[test]
    fn every_comm_has_a_label_of_its_own() {
        // Two names that are not UTF-8, which a lossy conversion made one.
        assert_eq!(comm_text(b"a\xff"), "a\\xff");
        assert_eq!(comm_text(b"a\xfe"), "a\\xfe");
        // A real backslash cannot pass for an escape.
        assert_eq!(comm_text(b"a\\xff"), "a\\\\xff");
        // A name cut inside a multibyte character keeps its whole ones.
        assert_eq!(comm_text("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(comm_text(&"caf\u{e9}".as_bytes()[..4]), "caf\\xc3");
        assert_eq!(process_label(comm_text(b"")), EMPTY_PROCESS_NAME);
        assert_eq!(comm_label(&[0; 16]), EMPTY_PROCESS_NAME);
        assert_eq!(process_label("none".to_string()), "none (a process)");
        assert_eq!(process_label("java".to_string()), "java");
    }
}
