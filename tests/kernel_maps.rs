//! The kernel's records belong to the namespaces an exporter samples. An
//! exporter in namespace A names 50 TIME_WAIT sockets after the process
//! that connected them; namespace B, which it does not sample, then closes
//! 60,000 connections from 1,500 processes of distinct names. A's names,
//! its unrecorded counters and its connects stay as A's own traffic made
//! them: B's traffic takes no entry of the kernel's maps.

mod support;

use support::Place;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};

use support::{Metrics, Netns, own_comm};

/// The processes that churn in B, each of a name of its own.
const CHURNERS: usize = 1500;
/// The connections each of them opens and closes.
const CLOSES_EACH: usize = 40;
/// The ports of A that its TIME_WAIT sockets hold.
const NAMED: usize = 50;

/// Servers on 127.0.0.1 at `ports` inside `netns` that read each
/// connection to its end and then close it, so that the client's socket
/// ends in TIME_WAIT; they end with the test process.
fn serve(netns: &Netns, ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|&port| {
            let address = format!("127.0.0.1:{port}");
            let listener: TcpListener = netns
                .run(|| support::listening_socket(&address, false, 4096))
                .into();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            });
            address.parse().unwrap()
        })
        .collect()
}

/// Opens `count` connections to `server` inside `netns` and closes each
/// first, leaving it in TIME_WAIT.
///
/// Each is shut down for writing before its descriptor goes: the change
/// to FIN_WAIT1, which names the connection, then runs in this process.
/// A process that another test of this binary forks meanwhile holds a
/// copy of every descriptor until it execs or exits; where the last copy
/// went with it, a plain close would name the connection after that
/// child, which is the kernel's truth but not this test's figure.
fn close_first(netns: &Netns, server: SocketAddr, count: usize) {
    netns.run(|| {
        for _ in 0..count {
            let stream = TcpStream::connect(server).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
    });
}

/// How many TCP sockets of `netns` the kernel lists on ports `range`, as
/// `ss` shows them.
///
/// The kernel may end a connection of A's with a reset rather than in
/// TIME_WAIT (under another namespace's churn, now and then, one or two
/// of the 50): the figures A's names must match are the sockets there are.
fn sockets_on(netns: &Netns, range: std::ops::RangeInclusive<u16>) -> usize {
    let output = netns
        .command("ss")
        .args(["-tanH"])
        .output()
        .expect("ss runs");
    assert!(output.status.success(), "ss: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .nth(3)?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .filter(|port| range.contains(port))
        .count()
}

/// A child process, forked from a thread inside B: names itself `name`,
/// opens and closes `CLOSES_EACH` connections to the servers, and exits 0,
/// or 1 where a call failed. Only system calls run between the fork and
/// the exit, as a child of a process with several threads may.
///
/// # Safety
/// For a child process that was just forked: it never returns.
unsafe fn churn_child(name: &[u8; 16], servers: &[libc::sockaddr_in]) -> ! {
    // SAFETY: each call is a system call on memory prepared before the
    // fork; _exit ends the child without running the parent's destructors.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        for index in 0..CLOSES_EACH {
            let server = &servers[index % servers.len()];
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0
                || libc::connect(
                    fd,
                    std::ptr::from_ref(server).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) != 0
            {
                libc::_exit(1);
            }
            libc::close(fd);
        }
        libc::_exit(0)
    }
}

