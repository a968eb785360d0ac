//! `--collector.netns=all`: every network namespace with its own range, its
//! own sockets and its own exhaustion, labelled with its inode and name.

mod support;

use support::Place;

use support::OutputWithin;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Netns, listening_socket};

fn inode(netns: &Netns) -> u64 {
    std::fs::metadata(format!("/run/netns/{}", netns.name()))
        .unwrap()
        .ino()
}

/// Now, as Unix time in seconds, as the exporter stamps its samples.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The labels of a namespace's series.
fn labels(netns: &Netns) -> String {
    format!(r#"netns="{}",netns_name="{}""#, inode(netns), netns.name())
}

/// Connects to `server` `count` times, or until EADDRNOTAVAIL when `None`.
fn connect(netns: &Netns, server: &str, count: Option<usize>) -> Vec<TcpStream> {
    let server = server.to_string();
    netns.run(move || {
        let mut streams = Vec::new();
        while Some(streams.len()) != count {
            match TcpStream::connect(&server) {
                Ok(stream) => streams.push(stream),
                Err(error) if count.is_none() && error.kind() == ErrorKind::AddrNotAvailable => {
                    break;
                }
                Err(error) => panic!("connect: {error}"),
            }
            assert!(streams.len() < 1000);
        }
        streams
    })
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn every_namespace_reports_its_own_figures_and_leaves_when_deleted() {
    // Three namespaces with ranges of different sizes; the last one full.
    let small = Netns::new((40000, 40049), "");
    let large = Netns::new((41000, 41099), "41090-41099");
    let full = Netns::new((42000, 42019), "");
    let servers: Vec<_> = [&small, &large, &full]
        .iter()
        .map(|netns| netns.run(|| listening_socket("127.0.0.1:80", false, 1024)))
        .collect();
    let small_streams = connect(&small, "127.0.0.1:80", Some(10));
    let mut large_streams = connect(&large, "127.0.0.1:80", Some(30));
    let full_streams = connect(&full, "127.0.0.1:80", None);
    assert_eq!(
        full_streams.len(),
        20,
        "a 20-port range, driven to EADDRNOTAVAIL"
    );

    // The exporter runs in a namespace of its own and looks at all of them.
    let home = Netns::new((43000, 43099), "");
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "300ms"]);
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics.get(&format!(
                r#"portstat_ephemeral_ports_used{{{},protocol="tcp"}}"#,
                labels(&full)
            )) == Some(20.0)
        })
        .unwrap();
    for (netns, capacity, used) in [
        (&small, 50.0, 10.0),
        (&large, 90.0, 30.0),
        (&full, 20.0, 20.0),
    ] {
        let labels = labels(netns);
        assert_eq!(
            metrics.value(&format!("portstat_ephemeral_ports_capacity{{{labels}}}")),
            capacity,
            "{labels}"
        );
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_ephemeral_ports_used{{{labels},protocol="tcp"}}"#
            )),
            used,
            "{labels}"
        );
        assert_eq!(
            metrics.value(&format!(
                "portstat_ephemeral_destination_max_used_ratio{{{labels}}}"
            )),
            used / capacity,
            "{labels}"
        );
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_ephemeral_destination_ports_used{{{labels},local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="80"}}"#
            )),
            used,
            "{labels}"
        );
    }
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_ports_used_ratio{{{},protocol="tcp"}}"#,
            labels(&full)
        )),
        1.0
    );
    // The exporter's own namespace is there too, with its listener.
    assert!(metrics.text.contains(&format!(
        r#"portstat_listener_sockets{{{},protocol="tcp",address="127.0.0.1",port="10042",process="portstat_export"}} 1"#,
        labels(&home)
    )));
    assert!(metrics.value("portstat_netns_sampled") >= 4.0);
    assert_eq!(metrics.value("portstat_netns_omitted"), 0.0);
    // Exporter-wide families carry no namespace.
    assert!(metrics.get("portstat_sample_success") == Some(1.0));

    // Delete one: no sample that began after the deletion shows it (a
    // sample began no later than its timestamp less its duration), and the
    // exporter holds nothing of it open. The kernel may hand the inode to a
    // namespace made later, so the deleted one is told by inode and name.
    let gone = inode(&large);
    let gone_label = labels(&large);
    large_streams.clear();
    drop(servers);
    drop(large);
    let deleted_at = unix_seconds();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_after = loop {
        let metrics = exporter.metrics();
        let started = metrics.value("portstat_sample_timestamp_seconds")
            - metrics.value("portstat_sample_duration_seconds");
        if started > deleted_at {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no sample began within 60 s of the deletion"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !first_after.text.contains(&gone_label),
        "a sample that began after the namespace was deleted still shows it"
    );
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", exporter.pid()))
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    // Unless a namespace made since took over the inode, which the
    // exporter may be sampling right now.
    let reused = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .any(|entry| {
            entry
                .metadata()
                .is_ok_and(|metadata| metadata.ino() == gone)
        });
    assert!(
        reused || !held.iter().any(|target| target == &format!("net:[{gone}]")),
        "the exporter holds the deleted namespace: {held:?}"
    );
    drop(small_streams);
    drop(full_streams);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_procfs_source_reads_each_namespace_too() {
    let other = Netns::new((40000, 40049), "40000-40009");
    let _server = other.run(|| listening_socket("127.0.0.1:80", false, 64));
    let _streams = connect(&other, "127.0.0.1:80", Some(7));
    let home = Netns::new((43000, 43099), "");
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.source", "procfs"]);
    let metrics = exporter.metrics();
    let labels = labels(&other);
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_source_info{{{labels},protocol="tcp",source="procfs"}}"#
        )),
        1.0
    );
    assert_eq!(
        metrics.value(&format!("portstat_ephemeral_ports_capacity{{{labels}}}")),
        40.0
    );
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_ports_used{{{labels},protocol="tcp"}}"#
        )),
        7.0
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_namespace_limit_counts_what_it_leaves_out() {
    let home = Netns::new((43000, 43099), "");
    let _others: Vec<Netns> = (0..3).map(|_| Netns::new((40000, 40099), "")).collect();
    let exporter = home.start_exporter(&["--collector.netns", "all", "--collector.netns.max", "1"]);
    let metrics = exporter.metrics();
    assert_eq!(metrics.value("portstat_netns_sampled"), 1.0);
    assert!(metrics.value("portstat_netns_omitted") >= 3.0);
    // The one kept is the exporter's own.
    let capacities = metrics.family("portstat_ephemeral_ports_capacity");
    assert_eq!(capacities.len(), 1);
    assert!(capacities.keys().next().unwrap().contains(&labels(&home)));
}

