//! The netlink source against the procfs source and against what only netlink
//! can see, on real sockets.

mod support;

use support::Place;

use support::OutputWithin;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use support::{Metrics, Netns, bound_socket, listening_socket};

/// A small xorshift generator: the population is random, the seed printed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self) -> bool {
        self.next() & 1 == 0
    }
}

/// Sockets kept open, and what the population should show once settled.
#[derive(Default)]
struct Population {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
    udp: Vec<UdpSocket>,
    time_wait: u64,
    close_wait: u64,
}

const RANGE: (u16, u16) = (40000, 40199);

/// Established, TIME_WAIT and CLOSE_WAIT connections over IPv4 and IPv6,
/// listeners inside the range, on reserved ports and outside the range, and
/// UDP sockets connected and not.
fn populate(netns: &Netns, random: &mut Random, reserved: &[u16]) -> Population {
    netns.write_sysctl("tcp_tw_reuse", "0");
    let reserved = reserved.to_vec();
    let seed = random.next();
    netns.run(move || {
        let mut random = Random(seed);
        let mut population = Population::default();
        // Listeners inside the range first, before connections take ports.
        for _ in 0..1 + random.below(3) {
            let port = loop {
                let port = RANGE.0 + random.below(200) as u16;
                if !reserved.contains(&port) {
                    break port;
                }
            };
            let address = if random.chance() { "0.0.0.0" } else { "::" };
            if let Ok(listener) = TcpListener::bind((address, port)) {
                population.listeners.push(listener);
            }
        }
        population
            .listeners
            .push(TcpListener::bind(("127.0.0.1", reserved[0])).unwrap());
        let mut servers = Vec::new();
        for index in 0..2 + random.below(3) as u16 {
            servers.push(TcpListener::bind(("127.0.0.1", 80 + index)).unwrap());
            servers.push(TcpListener::bind(("::1", 80 + index)).unwrap());
            population
                .listeners
                .push(TcpListener::bind(("0.0.0.0", 9000 + index)).unwrap());
        }
        let connect = |random: &mut Random| {
            let server = &servers[random.below(servers.len() as u64) as usize];
            let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
            let (accepted, _) = server.accept().unwrap();
            (client, accepted)
        };
        for _ in 0..5 + random.below(40) {
            let (client, accepted) = connect(&mut random);
            population.streams.extend([client, accepted]);
        }
        for _ in 0..random.below(12) {
            let (client, accepted) = connect(&mut random);
            drop(client);
            std::thread::sleep(Duration::from_millis(5));
            drop(accepted);
            population.time_wait += 1;
        }
        for _ in 0..random.below(6) {
            let (client, accepted) = connect(&mut random);
            drop(accepted);
            population.streams.push(client);
            population.close_wait += 1;
        }
        for _ in 0..random.below(6) {
            let (address, peer) = if random.chance() {
                ("0.0.0.0:0", "127.0.0.1:53")
            } else {
                ("[::]:0", "[::1]:53")
            };
            let socket = UdpSocket::bind(address).unwrap();
            socket.connect(peer).unwrap();
            population.udp.push(socket);
        }
        for _ in 0..random.below(6) {
            let address = if random.chance() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            population.udp.push(UdpSocket::bind(address).unwrap());
        }
        population
            .udp
            .push(UdpSocket::bind(("0.0.0.0", 5353)).unwrap());
        population
            .udp
            .push(UdpSocket::bind(("::", reserved[0])).unwrap());
        population.listeners.extend(servers);
        population
    })
}

