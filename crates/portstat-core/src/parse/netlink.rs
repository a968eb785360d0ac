//! The sock_diag wire format, pure: dump requests and their filter bytecode
//! built into bytes, reply datagrams parsed into socket records. Nothing
//! here touches a socket, so every function is tested on bytes: constructed
//! messages, and datagrams recorded from a real kernel (`fixtures/netlink/`). The
//! layouts are those of `include/uapi/linux/{netlink,sock_diag,inet_diag}.h`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::UdpState;
use crate::model::{
    ListenQueue, PortRange, Protocol, SocketRecord, SocketState, TcpState, TimeWait,
};
use crate::rules::time_wait_age_ms;

/// `SOCK_DIAG_BY_FAMILY`, the request type with `struct inet_diag_req_v2`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`, the older TCP request with `struct inet_diag_req`,
/// which dumps IPv4 and IPv6 sockets together.
const TCPDIAG_GETSOCK: u16 = 18;
/// `NLMSG_ERROR`: an error, or an acknowledgement when its code is 0.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST_FLAGS: u16 = 0x1 | 0x100 | 0x200;
/// `NLM_F_DUMP_INTR`: the dump saw the table change under it.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `INET_DIAG_REQ_BYTECODE`, the request attribute that carries the filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `INET_DIAG_BC_S_GE` and `INET_DIAG_BC_S_LE`: source port at least / at most.
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;

/// `struct nlmsghdr`.
pub const HEADER_LENGTH: usize = 16;
/// `struct inet_diag_req_v2`.
pub const REQUEST_LENGTH: usize = 56;
/// `struct inet_diag_req`.
const COMPAT_REQUEST_LENGTH: usize = 60;
/// `struct inet_diag_msg`.
const MESSAGE_LENGTH: usize = 72;
/// Two `struct inet_diag_bc_op` per comparison, two comparisons.
pub const BYTECODE_LENGTH: usize = 16;

/// The receive buffer. The kernel sizes a dump's datagrams after the largest
/// buffer a reader has offered, up to 32 KiB. Measured on 50,000 sockets
/// (`strace -c` and `perf stat -r 10` of `--once`): 8 KiB took 398 `recv()`
/// calls a sample, 32 KiB 104, 64 KiB 104 as well, for the same CPU within
/// noise (50.9, 49.9 and 50.6 ms). 32 KiB is the smallest with the fewest.
pub const RECEIVE_BUFFER_LENGTH: usize = 32 * 1024;

/// The TCP state bits (`1 << state`) that a dump asks for.
pub mod state_mask {
    /// `TCP_LISTEN`.
    pub const LISTEN: u32 = 1 << 10;
    /// `TCP_CLOSE`. No socket in the connection table is in this state (the
    /// kernel unhashes a socket before it enters it), so it is not asked for.
    pub const CLOSE: u32 = 1 << 7;
    /// Every state a connection can be in: `TCP_ESTABLISHED` (1) to
    /// `TCP_CLOSING` (11) but `TCP_LISTEN` and `TCP_CLOSE`, and
    /// `TCP_NEW_SYN_RECV` (12).
    pub const CONNECTIONS: u32 = ((1 << 13) - 2) & !LISTEN & !CLOSE;
    /// `TCP_BOUND_INACTIVE` (13, Linux 6.5+): bound, neither listening nor
    /// connected. Such sockets come back only from a dump that asks for
    /// this bit, and carry state 7 (`TCP_CLOSE`) in the reply; older
    /// kernels ignore the bit.
    pub const BOUND_INACTIVE: u32 = 1 << 13;
    /// UDP sockets carry `TCP_ESTABLISHED` when connected.
    pub const UDP_CONNECTED: u32 = 1 << 1;
    /// UDP sockets carry `TCP_CLOSE` when not connected.
    pub const UDP_UNCONNECTED: u32 = 1 << 7;
}

