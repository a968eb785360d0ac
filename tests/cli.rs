//! Command-line behaviour: bad flags, an address in use, --once, --version.

mod support;

use support::Place;

use support::OutputWithin;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Recorded, exporter};

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
        let output = Command::new(exporter())
            .arg(format!("{flag}={value}"))
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}={value}: {stderr}");
        assert!(stderr.contains(flag), "{flag}={value}: {stderr}");
        assert!(stderr.contains(value), "{flag}={value}: {stderr}");
    }
    let output = Command::new(exporter())
        .arg("--no-such-flag")
        .output_within()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    // Given apart from its flag, a negative duration is the flag's value
    // still; and one too long to add to a clock is refused, not a panic.
    for (value, says) in [
        ("-1s".to_string(), "negative"),
        ("18446744073709551615ms".repeat(1001), "at most 100y"),
    ] {
        let output = Command::new(exporter())
            .args(["--collector.interval", &value, "--once"])
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--collector.interval"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn address_in_use_exits_1_within_a_second() {
    let place = Recorded::new((40000, 40099), "");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut exporter = place.spawn_exporter(&["--web.listen-address", &address]);
    let status = exporter
        .wait_exit(Duration::from_secs(1))
        .expect("still running a second after its address was taken");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status.code(), Some(1));
    let log = exporter.log();
    assert!(log.contains(&address), "{log}");
    assert!(log.contains("in use"), "{log}");
}

