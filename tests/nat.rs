//! Source NAT from conntrack, against a real masquerading router: three
//! namespaces (`support::NatLab`), real connections through it, and the
//! exporter in the router's namespace compared with `conntrack -L` and with
//! what the kernel does when the NAT ports run out.

mod support;

use support::Place;

use support::OutputWithin;

use std::net::TcpStream;

use support::{Metrics, NatLab, Netns};

/// The NAT ports of the lab's rule: 20.
const NAT_PORTS: (u16, u16) = (45000, 45019);
const PORT_RANGE_FLAG: [&str; 2] = ["--collector.nat.port-range", "45000-45019"];

fn tcp_ports_used(metrics: &Metrics) -> f64 {
    metrics.value(&format!(
        "portstat_nat_destination_ports_used{{protocol=\"tcp\",nat_address=\"{}\",remote_address=\"{}\",remote_port=\"8080\"}}",
        NatLab::NAT_ADDRESS,
        NatLab::SERVER
    ))
}

fn tcp_ratio(metrics: &Metrics) -> f64 {
    metrics.value("portstat_nat_destination_max_used_ratio{protocol=\"tcp\"}")
}

fn connect_all(lab: &NatLab, streams: &mut Vec<TcpStream>, count: usize) {
    while streams.len() < count {
        let n = streams.len();
        streams.push(
            lab.connect(n)
                .unwrap_or_else(|error| panic!("connection {} failed: {error}", n + 1)),
        );
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn masquerade_reads_full_at_the_first_dropped_syn() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();

    connect_all(&lab, &mut streams, 19);
    let before = lab.router.once_until(&PORT_RANGE_FLAG, |metrics| {
        metrics.get("portstat_nat_destination_ports_used{protocol=\"tcp\",nat_address=\"10.77.2.1\",remote_address=\"10.77.2.2\",remote_port=\"8080\"}") == Some(19.0)
    }).unwrap();
    assert_eq!(tcp_ports_used(&before), 19.0);
    assert_eq!(lab.conntrack_entries("tcp", 8080), 19);
    assert_eq!(tcp_ratio(&before), 0.95);
    assert_eq!(before.value("portstat_nat_port_capacity"), 20.0);
    assert_eq!(
        before.value("portstat_nat_destinations{protocol=\"tcp\"}"),
        1.0
    );
    assert_eq!(
        before.value("portstat_nat_destinations{protocol=\"udp\"}"),
        0.0
    );
    assert_eq!(before.value("portstat_nat_conntrack_entries"), 19.0);
    assert!(before.value("portstat_nat_conntrack_entries_limit") > 0.0);
    let drops_before = before.value("portstat_nat_drop_total");
    let insert_failed_before = before.value("portstat_nat_insert_failed_total");

    // The 20th connection takes the last port: the ratio reads 1.
    connect_all(&lab, &mut streams, 20);
    let full = lab.router.once(&PORT_RANGE_FLAG);
    let full = Metrics::parse(&String::from_utf8_lossy(&full.stdout));
    assert_eq!(tcp_ports_used(&full), 20.0);
    assert_eq!(lab.conntrack_entries("tcp", 8080), 20);
    assert_eq!(tcp_ratio(&full), 1.0);

    // The 21st: the router finds no free port, drops the SYN, and the
    // handshake times out. The client had ports to spare.
    let refused = lab.connect(20);
    let error = refused.expect_err("a 21st connection through 20 NAT ports");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    let after = lab.router.once(&PORT_RANGE_FLAG);
    let after = Metrics::parse(&String::from_utf8_lossy(&after.stdout));
    assert_eq!(tcp_ratio(&after), 1.0);
    assert_eq!(tcp_ports_used(&after), 20.0);
    assert!(
        after.value("portstat_nat_drop_total") > drops_before,
        "the drop counter did not rise"
    );
    assert!(after.value("portstat_nat_insert_failed_total") > insert_failed_before);

    // Without the flag, the capacity is MASQUERADE's default range.
    let default = lab.router.once(&[]);
    let default = Metrics::parse(&String::from_utf8_lossy(&default.stdout));
    assert_eq!(default.value("portstat_nat_port_capacity"), 64512.0);
    assert_eq!(tcp_ratio(&default), 20.0 / 64512.0);

    // The client's own sockets are no NAT: its namespace has no NAT series.
    let client = lab.client.once(&[]);
    let client = String::from_utf8_lossy(&client.stdout).into_owned();
    assert!(!client.contains("portstat_nat_"), "{client}");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn udp_nat_is_counted_apart_from_tcp() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 3);
    let _queries: Vec<_> = (0..5).map(|_| lab.send_udp()).collect();
    let metrics = lab
        .router
        .once_until(&PORT_RANGE_FLAG, |metrics| {
            metrics.get("portstat_nat_destinations{protocol=\"udp\"}") == Some(1.0)
        })
        .unwrap();
    assert_eq!(lab.conntrack_entries("udp", 53), 5);
    assert_eq!(
        metrics.value("portstat_nat_destination_ports_used{protocol=\"udp\",nat_address=\"10.77.2.1\",remote_address=\"10.77.2.2\",remote_port=\"53\"}"),
        5.0
    );
    assert_eq!(tcp_ports_used(&metrics), 3.0);
    assert_eq!(
        metrics.value("portstat_nat_destination_max_used_ratio{protocol=\"udp\"}"),
        0.25
    );
    assert_eq!(tcp_ratio(&metrics), 0.15);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ipv6_masquerade_is_a_pair_of_its_own() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 2);
    let ipv6: Vec<TcpStream> = (0..3)
        .map(|n| {
            lab.connect_v6()
                .unwrap_or_else(|error| panic!("IPv6 connection {}: {error}", n + 1))
        })
        .collect();
    let metrics = lab
        .router
        .once_until(&PORT_RANGE_FLAG, |metrics| {
            metrics.get("portstat_nat_destinations{protocol=\"tcp\"}") == Some(2.0)
        })
        .unwrap();
    let output = lab
        .router
        .command("conntrack")
        .args(["-L", "-f", "ipv6", "-p", "tcp", "--dport", "8080"])
        .output_within()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout).lines().count();
    assert_eq!(listed, 3, "conntrack -L -f ipv6");
    assert_eq!(
        metrics.value(&format!(
            "portstat_nat_destination_ports_used{{protocol=\"tcp\",nat_address=\"{}\",remote_address=\"{}\",remote_port=\"8080\"}}",
            NatLab::NAT_ADDRESS_V6,
            NatLab::SERVER_V6
        )),
        3.0
    );
    assert_eq!(tcp_ports_used(&metrics), 2.0);
    assert_eq!(tcp_ratio(&metrics), 0.15);
    drop(ipv6);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_mark_filter_keeps_only_the_marked_connections() {
    let lab = NatLab::new(NAT_PORTS);
    // Connections from 10.77.1.2 carry conntrack mark 0x10 (with other bits
    // set that the mask leaves out).
    support::run(lab.router.command("iptables").args([
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-s",
        "10.77.1.2",
        "-j",
        "CONNMARK",
        "--set-mark",
        "0x1f",
    ]));
    let mut streams = Vec::new();
    // Connection n leaves from 10.77.1.(2 + n % 11): 0 and 11 are marked.
    connect_all(&lab, &mut streams, 12);
    let marked = lab
        .router
        .once_until(
            &[
                "--collector.nat.port-range",
                "45000-45019",
                "--collector.nat.mark",
                "0x10/0xf0",
            ],
            |metrics| metrics.get("portstat_nat_destinations{protocol=\"tcp\"}") == Some(1.0),
        )
        .unwrap();
    assert_eq!(tcp_ports_used(&marked), 2.0);
    let all = lab.router.once(&PORT_RANGE_FLAG);
    let all = Metrics::parse(&String::from_utf8_lossy(&all.stdout));
    assert_eq!(tcp_ports_used(&all), 12.0);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn every_namespace_reports_its_own_nat() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 4);
    let router = format!("netns_name=\"{}\"", lab.router.name());
    let metrics = lab
        .server
        .once_until(
            &[
                "--collector.netns=all",
                "--collector.nat.port-range",
                "45000-45019",
            ],
            |metrics| {
                metrics
                    .family("portstat_nat_destination_ports_used")
                    .keys()
                    .any(|series| series.contains(&router))
            },
        )
        .unwrap();
    let series: Vec<(String, f64)> = metrics
        .family("portstat_nat_destination_ports_used")
        .into_iter()
        .filter(|(series, _)| series.contains(&router))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].1, 4.0, "{series:?}");
    // The server's and the client's namespaces translate nothing.
    for quiet in [&lab.server, &lab.client] {
        assert!(
            !metrics
                .family("portstat_nat_port_capacity")
                .keys()
                .any(|series| series.contains(&format!("netns_name=\"{}\"", quiet.name()))),
            "{} has NAT series",
            quiet.name()
        );
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn without_cap_net_admin_there_are_no_nat_series_and_no_error() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 2);
    let output = lab
        .router
        .command("capsh")
        .arg("--drop=cap_net_admin")
        .arg("--")
        .arg("-c")
        .arg(format!("exec {} --once \"$@\"", support::exporter()))
        .arg("portstat_exporter")
        .args(PORT_RANGE_FLAG)
        .output_within()
        .expect("capsh is needed (Debian package libcap2-bin)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("portstat_nat_"), "{text}");
    let metrics = Metrics::parse(&text);
    assert_eq!(metrics.value("portstat_sample_success"), 1.0);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("CAP_NET_ADMIN"),
        "the log does not say why: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A namespace without any NAT rule writes no NAT series, though conntrack
/// tracks its connections.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn conntrack_without_nat_writes_nothing() {
    let netns = Netns::new((40000, 40099), "");
    // Any rule that uses conntrack turns it on in the namespace.
    support::run(netns.command("iptables").args([
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-j",
        "ACCEPT",
    ]));
    let listener = netns.run(|| support::listening_socket("127.0.0.1:7000", false, 8));
    let _client = netns.connect("127.0.0.1:7000".parse().unwrap()).unwrap();
    let output = netns.once(&[]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("portstat_nat_"), "{text}");
    drop(listener);
}

