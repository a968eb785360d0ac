//! The truth lab: for each scenario, every source predicts how many more
//! `connect()` calls to one destination will get a port; then the test makes
//! them until `EADDRNOTAVAIL` and counts. The BPF source, and the default
//! (`auto`, which must pick BPF), must be exact in every scenario. netlink
//! and procfs must be exact where they can see what decides (TIME_WAIT
//! reuse, listeners, reserved ports, and for netlink from Linux 6.5 bound
//! sockets), and otherwise report an upper bound and say so
//! (`portstat_ephemeral_headroom_exact` 0). On a range of an odd length the
//! count may be one above the prediction, and `headroom_slack` says so.
//!
//! The range is 60 ports, 40000-40059, in a namespace of the test's own,
//! but in the scenarios of odd-sized ranges.
//!
//! With `PORTSTAT_TRUTH_LAB_RESULTS` set to a file, every prediction and
//! count is appended to it, a line each: the kernel matrix
//! (`tests/kernel_matrix.rs`) runs this lab in each kernel and builds the
//! table of `docs/sources.md` from those lines.

mod support;

use support::Place;

use support::OutputWithin;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use support::{Metrics, Netns, bound_socket, listening_socket, run};

const RANGE: (u16, u16) = (40000, 40059);
/// The sources whose predictions are checked: the default first, then each
/// one named.
const SOURCES: [&str; 4] = ["auto", "bpf", "netlink", "procfs"];

/// What a source must get right in a scenario.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// The prediction is the count, or within the slack the exporter
    /// states (`portstat_ephemeral_headroom_slack`), and it says it is exact.
    Exact,
    /// The source cannot see what decides: it predicts at least the count,
    /// and says its figure is not exact.
    UpperBound,
}

/// What netlink gets right where sockets bound but idle hold ports: it
/// reports them from Linux 6.5 on.
fn netlink_with_bound_sockets() -> Expect {
    if support::netlink_reports_bound_inactive() {
        Expect::Exact
    } else {
        Expect::UpperBound
    }
}

/// One source's prediction for a destination.
struct Prediction {
    source: &'static str,
    headroom: f64,
    slack: f64,
    exact: bool,
}

/// The slack the kernel's scan leaves on `range`, worked out here from the
/// range alone: one on an odd number of ports, five or more.
fn expected_slack(range: (u16, u16)) -> f64 {
    let length = u32::from(range.1) - u32::from(range.0) + 1;
    if length >= 5 && length % 2 == 1 {
        1.0
    } else {
        0.0
    }
}

/// Reads the headroom of the destination `from` -> `to` as `--once` reports
/// it with `source`: its own series when it is listed, else the figure for
/// a destination not yet connected to.
fn predict(
    netns: &Netns,
    range: (u16, u16),
    source: &'static str,
    from: &str,
    to: SocketAddr,
) -> Prediction {
    // The lab proves the BPF source exact: without it, it proves nothing.
    support::require_bpf();
    let metrics: Metrics =
        netns.once_metrics(&["--collector.source", source, "--collector.processes=false"]);
    let used_source = if source == "auto" { "bpf" } else { source };
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_source_info{{protocol="tcp",source="{used_source}"}}"#
        )),
        1.0,
        "{source} did not read TCP with {used_source}"
    );
    let series = format!(
        r#"portstat_ephemeral_destination_headroom{{local_address="{from}",remote_address="{}",remote_port="{}"}}"#,
        to.ip(),
        to.port()
    );
    let headroom = metrics
        .get(&series)
        .unwrap_or_else(|| metrics.value("portstat_ephemeral_new_destination_headroom"));
    let slack = metrics.value("portstat_ephemeral_headroom_slack");
    assert_eq!(slack, expected_slack(range), "{source}: slack");
    // The identity the figures keep, for every destination: the free
    // ports, less at most an end port of a range of an odd length.
    let exclusive: f64 = metrics
        .family("portstat_ephemeral_ports_exclusive")
        .values()
        .sum();
    let used = metrics
        .get(&series.replace("_headroom{", "_ports_used{"))
        .unwrap_or(0.0);
    let free = metrics.value("portstat_ephemeral_ports_capacity") - exclusive - used;
    let odd = (range.1 - range.0).is_multiple_of(2) && range.1 > range.0;
    assert!(
        headroom == free || (odd && headroom == free - 1.0),
        "{source}: headroom {headroom} from {free} free ports"
    );
    // No destination has less headroom than the fewest any has.
    assert!(
        metrics.value("portstat_ephemeral_destination_min_headroom") <= headroom,
        "{source}: min headroom above a destination's headroom"
    );
    Prediction {
        source,
        headroom,
        slack,
        exact: metrics.value("portstat_ephemeral_headroom_exact") == 1.0,
    }
}

