//! The procfs socket source: `/proc/net/{tcp,tcp6,udp,udp6}`, parsed with the
//! `procfs` crate.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use procfs::FromBufReadSI;
use procfs::net::{TcpNetEntries, UdpNetEntries};

use crate::model::{Protocol, SocketRecord, SocketSink, SocketState, TcpState, TimeWait, UdpState};
use crate::source::SourceError;
use crate::source::netlink::wire::time_wait_age_ms;

/// One of the four socket tables.
#[derive(Debug, Clone, Copy)]
enum Table {
    Tcp,
    Udp,
}

impl Table {
    fn protocol(self) -> Protocol {
        match self {
            Table::Tcp => Protocol::Tcp,
            Table::Udp => Protocol::Udp,
        }
    }
}

/// Lines parsed at a time: enough to amortise each call into the parser,
/// few enough that a table of a million sockets is never held whole.
const LINES_PER_CHUNK: usize = 1024;

/// The longest line accepted. The kernel's lines are under 180 bytes; a
/// longer one is not a socket table, and is not read whole.
const MAX_LINE: usize = 4096;

/// Reads the socket tables below one procfs root.
pub struct ProcfsSockets {
    tables: [(Table, PathBuf, bool); 4],
    /// The header line and up to `LINES_PER_CHUNK` lines, reused.
    chunk: String,
    /// The sockets of one chunk, reused.
    batch: Vec<SocketRecord>,
}

impl ProcfsSockets {
    /// A reader of the tables in the folder `net` (normally `/proc/net`).
    pub fn new(net: &Path) -> ProcfsSockets {
        ProcfsSockets {
            // The IPv6 tables are absent when the kernel runs without IPv6:
            // that is an empty table, not an error.
            tables: [
                (Table::Tcp, net.join("tcp"), false),
                (Table::Tcp, net.join("tcp6"), true),
                (Table::Udp, net.join("udp"), false),
                (Table::Udp, net.join("udp6"), true),
            ],
            chunk: String::new(),
            batch: Vec::new(),
        }
    }

    /// Hands every socket of `protocol` in the namespace to `sink`.
    pub fn read_sockets(
        &mut self,
        protocol: Protocol,
        sink: &mut dyn SocketSink,
    ) -> Result<(), SourceError> {
        for (table, path, may_be_absent) in &self.tables {
            if table.protocol() != protocol {
                continue;
            }
            let file = match super::open_kernel_file(path) {
                Ok(file) => file,
                Err(error) if *may_be_absent && error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SourceError::Read {
                        path: path.clone(),
                        source,
                    });
                }
            };
            read_table(*table, file, &mut self.chunk, &mut self.batch, sink).map_err(|error| {
                match error {
                    TableError::Read(source) if source.kind() != io::ErrorKind::InvalidData => {
                        SourceError::Read {
                            path: path.clone(),
                            source,
                        }
                    }
                    TableError::Read(source) => SourceError::Malformed {
                        path: path.clone(),
                        reason: source.to_string(),
                    },
                    TableError::Malformed(reason) => SourceError::Malformed {
                        path: path.clone(),
                        reason,
                    },
                }
            })?;
        }
        Ok(())
    }
}

enum TableError {
    Read(io::Error),
    Malformed(String),
}

/// Reads one table a chunk of lines at a time, so that memory stays flat
/// whatever the number of sockets: each chunk's sockets are parsed into
/// `batch`, then handed to `sink`.
fn read_table(
    table: Table,
    file: File,
    chunk: &mut String,
    batch: &mut Vec<SocketRecord>,
    sink: &mut dyn SocketSink,
) -> Result<(), TableError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    chunk.clear();
    let header_length = read_line(&mut reader, chunk, 1)?;
    let mut first_line = 2;
    let mut lines = 0;
    loop {
        let length = read_line(&mut reader, chunk, first_line + lines)?;
        if length > 0 {
            lines += 1;
            if lines < LINES_PER_CHUNK {
                continue;
            }
        }
        // The chunk is full, or the file ended. A file with no line past the
        // header is still parsed once, so that a missing header is caught.
        if lines > 0 || first_line == 2 {
            batch.clear();
            if let Err(reason) = parse_table(table, chunk, batch) {
                return Err(TableError::Malformed(bad_line(
                    table,
                    chunk,
                    header_length,
                    first_line,
                    reason,
                )));
            }
            for socket in batch.iter() {
                sink.add(socket);
            }
            chunk.truncate(header_length);
            first_line += lines;
            lines = 0;
        }
        if length == 0 {
            return Ok(());
        }
    }
}

