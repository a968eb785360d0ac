//! Who caused it: connects counted in the kernel by destination and
//! process, and the TIME_WAIT sockets a churning client leaves named after
//! it. Two processes open and close connections (closing first), each to a
//! destination of its own, until their TIME_WAIT sockets fill a small
//! range: each is named with exactly its ports, nothing is left under
//! `none`, and each destination's connects are the kernel's TIME_WAIT
//! count toward it.

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Metrics, Netns, ReadyScript};

/// Twenty ports.
const PORTS: usize = 20;

/// Held by each test while it runs: `inspect` reads the newest exporter's
/// names, and every exporter's program names every namespace's
/// connections, but only those made after it started.
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
        metrics.value("portstat_ephemeral_connects_unrecorded_total"),
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
    let text = netns.inspect(&[]);
    assert!(text.contains("churn-first"), "{text}");
}

#[test]
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

#[test]
fn a_full_connects_map_still_counts_every_connect_of_the_namespace() {
    support::require_bpf();
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = Netns::new((45000, 46999), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let _listeners: Vec<TcpListener> = netns.run(|| {
        (0..DESTINATIONS)
            .map(|index| TcpListener::bind(("127.0.0.1", 50000 + index)).unwrap())
            .collect()
    });
    let _connections: Vec<TcpStream> = netns.run(|| {
        (0..DESTINATIONS)
            .map(|index| TcpStream::connect(("127.0.0.1", 50000 + index)).unwrap())
            .collect()
    });
    let total = r#"portstat_ephemeral_connects_total{protocol="tcp"}"#;
    let metrics = exporter
        .metrics_until(|metrics| metrics.get(total) == Some(f64::from(DESTINATIONS)))
        .expect("every connect counted in the namespace's total");
    // The map is the exporter's, shared by every namespace: it holds fewer
    // of this namespace's destinations than there are, and the rest are
    // unrecorded.
    let by_destination: f64 = metrics
        .family("portstat_ephemeral_destination_connects_total")
        .values()
        .sum();
    assert!(by_destination < f64::from(DESTINATIONS), "{}", metrics.text);
    assert!(
        metrics.value("portstat_ephemeral_connects_unrecorded_total")
            >= f64::from(DESTINATIONS) - by_destination,
        "{}",
        metrics.text
    );
}

#[test]
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