/// Predicts with every source, then counts the connections to `to` that
/// succeed, and checks each prediction against the count. `expect` is for
/// bpf, netlink and procfs; the default source must be as exact as bpf.
fn check(netns: &Netns, from: &str, to: SocketAddr, expect: [Expect; 3]) -> usize {
    check_in(netns, RANGE, from, to, to, expect)
}

/// `check` on a namespace whose range is `range`, counting the connections
/// made to `connect_to`, which may be `to` in another form (an IPv4-mapped
/// address for the IPv4 destination `to`).
fn check_in(
    netns: &Netns,
    range: (u16, u16),
    from: &str,
    to: SocketAddr,
    connect_to: SocketAddr,
    expect: [Expect; 3],
) -> usize {
    let (predictions, held) = measure_in(netns, range, from, to, connect_to);
    judge(netns, to, &predictions, held, expect)
}

/// What each source predicts for `to` from `from`, then the connections
/// to `connect_to` made until `connect()` fails, held open.
fn measure_in(
    netns: &Netns,
    range: (u16, u16),
    from: &str,
    to: SocketAddr,
    connect_to: SocketAddr,
) -> (Vec<Prediction>, Vec<TcpStream>) {
    let predictions: Vec<Prediction> = SOURCES
        .iter()
        .map(|source| predict(netns, range, source, from, to))
        .collect();
    let held = netns.run(|| connect_until_exhausted(connect_to));
    (predictions, held)
}

/// Records and checks the `predictions` of `measure_in` against the
/// connections `held`, as `expect` says of each source; returns how many
/// connections were made.
fn judge(
    netns: &Netns,
    to: SocketAddr,
    predictions: &[Prediction],
    held: Vec<TcpStream>,
    expect: [Expect; 3],
) -> usize {
    let expect = [expect[0], expect[0], expect[1], expect[2]];
    let count = held.len();
    for (prediction, expect) in predictions.iter().zip(expect) {
        record(prediction, count, expect);
        match expect {
            Expect::Exact => {
                assert!(
                    prediction.headroom <= count as f64
                        && count as f64 <= prediction.headroom + prediction.slack,
                    "{}: predicted {} (slack {}) connections to {to}, {count} succeeded",
                    prediction.source,
                    prediction.headroom,
                    prediction.slack
                );
                if matches!(prediction.source, "bpf" | "auto") {
                    assert!(
                        prediction.exact,
                        "{} says it is not exact",
                        prediction.source
                    );
                }
            }
            Expect::UpperBound => {
                assert!(
                    prediction.headroom >= count as f64,
                    "{}: predicted {}, below the {count} that succeeded",
                    prediction.source,
                    prediction.headroom
                );
                assert!(
                    !prediction.exact,
                    "{} claims to be exact",
                    prediction.source
                );
            }
        }
        if expect == Expect::Exact {
            // `to` is now out of ports: the fewest any destination has is 0,
            // and the ratio to alert on reads 1.
            let after: Metrics = netns.once_metrics(&[
                "--collector.source",
                prediction.source,
                "--collector.processes=false",
            ]);
            assert_eq!(
                after.value("portstat_ephemeral_destination_min_headroom"),
                0.0,
                "{}: min headroom once connect() to {to} fails",
                prediction.source
            );
            assert_eq!(
                after.value("portstat_ephemeral_destination_max_used_ratio"),
                1.0,
                "{}: max used ratio once connect() to {to} fails",
                prediction.source
            );
        }
    }
    drop(held);
    count
}

