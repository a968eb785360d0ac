//! The conntrack source: the connections whose source a NAT gateway or a
//! masquerading node rewrote, from a ctnetlink dump over `NETLINK_NETFILTER`
//! (the interface `conntrack -L` uses), and the table's fill and failure
//! counters from `/proc/net/stat/nf_conntrack`.
//!
//! The ports such connections leave from are in no socket table: only
//! conntrack holds them. Reading it needs `CAP_NET_ADMIN` in the namespace's
//! owning user namespace and the `nf_conntrack_netlink` module; where either
//! is missing there is nothing to read, which is not an error.
//!
//! Two parts: `wire` (the core's `parse::conntrack`) builds the request and
//! parses replies (pure, tested on bytes and fuzzed), and `ConntrackReader`
//! here runs the dump over the netlink socket it shares with the sock_diag
//! source.

pub use portstat_core::parse::conntrack as wire;

use std::path::Path;

use crate::source::netlink::socket::NetlinkSocket;
use portstat_core::model::{ConntrackCounters, NatSink};
use wire::{MarkFilter, Progress, RECEIVE_BUFFER_LENGTH, build_request, parse_datagram};

pub use wire::ConntrackError;

/// `NETLINK_NETFILTER`, the netlink family of nfnetlink subsystems.
const NETLINK_NETFILTER: isize = libc::NETLINK_NETFILTER as isize;

/// A ctnetlink socket with its reused buffers.
pub struct ConntrackReader {
    socket: Option<NetlinkSocket>,
    mark: Option<MarkFilter>,
    request: Vec<u8>,
    buffer: Vec<u8>,
    sequence: u32,
}

impl ConntrackReader {
    /// A reader of the entries `mark` matches (all without it), which opens
    /// its socket at first use.
    pub fn new(mark: Option<MarkFilter>) -> ConntrackReader {
        ConntrackReader {
            socket: None,
            mark,
            request: Vec::with_capacity(64),
            buffer: Vec::with_capacity(RECEIVE_BUFFER_LENGTH),
            sequence: 0,
        }
    }

    /// Closes the socket; the next dump opens one in the calling thread's
    /// network namespace.
    pub fn close(&mut self) {
        self.socket = None;
    }

    /// Hands `sink` every source-NAT'd TCP and UDP entry of the table, and
    /// dumps once more if the kernel marks the dump interrupted. Returns how
    /// many entries the kernel sent, NAT'd or not.
    pub fn read(&mut self, sink: &mut dyn NatSink) -> Result<u64, ConntrackError> {
        for _ in 0..2 {
            let result = self.dump_once(sink);
            if result.is_err() {
                // It may still hold the rest of the dump.
                self.socket = None;
            }
            match result? {
                (false, sent) => return Ok(sent),
                (true, _) => sink.restart_nat(),
            }
        }
        Err(ConntrackError::Interrupted)
    }

    /// Runs one dump; returns whether the kernel marked it interrupted, and
    /// how many entries it sent.
    fn dump_once(&mut self, sink: &mut dyn NatSink) -> Result<(bool, u64), ConntrackError> {
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => NetlinkSocket::open_family(NETLINK_NETFILTER)
                .map_err(|(call, source)| ConntrackError::System { call, source })?,
        };
        let socket = self.socket.insert(socket);
        self.sequence = self.sequence.wrapping_add(1);
        build_request(self.sequence, self.mark, &mut self.request);
        socket
            .send(&self.request)
            .map_err(|source| ConntrackError::System {
                call: "sendto",
                source,
            })?;
        let mut interrupted = false;
        let mut sent = 0;
        loop {
            let length =
                socket
                    .receive(&mut self.buffer)
                    .map_err(|source| ConntrackError::System {
                        call: "recv",
                        source,
                    })?;
            if length > self.buffer.len() {
                return Err(ConntrackError::Malformed(format!(
                    "a datagram of {length} bytes overflowed the {}-byte buffer",
                    self.buffer.capacity()
                )));
            }
            let (progress, entries) = parse_datagram(
                &self.buffer[..length],
                self.sequence,
                &mut interrupted,
                &mut |entry| sink.add_nat(entry),
            )?;
            sent += entries;
            if let Progress::Done { interrupted } = progress {
                return Ok((interrupted, sent));
            }
        }
    }
}

