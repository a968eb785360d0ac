//! What the two walks of a sample cost, and how much of that is the
//! kernel's own walk, which no program run by it can take away.
//!
//! Fills a namespace (range 32768-60999) with held loopback connections, as
//! `scale_cost` does, then reads each way of walking it in a process inside
//! it, as the exporter's sampler does, and reports the CPU of one walk
//! (the reading thread's, user and system, median of `--runs`):
//! - `iter/tcp` with a program that does nothing (the kernel's walk of the
//!   TCP tables: every slot, every socket batched, referenced and locked);
//! - `iter/tcp` with the exporter's program, owners off and on (on, it
//!   marks which sockets a file holds), and without its walk of the bind
//!   hash (for sockets bound and idle, which it looks for only where the
//!   namespace's counts say some may be);
//! - the lock-free walk of the shared tables (`--collector.netns=all`),
//!   for this one namespace;
//! - `iter/task_file` with a program that does nothing (the kernel's walk
//!   of every process's descriptors), and with the owners program;
//! - `ss -tan`, for the ratios `docs/cost.md` states targets in.
//!
//! Run as root: `cargo bench --bench walk_floor` (128,000 sockets), or
//! `cargo bench --bench walk_floor -- --sockets 32000,128000 --runs 9`.
//! Needs `ss` (iproute2).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use portstat_core::model::{PortRange, Protocol, SocketRecord, SocketSink};
use portstat_exporter::source::bpf::owners::BpfOwners;
use portstat_exporter::source::bpf::shared::{SharedNamespace, SharedTables};
use portstat_exporter::source::bpf::{AttachPoint, BpfSockets, InodeReading, LoadedProgram};
use portstat_exporter::source::netlink::NetlinkSockets;
use support::Netns;

/// The variable that makes this binary measure, inside the namespace:
/// `<sockets>,<runs>`.
const MEASURE: &str = "PORTSTAT_WALK_FLOOR";

/// Iterator programs that do nothing (`tests/fixtures/bpf`).
const IDLE_PROGRAMS: &[u8] = include_bytes!("../tests/fixtures/bpf/null_iterators.bpf.o");

/// The namespace's ephemeral range.
const RANGE: PortRange = PortRange {
    start: 32768,
    end: 60999,
};

fn main() {
    if common::run_helper_if_asked() {
        return;
    }
    if let Ok(spec) = std::env::var(MEASURE) {
        let mut fields = spec.split(',').map(|field| field.parse::<usize>().unwrap());
        measure(fields.next().unwrap(), fields.next().unwrap());
        return;
    }
    let (sizes, runs) = common::sizes_and_runs(vec![128_000usize], 7usize);
    for sockets in sizes {
        measure_size(sockets, runs);
    }
}

/// Fills a namespace with about `sockets` TCP sockets and measures each
/// walk of it.
fn measure_size(sockets: usize, runs: usize) {
    let netns = Netns::new((RANGE.start, RANGE.end), "10042");
    let helpers = common::fill_like_a_proxy(&netns, sockets);
    let counted = common::tcp_sockets(&netns);
    println!("\n== {counted} TCP sockets (sockstat inuse + tw)");
    let mut ss: Vec<f64> = (0..runs)
        .map(|_| child_cpu(&netns, "ss", &["-tanH"]))
        .collect();
    let ss = common::median(&mut ss);
    println!(
        "{:<58} {:>9.1} ms {:>6.0} ns a socket",
        "`ss -tan`, the whole command",
        ss * 1e3,
        ss * 1e9 / counted as f64
    );
    let output = netns
        .command(&std::env::current_exe().unwrap().to_string_lossy())
        .env(MEASURE, format!("{counted},{runs}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot start the measuring process");
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "the measuring process failed");
    common::end_helpers(helpers);
}

