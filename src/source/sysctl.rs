//! Reads the namespace's port settings: `ip_local_port_range` and
//! `ip_local_reserved_ports`, and the TIME_WAIT reuse settings. The parsers
//! are pure; `read_port_settings` and `read_time_wait_reuse` do the I/O.

use std::io;
use std::path::Path;

use crate::model::{PortRange, ReservedPorts, TimeWaitReuse};
use crate::source::SourceError;

/// Where the range lives below the procfs root.
const PORT_RANGE_PATH: &str = "sys/net/ipv4/ip_local_port_range";
/// Where the reserved ports live below the procfs root.
const RESERVED_PORTS_PATH: &str = "sys/net/ipv4/ip_local_reserved_ports";

/// Reads the range and the reserved ports below the procfs root `procfs`.
pub fn read_port_settings(procfs: &Path) -> Result<(PortRange, ReservedPorts), SourceError> {
    let range_path = procfs.join(PORT_RANGE_PATH);
    let range_text = super::read_text(&range_path)?;
    let range = parse_port_range(&range_text).map_err(|reason| SourceError::Malformed {
        path: range_path,
        reason,
    })?;
    let reserved_path = procfs.join(RESERVED_PORTS_PATH);
    let reserved_text = super::read_text(&reserved_path)?;
    let reserved =
        parse_reserved_ports(&reserved_text).map_err(|reason| SourceError::Malformed {
            path: reserved_path,
            reason,
        })?;
    Ok((range, reserved))
}

/// The size of the namespace's TCP hash table: negative when it shares the
/// host's (Linux 6.1+).
const EHASH_ENTRIES_PATH: &str = "sys/net/ipv4/tcp_ehash_entries";

/// Whether the namespace shares the host's TCP hash table, from
/// `tcp_ehash_entries` below the procfs root `procfs`, which is negative
/// inside a namespace that does; `None` where it cannot be read.
pub fn read_shares_host_tcp_table(procfs: &Path) -> Option<bool> {
    shares_host_table(procfs, EHASH_ENTRIES_PATH)
}

/// The size of the namespace's UDP hash table: negative when it shares the
/// host's (Linux 6.2+).
const UDP_HASH_ENTRIES_PATH: &str = "sys/net/ipv4/udp_hash_entries";

/// Whether the namespace shares the host's UDP hash table, from
/// `udp_hash_entries`, as `read_shares_host_tcp_table`.
pub fn read_shares_host_udp_table(procfs: &Path) -> Option<bool> {
    shares_host_table(procfs, UDP_HASH_ENTRIES_PATH)
}

fn shares_host_table(procfs: &Path, entries: &str) -> Option<bool> {
    let text = super::read_small_file(&procfs.join(entries)).ok()?;
    text.trim().parse::<i64>().ok().map(|entries| entries < 0)
}

/// Where the TIME_WAIT reuse settings live below the procfs root.
const TW_REUSE_PATH: &str = "sys/net/ipv4/tcp_tw_reuse";
const TW_REUSE_DELAY_PATH: &str = "sys/net/ipv4/tcp_tw_reuse_delay";
const TIMESTAMPS_PATH: &str = "sys/net/ipv4/tcp_timestamps";

/// Reads `tcp_tw_reuse`, `tcp_tw_reuse_delay` and `tcp_timestamps` below the
/// procfs root `procfs`. A setting that is absent keeps the kernel's default:
/// before Linux 6.13 there is no `tcp_tw_reuse_delay`, and the fixed delay
/// was one second.
pub fn read_time_wait_reuse(procfs: &Path) -> Result<TimeWaitReuse, SourceError> {
    let number = |relative: &str, default: u32| -> Result<u32, SourceError> {
        let path = procfs.join(relative);
        match super::read_small_file(&path) {
            Ok(text) => {
                parse_number(&text).map_err(|reason| SourceError::Malformed { path, reason })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(default),
            Err(source) => Err(SourceError::Read { path, source }),
        }
    };
    let defaults = TimeWaitReuse::default();
    Ok(TimeWaitReuse {
        mode: u8::try_from(number(TW_REUSE_PATH, u32::from(defaults.mode))?).unwrap_or(u8::MAX),
        delay_ms: number(TW_REUSE_DELAY_PATH, defaults.delay_ms)?,
        timestamps: number(TIMESTAMPS_PATH, u32::from(defaults.timestamps))? != 0,
    })
}

/// Parses a sysctl that holds one unsigned number.
pub fn parse_number(text: &str) -> Result<u32, String> {
    let text = text.trim();
    text.parse::<u32>()
        .map_err(|_| format!("{text:?} is not an unsigned number"))
}

/// Parses `ip_local_port_range`: two port numbers separated by white space.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let mut fields = text.split_ascii_whitespace();
    let (Some(start), Some(end), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!("expected two ports, found {text:?}"));
    };
    let start = parse_port(start)?;
    let end = parse_port(end)?;
    if end < start {
        return Err(format!("range end {end} is below its start {start}"));
    }
    Ok(PortRange { start, end })
}