/// Appends one prediction and its count to `PORTSTAT_TRUTH_LAB_RESULTS`,
/// where set: kernel, scenario, source, prediction, slack, count, exact
/// flag and what the scenario expects of the source, tab-separated.
fn record(prediction: &Prediction, count: usize, expect: Expect) {
    let Some(path) = std::env::var_os("PORTSTAT_TRUTH_LAB_RESULTS") else {
        return;
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let scenario = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    let line = format!(
        "{}\t{scenario}\t{}\t{}\t{}\t{count}\t{}\t{expect:?}\n",
        kernel.trim(),
        prediction.source,
        prediction.headroom,
        prediction.slack,
        u8::from(prediction.exact),
    );
    // One write of a whole line to a file opened for appending: the lines
    // of tests running side by side do not mix.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .unwrap_or_else(|error| panic!("cannot append to {path:?}: {error}"));
}

/// Connects to `to` until `connect()` fails with EADDRNOTAVAIL.
fn connect_until_exhausted(to: SocketAddr) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(stream) => streams.push(stream),
            Err(error) if error.kind() == ErrorKind::AddrNotAvailable => return streams,
            Err(error) => panic!("connect to {to}: {error}"),
        }
        assert!(streams.len() <= 1000, "connect() never failed");
    }
}

/// A socket bound to `local` (port 0 picks one from the range), then
/// connected to `to`: bind before connect.
fn bind_then_connect(local: &str, to: SocketAddr, no_port: bool) -> TcpStream {
    let local: SocketAddr = local.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if no_port {
        let one: libc::c_int = 1;
        // SAFETY: a valid descriptor and option value of the size passed.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "IP_BIND_ADDRESS_NO_PORT");
    }
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Closes `clients` first, then the server's ends, so that the clients'
/// sockets go to TIME_WAIT; waits past the default reuse delay (1 s).
fn close_into_time_wait(clients: Vec<TcpStream>, server: &TcpListener) {
    let accepted: Vec<TcpStream> = (0..clients.len())
        .map(|_| server.accept().unwrap().0)
        .collect();
    drop(clients);
    for mut stream in accepted {
        // Wait for the client's FIN, then close: the client ends in TIME_WAIT.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).unwrap(), 0);
    }
    std::thread::sleep(Duration::from_millis(1500));
}

fn lab(reserved: &str) -> Netns {
    Netns::new(RANGE, reserved)
}

fn server(netns: &Netns, address: &str) -> TcpListener {
    netns.run(|| listening_socket(address, false, 4096).into())
}

const A: &str = "127.0.0.1:8080";
const B: &str = "127.0.0.2:8080";

fn at(address: &str) -> SocketAddr {
    address.parse().unwrap()
}

use Expect::{Exact, UpperBound};

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn sockets_only_bound_hold_their_ports_from_every_destination() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        let bound: Vec<socket2::Socket> =
            (0..3).map(|_| bound_socket("127.0.0.1:0", false)).collect();
        let streams: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(A).unwrap()).collect();
        (bound, streams)
    });
    assert_eq!(
        check(
            &netns,
            "127.0.0.1",
            at(B),
            [Exact, netlink_with_bound_sockets(), UpperBound]
        ),
        57
    );
}

/// A dual-stack listener on `[::]:8080`: IPv4 clients and IPv6 clients to
/// `::ffff:127.0.0.1` reach it alike.
fn dual_stack_server(netns: &Netns) -> TcpListener {
    netns.run(|| listening_socket("[::]:8080", false, 4096).into())
}