/// Records this kernel's replies to the conntrack source's dump, for the
/// tests of `crates/portstat-core/src/parse/conntrack.rs`: in the lab, three TCP
/// connections from 10.77.1.2 to .4 and two UDP datagrams from 10.77.1.2
/// through the router, plus a TCP connection over the router's loopback
/// that no rule translates. `nat.bin` answers the source's request;
/// `unfiltered.bin` the same request without its status filter, as a
/// kernel before 6.1 answers it. Each file holds the datagrams of one dump,
/// each after its length as a little-endian u32. Run by hand to record
/// them again: `cargo test --test nat -- --ignored record_ctnetlink_fixtures`.
#[test]
#[ignore = "writes crates/portstat-core/src/parse/fixtures/conntrack/; run by hand to record them again"]
fn record_ctnetlink_fixtures() {
    use portstat_exporter::source::conntrack::wire::build_request;
    use portstat_exporter::source::netlink::socket::NetlinkSocket;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/portstat-core/src/parse/fixtures/conntrack"
    );
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 3);
    let _queries: Vec<_> = (0..2).map(|_| lab.send_udp()).collect();
    let _local = lab.router.run(|| {
        let listener = support::listening_socket("127.0.0.1:7000", false, 8);
        let client = TcpStream::connect("127.0.0.1:7000").unwrap();
        (listener, client)
    });
    std::fs::create_dir_all(FIXTURES).unwrap();
    lab.router.run(|| {
        let socket = NetlinkSocket::open_family(libc::NETLINK_NETFILTER as isize).unwrap();
        let mut request = Vec::new();
        build_request(1, None, &mut request);
        // struct nlmsghdr and struct nfgenmsg, without the attributes.
        let mut unfiltered = request[..20].to_vec();
        unfiltered[..4].copy_from_slice(&20u32.to_ne_bytes());
        for (name, request) in [("nat", &request), ("unfiltered", &unfiltered)] {
            let file = support::record_dump(&socket, request);
            std::fs::write(format!("{FIXTURES}/{name}.bin"), file).unwrap();
        }
    });
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn inspect_and_the_landing_page_show_the_busiest_nat_pairs() {
    let lab = NatLab::new(NAT_PORTS);
    let mut streams = Vec::new();
    connect_all(&lab, &mut streams, 17);
    let _query = lab.send_udp();
    let inspect = |args: &[&str]| {
        let args: Vec<&str> = args.iter().chain(&PORT_RANGE_FLAG).copied().collect();
        lab.router.inspect(&args)
    };
    let text = inspect(&[]);
    assert!(
        text.contains("Source NAT (conntrack): 20 ports per (NAT address, destination)"),
        "{text}"
    );
    let pair = text
        .lines()
        .find(|line| line.contains("tcp 10.77.2.1 -> 10.77.2.2:8080"))
        .unwrap_or_else(|| panic!("no TCP pair in {text}"));
    let figures: Vec<&str> = pair.split_whitespace().rev().take(2).collect();
    assert_eq!(figures, ["3", "17"], "{pair}");
    assert!(text.contains("udp 10.77.2.1 -> 10.77.2.2:53"), "{text}");
    assert!(text.contains(" 85.0% "), "{text}");
    // One pair of each protocol, counted in the singular.
    assert!(text.contains("  (1 pair)\n"), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }

    let json: serde_json::Value = serde_json::from_str(&inspect(&["--json"])).unwrap();
    let nat = &json["nat"];
    assert_eq!(nat["capacity"], 20.0);
    assert_eq!(nat["tcp"]["max_used_ratio"], 0.85);
    assert_eq!(nat["udp"]["destination_count"], 1.0);
    assert_eq!(nat["destinations"][0]["used"], 17.0);
    assert_eq!(nat["destinations"][0]["remote_port"], 8080.0);
    assert!(nat["conntrack"]["entries"].as_f64().unwrap() >= 18.0);

    let exporter = lab
        .router
        .start_exporter(&["--collector.nat.port-range", "45000-45019"]);
    let page = exporter.get("/").unwrap().text();
    assert!(page.contains("Source NAT"), "{page}");
    assert!(
        page.contains(
            "<tr><td>tcp</td><td>10.77.2.1</td><td>10.77.2.2:8080</td><td class=\"num\">17</td>"
        ),
        "{page}"
    );
    // 85 %: amber, as the warning alert fires.
    assert!(
        page.contains("<div class=\"fill warning\" style=\"width:85.0%\">"),
        "{page}"
    );
}
