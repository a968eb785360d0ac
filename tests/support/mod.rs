//! The integration-test harness: network namespaces and exporter processes
//! owned by guards whose `Drop` tears them down, so that a failing assertion
//! leaves nothing behind.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The exporter binary under test: the one this test binary was built
/// with, or `PORTSTAT_TEST_EXPORTER` where set (the kernel matrix runs a
/// release build inside its guests, where a debug build's 90 MB take
/// seconds to load over 9p at every run).
pub fn exporter() -> &'static str {
    static EXPORTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXPORTER.get_or_init(|| {
        std::env::var("PORTSTAT_TEST_EXPORTER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_portstat_exporter").to_string())
    })
}

/// How long the harness waits for an exporter to be ready, or for a
/// condition on `--once` runs: far longer than a start takes, even on a
/// loaded machine, so that only an exporter that will not start fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a command the tests run to its end may take before it is
/// killed and the test fails with what it wrote: far longer than any takes
/// on a loaded machine, so that only one that hangs fails.
pub const OUTPUT_DEADLINE: Duration = Duration::from_secs(300);

/// `Command::output`, bounded: a command that has not exited within
/// `OUTPUT_DEADLINE` is killed, and the test fails with what it wrote.
pub trait OutputWithin {
    /// Runs the command to its end, reading its output, within
    /// `OUTPUT_DEADLINE`.
    fn output_within(&mut self) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::io::Result<Output> {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = read(
            child
                .stdout
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        );
        let stderr = read(
            child
                .stderr
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + OUTPUT_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{self:?} did not end within {OUTPUT_DEADLINE:?}; it wrote:\n{}\n{}",
                    String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                    String::from_utf8_lossy(&stderr.join().unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

/// A condition that did not hold within its deadline: how long was waited,
/// and the last metrics seen.
pub struct TimedOut {
    pub waited: Duration,
    pub last: Metrics,
}

impl std::fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the condition did not hold within {:?}; the last metrics:\n{}",
            self.waited, self.last.text
        )
    }
}

/// Takes metrics with `sample` until `done` holds for them; `Err` with the
/// last when it did not within `READY_DEADLINE`.
fn poll_until(
    mut sample: impl FnMut() -> Metrics,
    done: impl Fn(&Metrics) -> bool,
) -> Result<Metrics, TimedOut> {
    let started = Instant::now();
    loop {
        let metrics = sample();
        if done(&metrics) {
            return Ok(metrics);
        }
        if started.elapsed() > READY_DEADLINE {
            return Err(TimedOut {
                waited: started.elapsed(),
                last: metrics,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the suite runs as if the kernel refused BPF
/// (`PORTSTAT_TEST_REFUSE_BPF=1`): every exporter the harness starts in a
/// namespace has `bpf()` refused by seccomp, as on a kernel or in a
/// container that refuses it. The tests that are not about BPF then pass,
/// and those that are fail at `require_bpf`, naming why.
pub fn refusing_bpf() -> bool {
    std::env::var_os("PORTSTAT_TEST_REFUSE_BPF")
        .is_some_and(|value| !value.is_empty() && value != "0")
}

/// Fails the test, with the reason, where the BPF source cannot run here:
/// for the tests about BPF, whose figures mean nothing without it. The
/// reason is what `--collector.source bpf` says when it fails (the
/// verifier's, where it refused a program), found once a test binary.
pub fn require_bpf() {
    static REFUSAL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let refusal = REFUSAL.get_or_init(|| {
        let mut command = Command::new(exporter());
        command.args([
            "--once",
            "--collector.source",
            "bpf",
            "--collector.processes=false",
            "--log.level",
            "warn",
        ]);
        if refusing_bpf() {
            refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
        }
        let output = command.output_within().expect("cannot run the exporter");
        let refused = refusing_bpf().then(|| "PORTSTAT_TEST_REFUSE_BPF is set".to_string());
        (!output.status.success()).then(|| {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            match refused {
                Some(switch) => format!("{switch}: {stderr}"),
                None => stderr,
            }
        })
    });
    if let Some(reason) = refusal {
        panic!("this test needs the BPF source, which cannot run here: {reason}");
    }
}

/// Whether the running kernel reports TCP sockets bound but neither
/// listening nor connected over netlink (Linux 6.5 and later): before, a
/// netlink source does not see them.
pub fn netlink_reports_bound_inactive() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    portstat_core::rules::KernelVersion::parse(&release)
        .expect("a kernel release")
        .inet_diag_reports_bound_inactive()
}

/// Fails the test loudly unless it can create network namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "these tests create network namespaces and must run as root"
    );
}

/// A network namespace of the test's own, deleted on drop.
pub struct Netns {
    name: String,
    handle: File,
    next_client_port: AtomicU16,
}

impl Netns {
    /// A new namespace with loopback up and the given ephemeral range and
    /// reserved ports (`ip_local_reserved_ports` syntax, may be empty).
    pub fn new(range: (u16, u16), reserved: &str) -> Netns {
        require_root();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portstat-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard owns the namespace, even if setup fails.
        let handle = File::open(format!("/run/netns/{name}"));
        let netns = Netns {
            name: name.clone(),
            handle: match handle {
                Ok(handle) => handle,
                Err(error) => {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                    panic!("cannot open /run/netns/{name}: {error}");
                }
            },
            next_client_port: AtomicU16::new(20000),
        };
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        netns.set_range(range);
        netns.set_reserved(reserved);
        netns
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode, as `--collector.netns=all` labels it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.handle.metadata().expect("the namespace's inode").ino()
    }

    /// Sets `ip_local_port_range` inside the namespace.
    pub fn set_range(&self, (start, end): (u16, u16)) {
        self.write_sysctl("ip_local_port_range", &format!("{start} {end}"));
    }

    /// Sets `ip_local_reserved_ports` inside the namespace.
    pub fn set_reserved(&self, reserved: &str) {
        let reserved = if reserved.is_empty() { "\n" } else { reserved };
        self.write_sysctl("ip_local_reserved_ports", reserved);
    }

    /// Writes `/proc/sys/net/ipv4/NAME` inside the namespace.
    pub fn write_sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/net/ipv4/{name}");
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|error| panic!("cannot write {path}: {error}"));
    }

    /// Runs `work` on a thread that has entered the namespace: sockets it
    /// creates belong to the namespace, whichever thread uses them later.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: fd is a namespace file that self keeps open; setns
                    // changes only this thread, which ends with the scope.
                    let result = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                    assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .expect("the namespace thread panicked")
        })
    }

    /// A command that runs inside the namespace; with
    /// `PORTSTAT_TEST_REFUSE_BPF` set, `bpf()` is refused to it.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let fd = self.handle.as_raw_fd();
        // SAFETY: setns is async-signal-safe, and fd stays open in the child
        // until exec (close-on-exec closes it then).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if refusing_bpf() {
            refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
        }
        command
    }

    /// The exporter inside the namespace as `nobody`, without any
    /// capability (setpriv, from util-linux), with `args`.
    pub fn unprivileged_exporter(&self, args: &[&str]) -> Command {
        let mut command = self.command("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                exporter(),
            ])
            .args(args);
        command
    }

    /// Runs `portstat_exporter --once` inside the namespace.
    pub fn once(&self, args: &[&str]) -> Output {
        self.command(exporter())
            .arg("--once")
            .args(args)
            .output_within()
            .expect("cannot run the exporter")
    }

    /// Runs `portstat_exporter inspect` with `args` inside the namespace;
    /// fails the test unless it succeeds. Returns its standard output.
    pub fn inspect(&self, args: &[&str]) -> String {
        let output = self
            .command(exporter())
            .arg("inspect")
            .args(args)
            .output_within()
            .expect("cannot run the exporter");
        assert!(
            output.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("inspect writes UTF-8")
    }

    /// The metrics of one `--once` run with `args`, which must succeed.
    pub fn once_metrics(&self, args: &[&str]) -> Metrics {
        let output = self.once(args);
        assert!(
            output.status.success(),
            "--once failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Metrics::parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// Runs `--once` with `args` until `done` holds for its metrics;
    /// `Err` with the last metrics when it did not within
    /// `READY_DEADLINE`.
    pub fn once_until(
        &self,
        args: &[&str],
        done: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics, TimedOut> {
        poll_until(|| self.once_metrics(args), done)
    }

    /// Starts the exporter inside the namespace, listening on 127.0.0.1:10042
    /// there, and waits until it is ready.
    pub fn start_exporter(&self, args: &[&str]) -> Exporter<'_> {
        self.start_exporter_with(args, |_| {})
    }

    /// `start_exporter`, with `prepare` applied to its command first.
    pub fn start_exporter_with(
        &self,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Exporter<'_> {
        let mut exporter = self.spawn_exporter_with(args, prepare);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if exporter
                .get("/-/ready")
                .is_ok_and(|response| response.status == 200)
            {
                return exporter;
            }
            if let Ok(Some(status)) = exporter.child.try_wait() {
                panic!(
                    "the exporter exited ({status}) before it was ready; it logged:\n{}",
                    exporter.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the exporter did not become ready within {READY_DEADLINE:?}; it logged:\n{}",
                exporter.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the exporter inside the namespace without waiting for it.
    pub fn spawn_exporter(&self, args: &[&str]) -> Exporter<'_> {
        self.spawn_exporter_with(args, |_| {})
    }

    /// `spawn_exporter`, with `prepare` applied to its command first.
    pub fn spawn_exporter_with(
        &self,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Exporter<'_> {
        let log = std::env::temp_dir().join(format!("{}-{}.log", self.name, self.next_port()));
        let log_file = File::create(&log).expect("cannot create the exporter's log");
        let mut command = self.command(exporter());
        command
            .args(["--web.listen-address", "127.0.0.1:10042"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file);
        prepare(&mut command);
        let child = command.spawn().expect("cannot start the exporter");
        Exporter {
            child,
            netns: self,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 10042)),
            log,
        }
    }

    /// GET `path` from `address`, from inside the namespace.
    pub fn http_get(&self, address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
        let stream = self.connect(address)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        read_response(stream, &request, false)
    }

    /// A connection from inside the namespace to `address`, from a local
    /// port outside the test's range so that it does not change the figures.
    pub fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        let local = if address.is_ipv4() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.next_port()))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.next_port()))
        };
        self.run(move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(address),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&address.into(), Duration::from_secs(2))?;
            Ok(socket.into())
        })
    }

    /// A local port outside any test range, for the harness's own clients.
    fn next_port(&self) -> u16 {
        self.next_client_port.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An exporter process, killed on drop.
pub struct Exporter<'a> {
    child: Child,
    netns: &'a Netns,
    address: SocketAddr,
    log: PathBuf,
}

