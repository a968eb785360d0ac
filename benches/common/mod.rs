//! Measurements the benchmarks share, and the helper processes that fill a
//! namespace with connections.

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

/// Connections one helper process holds open: two descriptors each, well
/// inside the 20,000 a process may hold here.
pub const CONNECTIONS_PER_HELPER: usize = 4000;

/// The variable that makes a benchmark's binary run as a helper.
const HELPER: &str = "PORTSTAT_BENCH_HELPER";

/// Runs the helper and returns true when this process was started as one;
/// a benchmark's `main` returns at once then.
pub fn run_helper_if_asked() -> bool {
    let Ok(spec) = std::env::var(HELPER) else {
        return false;
    };
    let mut fields = spec.split(',').map(|field| field.parse::<usize>().unwrap());
    let (count, port, time_wait_every, threads) = (
        fields.next().unwrap(),
        fields.next().unwrap(),
        fields.next().unwrap(),
        fields.next().unwrap_or(0),
    );
    helper(count, port as u16, time_wait_every, threads);
    true
}

/// Starts helper processes through `command` (a `Command` for this binary,
/// entering the namespace) until they hold `connections` connections, one
/// in `time_wait_every` closed into TIME_WAIT (0: none). Each helper
/// connects to a listener of its own, on port `first_port` + its index.
pub fn populate(
    command: impl Fn() -> Command,
    connections: usize,
    time_wait_every: usize,
    first_port: u16,
) -> Vec<Child> {
    populate_with(
        command,
        connections,
        time_wait_every,
        first_port,
        CONNECTIONS_PER_HELPER,
        0,
    )
}

/// `populate`, with `per_helper` connections a helper and `threads` idle
/// threads in each besides its main one, as a multi-threaded proxy's
/// workers have.
pub fn populate_with(
    command: impl Fn() -> Command,
    connections: usize,
    time_wait_every: usize,
    first_port: u16,
    per_helper: usize,
    threads: usize,
) -> Vec<Child> {
    let helpers_needed = connections.div_ceil(per_helper);
    let mut helpers: Vec<Child> = Vec::new();
    for index in 0..helpers_needed {
        let count = per_helper.min(connections - index * per_helper);
        let mut child = command()
            .env(
                HELPER,
                format!(
                    "{count},{},{time_wait_every},{threads}",
                    first_port as usize + index
                ),
            )
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
    helpers
}

/// One connection in this many is closed by its client, to sit in
/// TIME_WAIT, where a namespace is filled as a proxy's workers fill it.
pub const PROXY_TIME_WAIT_EVERY: usize = 10;
/// Connections a proxy-like helper holds: 12,800 descriptors, inside the
/// 20,000 a process may hold here.
pub const PROXY_CONNECTIONS_PER_HELPER: usize = 6400;
/// Idle threads in each proxy-like helper besides its main one.
pub const PROXY_HELPER_THREADS: usize = 3;

/// Fills `netns` with about `sockets` TCP sockets held by helper processes
/// of four threads each, 6,400 connections a process, one in ten closed
/// into TIME_WAIT, as a proxy's workers hold them; the helpers end when
/// handed to `end_helpers`.
pub fn fill_like_a_proxy(netns: &crate::support::Netns, sockets: usize) -> Vec<Child> {
    // A held connection is two sockets; a TIME_WAIT one leaves one behind.
    let every = PROXY_TIME_WAIT_EVERY;
    let connections = (sockets * every).div_ceil(2 * every - 1);
    populate_with(
        || netns.command(&std::env::current_exe().unwrap().to_string_lossy()),
        connections,
        every,
        1000,
        PROXY_CONNECTIONS_PER_HELPER,
        PROXY_HELPER_THREADS,
    )
}

/// `--sockets N[,N...]` and `--runs N`, each `sizes` and `runs` where it is
/// not given; other arguments (cargo passes `--bench`) are left alone.
pub fn sizes_and_runs(mut sizes: Vec<usize>, mut runs: usize) -> (Vec<usize>, usize) {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sockets" => sizes = socket_sizes(args.next()),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => {}
        }
    }
    (sizes, runs)
}

/// The middle of `values` once sorted (the upper one of an even count);
/// NaN where there is none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The sizes of `--sockets N[,N...]`, from the flag's value.
pub fn socket_sizes(value: Option<String>) -> Vec<usize> {
    value
        .expect("--sockets N[,N...]")
        .split(',')
        .map(|size| size.parse().expect("--sockets N[,N...]"))
        .collect()
}

/// Ends the helpers: each exits when its standard input closes.
pub fn end_helpers(helpers: Vec<Child>) {
    for mut helper in helpers {
        drop(helper.stdin.take());
        let _ = helper.wait();
    }
}

/// A helper process: opens `count` connections to its own listener on
/// `port`, starts `threads` idle threads, reports ready, and holds them
/// until its standard input closes.
fn helper(count: usize, port: u16, time_wait_every: usize, threads: usize) {
    for _ in 0..threads {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut held = Vec::with_capacity(count * 2);
    for index in 0..count {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        if time_wait_every > 0 && index % time_wait_every == 0 {
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

/// The thread id of the exporter's thread named `sampler`.
pub fn sampler_tid(pid: u32) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "sampler")
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no sampler thread in process {pid}"))
}

/// CPU time of the exporter's thread named `sampler`, from its stat file.
pub fn sampler_cpu_seconds(pid: u32) -> f64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "sampler" {
            return stat_cpu_seconds(&task.path().join("stat"));
        }
    }
    panic!("no sampler thread in process {pid}");
}

/// User and system CPU time of every thread of process `pid` so far.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// User and system CPU time in a `stat` file of /proc, in seconds.
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of stat, counted after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// TCP sockets in `netns`, from its socket counts: in use (listeners and
/// connections) and in TIME_WAIT.
pub fn tcp_sockets(netns: &crate::support::Netns) -> u64 {
    let output = netns
        .command("cat")
        .arg("/proc/net/sockstat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|line| line.starts_with("TCP:")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let value = |name: &str| -> u64 {
        let at = fields.iter().position(|field| *field == name).unwrap();
        fields[at + 1].parse().unwrap()
    };
    value("inuse") + value("tw")
}

/// The symbols above `percent_limit` % of the `perf record -g` data in
/// `data`, self time only, as `perf report` prints them.
pub fn perf_report(data: &std::path::Path, percent_limit: &str) -> String {
    let report = Command::new("perf")
        .args([
            "report",
            "-q",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            percent_limit,
            "--sort",
            "symbol",
            "-i",
        ])
        .arg(data)
        .output()
        .expect("perf is needed for --profile: apt-get install linux-perf");
    String::from_utf8_lossy(&report.stdout).into_owned()
}

/// The process's peak resident set size (VmHWM), in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
