//! Unit tests of `netlink`.

use super::*;

const RANGE: PortRange = PortRange {
    start: 40000,
    end: 40099,
};

#[test]
fn bytecode_keeps_exactly_the_range() {
    let program = source_port_bytecode(RANGE);
    for port in [0, 1, 39999, 40100, 65535] {
        assert!(!run_bytecode(&program, port), "{port} accepted");
    }
    for port in [40000, 40001, 40050, 40099] {
        assert!(run_bytecode(&program, port), "{port} rejected");
    }
    let single = source_port_bytecode(PortRange { start: 5, end: 5 });
    assert!(run_bytecode(&single, 5));
    assert!(!run_bytecode(&single, 4));
    assert!(!run_bytecode(&single, 6));
}

#[test]
fn request_layout() {
    let dump = Dump {
        family: Some(crate::linux::AF_INET6 as u8),
        protocol: Protocol::Tcp,
        states: state_mask::CONNECTIONS,
        source_ports: Some(RANGE),
    };
    let mut request = Vec::new();
    build_request(&dump, 7, &mut request);
    assert_eq!(request.len(), 16 + 56 + 4 + 16);
    // The values the kernel's headers give, written out rather than
    // taken from the constants the request was built with.
    assert_eq!(read_u32(&request, 0) as usize, request.len());
    assert_eq!(
        read_u16(&request, 4),
        20,
        "SOCK_DIAG_BY_FAMILY, linux/sock_diag.h"
    );
    assert_eq!(read_u16(&request, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
    assert_eq!(read_u32(&request, 8), 7);
    assert_eq!(request[16], crate::linux::AF_INET6 as u8);
    assert_eq!(request[17], crate::linux::IPPROTO_TCP as u8);
    assert_eq!(request[18], 0, "no extensions");
    // Every TCP state of include/net/tcp_states.h but CLOSE (7), LISTEN
    // (10) and BOUND_INACTIVE (13): ESTABLISHED (1) to LAST_ACK (9),
    // CLOSING (11), NEW_SYN_RECV (12).
    let connection_states = [1, 2, 3, 4, 5, 6, 8, 9, 11, 12];
    let expected = connection_states
        .iter()
        .fold(0u32, |mask, state| mask | 1 << state);
    assert_eq!(read_u32(&request, 20), expected);
    assert_eq!(read_u16(&request, 72), 20, "attribute length");
    assert_eq!(
        read_u16(&request, 74),
        1,
        "INET_DIAG_REQ_BYTECODE, linux/inet_diag.h"
    );
    // The listener dump has no filter.
    let listeners = Dump {
        states: state_mask::LISTEN,
        source_ports: None,
        ..dump
    };
    build_request(&listeners, 8, &mut request);
    assert_eq!(request.len(), 16 + 56);
    // Both families at once: the older request, states after the sockid.
    let both = Dump {
        family: None,
        ..dump
    };
    build_request(&both, 9, &mut request);
    assert_eq!(request.len(), 16 + 60 + 4 + 16);
    assert_eq!(read_u16(&request, 4), TCPDIAG_GETSOCK);
    assert_eq!(read_u32(&request, 16 + 52), state_mask::CONNECTIONS);
    assert_eq!(read_u16(&request, 78), INET_DIAG_REQ_BYTECODE);
}

#[test]
fn dump_plans() {
    let tcp = dumps_for(Protocol::Tcp, RANGE, true, true);
    assert_eq!(tcp.len(), 2);
    assert!(tcp[1].asks_bound_inactive());
    // Where the counts show no socket outside the tables, the bind
    // table is not walked.
    assert!(!dumps_for(Protocol::Tcp, RANGE, true, false)[1].asks_bound_inactive());
    assert!(tcp.iter().all(|dump| dump.family.is_none()));
    assert_eq!(tcp[0].source_ports, None, "listeners anywhere");
    assert_eq!(tcp[1].source_ports, Some(RANGE));
    assert_eq!(dumps_for(Protocol::Tcp, RANGE, false, true).len(), 4);
    // UDP has no two-family request.
    let udp = dumps_for(Protocol::Udp, RANGE, true, true);
    assert_eq!(udp.len(), 2);
    assert!(udp.iter().all(|dump| dump.family.is_some()));
}

#[test]
fn masks() {
    assert_eq!(state_mask::CONNECTIONS, 0x1b7e);
    assert_eq!(state_mask::CONNECTIONS & state_mask::LISTEN, 0);
    assert_eq!(state_mask::BOUND_INACTIVE, 0x2000);
}

/// A `struct nlmsghdr` followed by `payload`, padded to 4 bytes.
fn message(kind: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((HEADER_LENGTH + payload.len()) as u32).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&flags.to_ne_bytes());
    bytes.extend_from_slice(&sequence.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(payload);
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    bytes
}

/// A `struct inet_diag_msg` with an attribute after it, as kernels send.
#[allow(clippy::too_many_arguments)]
fn diag(
    family: i32,
    state: u8,
    local: [u8; 16],
    source_port: u16,
    remote: [u8; 16],
    destination_port: u16,
    queues: (u32, u32),
    inode: u32,
) -> Vec<u8> {
    let mut bytes = vec![family as u8, state, 0, 0];
    bytes.extend_from_slice(&source_port.to_be_bytes());
    bytes.extend_from_slice(&destination_port.to_be_bytes());
    bytes.extend_from_slice(&local);
    bytes.extend_from_slice(&remote);
    bytes.extend_from_slice(&[0; 12]); // interface, cookie
    bytes.extend_from_slice(&0u32.to_ne_bytes()); // expires
    bytes.extend_from_slice(&queues.0.to_ne_bytes());
    bytes.extend_from_slice(&queues.1.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes()); // uid
    bytes.extend_from_slice(&inode.to_ne_bytes());
    // INET_DIAG_SHUTDOWN, one byte, padded.
    bytes.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
    bytes
}

fn v4(address: [u8; 4]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&address);
    bytes
}

/// A reply for one IPv4 socket with empty queues.
fn v4_reply(
    sequence: u32,
    state: u8,
    local: [u8; 4],
    local_port: u16,
    remote: [u8; 4],
    remote_port: u16,
    inode: u32,
) -> Vec<u8> {
    message(
        SOCK_DIAG_BY_FAMILY,
        2,
        sequence,
        &diag(
            crate::linux::AF_INET,
            state,
            v4(local),
            local_port,
            v4(remote),
            remote_port,
            (0, 0),
            inode,
        ),
    )
}

fn dump(protocol: Protocol, states: u32) -> Dump {
    Dump {
        family: Some(crate::linux::AF_INET as u8),
        protocol,
        states,
        source_ports: Some(RANGE),
    }
}

#[test]
fn parses_sockets_then_done() {
    let tcp = dump(Protocol::Tcp, state_mask::CONNECTIONS);
    let mut datagram = v4_reply(9, 1, [10, 0, 0, 1], 40001, [10, 0, 0, 9], 443, 77);
    let v6_local = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
    let v6_remote = "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets();
    datagram.extend(message(
        SOCK_DIAG_BY_FAMILY,
        2,
        9,
        &diag(
            crate::linux::AF_INET6,
            6,
            v6_local,
            40002,
            v6_remote,
            80,
            (0, 0),
            0,
        ),
    ));
    // A stale message from another dump is skipped.
    datagram.extend(message(SOCK_DIAG_BY_FAMILY, 2, 8, &[0; 3]));
    let mut sockets = Vec::new();
    let mut interrupted = false;
    let progress = parse_datagram(&datagram, 9, &tcp, &mut interrupted, &mut sockets).unwrap();
    assert_eq!(progress, Progress::More);
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[0].state, SocketState::Tcp(TcpState::Established));
    assert_eq!(sockets[0].local, "10.0.0.1:40001".parse().unwrap());
    assert_eq!(sockets[0].remote, "10.0.0.9:443".parse().unwrap());
    assert_eq!(sockets[0].inode, 77);
    assert_eq!(sockets[0].listen_queue, None);
    assert_eq!(sockets[1].state, SocketState::Tcp(TcpState::TimeWait));
    assert_eq!(sockets[1].local, "[::ffff:10.0.0.1]:40002".parse().unwrap());
    assert_eq!(sockets[1].remote, "[2001:db8::9]:80".parse().unwrap());

    let done = message(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes());
    let progress = parse_datagram(&done, 9, &tcp, &mut interrupted, &mut sockets).unwrap();
    assert_eq!(progress, Progress::Done { interrupted: false });
}

