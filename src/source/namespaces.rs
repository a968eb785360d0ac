//! Finds every network namespace on the host, and enters one at a time.
//!
//! Namespaces are found through the processes in them (`/proc/<pid>/ns/net`)
//! and through the names `ip netns` gives them (`/run/netns/<name>`). Nothing
//! is kept open between samples, so a namespace that is gone is not kept
//! alive by the exporter.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::source::SourceError;
use portstat_core::model::NamespaceIdentity;

/// Whether a namespace could not be entered because it is gone since it
/// was found, or its name no longer a namespace (`ip netns` creates the
/// file before it mounts the namespace there, and unmounts it before
/// deleting it: setns then finds no namespace, EINVAL): not a failure.
pub fn is_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::EINVAL)
}

/// The inode of the exporter's own network namespace.
pub fn own_namespace_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Where `ip netns` keeps the names of namespaces.
pub const NAMED_NAMESPACES: &str = "/run/netns";

/// A network namespace found on the host, and how to enter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Its inode, name, container and pod.
    pub identity: NamespaceIdentity,
    /// A file that refers to it: a process's `ns/net` or a named bind mount.
    pub handle: PathBuf,
}

/// Says once that other users' processes hide their namespaces.
fn tell_unseen_once() {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "cannot look at other users' processes' network namespaces (needs root, or \
             CAP_SYS_PTRACE): a namespace none of the exporter's user's processes is in, \
             and that has no name under /run/netns, is not sampled"
        );
    }
}

