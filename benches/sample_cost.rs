//! What one sample and one scrape cost on a namespace holding many sockets.
//!
//! Run as root: `cargo bench --bench sample_cost` (10,000 then 50,000
//! sockets), or `cargo bench --bench sample_cost -- --sockets 20000 --runs 5`
//! (`--runs`: how many times each `ss` command runs, for its median;
//! `--rounds`, 3 by default: how many times each exporter configuration
//! runs, in turn with the others, for its median).
//! Needs `ss` (iproute2) and `wrk`.
//!
//! For each size it builds a network namespace, fills it with established and
//! TIME_WAIT TCP connections from helper processes (a process may hold at most
//! 20,000 descriptors here), then reports, in one run:
//! - `ss` making the dumps the netlink source makes, and `ss -tuanp`: process
//!   CPU (getrusage);
//! - the exporter as a daemon for each source, with and without socket
//!   attribution: CPU of its sampler thread per sample (20 samples, after
//!   the first), the last sample's wall time, and peak RSS, each the median
//!   of several rounds taken in turn;
//! - the daemon under `wrk` at 1 and at 32 concurrent scrapers: latency p50
//!   and p99, then its peak RSS (VmHWM).

#[path = "../tests/support/mod.rs"]
mod support;

use support::Place;

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sampler_cpu_seconds, vm_hwm_kib};
use support::Netns;

/// One connection in this many is closed by its client, to sit in TIME_WAIT.
const TIME_WAIT_EVERY: usize = 10;

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    let mut sizes = vec![10_000usize, 50_000];
    let mut runs = 10usize;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sockets" => sizes = common::socket_sizes(args.next()),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            _ => {} // cargo passes --bench
        }
    }
    for size in sizes {
        measure_size(size, runs, rounds);
    }
}

