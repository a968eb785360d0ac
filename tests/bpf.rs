//! The BPF source's fallbacks: wherever its program cannot load (no kernel
//! BTF, a kernel without what it reads, no capability, `bpf()` refused, a
//! verifier refusal), `auto` reads TCP over netlink instead, logs why once,
//! loses no figure, and says which source it used and that headroom is now
//! an upper bound. With `--collector.source bpf` the sample fails instead.

mod support;

use support::Place;

use support::OutputWithin;

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Metrics, Netns, TIME_WAIT, listening_socket};

const WARNING: &str = "the BPF source cannot run here";

/// A namespace with a listener inside the range, a bound socket and ten
/// connections, so that the figures the fallback must keep are not zeros.
fn populated() -> (Netns, impl Sized) {
    let netns = Netns::new((40000, 40059), "");
    let held = netns.run(|| {
        let server = listening_socket("127.0.0.1:8080", false, 64);
        let inside = listening_socket("0.0.0.0:40030", false, 16);
        let bound = support::bound_socket("0.0.0.0:0", false);
        let streams: Vec<TcpStream> = (0..10)
            .map(|_| TcpStream::connect("127.0.0.1:8080").unwrap())
            .collect();
        (server, inside, bound, streams)
    });
    (netns, held)
}

/// The figures of `KEPT` that the bound socket of `populated` changes, by
/// how much it changes them: a netlink source before Linux 6.5 does not
/// see it.
const CHANGED_BY_THE_BOUND_SOCKET: [(&str, f64); 4] = [
    (r#"portstat_ephemeral_ports_used{protocol="tcp"}"#, 1.0),
    (
        r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="bound"}"#,
        1.0,
    ),
    (r#"portstat_ephemeral_new_destination_headroom"#, -1.0),
    (
        r#"portstat_ephemeral_destination_headroom{local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="8080"}"#,
        -1.0,
    ),
];

/// What a series of `KEPT` reads with BPF, given what it reads over
/// netlink: the same, but where netlink cannot see the bound socket.
fn with_bpf(series: &str, netlink: f64) -> f64 {
    let missed = CHANGED_BY_THE_BOUND_SOCKET
        .iter()
        .find(|(changed, _)| *changed == series)
        .filter(|_| !support::netlink_reports_bound_inactive());
    netlink + missed.map_or(0.0, |(_, by)| *by)
}

/// The figures that must not change when TCP falls back from BPF.
const KEPT: [&str; 7] = [
    r#"portstat_ephemeral_ports_used{protocol="tcp"}"#,
    r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="listener"}"#,
    r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="bound"}"#,
    r#"portstat_ephemeral_sockets{protocol="tcp",state="established"}"#,
    r#"portstat_ephemeral_new_destination_headroom"#,
    r#"portstat_ephemeral_destination_headroom{local_address="127.0.0.1",remote_address="127.0.0.1",remote_port="8080"}"#,
    r#"portstat_listener_accept_queue_limit{address="127.0.0.1",port="8080",process="unknown"}"#,
];

fn run(command: &mut Command) -> (Output, String, Metrics) {
    let output = command.output_within().expect("cannot run the exporter");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let metrics = Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    (output, stderr, metrics)
}

/// Runs `--once` in `auto` through `wrap`, and checks that it fell back to
/// netlink, logged `reason` once, and kept every figure of a plain netlink
/// sample; then that `--collector.source bpf` fails.
fn assert_falls_back(netns: &Netns, wrap: impl Fn(&[&str]) -> Command, reason: &str) {
    let args = [
        "--once",
        "--collector.processes=false",
        "--log.level",
        "warn",
    ];
    let (output, stderr, metrics) = run(&mut wrap(&args));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0,
        "{stderr}"
    );
    assert_eq!(metrics.value("portstat_ephemeral_headroom_exact"), 0.0);
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    assert!(stderr.contains(reason), "{reason:?} not in {stderr}");

    let plain = netns.once_metrics(&[
        "--collector.source",
        "netlink",
        "--collector.processes=false",
    ]);
    for series in KEPT {
        assert_eq!(metrics.value(series), plain.value(series), "{series}");
    }

    let (output, stderr, _) = run(&mut wrap(&[
        "--once",
        "--collector.source",
        "bpf",
        "--collector.processes=false",
    ]));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(reason), "{reason:?} not in {stderr}");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_bpf_source_reads_what_netlink_reads_and_more() {
    support::require_bpf();
    let (netns, _held) = populated();
    let bpf = netns.once_metrics(&["--collector.source", "bpf"]);
    let netlink = netns.once_metrics(&["--collector.source", "netlink"]);
    assert_eq!(
        bpf.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0
    );
    assert_eq!(bpf.value("portstat_ephemeral_headroom_exact"), 1.0);
    for series in KEPT {
        let series = series.replace("unknown", &support::own_comm());
        assert_eq!(
            bpf.value(&series),
            with_bpf(&series, netlink.value(&series)),
            "{series}"
        );
    }
    // The default is BPF where it can run.
    let auto = netns.once_metrics(&[]);
    assert_eq!(
        auto.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0
    );
}

