//! The kernel's rules for handing out local TCP ports, one function per
//! rule, each named after the kernel function it mirrors and saying which
//! kernels behave that way.
//!
//! Pure: what decides whether `connect()` gets a port, with no kernel
//! involved. `aggregate` applies these rules to every socket of a sample;
//! `tests/headroom.rs` (the truth lab) proves them against real
//! `connect()` outcomes on every kernel of the matrix.
//!
//! The rules, in the order `connect()` meets them:
//! - which local ports a scan for a destination visits at all
//!   (`inet_hash_connect_scan`);
//! - which ports are skipped for every destination, because `bind()` made
//!   their bind bucket (`exclusive_reason`);
//! - which sockets compete for a 4-tuple: the destination a socket counts
//!   toward (`connect_destination`), an IPv4-mapped IPv6 peer being the
//!   IPv4 peer it maps;
//! - when a TIME_WAIT socket of the same 4-tuple may be taken over
//!   (`tcp_twsk_unique`).

use std::net::IpAddr;

use crate::model::{PortBinding, PortRange, SocketRecord, SocketState, TcpState, TimeWaitReuse};

/// Why a port inside the range is exclusive: `connect()` skips it for every
/// destination, because `bind()` made its bind bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExclusiveReason {
    /// A TCP listener holds it.
    Listener,
    /// A TCP socket is bound to it and neither listens nor is connected.
    Bound,
    /// TCP sockets bound before they connected hold it, connected or in
    /// TIME_WAIT; seen only by the BPF source.
    BindBeforeConnect,
}

impl ExclusiveReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [ExclusiveReason; 3] = [
        ExclusiveReason::Listener,
        ExclusiveReason::Bound,
        ExclusiveReason::BindBeforeConnect,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ExclusiveReason::Listener => "listener",
            ExclusiveReason::Bound => "bound",
            ExclusiveReason::BindBeforeConnect => "bind_before_connect",
        }
    }
}

