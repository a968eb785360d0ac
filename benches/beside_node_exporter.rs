//! portstat_exporter beside Debian's `prometheus-node-exporter`, as a
//! platform team would try them: both at their defaults, in one network
//! namespace, each scraped every 15 s as Prometheus scrapes, and the CPU
//! time of each process measured over the same minutes.
//!
//! Run as root: `cargo bench --bench beside_node_exporter` (every
//! configuration), or `cargo bench --bench beside_node_exporter --
//! --configs idle,32000 --minutes 2`. Needs `prometheus-node-exporter`.
//! `--portstat-args "--no-collector.follow-scrapes"` runs portstat with
//! those flags beside its defaults, for a comparison; `--profile` records
//! portstat with `perf record -g` for four scrapes after the window and
//! prints the symbols above 1.5 % (needs `perf`, from `linux-perf`).
//!
//! The configurations (`--configs`, comma-separated):
//! - `idle`: the namespace holds the two exporters and nothing else;
//! - `32000`: 32,000 TCP sockets held open (16,000 connections over
//!   loopback), and a client beside them that connects and closes 200
//!   times a second (`--churn` sets the rate), each close leaving a
//!   TIME_WAIT socket;
//! - any other number: that many TCP sockets held open, no churn.
//!
//! The namespace's range is 32768-60999 (`--range 1024-65535` sets
//! another); portstat listens on its default port, 10042, node_exporter on
//! its own, 9100, and these, the churning client's listener and the
//! helpers' listeners are reserved ports. For each configuration the
//! exporters start, are scraped for a warm-up of five scrapes each (time for
//! portstat to find the scrapes' period), and then for `--minutes` (3 by
//! default); it reports, for that window:
//! - each process's CPU time per minute (user and system, all threads,
//!   from /proc/<pid>/stat), and their ratio;
//! - portstat's samples in the window, and the age of what each of its
//!   scrapes served: the scrape's time less
//!   `portstat_sample_timestamp_seconds`, the most and the median, over the
//!   warm-up as well as the window (the median over the window only);
//! - each process's peak RSS (VmHWM).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{process_cpu_seconds, tcp_sockets, vm_hwm_kib};
use support::Netns;

/// Prometheus's default scrape interval.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// Scrapes of each exporter before the measured window.
const WARM_UP_SCRAPES: u32 = 5;
/// Where node_exporter listens: its default port.
const NODE_EXPORTER: &str = "127.0.0.1:9100";
/// Where portstat listens: its default port, reserved in the namespace.
const PORTSTAT: &str = "127.0.0.1:10042";
/// Connections a helper holds: 12,800 descriptors.
const CONNECTIONS_PER_HELPER: usize = 6400;
/// The variable that makes this binary run as the churning client.
const CHURN: &str = "PORTSTAT_BENCH_CHURN";
/// The ports kept out of the range: the exporters', the churning client's
/// listener and the helpers' listeners, which a wide range covers.
const RESERVED: &str = "1000-1199,9100,9999,10042";
/// Scrapes recorded by `perf` after the window, with `--profile`.
const PROFILED_SCRAPES: u32 = 4;
/// The churning client's listener.
const CHURN_PORT: u16 = 9999;

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    if let Ok(rate) = std::env::var(CHURN) {
        churn(rate.parse().expect("a rate"));
        return;
    }
    let mut configs = vec![
        "idle".to_string(),
        "32000".to_string(),
        "128000".to_string(),
        "1000000".to_string(),
    ];
    let mut minutes = 3.0f64;
    let mut churn_rate = 200u32;
    let mut portstat_args = Vec::new();
    let mut profile = false;
    let mut range = (32768u16, 60999u16);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--configs" => {
                configs = args
                    .next()
                    .expect("--configs idle,32000,...")
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--minutes" => {
                minutes = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--minutes M")
            }
            "--portstat-args" => {
                portstat_args = args
                    .next()
                    .expect("--portstat-args \"ARGS\"")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            "--profile" => profile = true,
            "--range" => {
                let value = args.next().expect("--range FIRST-LAST");
                let (first, last) = value.split_once('-').expect("--range FIRST-LAST");
                range = (
                    first.parse().expect("--range FIRST-LAST"),
                    last.parse().expect("--range FIRST-LAST"),
                );
            }
            "--churn" => {
                churn_rate = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--churn RATE")
            }
            _ => {} // cargo passes --bench
        }
    }
    let node_exporter = which("prometheus-node-exporter")
        .expect("prometheus-node-exporter is needed: apt-get install prometheus-node-exporter");
    println!(
        "| sockets | portstat CPU-s/min | node_exporter CPU-s/min | ratio | portstat samples/min | age of a scrape's figures, median / most | portstat peak RSS | node_exporter peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for config in &configs {
        let (sockets, churning) = match config.as_str() {
            "idle" => (0, false),
            "32000" => (32_000, true),
            other => (other.parse().expect("a number of sockets"), false),
        };
        measure(
            &node_exporter,
            &portstat_args,
            sockets,
            churning.then_some(churn_rate),
            minutes,
            range,
            profile,
        );
    }
}

