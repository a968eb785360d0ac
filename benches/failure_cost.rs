//! What counting failures and connects costs: the slowdown of a tight loop
//! of loopback `connect()` + `close()` with the failure counter's programs
//! attached, against without, and what reading the counts costs as failures
//! pile up.
//!
//! Run as root: `cargo bench --bench failure_cost`, or
//! `cargo bench --bench failure_cost -- --cycles 600 --block 1000 --connects 20000 --rounds 11`.
//!
//! In a namespace of its own, a thread accepts and drops connections to
//! 127.0.0.1:8080 (a queue of 4,096) while the loop connects, and closes each connection with
//! a reset (SO_LINGER 0), so that no TIME_WAIT fills the range. First, in
//! `--cycles` cycles of blocks of `--block` connects, each cycle runs a
//! block with no program, one with the program that counts failures alone
//! (`--collector.failures.connects=false`), one with the default program,
//! which counts connects too, and a second with none as the control. Then
//! rounds alternate: without the programs, with each TCP program, and with
//! `--collector.failures.autobind`'s program at the exit of every system
//! call too; the median time per connect+close of each is printed, with
//! its slowdown; and the same for a system call that has nothing to do
//! with ports (`getppid`). Then, with the programs attached, the time one
//! read of the counts takes: after 10 failures to one destination, after
//! 100,000 to the same one, and with 1,000 destinations of one failure
//! each.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use portstat_exporter::source::bpf::failures::{Counting, PortFailureCounter, names_capacity};
use support::Netns;

/// The map of connection names, sized as the exporter sizes it for the
/// kernel's default range (32768-60999).
const NAMES: u32 = names_capacity(28232);

/// What the exporter counts by default: TCP failures and connects.
const DEFAULT: Counting = Counting {
    autobind: false,
    connects: true,
};
/// TCP failures alone: `--collector.failures.connects=false`.
const FAILURES_ALONE: Counting = Counting {
    autobind: false,
    connects: false,
};
/// The default and `--collector.failures.autobind`.
const WITH_AUTOBIND: Counting = Counting {
    autobind: true,
    connects: true,
};

fn main() {
    let mut connects = 20_000usize;
    let mut rounds = 7usize;
    let mut cycles = 300usize;
    let mut block = 1_000usize;
    // `--reads`: only what reading the maps costs.
    let mut reads_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connects" => {
                connects = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--connects N")
            }
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--cycles" => {
                cycles = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--cycles N")
            }
            "--block" => block = args.next().and_then(|v| v.parse().ok()).expect("--block N"),
            "--reads" => reads_only = true,
            // cargo bench passes --bench.
            _ => {}
        }
    }
    support::require_root();
    if !reads_only {
        interleaved_cost(cycles, block);
        loop_cost(connects, rounds);
        syscall_cost(rounds);
    }
    read_cost();
}

/// What a system call that has nothing to do with ports costs, in
/// nanoseconds (`getppid`), with each set of programs: the autobind
/// program runs at the exit of every system call on the host.
fn syscall_cost(rounds: usize) {
    let calls = 2_000_000;
    let run = || {
        let started = Instant::now();
        for _ in 0..calls {
            // SAFETY: getppid takes no argument and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        started.elapsed().as_secs_f64() * 1e9 / f64::from(calls)
    };
    let medians = alternate(rounds, thread_namespace(), run).map(median);
    println!("getppid(), {calls} a round, median of {rounds} rounds:");
    for ((name, _), median) in SETUPS.iter().zip(medians) {
        println!(
            "  {name:<60} {median:>7.1} ns {:>+8.1} ns",
            median - medians[0]
        );
    }
}

/// A thread that accepts and drops connections to 127.0.0.1:8080 inside
/// `netns`, for as long as the process runs; its address.
fn acceptor(netns: &Netns) -> SocketAddr {
    acceptor_on(netns, 8080)
}

/// A thread that accepts and drops connections to 127.0.0.1:`port` inside
/// `netns`, for as long as the process runs; its address.
fn acceptor_on(netns: &Netns, port: u16) -> SocketAddr {
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    // A deep accept queue: a late wake-up of the accepting thread must not
    // drop SYNs, which would cost the loop a second's retransmission.
    let listener = netns.run(|| support::listening_socket(&address.to_string(), false, 4096));
    std::thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            drop(stream);
        }
    });
    address
}

