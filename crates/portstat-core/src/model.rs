//! The domain records that flow from `source` into `aggregate`.
//!
//! These types carry no I/O and no metric semantics: they describe what the
//! kernel reported for one network namespace.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

mod failures;
mod ports;

pub use failures::{
    Connection, ConnectionNamer, ConnectionNames, Connector, FailureKind, NamespaceFailures,
    PortFailure, PortFailureCounts, PortFailureKey, comm_label,
};
pub use ports::{PortList, PortSet, ReservedPorts};

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
