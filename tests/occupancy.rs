//! Occupancy, capacity and listeners, measured on real sockets in a network
//! namespace of the test's own.

mod support;

use support::Place;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use support::{Metrics, Netns, listening_socket, own_comm};

/// Sockets that must stay open while the exporter looks at them.
#[derive(Default)]
struct Population {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
    udp: Vec<UdpSocket>,
    raw: Vec<socket2::Socket>,
    /// Local ports inside the range that TCP sockets took, TIME_WAIT included.
    tcp_ports: BTreeSet<u16>,
    /// Local ports inside the range that UDP sockets took, reserved excluded.
    udp_ports: BTreeSet<u16>,
}

/// A connection to `server`, both ends kept.
fn connect(server: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
    let (accepted, _) = server.accept().unwrap();
    (client, accepted)
}

/// The population of `tests/fixtures/capture_netns.py`, plus an SO_REUSEPORT
/// group of two listeners on 127.0.0.1:8080.
///
/// `connect()` may give connections to different destinations the same local
/// port, so the ports taken are recorded to state the exact distinct count.
fn populate(netns: &Netns) -> Population {
    // Keep TIME_WAIT ports from being reused for loopback connections (the
    // kernel's default, 2, allows it), so that the TIME_WAIT count is fixed.
    netns.write_sysctl("tcp_tw_reuse", "0");
    netns.run(|| {
        let mut population = Population::default();
        let v4 = TcpListener::bind("127.0.0.1:80").unwrap();
        let v6 = TcpListener::bind("[::1]:80").unwrap();
        population
            .listeners
            .push(TcpListener::bind("[::]:40050").unwrap());
        population.tcp_ports.insert(40050);
        population
            .raw
            .push(listening_socket("127.0.0.1:8080", true, 16));
        population
            .raw
            .push(listening_socket("127.0.0.1:8080", true, 16));
        let port = |stream: &TcpStream| stream.local_addr().unwrap().port();
        for _ in 0..5 {
            let (client, accepted) = connect(&v4);
            population.tcp_ports.insert(port(&client));
            population.streams.extend([client, accepted]);
        }
        let (client, accepted) = connect(&v6);
        population.tcp_ports.insert(port(&client));
        population.streams.extend([client, accepted]);
        // The client closes first, so the client end ends in TIME_WAIT.
        for _ in 0..3 {
            let (client, accepted) = connect(&v4);
            population.tcp_ports.insert(port(&client));
            drop(client);
            std::thread::sleep(Duration::from_millis(20));
            drop(accepted);
        }
        // The server closes first, so the client end sits in CLOSE_WAIT.
        for _ in 0..2 {
            let (client, accepted) = connect(&v4);
            population.tcp_ports.insert(port(&client));
            drop(accepted);
            population.streams.push(client);
        }
        for _ in 0..2 {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect("127.0.0.1:53").unwrap();
            population
                .udp_ports
                .insert(socket.local_addr().unwrap().port());
            population.udp.push(socket);
        }
        for port in [0, 0, 0, 5353, 40010] {
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            if port == 0 {
                population
                    .udp_ports
                    .insert(socket.local_addr().unwrap().port());
            }
            population.udp.push(socket);
        }
        population.listeners.extend([v4, v6]);
        population
    })
}