/// Names the first line of a chunk that does not parse, numbered from
/// `first_line`, and says what is wrong with it: the parser's own message
/// reads as a bug of its own and covers the whole chunk.
fn bad_line(
    table: Table,
    chunk: &str,
    header_length: usize,
    first_line: usize,
    chunk_reason: String,
) -> String {
    let header = &chunk[..header_length];
    if parse_table(table, header, &mut Vec::new()).is_err() {
        return format!("line 1 is malformed: {chunk_reason}");
    }
    for (offset, line) in chunk[header_length..].lines().enumerate() {
        let alone = format!("{header}{line}\n");
        if let Err(reason) = parse_table(table, &alone, &mut Vec::new()) {
            let reason = if reason.contains("bug") {
                "not a socket entry".to_string()
            } else {
                reason
            };
            let mut excerpt: String = line
                .chars()
                .take(60)
                .collect::<String>()
                .escape_debug()
                .to_string();
            if line.chars().count() > 60 {
                excerpt.push_str("...");
            }
            return format!(
                "line {} is malformed: {reason}: \"{excerpt}\"",
                first_line + offset
            );
        }
    }
    format!("lines from {first_line} are malformed: {chunk_reason}")
}

/// Appends one line to `chunk`, at most `MAX_LINE` bytes of it: a longer
/// line is an error naming it, read no further.
fn read_line(
    reader: &mut BufReader<File>,
    chunk: &mut String,
    number: usize,
) -> Result<usize, TableError> {
    use std::io::Read;
    let length = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_line(chunk)
        .map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData => {
                TableError::Malformed(format!("line {number} is malformed: not UTF-8 text"))
            }
            _ => TableError::Read(error),
        })?;
    if length > MAX_LINE {
        return Err(TableError::Malformed(format!(
            "line {number} is malformed: longer than {MAX_LINE} bytes"
        )));
    }
    Ok(length)
}

