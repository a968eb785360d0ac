//! Where a test runs exporters and clients: a network namespace of its own
//! (`Netns`, which needs root), or the host's loopback with the exporter
//! reading a recorded procfs (`Recorded`, which any user can run).

use super::*;

use std::path::Path;

/// Where a test runs its exporters and their clients.
pub trait Place: Sync {
    /// A name, unique among the places of the running tests.
    fn name(&self) -> &str;

    /// A command that runs in the place.
    fn command(&self, program: &str) -> Command;

    /// The exporter under test, with the flags that make it read the place.
    fn exporter_command(&self) -> Command;

    /// `portstat_exporter inspect`, with the flags that make it read the
    /// place.
    fn inspect_command(&self) -> Command;

    /// Where an exporter listens unless told otherwise; port 0 when the
    /// kernel picks it, and the exporter's log says which.
    fn listen_address(&self) -> SocketAddr;

    /// A connection from the place to `address`, from a port that does not
    /// change the figures.
    fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream>;

    /// Runs `portstat_exporter --once` in the place.
    fn once(&self, args: &[&str]) -> Output {
        self.exporter_command()
            .arg("--once")
            .args(args)
            .output_within()
            .expect("cannot run the exporter")
    }

    /// Runs `portstat_exporter inspect` with `args` in the place;
    /// fails the test unless it succeeds. Returns its standard output.
    fn inspect(&self, args: &[&str]) -> String {
        let output = self
            .inspect_command()
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
    fn once_metrics(&self, args: &[&str]) -> Metrics {
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
    fn once_until(
        &self,
        args: &[&str],
        done: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics, TimedOut>
    where
        Self: Sized,
    {
        poll_until(|| self.once_metrics(args), done)
    }

    /// Starts the exporter in the place, listening on its
    /// `listen_address`, and waits until it is ready.
    fn start_exporter(&self, args: &[&str]) -> Exporter<'_>
    where
        Self: Sized,
    {
        self.start_exporter_with(args, |_| {})
    }

    /// `start_exporter`, with `prepare` applied to its command first.
    fn start_exporter_with(&self, args: &[&str], prepare: impl FnOnce(&mut Command)) -> Exporter<'_>
    where
        Self: Sized,
    {
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

    /// Starts the exporter in the place without waiting for it to be ready
    /// (where it listens on port 0, until it logged the port bound).
    fn spawn_exporter(&self, args: &[&str]) -> Exporter<'_>
    where
        Self: Sized,
    {
        self.spawn_exporter_with(args, |_| {})
    }

    /// `spawn_exporter`, with `prepare` applied to its command first.
    fn spawn_exporter_with(&self, args: &[&str], prepare: impl FnOnce(&mut Command)) -> Exporter<'_>
    where
        Self: Sized,
    {
        static LOGS: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "{}-exporter-{}.log",
            self.name(),
            LOGS.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = File::create(&log).expect("cannot create the exporter's log");
        let listen = self.listen_address();
        let mut command = self.exporter_command();
        command
            .args(["--web.listen-address", &listen.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file);
        prepare(&mut command);
        let child = command.spawn().expect("cannot start the exporter");
        let mut exporter = Exporter {
            child,
            place: self,
            address: listen,
            log,
        };
        if listen.port() == 0 {
            exporter.address = exporter.logged_address().unwrap_or(listen);
        }
        exporter
    }

    /// GET `path` from `address`, from the place.
    fn http_get(&self, address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
        let stream = self.connect(address)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        read_response(stream, &request, false)
    }
}

/// The host's loopback, with the exporter reading a copy of the procfs
/// recorded in `tests/fixtures/procfs/host` (`record.sh` there): 3 TCP
/// connections to a listener on 8080, one in TIME_WAIT, a listener on
/// 40050 and a UDP socket. The exporter reads nothing else of the host
/// (no owners, NAT or failure counter), so a test sees the same figures as
/// any user.
pub struct Recorded {
    name: String,
    procfs: PathBuf,
}

impl Recorded {
    /// A copy of the recorded procfs with the given ephemeral range and
    /// reserved ports (`ip_local_reserved_ports` syntax, may be empty).
    pub fn new(range: (u16, u16), reserved: &str) -> Recorded {
        raise_descriptor_limit();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portstat-recorded-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let procfs = std::env::temp_dir().join(&name);
        let recorded = Recorded { name, procfs };
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procfs/host"),
            &recorded.procfs,
        );
        recorded.write_sysctl("ip_local_port_range", &format!("{} {}", range.0, range.1));
        recorded.write_sysctl("ip_local_reserved_ports", reserved);
        recorded
    }

    /// The procfs the exporter reads.
    pub fn procfs(&self) -> &Path {
        &self.procfs
    }

    /// Writes `net.ipv4.<name>` in the recorded procfs.
    pub fn write_sysctl(&self, name: &str, value: &str) {
        std::fs::write(
            self.procfs.join("sys/net/ipv4").join(name),
            format!("{value}\n"),
        )
        .expect("cannot write the recorded sysctl");
    }

    /// The flags, of the exporter and of `inspect` alike, that make it read
    /// the recorded procfs and nothing else of the host.
    fn reading_flags(&self) -> [&str; 6] {
        [
            "--collector.source",
            "procfs",
            "--path.procfs",
            self.procfs.to_str().expect("a UTF-8 temporary directory"),
            "--collector.processes=false",
            "--collector.nat=false",
        ]
    }

    /// Runs `work` (as `Netns::run` does, where it runs inside the namespace).
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        work()
    }
}

impl Place for Recorded {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, program: &str) -> Command {
        Command::new(program)
    }

    fn exporter_command(&self) -> Command {
        let mut command = Command::new(exporter());
        command
            .args(self.reading_flags())
            .arg("--collector.failures=false");
        command
    }

    fn inspect_command(&self) -> Command {
        let mut command = Command::new(exporter());
        command.arg("inspect").args(self.reading_flags());
        command
    }

    fn listen_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&address, Duration::from_secs(2))
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.procfs);
    }
}

/// Raises the soft limit on open files to the hard one, for this process
/// and the exporters it starts: an ordinary user's session often starts at
/// 1,024 (pam_limits), below what the attack tests open, where root's runs
/// at the hard limit.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` outlives both calls, which only read or write it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("cannot create the recorded procfs");
    for entry in std::fs::read_dir(from).expect("the recorded procfs") {
        let entry = entry.expect("the recorded procfs");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("cannot copy the recorded procfs");
        }
    }
}
