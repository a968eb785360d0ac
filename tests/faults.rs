//! Faults while running: the kernel's files turn malformed, truncated,
//! unreadable or vanish. The exporter keeps serving the last good figures,
//! says the sample failed, warns once, and recovers.

mod support;

use support::Place;

use std::path::{Path, PathBuf};

use support::{Metrics, Recorded};

/// The procfs of a `Recorded` place, its socket tables and port range
/// replaced with the captured fixtures of `tests/fixtures/netns`; the place
/// removes it.
struct FakeProcfs {
    root: PathBuf,
}

impl FakeProcfs {
    fn new(place: &Recorded) -> FakeProcfs {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netns");
        let fake = FakeProcfs {
            root: place.procfs().to_path_buf(),
        };
        fake.restore(&fixtures);
        fake
    }

    fn restore(&self, fixtures: &Path) {
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            self.replace_with_file(
                &format!("net/{table}"),
                &std::fs::read(fixtures.join(table)).unwrap(),
            );
        }
        for name in ["ip_local_port_range", "ip_local_reserved_ports"] {
            self.replace_with_file(
                &format!("sys/net/ipv4/{name}"),
                &std::fs::read(fixtures.join(name)).unwrap(),
            );
        }
    }

    fn replace_with_file(&self, relative: &str, content: &[u8]) {
        let path = self.root.join(relative);
        // Written beside, then renamed over whatever is there (a file, a
        // symlink, a FIFO, which writing through would block on), so that
        // a sample sees the old or the new, never a part. A directory
        // cannot be renamed over: it goes first.
        let beside = path.with_extension("new");
        std::fs::write(&beside, content).unwrap();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::rename(&beside, &path).unwrap();
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn failing(metrics: &Metrics) -> bool {
    metrics.get("portstat_sample_success") == Some(0.0)
}

fn succeeding(metrics: &Metrics) -> bool {
    metrics.get("portstat_sample_success") == Some(1.0)
}

/// The figures the fixtures give, which must survive every fault.
fn assert_last_good_figures(metrics: &Metrics) {
    assert_eq!(metrics.value("portstat_ephemeral_ports_capacity"), 89.0);
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="tcp"}"#),
        12.0
    );
    assert_eq!(
        metrics.value(r#"portstat_ephemeral_ports_used{protocol="udp"}"#),
        5.0
    );
}

#[test]
fn faults_keep_the_last_good_figures_and_recover() {
    let place = Recorded::new((40000, 40099), "");
    let procfs = FakeProcfs::new(&place);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netns");
    let exporter = start_on(&place);
    let good = exporter.metrics_until(succeeding).unwrap();
    assert_last_good_figures(&good);
    let errors = r#"portstat_sample_errors_total{stage="source"}"#;
    assert_eq!(good.value(errors), 0.0);

    // Binary garbage.
    procfs.replace_with_file("net/tcp", &[0, 159, 146, 150, 255, 10, 1, 2, 3]);
    let bad = exporter.metrics_until(failing).unwrap();
    assert!(failing(&bad), "garbage was accepted");
    assert_last_good_figures(&bad);
    let stamp = bad.value("portstat_sample_timestamp_seconds");
    let first_errors = bad.value(errors);
    assert!(first_errors >= 1.0);

    // Truncated in the middle of a line.
    let text = std::fs::read_to_string(fixtures.join("tcp")).unwrap();
    procfs.replace_with_file("net/tcp", &text.as_bytes()[..text.len() / 2 + 7]);
    // Samples after the change: the error counter rises past its value then.
    let before = exporter.metrics().value(errors);
    let bad = exporter
        .metrics_until(|metrics| metrics.value(errors) > before + 1.0)
        .expect("the error counter did not rise");
    assert!(failing(&bad), "a truncated table was accepted");
    assert_eq!(bad.value("portstat_sample_timestamp_seconds"), stamp);
    assert_last_good_figures(&bad);

    // Unreadable: a directory where the file should be. net/tcp is made
    // whole again after it, so that this fault alone fails the samples.
    std::fs::remove_file(procfs.path("net/udp")).unwrap();
    std::fs::create_dir(procfs.path("net/udp")).unwrap();
    procfs.replace_with_file("net/tcp", &std::fs::read(fixtures.join("tcp")).unwrap());
    let before = exporter.metrics().value(errors);
    let bad = exporter
        .metrics_until(|metrics| metrics.value(errors) > before + 1.0)
        .expect("the error counter did not rise");
    assert!(
        failing(&bad),
        "a directory in place of net/udp was accepted"
    );
    assert_eq!(bad.value("portstat_sample_timestamp_seconds"), stamp);

    // One warning for the whole failing stretch, not one per sample.
    let warnings = exporter.log().matches("sampling failed").count();
    assert_eq!(warnings, 1, "{}", exporter.log());

    procfs.restore(&fixtures);
    let recovered = exporter.metrics_until(succeeding).unwrap();
    assert!(succeeding(&recovered), "did not recover");
    assert!(recovered.value("portstat_sample_timestamp_seconds") > stamp);
    assert_last_good_figures(&recovered);
    assert!(
        exporter.log().contains("sampling recovered"),
        "{}",
        exporter.log()
    );

    // A file that vanishes starts a new failing stretch, with its own warning.
    std::fs::remove_file(procfs.path("sys/net/ipv4/ip_local_port_range")).unwrap();
    let bad = exporter.metrics_until(failing).unwrap();
    assert!(failing(&bad));
    assert_last_good_figures(&bad);
    let log = exporter.log();
    assert_eq!(log.matches("sampling failed").count(), 2, "{log}");
    assert!(log.contains("ip_local_port_range"), "{log}");
}