/// Parses the text of one table and appends its sockets.
fn parse_table(table: Table, text: &str, sockets: &mut Vec<SocketRecord>) -> Result<(), String> {
    if !text.starts_with("  sl") && !text.starts_with("   sl") {
        return Err("the header line is missing".to_string());
    }
    let system = procfs::current_system_info();
    match table {
        Table::Tcp => {
            let entries =
                TcpNetEntries::from_buf_read(text.as_bytes(), system).map_err(|e| e.to_string())?;
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
                        age_ms: time_wait_age_ms(time_wait_timer_ms(line)?),
                        timestamps: None,
                        bound_device: None,
                    });
                }
                sockets.push(record);
            }
        }
        Table::Udp => {
            let entries =
                UdpNetEntries::from_buf_read(text.as_bytes(), system).map_err(|e| e.to_string())?;
            for entry in entries.0 {
                let state = match entry.state {
                    procfs::net::UdpState::Established => UdpState::Connected,
                    procfs::net::UdpState::Close => UdpState::Unconnected,
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
fn time_wait_timer_ms(line: &str) -> Result<u32, String> {
    let field = line
        .split_ascii_whitespace()
        .nth(5)
        .ok_or_else(|| format!("no timer field in {line:?}"))?;
    let ticks = field
        .split_once(':')
        .and_then(|(_, when)| u64::from_str_radix(when, 16).ok())
        .ok_or_else(|| format!("timer field {field:?} is not tr:when"))?;
    Ok(u32::try_from(ticks.saturating_mul(1000) / clock_ticks_per_second()).unwrap_or(u32::MAX))
}

/// `USER_HZ`, the unit of procfs timers.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Parses the text of a TCP (`tcp`) or UDP table the way the source parses a
/// live one; for the fuzzer.
#[doc(hidden)]
pub fn parse_table_text(
    tcp: bool,
    text: &str,
    sockets: &mut Vec<SocketRecord>,
) -> Result<(), String> {
    parse_table(if tcp { Table::Tcp } else { Table::Udp }, text, sockets)
}

/// Parses a captured table (named `tcp`, `tcp6`, `udp` or `udp6`) the way the
/// source parses a live one.
#[cfg(test)]
pub(crate) fn parse_fixture(table: &str, text: &str) -> Vec<SocketRecord> {
    let table = if table.starts_with("tcp") {
        Table::Tcp
    } else {
        Table::Udp
    };
    let mut sockets = Vec::new();
    parse_table(table, text, &mut sockets).unwrap();
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_tables() {
        let tcp = parse_fixture("tcp", include_str!("../../tests/fixtures/netns/tcp"));
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
        let header = include_str!("../../tests/fixtures/netns/tcp")
            .lines()
            .next()
            .unwrap();
        let time_wait = parse_fixture("tcp", &format!("{header}\n{line}"));
        // 0xDAC = 3500 ticks of 10 ms: 35 s left, 25 s old.
        assert_eq!(time_wait[0].time_wait.unwrap().age_ms, 25_000);
        let udp6 = parse_fixture("udp6", include_str!("../../tests/fixtures/netns/udp6"));
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
                parse_table(Table::Tcp, text, &mut sockets).is_err(),
                "{text:?}"
            );
        }
    }

    fn table_file(name: &str, text: &str) -> File {
        let path = std::env::temp_dir().join(format!("portstat-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn reads_large_tables_in_chunks_and_names_the_bad_lines() {
        let fixture = include_str!("../../tests/fixtures/netns/tcp");
        let (header, rest) = fixture.split_once('\n').unwrap();
        let line = rest.lines().next().unwrap();
        let mut text = format!("{header}\n");
        for _ in 0..2500 {
            text.push_str(line);
            text.push('\n');
        }
        let mut chunk = String::new();
        let mut sockets = Vec::new();
        assert!(
            read_table(
                Table::Tcp,
                table_file("large", &text),
                &mut chunk,
                &mut Vec::new(),
                &mut sockets
            )
            .is_ok()
        );
        assert_eq!(sockets.len(), 2500);
        assert!(
            chunk.len() < 200 * LINES_PER_CHUNK,
            "the chunk grew to {}",
            chunk.len()
        );

        // The 1501st socket line, line 1502 of the file, is broken.
        let broken = text.replacen(line, &line.replace(" 0A ", " ZZ "), 1501);
        let broken = broken.replacen(&line.replace(" 0A ", " ZZ "), line, 1500);
        match read_table(
            Table::Tcp,
            table_file("broken", &broken),
            &mut chunk,
            &mut Vec::new(),
            &mut Vec::new(),
        ) {
            Err(TableError::Malformed(reason)) => {
                assert!(
                    reason.starts_with("line 1502 is malformed: not a socket entry: \"   0: "),
                    "{reason}"
                );
                assert!(!reason.contains("bug"), "{reason}");
            }
            _ => panic!("a broken line was accepted"),
        }

        // A line longer than any the kernel writes is refused, unread.
        let long = format!("{}{}\n", text.lines().next().unwrap(), "\n") + &"1".repeat(1 << 20);
        match read_table(
            Table::Tcp,
            table_file("long", &long),
            &mut chunk,
            &mut Vec::new(),
            &mut Vec::new(),
        ) {
            Err(TableError::Malformed(reason)) => assert_eq!(
                reason,
                format!("line 3 is malformed: longer than {MAX_LINE} bytes")
            ),
            _ => panic!("a 1 MiB line was accepted"),
        }
        assert!(chunk.len() <= 2 * MAX_LINE, "read {} bytes", chunk.len());

        // A header alone is an empty table; nothing at all is not a table.
        let mut sockets = Vec::new();
        assert!(
            read_table(
                Table::Tcp,
                table_file("empty", &format!("{header}\n")),
                &mut chunk,
                &mut Vec::new(),
                &mut sockets
            )
            .is_ok()
        );
        assert!(sockets.is_empty());
        assert!(
            read_table(
                Table::Tcp,
                table_file("nothing", ""),
                &mut chunk,
                &mut Vec::new(),
                &mut sockets
            )
            .is_err()
        );
    }
}