/// One dump request: which sockets of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dump {
    /// `AF_INET` or `AF_INET6` for a `SOCK_DIAG_BY_FAMILY` dump; `None` for
    /// a TCP dump of both families with `TCPDIAG_GETSOCK`.
    pub family: Option<u8>,
    /// The protocol to dump.
    pub protocol: Protocol,
    /// The state bits to ask for.
    pub states: u32,
    /// Only sockets whose source port is inside this range, if any.
    pub source_ports: Option<PortRange>,
}

impl Dump {
    /// Whether bound-but-inactive TCP sockets may be among the replies.
    fn asks_bound_inactive(&self) -> bool {
        self.protocol == Protocol::Tcp && self.states & state_mask::BOUND_INACTIVE != 0
    }
}

/// The dumps that together give every socket the exporter needs for one
/// protocol: listeners anywhere, everything else inside the range. With
/// `both_families`, TCP takes one `TCPDIAG_GETSOCK` dump of each kind
/// instead of one per family.
///
/// `bound_inactive` adds TCP's bound-but-inactive sockets, which costs the
/// kernel a walk of the bind table besides the connection table.
pub fn dumps_for(
    protocol: Protocol,
    range: PortRange,
    both_families: bool,
    bound_inactive: bool,
) -> Vec<Dump> {
    let families: &[Option<u8>] = if protocol == Protocol::Tcp && both_families {
        &[None]
    } else {
        &[
            Some(crate::linux::AF_INET as u8),
            Some(crate::linux::AF_INET6 as u8),
        ]
    };
    let mut dumps = Vec::with_capacity(4);
    for &family in families {
        let dump = |states, source_ports| Dump {
            family,
            protocol,
            states,
            source_ports,
        };
        match protocol {
            Protocol::Tcp => {
                dumps.push(dump(state_mask::LISTEN, None));
                let bound = if bound_inactive {
                    state_mask::BOUND_INACTIVE
                } else {
                    0
                };
                dumps.push(dump(state_mask::CONNECTIONS | bound, Some(range)));
            }
            // Unconnected sockets outside the range are listeners, so they
            // come from everywhere. Connected ones outside it matter to no
            // figure, but filtering them out would cost a second walk of the
            // UDP table, which is shared by every namespace: one dump takes
            // both, unfiltered.
            Protocol::Udp => dumps.push(dump(
                state_mask::UDP_UNCONNECTED | state_mask::UDP_CONNECTED,
                None,
            )),
        }
    }
    dumps
}

