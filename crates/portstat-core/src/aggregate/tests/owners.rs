//! The ports each process holds, and owners learnt from records against owners by inode.

use super::*;

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

/// The figures with owners learnt from records, as the BPF owners
/// program writes them: one record per process holding each socket whose
/// owner `sample.owners` knows, plus `others` holding it too.
fn aggregate_from_records(
    sample: &NamespaceSample,
    limits: &Limits,
    others: &[(u64, u32, &str)],
) -> Snapshot {
    let mut aggregator = Aggregator::new(
        sample.range,
        sample.reserved.clone(),
        sample.time_wait_reuse,
        *limits,
    );
    aggregator.set_owner_lookup(OwnerLookup::Records);
    for socket in &sample.sockets {
        aggregator.add(socket);
    }
    let comm = |name: &str| {
        // The comm whose label `name` is.
        let name = name.strip_suffix(" (a process)").unwrap_or(name);
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    };
    let mut records = Vec::new();
    for socket in &sample.sockets {
        let Some(&pid) = sample.owners.pid_by_inode.get(&socket.inode) else {
            continue;
        };
        let holders: Vec<(u32, &str)> =
            std::iter::once((pid, sample.owners.comm_by_pid[&pid].as_str()))
                .chain(
                    others
                        .iter()
                        .filter(|(inode, _, _)| *inode == socket.inode)
                        .map(|(_, pid, name)| (*pid, *name)),
                )
                .collect();
        for &(tgid, name) in &holders {
            records.push(OwnedSocket {
                tgid,
                comm: comm(name),
                netns: 1,
                inode: socket.inode,
                protocol: socket.state.protocol(),
                port: socket.local.port(),
                shared: holders.len() > 1,
            });
        }
    }
    // Records come in process order.
    records.sort_by_key(|record| record.tgid);
    for record in &records {
        aggregator.add_owner(record);
    }
    aggregator.finish(&SocketOwners::default(), &sample.report)
}

#[test]
fn owners_from_records_give_the_figures_owners_by_inode_give() {
    let mut sockets = vec![
        tcp(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0", 1),
        tcp(TcpState::Listen, "0.0.0.0:40050", "0.0.0.0:0", 2),
        tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.9:80", 3),
        tcp(TcpState::Established, "10.0.0.1:40001", "10.0.0.8:80", 4),
        udp(UdpState::Connected, "10.0.0.1:40001", "10.0.0.9:53", 5),
        tcp(TcpState::Established, "10.0.0.1:40002", "10.0.0.9:80", 6),
        tcp(TcpState::TimeWait, "10.0.0.1:40003", "10.0.0.9:80", 0),
        // Bound before connecting, held by curl; and in TIME_WAIT.
        tcp(TcpState::Established, "10.0.0.1:40010", "10.0.0.9:80", 7),
        tcp(TcpState::TimeWait, "10.0.0.1:40011", "10.0.0.9:80", 0),
        // A socket no process was found holding.
        tcp(TcpState::Established, "10.0.0.1:40020", "10.0.0.9:80", 8),
        // Held by envoy and, inherited, by a worker with a higher pid.
        tcp(TcpState::Established, "10.0.0.1:40030", "10.0.0.9:80", 9),
        udp(UdpState::Unconnected, "0.0.0.0:53", "0.0.0.0:0", 10),
    ];
    sockets[7].binding = PortBinding::Bind;
    sockets[8].binding = PortBinding::Bind;
    let mut sample = sample(sockets, "");
    sample.report.sources = PerProtocol {
        tcp: SourceKind::Bpf,
        udp: SourceKind::Netlink,
    };
    for (inode, pid) in [
        (1, 10),
        (2, 12),
        (3, 10),
        (4, 10),
        (5, 10),
        (6, 11),
        (7, 11),
        (9, 10),
        (10, 13),
    ] {
        sample.owners.pid_by_inode.insert(inode, pid);
    }
    for (pid, comm) in [
        (10, "envoy"),
        (11, "curl"),
        (12, "unknown"),
        (13, "dnsmasq"),
    ] {
        sample
            .owners
            .comm_by_pid
            .insert(pid, crate::model::process_label(comm.to_string()));
    }
    let others = [(9, 20, "worker"), (1, 21, "worker")];
    for top in [10, 2, 0] {
        let limits = Limits {
            processes_top: top,
            ..Limits::default()
        };
        let by_inode = aggregate(&sample, &limits);
        let mut from_records = aggregate_from_records(&sample, &limits, &others);
        assert_eq!(from_records.owner_lookup, OwnerLookup::Records);
        from_records.owner_lookup = OwnerLookup::ByInode;
        assert_eq!(from_records, by_inode, "processes_top {top}");
    }
    let figures = aggregate(&sample, &Limits::default());
    let named: Vec<(&str, u32)> = figures
        .processes
        .iter()
        .map(|usage| (usage.process.as_str(), usage.ports_used))
        .collect();
    assert_eq!(
        named,
        [
            ("envoy", 3),
            ("curl", 2),
            ("none", 2),
            ("unknown", 1),
            ("unknown (a process)", 1),
        ]
    );
    assert_eq!(figures.bind_before_connect_processes.len(), 2);
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
