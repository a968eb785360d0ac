//! The integration-test harness: network namespaces and exporter processes
//! owned by guards whose `Drop` tears them down, so that a failing assertion
//! leaves nothing behind.
//!
//! This file holds what every part shares (the binary under test, the
//! deadlines, waiting on a condition, the privileges a test needs); each
//! part is a module of its own, re-exported here:
//! - `place`: where a test runs exporters (`Place`): a namespace of its own,
//!   or the host's loopback with a recorded procfs (`Recorded`, no root);
//! - `netns`: a namespace of the test's own, and what runs inside it;
//! - `exporter`: an exporter process in a place, and the HTTP client;
//! - `metrics`: an exposition parsed into series;
//! - `sockets`: setup commands and sockets in a given state;
//! - `seccomp`: system calls made to fail or wait, descriptor limits;
//! - `scripts`: Python processes inside a namespace;
//! - `nat_lab`: three namespaces, the middle one masquerading;
//! - `dumps`: netlink dumps recorded as fixtures.

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

mod dumps;
mod exporter;
mod metrics;
mod nat_lab;
mod netns;
mod place;
mod scripts;
mod seccomp;
mod sockets;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use dumps::*;
#[allow(unused_imports)]
pub use exporter::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use nat_lab::*;
#[allow(unused_imports)]
pub use netns::*;
#[allow(unused_imports)]
pub use place::*;
#[allow(unused_imports)]
pub use scripts::*;
#[allow(unused_imports)]
pub use seccomp::*;
#[allow(unused_imports)]
pub use sockets::*;

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
