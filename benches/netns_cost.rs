//! What sampling every network namespace costs beside one busy namespace.
//!
//! Run as root: `cargo bench --bench netns_cost` (500,000 sockets in the busy
//! namespace, 50 others), or
//! `cargo bench --bench netns_cost -- --sockets 100000 --namespaces 20`.
//! Needs `ss` (iproute2).
//!
//! The busy namespace is filled by helper processes holding loopback
//! connections, as an ingress pod's would be. Beside it, 50 namespaces in
//! three ways, one after the other:
//! - idle: nothing in them;
//! - small: a listener and 20 connections each, on the host's shared TCP
//!   table (the default);
//! - own tables: the same, created while `net.ipv4.tcp_child_ehash_entries`
//!   is 1024, so each has a TCP table of its own.
//!
//! For each: the exporter as a daemon in the busy namespace (owners off, 1 s
//! interval), the sampler thread's CPU per sample with
//! `--collector.netns=all` and with the busy namespace alone (`self`), and
//! `ss -tan` run in every namespace, CPU summed. Then the kernel memory that
//! 50 tables of 1,024 entries take (`SUnreclaim` in `/proc/meminfo`).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sampler_cpu_seconds;
use support::{Netns, listening_socket};

/// Each small namespace's connections to its own listener.
const SMALL_CONNECTIONS: usize = 20;

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    let mut sockets = 500_000usize;
    let mut namespaces = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match arg.as_str() {
            "--sockets" => sockets = value(),
            "--namespaces" => namespaces = value(),
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
        "busy namespace: {held} TCP sockets (ss -tanH lines), {} helper processes; {namespaces} other namespaces",
        helpers.len()
    );
    println!("  others       all-namespace CPU  busy alone  ratio  ss -tan, every namespace");

    for (name, small, own_tables) in [
        ("idle", false, false),
        ("small", true, false),
        ("own tables", true, true),
    ] {
        let previous = own_tables.then(|| child_ehash_entries("1024"));
        let others: Vec<Netns> = (0..namespaces)
            .map(|_| Netns::new((32768, 60999), ""))
            .collect();
        if let Some(previous) = previous {
            child_ehash_entries(&previous);
        }
        let _held: Vec<_> = others
            .iter()
            .filter(|_| small)
            .map(|netns| {
                netns.run(|| {
                    let server = listening_socket("127.0.0.1:80", false, 64);
                    let streams: Vec<TcpStream> = (0..SMALL_CONNECTIONS)
                        .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
                        .collect();
                    (server, streams)
                })
            })
            .collect();
        let all = sampler_cpu_per_sample(&busy, "all");
        let alone = sampler_cpu_per_sample(&busy, "self");
        let ss: f64 = std::iter::once(&busy)
            .chain(&others)
            .map(|netns| ss_cpu_seconds(netns.command("ss").arg("-tanH")))
            .sum::<f64>()
            + ss_cpu_seconds(Command::new("ss").arg("-tanH"));
        println!(
            "  {name:<12} {:>12.1} ms {:>10.1} ms  {:>5.2}  {:>8.1} ms",
            all * 1e3,
            alone * 1e3,
            all / alone,
            ss * 1e3
        );
    }

    // What a table of its own costs each namespace: kernel memory for 50
    // namespaces created with and without one.
    let unreclaimable = |own: bool| {
        let previous = own.then(|| child_ehash_entries("1024"));
        let before = meminfo_kib("SUnreclaim");
        let created: Vec<Netns> = (0..namespaces)
            .map(|_| Netns::new((32768, 60999), ""))
            .collect();
        let after = meminfo_kib("SUnreclaim");
        if let Some(previous) = previous {
            child_ehash_entries(&previous);
        }
        drop(created);
        std::thread::sleep(Duration::from_secs(2));
        after.saturating_sub(before)
    };
    let shared = unreclaimable(false);
    let own = unreclaimable(true);
    println!(
        "kernel memory (SUnreclaim) for {namespaces} new namespaces: {shared} KiB sharing the host's table, \
         {own} KiB with tables of 1,024 entries: about {:.1} KiB a table",
        own.saturating_sub(shared) as f64 / namespaces as f64
    );
    common::end_helpers(helpers);
}

/// The exporter as a daemon in `busy`, sampling `scope` every second
/// without owners: its sampler thread's CPU per sample over 10 samples,
/// after the first two.
fn sampler_cpu_per_sample(busy: &Netns, scope: &str) -> f64 {
    let mut daemon = busy.spawn_exporter(&[
        "--collector.netns",
        scope,
        "--collector.interval",
        "1s",
        "--collector.processes=false",
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    let before = sampler_cpu_seconds(daemon.pid());
    std::thread::sleep(Duration::from_secs(10));
    let per_sample = (sampler_cpu_seconds(daemon.pid()) - before) / 10.0;
    daemon.terminate(Duration::from_secs(5));
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