/// Writes the request for `dump` into `request`, replacing its content.
pub fn build_request(dump: &Dump, sequence: u32, request: &mut Vec<u8>) {
    request.clear();
    let attribute_length = dump.source_ports.map_or(0, |_| 4 + BYTECODE_LENGTH);
    let (kind, body_length) = match dump.family {
        Some(_) => (SOCK_DIAG_BY_FAMILY, REQUEST_LENGTH),
        None => (TCPDIAG_GETSOCK, COMPAT_REQUEST_LENGTH),
    };
    let total = HEADER_LENGTH + body_length + attribute_length;
    // struct nlmsghdr
    request.extend_from_slice(&(total as u32).to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&DUMP_REQUEST_FLAGS.to_ne_bytes());
    request.extend_from_slice(&sequence.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    match dump.family {
        Some(family) => {
            // struct inet_diag_req_v2: family, protocol, ext (none), pad,
            // states, and an all-zero inet_diag_sockid (no exact match).
            let protocol = match dump.protocol {
                Protocol::Tcp => crate::linux::IPPROTO_TCP as u8,
                Protocol::Udp => crate::linux::IPPROTO_UDP as u8,
            };
            request.extend_from_slice(&[family, protocol, 0, 0]);
            request.extend_from_slice(&dump.states.to_ne_bytes());
            request.extend_from_slice(&[0; 48]);
        }
        None => {
            // struct inet_diag_req: family (the kernel dumps both whatever
            // it says), address lengths, ext (none), an all-zero
            // inet_diag_sockid, states, and dbs (unused).
            request.extend_from_slice(&[crate::linux::AF_INET as u8, 0, 0, 0]);
            request.extend_from_slice(&[0; 48]);
            request.extend_from_slice(&dump.states.to_ne_bytes());
            request.extend_from_slice(&0u32.to_ne_bytes());
        }
    }
    if let Some(range) = dump.source_ports {
        // struct nlattr
        request.extend_from_slice(&((4 + BYTECODE_LENGTH) as u16).to_ne_bytes());
        request.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        request.extend_from_slice(&source_port_bytecode(range));
    }
}

/// The filter program "source port >= start and source port <= end".
///
/// Each comparison is an op `{code, yes, no}` followed by an op whose `no`
/// holds the port. The kernel accepts a socket when the program runs off its
/// exact end, and rejects it when a jump lands 4 bytes past the end: so `yes`
/// steps to the next comparison, `no` jumps to end + 4.
pub fn source_port_bytecode(range: PortRange) -> [u8; BYTECODE_LENGTH] {
    let op = |code: u8, yes: u8, no: u16| {
        let no = no.to_ne_bytes();
        [code, yes, no[0], no[1]]
    };
    let mut program = [0u8; BYTECODE_LENGTH];
    program[0..4].copy_from_slice(&op(INET_DIAG_BC_S_GE, 8, (BYTECODE_LENGTH + 4) as u16));
    program[4..8].copy_from_slice(&op(0, 0, range.start));
    program[8..12].copy_from_slice(&op(INET_DIAG_BC_S_LE, 8, (BYTECODE_LENGTH - 8 + 4) as u16));
    program[12..16].copy_from_slice(&op(0, 0, range.end));
    program
}

/// Runs a source-port filter program the way the kernel's
/// `inet_diag_bc_run` does, for the two comparisons it uses. For tests.
#[cfg(test)]
fn run_bytecode(program: &[u8], source_port: u16) -> bool {
    let mut offset = 0usize;
    let mut remaining = program.len() as isize;
    while remaining > 0 {
        let code = program[offset];
        let yes = program[offset + 1] as usize;
        let no = u16::from_ne_bytes([program[offset + 2], program[offset + 3]]) as usize;
        let port = u16::from_ne_bytes([program[offset + 6], program[offset + 7]]);
        let matched = match code {
            INET_DIAG_BC_S_GE => source_port >= port,
            INET_DIAG_BC_S_LE => source_port <= port,
            _ => panic!("unexpected op {code}"),
        };
        let step = if matched { yes } else { no };
        offset += step;
        remaining -= step as isize;
    }
    remaining == 0
}

/// What the kernel answered, or why reading failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A system call failed.
    #[error("netlink {call}: {source}")]
    System {
        /// The call that failed.
        call: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel refused the request with an error code.
    #[error("sock_diag dump of {dump} refused: {source}")]
    Refused {
        /// Which dump.
        dump: String,
        /// The error code, as the kernel gave it.
        source: io::Error,
    },
    /// A reply did not parse.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(String),
    /// The dump was interrupted by changes twice in a row.
    #[error("sock_diag dump of {0} was interrupted twice (NLM_F_DUMP_INTR)")]
    Interrupted(String),
}

/// Where a dump stands after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen; `interrupted` if any message of the dump
    /// carried `NLM_F_DUMP_INTR`.
    Done { interrupted: bool },
}

/// Why a dump datagram could not be walked.
#[derive(Debug)]
pub enum DatagramError<E> {
    /// The framing is not netlink's; what is wrong.
    Malformed(String),
    /// The kernel answered with this negative error code.
    Refused(i32),
    /// A message's own parser failed.
    Message(E),
}

