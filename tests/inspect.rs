//! `portstat_exporter inspect`: the report for people, and its JSON form.

mod support;

use support::Place;

use support::OutputWithin;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::{Netns, Recorded, own_comm};

/// Fails the test, naming `what` and the line, where a line of `report`
/// is wider than a terminal's 80 columns.
fn assert_fits_80_columns(report: &str, what: &str) {
    for line in report.lines() {
        assert!(line.chars().count() <= 80, "{what}: too wide: {line:?}");
    }
}

/// A 100-port range with 10 reserved: 30 connections to one destination and
/// 5 to another, 3 of them then closed into TIME_WAIT, and a listener inside
/// the range.
fn populated() -> (Netns, impl Sized) {
    let netns = Netns::new((40000, 40099), "40090-40099");
    netns.write_sysctl("tcp_tw_reuse", "0");
    let held = netns.run(|| {
        let first = TcpListener::bind("127.0.0.1:80").unwrap();
        let second = TcpListener::bind("127.0.0.2:8080").unwrap();
        let inside = TcpListener::bind("0.0.0.0:40050").unwrap();
        let mut streams: Vec<TcpStream> = (0..30)
            .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
            .collect();
        for _ in 0..5 {
            let client = TcpStream::connect("127.0.0.2:8080").unwrap();
            let (accepted, _) = second.accept().unwrap();
            streams.extend([client, accepted]);
        }
        // Three closed by this side, after the server end closed too.
        for _ in 0..3 {
            let client = TcpStream::connect("127.0.0.2:8080").unwrap();
            let (accepted, _) = second.accept().unwrap();
            drop(client);
            std::thread::sleep(Duration::from_millis(20));
            drop(accepted);
        }
        (first, second, inside, streams)
    });
    (netns, held)
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_text_report_fits_80_columns_and_names_the_busiest() {
    let (netns, _held) = populated();
    // Without BPF too, where headroom is "at most" and says why.
    for source in ["netlink", "procfs"] {
        let report = netns.inspect(&["--collector.source", source]);
        assert!(report.contains("need BPF to be seen"), "{source}: {report}");
        assert_fits_80_columns(&report, source);
    }
    let report = netns.inspect(&[]);
    println!("{report}");
    assert_fits_80_columns(&report, "auto");
    assert!(
        report.starts_with("Ephemeral range 40000-40099: 100 ports, 10 reserved, capacity 90\n"),
        "{report}"
    );
    // 30 ports to the first destination; headroom 90 - 1 exclusive - 30.
    let first = report
        .lines()
        .find(|line| line.contains("127.0.0.1 -> 127.0.0.1:80"))
        .expect("the busiest destination");
    assert_eq!(
        first.split_whitespace().rev().take(2).collect::<Vec<_>>(),
        ["59", "30"]
    );
    // 5 open and 3 in TIME_WAIT to the second.
    let second = report
        .lines()
        .find(|line| line.contains("127.0.0.1 -> 127.0.0.2:8080"))
        .expect("the second destination");
    assert_eq!(
        second.split_whitespace().rev().take(2).collect::<Vec<_>>(),
        ["81", "8"]
    );
    assert!(report.contains("Busiest destination: 30 ports + 1 exclusive = 34.4% of capacity"));
    let listener = report
        .lines()
        .find(|line| line.contains("0.0.0.0:40050"))
        .expect("the listener inside the range");
    assert!(listener.starts_with('*'), "{listener}");
    assert!(listener.contains(&own_comm()), "{listener}");
    let none = report
        .lines()
        .find(|line| line.trim_start().starts_with("none "))
        .expect("TIME_WAIT under none");
    assert!(none.ends_with(" 3"), "{none}");
    assert!(none.contains("TIME_WAIT"), "{none}");

    // Each heading ends where its column's numbers end.
    let heading = |start: &str| {
        report
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no heading {start:?} in {report}"))
    };
    let destinations = heading("Top destinations");
    assert_eq!(destinations.len(), first.len(), "{destinations}\n{first}");
    assert!(destinations[..destinations.len() - 10].ends_with("used"));
    assert!(destinations.ends_with("headroom"));
    let processes = heading("Top processes");
    assert!(processes.ends_with("ports"), "{processes}");
    assert_eq!(processes.len(), none.len(), "{processes}\n{none}");
    let listeners = heading("       address");
    assert!(listeners.ends_with("sockets"), "{listeners}");
    assert_eq!(listeners.len(), listener.len(), "{listeners}\n{listener}");
    let protocols = heading("protocol");
    let tcp = heading("tcp ");
    assert_eq!(
        protocols.len(),
        tcp.find('%').unwrap() + 1,
        "fill heads the percentage:\n{protocols}\n{tcp}"
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_port_shows_who_holds_it_and_in_which_state() {
    let (netns, _held) = populated();
    // A connection the listener has not accepted: its server end is on the
    // listener's port, held by no process yet.
    let _waiting = netns.run(|| TcpStream::connect("127.0.0.1:40050").unwrap());
    let report = netns.inspect(&["40050"]);
    let section = report.split("Port 40050: ").nth(1).expect("a port section");
    assert!(section.starts_with("2 sockets\n"), "{section}");
    assert!(section.contains("tcp  listen"), "{section}");
    assert!(section.contains(&own_comm()), "{section}");
    let waiting = section
        .lines()
        .find(|line| line.contains("established"))
        .expect("the connection waiting to be accepted");
    assert!(waiting.ends_with("waiting in accept queue"), "{waiting}");
    assert!(
        section.lines().nth(1).unwrap().contains("state"),
        "a heading over the columns: {section}"
    );

    // Without attribution no owner is known, and none is made up.
    let report = netns.inspect(&["40050", "--collector.processes=false"]);
    let section = report.split("Port 40050: ").nth(1).expect("a port section");
    for line in section.lines().skip(2) {
        assert!(line.ends_with("unknown"), "{line}");
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn json_matches_the_metrics() {
    let (netns, _held) = populated();
    let json: serde_json::Value =
        serde_json::from_str(&netns.inspect(&["40050", "--json"])).unwrap();
    let metrics = netns.once_metrics(&[]);
    assert_eq!(json["capacity"], 90);
    assert_eq!(json["reserved"], 10);
    assert_eq!(json["exclusive"], 1);
    assert_eq!(json["destination_count"], 2);
    assert_eq!(
        json["destination_max_used_ratio"].as_f64().unwrap(),
        metrics.value("portstat_ephemeral_destination_max_used_ratio")
    );
    let tcp = &json["protocols"][0];
    assert_eq!(tcp["protocol"], "tcp");
    assert_eq!(
        tcp["used"].as_f64().unwrap(),
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#)
    );
    assert_eq!(tcp["sockets"]["time_wait"], 3);
    let destinations = json["destinations"].as_array().unwrap();
    assert_eq!(destinations[0]["remote_address"], "127.0.0.1");
    assert_eq!(destinations[0]["used"], 30);
    assert_eq!(destinations[0]["headroom"], 59);
    assert_eq!(destinations[1]["remote_port"], 8080);
    assert_eq!(destinations[1]["used"], 8);
    let listener = json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|listener| listener["port"] == 40050)
        .unwrap();
    assert_eq!(listener["in_ephemeral_range"], true);
    assert_eq!(json["port"]["port"], 40050);
    assert_eq!(json["port"]["sockets"][0]["state"], "listen");
    assert_eq!(json["port"]["sockets"][0]["process"], own_comm());
}

#[test]
fn inspect_fails_with_a_message_when_the_kernel_cannot_be_read() {
    let place = Recorded::new((40000, 40099), "");
    std::fs::remove_dir_all(place.procfs()).unwrap();
    let output = place.inspect_command().output_within().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(place.procfs().to_str().unwrap()),
        "{stderr}"
    );
}

/// The text report and its JSON form, of the sockets recorded in
/// `tests/fixtures/procfs/host`: the figures those sockets give, the same
/// in both forms and in the metrics of `--once`.
#[test]
fn the_reports_of_recorded_sockets_agree_with_each_other_and_the_metrics() {
    let place = Recorded::new((40000, 40099), "40090-40099");
    let report = place.inspect(&["40050"]);
    assert_fits_80_columns(&report, "recorded");
    assert!(
        report.starts_with("Ephemeral range 40000-40099: 100 ports, 10 reserved, capacity 90\n"),
        "{report}"
    );
    let destination = report
        .lines()
        .find(|line| line.contains("127.0.0.1 -> 127.0.0.1:8080"))
        .unwrap_or_else(|| panic!("no destination line: {report}"));
    assert_eq!(
        destination
            .split_whitespace()
            .rev()
            .take(2)
            .collect::<Vec<_>>(),
        ["86", "3"],
        "{report}"
    );
    assert!(
        report.contains("* tcp  127.0.0.1:40050"),
        "the listener inside the range is marked: {report}"
    );
    let section = report.split("Port 40050: ").nth(1).expect("a port section");
    assert!(section.starts_with("1 socket\n"), "{section}");

    let json: serde_json::Value =
        serde_json::from_str(&place.inspect(&["40050", "--json"])).unwrap();
    let metrics = place.once_metrics(&[]);
    assert_eq!(json["capacity"], 90);
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 90.0);
    assert_eq!(json["exclusive"], 1);
    let tcp = &json["protocols"][0];
    assert_eq!(tcp["used"], 4);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        4.0
    );
    assert_eq!(tcp["sockets"]["established"], 2);
    assert_eq!(tcp["sockets"]["time_wait"], 1);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="time_wait"}"#),
        1.0
    );
    let udp = &json["protocols"][1];
    assert_eq!(udp["used"], 1);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="udp"}"#),
        1.0
    );
    let destinations = json["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 1);
    assert_eq!(destinations[0]["remote_port"], 8080);
    assert_eq!(destinations[0]["used"], 3);
    assert_eq!(destinations[0]["headroom"], 86);
    assert_eq!(
        json["destination_max_used_ratio"].as_f64().unwrap(),
        metrics.value("portstat_ephemeral_destination_max_used_ratio")
    );
    assert_eq!(json["port"]["sockets"][0]["state"], "listen");
}