fn measure_size(sockets: usize, runs: usize, rounds: usize) {
    let range = (32768, 60999);
    let netns = Netns::new(range, "");
    let helpers = populate(&netns, sockets);
    let ss = |args: &[&str]| {
        let mut command = netns.command("ss");
        command.args(args).stdout(Stdio::piped());
        measure(command)
    };
    let (_, counted) = ss(&["-tuanH"]);
    println!(
        "\n== {} sockets in the namespace (ss -tuanH lines), {} helper processes",
        counted.lines().count(),
        helpers.len()
    );

    // The dumps the netlink source makes, as ss makes them: TCP listeners,
    // TCP sockets inside the range but listeners, and UDP.
    let filter = format!("( sport >= :{} and sport <= :{} )", range.0, range.1);
    let ss_dumps: [&[&str]; 3] = [
        &["-tlnH"],
        &["-tanH", "exclude", "listening", &filter],
        &["-uanH"],
    ];
    let mut ss_cpu = Vec::new();
    let mut ss_wall = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        ss_cpu.push(ss_dumps.iter().map(|args| ss(args).0.cpu_seconds()).sum());
        ss_wall.push(started.elapsed().as_secs_f64());
    }
    let mut ss_p_cpu: Vec<f64> = (0..runs)
        .map(|_| ss(&["-tuanpH"]).0.cpu_seconds())
        .collect();
    println!(
        "ss, the same dumps ({} processes): CPU {:.1} ms, wall {:.1} ms; ss -tuanp: CPU {:.1} ms",
        ss_dumps.len(),
        common::median(&mut ss_cpu) * 1e3,
        common::median(&mut ss_wall) * 1e3,
        common::median(&mut ss_p_cpu) * 1e3
    );

    // Each source, with and without attribution, as a daemon sampling every
    // 500 ms: CPU of its sampler thread over 20 samples, after the first.
    // The configurations take turns, `rounds` times, and each reports its
    // median round, so that a slow moment of the machine does not land on
    // one source alone.
    let configurations: Vec<(&str, &str)> = ["bpf", "netlink", "procfs"]
        .into_iter()
        .flat_map(|source| ["false", "true"].map(|processes| (source, processes)))
        .collect();
    let mut figures: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); configurations.len()];
    for _ in 0..rounds {
        for (index, (source, processes)) in configurations.iter().enumerate() {
            let processes_flag = format!("--collector.processes={processes}");
            let mut daemon = netns.spawn_exporter(&[
                "--collector.interval",
                "500ms",
                "--collector.source",
                source,
                &processes_flag,
            ]);
            std::thread::sleep(Duration::from_millis(1250));
            let before = sampler_cpu_seconds(daemon.pid());
            std::thread::sleep(Duration::from_secs(10));
            let per_sample = (sampler_cpu_seconds(daemon.pid()) - before) / 20.0;
            let metrics = daemon.metrics();
            figures[index].push((
                per_sample * 1e3,
                metrics.value("portstat_sample_duration_seconds") * 1e3,
                vm_hwm_kib(daemon.pid()) as f64 / 1024.0,
            ));
            daemon.terminate(Duration::from_secs(5));
        }
    }
    println!("exporter daemon, 500 ms interval, 20 samples a round, median of {rounds} rounds:");
    println!("  source   processes  CPU/sample  sample wall  peak RSS");
    for ((source, processes), mut rounds) in configurations.into_iter().zip(figures) {
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (cpu, wall, rss) = rounds[rounds.len() / 2];
        println!("  {source:<8} {processes:<10} {cpu:>7.1} ms  {wall:>8.1} ms  {rss:>5.1} MiB");
    }

    // The daemon with its defaults (netlink, attribution), sampling every
    // second while scrapers hammer it.
    let mut daemon = netns.spawn_exporter(&["--collector.interval", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    // One wrk thread: on two cores, a second one takes the CPU the server
    // needs, and the latency measured becomes the load generator's.
    for (threads, connections) in [(1, 1), (1, 32)] {
        let output = netns
            .command("wrk")
            .args([
                &format!("-t{threads}"),
                &format!("-c{connections}"),
                "-d5s",
                "--latency",
                "http://127.0.0.1:10042/metrics",
            ])
            .output()
            .expect("wrk is needed: apt-get install wrk");
        let text = String::from_utf8_lossy(&output.stdout);
        let percentile = |label: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(label))
                .map(|value| value.trim().to_string())
                .unwrap_or_else(|| "?".to_string())
        };
        let rate = text
            .lines()
            .find_map(|line| line.strip_prefix("Requests/sec:"))
            .map(str::trim)
            .unwrap_or("?");
        println!(
            "scrapes, {connections} concurrent: p50 {}, p99 {}, {rate} requests/s",
            percentile("50%"),
            percentile("99%")
        );
    }
    let metrics = daemon.metrics();
    println!(
        "daemon: last sample {:.1} ms; peak RSS (VmHWM) {:.1} MiB",
        metrics.value("portstat_sample_duration_seconds") * 1e3,
        vm_hwm_kib(daemon.pid()) as f64 / 1024.0
    );
    daemon.terminate(Duration::from_secs(5));

    common::end_helpers(helpers);
}

/// Starts helper processes inside the namespace until it holds `sockets`.
fn populate(netns: &Netns, sockets: usize) -> Vec<Child> {
    // A held connection is two sockets; a TIME_WAIT one leaves one behind.
    let connections = (sockets * TIME_WAIT_EVERY).div_ceil(2 * TIME_WAIT_EVERY - 1);
    common::populate(
        || netns.command(&std::env::current_exe().unwrap().to_string_lossy()),
        connections,
        TIME_WAIT_EVERY,
        1000,
    )
}

struct Usage {
    user: libc::timeval,
    system: libc::timeval,
}

impl Usage {
    fn cpu_seconds(&self) -> f64 {
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(self.user) + seconds(self.system)
    }
}

/// Runs a command to its end and returns its resource usage and output.
// The child is reaped by wait4, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
fn measure(mut command: Command) -> (Usage, String) {
    let mut child = command.spawn().expect("cannot start");
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    (
        Usage {
            user: usage.ru_utime,
            system: usage.ru_stime,
        },
        output,
    )
}