/// Connects to `server` and closes with a reset, so that no TIME_WAIT is
/// left to fill the range.
fn connect_and_reset(server: SocketAddr) {
    let stream = TcpStream::connect(server).unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// The mean time of `count` connect+close with a reset to `server` inside
/// `netns`, in microseconds.
fn resets(netns: &Netns, server: SocketAddr, count: usize) -> f64 {
    netns.run(|| {
        let started = Instant::now();
        for _ in 0..count {
            connect_and_reset(server);
        }
        started.elapsed().as_secs_f64() * 1e6 / count as f64
    })
}

/// The median time per connect+close, in microseconds, with no program,
/// with the TCP program, and with both.
fn loop_cost(connects: usize, rounds: usize) {
    let netns = Netns::new((10000, 60999), "");
    let server = acceptor(&netns);
    let run = || resets(&netns, server, connects);
    let times = alternate(rounds, inode_of(&netns), run);
    let medians = times.clone().map(median);
    // Rounds run one after the other, so each with-program round is also
    // weighed against the round without just before it: the median of
    // those ratios cancels slow drift in the machine's speed.
    let paired_with = |with: &[f64], without: &[f64]| {
        let mut ratios: Vec<f64> = with
            .iter()
            .zip(without)
            .map(|(with, without)| with / without)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    };
    let paired = |with: &[f64]| paired_with(with, &times[0]);
    let spread = {
        let mut without = times[0].clone();
        without.sort_by(f64::total_cmp);
        (without[without.len() - 1] / without[0] - 1.0) * 100.0
    };
    println!(
        "connect()+close() on loopback, {connects} a round, {rounds} rounds (rounds without \
         the programs differ by up to {spread:.1} %):"
    );
    println!(
        "  {:<60} {:>10} {:>9} {:>9}",
        "", "median", "vs none", "paired"
    );
    for (index, (name, _)) in SETUPS.iter().enumerate() {
        println!(
            "  {name:<60} {:>7.2} µs {:>+8.1} % {:>+8.1} %",
            medians[index],
            (medians[index] / medians[0] - 1.0) * 100.0,
            (paired(&times[index]) - 1.0) * 100.0
        );
    }
    println!(
        "  {:<60} {:>10} {:>9} {:>+8.1} %",
        "connects counted vs failures alone",
        "",
        "",
        (paired_with(&times[2], &times[1]) - 1.0) * 100.0
    );
    println!("  the TCP program's own time, by the kernel's statistics:");
    let own = netns.run(|| program_time(connects, || connect_and_reset(server)));
    println!(
        "    {own:.0} ns a connect()+close() with a reset, {:.1} % of one without it",
        own / 1e3 / medians[0] * 100.0
    );
    // Closed without a reset, each connection is named as its process
    // closes it, and leaves TIME_WAIT on one side (the range has room for
    // every one).
    let own = netns.run(|| program_time(connects, || drop(TcpStream::connect(server).unwrap())));
    println!("    {own:.0} ns a connect()+close() without a reset, named as it closes");
}

/// The failure counter, loaded and recording the namespaces `inodes`, where
/// the bench's connects are made: the programs record no other.
fn load(counting: Counting, inodes: &[u64]) -> PortFailureCounter {
    let mut counter = PortFailureCounter::load(counting, NAMES, 2).expect("the programs load");
    counter
        .sample_namespaces(inodes)
        .expect("the bench's namespaces are recorded");
    counter
}

/// The inode of the calling thread's network namespace.
fn thread_namespace() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|metadata| std::os::unix::fs::MetadataExt::ino(&metadata))
        .expect("the thread's namespace")
}

/// The inode of `netns`.
fn inode_of(netns: &Netns) -> u64 {
    netns.run(thread_namespace)
}

/// The time the TCP program itself runs per call of `connect`, in
/// nanoseconds, as the kernel measures it (`BPF_ENABLE_STATS`: the clock
/// read around each run, which costs the run too, so this errs high), over
/// `connects` calls.
fn program_time(connects: usize, connect: impl Fn()) -> f64 {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF statistics");
    let _counter = load(DEFAULT, &[thread_namespace()]);
    let program = program_named("count_connects");
    let run_time = || {
        use std::os::fd::{AsFd, AsRawFd};
        // SAFETY: `bpf_prog_info` is integers only, for which zero is a value.
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut attr = [0u64; 3];
        attr[0] = u64::from(program.as_fd().as_raw_fd() as u32)
            | (std::mem::size_of_val(&info) as u64) << 32;
        attr[1] = std::ptr::addr_of_mut!(info) as u64;
        // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes to
        // `info`, a `bpf_prog_info` that outlives the call.
        unsafe {
            bpf(
                aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                &mut attr,
            )
        };
        info.run_time_ns
    };
    let before = run_time();
    for _ in 0..connects {
        connect();
    }
    (run_time() - before) as f64 / connects as f64
}

/// A descriptor of the newest program loaded by the name `name`: the
/// kernel keeps the first 15 bytes of a program's name.
fn program_named(name: &str) -> aya::programs::ProgramFd {
    let kept = &name[..name.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some(kept))
        .max_by_key(|info| info.id())
        .expect("the TCP program is loaded")
        .fd()
        .expect("the program's descriptor")
}