/// Walks one datagram of any netlink dump answering `sequence`: hands
/// `take` the type and payload of each of the dump's data messages, and
/// handles what every dump shares, `NLMSG_DONE` (perhaps with an error),
/// `NLMSG_ERROR`, messages of an earlier sequence, and `NLM_F_DUMP_INTR`,
/// which `interrupted` accumulates across datagrams.
pub fn walk_datagram<E>(
    datagram: &[u8],
    sequence: u32,
    interrupted: &mut bool,
    mut take: impl FnMut(u16, &[u8]) -> Result<(), E>,
) -> Result<Progress, DatagramError<E>> {
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < HEADER_LENGTH {
            return Err(DatagramError::Malformed(format!(
                "{} bytes left, less than a message header",
                rest.len()
            )));
        }
        let length = read_u32(rest, 0) as usize;
        let kind = read_u16(rest, 4);
        let flags = read_u16(rest, 6);
        let message_sequence = read_u32(rest, 8);
        if length < HEADER_LENGTH || length > rest.len() {
            return Err(DatagramError::Malformed(format!(
                "message length {length} with {} bytes left",
                rest.len()
            )));
        }
        let payload = &rest[HEADER_LENGTH..length];
        // Messages are padded to 4 bytes; the last one may not be.
        rest = &rest[align4(length).min(rest.len())..];
        if message_sequence != sequence {
            // Left over from an earlier, abandoned dump.
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match kind {
            NLMSG_DONE => {
                // A dump may end with a negative error code in DONE.
                if payload.len() >= 4 {
                    let code = read_i32(payload, 0);
                    if code < 0 {
                        return Err(DatagramError::Refused(code));
                    }
                }
                return Ok(Progress::Done {
                    interrupted: *interrupted,
                });
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DatagramError::Malformed("short NLMSG_ERROR".into()));
                }
                let code = read_i32(payload, 0);
                if code < 0 {
                    return Err(DatagramError::Refused(code));
                }
            }
            kind => take(kind, payload).map_err(DatagramError::Message)?,
        }
    }
    Ok(Progress::More)
}

/// Parses one datagram of a dump answering `sequence`, appending the sockets
/// it carries. `interrupted` accumulates `NLM_F_DUMP_INTR` across datagrams.
pub fn parse_datagram(
    datagram: &[u8],
    sequence: u32,
    dump: &Dump,
    interrupted: &mut bool,
    sockets: &mut Vec<SocketRecord>,
) -> Result<Progress, NetlinkError> {
    walk_datagram(
        datagram,
        sequence,
        interrupted,
        |kind, payload| match kind {
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                sockets.push(parse_socket(payload, dump)?);
                Ok(())
            }
            other => Err(NetlinkError::Malformed(format!(
                "unexpected message type {other}"
            ))),
        },
    )
    .map_err(|error| match error {
        DatagramError::Malformed(reason) => NetlinkError::Malformed(reason),
        DatagramError::Refused(code) => refused(dump, code),
        DatagramError::Message(error) => error,
    })
}

fn refused(dump: &Dump, code: i32) -> NetlinkError {
    NetlinkError::Refused {
        dump: describe(dump),
        source: io::Error::from_raw_os_error(-code),
    }
}