/// Parses `ip_local_reserved_ports`: a comma-separated list of ports and
/// inclusive ranges such as `8080,9000-9100`, possibly empty.
pub fn parse_reserved_ports(text: &str) -> Result<ReservedPorts, String> {
    let mut reserved = ReservedPorts::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(reserved);
    }
    for item in text.split(',') {
        let item = item.trim();
        match item.split_once('-') {
            Some((first, last)) => {
                let first = parse_port(first.trim())?;
                let last = parse_port(last.trim())?;
                if last < first {
                    return Err(format!("range {item:?} ends before it starts"));
                }
                reserved.insert_range(first, last);
            }
            None => reserved.insert(parse_port(item)?),
        }
    }
    Ok(reserved)
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("{text:?} is not a port number (0 to 65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(set: &ReservedPorts) -> Vec<u16> {
        (0..=u16::MAX).filter(|&port| set.contains(port)).collect()
    }

    #[test]
    fn range_is_two_ports_separated_by_white_space() {
        assert_eq!(
            parse_port_range("32768\t60999\n"),
            Ok(PortRange {
                start: 32768,
                end: 60999
            })
        );
        assert_eq!(
            parse_port_range("40000 40000"),
            Ok(PortRange {
                start: 40000,
                end: 40000
            })
        );
    }

    #[test]
    fn range_rejects_garbage() {
        for text in [
            "",
            "32768",
            "1 2 3",
            "a 5",
            "70000 70001",
            "500 400",
            "-1 5",
        ] {
            assert!(parse_port_range(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("2\n"), Ok(2));
        assert_eq!(parse_number(" 1000 "), Ok(1000));
        for text in ["", "-1", "x", "1 2"] {
            assert!(parse_number(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn time_wait_settings_from_a_tree() {
        let root = std::env::temp_dir().join(format!("portstat-sysctl-{}", std::process::id()));
        let ipv4 = root.join("sys/net/ipv4");
        std::fs::create_dir_all(&ipv4).unwrap();
        std::fs::write(ipv4.join("tcp_tw_reuse"), "1\n").unwrap();
        std::fs::write(ipv4.join("tcp_timestamps"), "0\n").unwrap();
        // No tcp_tw_reuse_delay: a kernel before 6.13.
        assert_eq!(
            read_time_wait_reuse(&root).unwrap(),
            TimeWaitReuse {
                mode: 1,
                delay_ms: 1000,
                timestamps: false
            }
        );
        std::fs::write(ipv4.join("tcp_tw_reuse_delay"), "250\n").unwrap();
        assert_eq!(read_time_wait_reuse(&root).unwrap().delay_ms, 250);
        // Absent: the kernel's default. Malformed: an error.
        std::fs::remove_file(ipv4.join("tcp_tw_reuse")).unwrap();
        assert_eq!(read_time_wait_reuse(&root).unwrap().mode, 2);
        std::fs::write(ipv4.join("tcp_timestamps"), "yes\n").unwrap();
        assert!(read_time_wait_reuse(&root).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reserved_ports_empty() {
        assert!(parse_reserved_ports("").unwrap().is_empty());
        assert!(parse_reserved_ports("\n").unwrap().is_empty());
        assert!(parse_reserved_ports("  \t\n").unwrap().is_empty());
    }

    #[test]
    fn reserved_ports_lists_and_ranges() {
        let set = parse_reserved_ports("8080,9000-9003,65535\n").unwrap();
        assert_eq!(ports(&set), vec![8080, 9000, 9001, 9002, 9003, 65535]);
        assert_eq!(ports(&parse_reserved_ports("0").unwrap()), vec![0]);
        assert_eq!(ports(&parse_reserved_ports("7-7").unwrap()), vec![7]);
    }

    #[test]
    fn reserved_ports_tolerate_white_space() {
        let set = parse_reserved_ports(" 8080 , 9000 - 9001 \n").unwrap();
        assert_eq!(ports(&set), vec![8080, 9000, 9001]);
    }

    #[test]
    fn reserved_ports_reject_garbage() {
        for text in [
            "abc",
            "8080,",
            ",8080",
            "8080,,9000",
            "9000-",
            "-9000",
            "9-8",
            "70000",
            "1-2-3",
            "8080;9000",
            "\u{0}\u{1}",
        ] {
            assert!(parse_reserved_ports(text).is_err(), "{text:?} was accepted");
        }
    }
}