/// A process named with terminal escapes changes nothing on the operator's
/// terminal: every control character is written escaped.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn control_characters_in_a_process_name_reach_the_terminal_escaped() {
    let netns = Netns::new((40000, 40099), "");
    let _named = support::NamedListener::start(&netns, b"\x1b]0;PWN\x07\x1b[31mX", 7002);
    let report = netns.inspect(&["7002"]);
    assert!(
        !report.chars().any(|c| c.is_control() && c != '\n'),
        "{report:?}"
    );
    assert!(report.contains("\\x1b]0;PWN"), "{report}");
}

const LOADED: &str = r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#;

/// Fills the namespace's ten ports toward a listener on 127.0.0.1:8080,
/// then makes three calls that fail, once the exporter counts failures;
/// returns when it has counted them, with the sockets to hold.
fn three_failures(
    netns: &Netns,
    exporter: &support::Exporter<'_>,
) -> (TcpListener, Vec<TcpStream>) {
    exporter
        .metrics_until(|metrics| metrics.get(LOADED) == Some(1.0))
        .unwrap();
    let held = netns.run(|| {
        let server = TcpListener::bind("127.0.0.1:8080").unwrap();
        let streams: Vec<TcpStream> = (0..10)
            .map(|_| TcpStream::connect("127.0.0.1:8080").unwrap())
            .collect();
        for _ in 0..3 {
            let error = TcpStream::connect("127.0.0.1:8080").unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::AddrNotAvailable);
        }
        (server, streams)
    });
    exporter
        .metrics_until(|metrics| {
            metrics.get(r#"portstat_ephemeral_connect_failures_total{protocol="tcp"}"#) == Some(3.0)
        })
        .unwrap();
    held
}