/// One configuration: `sockets` held, with a client churning `churn`
/// connections a second where given; portstat with `portstat_args` beside
/// its defaults.
fn measure(
    node_exporter: &str,
    portstat_args: &[String],
    sockets: usize,
    churn: Option<u32>,
    minutes: f64,
    range: (u16, u16),
    profile: bool,
) {
    let netns = Netns::new(range, RESERVED);
    let started = Instant::now();
    let helpers = common::populate_with(
        || netns.command(&std::env::current_exe().unwrap().to_string_lossy()),
        sockets / 2,
        0,
        1000,
        CONNECTIONS_PER_HELPER,
        0,
    );
    let churner = churn.map(|rate| {
        let mut child = netns
            .command(&std::env::current_exe().unwrap().to_string_lossy())
            .env(CHURN, rate.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the churning client");
        let mut ready = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
        child
    });
    eprintln!(
        "{sockets} sockets held{} in {:.0} s",
        churn.map_or(String::new(), |rate| format!(
            ", a client churning {rate} connections a second"
        )),
        started.elapsed().as_secs_f64()
    );

    let portstat = Ended(
        netns
            .command(support::exporter())
            .args(portstat_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start portstat_exporter"),
    );
    let node = Ended(
        netns
            .command(node_exporter)
            .arg(format!("--web.listen-address={NODE_EXPORTER}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start node_exporter"),
    );
    let portstat_address: SocketAddr = PORTSTAT.parse().unwrap();
    let node_address: SocketAddr = NODE_EXPORTER.parse().unwrap();
    // Both answer with figures: portstat's first sample at a million
    // sockets takes a second or more.
    for address in [portstat_address, node_address] {
        let deadline = Instant::now() + Duration::from_secs(300);
        while netns.run(|| TcpStream::connect(address)).is_err() || scrape(&netns, address).0 != 200
        {
            assert!(Instant::now() < deadline, "{address} never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Scraped as Prometheus scrapes two targets: each every 15 s, at
    // phases half an interval apart. After each portstat scrape: the time,
    // both processes' CPU and portstat's samples so far.
    let mut ages = Vec::new();
    let mut marks: Vec<(Instant, f64, f64, f64)> = Vec::new();
    let mut next = Instant::now() + Duration::from_secs(1);
    let scrapes = WARM_UP_SCRAPES + (minutes * 60.0 / SCRAPE_INTERVAL.as_secs_f64()) as u32;
    // With `profile`, four scrapes more after the window, recorded.
    let recorded = if profile { PROFILED_SCRAPES } else { 0 };
    let data = std::env::temp_dir().join(format!(
        "beside_node_exporter-{}.perf.data",
        std::process::id()
    ));
    let mut recording = None;
    for index in 0..=scrapes + recorded {
        if profile && index == scrapes + 1 {
            let seconds = (SCRAPE_INTERVAL * PROFILED_SCRAPES).as_secs().to_string();
            recording = Some(
                std::process::Command::new("perf")
                    .args([
                        "record",
                        "-q",
                        "-g",
                        "-p",
                        &portstat.0.id().to_string(),
                        "-o",
                    ])
                    .arg(&data)
                    .args(["--", "sleep", &seconds])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("perf is needed for --profile: apt-get install linux-perf"),
            );
        }
        sleep_until(next);
        let asked = unix_now();
        let (status, body) = scrape(&netns, portstat_address);
        assert_eq!(status, 200, "portstat answered {status}");
        let metrics = support::Metrics::parse(&body);
        ages.push(asked - metrics.value("portstat_sample_timestamp_seconds"));
        marks.push((
            Instant::now(),
            process_cpu_seconds(portstat.0.id()),
            process_cpu_seconds(node.0.id()),
            metrics.value("portstat_samples_total"),
        ));
        sleep_until(next + SCRAPE_INTERVAL / 2);
        let (status, _) = scrape(&netns, node_address);
        assert_eq!(status, 200, "node_exporter answered {status}");
        next += SCRAPE_INTERVAL;
    }
    let first = marks[WARM_UP_SCRAPES as usize];
    let last = marks[scrapes as usize];
    let elapsed_minutes = last.0.duration_since(first.0).as_secs_f64() / 60.0;
    let portstat_cpu = (last.1 - first.1) / elapsed_minutes;
    let node_cpu = (last.2 - first.2) / elapsed_minutes;
    let samples = (last.3 - first.3) / elapsed_minutes;
    let median_age =
        common::median(&mut ages[WARM_UP_SCRAPES as usize + 1..=scrapes as usize].to_vec());
    let most_age = ages.iter().copied().fold(f64::MIN, f64::max);
    let sockets_counted = tcp_sockets(&netns);
    println!(
        "| {sockets_counted}{} | {portstat_cpu:.3} | {node_cpu:.3} | {:.1}× | {samples:.1} | {median_age:.2} s / {most_age:.2} s | {:.1} MiB | {:.1} MiB |",
        churn.map_or(String::new(), |rate| format!(", {rate} connects/s")),
        portstat_cpu / node_cpu,
        vm_hwm_kib(portstat.0.id()) as f64 / 1024.0,
        vm_hwm_kib(node.0.id()) as f64 / 1024.0,
    );
    eprintln!("ages of portstat's scrapes, warm-up first: {ages:.2?}");
    if let Some(mut recording) = recording {
        let _ = recording.wait();
        println!(
            "profile of portstat over {PROFILED_SCRAPES} scrapes:\n{}",
            common::perf_report(&data, "1.5")
        );
        let _ = std::fs::remove_file(&data);
    }
    drop((portstat, node));
    if let Some(mut churner) = churner {
        drop(churner.stdin.take());
        let _ = churner.wait();
    }
    common::end_helpers(helpers);
}

/// A process that is stopped (SIGTERM) and waited for when this is
/// dropped, the bench panicking too.
struct Ended(std::process::Child);

impl Drop for Ended {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// GET /metrics from `address`, from inside the namespace, as Prometheus
/// asks (the kernel picks the client's port, as it does for Prometheus):
/// the status and the body.
fn scrape(netns: &Netns, address: SocketAddr) -> (u16, String) {
    netns.run(move || {
        let mut stream = TcpStream::connect(address).expect("cannot connect to an exporter");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    })
}

/// The churning client: connects to a listener of its own and closes, the
/// client first (its port goes to TIME_WAIT), `rate` times a second, until
/// its standard input closes.
fn churn(rate: u32) {
    let listener = TcpListener::bind(("127.0.0.1", CHURN_PORT)).unwrap();
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
        std::process::exit(0);
    });
    println!("ready");
    std::io::stdout().flush().unwrap();
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut next = Instant::now();
    loop {
        let client = TcpStream::connect(("127.0.0.1", CHURN_PORT)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(client);
        drop(accepted);
        next += every;
        sleep_until(next);
    }
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The path of `program` on PATH.
fn which(program: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
        .map(|path| path.to_string_lossy().into_owned())
}
