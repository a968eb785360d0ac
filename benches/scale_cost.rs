//! What a sample costs on the busiest hosts: 56,000 to a million TCP
//! sockets, held by multi-threaded processes as a proxy's workers hold them.
//!
//! Run as root: `cargo bench --bench scale_cost` (56,000, 250,000, 500,000
//! and 1,000,000 sockets), or `cargo bench --bench scale_cost -- --sockets
//! 500000 --runs 3`. Needs `ss` (iproute2) and `wrk`.
//!
//! For each size it builds a network namespace with the range 32768-60999
//! (the exporter's port, 10042, lies outside it and is reserved besides, so
//! no client can take it), fills it from helper processes of four threads
//! each holding 6,400 connections (one in ten closed into TIME_WAIT), then
//! reports, in one run:
//! - `ss -tan` and `ss -tanp`: process CPU (getrusage), the median of
//!   `--runs` runs for the first, one run for the second;
//! - the exporter's default source (BPF where it loads) as a daemon sampling
//!   every second, without and with owners: CPU of its sampler thread per
//!   sample, the sample's wall time, and its peak RSS (VmHWM);
//! - `--once` without and with owners: wall time and CPU, the medians of
//!   `--runs` (one-shot commands read owners beside the sockets, on a
//!   second thread, so their wall time is not their CPU);
//! - scrapes under `wrk` at 1 and 32 concurrent scrapers while the daemon
//!   samples every second with owners: latency p50 and p99;
//! - the ratios the targets are stated in.

#[path = "../tests/support/mod.rs"]
mod support;

use support::Place;

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{sampler_cpu_seconds, vm_hwm_kib};
use support::Netns;

/// How long `ss -tanp` may run before it is given up on.
const SS_P_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    let (sizes, runs) =
        common::sizes_and_runs(vec![56_000usize, 250_000, 500_000, 1_000_000], 3usize);
    for size in sizes {
        measure_size(size, runs);
    }
}

fn measure_size(sockets: usize, runs: usize) {
    let range = (32768, 60999);
    let netns = Netns::new(range, "10042");
    let started = Instant::now();
    let helpers = common::fill_like_a_proxy(&netns, sockets);
    let counted = common::tcp_sockets(&netns);
    println!(
        "\n== {counted} TCP sockets (sockstat inuse + tw), {} helper processes of {} threads, \
         filled in {:.0} s",
        helpers.len(),
        common::PROXY_HELPER_THREADS + 1,
        started.elapsed().as_secs_f64()
    );

    let mut ss_tan: Vec<f64> = (0..runs)
        .map(|_| run(&netns, "ss", &["-tanH"], None).cpu)
        .collect();
    let ss_tan = common::median(&mut ss_tan);
    let ss_tanp = run(&netns, "ss", &["-tanpH"], Some(SS_P_LIMIT));
    println!(
        "ss -tan: CPU {:.1} ms; ss -tanp: {}",
        ss_tan * 1e3,
        if ss_tanp.finished {
            format!("CPU {:.1} ms", ss_tanp.cpu * 1e3)
        } else {
            format!("more than {} s, stopped", SS_P_LIMIT.as_secs())
        }
    );

    let exporter = support::exporter();
    // Wall time and CPU: one-shot commands read owners beside the sockets
    // on a second thread, so the two differ.
    let once = |processes: &str| {
        let flag = format!("--collector.processes={processes}");
        let runs: Vec<Run> = (0..runs)
            .map(|_| run(&netns, exporter, &["--once", &flag], None))
            .collect();
        let mut walls: Vec<f64> = runs.iter().map(|run| run.wall).collect();
        let mut cpus: Vec<f64> = runs.iter().map(|run| run.cpu).collect();
        (common::median(&mut walls), common::median(&mut cpus))
    };
    let (once_without, once_cpu_without) = once("false");
    let (once_with, once_cpu_with) = once("true");

    let without = daemon(&netns, "false", false);
    let with = daemon(&netns, "true", true);
    println!(
        "exporter, default source ({}), sampling every second:",
        with.source
    );
    println!("  owners  CPU/sample  sample wall  --once wall  --once CPU  peak RSS");
    for (label, figures, once, once_cpu) in [
        ("off", &without, once_without, once_cpu_without),
        ("on", &with, once_with, once_cpu_with),
    ] {
        println!(
            "  {label:<6} {:>8.1} ms  {:>8.1} ms  {:>8.1} ms  {:>7.1} ms  {:>5.1} MiB",
            figures.cpu_per_sample * 1e3,
            figures.sample_wall * 1e3,
            once * 1e3,
            once_cpu * 1e3,
            figures.peak_rss_mib
        );
    }
    for (connections, p50, p99) in &with.scrapes {
        println!("scrapes, {connections} concurrent, sampling with owners: p50 {p50}, p99 {p99}");
    }
    println!(
        "ratios: sample CPU without owners / ss -tan {:.2}; with owners / ss -tan {:.2}; \
         --once with owners / without {:.2} (its CPU {:.2})",
        without.cpu_per_sample / ss_tan,
        with.cpu_per_sample / ss_tan,
        once_with / once_without,
        once_cpu_with / once_cpu_without
    );
    common::end_helpers(helpers);
}