/// The series both sources must agree on: all but those that say which
/// source ran, how much it read, when, and what only netlink can see.
fn comparable(metrics: &Metrics) -> BTreeMap<String, f64> {
    metrics
        .series
        .iter()
        .filter(|(series, _)| {
            ![
                "portstat_source_info",
                "portstat_owners_source_info",
                "portstat_ephemeral_headroom_exact",
                "portstat_sockets_scanned",
                "portstat_listener_accept_queue",
                "portstat_sample_duration_seconds",
                "portstat_collector_duration_seconds",
                "portstat_sample_timestamp_seconds",
                "process_",
            ]
            .iter()
            .any(|prefix| series.starts_with(prefix))
                && !series.contains(r#"state="bound_inactive""#)
        })
        .map(|(series, value)| (series.clone(), *value))
        .collect()
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn netlink_bpf_and_procfs_agree_series_for_series() {
    support::require_bpf();
    let seed = std::env::var("PORTSTAT_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("population seed {seed} (set PORTSTAT_TEST_SEED to repeat)");
    let mut random = Random(seed);
    for round in 0..3 {
        let mut reserved: Vec<u16> = (0..1 + random.below(4))
            .map(|_| RANGE.0 + random.below(200) as u16)
            .collect();
        reserved.dedup();
        let reserved_text = reserved
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let netns = Netns::new(RANGE, &reserved_text);
        let population = populate(&netns, &mut random, &reserved);
        let settled = |metrics: &Metrics| {
            metrics.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="time_wait"}"#)
                == Some(population.time_wait as f64)
                && metrics.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="close_wait"}"#)
                    == Some(population.close_wait as f64)
        };
        let procfs = netns
            .once_until(&["--collector.source", "procfs"], settled)
            .unwrap();
        let netlink = netns
            .once_until(&["--collector.source", "netlink"], settled)
            .unwrap();
        // BPF reads TCP and names owners from its task_file pass.
        let bpf = netns
            .once_until(&["--collector.source", "bpf"], settled)
            .unwrap();
        assert!(
            settled(&procfs) && settled(&netlink) && settled(&bpf),
            "round {round}: never settled"
        );
        assert_eq!(
            bpf.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
            1.0
        );
        assert_eq!(
            comparable(&bpf),
            comparable(&procfs),
            "round {round}, seed {seed}: bpf (left) and procfs (right) differ"
        );
        assert_eq!(
            netlink.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
            1.0
        );
        // Range, occupancy, every state, every listener, the sample status.
        assert!(comparable(&procfs).len() > 25, "{}", procfs.text);
        assert_eq!(
            comparable(&netlink),
            comparable(&procfs),
            "round {round}, seed {seed}: netlink (left) and procfs (right) differ"
        );
        assert_eq!(
            netlink.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#),
            0.0
        );
        // Every listener's accept queue is reported, and nothing waits.
        let listeners = netlink
            .family("portstat_listener_sockets")
            .keys()
            .filter(|series| series.contains(r#"protocol="tcp""#))
            .count();
        assert_eq!(
            netlink.family("portstat_listener_accept_queue").len(),
            listeners
        );
        assert!(
            netlink
                .family("portstat_listener_accept_queue")
                .values()
                .all(|v| *v == 0.0)
        );
        drop(population);
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_socket_bound_but_never_connected_holds_its_port_for_netlink_only() {
    let netns = Netns::new((40000, 40099), "");
    let bound = netns.run(|| {
        // The explicit port first, so that port 0 (bind() then picks a
        // port from the ephemeral range) cannot have taken it.
        let explicit = bound_socket("[::]:40077", false);
        let automatic = bound_socket("0.0.0.0:0", false);
        (automatic, explicit)
    });
    let automatic_port = bound.0.local_addr().unwrap().as_socket().unwrap().port();
    assert!((40000..=40099).contains(&automatic_port));

    let used = r#"portstat_ephemeral_ports_used{protocol="tcp"}"#;
    let netlink = netns.once_metrics(&["--collector.source", "netlink"]);
    assert_eq!(netlink.value(used), 2.0);
    assert_eq!(
        netlink.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#),
        2.0
    );
    assert_eq!(netlink.family("portstat_listener_sockets").len(), 0);

    let procfs = netns.once_metrics(&["--collector.source", "procfs"]);
    assert_eq!(procfs.value(used), 0.0, "procfs cannot see bound sockets");
    assert_eq!(
        procfs.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#),
        None
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn listeners_report_their_accept_queue_and_backlog() {
    let netns = Netns::new((40000, 40099), "");
    let (_listener, _clients) = netns.run(|| {
        let address: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let listener = listening_socket("127.0.0.1:8080", false, 5);
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        (listener, clients)
    });
    let comm = support::own_comm();
    let labels = format!(r#"{{address="127.0.0.1",port="8080",process="{comm}"}}"#);
    let metrics = netns
        .once_until(&[], |metrics| {
            metrics.get(&format!("portstat_listener_accept_queue{labels}")) == Some(3.0)
        })
        .unwrap();
    assert_eq!(
        metrics.value(&format!("portstat_listener_accept_queue{labels}")),
        3.0
    );
    assert_eq!(
        metrics.value(&format!("portstat_listener_accept_queue_limit{labels}")),
        5.0
    );
    // procfs does not report the limit, so neither family is written.
    let procfs = netns.once_metrics(&["--collector.source", "procfs"]);
    assert!(procfs.family("portstat_listener_accept_queue").is_empty());
    assert!(
        procfs
            .family("portstat_listener_accept_queue_limit")
            .is_empty()
    );
}

/// Fails `socket(AF_NETLINK, ...)` with EAFNOSUPPORT, as a kernel without
/// netlink diag support would.
fn refuse_netlink(command: &mut std::process::Command) {
    support::refuse_netlink(command, libc::EAFNOSUPPORT);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn auto_falls_back_to_procfs_once_where_netlink_is_refused() {
    let netns = Netns::new((40000, 40099), "");
    // A socket of each protocol, so that neither dump is skipped as empty.
    let _sockets = netns.run(|| {
        (
            TcpListener::bind("127.0.0.1:40050").unwrap(),
            std::net::UdpSocket::bind("127.0.0.1:40060").unwrap(),
        )
    });
    let mut command = netns.command(support::exporter());
    command.args(["--once", "--log.level", "warn"]);
    refuse_netlink(&mut command);
    // BPF refused too: it reads TCP without netlink (tests/bpf.rs), and
    // would keep TCP off procfs.
    support::refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
    let output = command.output_within().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    for protocol in ["tcp", "udp"] {
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_source_info{{protocol="{protocol}",source="procfs"}}"#
            )),
            1.0
        );
    }
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        1.0
    );
    // One warning per protocol that fell back, naming the cause.
    assert_eq!(
        stderr.matches("reading procfs instead").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("Address family not supported"), "{stderr}");

    // With netlink demanded, the sample fails instead.
    let mut command = netns.command(support::exporter());
    command.args(["--once", "--collector.source", "netlink"]);
    refuse_netlink(&mut command);
    let output = command.output_within().unwrap();
    assert_eq!(output.status.code(), Some(1));
}

/// Where the recorded replies live, beside the codec they test.
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/portstat-core/src/parse/fixtures/netlink"
);

/// Records this kernel's replies to the source's dumps, for the tests of
/// `crates/portstat-core/src/parse/netlink.rs`: in a namespace with the range 40000-40099,
/// TCP listeners on 127.0.0.1:7000 (one connection from 127.0.0.1:40001
/// waiting to be accepted, backlog 8) and [::1]:7001, a TIME_WAIT from
/// [::1]:40002, a socket bound to 127.0.0.1:40050, and UDP sockets on
/// 127.0.0.1:5353, 127.0.0.1:40060 (connected to :5353) and [::1]:5354.
/// Each file holds the datagrams of one dump, each after its length as a
/// little-endian u32. Run by hand to record them again:
/// `cargo test --test netlink -- --ignored record_sock_diag_fixtures`.
#[test]
#[ignore = "writes crates/portstat-core/src/parse/fixtures/netlink/; run by hand to record them again"]
fn record_sock_diag_fixtures() {
    use portstat_core::model::{PortRange, Protocol};
    use portstat_exporter::source::netlink::socket::NetlinkSocket;
    use portstat_exporter::source::netlink::wire::{build_request, dumps_for};
    use std::io::Read;

    let netns = Netns::new((40000, 40099), "");
    netns.run(|| {
        let v4 = listening_socket("127.0.0.1:7000", false, 8);
        let v6 = TcpListener::from(listening_socket("[::1]:7001", false, 8));
        let waiting = bound_socket("127.0.0.1:40001", false);
        waiting
            .connect(&"127.0.0.1:7000".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let closing = TcpStream::from({
            let socket = bound_socket("[::1]:40002", false);
            socket
                .connect(&"[::1]:7001".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            socket
        });
        let (mut accepted, _) = v6.accept().unwrap();
        drop(closing);
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).unwrap();
        drop(accepted);
        let bound = bound_socket("127.0.0.1:40050", false);
        let server = UdpSocket::bind("127.0.0.1:5353").unwrap();
        let client = UdpSocket::bind("127.0.0.1:40060").unwrap();
        client.connect("127.0.0.1:5353").unwrap();
        let server6 = UdpSocket::bind("[::1]:5354").unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let range = PortRange {
            start: 40000,
            end: 40099,
        };
        let tcp = dumps_for(Protocol::Tcp, range, true, true);
        let tcp_per_family = dumps_for(Protocol::Tcp, range, false, true);
        let udp = dumps_for(Protocol::Udp, range, false, false);
        let recordings = [
            ("tcp-listeners", &tcp[0]),
            ("tcp-connections", &tcp[1]),
            ("tcp-ipv4-connections", &tcp_per_family[1]),
            ("udp-ipv4", &udp[0]),
            ("udp-ipv6", &udp[1]),
        ];
        let socket = NetlinkSocket::open().unwrap();
        let mut request = Vec::new();
        for (name, dump) in recordings {
            build_request(dump, 1, &mut request);
            let file = support::record_dump(&socket, &request);
            std::fs::write(format!("{FIXTURES}/{name}.bin"), file).unwrap();
        }
        drop((v4, waiting, bound, server, client, server6));
    });
}
