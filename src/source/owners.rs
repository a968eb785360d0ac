//! Finds the process that owns each socket, through the socket inodes that
//! `/proc/<pid>/fd/*` links point at (`socket:[12345]`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use portstat_core::model::SocketOwners;

/// Every this many samples, every descriptor is read again.
const FULL_PASS_EVERY: u32 = 60;

/// The most threads whose run times are summed to tell that a process has
/// not run.
const MOST_THREADS_SUMMED: u64 = 64;

/// What a descriptor was last seen to refer to: a socket inode, or 0 for
/// anything else.
type Descriptors = HashMap<u32, u64>;

/// What is remembered of one process.
#[derive(Default)]
struct ProcessEntry {
    descriptors: Descriptors,
    /// CPU time the process's threads had run for, summed, when its
    /// descriptors were listed, in nanoseconds; `None` where not read.
    runtime: Option<u64>,
    /// Its `comm`, once read; read again whenever the descriptors are (a
    /// process that has not run cannot have renamed itself).
    comm: Option<String>,
}

/// Finds socket owners, remembering what each process's descriptors refer to.
///
/// Reading where a descriptor points costs a `readlink()`, the bulk of
/// attribution. Each sample lists every process's descriptors (cheap) and
/// reads only the new ones and those whose socket was wanted last time but is
/// not now (closed, or out of the range: its number is the likeliest to be
/// reused). A descriptor number reused between two samples is otherwise not
/// noticed, so when a wanted socket finds no owner that way, every
/// descriptor is read again at once; so it is every `FULL_PASS_EVERY`
/// samples. Sockets that even a full pass cannot place (their owner is in
/// another PID namespace, or unreadable) do not trigger another one.
///
/// A process none of whose threads has run since its descriptors were listed
/// (the run times of `schedstat`, summed over its threads, are unchanged)
/// cannot have opened or closed any: its listing is reused without reading
/// the directory, which on a host of mostly idle processes is most of the
/// cost, and for a proxy's workers holding thousands of sockets each spares
/// listing them all. A process of more than `MOST_THREADS_SUMMED` threads is
/// listed each time: reading that many run times costs more than it saves.
pub struct OwnerResolver {
    procfs: PathBuf,
    processes: HashMap<u32, ProcessEntry>,
    wanted_before: HashSet<u64>,
    /// Wanted sockets that the last full pass found no owner for.
    ownerless: HashSet<u64>,
    samples_since_full_pass: u32,
    /// Whether the log already said that some descriptors are unreadable.
    told_unprivileged: bool,
    path: PathBuf,
}

impl OwnerResolver {
    /// A resolver for the procfs mounted at `procfs`.
    pub fn new(procfs: &Path) -> OwnerResolver {
        OwnerResolver {
            procfs: procfs.to_path_buf(),
            processes: HashMap::new(),
            wanted_before: HashSet::new(),
            ownerless: HashSet::new(),
            samples_since_full_pass: FULL_PASS_EVERY,
            told_unprivileged: false,
            path: PathBuf::new(),
        }
    }

    /// Resolves the owners of the sockets with inodes `wanted`.
    ///
    /// Where several processes share a socket the lowest pid wins. Processes
    /// that exit during the walk, and descriptors that cannot be read (no
    /// permission), are skipped: their sockets stay without an owner.
    pub fn resolve(&mut self, wanted: HashSet<u64>) -> SocketOwners {
        let mut full_pass = self.samples_since_full_pass >= FULL_PASS_EVERY;
        let mut owners = self.pass(&wanted, full_pass);
        if !full_pass {
            let unexplained = wanted.iter().any(|inode| {
                !owners.pid_by_inode.contains_key(inode) && !self.ownerless.contains(inode)
            });
            if unexplained {
                owners = self.pass(&wanted, true);
                full_pass = true;
            }
        }
        if full_pass {
            self.samples_since_full_pass = 0;
            self.ownerless = wanted
                .iter()
                .filter(|inode| !owners.pid_by_inode.contains_key(inode))
                .copied()
                .collect();
        } else {
            self.samples_since_full_pass += 1;
        }
        self.wanted_before = wanted;

        let owning_pids: HashSet<u32> = owners.pid_by_inode.values().copied().collect();
        for pid in owning_pids {
            let Some(entry) = self.processes.get_mut(&pid) else {
                continue;
            };
            if entry.comm.is_none() {
                self.path.clear();
                self.path.push(&self.procfs);
                self.path.push(pid.to_string());
                self.path.push("comm");
                // The kernel cuts `comm` at 15 bytes, often inside a
                // multibyte character: keep what is there.
                entry.comm = std::fs::read(&self.path).ok().map(|comm| {
                    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
                    portstat_core::model::process_label(portstat_core::model::comm_text(comm))
                });
            }
            if let Some(comm) = &entry.comm {
                owners.comm_by_pid.insert(pid, comm.clone());
            }
        }
        // A process whose comm vanished exited mid-walk: its sockets are gone
        // or inherited, so leave them unowned rather than name a dead pid.
        owners
            .pid_by_inode
            .retain(|_, pid| owners.comm_by_pid.contains_key(pid));
        owners
    }