/// `--collector.source netlink --once` in a namespace, with every request
/// sent refused (`sendto`), so that the netlink socket opens (which proves
/// the source can run) but no dump can: it succeeds only if no dump was
/// needed.
fn needs_no_dump(netns: &Netns) -> bool {
    let mut command = netns.command(support::exporter());
    command.args(["--once", "--collector.source", "netlink"]);
    support::refuse_syscall(&mut command, libc::SYS_sendto, None, libc::EPERM);
    command.output_within().unwrap().status.success()
}

/// `needs_no_dump`, tried for up to 5 s: the kernel frees a closed socket
/// after an RCU grace period, so `ip`'s netlink sockets from setting the
/// namespace up count as used for a moment after they are closed.
fn settles_to_no_dump(netns: &Netns) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if needs_no_dump(netns) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A namespace whose socket counts show nothing is not dumped, since a dump
/// walks a table that namespaces share; one with any TCP or UDP socket in a
/// table, in TIME_WAIT, or bound and idle (in no table) is.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn only_namespaces_with_sockets_are_dumped() {
    let empty = Netns::new((40000, 40099), "");
    assert!(settles_to_no_dump(&empty), "an empty namespace was dumped");

    let bound = Netns::new((40000, 40099), "");
    assert!(settles_to_no_dump(&bound));
    let _bound = bound.run(|| support::bound_socket("0.0.0.0:0", false));
    assert!(!needs_no_dump(&bound), "a bound socket was not looked for");

    let udp = Netns::new((40000, 40099), "");
    assert!(settles_to_no_dump(&udp));
    let _udp = udp.run(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    assert!(!needs_no_dump(&udp), "a UDP socket was not looked for");

    let time_wait = Netns::new((40000, 40099), "");
    assert!(settles_to_no_dump(&time_wait));
    time_wait.run(|| {
        let server = std::net::TcpListener::bind("127.0.0.1:80").unwrap();
        let client = TcpStream::connect("127.0.0.1:80").unwrap();
        let (accepted, _) = server.accept().unwrap();
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        drop(accepted);
    });
    assert!(!needs_no_dump(&time_wait), "TIME_WAIT was not looked for");

    // And the empty namespace still gets its figures, all zero.
    let metrics = empty.once_metrics(&[]);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        0.0
    );
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 100.0);
}

