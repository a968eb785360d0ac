//! Command-line behaviour: bad flags, an address in use, --once, --version.

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{EXPORTER, Netns};

#[test]
fn malformed_flag_values_exit_2_naming_the_flag() {
    for (flag, value) in [
        ("--collector.interval", "soon"),
        ("--collector.interval", "0s"),
        ("--web.listen-address", "10042"),
        ("--web.listen-address", "127.0.0.1:99999"),
        ("--web.max-requests", "-1"),
        ("--web.telemetry-path", "metrics"),
        ("--log.level", "verbose"),
        ("--log.format", "xml"),
    ] {
        let output = Command::new(EXPORTER)
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}={value}: {stderr}");
        assert!(stderr.contains(flag), "{flag}={value}: {stderr}");
        assert!(stderr.contains(value), "{flag}={value}: {stderr}");
    }
    let output = Command::new(EXPORTER)
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn address_in_use_exits_1_within_a_second() {
    let netns = Netns::new((40000, 40099), "");
    let _taken = netns.run(|| TcpListener::bind("127.0.0.1:10042").unwrap());
    let started = Instant::now();
    let mut exporter = netns.spawn_exporter(&[]);
    let status = exporter
        .wait_exit(Duration::from_secs(1))
        .expect("still running a second after its address was taken");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Some(1));
    let log = exporter.log();
    assert!(log.contains("127.0.0.1:10042"), "{log}");
    assert!(log.contains("in use"), "{log}");
}

#[test]
fn once_prints_the_exposition_and_exits_0() {
    let netns = Netns::new((40000, 40099), "40000");
    let output = netns.once(&[]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("portstat_ephemeral_ports_capacity 99\n"),
        "{text}"
    );
    assert!(text.contains("portstat_sample_success 1\n"), "{text}");
}

#[test]
fn once_exits_1_when_the_kernel_cannot_be_read() {
    let netns = Netns::new((40000, 40099), "");
    let output = netns.once(&["--path.procfs", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/sys/net/ipv4/ip_local_port_range"),
        "{stderr}"
    );
}

#[test]
fn version_and_help() {
    let output = Command::new(EXPORTER).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("portstat_exporter {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(EXPORTER).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.max-requests",
        "--web.disable-exporter-metrics",
        "--collector.interval",
        "--path.procfs",
        "--log.level",
        "--log.format",
        "--once",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let netns = Netns::new((40000, 40099), "");
    let mut exporter = netns.start_exporter(&["--log.format", "json"]);
    exporter.terminate(Duration::from_secs(5)).unwrap();
    let log = exporter.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(
            line.starts_with("{\"ts\":\"") && line.ends_with('}'),
            "{line}"
        );
        assert!(line.contains("\"level\":\"info\""), "{line}");
    }
    assert!(log.contains(r#""msg":"listening""#), "{log}");
}