/// Bound-but-inactive sockets are in no table `iter/tcp` walks: the program
/// finds them in the bind hash itself. With netlink refused, TCP still reads
/// through BPF alone, with the bound sockets.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn the_program_finds_bound_sockets_without_netlink() {
    support::require_bpf();
    let (netns, _held) = populated();
    let netlink = netns.once_metrics(&["--collector.source", "netlink"]);
    let mut command = netns.command(support::exporter());
    command.arg("--once");
    support::refuse_netlink(&mut command, libc::EACCES);
    let (output, stderr, bpf) = run(&mut command);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        bpf.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0,
        "{stderr}"
    );
    let bound = r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#;
    assert_eq!(bpf.value(bound), 1.0, "{stderr}");
    assert_eq!(bpf.value("portstat_ephemeral_headroom_exact"), 1.0);
    for series in KEPT {
        let series = series.replace("unknown", &support::own_comm());
        assert_eq!(
            bpf.value(&series),
            with_bpf(&series, netlink.value(&series)),
            "{series}"
        );
    }
    // Before Linux 6.5 netlink does not see the bound socket, and neither
    // counts it nor claims a count of it.
    if support::netlink_reports_bound_inactive() {
        assert_eq!(netlink.value(bound), 1.0);
    } else {
        assert_eq!(netlink.get(bound), None);
    }
}