/// The TCP program that counts what `counting` asks for, loaded by the
/// failure counter, whose own link is gone once this returns: the program,
/// and the maps it uses, stay while the descriptor is open.
fn tcp_program(counting: Counting, inode: u64) -> aya::programs::ProgramFd {
    let _counter = load(counting, &[inode]);
    program_named(if counting.connects {
        "count_connects"
    } else {
        "count_port_failures"
    })
}

/// Attaches `program`, a `tp_btf` program, at its tracepoint until the
/// returned link is closed (`BPF_RAW_TRACEPOINT_OPEN`, no name).
fn attach(program: &aya::programs::ProgramFd) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd};
    // `union bpf_attr`'s raw_tracepoint: the name (none), the program.
    let mut attr = [0u64; 2];
    attr[1] = u64::from(program.as_fd().as_raw_fd() as u32);
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN reads the 16 bytes of `attr`.
    let fd = unsafe {
        bpf(
            aya_obj::generated::bpf_cmd::BPF_RAW_TRACEPOINT_OPEN,
            &mut attr,
        )
    };
    // SAFETY: a new descriptor, ours alone.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// `bpf(command, attr)`: its result, which must not be an error.
///
/// # Safety
///
/// `attr` must be what `command` reads, and what it points to must
/// outlive the call.
unsafe fn bpf<const N: usize>(command: aya_obj::generated::bpf_cmd, attr: &mut [u64; N]) -> i64 {
    // SAFETY: as the caller promises.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    assert!(
        result >= 0,
        "bpf({command:?}): {}",
        std::io::Error::last_os_error()
    );
    result
}

/// What the TCP programs cost, measured in short blocks of `block`
/// connect()+close() with a reset: each cycle runs one block with no
/// program attached, one more with none (the control), one with the program
/// that counts failures alone (`--collector.failures.connects=false`) and
/// one with the default program, which counts connects too, in an order
/// that rotates from cycle to cycle, over `cycles` cycles. The machine's
/// speed drifts by tens of per cent over seconds, far less over a cycle's
/// tenth of a second. The programs and their maps are loaded once, and
/// attaching and detaching a link is all that changes between blocks. The
/// control gives what the method reads where there is nothing to find.
fn interleaved_cost(cycles: usize, block: usize) {
    let netns = Netns::new((10000, 60999), "");
    let server = acceptor_on(&netns, 8081);
    let programs = [
        None,
        None,
        Some(tcp_program(FAILURES_ALONE, inode_of(&netns))),
        Some(tcp_program(DEFAULT, inode_of(&netns))),
    ];
    let run = || resets(&netns, server, block);
    run();
    // Each block's time, as a logarithm of its ratio to the block without
    // a program of the same cycle. Logarithms weigh a block 10 % slower
    // and one 10 % faster alike, where a mean of ratios would lean up.
    let mut logs: [Vec<f64>; 4] = Default::default();
    for cycle in 0..cycles {
        let mut times = [0.0; 4];
        for step in 0..programs.len() {
            let arm = (cycle + step) % programs.len();
            let _link = programs[arm].as_ref().map(attach);
            times[arm] = run();
        }
        for (arm, logs) in logs.iter_mut().enumerate() {
            logs.push((times[arm] / times[0]).ln());
        }
    }
    println!(
        "connect()+close() on loopback with a reset, {cycles} cycles of a block of {block} \
         with each program and two with none, in rotating order:"
    );
    println!(
        "  {:<52} {:>9} {:>14} {:>22}",
        "", "median", "geometric mean", "95 % interval of it"
    );
    let percent = |log: f64| (log.exp() - 1.0) * 100.0;
    let connects_over_failures: Vec<f64> =
        logs[3].iter().zip(&logs[2]).map(|(c, f)| c - f).collect();
    for (name, ratios) in [
        ("failures alone vs none", &logs[2]),
        ("failures and connects (the default) vs none", &logs[3]),
        (
            "failures and connects vs failures alone",
            &connects_over_failures,
        ),
        ("none vs none (the method's own reading)", &logs[1]),
    ] {
        let (median, mean, half) = summary(ratios);
        println!(
            "  {name:<52} {:>+8.2} % {:>+13.2} % {:>+9.2} % to {:>+6.2} %",
            percent(median),
            percent(mean),
            percent(mean - half),
            percent(mean + half),
        );
    }
}

/// The median and mean of `values`, and the half-width of the mean's 95 %
/// interval (normal approximation, 1.96 standard errors).
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let count = values.len() as f64;
    let mean = values.iter().sum::<f64>() / count;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0);
    (
        median(values.to_vec()),
        mean,
        1.96 * (variance / count).sqrt(),
    )
}

