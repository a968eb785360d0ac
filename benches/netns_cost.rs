//! What sampling every network namespace costs beside one busy namespace.
//!
//! Run as root: `cargo bench --bench netns_cost` (500,000 sockets in the busy
//! namespace; 50, then 200 others), or
//! `cargo bench --bench netns_cost -- --sockets 100000 --namespaces 20,80`.
//! Needs `ss` (iproute2).
//!
//! The busy namespace is filled by helper processes holding loopback
//! connections, as an ingress pod's would be. Beside it, small namespaces,
//! each with a listener, 20 TCP connections to it and 2 UDP sockets (one
//! bound, one connected), on the host's shared TCP tables (the default):
//! 50, then 200. For each count, the exporter as a daemon in the busy
//! namespace (1 s interval), with owners off and on
//! (`--collector.processes`): the sampler thread's CPU per sample with
//! `--collector.netns=all` and with the busy namespace alone (`self`); with
//! owners off also `all` read namespace by namespace
//! (`--collector.netns.one-walk=false`), as before the one walk; and
//! `ss -tuan` run in every namespace, CPU summed.
//!
//! Then, with the first count: the same number of idle namespaces, and of
//! small ones created with tables of their own (while
//! `net.ipv4.tcp_child_ehash_entries` is 1024), owners off; and the kernel
//! memory such tables take (`SUnreclaim` in `/proc/meminfo`).
//!
//! With `--profile`, each all-namespace daemon in one walk is also recorded
//! with `perf record -g` on the sampler thread, after its measurement, and
//! the symbols above 2 % of it printed (needs `perf`, from `linux-perf`).

#[path = "../tests/support/mod.rs"]
mod support;

use support::Place;

mod common;

use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sampler_cpu_seconds;
use support::{Netns, listening_socket};

/// Each small namespace's connections to its own listener.
const SMALL_CONNECTIONS: usize = 20;

/// What a small namespace holds open.
type Held = (socket2::Socket, Vec<TcpStream>, [UdpSocket; 2]);

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    let mut sockets = 500_000usize;
    let mut profile = false;
    let mut counts = vec![50usize, 200];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sockets" => sockets = args.next().and_then(|v| v.parse().ok()).expect("a number"),
            "--namespaces" => {
                counts = args
                    .next()
                    .expect("counts")
                    .split(',')
                    .map(|count| count.parse().expect("a number"))
                    .collect()
            }
            "--profile" => profile = true,
            _ => {} // cargo passes --bench
        }
    }

    let busy = Netns::new((32768, 60999), "");
    let helpers = common::populate(
        || busy.command(&std::env::current_exe().unwrap().to_string_lossy()),
        sockets / 2,
        0,
        1000,
    );
    let held = ss_lines(&busy);
    println!(
        "busy namespace: {held} TCP sockets (ss -tanH lines), {} helper processes",
        helpers.len()
    );
    println!(
        "  others                          owners  all-namespace CPU  busy alone  ratio  \
         one at a time  ss -tuan, every namespace"
    );

    let first = counts[0];
    for &count in &counts {
        let others = namespaces(count, false);
        let _held: Vec<Held> = others.iter().map(small).collect();
        row(
            &busy,
            &others,
            &format!("{count} small, shared tables"),
            true,
            profile,
        );
    }
    {
        let others = namespaces(first, false);
        row(&busy, &others, &format!("{first} idle"), false, false);
    }
    {
        let others = namespaces(first, true);
        let _held: Vec<Held> = others.iter().map(small).collect();
        row(
            &busy,
            &others,
            &format!("{first} small, own tables"),
            false,
            false,
        );
    }

    // What a table of its own costs each namespace: kernel memory for the
    // namespaces created with and without one.
    let unreclaimable = |own: bool| {
        let before = meminfo_kib("SUnreclaim");
        let created = namespaces(first, own);
        let after = meminfo_kib("SUnreclaim");
        drop(created);
        std::thread::sleep(Duration::from_secs(2));
        after.saturating_sub(before)
    };
    let shared = unreclaimable(false);
    let own = unreclaimable(true);
    println!(
        "kernel memory (SUnreclaim) for {first} new namespaces: {shared} KiB sharing the host's table, \
         {own} KiB with tables of 1,024 entries: about {:.1} KiB a table",
        own.saturating_sub(shared) as f64 / first as f64
    );
    common::end_helpers(helpers);
}

/// `count` new namespaces, each with a TCP table of its own of 1,024
/// entries where `own_tables`.
fn namespaces(count: usize, own_tables: bool) -> Vec<Netns> {
    let previous = own_tables.then(|| child_ehash_entries("1024"));
    let created = (0..count).map(|_| Netns::new((32768, 60999), "")).collect();
    if let Some(previous) = previous {
        child_ehash_entries(&previous);
    }
    created
}