#[test]
fn listeners_carry_their_accept_queue() {
    let listeners = Dump {
        source_ports: None,
        ..dump(Protocol::Tcp, state_mask::LISTEN)
    };
    let datagram = message(
        SOCK_DIAG_BY_FAMILY,
        2,
        1,
        &diag(
            crate::linux::AF_INET,
            10,
            v4([0; 4]),
            8080,
            v4([0; 4]),
            0,
            (3, 128),
            5,
        ),
    );
    let mut sockets = Vec::new();
    parse_datagram(&datagram, 1, &listeners, &mut false, &mut sockets).unwrap();
    assert_eq!(
        sockets[0].listen_queue,
        Some(ListenQueue {
            waiting: 3,
            limit: 128
        })
    );
}

#[test]
fn bound_inactive_replies_carry_state_7_and_are_mapped() {
    let bound = dump(
        Protocol::Tcp,
        state_mask::CONNECTIONS | state_mask::BOUND_INACTIVE,
    );
    let datagram = v4_reply(1, 7, [0; 4], 40007, [0; 4], 0, 5);
    let mut sockets = Vec::new();
    parse_datagram(&datagram, 1, &bound, &mut false, &mut sockets).unwrap();
    assert_eq!(sockets[0].state, SocketState::Tcp(TcpState::BoundInactive));
    // Replies to the older request carry its type.
    let both = Dump {
        family: None,
        ..bound
    };
    let datagram = message(
        TCPDIAG_GETSOCK,
        2,
        1,
        &diag(
            crate::linux::AF_INET,
            1,
            v4([0; 4]),
            40007,
            v4([1, 2, 3, 4]),
            80,
            (0, 0),
            6,
        ),
    );
    parse_datagram(&datagram, 1, &both, &mut false, &mut sockets).unwrap();
    assert_eq!(sockets[1].state, SocketState::Tcp(TcpState::Established));
}

