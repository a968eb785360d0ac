//! What one sample costs on a namespace holding many sockets.
//!
//! Run as root: `cargo bench --bench sample_cost -- --sockets 10000`
//!
//! It builds a network namespace, fills it with established and TIME_WAIT TCP
//! connections from several helper processes (a process may hold at most
//! 20,000 descriptors here), then reports:
//! - `--once` runs of the exporter: wall time of the sample as the exporter
//!   measures it, and the whole process's CPU time and peak RSS (getrusage);
//! - the daemon over several samples: CPU per sample and peak RSS (VmHWM);
//! - `ss -tuan` and `ss -tuanp` on the same namespace, for comparison.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{EXPORTER, Netns};

/// Connections one helper process holds open: two descriptors each.
const CONNECTIONS_PER_HELPER: usize = 4000;
/// One connection in this many is closed by its client, to sit in TIME_WAIT.
const TIME_WAIT_EVERY: usize = 10;

fn main() {
    if let Ok(spec) = std::env::var("PORTSTAT_BENCH_HELPER") {
        return helper(&spec);
    }
    let mut sockets = 10_000usize;
    let mut runs = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sockets" => {
                sockets = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--sockets N")
            }
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => {} // cargo passes --bench
        }
    }

    let netns = Netns::new((32768, 60999), "");
    // A held connection is two sockets; a TIME_WAIT one leaves one behind.
    let connections = (sockets * TIME_WAIT_EVERY).div_ceil(2 * TIME_WAIT_EVERY - 1);
    let helpers_needed = connections.div_ceil(CONNECTIONS_PER_HELPER);
    let mut helpers: Vec<Child> = Vec::new();
    for index in 0..helpers_needed {
        let count = CONNECTIONS_PER_HELPER.min(connections - index * CONNECTIONS_PER_HELPER);
        let mut child = netns
            .command(&std::env::current_exe().unwrap().to_string_lossy())
            .env("PORTSTAT_BENCH_HELPER", format!("{count},{}", 1000 + index))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start a helper");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "a helper failed");
        helpers.push(child);
    }

    let ss = |args: &[&str]| {
        let mut command = netns.command("ss");
        command.args(args).stdout(Stdio::piped());
        measure(command)
    };
    let (_, counted) = ss(&["-tuanH"]);
    println!(
        "namespace: {} sockets (ss -tuanH lines), {} helper processes",
        counted.lines().count(),
        helpers.len()
    );

    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut peak_rss_kib = 0;
    for _ in 0..runs {
        let mut command = netns.command(EXPORTER);
        command.arg("--once").stdout(Stdio::piped());
        let (usage, output) = measure(command);
        let wall: f64 = output
            .lines()
            .find_map(|line| line.strip_prefix("portstat_sample_duration_seconds "))
            .and_then(|value| value.parse().ok())
            .expect("no sample duration in the output");
        walls.push(wall);
        cpus.push(usage.cpu_seconds());
        peak_rss_kib = peak_rss_kib.max(usage.max_rss_kib);
    }
    println!(
        "--once x{runs}: sample wall median {:.1} ms (min {:.1}); process CPU median {:.1} ms; peak RSS {:.1} MiB",
        median(&mut walls) * 1e3,
        walls.iter().cloned().fold(f64::INFINITY, f64::min) * 1e3,
        median(&mut cpus) * 1e3,
        peak_rss_kib as f64 / 1024.0
    );

    let daemon_seconds = 10;
    let mut daemon = netns.spawn_exporter(&["--collector.interval", "500ms"]);
    std::thread::sleep(Duration::from_secs(2));
    let before = process_cpu_seconds(daemon.pid());
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(daemon_seconds));
    let cpu = process_cpu_seconds(daemon.pid()) - before;
    let samples = started.elapsed().as_secs_f64() / 0.5;
    let metrics = daemon.metrics();
    println!(
        "daemon, 500ms interval, {daemon_seconds} s: CPU {:.1} ms per sample; last sample wall {:.1} ms; peak RSS (VmHWM) {:.1} MiB",
        cpu / samples * 1e3,
        metrics.value("portstat_sample_duration_seconds") * 1e3,
        vm_hwm_kib(daemon.pid()) as f64 / 1024.0
    );
    daemon.terminate(Duration::from_secs(5));

    for args in [&["-tuanH"][..], &["-tuanpH"][..]] {
        let mut cpus = Vec::new();
        let mut walls = Vec::new();
        for _ in 0..runs.min(10) {
            let started = Instant::now();
            let (usage, _) = ss(args);
            walls.push(started.elapsed().as_secs_f64());
            cpus.push(usage.cpu_seconds());
        }
        println!(
            "ss {}: process CPU median {:.1} ms, wall median {:.1} ms",
            args[0],
            median(&mut cpus) * 1e3,
            median(&mut walls) * 1e3
        );
    }

    for mut helper in helpers {
        drop(helper.stdin.take());
        let _ = helper.wait();
    }
}

/// A helper process: opens `count` connections to its own listener on
/// `port`, reports ready, and holds them until its standard input closes.
fn helper(spec: &str) {
    let (count, port) = spec.split_once(',').unwrap();
    let count: usize = count.parse().unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    let mut held = Vec::with_capacity(count * 2);
    for index in 0..count {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        if index % TIME_WAIT_EVERY == 0 {
            drop(client);
            drop(accepted);
        } else {
            held.push(client);
            held.push(accepted);
        }
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

struct Usage {
    user: libc::timeval,
    system: libc::timeval,
    max_rss_kib: i64,
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
            max_rss_kib: usage.ru_maxrss,
        },
        output,
    )
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the command name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