/// Why a TCP socket makes its port exclusive, if it does, as
/// `__inet_hash_connect` decides (every kernel): it skips a port whose bind
/// bucket has `fastreuse >= 0 || fastreuseport >= 0`, which only `bind()`
/// (`inet_csk_get_port`) leaves; `connect()` makes buckets with both -1.
/// Every TCP socket on a port shares its bucket, so one socket bound before
/// it connected makes the port exclusive for all. A listener or a socket
/// bound and idle was bound by `bind()`, whatever the source can see.
pub fn exclusive_reason(socket: &SocketRecord) -> Option<ExclusiveReason> {
    match socket.state {
        SocketState::Tcp(TcpState::Listen) => Some(ExclusiveReason::Listener),
        SocketState::Tcp(TcpState::BoundInactive) => Some(ExclusiveReason::Bound),
        SocketState::Tcp(_) if socket.binding == PortBinding::Bind => {
            Some(ExclusiveReason::BindBeforeConnect)
        }
        _ => None,
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

/// The destination whose 4-tuples a connected TCP socket competes for.
///
/// `tcp_v6_connect` hands a connection to an IPv4-mapped address
/// (`::ffff:a.b.c.d`) to `tcp_v4_connect` (every kernel): the socket is
/// hashed with its IPv4 addresses, and `__inet_check_established` compares
/// address pairs without the family (`inet_match`), so such a socket and an
/// IPv4 socket to the same peer share one 4-tuple space. Both count toward
/// the IPv4 destination.
pub fn connect_destination(socket: &SocketRecord) -> Destination {
    Destination {
        local_address: ipv6_addr_v4mapped(socket.local.ip()),
        remote_address: ipv6_addr_v4mapped(socket.remote.ip()),
        remote_port: socket.remote.port(),
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address maps, as the kernel's
/// `ipv6_addr_v4mapped` tells it; any other address as it is.
pub fn ipv6_addr_v4mapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The interface index of `lo`, which the kernel fixes at 1.
const LOOPBACK_INTERFACE: i32 = 1;

/// Whether `connect()` to the socket's destination may take over its
/// 4-tuple now, as `tcp_twsk_unique` decides: reuse is on for it
/// (`tcp_tw_reuse` 1, or 2 with a loopback address at either end or the
/// socket bound to `lo`), the connection carried timestamps (assumed from
/// `tcp_timestamps` where the source cannot tell), and it entered TIME_WAIT
/// more than `tcp_tw_reuse_delay` ago.
///
/// Versions: mode 2 exists since Linux 4.19; the delay is 1 s before
/// Linux 6.13, which has no `tcp_tw_reuse_delay` (`TimeWaitReuse`'s
/// default), and is read from the TIME_WAIT socket's `tw_entry_stamp` from
/// 6.13 on, in milliseconds, where older kernels compare whole seconds of
/// `tw_ts_recent_stamp`.
pub fn tcp_twsk_unique(socket: &SocketRecord, reuse: &TimeWaitReuse) -> bool {
    let (SocketState::Tcp(TcpState::TimeWait), Some(time_wait)) = (socket.state, socket.time_wait)
    else {
        return false;
    };
    let allowed = match reuse.mode {
        1 => true,
        2 => {
            is_loopback(socket.local.ip())
                || is_loopback(socket.remote.ip())
                || time_wait.bound_device == Some(LOOPBACK_INTERFACE)
        }
        _ => false,
    };
    allowed && time_wait.timestamps.unwrap_or(reuse.timestamps) && time_wait.age_ms > reuse.delay_ms
}

/// Loopback as `tcp_twsk_unique` sees it: 127.0.0.0/8, `::1`, and
/// 127.0.0.0/8 mapped into IPv6.
fn is_loopback(address: IpAddr) -> bool {
    match ipv6_addr_v4mapped(address) {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Which ports of the range one `connect()` visits, as `__inet_hash_connect`
/// scans them (Linux 5.18 and later, the kernels of the matrix among them).
///
/// The scan visits `remaining` ports, the range's length rounded down to an
/// even number (`remaining &= ~1U`), from an even offset into the range
/// (`offset &= ~1U`) drawn from a secret per-destination perturbation that
/// every successful `connect()` moves on. It tries the ports of the first
/// port's parity, then the others, stepping by two and wrapping by
/// `remaining`. On a range of an odd length `2k + 1` that leaves out one
/// port of the first one's parity: the last when the offset is 0, the
/// first otherwise. Which one a given `connect()` leaves out cannot be known
/// from outside the kernel, except with three ports, whose only offset is 0.
/// (A socket's own `IP_LOCAL_PORT_RANGE`, Linux 6.3 and later, scans every
/// port from 6.8 on; the exporter cannot see that option.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanReach {
    /// Every port: a range of an even length, or of one port.
    Whole,
    /// Every port but the last: three ports, scanned two from the first.
    AllButLast {
        /// The last port of the range.
        last: u16,
    },
    /// Every port but the first or the last, whichever the destination's
    /// secret offset leaves out at that moment: five ports or more, an odd
    /// number of them.
    AllButFirstOrLast {
        /// The first port of the range.
        first: u16,
        /// The last port of the range.
        last: u16,
    },
}

/// How `__inet_hash_connect` scans `range`.
pub fn inet_hash_connect_scan(range: PortRange) -> ScanReach {
    let length = range.port_count();
    if length <= 1 || length.is_multiple_of(2) {
        ScanReach::Whole
    } else if length == 3 {
        ScanReach::AllButLast { last: range.end }
    } else {
        ScanReach::AllButFirstOrLast {
            first: range.start,
            last: range.end,
        }
    }
}

impl ScanReach {
    /// The ports a scan may leave out.
    pub fn edge_ports(self) -> impl Iterator<Item = u16> {
        let (first, last) = match self {
            ScanReach::Whole => (None, None),
            ScanReach::AllButLast { last } => (None, Some(last)),
            ScanReach::AllButFirstOrLast { first, last } => (Some(first), Some(last)),
        };
        first.into_iter().chain(last)
    }

    /// The fewest and the most `connect()` calls to one destination that
    /// get a port, when `free` ports are free for it and `free_edges` of
    /// them are among `edge_ports`. A scan leaves out one port at a time,
    /// so the calls fill every free port but, at worst, one edge port that
    /// the last call's scan leaves out.
    pub fn connects(self, free: u32, free_edges: u32) -> (u32, u32) {
        match self {
            ScanReach::Whole => (free, free),
            ScanReach::AllButLast { .. } => {
                let reachable = free.saturating_sub(free_edges);
                (reachable, reachable)
            }
            ScanReach::AllButFirstOrLast { .. } => (free.saturating_sub(free_edges.min(1)), free),
        }
    }

    /// How many more `connect()` calls than the fewest may get a port, at
    /// most, for any destination: 1 where the secret offset decides, else 0.
    pub fn slack(self) -> u32 {
        match self {
            ScanReach::AllButFirstOrLast { .. } => 1,
            ScanReach::Whole | ScanReach::AllButLast { .. } => 0,
        }
    }
}

/// A kernel release, as far as the rules tell kernels apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl KernelVersion {
    /// Parses `uname -r` (`/proc/sys/kernel/osrelease`): `6.1.0-57-amd64`,
    /// `6.12.118+deb12-amd64`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }

    /// Whether `inet_diag` reports TCP sockets bound and neither listening
    /// nor connected, as `TCP_BOUND_INACTIVE`: Linux 6.5 and later. Before,
    /// a netlink dump does not list them, and nothing but a walk of the bind
    /// hash finds them.
    pub fn inet_diag_reports_bound_inactive(self) -> bool {
        self >= KernelVersion { major: 6, minor: 5 }
    }
}

/// `TCP_TIMEWAIT_LEN`: how long a socket stays in TIME_WAIT, in milliseconds.
pub const TIME_WAIT_LENGTH_MS: u32 = 60_000;

/// How long a port whose connection was closed first stays unusable to a
/// new `connect()` toward the same destination, in milliseconds, toward a
/// loopback destination or another: TIME_WAIT's length, or, where
/// `tcp_twsk_unique` lets `connect()` take the TIME_WAIT socket over (mode
/// 1 everywhere, mode 2 on loopback, with timestamps), the reuse delay.
pub fn port_hold_ms(reuse: &TimeWaitReuse, loopback: bool) -> u32 {
    let allowed = match reuse.mode {
        1 => true,
        2 => loopback,
        _ => false,
    };
    if allowed && reuse.timestamps {
        reuse.delay_ms.min(TIME_WAIT_LENGTH_MS)
    } else {
        TIME_WAIT_LENGTH_MS
    }
}

/// The age of a TIME_WAIT socket whose timer has `remaining_ms` left. A
/// retransmitted FIN re-arms the timer, so the age may read low, never high.
pub fn time_wait_age_ms(remaining_ms: u32) -> u32 {
    TIME_WAIT_LENGTH_MS.saturating_sub(remaining_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TimeWait;

    #[test]
    fn ports_are_held_for_time_wait_unless_reuse_takes_it_over() {
        let reuse = |mode, timestamps| TimeWaitReuse {
            mode,
            delay_ms: 1000,
            timestamps,
        };
        assert_eq!(port_hold_ms(&reuse(0, true), true), 60_000);
        assert_eq!(port_hold_ms(&reuse(1, true), false), 1000);
        assert_eq!(port_hold_ms(&reuse(2, true), true), 1000);
        assert_eq!(port_hold_ms(&reuse(2, true), false), 60_000);
        assert_eq!(port_hold_ms(&reuse(1, false), false), 60_000);
    }

    fn tcp(state: TcpState, local: &str, remote: &str) -> SocketRecord {
        SocketRecord::new(
            SocketState::Tcp(state),
            local.parse().unwrap(),
            remote.parse().unwrap(),
            7,
        )
    }

    fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    /// Runs `__inet_hash_connect`'s scan loop as the kernel writes it, for
    /// `offset` (the perturbation, before it is rounded), on a range of
    /// `length` ports from 0: the ports it visits, in order.
    fn kernel_scan(length: u32, offset: u32) -> Vec<u32> {
        let (low, high) = (0u32, length);
        let mut remaining = high - low;
        if remaining > 1 {
            remaining &= !1;
        }
        let mut offset = (offset % remaining) & !1;
        let mut visited = Vec::new();
        loop {
            let mut port = low + offset;
            let mut i = 0;
            while i < remaining {
                if port >= high {
                    port -= remaining;
                }
                visited.push(port);
                i += 2;
                port += 2;
            }
            offset += 1;
            if !((offset & 1) == 1 && remaining > 1) {
                return visited;
            }
        }
    }

    #[test]
    fn the_scan_model_matches_the_kernel_loop_on_every_offset() {
        for length in 1..=41u32 {
            let scan = inet_hash_connect_scan(range(100, 100 + length as u16 - 1));
            let edges: Vec<u32> = scan
                .edge_ports()
                .map(|port| u32::from(port) - 100)
                .collect();
            let mut left_out_ever = std::collections::BTreeSet::new();
            for offset in 0..(4 * length) {
                let mut visited = kernel_scan(length, offset);
                visited.sort_unstable();
                visited.dedup();
                let left_out: Vec<u32> = (0..length).filter(|p| !visited.contains(p)).collect();
                // At most one port is left out, and only an edge port.
                assert!(left_out.len() <= 1, "{length} ports: {left_out:?}");
                for port in &left_out {
                    assert!(edges.contains(port), "{length} ports leave out {port}");
                }
                left_out_ever.extend(left_out);
            }
            // Every edge port is left out by some offset: none is named in vain.
            assert_eq!(
                left_out_ever.into_iter().collect::<Vec<_>>(),
                edges,
                "{length} ports"
            );
        }
    }

    #[test]
    fn scans_by_range_length() {
        assert_eq!(
            inet_hash_connect_scan(range(40000, 40000)),
            ScanReach::Whole
        );
        assert_eq!(
            inet_hash_connect_scan(range(40000, 40059)),
            ScanReach::Whole
        );
        assert_eq!(
            inet_hash_connect_scan(range(40000, 40002)),
            ScanReach::AllButLast { last: 40002 }
        );
        assert_eq!(
            inet_hash_connect_scan(range(10000, 65000)),
            ScanReach::AllButFirstOrLast {
                first: 10000,
                last: 65000
            }
        );
        // The default range has 28,232 ports.
        assert_eq!(
            inet_hash_connect_scan(range(32768, 60999)),
            ScanReach::Whole
        );
    }

    #[test]
    fn connects_leave_at_most_one_edge_port_unfilled() {
        let whole = ScanReach::Whole;
        assert_eq!(whole.connects(10, 0), (10, 10));
        assert_eq!(whole.slack(), 0);
        let three = ScanReach::AllButLast { last: 2 };
        // The last port is never reached: exact.
        assert_eq!(three.connects(3, 1), (2, 2));
        assert_eq!(three.connects(2, 0), (2, 2));
        assert_eq!(three.connects(1, 1), (0, 0));
        assert_eq!(three.slack(), 0);
        let odd = ScanReach::AllButFirstOrLast { first: 0, last: 4 };
        assert_eq!(odd.connects(5, 2), (4, 5));
        assert_eq!(odd.connects(3, 1), (2, 3));
        assert_eq!(odd.connects(3, 0), (3, 3));
        assert_eq!(odd.connects(0, 0), (0, 0));
        assert_eq!(odd.slack(), 1);
    }

    #[test]
    fn bind_made_buckets_are_exclusive() {
        let mut bound_first = tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80");
        assert_eq!(exclusive_reason(&bound_first), None);
        bound_first.binding = PortBinding::Connect;
        assert_eq!(exclusive_reason(&bound_first), None);
        bound_first.binding = PortBinding::Bind;
        assert_eq!(
            exclusive_reason(&bound_first),
            Some(ExclusiveReason::BindBeforeConnect)
        );
        let listener = tcp(TcpState::Listen, "0.0.0.0:40002", "0.0.0.0:0");
        assert_eq!(exclusive_reason(&listener), Some(ExclusiveReason::Listener));
        let idle = tcp(TcpState::BoundInactive, "0.0.0.0:40003", "0.0.0.0:0");
        assert_eq!(exclusive_reason(&idle), Some(ExclusiveReason::Bound));
        let udp = SocketRecord::new(
            SocketState::Udp(crate::model::UdpState::Unconnected),
            "0.0.0.0:40004".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            1,
        );
        assert_eq!(exclusive_reason(&udp), None);
    }

    #[test]
    fn mapped_peers_share_the_ipv4_destination() {
        let v4 = tcp(TcpState::Established, "127.0.0.1:40001", "127.0.0.1:8080");
        let mapped = tcp(
            TcpState::Established,
            "[::ffff:127.0.0.1]:40002",
            "[::ffff:127.0.0.1]:8080",
        );
        assert_eq!(connect_destination(&v4), connect_destination(&mapped));
        assert_eq!(
            connect_destination(&mapped).remote_address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        // Real IPv6 stays IPv6; so does the IPv4-compatible form the kernel
        // does not map.
        let v6 = tcp(TcpState::Established, "[::1]:40003", "[::1]:8080");
        assert_eq!(
            connect_destination(&v6).remote_address,
            "::1".parse::<IpAddr>().unwrap()
        );
        let compatible = tcp(TcpState::Established, "[::1]:40003", "[::7f00:1]:8080");
        assert!(connect_destination(&compatible).remote_address.is_ipv6());
    }

    /// A TIME_WAIT socket with what the BPF source tells of it.
    fn time_wait(
        local: &str,
        remote: &str,
        age_ms: u32,
        timestamps: bool,
        device: i32,
    ) -> SocketRecord {
        let mut socket = tcp(TcpState::TimeWait, local, remote);
        socket.inode = 0;
        socket.time_wait = Some(TimeWait {
            age_ms,
            timestamps: Some(timestamps),
            bound_device: Some(device),
        });
        socket
    }

    #[test]
    fn time_wait_reuse_follows_tcp_twsk_unique() {
        let reuse = |mode, delay_ms, timestamps| TimeWaitReuse {
            mode,
            delay_ms,
            timestamps,
        };
        let loopback = time_wait("127.0.0.1:40001", "127.0.0.1:8080", 1500, true, 0);
        let remote = time_wait("10.0.0.1:40001", "10.0.0.9:80", 1500, true, 0);
        let mapped = time_wait(
            "[::ffff:127.0.0.1]:40001",
            "[::ffff:10.0.0.9]:80",
            1500,
            true,
            0,
        );
        let on_lo = time_wait("10.0.0.1:40001", "10.0.0.9:80", 1500, true, 1);
        // Mode 0 never; 1 always; 2 for loopback at either end or bound to lo.
        for socket in [&loopback, &remote, &mapped, &on_lo] {
            assert!(!tcp_twsk_unique(socket, &reuse(0, 1000, true)));
            assert!(tcp_twsk_unique(socket, &reuse(1, 1000, true)));
        }
        assert!(tcp_twsk_unique(&loopback, &reuse(2, 1000, true)));
        assert!(tcp_twsk_unique(&mapped, &reuse(2, 1000, true)));
        assert!(tcp_twsk_unique(&on_lo, &reuse(2, 1000, true)));
        assert!(!tcp_twsk_unique(&remote, &reuse(2, 1000, true)));
        // Only once older than the delay, strictly.
        assert!(!tcp_twsk_unique(&loopback, &reuse(2, 1500, true)));
        assert!(tcp_twsk_unique(&loopback, &reuse(2, 1499, true)));
        // Without timestamps, never; the sysctl stands in where the source
        // cannot tell.
        let untimed = time_wait("127.0.0.1:40001", "127.0.0.1:8080", 1500, false, 0);
        assert!(!tcp_twsk_unique(&untimed, &reuse(1, 1000, true)));
        let mut unseen = loopback;
        unseen.time_wait = Some(TimeWait {
            timestamps: None,
            bound_device: None,
            ..unseen.time_wait.unwrap()
        });
        assert!(tcp_twsk_unique(&unseen, &reuse(2, 1000, true)));
        assert!(!tcp_twsk_unique(&unseen, &reuse(2, 1000, false)));
        // Other states, and TIME_WAIT with no detail, are never taken over.
        let mut established = loopback;
        established.state = SocketState::Tcp(TcpState::Established);
        assert!(!tcp_twsk_unique(&established, &reuse(1, 0, true)));
        let bare = tcp(TcpState::TimeWait, "127.0.0.1:40001", "127.0.0.1:8080");
        assert!(!tcp_twsk_unique(&bare, &reuse(1, 0, true)));
    }

    #[test]
    fn kernel_releases_parse_and_order() {
        let debian_6_1 = KernelVersion::parse("6.1.0-57-amd64").unwrap();
        assert_eq!(debian_6_1, KernelVersion { major: 6, minor: 1 });
        assert!(!debian_6_1.inet_diag_reports_bound_inactive());
        let debian_6_12 = KernelVersion::parse("6.12.118+deb12-amd64\n").unwrap();
        assert!(debian_6_12.inet_diag_reports_bound_inactive());
        assert!(
            KernelVersion::parse("6.5.0")
                .unwrap()
                .inet_diag_reports_bound_inactive()
        );
        assert!(
            !KernelVersion::parse("5.15.0-91-generic")
                .unwrap()
                .inet_diag_reports_bound_inactive()
        );
        assert_eq!(KernelVersion::parse("x"), None);
        assert_eq!(KernelVersion::parse("6"), None);
    }
}