/// Starts the exporter on the place's procfs, sampling every 50 ms, and
/// waits for its first good sample.
fn start_on(place: &Recorded) -> support::Exporter<'_> {
    let exporter = place.start_exporter(&["--collector.interval", "50ms"]);
    assert!(succeeding(&exporter.metrics_until(succeeding).unwrap()));
    exporter
}

/// Puts `fault` in place, checks that samples fail (and keep failing, so
/// that the sampler is not stuck) with a warning containing `message`,
/// then restores the fixtures and waits for recovery.
fn assert_refused(
    exporter: &support::Exporter,
    procfs: &FakeProcfs,
    fault: impl FnOnce(),
    message: &str,
) {
    let errors = r#"portstat_sample_errors_total{stage="source"}"#;
    let warnings = exporter.log().matches("sampling failed").count();
    fault();
    let bad = exporter.metrics_until(failing).unwrap();
    assert!(failing(&bad), "the fault was accepted: {message}");
    let first = bad.value(errors);
    let later = exporter
        .metrics_until(|metrics| metrics.value(errors) > first)
        .unwrap_or_else(|_| panic!("the sampler stopped: {message}"));
    assert_last_good_figures(&later);
    let log = exporter.log();
    assert_eq!(
        log.matches("sampling failed").count(),
        warnings + 1,
        "{log}"
    );
    let warning = log
        .lines()
        .rev()
        .find(|line| line.contains("sampling failed"))
        .unwrap();
    assert!(warning.contains(message), "{message:?} not in {warning}");
    assert!(!warning.contains("bug"), "{warning}");
    procfs.restore(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netns"));
    assert!(
        succeeding(&exporter.metrics_until(succeeding).unwrap()),
        "did not recover"
    );
}

/// A `--path.procfs` whose files are not what the kernel writes: a device
/// that never ends, a FIFO that never answers, a line with no end, a line
/// that is not a socket. Each is refused at once, naming the file and the
/// line, in memory that does not grow.
#[test]
fn crafted_files_are_refused_without_hanging_or_growing() {
    let place = Recorded::new((40000, 40099), "");
    let procfs = FakeProcfs::new(&place);
    let exporter = start_on(&place);
    // Made beside the file, then renamed over it: a sample never sees it
    // missing, which would be another fault.
    let replace_with = |relative: &str, make: &dyn Fn(&Path)| {
        let path = procfs.path(relative);
        let beside = path.with_extension("new");
        make(&beside);
        std::fs::rename(&beside, &path).unwrap();
    };

    assert_refused(
        &exporter,
        &procfs,
        || {
            replace_with("net/tcp", &|path| {
                std::os::unix::fs::symlink("/dev/zero", path).unwrap()
            })
        },
        "net/tcp: not a regular file",
    );
    assert_refused(
        &exporter,
        &procfs,
        || {
            replace_with("sys/net/ipv4/ip_local_port_range", &|path| {
                let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                // SAFETY: `path` is NUL-terminated and outlives the call.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            })
        },
        "ip_local_port_range: not a regular file",
    );
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    assert_refused(
        &exporter,
        &procfs,
        || {
            procfs.replace_with_file(
                "net/tcp",
                (header.to_string() + &"0".repeat(64 << 20)).as_bytes(),
            )
        },
        "line 2 is malformed: longer than 4096 bytes",
    );
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/netns/tcp"),
    )
    .unwrap();
    let mut lines: Vec<&str> = fixture.lines().collect();
    lines[2] = "   1: this is not a socket";
    assert_refused(
        &exporter,
        &procfs,
        || procfs.replace_with_file("net/tcp", (lines.join("\n") + "\n").as_bytes()),
        "line 3 is malformed: not a socket entry",
    );

    let peak = std::fs::read_to_string(format!("/proc/{}/status", exporter.pid()))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap();
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}
