//! The failures themselves: every `connect()` that found no free local port
//! is counted in the kernel, once, with its destination and process; calls
//! that failed for other reasons are not; a burst between two samples is
//! counted in full; and where BPF is refused the failure families are
//! absent and the log says why, once.

mod support;

use support::Place;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Socket, Type};
use support::{Metrics, Netns, listening_socket, own_comm};

const TOTAL: &str = r#"portstat_ephemeral_connect_failures_total{protocol="tcp"}"#;

fn destination_series(local: &str, remote: &str, port: u16) -> String {
    format!(
        r#"portstat_ephemeral_destination_connect_failures_total{{protocol="tcp",local_address="{local}",remote_address="{remote}",remote_port="{port}"}}"#
    )
}

fn process_series() -> String {
    format!(
        r#"portstat_ephemeral_process_connect_failures_total{{protocol="tcp",process="{}"}}"#,
        own_comm()
    )
}

/// Connects to `server` `count` times from inside `netns`; every call must
/// succeed.
fn connect(netns: &Netns, server: &str, count: usize) -> Vec<TcpStream> {
    let server: SocketAddr = server.parse().unwrap();
    netns.run(move || {
        (0..count)
            .map(|index| {
                TcpStream::connect(server)
                    .unwrap_or_else(|error| panic!("connect {index} to {server}: {error}"))
            })
            .collect()
    })
}

/// Makes `count` calls to `server` from inside `netns`, each of which must
/// fail with EADDRNOTAVAIL.
fn fail(netns: &Netns, server: &str, count: usize) {
    let server: SocketAddr = server.parse().unwrap();
    netns.run(move || {
        for index in 0..count {
            let error = TcpStream::connect(server)
                .err()
                .unwrap_or_else(|| panic!("call {index} to {server} got a port"));
            assert_eq!(error.kind(), ErrorKind::AddrNotAvailable, "{error}");
        }
    });
}

/// Taken to write by the test that holds 1,100 namespaces alive, and to
/// read by those that sample every namespace or count on the kernel's
/// next inode: the namespaces would crowd out theirs.
static MANY_NAMESPACES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn beside_many_namespaces() -> std::sync::RwLockReadGuard<'static, ()> {
    MANY_NAMESPACES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Scrapes until a sample that began after `moment` (a Unix time) is
