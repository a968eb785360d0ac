//! Per-destination headroom, exclusive ports and ports per process, on real
//! connections in a namespace whose range is narrowed to 60 ports.

mod support;

use support::Place;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::TcpStream;

use support::{Metrics, Netns, bound_socket, listening_socket, own_comm};

const RANGE: (u16, u16) = (40000, 40059);

fn listener(address: &str) -> socket2::Socket {
    listening_socket(address, false, 1024)
}

/// Connects to `server` `count` times, or until `connect()` fails with
/// EADDRNOTAVAIL when `count` is `None`; returns the connections.
fn connect(server: &str, count: Option<usize>) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    loop {
        if Some(streams.len()) == count {
            return streams;
        }
        match TcpStream::connect(server) {
            Ok(stream) => streams.push(stream),
            Err(error) if count.is_none() && error.kind() == ErrorKind::AddrNotAvailable => {
                return streams;
            }
            Err(error) => panic!("connect to {server}: {error}"),
        }
        assert!(streams.len() <= 1000, "connect() never failed");
    }
}

fn destination(remote: &str) -> String {
    let (address, port) = remote.split_once(':').unwrap();
    format!(
        r#"portstat_ephemeral_destination_ports_used{{local_address="127.0.0.1",remote_address="{address}",remote_port="{port}"}}"#
    )
}

fn ports(streams: &[TcpStream]) -> BTreeSet<u16> {
    streams
        .iter()
        .map(|stream| stream.local_addr().unwrap().port())
        .collect()
}

/// Exclusive ports, summed over reasons.
fn exclusive(metrics: &Metrics) -> f64 {
    metrics
        .family("portstat_ephemeral_ports_exclusive")
        .values()
        .sum()
}

const MAX_RATIO: &str = "portstat_ephemeral_destination_max_used_ratio";

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn destinations_share_the_range_until_one_runs_dry() {
    let netns = Netns::new(RANGE, "");
    let servers = ["127.0.0.1:80", "127.0.0.2:80", "127.0.0.3:80"];
    let (_listeners, mut streams) = netns.run(|| {
        let listeners: Vec<_> = servers.iter().map(|server| listener(server)).collect();
        let streams: Vec<Vec<TcpStream>> = servers
            .iter()
            .map(|server| connect(server, Some(40)))
            .collect();
        (listeners, streams)
    });
    // 120 connections on a 60-port range: ports are shared across
    // destinations, so fewer ports are used than there are sockets.
    let all_ports: BTreeSet<u16> = streams.iter().flat_map(|s| ports(s)).collect();
    assert!(all_ports.len() < 120);
    let metrics = netns.once_metrics(&[]);
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 60.0);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="established"}"#),
        120.0,
        "a socket count would read 200 %"
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        all_ports.len() as f64
    );
    for server in servers {
        assert_eq!(metrics.value(&destination(server)), 40.0, "{server}");
    }
    assert_eq!(metrics.value("portstat_ephemeral_destinations"), 3.0);
    assert_eq!(exclusive(&metrics), 0.0);
    assert_eq!(metrics.value(MAX_RATIO), 40.0 / 60.0);
    // Every port is held by this process's sockets.
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_process_ports_used{{process="{}"}}"#,
            own_comm()
        )),
        all_ports.len() as f64
    );

    // Drive the first destination to real exhaustion.
    let more = netns.run(|| connect(servers[0], None));
    streams[0].extend(more);
    assert_eq!(streams[0].len(), 60, "one destination can have every port");
    let metrics = netns.once_metrics(&[]);
    assert_eq!(metrics.value(&destination(servers[0])), 60.0);
    assert_eq!(metrics.value(MAX_RATIO), 1.0);
    assert_eq!(metrics.value(&destination(servers[1])), 40.0);
    assert_eq!(metrics.value(&destination(servers[2])), 40.0);
    // The global figure reads full too, but only because of one destination.
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used_ratio{protocol="tcp"}"#),
        1.0
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn bound_sockets_and_listeners_in_the_range_cut_every_destination_s_headroom() {
    let netns = Netns::new(RANGE, "");
    let (_held, bound_ports, first, second) = netns.run(|| {
        let server_a = listener("127.0.0.1:80");
        let server_b = listener("127.0.0.2:80");
        // A listener inside the range, and two sockets bound to port 0
        // (the kernel picks them a port from the range) and never connected.
        let inside = listener("0.0.0.0:40030");
        let bound: Vec<socket2::Socket> =
            (0..2).map(|_| bound_socket("0.0.0.0:0", false)).collect();
        let bound_ports: Vec<u16> = bound
            .iter()
            .map(|socket| socket.local_addr().unwrap().as_socket().unwrap().port())
            .collect();
        let first = connect("127.0.0.1:80", None);
        let second = connect("127.0.0.2:80", Some(10));
        (
            (server_a, server_b, inside, bound),
            bound_ports,
            first,
            second,
        )
    });
    assert!(
        bound_ports
            .iter()
            .all(|port| (RANGE.0..=RANGE.1).contains(port))
    );
    // 60 ports, 3 taken from every destination.
    assert_eq!(first.len(), 57);
    let metrics: Metrics = netns.once_metrics(&["--collector.source", "netlink"]);
    assert_eq!(exclusive(&metrics), 3.0);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="listener"}"#),
        1.0
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="bound"}"#),
        2.0
    );
    assert_eq!(metrics.value(&destination("127.0.0.1:80")), 57.0);
    assert_eq!(metrics.value(&destination("127.0.0.2:80")), 10.0);
    assert_eq!(metrics.value(MAX_RATIO), 1.0);
    // Headroom of the second destination: 60 - 3 - 10.
    let headroom = metrics.value("portstat_ephemeral_ports_capacity")
        - exclusive(&metrics)
        - metrics.value(&destination("127.0.0.2:80"));
    assert_eq!(headroom, 47.0);
    assert_eq!(
        metrics.value(
            r#"portstat_ephemeral_destination_headroom{local_address="127.0.0.1",remote_address="127.0.0.2",remote_port="80"}"#
        ),
        47.0
    );
    assert_eq!(
        metrics.value("portstat_ephemeral_new_destination_headroom"),
        57.0
    );
    drop(second);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn top_k_bounds_the_destination_and_process_families() {
    let netns = Netns::new(RANGE, "");
    let servers = ["127.0.0.1:80", "127.0.0.2:80", "127.0.0.3:80"];
    let _held = netns.run(|| {
        let listeners: Vec<_> = servers.iter().map(|server| listener(server)).collect();
        let streams: Vec<TcpStream> = servers
            .iter()
            .enumerate()
            .flat_map(|(index, server)| connect(server, Some(5 + index)))
            .collect();
        (listeners, streams)
    });
    let metrics = netns.once_metrics(&[
        "--collector.destinations.top",
        "1",
        "--collector.processes.top",
        "0",
    ]);
    assert_eq!(
        metrics.family("portstat_ephemeral_destination_ports_used"),
        [(destination("127.0.0.3:80"), 7.0)].into_iter().collect()
    );
    assert_eq!(metrics.value("portstat_ephemeral_destinations"), 3.0);
    assert!(
        metrics
            .family("portstat_ephemeral_process_ports_used")
            .is_empty()
    );
}
