//! Finds the process that owns each socket, through the socket inodes that
//! `/proc/<pid>/fd/*` links point at (`socket:[12345]`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::model::SocketOwners;

/// Finds socket owners, remembering where each was found.
///
/// A socket found at descriptor `fd` of process `pid` is looked for there
/// first next time, with one `readlink()`. Only sockets not found that way
/// cost a walk of `/proc/<pid>/fd`, in ascending pid order, which stops as
/// soon as every socket asked for is found. On a host whose listeners do not
/// change, a sample resolves them with one `readlink()` each.
pub struct OwnerResolver {
    procfs: PathBuf,
    /// Socket inode to the pid and descriptor it was last found at.
    found_at: HashMap<u64, (u32, u32)>,
    path: PathBuf,
}

impl OwnerResolver {
    /// A resolver for the procfs mounted at `procfs`.
    pub fn new(procfs: &Path) -> OwnerResolver {
        OwnerResolver {
            procfs: procfs.to_path_buf(),
            found_at: HashMap::new(),
            path: PathBuf::new(),
        }
    }

    /// Resolves the owners of the sockets with inodes `wanted`.
    ///
    /// Where several processes share a socket the lowest pid that held it
    /// when it was first resolved wins. Processes that exit during the walk,
    /// and descriptors that cannot be read (no permission), are skipped:
    /// their sockets stay without an owner.
    pub fn resolve(&mut self, wanted: &HashSet<u64>) -> SocketOwners {
        let mut owners = SocketOwners::default();
        let mut found_at = HashMap::with_capacity(wanted.len());
        // Where each socket was last time, if it is still there.
        for &inode in wanted {
            if let Some(&(pid, fd)) = self.found_at.get(&inode)
                && self.socket_at(pid, fd) == Some(inode)
            {
                owners.pid_by_inode.insert(inode, pid);
                found_at.insert(inode, (pid, fd));
            }
        }
        if owners.pid_by_inode.len() < wanted.len() {
            self.walk(wanted, &mut owners, &mut found_at);
        }
        self.found_at = found_at;
        let owning_pids: HashSet<u32> = owners.pid_by_inode.values().copied().collect();
        for pid in owning_pids {
            let comm_path = self.procfs.join(pid.to_string()).join("comm");
            if let Ok(comm) = std::fs::read_to_string(comm_path) {
                owners
                    .comm_by_pid
                    .insert(pid, comm.trim_end_matches('\n').to_string());
            }
        }
        // A process whose comm vanished exited mid-walk: its sockets are gone
        // or inherited, so leave them unowned rather than name a dead pid.
        owners
            .pid_by_inode
            .retain(|_, pid| owners.comm_by_pid.contains_key(pid));
        owners
    }

    /// Walks processes in ascending pid order until every wanted socket has
    /// an owner, so that the first process found holding one is the lowest.
    fn walk(
        &mut self,
        wanted: &HashSet<u64>,
        owners: &mut SocketOwners,
        found_at: &mut HashMap<u64, (u32, u32)>,
    ) {
        let Ok(entries) = std::fs::read_dir(&self.procfs) else {
            return;
        };
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| parse_pid(&entry.file_name()))
            .collect();
        pids.sort_unstable();
        for pid in pids {
            self.path.clear();
            self.path.push(&self.procfs);
            self.path.push(pid.to_string());
            self.path.push("fd");
            let Ok(descriptors) = std::fs::read_dir(&self.path) else {
                continue;
            };
            for descriptor in descriptors.flatten() {
                let Some(fd) = parse_pid(&descriptor.file_name()) else {
                    continue;
                };
                let Ok(target) = std::fs::read_link(descriptor.path()) else {
                    continue;
                };
                let Some(inode) = parse_socket_link(target.as_os_str()) else {
                    continue;
                };
                if wanted.contains(&inode) && !owners.pid_by_inode.contains_key(&inode) {
                    owners.pid_by_inode.insert(inode, pid);
                    found_at.insert(inode, (pid, fd));
                }
            }
            if owners.pid_by_inode.len() == wanted.len() {
                return;
            }
        }
    }

    /// The socket inode that descriptor `fd` of `pid` refers to, if any.
    fn socket_at(&mut self, pid: u32, fd: u32) -> Option<u64> {
        self.path.clear();
        self.path.push(&self.procfs);
        self.path.push(pid.to_string());
        self.path.push("fd");
        self.path.push(fd.to_string());
        let target = std::fs::read_link(&self.path).ok()?;
        parse_socket_link(target.as_os_str())
    }
}

/// Parses a directory name below procfs as a pid (or a descriptor number).
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
        let mut resolver = OwnerResolver::new(Path::new("/proc"));
        let wanted = HashSet::from([inode, 1]);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        // First by walking, then from where it was found.
        for _ in 0..2 {
            let owners = resolver.resolve(&wanted);
            assert_eq!(owners.process_name(inode), Some(comm.trim_end()));
            assert_eq!(owners.pid_by_inode[&inode], std::process::id());
            assert_eq!(owners.process_name(1), None);
        }
        assert!(resolver.found_at.contains_key(&inode));
        // A closed socket is not found at its old place any more.
        drop(listener);
        let owners = resolver.resolve(&wanted);
        assert_eq!(owners.process_name(inode), None);
        assert!(resolver.found_at.is_empty());
    }
}