/// What runs beside the measured work, in the order of `alternate`'s times.
const SETUPS: [(&str, Option<Counting>); 4] = [
    ("no program", None),
    (
        "TCP program, failures alone (…failures.connects=false)",
        Some(FAILURES_ALONE),
    ),
    ("TCP program, and connects (the default)", Some(DEFAULT)),
    (
        "and the system call exit program (…failures.autobind)",
        Some(WITH_AUTOBIND),
    ),
];

/// Runs `run` `rounds` times with each of `SETUPS`, and returns its results
/// by setup. Each round starts one setup later than the round before, so
/// that no setup always runs first. Each result is of a second run: the
/// first, after the programs were loaded or unloaded (which frees their
/// maps in the background), only warms up.
fn alternate(rounds: usize, inode: u64, mut run: impl FnMut() -> f64) -> [Vec<f64>; 4] {
    let mut times: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        for step in 0..SETUPS.len() {
            let setup = (round + step) % SETUPS.len();
            let _counter = SETUPS[setup].1.map(|counting| load(counting, &[inode]));
            run();
            times[setup].push(run());
        }
    }
    times
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The time one read of the counts takes, in microseconds (median of 21),
/// and one read of the connection names.
fn read_cost() {
    // A range of one port: one connection takes it for its destination.
    let netns = Netns::new((40000, 40000), "");
    let mut counter = load(DEFAULT, &[inode_of(&netns)]);
    let time_reads = || {
        let times: Vec<f64> = (0..21)
            .map(|_| {
                let started = Instant::now();
                counter.read().unwrap().resolve(&mut |_| None);
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        median(times)
    };
    println!("one read of the counts (median of 21):");
    let listeners: Vec<TcpListener> = netns.run(|| {
        (0..1000)
            .map(|index| TcpListener::bind(("127.0.0.1", 20000 + index)).unwrap())
            .collect()
    });
    let fail = |port: u16, count: usize| {
        netns.run(|| {
            for _ in 0..count {
                TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            }
        })
    };
    let held: Vec<TcpStream> = netns.run(|| {
        (0..1000)
            .map(|index| TcpStream::connect(("127.0.0.1", 20000 + index)).unwrap())
            .collect()
    });
    let entries = || {
        let counts = counter.read().unwrap().resolve(&mut |_| None).counts;
        counts.failures.len()
    };
    fail(20000, 10);
    let recorded = entries();
    println!("  10 failures, {recorded} entry: {:.1} µs", time_reads());
    fail(20000, 99_990);
    let recorded = entries();
    println!(
        "  100,000 failures, {recorded} entry: {:.1} µs",
        time_reads()
    );
    for port in 20001..21000 {
        fail(port, 1);
    }
    let counts = counter.read().unwrap().resolve(&mut |_| None).counts;
    println!(
        "  {} failures, {} entries: {:.1} µs",
        counts.totals.values().sum::<u64>(),
        counts.failures.len(),
        time_reads()
    );
    names_cost(&mut counter, held);
    drop(listeners);
}

/// What the connection names cost a sample, with the 1,000 held
/// connections closed (each named as its process closes it), then with the
/// map full: one sweep of the map's keys after the sample, and one look-up
/// of a socket's connection during it.
fn names_cost(counter: &mut PortFailureCounter, held: Vec<TcpStream>) {
    // Each sweep sees every name once, the first time: none is removed.
    let time_names = |counter: &mut PortFailureCounter| {
        let _ = counter.names();
        let started = Instant::now();
        counter.sweep_names(&mut |_| None).unwrap();
        started.elapsed().as_secs_f64() * 1e3
    };
    let time_lookup = |counter: &mut PortFailureCounter, netns: u64| {
        let names = counter.names();
        let mut namer = names.namer(netns, None).expect("a namer");
        let (local, remote) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let started = Instant::now();
        for _ in 0..10_000 {
            assert!(namer.name(local, remote).is_none());
        }
        started.elapsed().as_secs_f64() * 1e6 / 10_000.0
    };
    println!("the connection names:");
    drop(held);
    let time = time_names(counter);
    println!("  the 1,000 connections closed: one sweep {time:.2} ms");
    // Fill the map: connections closed first, whose names stay until the
    // map evicts them (no sampler removes them here). Four destinations,
    // so that their TIME_WAIT sockets never fill the range.
    let netns = Netns::new((10000, 60999), "");
    counter
        .sample_namespaces(&[inode_of(&netns)])
        .expect("the namespace is recorded");
    let servers: Vec<SocketAddr> = (8080..8084).map(|port| acceptor_on(&netns, port)).collect();
    netns.run(|| {
        for index in 0..NAMES as usize + 1000 {
            drop(TcpStream::connect(servers[index % servers.len()]).unwrap());
        }
    });
    let time = time_names(counter);
    let lookup = time_lookup(counter, inode_of(&netns));
    println!(
        "  with the map full ({NAMES} entries): one sweep {time:.2} ms, \
         one look-up finding nothing {lookup:.2} µs"
    );
}