/// Two processes of one name fail toward one destination: the kernel keeps
/// the last caller's pid, and `inspect` gives it as an example, never as
/// the pid behind every failure.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn failures_of_two_processes_of_one_name_give_a_pid_as_an_example() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let _held = three_failures(&netns, &exporter);
    // A second process of the test's name fails twice more.
    let script = format!(
        "import errno, socket\n\
         open('/proc/self/comm', 'w').write({comm:?})\n\
         for _ in range(2):\n\
         \x20   try:\n\
         \x20       socket.create_connection(('127.0.0.1', 8080))\n\
         \x20       raise SystemExit('a port was free')\n\
         \x20   except OSError as error:\n\
         \x20       assert error.errno == errno.EADDRNOTAVAIL, error\n",
        comm = own_comm()
    );
    let status = netns
        .command("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "the second process: {status}");
    exporter
        .metrics_until(|metrics| {
            metrics.get(r#"portstat_ephemeral_connect_failures_total{protocol="tcp"}"#) == Some(5.0)
        })
        .unwrap();
    let text = netns.inspect(&[]);
    let process = text
        .lines()
        .find(|line| line.contains(&format!("{} (e.g. pid ", own_comm())))
        .unwrap_or_else(|| panic!("no process line with an example pid: {text}"));
    assert!(process.ends_with(" 5"), "{process}");
    let json: serde_json::Value = serde_json::from_str(&netns.inspect(&["--json"])).unwrap();
    let listed = &json["failures"]["processes"][0];
    assert_eq!(listed["failed"], 5, "{listed}");
    assert_eq!(listed["other_pids"], true, "{listed}");
}

/// With an exporter in the namespace and a newer one elsewhere on the
/// host, `inspect` reads the one in its namespace (the newer one counts
/// only since it started) and says which it read.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn inspect_reads_the_exporter_of_its_own_namespace_and_says_which() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let _held = three_failures(&netns, &exporter);
    let elsewhere = Netns::new((40000, 40009), "");
    let newer = elsewhere.start_exporter(&["--collector.interval", "300ms"]);
    newer
        .metrics_until(|metrics| metrics.get(LOADED) == Some(1.0))
        .unwrap();

    let output = netns
        .command(support::exporter())
        .arg("inspect")
        .output_within()
        .unwrap();
    let (text, said) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        text.contains("Failed calls since the exporter started: tcp connect() 3\n"),
        "{text}"
    );
    assert!(
        said.contains(&format!(
            "failures as counted by the exporter of pid {}, in this network namespace",
            exporter.pid()
        )),
        "{said}"
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_failures_the_running_exporter_counted_are_listed() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let _held = three_failures(&netns, &exporter);

    let text = netns.inspect(&[]);
    assert!(
        text.contains("Failed calls since the exporter started: tcp connect() 3\n"),
        "{text}"
    );
    let destination = text
        .lines()
        .find(|line| line.contains("tcp 127.0.0.1 -> 127.0.0.1:8080"))
        .unwrap_or_else(|| panic!("no destination line: {text}"));
    assert!(destination.ends_with(" 3"), "{destination}");
    let process = text
        .lines()
        .find(|line| {
            line.contains(&format!(
                "{} (pid {}) tcp connect()",
                own_comm(),
                std::process::id()
            ))
        })
        .unwrap_or_else(|| panic!("no process line: {text}"));
    assert!(process.ends_with(" 3"), "{process}");
    assert_fits_80_columns(&text, "two processes of one name");

    let json: serde_json::Value = serde_json::from_str(&netns.inspect(&["--json"])).unwrap();
    let failures = &json["failures"];
    assert_eq!(failures["totals"][0]["call"], "connect");
    assert_eq!(failures["totals"][0]["failed"], 3);
    assert_eq!(failures["destinations"][0]["remote_address"], "127.0.0.1");
    assert_eq!(failures["destinations"][0]["remote_port"], 8080);
    assert_eq!(failures["destinations"][0]["failed"], 3);
    assert_eq!(failures["processes"][0]["process"], own_comm());
    assert_eq!(failures["processes"][0]["pid"], std::process::id());
    assert_eq!(failures["processes"][0]["failed"], 3);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_text_report_counts_in_the_singular_and_keeps_the_bar_with_its_line() {
    let (netns, _held) = populated();
    // The listener alone: one socket.
    let report = netns.inspect(&["40050"]);
    let section = report.split("Port 40050: ").nth(1).expect("a port section");
    assert!(section.starts_with("1 socket\n"), "{section}");
    // A port nothing holds: said so, and no table heading under it.
    let report = netns.inspect(&["40077"]);
    assert!(report.ends_with("Port 40077: no socket\n"), "{report}");
    // The bar of the busiest destination comes right under its line.
    let lines: Vec<&str> = report.lines().collect();
    let busiest = lines
        .iter()
        .position(|line| line.starts_with("Busiest destination:"))
        .expect("the busiest destination's line");
    assert!(
        lines[busiest + 1].contains("connect() to it fails at 100%"),
        "{report}"
    );
}

/// A port outside the ephemeral range: every connection accepted on it is
/// listed, whichever source reads the kernel, as `ss` lists them.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_port_outside_the_range_lists_every_connection_on_it() {
    let netns = Netns::new((40000, 40099), "");
    let _held = netns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:6000").unwrap();
        // Clients from ports outside the range too, which it has room for.
        let mut streams = Vec::new();
        for index in 0..3000u16 {
            let client = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            let local: std::net::SocketAddr =
                format!("127.0.0.1:{}", 20000 + index).parse().unwrap();
            client.bind(&local.into()).unwrap();
            client
                .connect(
                    &"127.0.0.1:6000"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            let (accepted, _) = listener.accept().unwrap();
            streams.push((TcpStream::from(client), accepted));
        }
        (listener, streams)
    });
    for source in ["auto", "netlink", "procfs"] {
        let report = netns.inspect(&["6000", "--collector.source", source]);
        let section = report.split("Port 6000: ").nth(1).expect("a port section");
        assert!(
            section.starts_with("3001 sockets\n"),
            "{source}: {}",
            &section[..200.min(section.len())]
        );
        assert_eq!(
            section
                .lines()
                .filter(|line| line.contains("established"))
                .count(),
            3000,
            "{source}"
        );
    }
}

