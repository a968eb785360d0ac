//! The metric contract: the exposition is valid for Prometheus's own linter,
//! and the metric table of `docs/metrics.md` lists exactly the families the exporter writes.

mod support;

use support::Place;

use support::OutputWithin;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};

use support::Netns;

/// An exposition with every family present: a TCP listener inside the range,
/// a UDP listener outside it, a connection to a destination, and one bound
/// to its source address before connecting (seen by the BPF source, the
/// default where it can run).
fn full_exposition() -> String {
    full_exposition_with(&[])
}

fn full_exposition_with(args: &[&str]) -> String {
    let netns = Netns::new((40000, 40099), "40090-40099");
    let _sockets = netns.run(|| {
        let server = TcpListener::bind("127.0.0.1:80").unwrap();
        let inside = TcpListener::bind("0.0.0.0:40001").unwrap();
        let client = std::net::TcpStream::connect("127.0.0.1:80").unwrap();
        let bound_first = support::bound_socket("127.0.0.1:0", false);
        bound_first
            .connect(
                &"127.0.0.1:80"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        (
            inside,
            UdpSocket::bind("127.0.0.1:53").unwrap(),
            server,
            (client, bound_first),
        )
    });
    let output = netns.once(args);
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The exposition of a masquerading router (`support::NatLab`) with a TCP
/// connection and a UDP datagram translated: every `portstat_nat_` family.
fn nat_exposition() -> String {
    let lab = support::NatLab::new((45000, 45019));
    let _connection = lab.connect(0).unwrap();
    let _datagram = lab.send_udp();
    let metrics = lab
        .router
        .once_until(&[], |metrics| {
            metrics.get("portstat_nat_destinations{protocol=\"udp\"}") == Some(1.0)
        })
        .unwrap();
    assert_eq!(
        metrics.get("portstat_nat_destinations{protocol=\"tcp\"}"),
        Some(1.0)
    );
    let output = lab.router.once(&[]);
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The exposition of a daemon (which adds its interval and the failure
/// families, which --once has not) in a namespace of two ports, after a
/// third `connect()` to one destination failed, and a third UDP `bind()`.
fn served_exposition() -> String {
    // The failure families are written only where BPF counts failures.
    support::require_bpf();
    let netns = Netns::new((40000, 40001), "");
    let exporter = netns.start_exporter(&["--collector.failures.autobind", "true"]);
    let _sockets = netns.run(|| {
        let server = TcpListener::bind("127.0.0.1:80").unwrap();
        let clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect("127.0.0.1:80").unwrap())
            .collect();
        let refused = std::net::TcpStream::connect("127.0.0.1:80").unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrNotAvailable);
        let bound: Vec<_> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let in_use = UdpSocket::bind("127.0.0.1:0").unwrap_err();
        assert_eq!(in_use.kind(), std::io::ErrorKind::AddrInUse);
        (server, clients, bound)
    });
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get("portstat_ephemeral_connect_failures_total{protocol=\"tcp\"}") == Some(1.0)
        })
        .unwrap();
    assert_eq!(
        metrics.get("portstat_ephemeral_connect_failures_total{protocol=\"tcp\"}"),
        Some(1.0),
        "the failure counter runs where the tests run (root, BPF)"
    );
    metrics.text
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn exposition_passes_promtool_check_metrics() {
    for text in [full_exposition(), nat_exposition(), served_exposition()] {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is needed (Debian package prometheus); .ci/run installs it");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = promtool.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn readme_metric_table_matches_the_exposition() {
    let text = full_exposition();
    // Every namespace sampled adds the namespace-count families.
    let all = full_exposition_with(&["--collector.netns", "all"]);
    let served = served_exposition();
    let nat = nat_exposition();
    let rendered: BTreeSet<String> = text
        .lines()
        .chain(all.lines())
        .chain(served.lines())
        .chain(nat.lines())
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .filter(|name| name.starts_with("portstat_"))
        .map(str::to_string)
        .collect();
    let table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `portstat_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("portstat_{name}"))
        .collect();
    assert_eq!(
        rendered, documented,
        "rendered families (left) differ from the metric table of docs/metrics.md (right)"
    );

    // Each row's type and labels are what is rendered. The namespace labels
    // of --collector.netns=all are documented once, not on every row.
    let namespace_labels = ["netns", "netns_name", "container_id", "pod_uid"];
    let mut rendered_rows: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text
        .lines()
        .chain(all.lines())
        .chain(served.lines())
        .chain(nat.lines())
    {
        if let Some(declaration) = line.strip_prefix("# TYPE portstat_") {
            let declaration = format!("portstat_{declaration}");
            let (name, kind) = declaration.split_once(' ').unwrap();
            rendered_rows.entry(name.to_string()).or_default().0 = kind.to_string();
        } else if !line.starts_with('#') && line.starts_with("portstat_") {
            let Some((name, labels)) = line.split_once('{') else {
                continue;
            };
            let labels = labels.rsplit_once('}').unwrap().0;
            let names = labels
                .split("\",")
                .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.to_string()))
                .filter(|name| !namespace_labels.contains(&name.as_str()));
            rendered_rows
                .entry(name.to_string())
                .or_default()
                .1
                .extend(names);
        }
    }
    // The metric table's rows: name, type, labels, help (other tables name
    // families too, with other columns).
    let documented_rows: BTreeMap<String, (String, BTreeSet<String>)> = table
        .lines()
        .filter(|line| line.starts_with("| `portstat_"))
        .map(|line| line.split('|').map(str::trim).collect::<Vec<&str>>())
        .filter(|cells| cells.len() >= 6)
        .map(|cells| {
            let name = cells[1].trim_matches('`').to_string();
            // `protocol` (`tcp`), `reason`: each label's name is its first
            // quoted word; what follows it names its values.
            let labels = cells[3]
                .split(", ")
                .filter_map(|label| label.split('`').nth(1))
                .map(str::to_string)
                .collect();
            (name, (cells[2].to_string(), labels))
        })
        .collect();
    for (name, row) in &rendered_rows {
        assert_eq!(
            Some(row),
            documented_rows.get(name),
            "{name}: rendered type and labels (left), docs/metrics.md row (right)"
        );
    }
    assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    assert!(table.contains("`process_*`"));
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn build_info_names_the_version_and_the_revision() {
    let text = full_exposition();
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output_within()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let expected = format!(
        "portstat_build_info{{version=\"{}\",revision=\"{revision}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&expected), "{expected} missing from:\n{text}");
}