/// served; a sample began no later than its timestamp less its duration.
fn first_sample_after(exporter: &support::Exporter<'_>, moment: f64) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = exporter.metrics();
        let began = metrics
            .get("portstat_sample_timestamp_seconds")
            .unwrap_or(0.0)
            - metrics.value("portstat_sample_duration_seconds");
        if began > moment {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no sample began within 60 s of {moment}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn each_failed_connect_counts_once_with_its_destination_and_process() {
    support::require_bpf();
    // Ten ports; a dual-stack listener.
    let netns = Netns::new((40000, 40009), "");
    let _server = netns.run(|| listening_socket("[::]:8080", false, 1024));
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let metrics = exporter.metrics();
    assert_eq!(
        metrics.value(r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#),
        1.0
    );
    assert_eq!(metrics.value(TOTAL), 0.0);

    // IPv4: the ten ports to one destination, then three calls that fail.
    let _v4 = connect(&netns, "127.0.0.1:8080", 10);
    fail(&netns, "127.0.0.1:8080", 3);
    // IPv6 has a destination of its own: ten more, then four that fail.
    let _v6 = connect(&netns, "[::1]:8080", 10);
    fail(&netns, "[::1]:8080", 4);
    // IPv4-mapped: the IPv4 destination, already full.
    fail(&netns, "[::ffff:127.0.0.1]:8080", 2);

    let v4 = destination_series("127.0.0.1", "127.0.0.1", 8080);
    let v6 = destination_series("::1", "::1", 8080);
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(TOTAL), 9.0, "{}", metrics.text);
    assert_eq!(metrics.value(&v4), 5.0, "3 IPv4 and 2 IPv4-mapped calls");
    assert_eq!(metrics.value(&v6), 4.0);
    assert_eq!(metrics.value(&process_series()), 9.0);
    assert_eq!(
        metrics
            .family("portstat_ephemeral_destination_connect_failures_total")
            .len(),
        2,
        "no other destination: {}",
        metrics.text
    );
    assert_eq!(
        metrics.value("portstat_ephemeral_failures_unrecorded_total"),
        0.0
    );
    // The destination in the range's figures and in the failures is one.
    assert_eq!(
        metrics.value(
            r#"portstat_ephemeral_destination_ports_used{local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="8080"}"#
        ),
        10.0
    );
    // The prediction was right: the ports were gone when the calls failed.
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_connect_failures_unpredicted_total{protocol="tcp"}"#),
        0.0
    );
    // Counters only rise: a later sample reads the same.
    let later = first_sample_after(&exporter, unix_seconds());
    assert_eq!(later.value(TOTAL), 9.0);
    assert_eq!(later.value(&v4), 5.0);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn refused_reset_timed_out_and_abandoned_connects_do_not_count() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    // SYNs to port 7 go unanswered: its listener's accept queue is full,
    // and the kernel drops them. A kernel timeout comes after one retry.
    netns.write_sysctl("tcp_syn_retries", "1");
    let server = netns.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let (_full, _queued) = netns.run(|| {
        let full = listening_socket("127.0.0.1:7", false, 0);
        let queued = TcpStream::connect("127.0.0.1:7").unwrap();
        (full, queued)
    });
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);

    netns.run(|| {
        // Refused: nothing listens on port 9.
        for _ in 0..3 {
            let error = TcpStream::connect("127.0.0.1:9").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        }
        // Reset: the server aborts the connection.
        let client = TcpStream::connect("127.0.0.1:8080").unwrap();
        let (accepted, _) = server.accept().unwrap();
        accepted.set_linger(Some(Duration::ZERO)).unwrap();
        drop(accepted);
        let mut buffer = [0u8; 1];
        let error = (&client).read(&mut buffer).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
        // Abandoned: the application gives up while the SYN goes unanswered.
        let address: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let error = TcpStream::connect_timeout(&address, Duration::from_millis(200)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
        // Timed out by the kernel, after its one retry.
        let error = TcpStream::connect(address).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    });
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(TOTAL), 0.0, "{}", metrics.text);

    // And the counter does count here: the range to one destination (the
    // port of the connection queued on port 7 is shared), then two calls
    // that fail.
    let _held = connect(&netns, "127.0.0.1:8080", 10);
    fail(&netns, "127.0.0.1:8080", 2);
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(TOTAL), 2.0, "{}", metrics.text);
    drop(server);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_burst_between_two_samples_is_counted_in_full() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let _server = netns.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let exporter = netns.start_exporter(&["--collector.interval", "2s"]);
    let before = first_sample_after(&exporter, 0.0);
    assert_eq!(before.value(TOTAL), 0.0);

    // Within one interval: the range filled, five failures, and every
    // connection reset, so that no TIME_WAIT is left.
    let held = connect(&netns, "127.0.0.1:8080", 10);
    fail(&netns, "127.0.0.1:8080", 5);
    for stream in held {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let burst_ended = unix_seconds();

    let after = first_sample_after(&exporter, burst_ended);
    assert_eq!(after.value(TOTAL), 5.0, "{}", after.text);
    assert_eq!(
        after.value(&destination_series("127.0.0.1", "127.0.0.1", 8080)),
        5.0
    );
    // The sample found no socket of the burst.
    assert_eq!(
        after.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        0.0,
        "{}",
        after.text
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn without_bpf_the_failure_families_are_absent_and_the_log_says_why_once() {
    let netns = Netns::new((40000, 40009), "");
    let _server = netns.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let exporter = netns.start_exporter_with(&["--collector.interval", "300ms"], |command| {
        support::refuse_syscall(command, libc::SYS_bpf, None, libc::EPERM);
    });
    let _held = connect(&netns, "127.0.0.1:8080", 10);
    fail(&netns, "127.0.0.1:8080", 2);
    let first = first_sample_after(&exporter, unix_seconds());
    // Samples go on, and the other figures are there.
    let metrics = first_sample_after(&exporter, first.value("portstat_sample_timestamp_seconds"));
    assert_eq!(metrics.value("portstat_sample_success"), 1.0);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        10.0
    );
    assert!(
        !metrics.text.contains("_failures_total"),
        "failure families without a counter: {}",
        metrics.text
    );
    let source = metrics.family("portstat_failures_source_info");
    assert_eq!(source.len(), 1, "{source:?}");
    let (series, value) = source.iter().next().unwrap();
    assert!(
        series.contains(r#"source="none""#) && *value == 1.0,
        "{series}"
    );
    let log = exporter.log();
    assert_eq!(
        log.matches("cannot count failed connect() calls").count(),
        1,
        "{log}"
    );
    assert!(log.contains("Operation not permitted"), "{log}");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn bind_to_port_zero_and_udp_autobind_failures_count_with_autobind_on() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let exporter = netns.start_exporter(&[
        "--collector.interval",
        "300ms",
        "--collector.failures.autobind",
        "true",
    ]);
    // Every port of the range taken by TCP bind(…, 0), then three more
    // binds that fail; the same for UDP, two of them from IPv6 sockets.
    let held = netns.run(|| {
        let mut held = Vec::new();
        for (domain, kind, address, failing) in [
            (Domain::IPV4, Type::STREAM, "127.0.0.1:0", 3),
            (Domain::IPV4, Type::DGRAM, "0.0.0.0:0", 1),
            (Domain::IPV6, Type::DGRAM, "[::]:0", 2),
        ] {
            let address: SocketAddr = address.parse().unwrap();
            let mut failed = 0;
            while failed < failing {
                let socket = Socket::new(domain, kind, None).unwrap();
                match socket.bind(&address.into()) {
                    Ok(()) => held.push(socket),
                    Err(error) => {
                        assert_eq!(error.kind(), ErrorKind::AddrInUse, "{error}");
                        failed += 1;
                    }
                }
                assert!(held.len() <= 20, "the range never filled");
            }
        }
        // UDP's automatic bind finds no port: connect(), sendto() and an
        // IPv4-mapped sendmsg() fail with EAGAIN, toward one destination.
        let peer: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let error = udp.connect(&peer.into()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EAGAIN), "{error}");
        let error = udp.send_to(b"x", &peer.into()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EAGAIN), "{error}");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        let udp6 = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        let error = udp6
            .send_to_vectored(&[std::io::IoSlice::new(b"x")], &mapped.into())
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EAGAIN), "{error}");
        held
    });
    let metrics = first_sample_after(&exporter, unix_seconds());
    let comm = own_comm();
    for (series, expected) in [
        (r#"portstat_ephemeral_bind_failures_total{protocol="tcp"}"#.to_string(), 3.0),
        (r#"portstat_ephemeral_bind_failures_total{protocol="udp"}"#.to_string(), 3.0),
        (
            format!(r#"portstat_ephemeral_process_bind_failures_total{{protocol="tcp",process="{comm}"}}"#),
            3.0,
        ),
        (TOTAL.to_string(), 0.0),
        (r#"portstat_ephemeral_connect_failures_total{protocol="udp"}"#.to_string(), 3.0),
        (
            r#"portstat_ephemeral_destination_connect_failures_total{protocol="udp",local_address="0.0.0.0",remote_address="127.0.0.1",remote_port="53"}"#.to_string(),
            3.0,
        ),
    ] {
        assert_eq!(metrics.value(&series), expected, "{series}\n{}", metrics.text);
    }
    drop(held);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn without_autobind_no_bind_or_udp_failure_is_written() {
    support::require_bpf();
    let netns = Netns::new((40000, 40009), "");
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(TOTAL), 0.0);
    assert_eq!(
        metrics.get(r#"portstat_ephemeral_connect_failures_total{protocol="udp"}"#),
        None
    );
    assert!(
        !metrics
            .text
            .contains("portstat_ephemeral_bind_failures_total")
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ports_taken_between_samples_by_bind_show_as_unpredicted_failures() {
    support::require_bpf();
    // A sample sees ten free ports; bind() then takes them all before the
    // next, which no count of connect() attempts sees: the failure that
    // follows is one the prediction did not allow for. That holds when no
    // sample began between the sample seen and the failure; an attempt
    // where one did is made again.
    let netns = Netns::new((40000, 40009), "");
    let _server = netns.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let exporter = netns.start_exporter(&["--collector.interval", "1s"]);
    let unpredicted = r#"portstat_ephemeral_connect_failures_unpredicted_total{protocol="tcp"}"#;
    let began = |metrics: &Metrics| {
        metrics.value("portstat_sample_timestamp_seconds")
            - metrics.value("portstat_sample_duration_seconds")
    };
    for _attempt in 0..5 {
        let before = first_sample_after(&exporter, unix_seconds());
        assert_eq!(before.value("portstat_ephemeral_headroom_exact"), 1.0);
        assert_eq!(
            before.value("portstat_ephemeral_new_destination_headroom"),
            10.0
        );
        let bound = netns.run(|| {
            let bound: Vec<Socket> = (0..10)
                .map(|_| support::bound_socket("127.0.0.1:0", false))
                .collect();
            let error = TcpStream::connect("127.0.0.1:8080").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::AddrNotAvailable, "{error}");
            bound
        });
        let failed_at = unix_seconds();
        // The first sample after the one seen.
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = loop {
            let metrics = exporter.metrics();
            if metrics.value("portstat_sample_timestamp_seconds")
                != before.value("portstat_sample_timestamp_seconds")
            {
                break metrics;
            }
            assert!(Instant::now() < deadline, "no sample within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(bound);
        if began(&next) < failed_at {
            // It began before the failure, and may have seen the binds.
            continue;
        }
        assert_eq!(
            next.value(unpredicted) - before.value(unpredicted),
            1.0,
            "{}",
            next.text
        );
        return;
    }
    panic!("in 5 attempts, a sample always began between the binds and the failure");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn with_every_namespace_each_counts_its_own_failures() {
    support::require_bpf();
    let _apart = beside_many_namespaces();
    let home = Netns::new((43000, 43099), "");
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "300ms"]);
    let labels = |netns: &Netns| {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(format!("/run/netns/{}", netns.name()))
            .unwrap()
            .ino();
        format!(r#"netns="{inode}",netns_name="{}""#, netns.name())
    };
    let namespaces: Vec<(Netns, usize)> = [2, 3]
        .into_iter()
        .map(|failing| (Netns::new((40000, 40009), ""), failing))
        .collect();
    exporter.wait_until_sampled(
        &namespaces
            .iter()
            .map(|(netns, _)| netns)
            .collect::<Vec<_>>(),
    );
    let mut held = Vec::new();
    for (netns, failing) in &namespaces {
        held.push(netns.run(|| listening_socket("127.0.0.1:8080", false, 1024)));
        held.extend(
            connect(netns, "127.0.0.1:8080", 10)
                .into_iter()
                .map(socket2::Socket::from),
        );
        fail(netns, "127.0.0.1:8080", *failing);
    }
    let metrics = first_sample_after(&exporter, unix_seconds());
    for (netns, failing) in &namespaces {
        let labels = labels(netns);
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_ephemeral_connect_failures_total{{{labels},protocol="tcp"}}"#
            )),
            *failing as f64,
            "{}",
            metrics.text
        );
        assert_eq!(
            metrics.value(&format!(
                r#"portstat_ephemeral_destination_connect_failures_total{{{labels},protocol="tcp",local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="8080"}}"#
            )),
            *failing as f64
        );
    }
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_connect_failures_total{{{},protocol="tcp"}}"#,
            labels(&home)
        )),
        0.0
    );
}

/// The inode of a test namespace.
fn inode_of(netns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{}", netns.name()))
        .unwrap()
        .ino()
}

/// A new namespace on inode `inode`, which a namespace just deleted had:
/// the kernel gives the lowest free inode to the next namespace made. The
/// namespaces made meanwhile below it are kept until one gets it, so that
/// they hold the lower inodes other tests freed.
fn namespace_on_inode(inode: u64) -> Netns {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut below = Vec::new();
    loop {
        let candidate = Netns::new((40000, 40009), "");
        let got = inode_of(&candidate);
        if got == inode {
            return candidate;
        }
        if got < inode {
            below.push(candidate);
        }
        assert!(
            Instant::now() < deadline,
            "no new namespace got inode {inode} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_namespace_given_a_deleted_ones_inode_inherits_none_of_its_counts() {
    support::require_bpf();
    let _apart = beside_many_namespaces();
    let home = Netns::new((43000, 43099), "");
    let exporter =
        home.start_exporter(&["--collector.netns", "all", "--collector.interval", "300ms"]);
    exporter.wait_for_the_counter();
    let old = Netns::new((40000, 40009), "");
    let inode = inode_of(&old);
    let old_name = old.name().to_string();
    exporter.wait_until_sampled(&[&old]);
    {
        let _server = old.run(|| listening_socket("127.0.0.1:8080", false, 1024));
        let _held = connect(&old, "127.0.0.1:8080", 10);
        fail(&old, "127.0.0.1:8080", 5);
        let counted = format!(
            r#"portstat_ephemeral_connect_failures_total{{netns="{inode}",netns_name="{old_name}",protocol="tcp"}}"#
        );
        exporter
            .metrics_until(|metrics| metrics.get(&counted) == Some(5.0))
            .unwrap();
    }
    drop(old);
    let new = namespace_on_inode(inode);
    let metrics = first_sample_after(&exporter, unix_seconds());
    let of_new = |family: &str| -> Vec<(String, f64)> {
        metrics
            .family(family)
            .into_iter()
            .filter(|(series, _)| series.contains(&format!(r#"netns="{inode}""#)))
            .collect()
    };
    // The new namespace is sampled, and counts nothing of the old one's.
    assert!(
        metrics
            .text
            .contains(&format!(r#"netns="{inode}",netns_name="{}""#, new.name())),
        "{}",
        metrics.text
    );
    for family in [
        "portstat_ephemeral_connect_failures_total",
        "portstat_ephemeral_connects_total",
    ] {
        for (series, value) in of_new(family) {
            assert_eq!(value, 0.0, "{series} in:\n{}", metrics.text);
        }
    }
    for family in [
        "portstat_ephemeral_destination_connect_failures_total",
        "portstat_ephemeral_process_connect_failures_total",
        "portstat_ephemeral_destination_connects_total",
        "portstat_ephemeral_process_connects_total",
    ] {
        assert_eq!(of_new(family), vec![], "{}", metrics.text);
    }
    // Its own failures count from zero.
    let _server = new.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let _held = connect(&new, "127.0.0.1:8080", 10);
    fail(&new, "127.0.0.1:8080", 2);
    let own = format!(
        r#"portstat_ephemeral_connect_failures_total{{netns="{inode}",netns_name="{}",protocol="tcp"}}"#,
        new.name()
    );
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(&own), 2.0, "{}", metrics.text);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn namespaces_that_connect_but_never_fail_leave_room_for_failures() {
    support::require_bpf();
    let _alone = MANY_NAMESPACES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let netns = Netns::new((40000, 40009), "");
    let _server = netns.run(|| listening_socket("127.0.0.1:8080", false, 1024));
    let exporter = netns.start_exporter(&["--collector.interval", "300ms"]);
    exporter.wait_for_the_counter();
    // 1,100 namespaces, more than the kernel's maps have entries, each
    // making one connect() that is refused: no port failure anywhere. They
    // live until every one has connected (a namespace gone gives its inode
    // to the next).
    let script = r#"
import ctypes, fcntl, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
hold, release = os.pipe()
children = []
for _ in range(1100):
    done, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(release)
            # CLONE_NEWNET
            assert libc.unshare(0x40000000) == 0
            control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # SIOCSIFFLAGS: loopback up.
            fcntl.ioctl(control, 0x8914, struct.pack("16sH", b"lo", 0x1 | 0x8 | 0x40))
            client = socket.socket()
            try:
                client.connect(("127.0.0.1", 1))
                code = 2
            except ConnectionRefusedError:
                code = 0
        finally:
            os.write(tell, b"x")
            os.read(hold, 1)
            os._exit(code)
    os.close(tell)
    assert os.read(done, 1) == b"x"
    os.close(done)
    children.append(pid)
os.close(release)
for pid in children:
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "the namespaces' script: {status}");
    // Then seven failures in the exporter's namespace.
    let _held = connect(&netns, "127.0.0.1:8080", 10);
    fail(&netns, "127.0.0.1:8080", 7);
    let metrics = first_sample_after(&exporter, unix_seconds());
    assert_eq!(metrics.value(TOTAL), 7.0, "{}", metrics.text);
    assert_eq!(
        metrics.value(&destination_series("127.0.0.1", "127.0.0.1", 8080)),
        7.0
    );
    assert_eq!(
        metrics.value("portstat_ephemeral_failures_unrecorded_total"),
        0.0,
        "{}",
        metrics.text
    );
}