fn settled(metrics: &Metrics) -> bool {
    metrics.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="time_wait"}"#) == Some(3.0)
        && metrics.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="close_wait"}"#)
            == Some(2.0)
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn once_reports_range_occupancy_and_listeners_exactly_from_procfs() {
    assert_exact_figures("procfs");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn once_reports_range_occupancy_and_listeners_exactly_from_netlink() {
    assert_exact_figures("netlink");
}

fn assert_exact_figures(source: &str) {
    let netns = Netns::new((40000, 40099), "40010-40019,40095");
    let population = populate(&netns);
    let metrics = netns
        .once_until(&["--collector.source", source], settled)
        .unwrap();
    let comm = own_comm();
    assert_eq!(
        metrics.family("portstat_source_info"),
        [
            (
                format!(r#"portstat_source_info{{protocol="tcp",source="{source}"}}"#),
                1.0
            ),
            (
                format!(r#"portstat_source_info{{protocol="udp",source="{source}"}}"#),
                1.0
            ),
        ]
        .into_iter()
        .collect()
    );
    // 6 established, 3 TIME_WAIT, 2 CLOSE_WAIT and the listener on 40050, on
    // 12 ports unless connect() let two destinations share one.
    let tcp_used = population.tcp_ports.len() as f64;
    assert!(
        (10.0..=12.0).contains(&tcp_used),
        "{:?}",
        population.tcp_ports
    );
    // Two connected, three bound to port 0; the one on reserved 40010 is not.
    let udp_used = population.udp_ports.len() as f64;
    assert!(
        (4.0..=5.0).contains(&udp_used),
        "{:?}",
        population.udp_ports
    );

    assert_eq!(metrics.value("portstat_ephemeral_range_start"), 40000.0);
    assert_eq!(metrics.value("portstat_ephemeral_range_end"), 40099.0);
    assert_eq!(metrics.value("portstat_ephemeral_reserved_ports"), 11.0);
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 89.0);

    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        tcp_used
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used_ratio{protocol="tcp"}"#),
        tcp_used / 89.0
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="udp"}"#),
        udp_used
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used_ratio{protocol="udp"}"#),
        udp_used / 89.0
    );

    let expected_tcp = [
        ("established", 6.0),
        ("syn_sent", 0.0),
        ("syn_recv", 0.0),
        ("fin_wait1", 0.0),
        ("fin_wait2", 0.0),
        ("time_wait", 3.0),
        ("close", 0.0),
        ("close_wait", 2.0),
        ("last_ack", 0.0),
        ("listen", 1.0),
        ("closing", 0.0),
    ];
    // procfs cannot see bound-but-inactive sockets, so only netlink says 0.
    let bound_inactive = [("bound_inactive", 0.0)];
    let mut expected_sockets: Vec<(String, f64)> = expected_tcp
        .iter()
        .chain(if source == "netlink" {
            &bound_inactive[..]
        } else {
            &[]
        })
        .map(|(state, count)| {
            (
                format!(r#"portstat_ephemeral_sockets{{protocol="tcp",state="{state}"}}"#),
                *count,
            )
        })
        .collect();
    expected_sockets.push((
        r#"portstat_ephemeral_sockets{protocol="udp",state="connected"}"#.into(),
        2.0,
    ));
    // The socket on reserved port 40010 is inside the range.
    expected_sockets.push((
        r#"portstat_ephemeral_sockets{protocol="udp",state="unconnected"}"#.into(),
        4.0,
    ));
    assert_eq!(
        metrics.family("portstat_ephemeral_sockets"),
        expected_sockets.into_iter().collect()
    );

    // procfs reads every socket. IPv4: 3 listeners, both ends of 5
    // connections, 3 TIME_WAIT, both ends of 2 half-closed ones. IPv6: 2
    // listeners, both ends of 1 connection. Netlink gets the 5 listeners and
    // the 11 client ends inside the range; the kernel filters out the rest.
    let tcp_scanned = if source == "netlink" { 16.0 } else { 24.0 };
    assert_eq!(
        metrics.value(r#"portstat_sockets_scanned{protocol="tcp"}"#),
        tcp_scanned
    );
    assert_eq!(
        metrics.value(r#"portstat_sockets_scanned{protocol="udp"}"#),
        7.0
    );

    let listener = |protocol: &str, address: &str, port: u16| {
        format!(
            r#"portstat_listener_sockets{{protocol="{protocol}",address="{address}",port="{port}",process="{comm}"}}"#
        )
    };
    assert_eq!(
        metrics.family("portstat_listener_sockets"),
        [
            (listener("tcp", "127.0.0.1", 80), 1.0),
            (listener("tcp", "127.0.0.1", 8080), 2.0),
            (listener("tcp", "::", 40050), 1.0),
            (listener("tcp", "::1", 80), 1.0),
            (listener("udp", "0.0.0.0", 5353), 1.0),
            (listener("udp", "0.0.0.0", 40010), 1.0),
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        metrics.family("portstat_listener_in_ephemeral_range"),
        [(
            format!(
                r#"portstat_listener_in_ephemeral_range{{address="::",port="40050",process="{comm}"}}"#
            ),
            1.0
        )]
        .into_iter()
        .collect()
    );
    assert_eq!(metrics.value("portstat_sample_success"), 1.0);
    assert_eq!(
        metrics.value(r#"portstat_sample_errors_total{stage="source"}"#),
        0.0
    );
    assert_eq!(
        metrics.value(r#"portstat_sample_errors_total{stage="render"}"#),
        0.0
    );
    let duration = metrics.value("portstat_sample_duration_seconds");
    assert!(duration > 0.0 && duration < 5.0, "{duration}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let stamp = metrics.value("portstat_sample_timestamp_seconds");
    assert!(stamp <= now && now - stamp < 30.0, "{stamp} vs {now}");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn exhausting_the_range_reads_ratio_one_when_connect_fails() {
    let netns = Netns::new((40000, 40099), "40010-40019");
    let exporter = netns.start_exporter(&["--collector.interval", "100ms"]);
    let (population, connected, error) = netns.run(|| {
        let mut population = Population::default();
        let server = TcpListener::bind("127.0.0.1:80").unwrap();
        // A listener inside the range takes its port from every destination.
        population
            .listeners
            .push(TcpListener::bind("0.0.0.0:40050").unwrap());
        let mut connected = 0;
        let error = loop {
            match TcpStream::connect(server.local_addr().unwrap()) {
                Ok(stream) => {
                    connected += 1;
                    population.streams.push(stream);
                    assert!(connected <= 100, "connect() never failed");
                }
                Err(error) => break error,
            }
        };
        population.listeners.push(server);
        (population, connected, error)
    });
    assert_eq!(error.kind(), ErrorKind::AddrNotAvailable, "{error}");
    assert_eq!(error.raw_os_error(), Some(libc::EADDRNOTAVAIL));
    // 100 ports, 10 reserved, one taken by the listener.
    assert_eq!(connected, 89);

    let ratio = r#"portstat_ephemeral_ports_used_ratio{protocol="tcp"}"#;
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(ratio) == Some(1.0))
        .unwrap();
    assert_eq!(metrics.value(ratio), 1.0);
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 90.0);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        90.0
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="established"}"#),
        89.0
    );
    let once = netns.once_metrics(&[]);
    assert_eq!(once.value(ratio), 1.0);

    // Closing the server resets the connections still in its accept queue:
    // their ports free at once, and the next sample shows it.
    drop(population);
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(ratio) == Some(0.0))
        .unwrap();
    assert_eq!(metrics.value(ratio), 0.0);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn closed_listener_and_changed_range_show_at_the_next_sample() {
    let netns = Netns::new((40000, 40099), "");
    let exporter = netns.start_exporter(&["--collector.interval", "100ms"]);
    let comm = own_comm();
    let series = format!(
        r#"portstat_listener_sockets{{protocol="tcp",address="127.0.0.1",port="7777",process="{comm}"}}"#
    );
    let listener = netns.run(|| TcpListener::bind("127.0.0.1:7777").unwrap());
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(&series).is_some())
        .unwrap();
    assert_eq!(metrics.value(&series), 1.0);
    // The exporter's own listener, owned by the exporter.
    assert_eq!(
        metrics.value(
            r#"portstat_listener_sockets{protocol="tcp",address="127.0.0.1",port="10042",process="portstat_export"}"#
        ),
        1.0
    );
    drop(listener);
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(&series).is_none())
        .unwrap();
    assert_eq!(metrics.get(&series), None, "a closed listener stayed");

    // The sysctls are read at every sample.
    netns.set_range((40000, 40199));
    netns.set_reserved("40100-40104");
    let metrics = exporter
        .metrics_until(|metrics| metrics.get("portstat_ephemeral_ports_capacity") == Some(195.0))
        .unwrap();
    assert_eq!(metrics.value("portstat_ephemeral_range_end"), 40199.0);
    assert_eq!(metrics.value("portstat_ephemeral_reserved_ports"), 5.0);
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 195.0);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_port_that_changes_hands_is_attributed_to_its_new_owner() {
    let netns = Netns::new((40000, 40099), "");
    let exporter = netns.start_exporter(&["--collector.interval", "100ms"]);
    let series = |process: &str| {
        format!(
            r#"portstat_listener_sockets{{protocol="tcp",address="127.0.0.1",port="7000",process="{process}"}}"#
        )
    };
    // Another process listens first.
    let other = support::ReadyScript::start(
        &netns,
        "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',7000))\ns.listen()\nprint('ready',flush=True)\nsys.stdin.read()",
        &[],
    );
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(&series("python3")).is_some())
        .unwrap();
    assert_eq!(metrics.value(&series("python3")), 1.0);
    // It exits, and this process takes the port.
    drop(other);
    let _listener = netns.run(|| TcpListener::bind("127.0.0.1:7000").unwrap());
    let comm = own_comm();
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(&series(&comm)).is_some())
        .unwrap();
    assert_eq!(metrics.value(&series(&comm)), 1.0);
    assert_eq!(metrics.get(&series("python3")), None);
}