/// Parses one `struct inet_diag_msg` (attributes after it are ignored).
fn parse_socket(payload: &[u8], dump: &Dump) -> Result<SocketRecord, NetlinkError> {
    if payload.len() < MESSAGE_LENGTH {
        return Err(NetlinkError::Malformed(format!(
            "inet_diag_msg of {} bytes, expected at least {MESSAGE_LENGTH}",
            payload.len()
        )));
    }
    let family = payload[0];
    let state_number = payload[1];
    // Ports are in network byte order; addresses are four 32-bit words,
    // also in network order, of which IPv4 uses the first.
    let source_port = u16::from_be_bytes([payload[4], payload[5]]);
    let destination_port = u16::from_be_bytes([payload[6], payload[7]]);
    let address = |offset: usize| -> Result<IpAddr, NetlinkError> {
        let bytes: [u8; 16] = payload[offset..offset + 16]
            .try_into()
            .map_err(|_| NetlinkError::Malformed("short address".into()))?;
        match i32::from(family) {
            crate::linux::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            crate::linux::AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(NetlinkError::Malformed(format!("address family {other}"))),
        }
    };
    let local = SocketAddr::new(address(8)?, source_port);
    let remote = SocketAddr::new(address(24)?, destination_port);
    let receive_queue = read_u32(payload, 56);
    let send_queue = read_u32(payload, 60);
    let inode = u64::from(read_u32(payload, 68));
    let interface = read_u32(payload, 40);
    let state = match dump.protocol {
        // Bound-but-inactive sockets are reported as TCP_CLOSE (or, on some
        // kernels, TCP_BOUND_INACTIVE); connections are never in TCP_CLOSE.
        Protocol::Tcp if dump.asks_bound_inactive() && matches!(state_number, 7 | 13) => {
            SocketState::Tcp(TcpState::BoundInactive)
        }
        Protocol::Tcp => {
            SocketState::Tcp(TcpState::from_kernel(state_number).ok_or_else(|| {
                NetlinkError::Malformed(format!("unknown TCP state {state_number}"))
            })?)
        }
        Protocol::Udp => SocketState::Udp(if state_number == 1 {
            UdpState::Connected
        } else {
            UdpState::Unconnected
        }),
    };
    let mut record = SocketRecord::new(state, local, remote, inode);
    record.interface = interface;
    // For listeners the kernel reports the accept queue and its limit (the
    // backlog) in the queue fields.
    if state == SocketState::Tcp(TcpState::Listen) {
        record.listen_queue = Some(ListenQueue {
            waiting: receive_queue,
            limit: send_queue,
        });
    }
    if state == SocketState::Tcp(TcpState::TimeWait) {
        // For TIME_WAIT, idiag_expires is what is left of the timer, in
        // milliseconds; the timer was set to TCP_TIMEWAIT_LEN on entry.
        let expires = read_u32(payload, 52);
        record.time_wait = Some(TimeWait {
            age_ms: time_wait_age_ms(expires),
            timestamps: None,
            bound_device: Some(read_i32(payload, 40)),
        });
    }
    Ok(record)
}

/// The dump in words, for errors: protocol, family and states.
pub fn describe(dump: &Dump) -> String {
    let family = match dump.family.map(i32::from) {
        Some(crate::linux::AF_INET) => "inet",
        Some(_) => "inet6",
        None => "inet and inet6",
    };
    format!(
        "{} {family} states {:#x}",
        dump.protocol.label(),
        dump.states
    )
}

/// `length` rounded up to netlink's 4-byte alignment.
pub fn align4(length: usize) -> usize {
    (length + 3) & !3
}

/// The native-endian u16 at `offset`.
pub fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_ne_bytes([bytes[offset], bytes[offset + 1]])
}

/// The native-endian u32 at `offset`.
pub fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// The native-endian i32 at `offset`.
pub fn read_i32(bytes: &[u8], offset: usize) -> i32 {
    read_u32(bytes, offset) as i32
}

/// The datagrams of a dump recorded from a real kernel, `folder/name.bin`
/// below the crate (see the folder's `README.md`): each after its length
/// as a little-endian u32.
#[cfg(test)]
pub fn recorded_datagrams(folder: &str, name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/{folder}/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap();
    let mut datagrams = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let (length, after) = rest.split_at(4);
        let length = u32::from_le_bytes(length.try_into().unwrap()) as usize;
        datagrams.push(after[..length].to_vec());
        rest = &after[length..];
    }
    datagrams
}

/// 2,000 byte strings of up to 300 pseudo-random bytes (xorshift, fixed
/// seed), for parsers that must never panic.
#[cfg(test)]
pub fn pseudo_random_datagrams() -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..2000).map(move |_| {
        let length = (state % 300) as usize;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

#[cfg(test)]
mod tests;
