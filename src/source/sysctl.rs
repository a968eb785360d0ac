//! Reads the namespace's port settings: `ip_local_port_range` and
//! `ip_local_reserved_ports`, and the TIME_WAIT reuse settings, and parses
//! them with `portstat_core::parse::sysctl`.

use std::io;
use std::path::Path;

use crate::source::SourceError;
use portstat_core::model::{PortRange, ReservedPorts, TimeWaitReuse};
pub use portstat_core::parse::sysctl::{parse_number, parse_port_range, parse_reserved_ports};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