/// Reads the table's counters of the calling thread's namespace:
/// `statistics` is its `net/stat/nf_conntrack`, `limit` the
/// `nf_conntrack_max` sysctl. `Ok(None)` where the statistics cannot be
/// read (no conntrack in the kernel); `Err` where they do not parse.
pub fn read_counters(statistics: &Path, limit: &Path) -> Result<Option<ConntrackCounters>, String> {
    let Ok(text) = std::fs::read_to_string(statistics) else {
        return Ok(None);
    };
    let mut counters =
        parse_statistics(&text).map_err(|reason| format!("{}: {reason}", statistics.display()))?;
    counters.limit = std::fs::read_to_string(limit)
        .ok()
        .and_then(|text| text.trim().parse().ok());
    Ok(Some(counters))
}

/// Parses `/proc/net/stat/nf_conntrack`: a header naming the columns, then
/// one line of hexadecimal counters per CPU. `entries` is the same on every
/// line; `insert_failed` and `drop` are summed over the lines.
pub fn parse_statistics(text: &str) -> Result<ConntrackCounters, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty file")?
        .split_whitespace()
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|&column| column == name)
            .ok_or(format!("no {name} column"))
    };
    let (entries, insert_failed, drop) = (
        column("entries")?,
        column("insert_failed")?,
        column("drop")?,
    );
    let mut counters = ConntrackCounters::default();
    for (number, line) in lines.enumerate() {
        let values: Vec<&str> = line.split_whitespace().collect();
        let value = |index: usize| {
            let text = values
                .get(index)
                .ok_or(format!("line {}: too few columns", number + 2))?;
            u64::from_str_radix(text, 16).map_err(|_| format!("line {}: {text:?}", number + 2))
        };
        counters.entries = value(entries)?;
        counters.insert_failed = counters.insert_failed.wrapping_add(value(insert_failed)?);
        counters.drop = counters.drop.wrapping_add(value(drop)?);
    }
    Ok(counters)
}

/// Whether an error means there is nothing to read, rather than a passing
/// failure.
pub trait Unavailable {
    /// This namespace has no conntrack to read (no `nf_conntrack_netlink`,
    /// no netfilter netlink), or reading it is not permitted (no
    /// `CAP_NET_ADMIN`).
    fn is_unavailable(&self) -> bool;
}

impl Unavailable for ConntrackError {
    fn is_unavailable(&self) -> bool {
        let code = match self {
            ConntrackError::System { source, .. } | ConntrackError::Refused(source) => {
                source.raw_os_error()
            }
            _ => None,
        };
        crate::source::netlink::means_unavailable(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded on this kernel from a namespace whose masquerade rule ran
    /// out of ports: 20 entries, one SYN dropped and retried five times.
    const STATISTICS: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000014  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000
00000014  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000005 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn statistics_sum_the_failures_over_cpus() {
        let counters = parse_statistics(STATISTICS).unwrap();
        assert_eq!(
            counters,
            ConntrackCounters {
                entries: 20,
                limit: None,
                insert_failed: 6,
                drop: 6,
            }
        );
    }

    #[test]
    fn statistics_without_their_columns_are_refused() {
        assert!(parse_statistics("").is_err());
        assert!(parse_statistics("entries drop\n1 2\n").is_err());
        let short = "entries insert_failed drop\n00000001 00000002\n";
        assert!(parse_statistics(short).unwrap_err().contains("line 2"));
        let wrong = "entries insert_failed drop\n1 2 zz\n";
        assert!(parse_statistics(wrong).is_err());
    }
}