/// The kernel cuts `comm` at 15 bytes, here inside the last `é`: the
/// process is still named, with what the kernel kept, the byte left of the
/// `é` written as an escape.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_name_cut_inside_a_character_still_names_its_process() {
    let netns = Netns::new((40000, 40099), "");
    let _named = support::NamedListener::start(&netns, "écouteur-résé".as_bytes(), 7001);
    let series = "portstat_listener_sockets{protocol=\"tcp\",address=\"127.0.0.1\",\
                  port=\"7001\",process=\"écouteur-rés\\\\xc3\"}";
    let metrics = netns
        .once_until(&[], |metrics| metrics.get(series).is_some())
        .unwrap();
    assert_eq!(metrics.value(series), 1.0);
}

/// The series of a `NamedListener`'s socket on 127.0.0.1:`port`.
fn named_listener(port: u16, process: &str) -> String {
    format!(
        "portstat_listener_sockets{{protocol=\"tcp\",address=\"127.0.0.1\",\
         port=\"{port}\",process=\"{process}\"}}"
    )
}

/// Names that are not UTF-8 stay apart (a lossy conversion made both
/// `a\u{fffd}`), and an empty name is a label value of its own, not the
/// empty one Prometheus reads as no label; with either way of finding
/// owners.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn names_not_utf8_or_empty_each_keep_a_series() {
    let netns = Netns::new((40000, 40099), "");
    let _first = support::NamedListener::start(&netns, b"a\xff", 7005);
    let _second = support::NamedListener::start(&netns, b"a\xfe", 7006);
    let _empty = support::NamedListener::start(&netns, b"", 7007);
    let series = named_listener;
    let mut sources = vec!["netlink"];
    if !support::refusing_bpf() {
        sources.push("bpf");
    }
    for source in sources {
        let metrics = netns
            .once_until(&["--collector.source", source], |metrics| {
                metrics.get(&series(7007, "(empty process name)")).is_some()
            })
            .unwrap();
        // The exposition escapes the backslash once more.
        assert_eq!(metrics.value(&series(7005, "a\\\\xff")), 1.0, "{source}");
        assert_eq!(metrics.value(&series(7006, "a\\\\xfe")), 1.0, "{source}");
        assert_eq!(
            metrics.value(&series(7007, "(empty process name)")),
            1.0,
            "{source}"
        );
    }
}