    /// One walk over every process, in ascending pid order so that the first
    /// process found holding a socket is the lowest; `full` reads every
    /// descriptor again.
    fn pass(&mut self, wanted: &HashSet<u64>, full: bool) -> SocketOwners {
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
            let runtime = self.runtime(pid);
            let entry = if !full && runtime.is_some() && runtime == cached.runtime {
                cached
            } else {
                let Some(descriptors) =
                    self.read_descriptors(pid, cached.descriptors, wanted, full)
                else {
                    continue;
                };
                ProcessEntry {
                    descriptors,
                    runtime,
                    comm: None,
                }
            };
            for &inode in entry.descriptors.values() {
                if inode != 0 && wanted.contains(&inode) {
                    owners.pid_by_inode.entry(inode).or_insert(pid);
                }
            }
            processes.insert(pid, entry);
        }
        self.processes = processes;
        owners
    }

    /// The CPU time, in nanoseconds, that a process's threads have run for,
    /// summed; `None` for a process of more than `MOST_THREADS_SUMMED`
    /// threads, or where the kernel does not say (no `schedstat`).
    fn runtime(&mut self, pid: u32) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.path.clear();
        self.path.push(&self.procfs);
        self.path.push(pid.to_string());
        self.path.push("task");
        // A task directory links to itself, its parent and each thread.
        let threads = std::fs::metadata(&self.path).ok()?.nlink().checked_sub(2)?;
        if threads == 1 {
            self.path.pop();
            self.path.push("schedstat");
            return first_number(&std::fs::read_to_string(&self.path).ok()?);
        }
        if threads == 0 || threads > MOST_THREADS_SUMMED {
            return None;
        }
        let mut total: u64 = 0;
        let mut counted = 0;
        for thread in std::fs::read_dir(&self.path).ok()?.flatten() {
            let text = std::fs::read_to_string(thread.path().join("schedstat")).ok()?;
            total = total.wrapping_add(first_number(&text)?);
            counted += 1;
        }
        // A thread that came or went while they were read changes the sum
        // next time anyway; one that was missed must not hide a change.
        (counted == threads).then_some(total)
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
        let listing = match std::fs::read_dir(&self.path) {
            Ok(listing) => listing,
            Err(error) => {
                self.tell_if_denied(pid, &error);
                return None;
            }
        };
        let mut descriptors = Descriptors::with_capacity(cached.len());
        for entry in listing.flatten() {
            let Some(fd) = parse_number(&entry.file_name()) else {
                continue;
            };
            let known = cached.remove(&fd).filter(|&inode| {
                !full_pass && (wanted.contains(&inode) || !self.wanted_before.contains(&inode))
            });
            let target = match known {
                Some(inode) => inode,
                None => match std::fs::read_link(entry.path()) {
                    Ok(target) => parse_socket_link(target.as_os_str()).unwrap_or(0),
                    // A process of the exporter's own user that holds
                    // capabilities the exporter lacks (root's, to an
                    // exporter whose capabilities were dropped): listed,
                    // but its descriptors cannot be read.
                    Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                        self.tell_if_denied(pid, &error);
                        return None;
                    }
                    // Closed since the listing.
                    Err(_) => continue,
                },
            };
            descriptors.insert(fd, target);
        }
        Some(descriptors)
    }
}

impl OwnerResolver {
    /// Says once why some processes' sockets are not attributed, when
    /// `error`, met reading process `pid`'s descriptors, is a refusal: the
    /// process and the error, and which of the capabilities the walk needs
    /// the exporter lacks, or, where it holds both, that the process holds
    /// capabilities it lacks.
    fn tell_if_denied(&mut self, pid: u32, error: &std::io::Error) {
        if error.kind() != std::io::ErrorKind::PermissionDenied || self.told_unprivileged {
            return;
        }
        self.told_unprivileged = true;
        let effective = std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|status| effective_capabilities(&status));
        let lacking: Vec<&str> = [(19, "CAP_SYS_PTRACE"), (2, "CAP_DAC_READ_SEARCH")]
            .into_iter()
            .filter(|&(bit, _)| effective.is_none_or(|mask| mask & (1 << bit) == 0))
            .map(|(_, name)| name)
            .collect();
        let why = if lacking.is_empty() {
            format!(
                "process {pid} holds capabilities the exporter lacks, and the kernel \
                 refuses its descriptors to any process that lacks one of them"
            )
        } else {
            format!("the exporter lacks {}", lacking.join(" and "))
        };
        tracing::info!(
            pid,
            err = %error,
            "cannot read /proc/{pid}/fd: {why}; the sockets of every process it cannot read \
             are labelled process=\"unknown\""
        );
    }
}

/// The effective capabilities a `/proc/<pid>/status` text gives (`CapEff`).
fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
}

