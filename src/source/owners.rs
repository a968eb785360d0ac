//! Finds the process that owns each socket, through the socket inodes that
//! `/proc/<pid>/fd/*` links point at (`socket:[12345]`).

use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::model::{SocketOwners, SocketRecord};

/// Resolves the owners of `sockets` by walking every process's descriptors
/// below the procfs root `procfs`.
///
/// Where several processes share a socket the lowest pid wins. Processes that
/// exit during the walk, and descriptors that cannot be read (no permission),
/// are skipped: their sockets stay without an owner.
pub fn resolve_owners(procfs: &Path, sockets: &[SocketRecord]) -> SocketOwners {
    let wanted: HashSet<u64> = sockets
        .iter()
        .map(|socket| socket.inode)
        .filter(|&inode| inode != 0)
        .collect();
    let mut owners = SocketOwners::default();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(processes) = std::fs::read_dir(procfs) else {
        return owners;
    };
    let mut fd_directory = procfs.to_path_buf();
    for process in processes.flatten() {
        let Some(pid) = parse_pid(&process.file_name()) else {
            continue;
        };
        fd_directory.push(process.file_name());
        fd_directory.push("fd");
        if let Ok(descriptors) = std::fs::read_dir(&fd_directory) {
            for descriptor in descriptors.flatten() {
                let Ok(target) = std::fs::read_link(descriptor.path()) else {
                    continue;
                };
                let Some(inode) = parse_socket_link(target.as_os_str()) else {
                    continue;
                };
                if !wanted.contains(&inode) {
                    continue;
                }
                match owners.pid_by_inode.entry(inode) {
                    Entry::Vacant(slot) => {
                        slot.insert(pid);
                    }
                    Entry::Occupied(mut slot) => {
                        if pid < *slot.get() {
                            slot.insert(pid);
                        }
                    }
                }
            }
        }
        fd_directory.pop();
        fd_directory.pop();
    }
    let owning_pids: HashSet<u32> = owners.pid_by_inode.values().copied().collect();
    for pid in owning_pids {
        let comm_path = procfs.join(pid.to_string()).join("comm");
        if let Ok(comm) = std::fs::read_to_string(comm_path) {
            owners
                .comm_by_pid
                .insert(pid, comm.trim_end_matches('\n').to_string());
        }
    }
    // A process whose comm vanished exited mid-walk: its sockets are gone or
    // inherited, so leave them unowned rather than name a dead pid.
    owners
        .pid_by_inode
        .retain(|_, pid| owners.comm_by_pid.contains_key(pid));
    owners
}

/// Parses a directory name below procfs as a pid.
fn parse_pid(name: &OsStr) -> Option<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parses a descriptor's link target `socket:[INODE]` into the inode.
fn parse_socket_link(target: &OsStr) -> Option<u64> {
    let digits = target
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(parse_socket_link(OsStr::new("pipe:[12345]")), None);
        assert_eq!(parse_socket_link(OsStr::new("socket:[]")), None);
        assert_eq!(parse_socket_link(OsStr::new("socket:[12a]")), None);
        assert_eq!(parse_socket_link(OsStr::new("/dev/null")), None);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid(OsStr::new("1")), Some(1));
        assert_eq!(parse_pid(OsStr::new("self")), None);
        assert_eq!(parse_pid(OsStr::new("")), None);
        assert_eq!(parse_pid(OsStr::new("+1")), None);
    }

    #[test]
    fn finds_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = {
            use std::os::unix::fs::MetadataExt;
            use std::os::unix::io::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let record = SocketRecord {
            state: crate::model::SocketState::Tcp(crate::model::TcpState::Listen),
            local: listener.local_addr().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            inode,
            listen_queue: None,
        };
        let owners = resolve_owners(Path::new("/proc"), &[record]);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(owners.process_name(inode), Some(comm.trim_end()));
        assert_eq!(owners.pid_by_inode[&inode], std::process::id());
    }
}