/// Two python3 processes, a listener and a client holding a port of the
/// range, are told apart by pid in `inspect` and on the landing page.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn processes_of_one_name_are_told_apart_by_pid() {
    let netns = Netns::new((40000, 40099), "");
    // Each writes its own pid: `python3` may be a wrapper that forks.
    let pid_file = |name: &str| {
        std::env::temp_dir().join(format!("portstat-pid-{}-{name}", std::process::id()))
    };
    let (listener_file, client_file) = (pid_file("listener"), pid_file("client"));
    let _listener = support::ReadyScript::start(
        &netns,
        "import os, socket, sys\n\
         open(sys.argv[1], 'w').write(str(os.getpid()))\n\
         s = socket.socket(); s.bind(('127.0.0.1', 7100)); s.listen(8)\n\
         print('ready', flush=True); sys.stdin.read()",
        &[listener_file.to_str().unwrap()],
    );
    let _client = support::ReadyScript::start(
        &netns,
        "import os, socket, sys\n\
         open(sys.argv[1], 'w').write(str(os.getpid()))\n\
         c = socket.create_connection(('127.0.0.1', 7100))\n\
         print('ready', flush=True); sys.stdin.read()",
        &[client_file.to_str().unwrap()],
    );
    let read_pid = |file: &std::path::Path| -> u32 {
        let pid = std::fs::read_to_string(file).unwrap().parse().unwrap();
        let _ = std::fs::remove_file(file);
        pid
    };
    let (listener, client) = (read_pid(&listener_file), read_pid(&client_file));
    let report = netns.inspect(&[]);
    // One port to the busiest destination, in the singular.
    assert!(
        report.contains("Busiest destination: 1 port + 0 exclusive"),
        "{report}"
    );
    let listener_row = report
        .lines()
        .find(|line| line.starts_with("  tcp  127.0.0.1:7100 "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        listener_row.contains(&format!("python3 (pid {listener})")),
        "listener {listener}, client {client}: {report}"
    );
    assert!(
        report.lines().any(|line| line
            .trim_start()
            .starts_with(&format!("python3 (pid {client})"))),
        "{report}"
    );
    let json: serde_json::Value = serde_json::from_str(&netns.inspect(&["--json"])).unwrap();
    let listed = json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["port"] == 7100)
        .unwrap();
    assert_eq!(listed["pids"], serde_json::json!([listener]), "{listed}");
    assert_eq!(listed["process_count"], 1);
    // The landing page names them the same way. This daemon counts no
    // failures, so that the test beside, which lists those of the exporter
    // in its namespace, finds only its own.
    let exporter = netns.start_exporter(&["--collector.failures=false"]);
    let page = exporter.get("/").unwrap().text();
    assert!(
        page.contains(&format!("python3 (pid {listener})")),
        "{page}"
    );
    assert!(page.contains(&format!("python3 (pid {client})")), "{page}");
}