/// The same link-local address on two interfaces is two listeners, each
/// named with its interface, not one group of two sockets.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn link_local_listeners_keep_their_interface() {
    support::require_bpf();
    let netns = Netns::new((40000, 40099), "");
    for (name, peer) in [("lla0", "llb0"), ("lla1", "llb1")] {
        for args in [
            vec!["link", "add", name, "type", "veth", "peer", "name", peer],
            vec!["link", "set", peer, "up"],
            vec!["link", "set", name, "up"],
            vec!["-6", "addr", "add", "fe80::1234/64", "dev", name, "nodad"],
        ] {
            let status = netns.command("ip").args(&args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        }
    }
    let _listeners = netns.run(|| {
        ["lla0", "lla1"].map(|name| {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0);
            let address =
                std::net::SocketAddrV6::new("fe80::1234".parse().unwrap(), 8001, 0, index);
            TcpListener::bind(address).unwrap()
        })
    });
    let series = |interface: &str| {
        format!(
            "portstat_listener_sockets{{protocol=\"tcp\",address=\"fe80::1234%{interface}\",\
             port=\"8001\",process=\"{}\"}}",
            support::own_comm()
        )
    };
    for source in ["netlink", "bpf"] {
        let metrics = netns
            .once_until(&["--collector.source", source], |metrics| {
                metrics.get(&series("lla1")).is_some()
            })
            .unwrap();
        assert_eq!(metrics.value(&series("lla0")), 1.0, "{source}");
        assert_eq!(metrics.value(&series("lla1")), 1.0, "{source}");
    }
}

