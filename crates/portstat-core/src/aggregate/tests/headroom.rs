//! Exclusive ports, TIME_WAIT and its names, and headroom per destination.

use super::*;

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