/// With every namespace sampled, the namespaces sharing the host's TCP
/// table are counted, and when the sample takes more than a quarter of the
/// interval the log says once what sharing costs and what to do.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn sharing_the_host_table_is_counted_and_explained_once() {
    let home = Netns::new((40000, 40099), "");
    let _empty = Netns::new((40000, 40099), "");
    // 5 ms: every sample takes more than a quarter of it. Read one by one,
    // as without BPF: in one walk, sharing costs nothing to explain.
    let exporter = home.start_exporter(&[
        "--collector.netns",
        "all",
        "--collector.interval",
        "5ms",
        "--collector.netns.one-walk=false",
    ]);
    let metrics = exporter
        .metrics_until(|metrics| {
            metrics
                .get("portstat_netns_sharing_host_tcp_table")
                .is_some()
        })
        .unwrap();
    let sampled = metrics.value("portstat_netns_sampled");
    let sharing = metrics.value("portstat_netns_sharing_host_tcp_table");
    // Both test namespaces share it; the host's own is the table.
    assert!(
        sharing >= 2.0 && sharing < sampled,
        "{sharing} of {sampled}"
    );
    assert!(metrics.value(r#"portstat_netns_dumps_skipped{protocol="udp"}"#) >= 2.0);
    assert_eq!(metrics.value("portstat_sample_interval_seconds"), 0.005);
    std::thread::sleep(Duration::from_secs(1));
    let log = exporter.log();
    assert_eq!(log.matches("tcp_child_ehash_entries").count(), 1, "{log}");
    drop(exporter);

    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "5ms"]);
    let metrics = exporter
        .metrics_until(|metrics| metrics.get("portstat_netns_read_in_one_walk").is_some())
        .unwrap();
    // Where the one walk runs (BPF, Linux 6.1+), nothing is logged.
    if metrics.value("portstat_netns_read_in_one_walk") > 0.0 {
        std::thread::sleep(Duration::from_secs(1));
        let log = exporter.log();
        assert_eq!(log.matches("tcp_child_ehash_entries").count(), 0, "{log}");
    }
}