/// Processes really named `unknown` or `none` cannot pass for the built-in
/// values of the `process` label: their names gain ` (a process)`, which no
/// `comm` (15 bytes at most) can be.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn processes_named_like_the_built_in_labels_stay_apart() {
    let netns = Netns::new((40000, 40099), "");
    let _unknown = support::NamedListener::start(&netns, b"unknown", 7003);
    let _none = support::NamedListener::start(&netns, b"none", 7004);
    let series = named_listener;
    let metrics = netns
        .once_until(&[], |metrics| {
            metrics.get(&series(7004, "none (a process)")).is_some()
        })
        .unwrap();
    assert_eq!(metrics.value(&series(7003, "unknown (a process)")), 1.0);
    assert_eq!(metrics.value(&series(7004, "none (a process)")), 1.0);
    assert_eq!(metrics.get(&series(7003, "unknown")), None);
    // With attribution off, the built-in value is what says "not known".
    let off = netns.once_metrics(&["--collector.processes=false"]);
    assert_eq!(off.value(&series(7003, "unknown")), 1.0);
}

/// Sockets a process shares with the children it forked count once, under
/// the lowest process id, whichever way owners are found: one BPF
/// `iter/task_file` pass (the `bpf` source) or the walk of `/proc/<pid>/fd`
/// (the `netlink` source).
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn forked_processes_share_sockets_and_each_is_counted_once() {
    support::require_bpf();
    let netns = Netns::new((40000, 40099), "");
    netns.write_sysctl("ping_group_range", "0 0");
    let script = r#"
import ctypes, os, signal, socket, sys
libc = ctypes.CDLL(None)
def name(text):
    libc.prctl(15, text.encode(), 0, 0, 0)
name('master')
listener = socket.socket()
listener.bind(('127.0.0.1', 7000))
listener.listen(64)
shared = [socket.create_connection(('127.0.0.1', 7000)) for _ in range(6)]
accepted = [listener.accept()[0] for _ in range(6)]
# A ping socket whose identifier is a number in the range: not a UDP port.
ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
ping.bind(('127.0.0.1', 40077))
ready_r, ready_w = os.pipe()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        name('worker')
        own = [socket.create_connection(('127.0.0.1', 7000)) for _ in range(3)]
        os.write(ready_w, b'x')
        while True:
            signal.pause()
    children.append(pid)
os.read(ready_r, 1)
os.read(ready_r, 1)
print('ready', flush=True)
sys.stdin.read()
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"#;
    let master = support::ReadyScript::start(&netns, script, &[]);
    let ports =
        |process: &str| format!(r#"portstat_ephemeral_process_ports_used{{process="{process}"}}"#);
    let listener = r#"portstat_listener_sockets{protocol="tcp",address="127.0.0.1",port="7000",process="master"}"#;
    for (source, owners) in [("bpf", "bpf"), ("netlink", "procfs")] {
        let metrics = netns.once_metrics(&["--collector.source", source]);
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_owners_source_info{{source="{owners}"}}"#
            )),
            1.0,
            "{source}: owners from {owners}"
        );
        // The six connections made before the fork: the master's, though
        // both workers hold them too.
        assert_eq!(metrics.value(&ports("master")), 6.0, "{source}");
        // Each worker's own three.
        assert_eq!(metrics.value(&ports("worker")), 6.0, "{source}");
        assert_eq!(metrics.get(&ports("unknown")), None, "{source}");
        assert_eq!(metrics.value(listener), 1.0, "{source}");
    }
    drop(master);
}
