//! The command line's unit tests: flags parsed as an operator writes them.

use super::*;
use crate::collector::conntrack::{parse_mark, parse_port_range};
use crate::collector::namespaces::parse_at_least_one;
use crate::source::conntrack::wire::MarkFilter;
use portstat_core::model::PortRange;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let args = std::iter::once("portstat_exporter")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from);
    Cli::try_parse_from(with_negations_spelled_out(args))
}

#[test]
fn boolean_flags_take_every_form_node_exporter_takes() {
    let autobind = |args: &[&str]| parse(args).unwrap().failures.autobind;
    assert!(!autobind(&[]));
    assert!(autobind(&["--collector.failures.autobind"]));
    assert!(autobind(&["--collector.failures.autobind=true"]));
    assert!(autobind(&["--collector.failures.autobind", "true"]));
    assert!(!autobind(&["--collector.failures.autobind=false"]));
    assert!(!autobind(&["--no-collector.failures.autobind"]));
    let nat = |args: &[&str]| parse(args).unwrap().conntrack.nat;
    assert!(nat(&[]));
    assert!(!nat(&["--no-collector.nat"]));
    assert!(!nat(&["--collector.nat=false"]));
    assert!(!nat(&["--collector.nat", "false"]));
    assert!(parse(&["--once=true"]).unwrap().once);
    assert!(parse(&["--once"]).unwrap().once);
    assert!(!parse(&["--no-once"]).unwrap().once);
    assert!(
        parse(&["--web.disable-exporter-metrics=true"])
            .unwrap()
            .disable_exporter_metrics
    );
    assert!(
        !parse(&["--no-web.disable-exporter-metrics"])
            .unwrap()
            .disable_exporter_metrics
    );
    assert!(
        !parse(&["--no-collector.netns.one-walk"])
            .unwrap()
            .namespaces
            .one_walk
    );
    assert!(
        !parse(&["--no-collector.follow-scrapes"])
            .unwrap()
            .follow_scrapes
    );
    // Flags of inspect's too, and a flag that takes no `false`.
    assert!(
        !parse(&["inspect", "--no-collector.processes"])
            .unwrap()
            .owners
            .processes
    );
    assert!(parse(&["--no-collector.interval"]).is_err());
    assert!(parse(&["--collector.nat=maybe"]).is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("1w1d"), Ok(Duration::from_secs(8 * 86_400)));
    assert_eq!(parse_duration("100y"), Ok(LONGEST_DURATION));
    assert!(
        parse_duration("100y1ms")
            .unwrap_err()
            .contains("at most 100y")
    );
    // A sum that would overflow is refused, not a panic.
    let huge = "18446744073709551615ms".repeat(1001);
    assert!(parse_duration(&huge).unwrap_err().contains("at most 100y"));
    assert!(parse_duration("-1s").unwrap_err().contains("negative"));
    for bad in [
        "",
        "5",
        "s",
        "5x",
        "-5s",
        "0s",
        "5 s",
        "1.5s",
        "99999999999999999999s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn port_ranges_and_marks() {
    assert_eq!(
        parse_port_range("45000-45019"),
        Ok(PortRange {
            start: 45000,
            end: 45019
        })
    );
    for bad in [
        "", "1024", "0-10", "10-9", "1-65536", "a-b", " 1-2", "1 -2", "1- 2", "1-2 ",
    ] {
        assert!(parse_port_range(bad).is_err(), "{bad:?} was accepted");
    }
    assert_eq!(
        parse_mark("0x10/0xf0"),
        Ok(MarkFilter {
            value: 0x10,
            mask: 0xf0
        })
    );
    assert_eq!(
        parse_mark("7"),
        Ok(MarkFilter {
            value: 7,
            mask: u32::MAX
        })
    );
    for bad in [
        "",
        "x",
        "1/",
        "0x1g",
        "4294967296",
        " 7",
        "0xffffffff/0",
        "0x11/0xf0",
    ] {
        assert!(parse_mark(bad).is_err(), "{bad:?} was accepted");
    }
    assert_eq!(
        parse_mark("0/0"),
        Ok(MarkFilter { value: 0, mask: 0 }),
        "every mark"
    );
}

#[test]
fn counts_take_no_space() {
    assert_eq!(parse_at_least_one("7"), Ok(7));
    for bad in [" 7", "7 ", "0", ""] {
        assert!(parse_at_least_one(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn listen_addresses() {
    assert_eq!(
        parse_listen_address(":10042"),
        Ok("[::]:10042".parse().unwrap())
    );
    assert_eq!(
        parse_listen_address("127.0.0.1:9"),
        Ok("127.0.0.1:9".parse().unwrap())
    );
    assert_eq!(
        parse_listen_address("[::1]:9"),
        Ok("[::1]:9".parse().unwrap())
    );
    for bad in ["10042", "127.0.0.1:", "127.0.0.1:70000", ":x"] {
        assert!(parse_listen_address(bad).is_err(), "{bad:?} was accepted");
    }
}
