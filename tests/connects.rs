//! Who caused it: connects counted in the kernel by destination and
//! process, and the TIME_WAIT sockets a churning client leaves named after
//! it. Two processes open and close connections (closing first), each to a
//! destination of its own, until their TIME_WAIT sockets fill a small
//! range: each is named with exactly its ports, nothing is left under
//! `none`, and each destination's connects are the kernel's TIME_WAIT
//! count toward it.

mod support;

use support::Place;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Metrics, Netns, ReadyScript};

/// Twenty ports.
const PORTS: usize = 20;

/// Held by every test of this file while it runs: the kernel does not run
/// the counting program for a state change raised by a softirq while the
/// program already runs on that CPU (its recursion guard), so one test's
/// churn could cost another's exact counts; and two of them would load a
/// small machine, or a guest of the kernel matrix, at once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A python3 process named `comm` that connects to 127.0.0.1:`port` and
/// closes first, until a connect fails with EADDRNOTAVAIL; every other
/// error ends it.
fn churn(netns: &Netns, comm: &str, port: u16) -> ReadyScript {
    ReadyScript::start(
        netns,
        "import errno,socket,sys\n\
         open('/proc/self/comm','w').write(sys.argv[1])\n\
         while True:\n\
         \x20   s=socket.socket()\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1',int(sys.argv[2])))\n\
         \x20   except OSError as e:\n\
         \x20       if e.errno!=errno.EADDRNOTAVAIL: raise\n\
         \x20       break\n\
         \x20   s.close()\n\
         print('ready',flush=True)\nsys.stdin.read()",
        &[comm, &port.to_string()],
    )
}

/// A server on 127.0.0.1:`port` inside `netns` that reads each connection
/// to its end and closes it after the client did, so that the client's
/// socket ends in TIME_WAIT; ends with the test process.
fn serve(netns: &Netns, port: u16) {
    let listener = netns.run(|| TcpListener::bind(("127.0.0.1", port)).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
}

/// The kernel's count of TIME_WAIT sockets toward 127.0.0.1:`port` in
/// `netns`, as `ss` reads it.
fn time_wait_toward(netns: &Netns, port: u16) -> usize {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "ss",
            "-Htn",
            "state",
            "time-wait",
        ])
        .arg(format!("dst 127.0.0.1:{port}"))
        .output()
        .expect("ss is needed");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Waits until both clients' sockets are all in TIME_WAIT, and returns the