#[test]
fn once_prints_the_exposition_and_exits_0() {
    let place = Recorded::new((40000, 40099), "40000");
    let output = place.once(&[]);
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
    let place = Recorded::new((40000, 40099), "");
    std::fs::remove_dir_all(place.procfs()).unwrap();
    let output = place.once(&[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let missing = place.procfs().join("sys/net/ipv4/ip_local_port_range");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    // Nothing is served by --once: the message must not say otherwise.
    assert!(stderr.contains("sampling failed"), "{stderr}");
    assert!(!stderr.contains("serving"), "{stderr}");
}

/// A zero interval is refused with one message however it is written, and
/// a telemetry path no request could ask for, or one that takes over a
/// built-in endpoint, is refused naming the flag.
#[test]
fn values_that_cannot_work_are_refused_alike() {
    let refuse = |flag: &str, value: &str| -> String {
        let output = Command::new(exporter())
            .arg(format!("{flag}={value}"))
            .output_within()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{flag}={value}: {stderr}");
        assert!(stderr.contains(flag), "{flag}={value}: {stderr}");
        stderr
    };
    let zero = refuse("--collector.interval", "0s");
    assert!(zero.contains("above zero"), "{zero}");
    for value in ["0", "000", "0ms", "0m0s"] {
        let stderr = refuse("--collector.interval", value);
        assert!(stderr.contains("above zero"), "{value}: {stderr}");
    }
    let bare = refuse("--collector.interval", "5");
    assert!(bare.contains("needs a unit"), "{bare}");
    for (path, why) in [
        ("/metrics?x", "'?'"),
        ("/a b", "' '"),
        ("/metrics#top", "'#'"),
        ("/-/healthy", "own endpoint"),
        ("/-/ready", "own endpoint"),
        ("/", "own endpoint"),
    ] {
        let stderr = refuse("--web.telemetry-path", path);
        assert!(stderr.contains(why), "{path}: {stderr}");
    }
}

/// `:0` asks the kernel for a port: the log names the one it gave.
#[test]
fn the_log_names_the_port_bound_for_port_0() {
    let place = Recorded::new((40000, 40099), "");
    // The place listens on port 0 unless told otherwise.
    let mut exporter = place.spawn_exporter(&[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exporter.log().contains("msg=listening") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = exporter.log();
    let address = log
        .lines()
        .find(|line| line.contains("msg=listening"))
        .and_then(|line| line.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening line: {log}"));
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{log}");
    assert!(address.starts_with("127.0.0.1:"), "{log}");
    // The port logged is the one that answers.
    let response = exporter
        .get_at(address.parse().unwrap(), "/-/healthy")
        .unwrap();
    assert_eq!(response.status, 200);
    exporter.terminate(Duration::from_secs(5));
}

/// A missing web configuration names the flag and the file, and says what
/// is wrong with the file, not with a field.
#[test]
fn a_missing_web_config_names_the_flag() {
    let output = Command::new(exporter())
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.config.file",
            "/nonexistent/web.yml",
        ])
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--web.config.file /nonexistent/web.yml: cannot read it:"),
        "{stderr}"
    );
    assert!(!stderr.contains("(file)"), "{stderr}");
}

#[test]
fn version_and_help() {
    let output = Command::new(exporter())
        .arg("--version")
        .output_within()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("portstat_exporter {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(exporter())
        .arg("--help")
        .output_within()
        .unwrap();
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
    let place = Recorded::new((40000, 40099), "");
    let mut exporter = place.start_exporter(&["--log.format", "json"]);
    exporter.terminate(Duration::from_secs(5)).unwrap();
    let log = exporter.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        assert!(
            line.starts_with("{\"ts\":\"") && line.ends_with('}'),
            "{line}"
        );
        // Info, or a warning where the machine gives one (BPF refused).
        assert!(
            line.contains("\"level\":\"info\"") || line.contains("\"level\":\"warn\""),
            "{line}"
        );
    }
    assert!(
        log.lines()
            .any(|line| line.contains(r#""level":"info","msg":"listening""#)),
        "{log}"
    );
}

#[test]
fn the_log_says_where_each_protocol_was_read_from() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&["--collector.interval", "200ms"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exporter.log().contains("sockets read") {
        assert!(Instant::now() < deadline, "{}", exporter.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = exporter.metrics();
    let source = |protocol: &str| {
        ["bpf", "netlink", "procfs"]
            .into_iter()
            .find(|source| {
                metrics.get(&format!(
                    r#"portstat_source_info{{protocol="{protocol}",source="{source}"}}"#
                )) == Some(1.0)
            })
            .unwrap()
    };
    let log = exporter.log();
    let line = log
        .lines()
        .find(|line| line.contains("sockets read"))
        .unwrap();
    assert!(
        line.contains(&format!("tcp={} udp={}", source("tcp"), source("udp"))),
        "{line}"
    );
    assert!(line.contains("owners="), "{line}");
    // Once, while nothing changes.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(exporter.log().matches("sockets read").count(), 1);
}

/// An interval short enough to keep a CPU busy is taken, and said; one of
/// a usual length is not.
#[test]
fn an_interval_that_keeps_a_cpu_busy_is_warned_of() {
    let place = Recorded::new((40000, 40099), "");
    let warning = "samples this close keep a CPU busy";
    let busy = place.start_exporter(&["--collector.interval", "1ms"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !busy.log().contains(warning) {
        assert!(Instant::now() < deadline, "{}", busy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(busy);
    let usual = place.start_exporter(&["--collector.interval", "200ms"]);
    // The warning would come before the first sample's line.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !usual.log().contains("sockets read") {
        assert!(Instant::now() < deadline, "{}", usual.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!usual.log().contains(warning), "{}", usual.log());
}

/// `--collector.netns.max 0` would sample nothing: refused at parse time.
#[test]
fn a_namespace_limit_of_zero_is_refused() {
    let output = std::process::Command::new(support::exporter())
        .args(["--collector.netns.max", "0", "--once"])
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--collector.netns.max") && stderr.contains("must be at least 1"),
        "{stderr}"
    );
}

/// Every flag `--help` lists (the exporter's and `inspect`'s) is described
/// in docs/running.md, so that the docs cannot fall behind the flags.
#[test]
fn every_flag_of_help_is_in_the_running_docs() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/running.md"),
    )
    .unwrap();
    let mut flags = std::collections::BTreeSet::new();
    for args in [&["--help"][..], &["inspect", "--help"][..]] {
        let output = Command::new(exporter()).args(args).output_within().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        for (at, _) in help.match_indices("--") {
            let flag: String = help[at..]
                .chars()
                .enumerate()
                .take_while(|&(index, c)| {
                    index < 2 || c.is_ascii_alphanumeric() || c == '.' || c == '-'
                })
                .map(|(_, c)| c)
                .collect();
            if flag.len() > 2 {
                flags.insert(flag);
            }
        }
    }
    assert!(flags.contains("--collector.netns.max"), "{flags:?}");
    let missing: Vec<&String> = flags
        .iter()
        .filter(|flag| {
            // Named as a flag: in backticks, alone or with a value.
            !docs.contains(&format!("`{flag}`"))
                && !docs.contains(&format!("`{flag} "))
                && !docs.contains(&format!("`{flag}="))
        })
        .collect();
    assert!(missing.is_empty(), "not in docs/running.md: {missing:?}");
}
