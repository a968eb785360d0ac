//! What reading source NAT from conntrack costs, against `conntrack -L` on
//! the same table.
//!
//! Run as root: `cargo bench --bench nat_cost` (100,000 entries), or
//! `cargo bench --bench nat_cost -- --entries 200000 --runs 5`. Needs
//! `conntrack` (conntrack-tools) and `iptables`.
//!
//! It builds the three-namespace lab of `tests/support` (`NatLab`): a client
//! with 11 addresses, a router masquerading TCP and UDP to 10.77.2.1, ports
//! 1024-65535, and a server that drops everything. The client sends half the
//! entries as TCP SYNs (a socket connects without blocking and is closed at
//! once, which sends nothing more: the router keeps a SYN_SENT entry) and
//! half as UDP datagrams, each to a port of its own on the server. The
//! router's timeouts for both are raised to 10 minutes so the table holds
//! still while it is measured. Then, in one run, the median of `--runs`:
//! - `conntrack -L` into /dev/null: the process's CPU (getrusage);
//! - the exporter's conntrack source reading the same table, each entry
//!   counted into NAT ports per (NAT address, destination): the reading
//!   thread's CPU, the kernel's dump included, as for `conntrack -L`;
//! - `--once` with and without `--collector.nat`: what NAT adds to a whole
//!   sample, in CPU and in peak RSS.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use portstat_core::aggregate::nat::NatTable;
use portstat_core::model::{NatEntry, NatSink, PortRange, Protocol};
use portstat_exporter::source::conntrack::ConntrackReader;
use support::NatLab;

/// Counts entries into a `NatTable`, as the aggregate does.
struct Counted(NatTable);

impl NatSink for Counted {
    fn add_nat(&mut self, entry: &NatEntry) {
        self.0.add(entry);
    }

    fn restart_nat(&mut self) {
        self.0.clear();
    }
}

fn main() {
    let mut entries = 100_000usize;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--entries" => {
                entries = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--entries N")
            }
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let lab = NatLab::new((1024, 65535));
    lab.router.run(|| {
        for (name, value) in [
            ("nf_conntrack_udp_timeout", "600"),
            ("nf_conntrack_tcp_timeout_syn_sent", "600"),
        ] {
            std::fs::write(format!("/proc/sys/net/netfilter/{name}"), value).unwrap();
        }
    });
    support::run(
        lab.server
            .command("iptables")
            .args(["-A", "INPUT", "-j", "DROP"]),
    );
    let started = Instant::now();
    fill(&lab, entries);
    let count = table_count(&lab);
    println!(
        "conntrack table of the router: {count} entries, all source-NAT'd ({:.1} s to fill)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        count >= entries as u64,
        "the table holds {count} entries, fewer than {entries}"
    );

    let conntrack_cpu = median(
        (0..runs)
            .map(|_| {
                children_cpu(|| {
                    let status = lab
                        .router
                        .command("conntrack")
                        .arg("-L")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("conntrack (conntrack-tools) is needed");
                    assert!(status.success());
                })
            })
            .collect(),
    );

    let mut read = Vec::new();
    let mut kernel = Vec::new();
    let mut pairs = 0;
    for _ in 0..runs {
        let ((user, system), found) = lab.router.run(|| {
            let mut reader = ConntrackReader::new(None);
            let mut table = Counted(NatTable::new(PortRange {
                start: 1024,
                end: 65535,
            }));
            let before = thread_cpu();
            let sent = reader.read(&mut table).expect("the conntrack dump");
            let figures = table.0.finish(10, None);
            let after = thread_cpu();
            assert!(sent >= entries as u64, "{sent} entries read");
            (
                (after.0 - before.0, after.1 - before.1),
                figures.pairs(Protocol::Tcp) + figures.pairs(Protocol::Udp),
            )
        });
        read.push(user + system);
        kernel.push(system);
        pairs = found;
    }
    let read_cpu = median(read);
    let kernel_cpu = median(kernel);

    let once = |nat: &str| {
        let measured: Vec<(f64, u64)> = (0..runs)
            .map(|_| {
                let child = lab
                    .router
                    .command(support::exporter())
                    .args(["--once", "--collector.nat", nat])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                wait_measured(child)
            })
            .collect();
        (
            median(measured.iter().map(|(cpu, _)| *cpu).collect()),
            measured.iter().map(|(_, rss)| *rss).max().unwrap_or(0),
        )
    };
    let (once_without, rss_without) = once("false");
    let (once_with, rss_with) = once("true");

    println!("(NAT address, destination) pairs: {pairs}");
    println!();
    println!("| reading {count} conntrack entries | CPU, median of {runs} |");
    println!("|---|---|");
    println!(
        "| `conntrack -L` > /dev/null | {:.1} ms |",
        conntrack_cpu * 1e3
    );
    println!(
        "| conntrack source, counted into pairs | {:.1} ms ({:.2}x `conntrack -L`), {:.1} ms of it in the kernel's dump |",
        read_cpu * 1e3,
        read_cpu / conntrack_cpu,
        kernel_cpu * 1e3
    );
    println!(
        "| `--once --collector.nat=false` | {:.1} ms, peak RSS {:.1} MiB |",
        once_without * 1e3,
        rss_without as f64 / 1024.0
    );
    println!(
        "| `--once` (NAT on, the default) | {:.1} ms (+{:.1} ms), peak RSS {:.1} MiB |",
        once_with * 1e3,
        (once_with - once_without) * 1e3,
        rss_with as f64 / 1024.0
    );
}