/// An HTTP response as the harness's client read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl Exporter<'_> {
    /// The exporter's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address it serves on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends `signal` to the exporter.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Whether the exporter has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the exporter logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, `limit` at most, until the exporter has logged `text`;
    /// returns its log.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the exporter never logged {text:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        self.request("GET", path, &[])
    }

    /// The parsed metrics of one scrape.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics").expect("scrape failed");
        assert_eq!(response.status, 200, "scrape answered {}", response.status);
        Metrics::parse(&response.text())
    }

    /// Waits until the exporter's failure counter is loaded: the programs
    /// load in the background, after the exporter is ready.
    pub fn wait_for_the_counter(&self) {
        self.metrics_until(|metrics| {
            metrics.get(r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#)
                == Some(1.0)
        })
        .unwrap_or_else(|timed_out| panic!("the failure counter loaded: {timed_out:?}"));
    }

    /// Waits until the exporter, with `--collector.netns=all`, samples each
    /// of `namespaces`: the kernel records a namespace's connects, failures
    /// and closes from the sample that first finds it.
    pub fn wait_until_sampled(&self, namespaces: &[&Netns]) {
        let series: Vec<String> = namespaces
            .iter()
            .map(|netns| {
                format!(
                    r#"portstat_ephemeral_range_start{{netns="{}",netns_name="{}"}}"#,
                    netns.inode(),
                    netns.name()
                )
            })
            .collect();
        self.metrics_until(|metrics| series.iter().all(|series| metrics.get(series).is_some()))
            .unwrap_or_else(|timed_out| panic!("the namespaces sampled: {timed_out:?}"));
    }

    /// Scrapes until `done` holds for the metrics; `Err` with the last
    /// metrics when it did not within `READY_DEADLINE`.
    pub fn metrics_until(&self, done: impl Fn(&Metrics) -> bool) -> Result<Metrics, TimedOut> {
        poll_until(|| self.metrics(), done)
    }

    /// Sends one HTTP/1.1 request from inside the namespace, from a local port
    /// outside the test's range so that it does not change the figures.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<HttpResponse> {
        let stream = self.netns.connect(self.address)?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        read_response(stream, &request, method == "HEAD")
    }

    /// GET `path` from another address the exporter listens on.
    pub fn get_at(&self, address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
        self.netns.http_get(address, path)
    }

    /// A connection from inside the namespace to `address`.
    pub fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        self.netns.connect(address)
    }

    /// Sends SIGTERM and waits for the exit status, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(limit)
    }

    /// Waits for the process to exit by itself, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Exporter<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn read_response(
    mut stream: TcpStream,
    request: &str,
    head: bool,
) -> std::io::Result<HttpResponse> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head {
        assert!(body.is_empty(), "a HEAD answer carried a body");
    }
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// One exposition, as series text (`name{labels}`) to value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub series: BTreeMap<String, f64>,
    pub text: String,
}