/// count toward each of `ports`.
fn wait_for_time_wait(netns: &Netns, ports: [u16; 2]) -> [usize; 2] {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let counts = ports.map(|port| time_wait_toward(netns, port));
        if counts == [PORTS; 2] || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process(labels: &str, comm: &str) -> String {
    format!(r#"portstat_ephemeral_process_ports_used{{{labels}process="{comm}"}}"#)
}

fn destination(labels: &str, port: u16) -> String {
    format!(
        r#"portstat_ephemeral_destination_connects_total{{{labels}protocol="tcp",local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="{port}"}}"#
    )
}

/// The series of family `name`, which has no label of its own, of the
/// namespace whose series start with `labels`.
fn series_of(labels: &str, name: &str) -> String {
    match labels.trim_end_matches(',') {
        "" => name.to_string(),
        labels => format!("{name}{{{labels}}}"),
    }
}

/// The lines of `metrics` that tell how far naming and counting got in the
/// namespace whose series start with `labels`, and how the exporter fared.
fn relevant_lines(metrics: &Metrics, labels: &str) -> String {
    metrics
        .text
        .lines()
        .filter(|line| {
            let figure = line.contains(labels)
                && (line.contains("process_ports_used")
                    || line.contains("connects_total")
                    || line.contains("connect_failures_total")
                    || line.contains("_sockets{"))
                && !line.ends_with(" 0");
            let health = [
                "portstat_collector_success",
                "portstat_sample_success",
                "portstat_ephemeral_connection_names_evicted_total",
                "portstat_ephemeral_connects_unrecorded_total",
                "portstat_failures_runs_missed_total",
            ]
            .iter()
            .any(|name| line.starts_with(name));
            figure || health
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the two clients in `netns`, toward 127.0.0.1 on `ports`, with
/// `args` for an exporter started in `home` before them, and checks its
/// figures, whose series start with `labels`.
///
/// The tests of this file, which run at once, use ranges and ports of their
/// own: Linux 6.18 was seen to refuse a `connect()` a port that another
/// namespace's TIME_WAIT socket held toward the same address and port
/// while both churned, and to grant one more.
fn two_churning_clients_are_named<'a>(
    home: &'a Netns,
    netns: &Netns,
    ports: [u16; 2],
    args: &[&str],
    labels: &str,
) -> support::Exporter<'a> {
    // No TIME_WAIT is taken over by connect(), and none is ended early by
    // a reset (RFC 1337): every connect that succeeded leaves one for
    // 60 s. (With tcp_rfc1337 at its default of 0, a stray reset on
    // loopback was seen to end one in about one run in twenty.)
    netns.write_sysctl("tcp_tw_reuse", "0");
    netns.write_sysctl("tcp_rfc1337", "1");
    serve(netns, ports[0]);
    serve(netns, ports[1]);
    let mut args = args.to_vec();
    args.extend(["--collector.interval", "300ms"]);
    let exporter = home.start_exporter(&args);
    let _first = churn(netns, "churn-first", ports[0]);
    let _second = churn(netns, "churn-second", ports[1]);
    let time_wait = wait_for_time_wait(netns, ports);
    let sockets = Command::new("ip")
        .args(["netns", "exec", netns.name(), "sh", "-c", "ss -tan | grep -v TIME-WAIT; ss -tan | grep -c TIME-WAIT; nstat -az | grep -E 'TW|Rst|Reset|Abort|Overflow|Estab|Attempt'"])
        .output()
        .unwrap();
    assert_eq!(
        time_wait,
        [PORTS; 2],
        "each client fills the range:\n{}\n{}",
        String::from_utf8_lossy(&sockets.stdout),
        exporter
            .metrics()
            .text
            .lines()
            .filter(|line| line.contains("connect")
                || line.contains("_sockets{")
                || line.contains("ports_used{"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let done = |metrics: &Metrics| {
        metrics.get(&process(labels, "churn-first")) == Some(PORTS as f64)
            && metrics.get(&process(labels, "churn-second")) == Some(PORTS as f64)
            && metrics.get(&process(labels, "none")).unwrap_or(0.0) == 0.0
            && metrics.get(&destination(labels, ports[1])) == Some(PORTS as f64)
    };
    // The sockets go after 60 s, and their names with them: a failure
    // says what the figures were on the way, each change once.
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let metrics = exporter
        .metrics_until(|metrics| {
            let figures = relevant_lines(metrics, labels);
            let mut seen = seen.borrow_mut();
            if seen.last() != Some(&figures) {
                seen.push(figures);
            }
            done(metrics)
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "both processes named with their ports within {:?}; the figures on the way:\n{}",
                timed_out.waited,
                seen.borrow().join("\n--\n")
            )
        });
    assert!(done(&metrics), "{}", metrics.text);
    // Every port is in TIME_WAIT, named after the process that connected it.
    assert_eq!(
        metrics.get(&process(labels, "none")),
        None,
        "{}",
        metrics.text
    );
    for (port, count) in ports.into_iter().zip(time_wait) {
        assert_eq!(
            metrics.value(&destination(labels, port)),
            count as f64,
            "the connects that succeeded are the kernel's TIME_WAIT count: {}",
            String::from_utf8_lossy(
                &Command::new("ip")
                    .args(["netns", "exec", netns.name(), "sh", "-c", "ss -tan | grep -v TIME-WAIT; nstat -az | grep -E 'TW|Rst|Reset|Abort|Overflow|Estab|Attempt'"])
                    .output()
                    .unwrap()
                    .stdout
            )
        );
    }
    for comm in ["churn-first", "churn-second"] {
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_ephemeral_process_connects_total{{{labels}protocol="tcp",process="{comm}"}}"#
            )),
            PORTS as f64
        );
    }
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_connects_total{{{labels}protocol="tcp"}}"#
        )),
        2.0 * PORTS as f64
    );
    assert_eq!(
        metrics.value("portstat_ephemeral_connection_names_evicted_total"),
        0.0
    );
    assert_eq!(
        metrics.value(&series_of(
            labels,
            "portstat_ephemeral_connects_unrecorded_total"
        )),
        0.0
    );
    // The failures that ended each client are counted by process too.
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_process_connect_failures_total{{{labels}protocol="tcp",process="churn-first"}}"#
        )),
        1.0
    );
    exporter
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn time_wait_is_named_after_the_churning_process_and_connects_match_it() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((40000, 40019), "");
    let _exporter = two_churning_clients_are_named(&netns, &netns, [8080, 8081], &[], "");
    // inspect names them too, from the running exporter's map.
    let report: serde_json::Value = serde_json::from_str(&netns.inspect(&["40005", "--json"]))
        .expect("inspect --json writes JSON");
    let processes: Vec<(String, u64)> = report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|process| {
            (
                process["process"].as_str().unwrap().to_string(),
                process["ports"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        processes,
        vec![
            ("churn-first".to_string(), PORTS as u64),
            ("churn-second".to_string(), PORTS as u64)
        ],
        "{report}"
    );
    let holders: Vec<(&str, &str)> = report["port"]["sockets"]
        .as_array()
        .expect("the port's sockets")
        .iter()
        .map(|socket| {
            (
                socket["remote"].as_str().unwrap(),
                socket["process"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        holders,
        vec![
            ("127.0.0.1:8080", "churn-first"),
            ("127.0.0.1:8081", "churn-second")
        ],
        "{report}"
    );
    // The churning processes have ended: each process, and each socket,
    // gives the pid of the process that closed it, marked as exited.
    for process in report["processes"].as_array().unwrap() {
        assert!(!process["pids"].as_array().unwrap().is_empty(), "{report}");
        assert_eq!(process["exited_pids"], process["pids"], "{report}");
    }
    for socket in report["port"]["sockets"].as_array().unwrap() {
        assert!(
            socket["pid"].as_u64().is_some_and(|pid| pid > 0),
            "{report}"
        );
        assert_eq!(socket["process_exited"], true, "{report}");
    }
    let text = netns.inspect(&["40005"]);
    let rows: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("time_wait"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for ((row, socket), name) in rows
        .iter()
        .zip(report["port"]["sockets"].as_array().unwrap())
        .zip(["churn-first", "churn-second"])
    {
        let pid = socket["pid"].as_u64().unwrap();
        assert!(
            row.ends_with(&format!("{pid}*{name}")),
            "the pid {pid}, whole, marked exited, and {name}: {row:?}"
        );
    }
    assert!(
        text.contains("* the process has exited since it closed the socket"),
        "{text}"
    );
    for process in report["processes"].as_array().unwrap() {
        let row = format!(
            "{} (pid {}, exited)",
            process["process"].as_str().unwrap(),
            process["pids"][0]
        );
        assert!(text.contains(&row), "{row} in:\n{text}");
    }
    assert!(
        text.lines().all(|line| line.chars().count() <= 80),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn with_every_namespace_each_names_its_own_churn() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let home = Netns::new((43000, 43099), "");
    let netns = Netns::new((40100, 40119), "");
    let labels = {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(format!("/run/netns/{}", netns.name()))
            .unwrap()
            .ino();
        format!(r#"netns="{inode}",netns_name="{}","#, netns.name())
    };
    let _exporter = two_churning_clients_are_named(
        &home,
        &netns,
        [8082, 8083],
        &["--collector.netns", "all"],
        &labels,
    );
}

/// Destinations past what the connects map holds (1,024 entries).
const DESTINATIONS: u16 = 1100;

/// One connection inside `netns` to each of `DESTINATIONS` listeners on
/// 127.0.0.1, from port 50000 up: the listeners and the connections, held.
fn connect_to_every_destination(netns: &Netns) -> (Vec<TcpListener>, Vec<TcpStream>) {
    netns.run(|| {
        let listeners = (0..DESTINATIONS)
            .map(|index| TcpListener::bind(("127.0.0.1", 50000 + index)).unwrap())
            .collect();
        let connections = (0..DESTINATIONS)
            .map(|index| TcpStream::connect(("127.0.0.1", 50000 + index)).unwrap())
            .collect();
        (listeners, connections)
    })
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_full_connects_map_still_counts_every_connect_of_the_namespace() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((45000, 46999), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let _connected = connect_to_every_destination(&netns);
    let total = r#"portstat_ephemeral_connects_total{protocol="tcp"}"#;
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(total) == Some(f64::from(DESTINATIONS)))
        .expect("every connect counted in the namespace's total");
    // The map holds fewer of this namespace's destinations than there
    // are, and the rest are the namespace's unrecorded: its total is its
    // destination series plus its unrecorded, exactly.
    let by_destination: f64 = metrics
        .family("portstat_ephemeral_destination_connects_total")
        .values()
        .sum();
    assert!(by_destination < f64::from(DESTINATIONS), "{}", metrics.text);
    assert_eq!(
        metrics.value("portstat_ephemeral_connects_unrecorded_total"),
        f64::from(DESTINATIONS) - by_destination,
        "{}",
        metrics.text
    );
}

/// With every namespace sampled, namespace B fills the connects map by
/// destination, which all share; A then connects. Each namespace's
/// unrecorded connects are its own, and its total is its destination
/// series plus them, exactly.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn each_namespace_s_unrecorded_connects_are_its_own() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let home = Netns::new((43000, 43099), "");
    let a = Netns::new((40200, 40299), "");
    let b = Netns::new((45000, 46999), "");
    let labels =
        |netns: &Netns| format!(r#"netns="{}",netns_name="{}""#, netns.inode(), netns.name());
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "300ms"]);
    exporter.wait_for_the_counter();
    exporter.wait_until_sampled(&[&a, &b]);
    let _b_connected = connect_to_every_destination(&b);
    let a_listener: TcpListener = a.run(|| TcpListener::bind("127.0.0.1:8080").unwrap());
    let _a_connections: Vec<TcpStream> = a.run(|| {
        (0..5)
            .map(|_| TcpStream::connect("127.0.0.1:8080").unwrap())
            .collect()
    });
    let total = |netns: &Netns| {
        format!(
            r#"portstat_ephemeral_connects_total{{{},protocol="tcp"}}"#,
            labels(netns)
        )
    };
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get(&total(&a)) == Some(5.0)
                && metrics.get(&total(&b)) == Some(f64::from(DESTINATIONS))
        })
        .expect("every connect counted in its namespace's total");
    let of = |netns: &Netns| {
        let by_destination: f64 = metrics
            .family("portstat_ephemeral_destination_connects_total")
            .iter()
            .filter(|(series, _)| series.contains(&labels(netns)))
            .map(|(_, value)| value)
            .sum();
        let unrecorded = metrics.value(&format!(
            "portstat_ephemeral_connects_unrecorded_total{{{}}}",
            labels(netns)
        ));
        (by_destination, unrecorded)
    };
    let (a_recorded, a_unrecorded) = of(&a);
    let (b_recorded, b_unrecorded) = of(&b);
    assert_eq!(a_recorded + a_unrecorded, 5.0, "{}", metrics.text);
    assert_eq!(
        b_recorded + b_unrecorded,
        f64::from(DESTINATIONS),
        "{}",
        metrics.text
    );
    assert!(
        b_unrecorded > 0.0,
        "the map had no room for all of B's: {}",
        metrics.text
    );
    assert_eq!(of(&home), (0.0, 0.0), "{}", metrics.text);
    drop(a_listener);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn with_connects_off_failures_are_counted_and_time_wait_is_nobody_s() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((40200, 40219), "");
    netns.write_sysctl("tcp_tw_reuse", "0");
    netns.write_sysctl("tcp_rfc1337", "1");
    serve(&netns, 8084);
    let exporter = netns.start_exporter(&[
        "--collector.interval",
        "300ms",
        "--collector.failures.connects=false",
    ]);
    let _client = churn(&netns, "churn-alone", 8084);
    let deadline = Instant::now() + Duration::from_secs(40);
    while time_wait_toward(&netns, 8084) < PORTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(time_wait_toward(&netns, 8084), PORTS);
    let failure = r#"portstat_ephemeral_process_connect_failures_total{protocol="tcp",process="churn-alone"}"#;
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get(failure) == Some(1.0)
                && metrics.get(&process("", "none")) == Some(PORTS as f64)
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "the failure counted and the ports left to nobody within {:?}:\n{}",
                timed_out.waited,
                relevant_lines(&timed_out.last, "")
            )
        });
    assert_eq!(
        metrics.get(&process("", "churn-alone")),
        None,
        "{}",
        metrics.text
    );
    for family in [
        "portstat_ephemeral_connects_total",
        "portstat_ephemeral_destination_connects_total",
        "portstat_ephemeral_process_connects_total",
        "portstat_ephemeral_connects_unrecorded_total",
        "portstat_ephemeral_connection_names_evicted_total",
    ] {
        assert!(
            metrics.family(family).is_empty() && !metrics.text.contains(family),
            "{family} is absent: {}",
            metrics.text
        );
    }
    assert_eq!(
        metrics.value(r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#),
        1.0
    );
}

/// Connects left in SYN_SENT at once by each of two processes: together
/// more than a map of notes could hold.
const STUCK_EACH: usize = 10_000;

/// A python3 process that starts `STUCK_EACH` non-blocking connects to
/// 127.0.0.1:7 and holds the sockets until its standard input closes.
fn stuck_connects(netns: &Netns) -> ReadyScript {
    ReadyScript::start(
        netns,
        "import resource,socket,sys\n\
         hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
         resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))\n\
         held=[]\n\
         for _ in range(int(sys.argv[1])):\n\
         \x20   s=socket.socket()\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1',7))\n\
         \x20   except BlockingIOError:\n\
         \x20       pass\n\
         \x20   held.append(s)\n\
         print('ready',flush=True)\nsys.stdin.read()",
        &[&STUCK_EACH.to_string()],
    )
}