/// Makes `entries` source-NAT'd entries in the router: half TCP SYNs, half
/// UDP datagrams, from the client's 11 addresses to ports of the server.
fn fill(lab: &NatLab, entries: usize) {
    let tcp = entries / 2;
    let udp = entries - tcp;
    lab.client.run(|| {
        let server = |port: usize| -> std::net::SocketAddr {
            format!("{}:{}", NatLab::SERVER, 1 + port % 65535)
                .parse()
                .unwrap()
        };
        for n in 0..tcp {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let local: std::net::SocketAddr = format!("10.77.1.{}:0", 2 + n % 11).parse().unwrap();
            socket.bind(&local.into()).unwrap();
            socket.set_nonblocking(true).unwrap();
            // In progress: the SYN is on its way.
            let _ = socket.connect(&server(n / 11).into());
        }
        let sockets: Vec<std::net::UdpSocket> = (2..=12)
            .map(|host| std::net::UdpSocket::bind(format!("10.77.1.{host}:0")).unwrap())
            .collect();
        for n in 0..udp {
            sockets[n % 11].send_to(&[0; 32], server(n / 11)).unwrap();
        }
    });
    // The last packets reach the router's table.
    let deadline = Instant::now() + Duration::from_secs(30);
    while table_count(lab) < entries as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `nf_conntrack_count` in the router.
fn table_count(lab: &NatLab) -> u64 {
    lab.router.run(|| {
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
}

/// Waits for `child`: its CPU seconds (user and system) and its peak RSS
/// in KiB, from `wait4`.
fn wait_measured(child: std::process::Child) -> (f64, u64) {
    let mut status = 0;
    // SAFETY: usage is a plain struct that wait4 fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not yet waited for; both pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "--once failed"
    );
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    (
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        usage.ru_maxrss as u64,
    )
}

/// CPU seconds (user and system) of the children that `work` waits for.
fn children_cpu(work: impl FnOnce()) -> f64 {
    let before = rusage(libc::RUSAGE_CHILDREN);
    work();
    let after = rusage(libc::RUSAGE_CHILDREN);
    after.0 - before.0 + after.1 - before.1
}

/// CPU seconds the calling thread has used, in user space and in the
/// kernel.
fn thread_cpu() -> (f64, f64) {
    rusage(libc::RUSAGE_THREAD)
}

/// User and system CPU seconds of `who`.
fn rusage(who: libc::c_int) -> (f64, f64) {
    // SAFETY: usage is a plain struct that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(who, &mut usage) };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