#[test]
fn udp_states() {
    let udp = dump(
        Protocol::Udp,
        state_mask::UDP_CONNECTED | state_mask::UDP_UNCONNECTED,
    );
    let mut datagram = v4_reply(1, 1, [127, 0, 0, 1], 40001, [127, 0, 0, 1], 53, 5);
    datagram.extend(v4_reply(1, 7, [0; 4], 53, [0; 4], 0, 6));
    let mut sockets = Vec::new();
    parse_datagram(&datagram, 1, &udp, &mut false, &mut sockets).unwrap();
    assert_eq!(sockets[0].state, SocketState::Udp(UdpState::Connected));
    assert_eq!(sockets[1].state, SocketState::Udp(UdpState::Unconnected));
}

#[test]
fn errors_and_interruptions() {
    let tcp = dump(Protocol::Tcp, state_mask::CONNECTIONS);
    let mut sockets = Vec::new();
    // NLMSG_ERROR with -ENOENT: udp_diag or inet_diag missing.
    let mut payload = (-crate::linux::ENOENT).to_ne_bytes().to_vec();
    payload.extend_from_slice(&[0; 16]);
    let error = parse_datagram(
        &message(NLMSG_ERROR, 0, 4, &payload),
        4,
        &tcp,
        &mut false,
        &mut sockets,
    )
    .unwrap_err();
    assert!(
        matches!(&error, NetlinkError::Refused { source, .. }
            if source.raw_os_error() == Some(crate::linux::ENOENT)),
        "{error}"
    );
    // An acknowledgement is not an error.
    let mut ack = 0i32.to_ne_bytes().to_vec();
    ack.extend_from_slice(&[0; 16]);
    assert_eq!(
        parse_datagram(
            &message(NLMSG_ERROR, 0, 4, &ack),
            4,
            &tcp,
            &mut false,
            &mut sockets
        )
        .unwrap(),
        Progress::More
    );
    // DONE carrying an error.
    let done = message(NLMSG_DONE, 2, 4, &(-crate::linux::EINTR).to_ne_bytes());
    assert!(parse_datagram(&done, 4, &tcp, &mut false, &mut sockets).is_err());
    // NLM_F_DUMP_INTR on any message marks the whole dump.
    let mut interrupted = false;
    let socket = message(
        SOCK_DIAG_BY_FAMILY,
        2 | NLM_F_DUMP_INTR,
        4,
        &diag(
            crate::linux::AF_INET,
            1,
            v4([1, 1, 1, 1]),
            40001,
            v4([2, 2, 2, 2]),
            1,
            (0, 0),
            1,
        ),
    );
    parse_datagram(&socket, 4, &tcp, &mut interrupted, &mut sockets).unwrap();
    let done = message(NLMSG_DONE, 2, 4, &0i32.to_ne_bytes());
    assert_eq!(
        parse_datagram(&done, 4, &tcp, &mut interrupted, &mut sockets).unwrap(),
        Progress::Done { interrupted: true }
    );
}

#[test]
fn truncated_and_garbage_replies_are_errors_not_panics() {
    let tcp = dump(Protocol::Tcp, state_mask::CONNECTIONS);
    let whole = v4_reply(1, 1, [1, 1, 1, 1], 40001, [2, 2, 2, 2], 1, 1);
    for cut in 1..whole.len() {
        let mut sockets = Vec::new();
        assert!(
            parse_datagram(&whole[..cut], 1, &tcp, &mut false, &mut sockets).is_err(),
            "cut at {cut} was accepted"
        );
    }
    // A length field smaller than a header, and one past the end.
    let mut bad = whole.clone();
    bad[0..4].copy_from_slice(&4u32.to_ne_bytes());
    assert!(parse_datagram(&bad, 1, &tcp, &mut false, &mut Vec::new()).is_err());
    bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(parse_datagram(&bad, 1, &tcp, &mut false, &mut Vec::new()).is_err());
    // An unknown TCP state.
    let odd = v4_reply(1, 99, [1, 1, 1, 1], 40001, [2, 2, 2, 2], 1, 1);
    assert!(parse_datagram(&odd, 1, &tcp, &mut false, &mut Vec::new()).is_err());
    // Pseudo-random bytes never panic.
    for bytes in pseudo_random_datagrams() {
        let _ = parse_datagram(&bytes, 1, &tcp, &mut false, &mut Vec::new());
    }
}