const MAPPED_A: &str = "[::ffff:127.0.0.1]:8080";

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ipv4_and_ipv4_mapped_connections_share_one_destination() {
    support::require_bpf();
    let netns = lab("");
    let _server = dual_stack_server(&netns);
    let _held = netns.run(|| {
        let v4: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(A).unwrap()).collect();
        let mapped: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(MAPPED_A).unwrap())
            .collect();
        (v4, mapped)
    });
    // One destination of 50 ports, shown in its IPv4 form.
    let metrics = netns.once_metrics(&["--collector.source", "bpf"]);
    assert_eq!(metrics.value("portstat_ephemeral_destinations"), 1.0);
    assert_eq!(
        metrics.value(
            r#"portstat_ephemeral_destination_ports_used{local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="8080"}"#
        ),
        50.0
    );
    assert_eq!(
        metrics.value("portstat_ephemeral_destination_max_used_ratio"),
        50.0 / 60.0
    );
    assert_eq!(check(&netns, "127.0.0.1", at(A), [Exact; 3]), 10);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ipv4_mapped_connections_alone_use_up_the_ipv4_destination() {
    let netns = lab("");
    let _server = dual_stack_server(&netns);
    let _held = netns.run(|| {
        (0..50)
            .map(|_| TcpStream::connect(MAPPED_A).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(check(&netns, "127.0.0.1", at(A), [Exact; 3]), 10);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ipv4_connections_use_up_the_ipv4_mapped_destination() {
    let netns = lab("");
    let _server = dual_stack_server(&netns);
    let _held = netns.run(|| {
        (0..45)
            .map(|_| TcpStream::connect(A).unwrap())
            .collect::<Vec<_>>()
    });
    // Dual-stack sockets connect to the mapped form until it fails.
    assert_eq!(
        check_in(&netns, RANGE, "127.0.0.1", at(A), at(MAPPED_A), [Exact; 3]),
        15
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn three_ports_hand_out_two() {
    let range = (40000, 40002);
    let netns = Netns::new(range, "");
    let _server = server(&netns, A);
    // __inet_hash_connect scans two of the three ports, never the last.
    assert_eq!(
        check_in(&netns, range, "127.0.0.1", at(A), at(A), [Exact; 3]),
        2
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn odd_sized_ranges_land_within_the_slack() {
    for range in [(40000, 40004), (40000, 40100)] {
        let netns = Netns::new(range, "");
        let _server = server(&netns, A);
        let _held = netns.run(|| {
            (0..2)
                .map(|_| TcpStream::connect(A).unwrap())
                .collect::<Vec<_>>()
        });
        let count = check_in(&netns, range, "127.0.0.1", at(A), at(A), [Exact; 3]);
        let ports = usize::from(range.1 - range.0) + 1;
        assert!(
            count == ports - 3 || count == ports - 2,
            "{range:?}: {count} more connections"
        );
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn plain_connections_share_ports_across_destinations() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        (0..20)
            .map(|_| TcpStream::connect(A).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(check(&netns, "127.0.0.1", at(A), [Exact; 3]), 40);
    // A destination not yet connected to gets every port.
    assert_eq!(check(&netns, "127.0.0.1", at(B), [Exact; 3]), 60);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ports_bound_before_connect_are_lost_to_every_destination() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        (0..30)
            .map(|_| bind_then_connect("127.0.0.1:0", at(A), false))
            .collect::<Vec<_>>()
    });
    // netlink and procfs count the 30 as shared and predict 60.
    assert_eq!(
        check(&netns, "127.0.0.1", at(B), [Exact, UpperBound, UpperBound]),
        30
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn bound_before_connect_and_closed_into_time_wait_still_costs_the_port() {
    // The kernel's own list of TIME_WAIT sockets, not the exporter's. Under
    // QEMU's TCG the guest's clock can leap, and most of the 30 have been
    // seen gone already, with their ports: the scenario is then set up
    // again in a new namespace, a few times at most.
    for _attempt in 0..3 {
        let netns = lab("");
        let servers = (server(&netns, A), server(&netns, B));
        let clients = netns.run(|| {
            (0..30)
                .map(|_| bind_then_connect("127.0.0.1:0", at(A), false))
                .collect::<Vec<_>>()
        });
        close_into_time_wait(clients, &servers.0);
        let time_wait = time_wait_to(&netns, at(A));
        if time_wait <= 20 {
            eprintln!("{time_wait} of 30 sockets in TIME_WAIT: again");
            continue;
        }
        // tcp_tw_reuse=2 and loopback: reuse would be allowed, but connect()
        // skips the port before it looks at the TIME_WAIT.
        assert_eq!(
            check(&netns, "127.0.0.1", at(B), [Exact, UpperBound, UpperBound]),
            60 - time_wait
        );
        return;
    }
    panic!("in 3 attempts, 20 or fewer of 30 sockets stayed in TIME_WAIT");
}

/// How many sockets of the namespace `ss` lists in TIME_WAIT toward `to`.
fn time_wait_to(netns: &Netns, to: SocketAddr) -> usize {
    let output = netns
        .command("ss")
        .args(["-Htan", "state", "time-wait"])
        .output_within()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.split_whitespace().nth(3) == Some(&to.to_string()))
        .count()
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn ip_bind_address_no_port_keeps_ports_shared() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        (0..30)
            .map(|_| bind_then_connect("127.0.0.1:0", at(A), true))
            .collect::<Vec<_>>()
    });
    assert_eq!(check(&netns, "127.0.0.1", at(B), [Exact; 3]), 60);
    // A's own 30 ports are the only ones A cannot have again.
    assert_eq!(check(&netns, "127.0.0.1", at(A), [Exact; 3]), 30);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn fixed_ports_inside_the_range_bound_then_connected() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        (40010..40015)
            .map(|port| bind_then_connect(&format!("127.0.0.1:{port}"), at(A), false))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        check(&netns, "127.0.0.1", at(B), [Exact, UpperBound, UpperBound]),
        55
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn listeners_and_bound_sockets_inside_the_range() {
    let netns = lab("");
    let _servers = (server(&netns, A), server(&netns, B));
    let _held = netns.run(|| {
        let listener = listening_socket("0.0.0.0:40030", false, 16);
        let bound: Vec<socket2::Socket> =
            (0..2).map(|_| bound_socket("0.0.0.0:0", false)).collect();
        let streams: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(A).unwrap()).collect();
        (listener, bound, streams)
    });
    // procfs cannot see sockets bound but not connected, nor netlink
    // before Linux 6.5.
    assert_eq!(
        check(
            &netns,
            "127.0.0.1",
            at(A),
            [Exact, netlink_with_bound_sockets(), UpperBound]
        ),
        47
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn reserved_ports_are_never_handed_out() {
    let netns = lab("40050-40059");
    let _servers = server(&netns, A);
    let _held = netns.run(|| {
        (0..10)
            .map(|_| TcpStream::connect(A).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(check(&netns, "127.0.0.1", at(A), [Exact; 3]), 40);
}

/// Closes 40 connections from `from` to `to` into TIME_WAIT under
/// `tcp_tw_reuse` = `mode`, in the namespace `setup` makes with the
/// listener for `to` (and what else must live as long), then checks every
/// source against how many more connections succeed: all 60 ports where
/// the TIME_WAIT sockets are `reusable`, the others where not. Under QEMU's
/// TCG the guest's clock can leap past their 60 s: where sockets that
/// could not be taken over are gone from the kernel's list by the end,
/// the scenario is set up again in new namespaces, a few times at most,
/// and nothing of the attempt is recorded.
fn time_wait_scenario<T>(
    setup: impl Fn() -> (Netns, T, TcpListener),
    from: &str,
    to: SocketAddr,
    mode: &str,
    reusable: bool,
) {
    for _attempt in 0..3 {
        let (netns, _keep, listener) = setup();
        netns.write_sysctl("tcp_tw_reuse", mode);
        let clients = netns.run(|| {
            (0..40)
                .map(|_| TcpStream::connect(to).unwrap())
                .collect::<Vec<_>>()
        });
        close_into_time_wait(clients, &listener);
        let time_wait = time_wait_to(&netns, to);
        if time_wait <= 30 {
            eprintln!("{time_wait} of 40 sockets in TIME_WAIT: again");
            continue;
        }
        let (predictions, held) = measure_in(&netns, RANGE, from, to, to);
        if !reusable && time_wait_to(&netns, to) < time_wait {
            eprintln!("sockets left TIME_WAIT during the check: again");
            continue;
        }
        let count = judge(&netns, to, &predictions, held, [Exact; 3]);
        assert_eq!(
            count,
            expected_beside_time_wait(reusable, time_wait),
            "tcp_tw_reuse={mode}"
        );
        return;
    }
    panic!("in 3 attempts, the TIME_WAIT sockets did not stay for the check");
}

/// What `connect()` to a destination with `time_wait` sockets in TIME_WAIT
/// gets of a 60-port range: every port where it may take them over, the
/// rest where it may not.
fn expected_beside_time_wait(reusable: bool, time_wait: usize) -> usize {
    if reusable { 60 } else { 60 - time_wait }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn time_wait_to_loopback_under_each_reuse_mode() {
    for (mode, reusable) in [("0", false), ("1", true), ("2", true)] {
        let setup = || {
            let netns = lab("");
            let listener = server(&netns, A);
            (netns, (), listener)
        };
        time_wait_scenario(setup, "127.0.0.1", at(A), mode, reusable);
    }
}

/// A client namespace (the lab) and a peer namespace joined by veth, the
/// peer at 198.51.100.2.
fn lab_with_peer() -> (Netns, Netns) {
    let client = lab("");
    let peer = Netns::new((50000, 50999), "");
    run(std::process::Command::new("ip").args([
        "-n",
        client.name(),
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        peer.name(),
    ]));
    for (netns, device, address) in [
        (&client, "veth0", "198.51.100.1/24"),
        (&peer, "veth1", "198.51.100.2/24"),
    ] {
        run(std::process::Command::new("ip").args([
            "-n",
            netns.name(),
            "addr",
            "add",
            address,
            "dev",
            device,
        ]));
        run(std::process::Command::new("ip").args([
            "-n",
            netns.name(),
            "link",
            "set",
            device,
            "up",
        ]));
    }
    (client, peer)
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn time_wait_to_a_peer_under_each_reuse_mode() {
    const PEER: &str = "198.51.100.2:8080";
    for (mode, reusable) in [("0", false), ("1", true), ("2", false)] {
        let setup = || {
            let (client, peer) = lab_with_peer();
            let listener = server(&peer, PEER);
            (client, peer, listener)
        };
        time_wait_scenario(setup, "198.51.100.1", at(PEER), mode, reusable);
    }
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn reusable_time_wait_is_reported_and_bind_before_connect_is_named() {
    support::require_bpf();
    let netns = lab("");
    let servers = (server(&netns, A), server(&netns, B));
    netns.write_sysctl("tcp_tw_reuse", "1");
    let (clients, _bound) = netns.run(|| {
        let clients: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(A).unwrap()).collect();
        let bound: Vec<TcpStream> = (0..4)
            .map(|_| bind_then_connect("127.0.0.1:0", at(B), false))
            .collect();
        (clients, bound)
    });
    close_into_time_wait(clients, &servers.0);
    let metrics = netns.once_metrics(&["--collector.source", "bpf"]);
    // Every TIME_WAIT socket the kernel still lists is reusable. Under
    // QEMU's TCG the guest's clock can leap past their 60 s, so the count
    // is the kernel's own, listed after the sample: none can have come
    // back meanwhile, and the ten are there on any steady clock.
    let time_wait = time_wait_to(&netns, at(A));
    let reusable = metrics.value(r#"portstat_ephemeral_time_wait_reusable{protocol="tcp"}"#);
    assert!(
        reusable >= time_wait as f64 && reusable <= 10.0,
        "{reusable} reusable, {time_wait} listed after the sample"
    );
    if time_wait == 10 {
        assert_eq!(reusable, 10.0);
    }
    assert_eq!(
        metrics.value(
            r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="bind_before_connect"}"#
        ),
        4.0
    );
    assert_eq!(
        metrics.value(&format!(
            r#"portstat_ephemeral_process_bind_before_connect_ports{{process="{}"}}"#,
            support::own_comm()
        )),
        4.0
    );
    let inspect = netns
        .command(support::exporter())
        .args(["inspect", "--collector.source", "bpf"])
        .output_within()
        .unwrap();
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(report.contains("Ports bound before connect()"), "{report}");
    assert!(report.contains("4 bind_before_connect"), "{report}");
    assert!(report.contains(&support::own_comm()), "{report}");
}