/// 60,000 connections opened and closed inside `netns` to `servers`, by
/// 1,500 processes named `churn0000` to `churn1499`, 50 at a time.
fn churn(netns: &Netns, servers: &[SocketAddr]) {
    let servers: Vec<libc::sockaddr_in> = servers
        .iter()
        .map(|server| {
            let SocketAddr::V4(server) = server else {
                unreachable!("the servers are IPv4")
            };
            // SAFETY: sockaddr_in is plain data, valid when zeroed.
            let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            address.sin_family = libc::AF_INET as libc::sa_family_t;
            address.sin_port = server.port().to_be();
            address.sin_addr.s_addr = u32::from(*server.ip()).to_be();
            address
        })
        .collect();
    let names: Vec<[u8; 16]> = (0..CHURNERS)
        .map(|index| {
            let mut name = [0u8; 16];
            let text = format!("churn{index:04}");
            name[..text.len()].copy_from_slice(text.as_bytes());
            name
        })
        .collect();
    let failed = netns.run(|| {
        let mut failed = 0;
        for batch in names.chunks(50) {
            let children: Vec<libc::pid_t> = batch
                .iter()
                .map(|name| {
                    // SAFETY: the child runs churn_child, which makes only
                    // system calls and never returns.
                    match unsafe { libc::fork() } {
                        0 => unsafe { churn_child(name, &servers) },
                        pid => {
                            assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
                            pid
                        }
                    }
                })
                .collect();
            for child in children {
                let mut status = 0;
                // SAFETY: waits for a child of this process.
                unsafe { libc::waitpid(child, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    failed += 1;
                }
            }
        }
        failed
    });
    assert_eq!(failed, 0, "churners whose connect() failed in B");
}

/// The figures of A that B's churn must leave alone, as a scrape shows
/// them, the series of A starting with `labels`.
#[derive(Debug, PartialEq)]
struct OwnFigures {
    named: Option<f64>,
    none: Option<f64>,
    connects: Option<f64>,
    failures_unrecorded: Option<f64>,
    connects_unrecorded: Option<f64>,
    names_evicted: Option<f64>,
}

impl OwnFigures {
    fn of(metrics: &Metrics, labels: &str) -> OwnFigures {
        let process = |comm: &str| {
            format!(r#"portstat_ephemeral_process_ports_used{{{labels}process="{comm}"}}"#)
        };
        // A's series of a family with no label of its own.
        let of_a = |name: &str| match labels.trim_end_matches(',') {
            "" => name.to_string(),
            labels => format!("{name}{{{labels}}}"),
        };
        OwnFigures {
            named: metrics.get(&process(&own_comm())),
            none: metrics.get(&process("none")),
            connects: metrics.get(&format!(
                r#"portstat_ephemeral_connects_total{{{labels}protocol="tcp"}}"#
            )),
            failures_unrecorded: metrics.get(&of_a("portstat_ephemeral_failures_unrecorded_total")),
            connects_unrecorded: metrics.get(&of_a("portstat_ephemeral_connects_unrecorded_total")),
            names_evicted: metrics.get("portstat_ephemeral_connection_names_evicted_total"),
        }
    }
}

/// Runs the scenario with an exporter in A started with `args`, whose
/// series of A start with `labels`.
fn another_namespace_s_churn_leaves_a_alone(args: &[&str], labels: impl Fn(&Netns) -> String) {
    support::require_bpf();
    let a = Netns::new((41000, 41999), "");
    let b = Netns::new((10000, 60999), "");
    let labels = labels(&a);
    a.write_sysctl("tcp_tw_reuse", "0");
    let a_server = serve(&a, &[8080])[0];
    let b_servers = serve(&b, &[8080, 8081, 8082, 8083]);
    let mut args = args.to_vec();
    args.extend(["--collector.interval", "300ms"]);
    let exporter = a.start_exporter(&args);
    exporter.wait_for_the_counter();

    close_first(&a, a_server, NAMED);
    let in_range = || sockets_on(&a, 41000..=41999);
    let expected = |named: usize, connects: usize| OwnFigures {
        named: Some(named as f64),
        none: None,
        connects: Some(connects as f64),
        failures_unrecorded: Some(0.0),
        connects_unrecorded: Some(0.0),
        names_evicted: Some(0.0),
    };
    exporter
        .metrics_until(|metrics| OwnFigures::of(metrics, &labels) == expected(in_range(), NAMED))
        .unwrap_or_else(|timed_out| {
            panic!(
                "A's {} TIME_WAIT named and its 50 connects counted before B churns: {:?}",
                in_range(),
                OwnFigures::of(&timed_out.last, &labels)
            )
        });
    let kept = in_range();
    assert!(
        kept >= NAMED / 2,
        "A's connections in TIME_WAIT: {kept} of {NAMED}"
    );

    churn(&b, &b_servers);
    // A sample made wholly after the churn, then A's own connects: they
    // alone move A's figures.
    let churned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let after_churn = exporter
        .metrics_until(|metrics| {
            metrics
                .get("portstat_sample_timestamp_seconds")
                .is_some_and(|sampled| sampled > churned + 0.5)
        })
        .unwrap();
    let kept = in_range();
    assert_eq!(
        OwnFigures::of(&after_churn, &labels),
        expected(kept, NAMED),
        "A's figures after B's churn, with {kept} sockets in A's range"
    );
    let held: Vec<TcpStream> = a.run(|| {
        (0..5)
            .map(|_| TcpStream::connect(a_server).unwrap())
            .collect()
    });
    exporter
        .metrics_until(|metrics| {
            OwnFigures::of(metrics, &labels).connects == Some((NAMED + 5) as f64)
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "A's connects move with A's own: {:?}",
                OwnFigures::of(&timed_out.last, &labels)
            )
        });
    // The five held are A's process's too.
    let kept = in_range();
    assert_eq!(
        OwnFigures::of(&exporter.metrics(), &labels),
        expected(kept, NAMED + 5)
    );
    drop(held);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn another_namespace_s_churn_takes_nothing_of_a_self_exporter_s() {
    another_namespace_s_churn_leaves_a_alone(&[], |_| String::new());
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn another_namespace_s_churn_takes_nothing_of_the_namespaces_sampled() {
    // Every namespace, at most one: A, the exporter's own, is kept first,
    // and B is omitted.
    another_namespace_s_churn_leaves_a_alone(
        &["--collector.netns", "all", "--collector.netns.max", "1"],
        |a| {
            use std::os::unix::fs::MetadataExt;
            let inode = std::fs::metadata(format!("/run/netns/{}", a.name()))
                .unwrap()
                .ino();
            format!(r#"netns="{inode}",netns_name="{}","#, a.name())
        },
    );
}

/// A memory cgroup of its own below the test process's, limited to
/// `limit` bytes without swap, removed when dropped (after the processes
/// in it have ended). `None`, with why, where this host has no memory
/// controller to make one in.
struct MemoryCgroup {
    path: std::path::PathBuf,
    /// cgroup v2's file names, else v1's.
    unified: bool,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Result<MemoryCgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v1 = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|controller| controller == "memory")
                .then(|| format!("/sys/fs/cgroup/memory{path}"))
        });
        let (parent, unified) = match v1 {
            Some(parent) => (parent, false),
            None => {
                let path = own
                    .lines()
                    .find_map(|line| line.strip_prefix("0::"))
                    .ok_or("no memory cgroup in /proc/self/cgroup")?;
                let parent = format!("/sys/fs/cgroup{path}");
                let enabled = std::fs::read_to_string(format!("{parent}/cgroup.subtree_control"))
                    .unwrap_or_default();
                if !enabled.split_whitespace().any(|name| name == "memory") {
                    return Err(format!("{parent} gives its children no memory controller"));
                }
                (parent, true)
            }
        };
        let path =
            std::path::PathBuf::from(parent).join(format!("portstat-test-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|error| format!("mkdir {}: {error}", path.display()))?;
        let cgroup = MemoryCgroup { path, unified };
        let limit = limit.to_string();
        if unified {
            cgroup.write("memory.max", &limit);
            cgroup.write("memory.swap.max", "0");
        } else {
            cgroup.write("memory.limit_in_bytes", &limit);
            if cgroup.path.join("memory.memsw.limit_in_bytes").exists() {
                cgroup.write("memory.memsw.limit_in_bytes", &limit);
            }
        }
        Ok(cgroup)
    }

    /// `new`, or `None` after saying why the test is skipped.
    fn or_skip(limit: u64) -> Option<MemoryCgroup> {
        MemoryCgroup::new(limit)
            .map_err(|why| println!("skipped: {why}"))
            .ok()
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.path.join(file), value)
            .unwrap_or_else(|error| panic!("writing {value} to {file}: {error}"));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// Puts the process `command` starts into the cgroup before it runs.
    fn enter(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        )
        .unwrap();
        // SAFETY: only system calls on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }

    /// How many processes of the cgroup the OOM killer killed.
    fn oom_kills(&self) -> u64 {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(file)
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most the cgroup was charged with, in bytes, where the kernel
    /// says.
    fn peak(&self) -> Option<u64> {
        let file = if self.unified {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().ok()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::remove_dir(&self.path).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// An exporter at the defaults (its own namespace, the default range,
/// connects counted and named) lives and samples in a 16 MiB memory
/// cgroup, its BPF maps charged to it, while its own namespace closes
/// 60,000 connections, more than twice its range's worth, and another
/// namespace closes 60,000: the names are asked of the kernel's map, never
/// copied whole into the exporter.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn a_default_exporter_lives_and_samples_in_16_mib_through_churn() {
    support::require_bpf();
    let Some(cgroup) = MemoryCgroup::or_skip(16 << 20) else {
        return;
    };
    let a = Netns::new((32768, 60999), "");
    let b = Netns::new((10000, 60999), "");
    let a_servers = serve(&a, &[8080, 8081, 8082, 8083]);
    let b_servers = serve(&b, &[8080, 8081, 8082, 8083]);
    let exporter = a.start_exporter_with(&[], |command| cgroup.enter(command));
    exporter.wait_for_the_counter();

    churn(&b, &b_servers);
    for server in &a_servers {
        close_first(&a, *server, 15_000);
    }
    // A sample made wholly after both churns, by an exporter the OOM
    // killer left alone.
    let churned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let metrics = loop {
        assert_eq!(
            cgroup.oom_kills(),
            0,
            "the exporter was killed for memory:\n{}",
            exporter.log()
        );
        if let Ok(response) = exporter.get("/metrics") {
            let metrics = Metrics::parse(&response.text());
            if metrics
                .get("portstat_sample_timestamp_seconds")
                .is_some_and(|sampled| sampled > churned + 0.5)
            {
                break metrics;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sample within 120 s after the churn:\n{}",
            exporter.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mib = |bytes: &str| bytes.trim().parse::<f64>().unwrap_or(0.0) / f64::from(1 << 20);
    println!(
        "the cgroup's peak: {:.1} MiB, now {:.1} MiB; kernel memory (cgroup v1) peak {:.1} MiB, now {:.1} MiB",
        cgroup.peak().unwrap_or(0) as f64 / f64::from(1 << 20),
        mib(&cgroup.read(if cgroup.unified {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        })),
        mib(&cgroup.read("memory.kmem.max_usage_in_bytes")),
        mib(&cgroup.read("memory.kmem.usage_in_bytes")),
    );
    assert_eq!(metrics.get("portstat_sample_success"), Some(1.0));
    // A's TIME_WAIT sockets are still named after the process that closed
    // them, many thousands of ports' worth.
    let named = metrics
        .get(&format!(
            r#"portstat_ephemeral_process_ports_used{{process="{}"}}"#,
            own_comm()
        ))
        .unwrap_or(0.0);
    assert!(named > 10_000.0, "{}", metrics.text);
}

/// Under a memory cgroup below what the maps need, creating them fails
/// with ENOMEM: the exporter says so, not that it lacks privileges, and
/// serves without failure counting.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn maps_the_cgroup_has_no_room_for_are_said_to_be_enomem() {
    support::require_bpf();
    let Some(cgroup) = MemoryCgroup::or_skip(8 << 20) else {
        return;
    };
    let netns = Netns::new((32768, 60999), "");
    let exporter = netns.start_exporter_with(&["--collector.interval", "300ms"], |command| {
        cgroup.enter(command)
    });
    let log = exporter.wait_for_log(
        "the kernel had no memory for the BPF maps (ENOMEM)",
        std::time::Duration::from_secs(120),
    );
    assert!(!log.contains("privileges"), "{log}");
    assert_eq!(cgroup.oom_kills(), 0, "{log}");
    let metrics = exporter.metrics();
    assert_eq!(
        metrics.get("portstat_sample_success"),
        Some(1.0),
        "{}",
        metrics.text
    );
    assert_eq!(
        metrics.get(r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#),
        None,
        "{}",
        metrics.text
    );
}

/// With too few descriptors for the programs and their maps (16), loading
/// them fails with EMFILE: the exporter says so, and how to raise the
/// limit. (So few leave it no room to sample either: only the log is
/// read.)
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn too_few_descriptors_are_said_to_be_emfile() {
    support::require_bpf();
    let netns = Netns::new((32768, 60999), "");
    let exporter = netns.spawn_exporter_with(&["--collector.interval", "300ms"], |command| {
        support::limit_descriptors(command, 16)
    });
    let log = exporter.wait_for_log(
        "the exporter ran out of file descriptors (EMFILE): raise its RLIMIT_NOFILE",
        std::time::Duration::from_secs(120),
    );
    assert!(!log.contains("privileges"), "{log}");
}
