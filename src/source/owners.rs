//! Finds the process that owns each socket, through the socket inodes that
//! `/proc/<pid>/fd/*` links point at (`socket:[12345]`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::model::SocketOwners;

/// Every this many samples, every descriptor is read again.
const FULL_PASS_EVERY: u32 = 12;

/// What a descriptor was last seen to refer to: a socket inode, or 0 for
/// anything else.
type Descriptors = HashMap<u32, u64>;

/// Finds socket owners, remembering what each process's descriptors refer to.
///
/// Reading where a descriptor points costs a `readlink()`, the bulk of
/// attribution. Each sample lists every process's descriptors (cheap), and
/// reads only those that are new, those that pointed at something other than
/// a socket, and those whose socket was wanted last time but is not now
/// (closed or moved out of the range: its number is the likeliest to be
/// reused). A descriptor number reused for another socket between two
/// samples is otherwise not noticed, so every `FULL_PASS_EVERY` samples, and
/// at the next sample when a wanted socket found no owner, every descriptor
/// is read again.
pub struct OwnerResolver {
    procfs: PathBuf,
    processes: HashMap<u32, Descriptors>,
    wanted_before: HashSet<u64>,
    samples_since_full_pass: u32,
    unresolved_before: usize,
    path: PathBuf,
}

impl OwnerResolver {
    /// A resolver for the procfs mounted at `procfs`.
    pub fn new(procfs: &Path) -> OwnerResolver {
        OwnerResolver {
            procfs: procfs.to_path_buf(),
            processes: HashMap::new(),
            wanted_before: HashSet::new(),
            samples_since_full_pass: FULL_PASS_EVERY,
            unresolved_before: 0,
            path: PathBuf::new(),
        }
    }

    /// Resolves the owners of the sockets with inodes `wanted`.
    ///
    /// Where several processes share a socket the lowest pid wins. Processes
    /// that exit during the walk, and descriptors that cannot be read (no
    /// permission), are skipped: their sockets stay without an owner.
    pub fn resolve(&mut self, wanted: HashSet<u64>) -> SocketOwners {
        let full_pass = self.samples_since_full_pass >= FULL_PASS_EVERY
            || (self.unresolved_before > 0 && self.samples_since_full_pass >= 1);
        self.samples_since_full_pass = if full_pass {
            0
        } else {
            self.samples_since_full_pass + 1
        };
        let mut owners = SocketOwners::default();
        let Ok(entries) = std::fs::read_dir(&self.procfs) else {
            self.processes.clear();
            return owners;
        };
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|entry| parse_number(&entry.file_name()))
            .collect();
        pids.sort_unstable();
        let mut processes = HashMap::with_capacity(pids.len());
        for pid in pids {
            let cached = self.processes.remove(&pid).unwrap_or_default();
            let Some(descriptors) = self.read_descriptors(pid, cached, &wanted, full_pass) else {
                continue;
            };
            // Ascending pids: the first process found holding a socket is
            // the lowest.
            for &inode in descriptors.values() {
                if inode != 0 && wanted.contains(&inode) {
                    owners.pid_by_inode.entry(inode).or_insert(pid);
                }
            }
            processes.insert(pid, descriptors);
        }
        self.processes = processes;
        self.unresolved_before = wanted.len() - owners.pid_by_inode.len();
        self.wanted_before = wanted;

        let owning_pids: HashSet<u32> = owners.pid_by_inode.values().copied().collect();
        for pid in owning_pids {
            self.path.clear();
            self.path.push(&self.procfs);
            self.path.push(pid.to_string());
            self.path.push("comm");
            if let Ok(comm) = std::fs::read_to_string(&self.path) {
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

    /// Lists one process's descriptors and reads those that need it; `None`
    /// when the process is gone or its descriptors cannot be listed.
    fn read_descriptors(
        &mut self,
        pid: u32,
        mut cached: Descriptors,
        wanted: &HashSet<u64>,
        full_pass: bool,
    ) -> Option<Descriptors> {
        self.path.clear();
        self.path.push(&self.procfs);
        self.path.push(pid.to_string());
        self.path.push("fd");
        let listing = std::fs::read_dir(&self.path).ok()?;
        let mut descriptors = Descriptors::with_capacity(cached.len());
        for entry in listing.flatten() {
            let Some(fd) = parse_number(&entry.file_name()) else {
                continue;
            };
            let known = cached.remove(&fd).filter(|&inode| {
                !full_pass
                    && inode != 0
                    && (wanted.contains(&inode) || !self.wanted_before.contains(&inode))
            });
            let target = match known {
                Some(inode) => inode,
                None => match std::fs::read_link(entry.path()) {
                    Ok(target) => parse_socket_link(target.as_os_str()).unwrap_or(0),
                    // Closed since the listing.
                    Err(_) => continue,
                },
            };
            descriptors.insert(fd, target);
        }
        Some(descriptors)
    }
}

/// Parses a directory name below procfs as a pid or a descriptor number.
fn parse_number(name: &OsStr) -> Option<u32> {
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
        assert_eq!(parse_number(OsStr::new("1")), Some(1));
        assert_eq!(parse_number(OsStr::new("self")), None);
        assert_eq!(parse_number(OsStr::new("")), None);
        assert_eq!(parse_number(OsStr::new("+1")), None);
    }

    #[test]
    fn finds_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let inode = {
            std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let mut resolver = OwnerResolver::new(Path::new("/proc"));
        let wanted = HashSet::from([inode, 1]);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        // First by walking, then from where it was found.
        for _ in 0..2 {
            let owners = resolver.resolve(wanted.clone());
            assert_eq!(owners.process_name(inode), Some(comm.trim_end()));
            assert_eq!(owners.pid_by_inode[&inode], std::process::id());
            assert_eq!(owners.process_name(1), None);
        }
        // A closed socket is not found any more, and a new socket on the
        // same descriptor number is found at once.
        let fd = listener.as_raw_fd();
        drop(listener);
        let owners = resolver.resolve(wanted);
        assert_eq!(owners.process_name(inode), None);
        // Usually the same number; other tests' threads may take it first.
        let replacement = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let new_fd = replacement.as_raw_fd();
        let new_inode = std::fs::metadata(format!("/proc/self/fd/{new_fd}"))
            .unwrap()
            .ino();
        let _ = fd;
        let wanted = HashSet::from([new_inode]);
        let owners = resolver.resolve(wanted);
        assert_eq!(owners.process_name(new_inode), Some(comm.trim_end()));
    }
}