/// The sockets in `netns` in SYN_SENT, as `ss` counts them.
fn syn_sent(netns: &Netns) -> usize {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "ss",
            "-Htn",
            "state",
            "syn-sent",
        ])
        .output()
        .expect("ss is needed");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// A black-holed backend: 20,000 connects stuck in SYN_SENT at once, then
/// abandoned by their clients. Each took a port, so each is a connect:
/// counted by destination or, where the kernel had no room, as unrecorded,
/// and never lost.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_pile_of_connects_in_syn_sent_is_counted_exactly() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((30000, 60999), "");
    // SYNs to port 7 go unanswered: its listener's accept queue is full,
    // and the kernel drops them. It would give up after six retries, two
    // minutes after each SYN, long after every connect is made, so that all
    // 20,000 are in SYN_SENT at once; then the clients give up themselves,
    // closing them. (A timeout that fires in a softirq while the program
    // runs for a new connect on that CPU is skipped by the kernel's
    // recursion guard: docs/sources.md.)
    netns.write_sysctl("tcp_syn_retries", "6");
    let (_full, _queued) = netns.run(|| {
        let full = support::listening_socket("127.0.0.1:7", false, 0);
        let queued = TcpStream::connect("127.0.0.1:7").unwrap();
        (full, queued)
    });
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    exporter.wait_for_the_counter();
    let first = stuck_connects(&netns);
    let second = stuck_connects(&netns);
    assert_eq!(
        syn_sent(&netns),
        2 * STUCK_EACH,
        "every connect in SYN_SENT at once"
    );
    // The clients give up: every socket leaves SYN_SENT, having held a port.
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(120);
    while syn_sent(&netns) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(syn_sent(&netns), 0, "every connect abandoned");
    let connects = r#"portstat_ephemeral_connects_total{protocol="tcp"}"#;
    let unrecorded = "portstat_ephemeral_connects_unrecorded_total";
    let missed = "portstat_failures_runs_missed_total";
    let value = |metrics: &Metrics, series: &str| metrics.get(series).unwrap_or(0.0);
    let counted = |metrics: &Metrics| value(metrics, connects) + value(metrics, unrecorded);
    let expected = (2 * STUCK_EACH) as f64;
    // Every connect counted or said unrecorded; short only by the runs the
    // kernel says it skipped, which the exporter shows.
    let metrics = exporter
        .metrics_until(|metrics| counted(metrics) + value(metrics, missed) >= expected)
        .unwrap_or_else(|timed_out| {
            panic!(
                "{expected} connects counted within {:?}:\n{}\n{}",
                timed_out.waited,
                relevant_lines(&timed_out.last, ""),
                timed_out
                    .last
                    .text
                    .lines()
                    .filter(|line| line.starts_with(missed))
                    .collect::<String>()
            )
        });
    let skipped = value(&metrics, missed);
    println!(
        "connects {}, unrecorded {}, runs the kernel skipped {skipped}",
        value(&metrics, connects),
        value(&metrics, unrecorded)
    );
    assert!(
        counted(&metrics) <= expected && counted(&metrics) + skipped >= expected,
        "{}",
        relevant_lines(&metrics, "")
    );
    if skipped == 0.0 {
        assert_eq!(counted(&metrics), expected);
    }
}