/// A listener, `SMALL_CONNECTIONS` connections to it and two UDP sockets,
/// in `netns`.
fn small(netns: &Netns) -> Held {
    netns.run(|| {
        let server = listening_socket("127.0.0.1:80", false, 64);
        let streams: Vec<TcpStream> = (0..SMALL_CONNECTIONS)
            .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
            .collect();
        let bound = UdpSocket::bind("0.0.0.0:0").unwrap();
        let connected = UdpSocket::bind("0.0.0.0:0").unwrap();
        connected.connect("127.0.0.1:53").unwrap();
        (server, streams, [bound, connected])
    })
}

/// Measures and prints the rows of one set of `others`: owners off, then
/// on where `owners_too`; with `profile`, the all-namespace runs' profiles.
fn row(busy: &Netns, others: &[Netns], name: &str, owners_too: bool, profile: bool) {
    let ss: f64 = std::iter::once(busy)
        .chain(others)
        .map(|netns| ss_cpu_seconds(netns.command("ss").arg("-tuanH")))
        .sum::<f64>()
        + ss_cpu_seconds(Command::new("ss").arg("-tuanH"));
    for owners in [false, true]
        .into_iter()
        .take(if owners_too { 2 } else { 1 })
    {
        let all = sampler_cpu_per_sample(busy, "all", owners, true, 1, profile);
        let alone = sampler_cpu_per_sample(busy, "self", owners, true, 1, false);
        // Namespace by namespace a sample takes seconds: a longer interval,
        // so that each sample ends before the next is due.
        let one_at_a_time = if owners {
            "".to_string()
        } else {
            format!(
                "{:>10.1} ms",
                sampler_cpu_per_sample(busy, "all", owners, false, 5, false) * 1e3
            )
        };
        println!(
            "  {name:<31} {:<6} {:>12.1} ms {:>10.1} ms  {:>5.2}  {one_at_a_time:>13}  {:>8.1} ms",
            if owners { "on" } else { "off" },
            all * 1e3,
            alone * 1e3,
            all / alone,
            ss * 1e3
        );
    }
}

/// The exporter as a daemon in `busy`, sampling `scope` every `interval`
/// seconds, with owners or without, in one walk or namespace by namespace:
/// its sampler thread's CPU per sample over the samples of 10 s (at least
/// 3), after the first two.
fn sampler_cpu_per_sample(
    busy: &Netns,
    scope: &str,
    owners: bool,
    one_walk: bool,
    interval: u64,
    profile: bool,
) -> f64 {
    let processes = format!("--collector.processes={owners}");
    let one_walk = format!("--collector.netns.one-walk={one_walk}");
    let every = format!("{interval}s");
    let mut daemon = busy.spawn_exporter(&[
        "--collector.netns",
        scope,
        "--collector.interval",
        &every,
        &processes,
        &one_walk,
    ]);
    // Two samples, then from the middle of an interval.
    std::thread::sleep(Duration::from_millis(interval * 2500));
    let samples = (10 / interval).max(3);
    let before = sampler_cpu_seconds(daemon.pid());
    std::thread::sleep(Duration::from_secs(samples * interval));
    let per_sample = (sampler_cpu_seconds(daemon.pid()) - before) / samples as f64;
    let window = (samples * interval).to_string();
    let data = std::env::temp_dir().join(format!("netns_cost-{}.perf.data", std::process::id()));
    if profile {
        // After the measurement: recording with call graphs costs the
        // thread it records about a third more.
        let tid = common::sampler_tid(daemon.pid()).to_string();
        support::run(
            Command::new("perf")
                .args(["record", "-q", "-g", "-t", &tid, "-o"])
                .arg(&data)
                .args(["--", "sleep", &window]),
        );
    }
    daemon.terminate(Duration::from_secs(5));
    if profile {
        println!(
            "    profile (owners {}):\n{}",
            if owners { "on" } else { "off" },
            common::perf_report(&data, "2")
        );
        let _ = std::fs::remove_file(&data);
    }
    per_sample
}

/// Sets `net.ipv4.tcp_child_ehash_entries` on the host; returns the value
/// it had.
fn child_ehash_entries(value: &str) -> String {
    let path = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    let previous = std::fs::read_to_string(path).unwrap().trim().to_string();
    std::fs::write(path, value).unwrap();
    previous
}

fn ss_lines(netns: &Netns) -> usize {
    let output = netns
        .command("ss")
        .arg("-tanH")
        .output()
        .expect("ss is needed");
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Runs `command` to its end, output discarded; returns its CPU time.
// The child is reaped by wait4, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
fn ss_cpu_seconds(command: &mut Command) -> f64 {
    let child = command.stdout(Stdio::null()).spawn().expect("ss is needed");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
