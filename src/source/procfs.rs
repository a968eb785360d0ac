//! The procfs socket source: `/proc/net/{tcp,tcp6,udp,udp6}`, read a chunk
//! of lines at a time and parsed by `portstat_core::parse::procfs`.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use portstat_core::model::{Protocol, SocketRecord, SocketSink};
use portstat_core::parse::procfs::{Table, parse_table};

use crate::source::SourceError;

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
            if let Err(reason) = parse_table(table, chunk, clock_ticks_per_second(), batch) {
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
    if parse_table(table, header, 100, &mut Vec::new()).is_err() {
        return format!("line 1 is malformed: {chunk_reason}");
    }
    for (offset, line) in chunk[header_length..].lines().enumerate() {
        let alone = format!("{header}{line}\n");
        if let Err(reason) = parse_table(table, &alone, 100, &mut Vec::new()) {
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
    let table = if tcp { Table::Tcp } else { Table::Udp };
    parse_table(table, text, clock_ticks_per_second(), sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

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
