//! The procfs socket source: `/proc/net/{tcp,tcp6,udp,udp6}`, parsed with the
//! `procfs` crate.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use procfs::FromBufReadSI;
use procfs::net::{TcpNetEntries, UdpNetEntries};

use crate::model::{Protocol, SocketRecord, SocketState, TcpState, UdpState};
use crate::source::SourceError;

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

/// Reads the socket tables below one procfs root.
pub struct ProcfsSockets {
    tables: [(Table, PathBuf, bool); 4],
    text: String,
}

impl ProcfsSockets {
    /// A reader of the tables below `procfs`.
    pub fn new(procfs: &Path) -> ProcfsSockets {
        let net = procfs.join("net");
        ProcfsSockets {
            // The IPv6 tables are absent when the kernel runs without IPv6:
            // that is an empty table, not an error.
            tables: [
                (Table::Tcp, net.join("tcp"), false),
                (Table::Tcp, net.join("tcp6"), true),
                (Table::Udp, net.join("udp"), false),
                (Table::Udp, net.join("udp6"), true),
            ],
            text: String::new(),
        }
    }

    /// Appends every socket of `protocol` in the namespace to `sockets`.
    pub fn read_sockets(
        &mut self,
        protocol: Protocol,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<(), SourceError> {
        for (table, path, may_be_absent) in &self.tables {
            if table.protocol() != protocol {
                continue;
            }
            self.text.clear();
            match read_into(path, &mut self.text) {
                Ok(()) => {}
                Err(error) if *may_be_absent && error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SourceError::Read {
                        path: path.clone(),
                        source,
                    });
                }
            }
            parse_table(*table, &self.text, sockets).map_err(|reason| SourceError::Malformed {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

fn read_into(path: &Path, text: &mut String) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open(path)?.read_to_string(text)?;
    Ok(())
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
            for entry in entries.0 {
                sockets.push(tcp_record(
                    entry.state.to_u8(),
                    entry.local_address,
                    entry.remote_address,
                    entry.inode,
                )?);
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
                sockets.push(SocketRecord {
                    state: SocketState::Udp(state),
                    local: entry.local_address,
                    remote: entry.remote_address,
                    inode: entry.inode,
                    listen_queue: None,
                });
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
    Ok(SocketRecord {
        state: SocketState::Tcp(state),
        local,
        remote,
        inode,
        listen_queue: None,
    })
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
}