/// Finds the network namespaces of every process below `procfs` and every
/// name below `named`, sorted by inode. A namespace's container and pod come
/// from the cgroup of the lowest pid in it.
pub fn discover(procfs: &Path, named: &Path) -> Result<Vec<NamespaceEntry>, SourceError> {
    let processes = std::fs::read_dir(procfs).map_err(|source| SourceError::Read {
        path: procfs.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut found: BTreeMap<u64, NamespaceEntry> = BTreeMap::new();
    for pid in pids {
        let handle = procfs.join(pid.to_string()).join("ns").join("net");
        // Following the link gives the namespace's own inode. A process that
        // exited, or one we may not look at, is skipped.
        let metadata = match std::fs::metadata(&handle) {
            Ok(metadata) => metadata,
            Err(error) => {
                if error.kind() == std::io::ErrorKind::PermissionDenied {
                    tell_unseen_once();
                }
                continue;
            }
        };
        found.entry(metadata.ino()).or_insert_with(|| {
            let cgroup = std::fs::read_to_string(procfs.join(pid.to_string()).join("cgroup"))
                .unwrap_or_default();
            let (container_id, pod_uid) = parse_cgroup(&cgroup);
            NamespaceEntry {
                identity: NamespaceIdentity {
                    inode: metadata.ino(),
                    name: None,
                    container_id,
                    pod_uid,
                },
                handle,
            }
        });
    }
    if let Ok(names) = std::fs::read_dir(named) {
        for entry in names.flatten() {
            let path = entry.path();
            let (Ok(metadata), Some(name)) = (
                std::fs::metadata(&path),
                entry.file_name().to_str().map(str::to_string),
            ) else {
                continue;
            };
            let namespace = found
                .entry(metadata.ino())
                .or_insert_with(|| NamespaceEntry {
                    identity: NamespaceIdentity {
                        inode: metadata.ino(),
                        ..NamespaceIdentity::default()
                    },
                    handle: path.clone(),
                });
            // Several names for one namespace: the first in order.
            if namespace
                .identity
                .name
                .as_ref()
                .is_none_or(|old| name < *old)
            {
                namespace.identity.name = Some(name);
            }
        }
    }
    Ok(found.into_values().collect())
}

/// The inode of the calling thread's network namespace, which `Entered`
/// may have moved it to, below the procfs root `procfs`.
pub fn thread_namespace_inode(procfs: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(procfs.join("thread-self/ns/net"))
        .ok()
        .map(|metadata| metadata.ino())
}

/// `SO_NETNS_COOKIE`, Linux 5.14.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace: a number the
/// kernel gives each namespace at its creation and never gives another,
/// where the inode of a deleted namespace goes to the next one at once.
/// Read from a socket made for it (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn thread_namespace_cookie() -> io::Result<u64> {
    // SAFETY: a socket of our own, closed when dropped.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is ours alone.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `length` outlive the call and fit what it writes.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the namespace `handle` refers to, where that is still
/// the namespace of inode `inode` (a process's file may meanwhile refer to
/// another); `Ok(None)` where it is not. Enters it on this thread for the
/// time of the call.
pub fn namespace_cookie(handle: &Path, inode: u64) -> io::Result<Option<u64>> {
    let target = File::open(handle)?;
    if target.metadata()?.ino() != inode {
        return Ok(None);
    }
    let _entered = Entered::enter_file(&target)?;
    thread_namespace_cookie().map(Some)
}

/// The container id and pod uid that a process's `/proc/<pid>/cgroup` shows,
/// for the layouts of Docker, containerd and CRI-O, with the cgroupfs and
/// the systemd cgroup drivers.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut container_id = None;
    let mut pod_uid = None;
    for line in text.lines() {
        // "hierarchy:controllers:path"; the path may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for segment in path.split('/').rev() {
            if container_id.is_none() {
                container_id = container_segment(segment);
            }
            if pod_uid.is_none() {
                pod_uid = pod_segment(segment);
            }
        }
        if container_id.is_some() && pod_uid.is_some() {
            break;
        }
    }
    (container_id, pod_uid)
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, or a
/// bare `<id>`: 64 hexadecimal digits.
fn container_segment(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "containerd-",
        "libpod-",
    ]
    .iter()
    .find_map(|prefix| segment.strip_prefix(prefix))
    .unwrap_or(segment);
    (id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())).then(|| id.to_string())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<class>-pod<uid with _>.slice`
/// (systemd), as the uid's canonical text with dashes.
fn pod_segment(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let (_, uid) = segment.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let lengths_match = groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12]);
    let hexadecimal = groups
        .iter()
        .all(|group| group.bytes().all(|byte| byte.is_ascii_hexdigit()));
    (lengths_match && hexadecimal).then_some(uid)
}

/// The calling thread inside another network namespace; back in the one it
/// came from when dropped. Only this thread moves: other threads, and the
/// server's runtime, stay where they are. It cannot be sent to another
/// thread (the raw pointer makes it `!Send`): dropped there, it would move
/// that thread instead.
pub struct Entered {
    original: File,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Entered {
    /// Moves the calling thread into the namespace that `handle` refers to.
    pub fn enter(handle: &Path) -> io::Result<Entered> {
        Entered::enter_file(&File::open(handle)?)
    }

    /// Moves the calling thread into the namespace of the open file
    /// `target`.
    pub fn enter_file(target: &File) -> io::Result<Entered> {
        let original = File::open("/proc/thread-self/ns/net")?;
        set_namespace(target)?;
        Ok(Entered {
            original,
            _this_thread: std::marker::PhantomData,
        })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(error) = set_namespace(&self.original) {
            // The thread would read the wrong namespace from here on: there
            // is no way to go on correctly.
            tracing::error!(err = %error, "cannot return to the exporter's network namespace");
            std::process::abort();
        }
    }
}

fn set_namespace(file: &File) -> io::Result<()> {
    // SAFETY: setns on a namespace file we hold open; it affects this thread.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile where `Entered` is `Send`: the call would then
    /// match both implementations.
    #[test]
    fn entered_stays_on_its_thread() {
        trait SendOrNot<Which> {
            fn which() {}
        }
        impl<T: ?Sized> SendOrNot<()> for T {}
        impl<T: ?Sized + Send> SendOrNot<u8> for T {}
        <Entered as SendOrNot<_>>::which();
    }

    const ID: &str = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";

    #[test]
    fn docker_and_containerd_and_crio_layouts() {
        for text in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:memory:/docker/{ID}\n"),
            format!("0::/system.slice/crio-{ID}.scope\n"),
        ] {
            assert_eq!(parse_cgroup(&text), (Some(ID.to_string()), None), "{text}");
        }
    }

    #[test]
    fn kubernetes_pods_with_either_driver() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            parse_cgroup(&systemd),
            (
                Some(ID.to_string()),
                Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789".to_string())
            )
        );
        let cgroupfs =
            format!("0::/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/{ID}\n");
        assert_eq!(
            parse_cgroup(&cgroupfs),
            (
                Some(ID.to_string()),
                Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789".to_string())
            )
        );
    }

    #[test]
    fn hosts_and_garbage_name_nothing() {
        for text in [
            "0::/init.scope\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "",
            "garbage",
            "0::/docker/abc\n",
            "0::/kubepods/podnot-a-uid\n",
        ] {
            assert_eq!(parse_cgroup(text), (None, None), "{text}");
        }
    }

    #[test]
    fn discovers_this_process_namespace() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let found = discover(Path::new("/proc"), Path::new(NAMED_NAMESPACES)).unwrap();
        assert!(found.iter().any(|entry| entry.identity.inode == own));
        let inodes: Vec<u64> = found.iter().map(|entry| entry.identity.inode).collect();
        let mut sorted = inodes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(inodes, sorted, "one entry per namespace, in order");
    }
}