/// The first number of a `schedstat` line: time spent running, in ns.
fn first_number(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
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
    fn effective_capabilities_come_from_cap_eff() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000080004\n";
        let mask = effective_capabilities(status).unwrap();
        assert_eq!(mask & (1 << 19), 1 << 19, "CAP_SYS_PTRACE");
        assert_eq!(mask & (1 << 2), 1 << 2, "CAP_DAC_READ_SEARCH");
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

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
        // A new socket is found at the next sample.
        drop(listener);
        let replacement = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let new_inode = std::fs::metadata(format!("/proc/self/fd/{}", replacement.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = resolver.resolve(HashSet::from([new_inode]));
        assert_eq!(owners.process_name(new_inode), Some(comm.trim_end()));
    }

    /// A procfs-like tree of processes whose descriptors are plain symbolic
    /// links, which `readlink()` reads the same way; removed on drop.
    struct FakeProcesses(PathBuf);

    impl FakeProcesses {
        fn new(name: &str) -> FakeProcesses {
            let root =
                std::env::temp_dir().join(format!("portstat-owners-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            FakeProcesses(root)
        }

        fn descriptor(&self, pid: u32, fd: u32, target: &str) {
            let directory = self.0.join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&directory).unwrap();
            std::fs::write(
                self.0.join(pid.to_string()).join("comm"),
                format!("p{pid}\n"),
            )
            .unwrap();
            let link = directory.join(fd.to_string());
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, link).unwrap();
        }
    }

    impl Drop for FakeProcesses {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn owner(resolver: &mut OwnerResolver, wanted: &[u64], inode: u64) -> Option<String> {
        let owners = resolver.resolve(wanted.iter().copied().collect());
        owners.process_name(inode).map(str::to_string)
    }

    #[test]
    fn reused_descriptor_numbers_are_noticed() {
        let tree = FakeProcesses::new("reuse");
        tree.descriptor(100, 0, "/dev/null");
        tree.descriptor(100, 3, "socket:[555]");
        tree.descriptor(100, 4, "socket:[900]");
        tree.descriptor(50, 3, "pipe:[1]");
        let mut resolver = OwnerResolver::new(&tree.0);
        assert_eq!(owner(&mut resolver, &[555], 555).as_deref(), Some("p100"));
        // The wanted socket on fd 3 closed and its number went to another.
        tree.descriptor(100, 3, "socket:[777]");
        assert_eq!(owner(&mut resolver, &[777], 777).as_deref(), Some("p100"));
        // fd 4 held a socket nobody wanted; its number now holds a wanted
        // one: no owner at first, so every descriptor is read again.
        tree.descriptor(100, 4, "socket:[901]");
        assert_eq!(
            owner(&mut resolver, &[777, 901], 901).as_deref(),
            Some("p100")
        );
        // A file's descriptor number reused for a socket.
        tree.descriptor(100, 0, "socket:[902]");
        assert_eq!(
            owner(&mut resolver, &[777, 901, 902], 902).as_deref(),
            Some("p100")
        );
        // New descriptors and new processes.
        tree.descriptor(100, 9, "socket:[903]");
        tree.descriptor(200, 1, "socket:[904]");
        assert_eq!(
            owner(&mut resolver, &[903, 904], 903).as_deref(),
            Some("p100")
        );
        assert_eq!(
            owner(&mut resolver, &[903, 904], 904).as_deref(),
            Some("p200")
        );
    }

    /// A process of several threads none of which ran since the last
    /// sample is not listed again; once one runs, it is.
    #[test]
    fn a_process_whose_threads_have_not_run_is_not_listed_again() {
        let tree = FakeProcesses::new("threads");
        tree.descriptor(400, 3, "socket:[61]");
        let runtimes = |first: u64, second: u64| {
            for (thread, runtime) in [(400, first), (401, second)] {
                let directory = tree.0.join("400/task").join(thread.to_string());
                std::fs::create_dir_all(&directory).unwrap();
                std::fs::write(directory.join("schedstat"), format!("{runtime} 0 0\n")).unwrap();
            }
        };
        runtimes(1000, 2000);
        let mut resolver = OwnerResolver::new(&tree.0);
        assert_eq!(owner(&mut resolver, &[61, 62], 61).as_deref(), Some("p400"));
        // A new socket, but no thread ran: the listing is reused.
        tree.descriptor(400, 4, "socket:[62]");
        assert_eq!(owner(&mut resolver, &[61, 62], 62), None);
        // The second thread ran.
        runtimes(1000, 2500);
        assert_eq!(owner(&mut resolver, &[61, 62], 62).as_deref(), Some("p400"));
    }

    #[test]
    fn the_lowest_pid_wins_and_owners_that_leave_are_forgotten() {
        let tree = FakeProcesses::new("lowest");
        tree.descriptor(300, 5, "socket:[42]");
        tree.descriptor(30, 7, "socket:[42]");
        let mut resolver = OwnerResolver::new(&tree.0);
        for _ in 0..3 {
            assert_eq!(owner(&mut resolver, &[42], 42).as_deref(), Some("p30"));
        }
        std::fs::remove_dir_all(tree.0.join("30")).unwrap();
        assert_eq!(owner(&mut resolver, &[42], 42).as_deref(), Some("p300"));
        std::fs::remove_dir_all(tree.0.join("300")).unwrap();
        assert_eq!(owner(&mut resolver, &[42], 42), None);
    }
}