impl Metrics {
    /// Parses the Prometheus text format.
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line");
                (series.to_string(), value.parse().expect("a sample value"))
            })
            .collect();
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// The value of one series, written as the exporter writes it, such as
    /// `portstat_ephemeral_ports_used{protocol="tcp"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// The value of one series; fails the test when it is absent.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// Every series of one family.
    pub fn family(&self, name: &str) -> BTreeMap<String, f64> {
        self.series
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name || series.starts_with(&format!("{name}{{"))
            })
            .map(|(series, value)| (series.clone(), *value))
            .collect()
    }
}

/// Runs a setup command and fails the test if it fails.
pub fn run(command: &mut Command) {
    let output = command.output_within().expect("cannot run a setup command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP socket bound to `address` (port 0: the kernel picks one from the
/// ephemeral range), neither listening nor connected.
pub fn bound_socket(address: &str, reuse_port: bool) -> socket2::Socket {
    let address: SocketAddr = address.parse().expect("a socket address");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )
    .expect("a TCP socket");
    socket.set_reuse_port(reuse_port).expect("SO_REUSEPORT");
    socket.bind(&address.into()).expect("bind");
    socket
}

/// A TCP listener on `address` with room for `backlog` connections not yet
/// accepted.
pub fn listening_socket(address: &str, reuse_port: bool, backlog: i32) -> socket2::Socket {
    let socket = bound_socket(address, reuse_port);
    socket.listen(backlog).expect("listen");
    socket
}

/// The `comm` of this test process, as the exporter reports owners.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("cannot read /proc/self/comm")
        .trim_end()
        .to_string()
}