/// A python3 process named `comm` that connects from 127.0.0.1:40200 to
/// 127.0.0.1:8080 with SO_REUSEADDR and closes first: with `bind`, after
/// binding that port itself, trying again while the kernel refuses to take
/// the TIME_WAIT socket there over (younger than the reuse delay); without,
/// from the port the kernel picks in a range of that one port.
fn connect_from_40200(netns: &Netns, comm: &str, bind: bool) -> ReadyScript {
    ReadyScript::start(
        netns,
        "import errno,socket,sys,time\n\
         open('/proc/self/comm','w').write(sys.argv[1])\n\
         deadline=time.monotonic()+60\n\
         while True:\n\
         \x20   s=socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         \x20   try:\n\
         \x20       if sys.argv[2]=='bind': s.bind(('127.0.0.1',40200))\n\
         \x20       s.connect(('127.0.0.1',8080))\n\
         \x20       break\n\
         \x20   except OSError as e:\n\
         \x20       if e.errno not in (errno.EADDRNOTAVAIL,errno.EADDRINUSE) or time.monotonic()>deadline: raise\n\
         \x20       s.close()\n\
         \x20       time.sleep(0.05)\n\
         assert s.getsockname()[1]==40200\n\
         s.close()\n\
         print('ready',flush=True)\nsys.stdin.read()",
        &[comm, if bind { "bind" } else { "pick" }],
    )
}