fn recorded(name: &str) -> Vec<Vec<u8>> {
    recorded_datagrams("src/parse/fixtures/netlink", name)
}

/// Parses a recorded dump to its end: the sockets, as state, local and
/// remote address.
fn parse_recorded(name: &str, dump: &Dump) -> Vec<SocketRecord> {
    let mut sockets = Vec::new();
    let mut interrupted = false;
    let datagrams = recorded(name);
    for (index, datagram) in datagrams.iter().enumerate() {
        let progress = parse_datagram(datagram, 1, dump, &mut interrupted, &mut sockets).unwrap();
        let last = index + 1 == datagrams.len();
        assert_eq!(
            progress == (Progress::Done { interrupted: false }),
            last,
            "{name}"
        );
    }
    sockets
}

fn summary(sockets: &[SocketRecord]) -> Vec<String> {
    let mut lines: Vec<String> = sockets
        .iter()
        .map(|socket| {
            format!(
                "{} {} {}",
                socket.state.label(),
                socket.local,
                socket.remote
            )
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn recorded_tcp_replies_from_a_real_kernel() {
    let both = dumps_for(Protocol::Tcp, RANGE, true, true);
    let listeners = parse_recorded("tcp-listeners", &both[0]);
    assert_eq!(
        summary(&listeners),
        [
            "listen 127.0.0.1:7000 0.0.0.0:0",
            "listen [::1]:7001 [::]:0"
        ]
    );
    let queues: Vec<_> = listeners.iter().map(|socket| socket.listen_queue).collect();
    assert_eq!(
        queues,
        [
            Some(ListenQueue {
                waiting: 1,
                limit: 8
            }),
            Some(ListenQueue {
                waiting: 0,
                limit: 8
            })
        ]
    );
    assert!(listeners.iter().all(|socket| socket.inode != 0));

    let connections = parse_recorded("tcp-connections", &both[1]);
    assert_eq!(
        summary(&connections),
        [
            "bound_inactive 127.0.0.1:40050 0.0.0.0:0",
            "established 127.0.0.1:40001 127.0.0.1:7000",
            "time_wait [::1]:40002 [::1]:7001",
        ]
    );
    let time_wait = connections
        .iter()
        .find(|socket| socket.state == SocketState::Tcp(TcpState::TimeWait))
        .unwrap();
    assert_eq!(time_wait.inode, 0, "TIME_WAIT belongs to no file");
    let age = time_wait.time_wait.unwrap().age_ms;
    assert!(age < 1000, "recorded within a second of closing: {age} ms");

    let per_family = dumps_for(Protocol::Tcp, RANGE, false, true);
    let ipv4 = parse_recorded("tcp-ipv4-connections", &per_family[1]);
    assert_eq!(
        summary(&ipv4),
        [
            "bound_inactive 127.0.0.1:40050 0.0.0.0:0",
            "established 127.0.0.1:40001 127.0.0.1:7000",
        ]
    );
}

#[test]
fn recorded_udp_replies_from_a_real_kernel() {
    let udp = dumps_for(Protocol::Udp, RANGE, false, false);
    assert_eq!(
        summary(&parse_recorded("udp-ipv4", &udp[0])),
        [
            "connected 127.0.0.1:40060 127.0.0.1:5353",
            "unconnected 127.0.0.1:5353 0.0.0.0:0",
        ]
    );
    assert_eq!(
        summary(&parse_recorded("udp-ipv6", &udp[1])),
        ["unconnected [::1]:5354 [::]:0"]
    );
}

/// A recorded datagram cut anywhere before its end never panics and
/// never reads as a finished dump: the end of a dump comes last.
#[test]
fn recorded_replies_cut_short_never_finish() {
    let both = dumps_for(Protocol::Tcp, RANGE, true, true);
    for datagram in recorded("tcp-connections") {
        for length in 0..datagram.len() {
            let result = parse_datagram(
                &datagram[..length],
                1,
                &both[1],
                &mut false,
                &mut Vec::new(),
            );
            assert!(
                matches!(result, Ok(Progress::More) | Err(NetlinkError::Malformed(_))),
                "cut at {length}: {result:?}"
            );
        }
    }
}
