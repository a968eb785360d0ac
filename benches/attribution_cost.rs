//! What socket attribution costs on a host with many processes.
//!
//! Run as root: `cargo bench --bench attribution_cost` (2,000 processes), or
//! `cargo bench --bench attribution_cost -- --processes 500`.
//!
//! A helper forks N processes inside a network namespace; each holds a TCP
//! connection and a UDP socket on ports of the ephemeral range, so every
//! sample must name N owners. Reported: the sampler thread's CPU per sample
//! as a daemon with attribution off and on (after the first sample, which
//! reads every descriptor), and one `--once` run, which has no cache and so
//! reads every descriptor of every process.

#[path = "../tests/support/mod.rs"]
mod support;

use support::Place;

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{sampler_cpu_seconds, vm_hwm_kib};
use support::{Netns, exporter};

fn main() {
    if let Ok(count) = std::env::var("PORTSTAT_BENCH_PROCESSES") {
        return helper(count.parse().expect("a process count"));
    }
    let mut processes = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--processes" {
            processes = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--processes N");
        }
    }

    let netns = Netns::new((32768, 60999), "");
    let mut helper = netns
        .command(&std::env::current_exe().unwrap().to_string_lossy())
        .env("PORTSTAT_BENCH_PROCESSES", processes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start the helper");
    let mut line = String::new();
    BufReader::new(helper.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the helper failed");
    let visible = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    println!("{processes} helper processes, {visible} processes on the host");

    for attribution in ["false", "true"] {
        let flag = format!("--collector.processes={attribution}");
        let mut daemon = netns.spawn_exporter(&["--collector.interval", "500ms", &flag]);
        std::thread::sleep(Duration::from_millis(1250));
        let before = sampler_cpu_seconds(daemon.pid());
        std::thread::sleep(Duration::from_secs(10));
        let per_sample = (sampler_cpu_seconds(daemon.pid()) - before) / 20.0;
        let metrics = daemon.metrics();
        let named = metrics
            .family("portstat_ephemeral_process_ports_used")
            .into_iter()
            .filter(|(series, _)| series.contains("sample_cost") || series.contains("attribution"))
            .count();
        println!(
            "daemon, attribution {attribution}: sampler CPU {:.1} ms per sample, last sample {:.1} ms, peak RSS {:.1} MiB{}",
            per_sample * 1e3,
            metrics.value("portstat_sample_duration_seconds") * 1e3,
            vm_hwm_kib(daemon.pid()) as f64 / 1024.0,
            if attribution == "true" {
                format!(", helper processes named: {}", named > 0)
            } else {
                String::new()
            }
        );
        daemon.terminate(Duration::from_secs(5));
    }

    let started = Instant::now();
    let output = netns
        .command(exporter())
        .arg("--once")
        .output()
        .expect("cannot run --once");
    let text = String::from_utf8_lossy(&output.stdout);
    let sample = text
        .lines()
        .find_map(|line| line.strip_prefix("portstat_sample_duration_seconds "))
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    println!(
        "--once (every descriptor read): sample {:.1} ms, process wall {:.1} ms",
        sample * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );

    drop(helper.stdin.take());
    let _ = helper.wait();
}

/// Forks `count` processes that each hold a TCP connection to this process's
/// listener and a UDP socket, until standard input closes.
fn helper(count: usize) {
    // A backlog that takes every child's connection before any is accepted.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:80"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(4096).unwrap();
    let listener: TcpListener = listener.into();
    let mut release = [0; 2];
    // SAFETY: pipe fills the two descriptors.
    assert_eq!(unsafe { libc::pipe(release.as_mut_ptr()) }, 0);
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let _tcp = TcpStream::connect("127.0.0.1:80").unwrap();
            let _udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut byte = [0u8; 1];
            // SAFETY: reads from the pipe until the parent closes it.
            unsafe {
                libc::close(release[1]);
                libc::read(release[0], byte.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        children.push(pid);
    }
    // Wait for every connection to arrive, then report.
    let mut accepted = Vec::with_capacity(count);
    for _ in 0..count {
        // Each child connects once.
        accepted.push(listener.accept().unwrap().0);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    // SAFETY: closing the write end releases every child.
    unsafe { libc::close(release[1]) };
    for pid in children {
        let mut status = 0;
        // SAFETY: reaps our own children.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}