/// A seccomp filter's statement: `code` with operand `k`.
fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A seccomp filter's jump: past `jt` statements when the accumulator is
/// `k`, past `jf` when not.
fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// A filter statement that loads a word of `struct seccomp_data`.
const FILTER_LOAD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
/// A filter statement that returns a verdict.
const FILTER_RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Installs a seccomp filter in `command`'s process that fails the system
/// call `number` with `errno`; with `first_argument`, only calls whose first
/// argument is that value.
pub fn refuse_syscall(
    command: &mut Command,
    number: libc::c_long,
    first_argument: Option<u32>,
    errno: i32,
) {
    let (load, ret) = (FILTER_LOAD, FILTER_RETURN);
    let allow = statement(ret, libc::SECCOMP_RET_ALLOW);
    let refuse = statement(ret, libc::SECCOMP_RET_ERRNO | errno as u32);
    // struct seccomp_data: nr at 0, arch at 4, args at 16.
    let mut program = vec![
        statement(load, 4),
        jump(0xc000_003e, 1, 0), // AUDIT_ARCH_X86_64
        allow,
        statement(load, 0),
    ];
    match first_argument {
        Some(argument) => program.extend([
            jump(number as u32, 0, 3),
            statement(load, 16),
            jump(argument, 0, 1),
            refuse,
            allow,
        ]),
        None => program.extend([jump(number as u32, 0, 1), refuse, allow]),
    }
    // SAFETY: prctl is async-signal-safe, and the program, built before the
    // fork, lives in the closure for the call.
    unsafe {
        command.pre_exec(move || {
            let filter = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &filter as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptor the process of a `hold_syscall` command keeps its
/// seccomp listener at, for the test to take (`pidfd_getfd`).
const HELD_CALLS_FD: i32 = 900;

/// Makes every `number` system call of `command`'s process wait in the
/// kernel until the test lets it go (seccomp's user notification): a fixed
/// point in the process's start, whatever the machine's load. Take the
/// calls with `HeldCalls::of` once it is spawned.
pub fn hold_syscall(command: &mut Command, number: libc::c_long) {
    let (load, ret) = (FILTER_LOAD, FILTER_RETURN);
    let program = [
        statement(load, 4),
        jump(0xc000_003e, 1, 0), // AUDIT_ARCH_X86_64
        statement(ret, libc::SECCOMP_RET_ALLOW),
        statement(load, 0),
        jump(number as u32, 0, 1),
        statement(ret, libc::SECCOMP_RET_USER_NOTIF),
        statement(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl, syscall and dup2 are async-signal-safe, and the
    // program, built before the fork, lives in the closure for the call.
    unsafe {
        command.pre_exec(move || {
            let filter = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let listener = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &filter as *const libc::sock_fprog,
            );
            // The copy survives exec (dup2 clears close-on-exec).
            if listener < 0 || libc::dup2(listener as i32, HELD_CALLS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The system calls `hold_syscall` holds in a process.
pub struct HeldCalls(std::os::fd::OwnedFd);

impl HeldCalls {
    /// Takes the held calls of process `pid`, spawned with `hold_syscall`.
    pub fn of(pid: u32) -> HeldCalls {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system calls; the descriptors returned are ours.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            assert!(
                pidfd >= 0,
                "pidfd_open: {}",
                std::io::Error::last_os_error()
            );
            let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd as i32);
            let listener =
                libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), HELD_CALLS_FD, 0);
            assert!(
                listener >= 0,
                "pidfd_getfd: {}",
                std::io::Error::last_os_error()
            );
            HeldCalls(std::os::fd::OwnedFd::from_raw_fd(listener as i32))
        }
    }

    /// Waits for the next held call; its id, to let it go with.
    pub fn next(&self) -> std::io::Result<u64> {
        // SAFETY: an all-zero seccomp_notif is valid, and the kernel fills it.
        let mut notification: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener is ours; the struct outlives the call.
        if unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut notification,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(notification.id)
    }

    /// Lets the held call `id` go on as if it had not been held. A call a
    /// signal interrupted meanwhile is gone: it is held again when the
    /// process makes it again.
    pub fn release(&self, id: u64) {
        let mut response = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: the listener is ours; the struct outlives the call.
        unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut response,
            )
        };
    }

    /// Lets every call from now on go, on a thread that ends with the
    /// process.
    pub fn release_all(self) {
        std::thread::spawn(move || {
            while let Ok(id) = self.next() {
                self.release(id);
            }
        });
    }
}

/// Makes `command` fail to open netlink sockets with `errno`, as a seccomp
/// policy or a kernel without netlink would.
pub fn refuse_netlink(command: &mut Command, errno: i32) {
    refuse_syscall(
        command,
        libc::SYS_socket,
        Some(libc::AF_NETLINK as u32),
        errno,
    );
}

/// Starts `command` with at most `descriptors` open files, soft and hard,
/// as `ulimit -n` would.
pub fn limit_descriptors(command: &mut Command, descriptors: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: descriptors,
                rlim_max: descriptors,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A Python script run inside a namespace, started once it printed
/// `ready`; it is told to end by the close of its standard input, and ended
/// on drop.
pub struct ReadyScript(Child);

impl ReadyScript {
    pub fn start(netns: &Netns, script: &str, args: &[&str]) -> ReadyScript {
        let mut child = netns
            .command("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        ReadyScript(child)
    }
}

impl Drop for ReadyScript {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        // A script given a moment to end on its own ends what it started.
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python3 process inside a namespace, named `comm` (raw bytes, which the
/// kernel cuts at 15), listening on 127.0.0.1:`port`; ended on drop.
pub struct NamedListener(#[allow(dead_code)] ReadyScript);

impl NamedListener {
    pub fn start(netns: &Netns, comm: &[u8], port: u16) -> NamedListener {
        let hex: String = comm.iter().map(|byte| format!("{byte:02x}")).collect();
        NamedListener(ReadyScript::start(
            netns,
            "import ctypes,socket,sys\n\
             ctypes.CDLL(None).prctl(15,ctypes.c_char_p(bytes.fromhex(sys.argv[1])),0,0,0)\n\
             s=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[2])))\ns.listen()\n\
             print('ready',flush=True)\nsys.stdin.read()",
            &[&hex, &port.to_string()],
        ))
    }
}

/// Three namespaces joined by two links: a client with 11 addresses
/// (10.77.1.2 to .12, and fd77:1::2) routed through a router (10.77.1.1,
/// 10.77.2.1; fd77:1::1, fd77:2::1) that masquerades TCP and UDP leaving for
/// the server (10.77.2.2, fd77:2::2) to its own address and the ports
/// `nat_ports`, over IPv4 and IPv6, as a NAT gateway or a Kubernetes node
/// does. The server listens on TCP port 8080 and UDP port 53. Every
/// namespace is deleted on drop, which takes the links with it.
pub struct NatLab {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    /// The server's sockets, open as long as the lab.
    _listeners: (socket2::Socket, socket2::Socket, std::net::UdpSocket),
}

impl NatLab {
    /// The router's address toward the server: the NAT address.
    pub const NAT_ADDRESS: &'static str = "10.77.2.1";
    /// The server's address.
    pub const SERVER: &'static str = "10.77.2.2";
    /// The router's IPv6 address toward the server.
    pub const NAT_ADDRESS_V6: &'static str = "fd77:2::1";
    /// The server's IPv6 address.
    pub const SERVER_V6: &'static str = "fd77:2::2";

    /// The lab, masquerading to the ports `nat_ports` (`--to-ports`).
    pub fn new(nat_ports: (u16, u16)) -> NatLab {
        let range = (40000, 40999);
        let client = Netns::new(range, "");
        let router = Netns::new(range, "");
        let server = Netns::new(range, "");
        let (c, r, s) = (client.name(), router.name(), server.name());
        let ip = |line: String| run(Command::new("ip").args(line.split_whitespace()));
        ip(format!(
            "link add nat-c0 netns {c} type veth peer name nat-r0 netns {r}"
        ));
        ip(format!(
            "link add nat-r1 netns {r} type veth peer name nat-s0 netns {s}"
        ));
        for (netns, link) in [(c, "nat-c0"), (r, "nat-r0"), (r, "nat-r1"), (s, "nat-s0")] {
            ip(format!("-n {netns} link set {link} up"));
        }
        for host in 2..=12 {
            ip(format!("-n {c} addr add 10.77.1.{host}/24 dev nat-c0"));
        }
        // nodad: the addresses are usable at once, not after duplicate
        // address detection.
        for (netns, address, link) in [
            (r, "10.77.1.1/24", "nat-r0"),
            (r, "10.77.2.1/24", "nat-r1"),
            (s, "10.77.2.2/24", "nat-s0"),
            (c, "fd77:1::2/64 nodad", "nat-c0"),
            (r, "fd77:1::1/64 nodad", "nat-r0"),
            (r, "fd77:2::1/64 nodad", "nat-r1"),
            (s, "fd77:2::2/64 nodad", "nat-s0"),
        ] {
            ip(format!("-n {netns} addr add {address} dev {link}"));
        }
        for (netns, gateway) in [
            (c, "10.77.1.1"),
            (s, "10.77.2.1"),
            (c, "fd77:1::1"),
            (s, "fd77:2::1"),
        ] {
            ip(format!("-n {netns} route add default via {gateway}"));
        }
        router.write_sysctl("ip_forward", "1");
        router
            .run(|| std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1"))
            .expect("cannot turn IPv6 forwarding on");
        let to_ports = format!("{}-{}", nat_ports.0, nat_ports.1);
        for tables in ["iptables", "ip6tables"] {
            for protocol in ["tcp", "udp"] {
                let rule = format!(
                    "-t nat -A POSTROUTING -o nat-r1 -p {protocol} -j MASQUERADE --to-ports {to_ports}"
                );
                run(router.command(tables).args(rule.split_whitespace()));
            }
        }
        let listeners = server.run(|| {
            (
                listening_socket("10.77.2.2:8080", false, 1024),
                listening_socket("[fd77:2::2]:8080", false, 1024),
                std::net::UdpSocket::bind("10.77.2.2:53").expect("bind UDP 53"),
            )
        });
        NatLab {
            client,
            router,
            server,
            _listeners: listeners,
        }
    }

    /// A TCP connection over IPv6 from the client's fd77:1::2 to the
    /// server's port 8080, given a second for its handshake.
    pub fn connect_v6(&self) -> std::io::Result<TcpStream> {
        let server: SocketAddr = format!("[{}]:8080", Self::SERVER_V6).parse().unwrap();
        self.client
            .run(move || TcpStream::connect_timeout(&server, Duration::from_secs(1)))
    }

    /// A TCP connection from the client's address `10.77.1.(2 + n % 11)` to
    /// the server's port 8080, given a second for its handshake.
    pub fn connect(&self, n: usize) -> std::io::Result<TcpStream> {
        let local: SocketAddr = format!("10.77.1.{}:0", 2 + n % 11).parse().unwrap();
        let server: SocketAddr = format!("{}:8080", Self::SERVER).parse().unwrap();
        self.client.run(move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&server.into(), Duration::from_secs(1))?;
            Ok(socket.into())
        })
    }

    /// A DNS-sized UDP datagram from a new client socket to the server's
    /// port 53: one more UDP conntrack entry. The socket is returned so
    /// that its port stays the client's.
    pub fn send_udp(&self) -> std::net::UdpSocket {
        let server: SocketAddr = format!("{}:53", Self::SERVER).parse().unwrap();
        self.client.run(move || {
            let socket = std::net::UdpSocket::bind("10.77.1.2:0").expect("bind UDP");
            socket.send_to(&[0; 32], server).expect("send UDP");
            socket
        })
    }

    /// The router's conntrack entries of `protocol` to the server's `port`,
    /// as `conntrack -L` lists them.
    pub fn conntrack_entries(&self, protocol: &str, port: u16) -> usize {
        let output = self
            .router
            .command("conntrack")
            .args(["-L", "-p", protocol, "--dport", &port.to_string()])
            .output_within()
            .expect("conntrack is needed (Debian package conntrack); .ci/run installs it");
        assert!(
            output.status.success(),
            "conntrack -L: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).lines().count()
    }
}

/// Sends `request` on `socket` and records the datagrams of the dump that
/// answers it, each after its length as a little-endian u32: the format of
/// the recorded fixtures under `src/source/*/fixtures/`.
pub fn record_dump(
    socket: &portstat_exporter::source::netlink::socket::NetlinkSocket,
    request: &[u8],
) -> Vec<u8> {
    socket.send(request).unwrap();
    let mut buffer = Vec::with_capacity(32 * 1024);
    let mut file = Vec::new();
    loop {
        let length = socket.receive(&mut buffer).unwrap();
        assert!(length <= buffer.len(), "a datagram overflowed");
        file.extend_from_slice(&(length as u32).to_le_bytes());
        file.extend_from_slice(&buffer[..length]);
        // NLMSG_DONE (3) ends the dump; it comes last in its datagram.
        let mut at = 0;
        let mut done = false;
        while at + 16 <= length {
            let message = u32::from_ne_bytes(buffer[at..at + 4].try_into().unwrap());
            assert!(message >= 16, "a message shorter than its header");
            done |= u16::from_ne_bytes(buffer[at + 4..at + 6].try_into().unwrap()) == 3;
            at += (message as usize + 3) & !3;
        }
        if done {
            return file;
        }
    }
}