/// What a daemon run measured.
struct Daemon {
    source: String,
    cpu_per_sample: f64,
    sample_wall: f64,
    peak_rss_mib: f64,
    /// (concurrent scrapers, p50, p99), when scraped.
    scrapes: Vec<(usize, String, String)>,
}

/// Runs the daemon sampling every second, with `processes`; measures its
/// sampler's CPU over the samples of 10 s, then, with `scrape`, scrapes it
/// with wrk at 1 and 32 concurrent scrapers.
fn daemon(netns: &Netns, processes: &str, scrape: bool) -> Daemon {
    let flag = format!("--collector.processes={processes}");
    let mut daemon = netns.start_exporter(&["--collector.interval", "1s", &flag]);
    // The first sample, then one more, before measuring.
    let first = daemon
        .metrics_until(|metrics| metrics.get("portstat_sample_timestamp_seconds").is_some())
        .unwrap();
    let mut last_stamp = first.value("portstat_sample_timestamp_seconds");
    let source = first
        .family("portstat_source_info")
        .into_iter()
        .find(|(series, _)| series.contains(r#"protocol="tcp""#))
        .map(|(series, _)| series)
        .unwrap_or_default();
    let cpu_before = sampler_cpu_seconds(daemon.pid());
    let mut samples = 0;
    let window = Instant::now();
    let mut sample_wall = 0.0;
    while window.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let metrics = daemon.metrics();
        let stamp = metrics.value("portstat_sample_timestamp_seconds");
        if stamp != last_stamp {
            samples += 1;
            last_stamp = stamp;
            sample_wall = metrics.value("portstat_sample_duration_seconds");
        }
    }
    // CPU up to the last sample seen; one in progress adds a little.
    let cpu = sampler_cpu_seconds(daemon.pid()) - cpu_before;
    let mut scrapes = Vec::new();
    if scrape {
        // One wrk thread: on two cores, a second one takes the CPU the
        // server needs.
        for connections in [1usize, 32] {
            let output = netns
                .command("wrk")
                .args([
                    "-t1",
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
            scrapes.push((connections, percentile("50%"), percentile("99%")));
        }
    }
    let figures = Daemon {
        source: source
            .split("source=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?")
            .to_string(),
        cpu_per_sample: cpu / samples.max(1) as f64,
        sample_wall,
        peak_rss_mib: vm_hwm_kib(daemon.pid()) as f64 / 1024.0,
        scrapes,
    };
    daemon.terminate(Duration::from_secs(5));
    figures
}

/// What running a command measured.
struct Run {
    cpu: f64,
    wall: f64,
    finished: bool,
}

/// Runs `program` with `args` inside the namespace to its end (or until
/// `limit`, when it is killed), discarding its output.
// The child is reaped by wait4, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
fn run(netns: &Netns, program: &str, args: &[&str], limit: Option<Duration>) -> Run {
    let started = Instant::now();
    let mut child = netns
        .command(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start");
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut sink = [0u8; 1 << 16];
        while matches!(stdout.read(&mut sink), Ok(read) if read > 0) {}
    });
    let mut finished = true;
    if let Some(limit) = limit {
        let watcher = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                // SAFETY: signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    return false;
                }
            }
            // SAFETY: the child is ours and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        });
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        finished = !watcher.join().unwrap();
        let _ = reader.join();
        return Run {
            cpu: cpu_seconds(&usage),
            wall: started.elapsed().as_secs_f64(),
            finished,
        };
    }
    let mut status = 0;
    // SAFETY: as above.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = reader.join();
    Run {
        cpu: cpu_seconds(&usage),
        wall: started.elapsed().as_secs_f64(),
        finished,
    }
}

fn cpu_seconds(usage: &libc::rusage) -> f64 {
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
