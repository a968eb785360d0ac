//! Capacity, ports used by state, listeners, destinations, and a namespace captured from real sockets.

use super::*;

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
    let reserved_elsewhere = aggregate(&sample(sockets, "1-39999,40100-65535"), &Limits::default());
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