/// More bound sockets than the program's ring buffer holds (256 KiB, some
/// 3,200 records): its walk says it is incomplete, and netlink reads them
/// all instead, still under the BPF source.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn bound_sockets_beyond_the_ring_come_from_netlink() {
    support::require_bpf();
    const BOUND: usize = 3500;
    let (netns, _held) = populated();
    // All on one port the kernel picks inside the range, with SO_REUSEPORT.
    let _many = netns.run(|| {
        let first = support::bound_socket("0.0.0.0:0", true);
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let mut sockets = vec![first];
        sockets.extend((1..BOUND).map(|_| support::bound_socket(&format!("0.0.0.0:{port}"), true)));
        sockets
    });
    let bpf = netns.once_metrics(&["--collector.source", "bpf"]);
    assert_eq!(
        bpf.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0
    );
    if !support::netlink_reports_bound_inactive() {
        // Before Linux 6.5 nothing reads what the ring could not hold: the
        // exporter neither counts them nor claims exact headroom.
        assert_eq!(
            bpf.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#),
            None
        );
        assert_eq!(bpf.value("portstat_ephemeral_headroom_exact"), 0.0);
        return;
    }
    assert_eq!(
        bpf.value(r#"portstat_ephemeral_sockets{protocol="tcp",state="bound_inactive"}"#),
        (BOUND + 1) as f64
    );
    assert_eq!(
        bpf.value(r#"portstat_ephemeral_ports_exclusive{protocol="tcp",reason="bound"}"#),
        2.0
    );
    // Without netlink the BPF source cannot complete these, and gives way.
    let mut command = netns.command(support::exporter());
    command.args(["--once", "--log.level", "warn"]);
    support::refuse_netlink(&mut command, libc::EACCES);
    let (output, stderr, metrics) = run(&mut command);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="procfs"}"#),
        1.0,
        "{stderr}"
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn falls_back_when_bpf_is_refused_by_seccomp() {
    let (netns, _held) = populated();
    assert_falls_back(
        &netns,
        |args| {
            let mut command = netns.command(support::exporter());
            command.args(args);
            support::refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
            command
        },
        "Operation not permitted",
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn falls_back_without_the_capability() {
    let (netns, _held) = populated();
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, as in a container
    // that was not granted them.
    assert_falls_back(
        &netns,
        |args| without_bpf_capabilities(&netns, args),
        "Operation not permitted",
    );
}

/// The exporter with `args` in `netns`, as root without CAP_BPF,
/// CAP_PERFMON and CAP_SYS_ADMIN.
fn without_bpf_capabilities(netns: &Netns, args: &[&str]) -> Command {
    let mut command = netns.command("capsh");
    command
        .arg("--drop=cap_bpf,cap_perfmon,cap_sys_admin")
        .arg("--")
        .arg("-c")
        .arg(format!("exec {} \"$@\"", support::exporter()))
        .arg("portstat_exporter")
        .args(args);
    command
}

/// A namespace with no TCP socket, whose dump the socket counts let the
/// exporter skip: the source is still tried at the first sample, so that
/// one that cannot run is not named, nor its exactness claimed.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_source_that_cannot_run_is_found_out_with_no_socket_to_read() {
    support::require_bpf();
    let netns = Netns::new((40000, 40059), "");
    let without_bpf = |args: &[&str]| without_bpf_capabilities(&netns, args);
    let (output, stderr, metrics) = run(&mut without_bpf(&["--once", "--log.level", "warn"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0,
        "{stderr}"
    );
    assert_eq!(
        metrics.get(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        None
    );
    assert_eq!(metrics.value("portstat_ephemeral_headroom_exact"), 0.0);
    assert_eq!(stderr.matches(WARNING).count(), 1, "{stderr}");
    // Asked for by name, BPF fails the sample, sockets or none.
    let (output, stderr, _) = run(&mut without_bpf(&["--once", "--collector.source", "bpf"]));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    // With the capability, the same empty namespace reads over BPF, exact.
    let metrics = netns.once_metrics(&["--collector.source", "bpf"]);
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0
    );
    assert_eq!(metrics.value("portstat_ephemeral_headroom_exact"), 1.0);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn falls_back_without_kernel_btf() {
    let (netns, _held) = populated();
    // A private mount namespace where /sys/kernel/btf is empty, as on a
    // kernel built without CONFIG_DEBUG_INFO_BTF.
    assert_falls_back(
        &netns,
        |args| {
            let mut command = netns.command("unshare");
            command
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs none /sys/kernel/btf && exec {} \"$@\"",
                    support::exporter()
                ))
                .arg("portstat_exporter")
                .args(args);
            command
        },
        "/sys/kernel/btf/vmlinux",
    );
}

/// Checks the fallback when the exporter loads the broken program
/// `tests/fixtures/bpf/NAME.bpf.o` instead of its own.
fn assert_falls_back_from_object(name: &str, reason: &str) {
    let (netns, _held) = populated();
    let object = format!(
        "{}/tests/fixtures/bpf/{name}.bpf.o",
        env!("CARGO_MANIFEST_DIR")
    );
    assert_falls_back(
        &netns,
        |args| {
            let mut command = netns.command(support::exporter());
            command.args(args).args(["--collector.bpf.object", &object]);
            command
        },
        reason,
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn falls_back_when_the_kernel_lacks_what_the_program_reads() {
    support::require_bpf();
    assert_falls_back_from_object(
        "needs_a_newer_kernel",
        "this kernel lacks a field or type the program reads",
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn falls_back_when_the_verifier_refuses_the_program() {
    support::require_bpf();
    assert_falls_back_from_object("refused_by_verifier", "BPF verify");
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_running_exporter_logs_the_fallback_once() {
    let (netns, _held) = populated();
    // The guard kills the exporter however the test ends.
    let exporter = netns.spawn_exporter_with(
        &["--collector.interval", "100ms", "--log.level", "warn"],
        |command| support::refuse_syscall(command, libc::SYS_bpf, None, libc::EPERM),
    );
    // Until samples a second apart or more have been served, however slow
    // the machine: several samples, each of which could have logged.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut first_sample = None;
    let metrics = loop {
        let metrics = exporter
            .get("/metrics")
            .ok()
            // 503 until the first sample.
            .filter(|response| response.status == 200)
            .map(|response| Metrics::parse(&response.text()));
        let taken = metrics
            .as_ref()
            .and_then(|metrics| metrics.get("portstat_sample_timestamp_seconds"));
        if let Some(taken) = taken {
            let first = *first_sample.get_or_insert(taken);
            if taken >= first + 1.0 {
                break metrics;
            }
        }
        if std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = exporter.log();
    drop(exporter);
    let metrics = metrics.expect("the exporter answers");
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0
    );
    // Several samples; one line.
    assert_eq!(text.matches(WARNING).count(), 1, "{text}");
}

/// A FIFO in a folder of its own, for an exporter to load its TCP program
/// from (`--collector.bpf.object`): the load waits until the test writes
/// the object into it, so that what the daemon does meanwhile is seen
/// without reading a clock. Removed on drop.
struct HeldObject {
    folder: std::path::PathBuf,
    fifo: std::path::PathBuf,
}

impl HeldObject {
    fn new() -> HeldObject {
        let folder = std::env::temp_dir().join(format!(
            "portstat-held-object-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&folder).unwrap();
        let fifo = folder.join("tcp_ports.bpf.o");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        HeldObject { folder, fifo }
    }

    /// A daemon in `netns` sampling every 100 ms, logging at info, whose
    /// TCP program is loaded from the FIFO.
    fn start_exporter<'a>(&self, netns: &'a Netns) -> support::Exporter<'a> {
        let fifo = self.fifo.to_string_lossy().into_owned();
        netns.start_exporter(&[
            "--collector.interval",
            "100ms",
            "--collector.bpf.object",
            &fifo,
            "--log.level",
            "info",
        ])
    }

    /// Lets the load go on, with the object at `path` of the tree.
    fn release(&self, path: &str) {
        let object = std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(&self.fifo, object).unwrap();
    }
}

impl Drop for HeldObject {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A daemon does not wait for its programs to load: it is ready, and
/// serves samples read over netlink, while they load (here, until the test
/// hands it the object); once they are loaded it reads TCP with BPF, exact,
/// and says so once.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_daemon_serves_samples_before_its_programs_load_then_switches() {
    support::require_bpf();
    let (netns, _held) = populated();
    let held = HeldObject::new();
    let exporter = held.start_exporter(&netns);
    let before = exporter.metrics();
    assert_eq!(
        before.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0,
        "{}",
        exporter.log()
    );
    assert_eq!(before.value("portstat_ephemeral_headroom_exact"), 0.0);
    for series in KEPT {
        let series = series.replace("unknown", &support::own_comm());
        assert!(before.get(&series).is_some(), "{series} is missing");
    }

    held.release("src/source/bpf/tcp_ports.bpf.o");
    let after = exporter
        .metrics_until(|metrics| {
            metrics.get(r#"portstat_source_info{protocol="tcp",source="bpf"}"#) == Some(1.0)
        })
        .unwrap();
    assert_eq!(
        after.value(r#"portstat_source_info{protocol="tcp",source="bpf"}"#),
        1.0,
        "{}",
        exporter.log()
    );
    assert_eq!(after.value("portstat_ephemeral_headroom_exact"), 1.0);
    let log = exporter.log();
    assert_eq!(
        log.matches("the BPF programs are loaded").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches(WARNING).count(), 0, "{log}");
    // The log's order is the order of events: a sample over netlink, then
    // the switch.
    let first_sample = log.find("tcp=netlink").unwrap_or(usize::MAX);
    assert!(
        first_sample < log.find("the BPF programs are loaded").unwrap_or_default(),
        "{log}"
    );
}

/// A daemon whose TCP program the verifier works on for its whole budget
/// (`tests/fixtures/bpf/costly_to_verify.bpf.c`), then refuses, serves
/// samples over netlink meanwhile, logs the refusal once with the
/// verifier's reason, and stays on netlink.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_daemon_logs_a_refusal_after_its_first_samples_once_with_the_reason() {
    support::require_bpf();
    let (netns, _held) = populated();
    let held = HeldObject::new();
    let exporter = held.start_exporter(&netns);
    assert_eq!(
        exporter
            .metrics()
            .value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0
    );
    held.release("tests/fixtures/bpf/costly_to_verify.bpf.o");
    // The verifier's million instructions take seconds: the wait is for
    // the log line, ten minutes at most.
    let log = exporter.wait_for_log(WARNING, Duration::from_secs(600));
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
    assert!(log.contains("too large"), "no verifier's reason:\n{log}");
    assert!(!log.contains("the BPF programs are loaded"), "{log}");
    let metrics = exporter
        .metrics_until(|metrics| metrics.get("portstat_sample_timestamp_seconds").is_some())
        .unwrap();
    assert_eq!(
        metrics.value(r#"portstat_source_info{protocol="tcp",source="netlink"}"#),
        1.0
    );
    assert_eq!(metrics.value("portstat_ephemeral_headroom_exact"), 0.0);
}

/// Where BPF is refused, owners come from the walk of `/proc/<pid>/fd`,
/// and name the same processes with the same ports as the BPF pass does.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn owners_fall_back_to_procfs_and_agree_with_bpf() {
    support::require_bpf();
    let (netns, _held) = populated();
    let comm = support::own_comm();
    let ports = format!(r#"portstat_ephemeral_process_ports_used{{process="{comm}"}}"#);
    let listener = format!(
        r#"portstat_listener_sockets{{protocol="tcp",address="127.0.0.1",port="8080",process="{comm}"}}"#
    );
    let mut command = netns.command(support::exporter());
    command.args(["--once", "--log.level", "warn"]);
    support::refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
    let (output, stderr, refused) = run(&mut command);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        refused.value(r#"portstat_owners_source_info{source="procfs"}"#),
        1.0
    );
    let bpf = netns.once_metrics(&[]);
    assert_eq!(
        bpf.value(r#"portstat_owners_source_info{source="bpf"}"#),
        1.0
    );
    // The listener inside the range, the bound socket, ten connections;
    // netlink, read where BPF is refused, sees the bound socket from Linux
    // 6.5 on.
    assert_eq!(bpf.value(&ports), 12.0, "{}", bpf.text);
    let missed = if support::netlink_reports_bound_inactive() {
        0.0
    } else {
        1.0
    };
    assert_eq!(refused.value(&ports), bpf.value(&ports) - missed, "{ports}");
    assert_eq!(refused.value(&listener), bpf.value(&listener), "{listener}");
}

/// What the namespaces of `one_walk_reads_what_each_namespace_reads` hold:
/// listeners inside and outside the range, IPv4 and IPv6 connections,
/// TIME_WAIT, a bound socket, one bound before connect(), UDP sockets.
fn busy_namespace(netns: &Netns, listener_port: u16, connections: usize) -> impl Sized + use<> {
    netns.run(move || {
        let server = listening_socket("127.0.0.1:8080", false, 64);
        let inside = listening_socket(&format!("0.0.0.0:{listener_port}"), false, 16);
        let server6 = listening_socket("[::1]:8443", false, 16);
        let bound = support::bound_socket("0.0.0.0:0", false);
        let streams: Vec<TcpStream> = (0..connections)
            .map(|_| TcpStream::connect("127.0.0.1:8080").unwrap())
            .chain(
                (0..3).map(|_| TcpStream::connect(format!("127.0.0.1:{listener_port}")).unwrap()),
            )
            .chain((0..3).map(|_| TcpStream::connect("[::1]:8443").unwrap()))
            .collect();
        let bound_first = support::bound_socket("127.0.0.1:0", false);
        bound_first
            .connect(
                &"127.0.0.1:8080"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        // Closed by the client first, then by the server: TIME_WAIT on an
        // ephemeral port.
        let closing = listening_socket("127.0.0.1:8081", false, 16);
        for _ in 0..5 {
            let client = TcpStream::connect("127.0.0.1:8081").unwrap();
            let (accepted, _) = closing.accept().unwrap();
            drop(client);
            drop(accepted);
        }
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let udp_connected = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        udp_connected.connect("127.0.0.1:53").unwrap();
        (
            server,
            inside,
            server6,
            bound,
            streams,
            bound_first,
            udp,
            udp_connected,
        )
    })
}

/// The inode of a namespace's file, as its series' `netns` label shows it.
fn namespace_inode(netns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{}", netns.name()))
        .unwrap()
        .ino()
}

/// `--collector.netns=all` reads the namespaces on the host's shared TCP
/// tables in one walk of them (BPF), and each on its own with
/// `--collector.netns.one-walk=false`: on the same sockets, every series of
/// every namespace is the same both ways. One namespace has a table of its
/// own where the kernel allows it (Linux 6.1+), which the walk leaves to
/// the read of its own. Where the two reads differ, a third in one walk
/// must agree with the one apart: sockets can end between two reads. Only
/// where each protocol's sockets were read from differs: UDP comes from
/// the walk too where the kernel allows (Linux 6.2+).
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn one_walk_reads_what_each_namespace_reads() {
    support::require_bpf();
    support::require_root();
    let mut namespaces = vec![
        Netns::new((40000, 40999), ""),
        Netns::new((41000, 41499), "41010-41020"),
        Netns::new((50000, 50099), ""),
    ];
    let child_ehash = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    if let Ok(previous) = std::fs::read_to_string(child_ehash) {
        std::fs::write(child_ehash, "1024").unwrap();
        let own_table = std::panic::catch_unwind(|| Netns::new((45000, 45999), ""));
        std::fs::write(child_ehash, previous.trim()).unwrap();
        namespaces.push(own_table.unwrap());
    }
    let _held: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(index, netns)| {
            let (start, _) = [(40000, 0), (41000, 0), (50000, 0), (45000, 0)][index];
            busy_namespace(netns, start + 30, 10 + index * 7)
        })
        .collect();
    // TIME_WAIT sockets become reusable a second after they close: both
    // reads must see them past it.
    std::thread::sleep(Duration::from_millis(1500));
    // This process holds the namespaces' sockets. A test beside this one
    // that starts a command forks this process, and the child holds copies
    // of all its descriptors until it execs: a read then names that child
    // too, under the forking thread's name. Only this process's figures
    // are compared.
    let own_process = format!("process=\"{}\"", support::own_comm());
    let sample = |one_walk: bool| {
        let (output, stderr, metrics) = run(Command::new(support::exporter()).args([
            "--once",
            "--collector.netns",
            "all",
            "--collector.source",
            "bpf",
            &format!("--collector.netns.one-walk={one_walk}"),
        ]));
        assert!(
            output.status.success(),
            "--once failed ({}): {stderr}",
            output.status
        );
        let ours: std::collections::BTreeMap<String, f64> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with('#'))
            // Where each protocol was read from differs, checked below.
            .filter(|line| !line.starts_with("portstat_source_info{"))
            .filter(|line| !line.contains("process=\"") || line.contains(&own_process))
            .filter(|line| {
                namespaces
                    .iter()
                    .any(|netns| line.contains(&format!("netns=\"{}\"", namespace_inode(netns))))
            })
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        (metrics, ours)
    };
    let (walked, mut one_walk) = sample(true);
    let (apart, each) = sample(false);
    // A TIME_WAIT socket may end between the two reads (a guest's clock
    // can leap): then the read after must agree with the one apart.
    if one_walk != each {
        one_walk = sample(true).1;
    }
    let shared_count = namespaces.len().min(3) as f64;
    assert!(
        walked.value("portstat_netns_read_in_one_walk") >= shared_count,
        "the namespaces on the shared tables were not read in one walk"
    );
    assert_eq!(apart.value("portstat_netns_read_in_one_walk"), 0.0);
    // Where the kernel names each namespace's UDP table (Linux 6.2+, which
    // has `udp_hash_entries`), the walk reads the UDP sockets of the
    // namespaces on the host's UDP table too, and says so; the figures
    // are the same, compared below.
    let walks_udp = std::path::Path::new("/proc/sys/net/ipv4/udp_hash_entries").exists();
    let udp_source = |netns: &Netns| {
        format!(
            r#"portstat_source_info{{netns="{}",netns_name="{}",protocol="udp",source="{}"}}"#,
            namespace_inode(netns),
            netns.name(),
            if walks_udp { "bpf" } else { "netlink" }
        )
    };
    for netns in &namespaces[..3] {
        assert_eq!(
            walked.get(&udp_source(netns)),
            Some(1.0),
            "{}",
            udp_source(netns)
        );
        assert_eq!(
            apart.get(&udp_source(netns).replace("\"bpf\"", "\"netlink\"")),
            Some(1.0)
        );
    }
    for netns in &namespaces {
        let used = format!(
            r#"portstat_ephemeral_ports_used{{netns="{}",netns_name="{}",protocol="tcp"}}"#,
            namespace_inode(netns),
            netns.name()
        );
        assert!(
            walked.value(&used) >= 13.0,
            "{used}: the namespace's connections were not all read"
        );
    }
    let differing: Vec<String> = one_walk
        .keys()
        .chain(each.keys())
        .filter(|series| one_walk.get(*series) != each.get(*series))
        .map(|series| {
            format!(
                "{series}: {:?} in one walk, {:?} apart",
                one_walk.get(series),
                each.get(series)
            )
        })
        .collect();
    assert!(
        differing.is_empty(),
        "{} series differ:\n{}",
        differing.len(),
        differing.join("\n")
    );
    assert!(one_walk.len() > 100, "{} series", one_walk.len());
    for netns in &namespaces {
        let held = format!(
            r#"portstat_ephemeral_process_ports_used{{netns="{}",netns_name="{}",{own_process}}}"#,
            namespace_inode(netns),
            netns.name()
        );
        assert!(
            one_walk.get(&held).is_some_and(|&ports| ports >= 13.0),
            "{held}: {:?}",
            one_walk.get(&held)
        );
    }
}

/// The most instructions the verifier may process for any program: a tenth
/// of its budget of a million, so that a program passes on the verifiers of
/// kernels to come, which each spend it differently.
const VERIFIER_BUDGET: u64 = 100_000;

/// Every program verifies within a tenth of the verifier's budget on the
/// running kernel. The figures go to `PORTSTAT_VERIFIER_RESULTS` where the
/// kernel matrix asks for them, one line a program: kernel, object,
/// program, processed instructions, total and peak states, verification
/// and load time in microseconds.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn every_program_verifies_within_a_tenth_of_the_budget() {
    support::require_root();
    support::require_bpf();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let release = release.trim();
    let mut lines = String::new();
    let mut over = Vec::new();
    for (object, costs) in portstat_exporter::source::bpf::verify_every_program() {
        let costs = costs.unwrap_or_else(|error| {
            panic!("the {object} object does not load on Linux {release}: {error}")
        });
        for cost in costs {
            println!(
                "{object}/{}: {} instructions processed, {} states ({} at most), \
                 verified in {} µs, loaded in {:.1} ms",
                cost.program,
                cost.processed_instructions,
                cost.total_states,
                cost.peak_states,
                cost.verification_microseconds,
                cost.load_time.as_secs_f64() * 1000.0
            );
            assert!(
                cost.processed_instructions > 0,
                "{object}/{}: the verifier gave no statistics",
                cost.program
            );
            if cost.processed_instructions > VERIFIER_BUDGET {
                over.push(format!(
                    "{object}/{}: {}",
                    cost.program, cost.processed_instructions
                ));
            }
            lines.push_str(&format!(
                "{release}\t{object}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                cost.program,
                cost.processed_instructions,
                cost.total_states,
                cost.peak_states,
                cost.verification_microseconds,
                cost.load_time.as_micros()
            ));
        }
    }
    if let Some(path) = std::env::var_os("PORTSTAT_VERIFIER_RESULTS") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .expect("cannot write the verifier's figures");
    }
    assert!(
        over.is_empty(),
        "over {VERIFIER_BUDGET} instructions processed on Linux {release}: {over:?}"
    );
}

/// Inside a time namespace whose monotonic clock runs an hour ahead of the
/// kernel's, TIME_WAIT sockets a moment old are a moment old: the BPF
/// source reads their age against the kernel's clock, not the exporter's.
/// A reuse delay of 30 s (`tcp_tw_reuse_delay`, Linux 6.13) keeps them
/// young for the whole test, whatever the load.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn young_time_wait_is_not_reusable_inside_a_time_namespace() {
    support::require_bpf();
    let netns = Netns::new((40000, 40099), "");
    let delay = "/proc/sys/net/ipv4/tcp_tw_reuse_delay";
    if !netns.run(|| std::path::Path::new(delay).exists()) {
        eprintln!("skipped: this kernel has no tcp_tw_reuse_delay (Linux 6.13)");
        return;
    }
    netns.write_sysctl("tcp_tw_reuse", "1");
    netns.write_sysctl("tcp_tw_reuse_delay", "30000");
    let listener = netns.run(|| listening_socket("127.0.0.1:8080", false, 64));
    netns.run(|| {
        for _ in 0..10 {
            let client = TcpStream::connect("127.0.0.1:8080").unwrap();
            let (accepted, _) = listener.accept().unwrap();
            drop(client);
            std::thread::sleep(Duration::from_millis(5));
            drop(accepted);
        }
    });
    // The last close reaches the client in the kernel's softirq, which a
    // loaded machine (a guest under emulation) may run later: the sample
    // is taken once the kernel shows all ten in TIME_WAIT.
    let deadline = std::time::Instant::now() + support::READY_DEADLINE;
    while netns.run(|| support::tcp_sockets_in_state(TIME_WAIT)) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ten connections never all reached TIME_WAIT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut command = netns.command("unshare");
    command.args(["--time", "--monotonic", "3600", support::exporter()]);
    command.args(["--once", "--collector.source", "bpf"]);
    let (output, stderr, metrics) = run(&mut command);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        metrics.get(r#"portstat_ephemeral_sockets{protocol="tcp",state="time_wait"}"#),
        Some(10.0),
        "{stderr}"
    );
    assert_eq!(
        metrics.get(r#"portstat_ephemeral_time_wait_reusable{protocol="tcp"}"#),
        Some(0.0),
        "TIME_WAIT a moment old read as reusable inside the time namespace"
    );
}

/// `union bpf_attr` as the element commands read it.
#[repr(C, align(8))]
struct ElementAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf(command, attr)`, with `attr` the command's attribute prefix and
/// every pointer in it alive through the call.
fn bpf_call<T>(command: libc::c_long, attr: &T) -> libc::c_long {
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for `command`
    // of its own size, and what it points to outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    }
}

/// The attribute of an element command on `map` for `key` and `value`.
fn element<K, V>(map: &std::os::fd::OwnedFd, key: &K, value: *const V) -> ElementAttr {
    use std::os::fd::AsRawFd;
    ElementAttr {
        map_fd: map.as_raw_fd() as u32,
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value as u64,
        flags: 0,
    }
}

/// A hash map of `type_` with `count` entries (key `i`, value `i * 3`),
/// made with the raw system calls, as a descriptor.
fn filled_hash_map(type_: u32, count: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    #[repr(C, align(8))]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let create = Create {
        map_type: type_,
        key_size: 4,
        value_size: 8,
        // Room to spare: an LRU map evicts before it is full.
        max_entries: count * 2,
        map_flags: 0,
    };
    // BPF_MAP_CREATE.
    let fd = bpf_call(0, &create);
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    let map = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    for key in 0..count {
        let value = u64::from(key) * 3;
        // BPF_MAP_UPDATE_ELEM.
        let done = bpf_call(2, &element(&map, &key, &raw const value));
        assert_eq!(done, 0, "update: {}", std::io::Error::last_os_error());
    }
    map
}

/// Whether the map behind `map` (keys u32, values u64) holds `key`.
fn has_key(map: &std::os::fd::OwnedFd, key: u32) -> bool {
    let mut value = 0u64;
    // BPF_MAP_LOOKUP_ELEM.
    bpf_call(1, &element(map, &key, &raw mut value)) == 0
}

/// A batched read of a hash map and of an LRU one, of several batches,
/// hands over every entry once, with its value.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_batched_read_hands_over_every_entry_once() {
    use aya::maps::MapData;
    use portstat_exporter::source::bpf::batch::BatchedHash;
    support::require_bpf();
    // BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH.
    for type_ in [1, 9] {
        let count = 5_000u32;
        let map = filled_hash_map(type_, count);
        let mut seen = vec![0u32; count as usize];
        // Types of other sizes than the map's are refused: the batches are
        // written into room made for them.
        let data = MapData::from_fd(map.try_clone().unwrap()).unwrap();
        assert!(BatchedHash::<u64, u64>::new(data, type_ == 9).is_err());
        let data = MapData::from_fd(map.try_clone().unwrap()).unwrap();
        let batched = BatchedHash::<u32, u64>::new(data, type_ == 9).unwrap();
        batched
            .for_each(|key, value| {
                assert_eq!(*value, u64::from(*key) * 3, "key {key}");
                seen[*key as usize] += 1;
            })
            .unwrap_or_else(|error| panic!("map type {type_}: {error:?}"));
        // Each key once: any the read did not see, the map no longer has.
        let twice: Vec<_> = (0..count).filter(|&key| seen[key as usize] > 1).collect();
        assert!(
            twice.is_empty(),
            "map type {type_}: keys seen twice: {twice:?}"
        );
        let missed: Vec<_> = (0..count)
            .filter(|&key| seen[key as usize] == 0 && has_key(&map, key))
            .collect();
        assert!(
            missed.is_empty(),
            "map type {type_}: keys missed: {missed:?}"
        );
        let read = seen.iter().filter(|&&times| times == 1).count();
        assert!(read > count as usize / 2, "map type {type_}: {read} read");
    }
}