/// Inside the namespace: loads every program, then times `runs` walks of
/// each after one to warm up, and prints the median.
fn measure(sockets: usize, runs: usize) {
    let namespace = std::fs::metadata("/proc/self/ns/net")
        .expect("no /proc/self/ns/net")
        .ino() as u32;
    let idle_tcp =
        LoadedProgram::load(IDLE_PROGRAMS, &[("null_tcp", AttachPoint::Iterator("tcp"))])
            .expect("the idle iter/tcp program does not load");
    let idle_files = LoadedProgram::load(
        IDLE_PROGRAMS,
        &[("null_task_file", AttachPoint::Iterator("task_file"))],
    )
    .expect("the idle iter/task_file program does not load");
    let mut tcp = BpfSockets::new(None, InodeReading::None);
    let mut bare = BpfSockets::new(None, InodeReading::None);
    let mut tcp_marking = BpfSockets::new(None, InodeReading::Listeners { port: None });
    let mut netlink = NetlinkSockets::new();
    let mut shared = SharedTables::new();
    let mut owners = BpfOwners::load().expect("the owners program does not load");
    let listed = [SharedNamespace {
        inode: namespace,
        range: RANGE,
        udp: false,
    }];
    let mut buffer = Vec::new();
    let mut walks: Vec<Walk<'_>> = vec![
        (
            "iter/tcp, a program that does nothing",
            Box::new(|| read_all(&idle_tcp, &mut buffer)),
        ),
        (
            "iter/tcp, the exporter's program, owners off",
            Box::new(|| {
                let mut count = Count(0);
                tcp.read_sockets(RANGE, true, &mut netlink, &mut count)
                    .expect("the iter/tcp walk failed");
                count.0
            }),
        ),
        (
            "iter/tcp, the exporter's program, no walk of the bind hash",
            Box::new(|| {
                let mut count = Count(0);
                let mut netlink = NetlinkSockets::new();
                bare.read_sockets(RANGE, false, &mut netlink, &mut count)
                    .expect("the iter/tcp walk failed");
                count.0
            }),
        ),
        (
            "iter/tcp, the exporter's program, owners on (files marked)",
            Box::new(|| {
                let mut count = Count(0);
                let mut netlink = NetlinkSockets::new();
                tcp_marking
                    .read_sockets(RANGE, true, &mut netlink, &mut count)
                    .expect("the iter/tcp walk failed");
                count.0
            }),
        ),
        (
            "lock-free walk of the shared tables, this namespace",
            Box::new(|| {
                let mut count = 0;
                let outcome = shared
                    .walk(&listed, false, InodeReading::None, true, &mut |_, _| {
                        count += 1
                    })
                    .expect("the shared walk failed");
                assert!(outcome.complete, "the shared walk was not complete");
                count
            }),
        ),
        (
            "iter/task_file, a program that does nothing",
            Box::new(|| {
                let mut buffer = Vec::new();
                read_all(&idle_files, &mut buffer)
            }),
        ),
        (
            "iter/task_file, the owners program",
            Box::new(|| {
                let mut count = 0;
                owners
                    .read(None, &mut |_| count += 1)
                    .expect("the owners walk failed");
                count
            }),
        ),
    ];
    for (name, walk) in walks.iter_mut() {
        walk();
        let mut handed = 0;
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let started = thread_cpu_seconds();
                handed = walk();
                thread_cpu_seconds() - started
            })
            .collect();
        let time = common::median(&mut times);
        println!(
            "{name:<58} {:>9.1} ms {:>6.0} ns a socket ({handed} records or bytes)",
            time * 1e3,
            time * 1e9 / sockets as f64
        );
    }
}

/// A walk's name, and the walk: it returns how many records or bytes it
/// was handed.
type Walk<'a> = (&'static str, Box<dyn FnMut() -> usize + 'a>);

/// Counts the sockets a source hands over.
struct Count(usize);

impl SocketSink for Count {
    fn add(&mut self, _socket: &SocketRecord) {
        self.0 += 1;
    }

    fn restart(&mut self, _protocol: Protocol) {
        self.0 = 0;
    }
}

/// Reads a new iterator of `program` to its end; returns the bytes read.
/// A read that visits a million objects without output returns EAGAIN
/// (`MAX_ITER_OBJECTS`), and the next goes on from there.
fn read_all(program: &LoadedProgram, buffer: &mut Vec<u8>) -> usize {
    let mut iterator = program.open().expect("cannot open an iterator");
    let mut chunk = [0u8; 1 << 16];
    buffer.clear();
    loop {
        match iterator.read(&mut chunk) {
            Ok(0) => return buffer.len(),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => panic!("cannot read an iterator: {error}"),
        }
    }
}

/// The calling thread's CPU time, user and system.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// The CPU time, user and system, of `program` run to its end inside the
/// namespace, its output thrown away.
fn child_cpu(netns: &Netns, program: &str, args: &[&str]) -> f64 {
    let before = children_cpu_seconds();
    let status = netns
        .command(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot start");
    assert!(status.success(), "{program} failed");
    children_cpu_seconds() - before
}

/// The CPU time, user and system, of every child this process has reaped.
fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