/// Without privileges, `all` samples the exporter's own namespace (which
/// needs no setns), counts the others it cannot enter as failed, and says
/// why in one warning.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn unprivileged_all_samples_its_own_namespace_and_says_why_not_the_others() {
    let home = Netns::new((40000, 40099), "");
    let _other = Netns::new((41000, 41099), "");
    let output = home
        .unprivileged_exporter(&["--once", "--collector.netns", "all"])
        .output_within()
        .expect("setpriv (util-linux) is needed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = support::Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(metrics.value("portstat_netns_sampled"), 1.0, "{stderr}");
    assert!(metrics.value("portstat_netns_failed") >= 1.0, "{stderr}");
    assert_eq!(
        metrics.value(&format!(
            "portstat_ephemeral_ports_capacity{{{}}}",
            labels(&home)
        )),
        100.0
    );
    assert!(
        stderr.contains("Operation not permitted")
            && stderr.contains("entering another network namespace needs CAP_SYS_ADMIN"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("some network namespaces cannot be sampled")
            .count(),
        1,
        "{stderr}"
    );
}

/// `ip netns add` creates the name's file before it mounts the namespace
/// there: a name that is no namespace yet is not a failure.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_namespace_being_created_is_not_a_failure() {
    /// The file, removed on drop.
    struct Creating(std::path::PathBuf);
    impl Drop for Creating {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let home = Netns::new((40000, 40099), "");
    let creating = Creating(std::path::PathBuf::from(format!(
        "/run/netns/portstat-test-{}-being-created",
        std::process::id()
    )));
    std::fs::write(&creating.0, "").unwrap();
    let output = home.once(&["--collector.netns", "all"]);
    drop(creating);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = support::Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(metrics.value("portstat_netns_failed"), 0.0, "{stderr}");
    assert!(!metrics.text.contains("being-created"), "{}", metrics.text);
}

/// The exporter's own namespace, read without entering it, leaves nothing
/// open that the next namespace's read would use: each namespace's UDP
/// sockets are its own (a netlink socket kept open reads the namespace it
/// was opened in).
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_namespace_read_after_the_exporters_own_gets_its_own_sockets() {
    let home = Netns::new((40000, 40099), "");
    // Created after `home`: later inodes, read after it.
    let others: Vec<Netns> = (0..3).map(|_| Netns::new((41000, 41099), "")).collect();
    let _home_sockets = home.run(|| {
        (0..3)
            .map(|index| std::net::UdpSocket::bind(("127.0.0.1", 40010 + index)).unwrap())
            .collect::<Vec<_>>()
    });
    let _other_sockets: Vec<_> = others
        .iter()
        .map(|other| other.run(|| std::net::UdpSocket::bind("127.0.0.1:41010").unwrap()))
        .collect();
    let output = home.once(&["--collector.netns", "all"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = support::Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    let used = |netns: &Netns| {
        metrics.value(&format!(
            r#"portstat_ephemeral_ports_used{{{},protocol="udp"}}"#,
            labels(netns)
        ))
    };
    assert_eq!(used(&home), 3.0);
    for other in &others {
        assert_eq!(used(other), 1.0, "{}", other.name());
    }
}

/// Namespaces come and go while the exporter samples every namespace, the
/// sockets of those on the host's shared TCP tables in one walk of them:
/// none counts as failed, the namespace that stays keeps its figures in
/// every sample, and the series of those gone go with them.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn namespaces_that_come_and_go_while_sampling_are_no_failures() {
    support::require_bpf();
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Stops the churn however the test ends.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    let home = Netns::new((40000, 40099), "");
    let _server = home.run(|| listening_socket("127.0.0.1:8080", false, 64));
    let _streams = connect(&home, "127.0.0.1:8080", Some(5));
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "50ms"]);
    let used = format!(
        r#"portstat_ephemeral_ports_used{{{},protocol="tcp"}}"#,
        labels(&home)
    );
    let stop = AtomicBool::new(false);
    let gone: Vec<String> = std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut names = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let netns = Netns::new((50000, 50099), "");
                let held = netns.run(|| {
                    let server = listening_socket("127.0.0.1:80", false, 16);
                    let streams: Vec<TcpStream> = (0..3)
                        .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
                        .collect();
                    (server, streams)
                });
                names.push(netns.name().to_string());
                std::thread::sleep(Duration::from_millis(30));
                // Half the time the namespace goes first, its sockets after.
                if names.len() % 2 == 0 {
                    drop(netns);
                    drop(held);
                } else {
                    drop(held);
                    drop(netns);
                }
            }
            names
        });
        let _stop = Stop(&stop);
        let mut walked = 0.0f64;
        let mut scrapes = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(6);
        while std::time::Instant::now() < deadline {
            let metrics = exporter.metrics();
            assert_eq!(metrics.value("portstat_sample_success"), 1.0);
            assert_eq!(
                metrics.value("portstat_netns_failed"),
                0.0,
                "{}",
                exporter.log()
            );
            assert_eq!(metrics.value(&used), 5.0, "{used}");
            walked = walked.max(metrics.value("portstat_netns_read_in_one_walk"));
            scrapes += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(scrapes > 10, "{scrapes} scrapes");
        // Where the one walk can run (BPF, Linux 6.1+), it read the home
        // namespace at least.
        if std::path::Path::new("/proc/sys/net/ipv4/tcp_ehash_entries").exists() {
            assert!(walked >= 1.0, "no namespace was read in one walk");
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().expect("the churn thread panicked")
    });
    assert!(gone.len() > 3, "{} namespaces came and went", gone.len());
    let metrics = exporter
        .metrics_until(|metrics| {
            !gone
                .iter()
                .any(|name| metrics.text.contains(&format!("netns_name=\"{name}\"")))
        })
        .unwrap();
    for name in &gone {
        assert!(
            !metrics.text.contains(&format!("netns_name=\"{name}\"")),
            "the series of {name} outlived it"
        );
    }
}
