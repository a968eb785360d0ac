//! The socket tables of procfs, `/proc/net/{tcp,tcp6,udp,udp6}`, parsed
//! with `procfs-core`. The binary's `source::procfs` reads them a chunk of
//! lines at a time and hands each chunk here.

use std::net::SocketAddr;

use procfs_core::net::{TcpNetEntries, UdpNetEntries};
use procfs_core::{ExplicitSystemInfo, FromBufReadSI};

use crate::model::{Protocol, SocketRecord, SocketState, TcpState, TimeWait, UdpState};
use crate::rules::time_wait_age_ms;

/// Which kind of table a text is: TCP (`tcp`, `tcp6`) or UDP (`udp`,
/// `udp6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `tcp` or `tcp6`.
    Tcp,
    /// `udp` or `udp6`.
    Udp,
}

impl Table {
    /// The protocol of the table's sockets.
    pub fn protocol(self) -> Protocol {
        match self {
            Table::Tcp => Protocol::Tcp,
            Table::Udp => Protocol::Udp,
        }
    }
}

/// Parses the text of one table, its header line first, and appends its
/// sockets; timers are in clock ticks of `ticks_per_second` (`USER_HZ`).
pub fn parse_table(
    table: Table,
    text: &str,
    ticks_per_second: u64,
    sockets: &mut Vec<SocketRecord>,
) -> Result<(), String> {
    if !text.starts_with("  sl") && !text.starts_with("   sl") {
        return Err("the header line is missing".to_string());
    }
    let system = ExplicitSystemInfo {
        // Only the addresses' byte order and the timers' unit are read.
        boot_time_secs: 0,
        ticks_per_second,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    match table {
        Table::Tcp => {
            let entries = TcpNetEntries::from_buf_read(text.as_bytes(), &system)
                .map_err(|e| e.to_string())?;
            // The crate does not keep the timer fields: read them from the
            // same lines, for TIME_WAIT's age.
            let mut lines = text.lines().skip(1).filter(|line| !line.trim().is_empty());
            for entry in entries.0 {
                let line = lines.next().unwrap_or_default();
                let mut record = tcp_record(
                    entry.state.to_u8(),
                    entry.local_address,
                    entry.remote_address,
                    entry.inode,
                )?;
                if record.state == SocketState::Tcp(TcpState::TimeWait) {
                    record.time_wait = Some(TimeWait {
                        age_ms: time_wait_age_ms(time_wait_timer_ms(line, ticks_per_second)?),
                        timestamps: None,
                        bound_device: None,
                    });
                }
                sockets.push(record);
            }
        }
        Table::Udp => {
            let entries = UdpNetEntries::from_buf_read(text.as_bytes(), &system)
                .map_err(|e| e.to_string())?;
            for entry in entries.0 {
                let state = match entry.state {
                    procfs_core::net::UdpState::Established => UdpState::Connected,
                    procfs_core::net::UdpState::Close => UdpState::Unconnected,
                };
                sockets.push(SocketRecord::new(
                    SocketState::Udp(state),
                    entry.local_address,
                    entry.remote_address,
                    entry.inode,
                ));
            }
        }
    }
    Ok(())
}

fn tcp_record(
    state: u8,
    local: SocketAddr,
    remote: SocketAddr,
    inode: u64,
) -> Result<SocketRecord, String> {
    let state = TcpState::from_kernel(state).ok_or_else(|| format!("unknown TCP state {state}"))?;
    Ok(SocketRecord::new(
        SocketState::Tcp(state),
        local,
        remote,
        inode,
    ))
}

/// What is left of a TIME_WAIT socket's timer, in milliseconds, from its
/// line's `tr:tm->when` field: timer 3 and clock ticks in hexadecimal.
fn time_wait_timer_ms(line: &str, ticks_per_second: u64) -> Result<u32, String> {
    let field = line
        .split_ascii_whitespace()
        .nth(5)
        .ok_or_else(|| format!("no timer field in {line:?}"))?;
    let ticks = field
        .split_once(':')
        .and_then(|(_, when)| u64::from_str_radix(when, 16).ok())
        .ok_or_else(|| format!("timer field {field:?} is not tr:when"))?;
    Ok(u32::try_from(ticks.saturating_mul(1000) / ticks_per_second.max(1)).unwrap_or(u32::MAX))
}

/// Parses a captured table (named `tcp`, `tcp6`, `udp` or `udp6`) the way the
/// source parses a live one, at 100 ticks a second.
#[cfg(test)]
pub(crate) fn parse_fixture(table: &str, text: &str) -> Vec<SocketRecord> {
    let table = if table.starts_with("tcp") {
        Table::Tcp
    } else {
        Table::Udp
    };
    let mut sockets = Vec::new();
    parse_table(table, text, 100, &mut sockets).unwrap();
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_tables() {
        let tcp = parse_fixture("tcp", include_str!("../../../../tests/fixtures/netns/tcp"));
        let listeners = tcp
            .iter()
            .filter(|socket| socket.state == SocketState::Tcp(TcpState::Listen))
            .count();
        assert!(listeners >= 1);
        assert!(
            tcp.iter()
                .any(|s| s.state == SocketState::Tcp(TcpState::TimeWait) && s.inode == 0)
        );
        // TIME_WAIT carries its age, from the timer left.
        let line = "   3: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00000DAC 00000000     0        0 0 3 0000000000000000\n";
        let header = include_str!("../../../../tests/fixtures/netns/tcp")
            .lines()
            .next()
            .unwrap();
        let time_wait = parse_fixture("tcp", &format!("{header}\n{line}"));
        // 0xDAC = 3500 ticks of 10 ms: 35 s left, 25 s old.
        assert_eq!(time_wait[0].time_wait.unwrap().age_ms, 25_000);
        let udp6 = parse_fixture(
            "udp6",
            include_str!("../../../../tests/fixtures/netns/udp6"),
        );
        assert!(udp6.iter().all(|s| s.local.is_ipv6()));
    }

    #[test]
    fn rejects_garbage() {
        let mut sockets = Vec::new();
        for text in [
            "",
            "garbage",
            "\u{0}\u{1}\u{2}",
            "  sl  local_address rem_address   st\n   0: zz:0050 00000000:0000 0A\n",
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0050 00000000:0000 3F 00000000:00000000 00:00000000 00000000     0        0 1 1\n",
        ] {
            assert!(
                parse_table(Table::Tcp, text, 100, &mut sockets).is_err(),
                "{text:?}"
            );
        }
    }
}