/// A client that binds its source port (HAProxy's `source`, Envoy) takes
/// over the TIME_WAIT socket another process left on the same 4-tuple
/// (`tcp_tw_reuse`, `tcp_twsk_unique`), then closes first: the TIME_WAIT
/// socket left is its own, and is named after it or after nobody, never
/// after the process that connected the 4-tuple before.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_time_wait_taken_over_is_never_named_after_the_earlier_process() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((40200, 40200), "");
    netns.write_sysctl("tcp_tw_reuse", "2");
    serve(&netns, 8080);
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    exporter.wait_for_the_counter();
    drop(connect_from_40200(&netns, "proc-a", false));
    exporter
        .metrics_until(|metrics| metrics.get(&process("", "proc-a")) == Some(1.0))
        .unwrap_or_else(|timed_out| {
            panic!(
                "proc-a's TIME_WAIT named: {}",
                relevant_lines(&timed_out.last, "")
            )
        });
    drop(connect_from_40200(&netns, "proc-b", true));
    let time_wait = r#"portstat_ephemeral_sockets{protocol="tcp",state="time_wait"}"#;
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get(time_wait) == Some(1.0) && metrics.get(&process("", "proc-a")).is_none()
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "the TIME_WAIT proc-b took over and left is not proc-a's: {}",
                relevant_lines(&timed_out.last, "")
            )
        });
    let named = [
        metrics.get(&process("", "proc-b")),
        metrics.get(&process("", "none")),
    ];
    assert!(
        named == [Some(1.0), None] || named == [None, Some(1.0)],
        "{}",
        relevant_lines(&metrics, "")
    );
}
