//! Reads the kernel, for one network namespace at a time: its port
//! settings and sockets (`SocketSource`, one fallback chain), the processes
//! that own them (`OwnerSource`), its source NAT (`NatSource`), the one walk
//! of the host's shared tables (`SharedWalk`), and the host's namespaces.
//! Everything here does I/O and decides nothing of what is read when: the
//! collectors (`src/collector/`) own these parts and run them; what the
//! figures mean is decided in `aggregate`.

pub mod bpf;
pub mod census;
pub mod conntrack;
pub mod namespaces;
pub mod netlink;
pub mod owners;
pub mod procfs;
pub mod sysctl;

mod names;
mod nat_read;
mod owner_source;
mod shared_use;
mod sockets;

pub use names::NameSource;
pub use nat_read::{NatError, NatRead, NatSource};
pub use owner_source::OwnerSource;
pub use shared_use::{SharedTablesUse, SharedWalk};
pub use sockets::SocketSource;
pub(crate) use sockets::{SOCKETS_BETWEEN_YIELDS, inode_reading};

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

pub use portstat_core::model::ReadReport;
use portstat_core::model::{PortRange, ReservedPorts, TimeWaitReuse};

/// A failure to read what the kernel reports.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A netlink dump failed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// The BPF source failed.
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    /// A network namespace could not be entered.
    #[error("cannot enter the network namespace of {path}: {source}")]
    Enter {
        /// The file that refers to it.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// With `--collector.netns=all`, no namespace could be sampled.
    #[error("no network namespace could be sampled: {reason}")]
    NoNamespace {
        /// Why, from the first namespace that failed.
        reason: String,
    },
    /// A file was read but its content is not what the kernel writes.
    #[error("malformed {path}: {reason}")]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, with the line where it is known.
        reason: String,
    },
}

/// A namespace's port settings, read fresh at every sample.
#[derive(Debug, Clone)]
pub struct PortSettings {
    /// `net.ipv4.ip_local_port_range`.
    pub range: PortRange,
    /// `net.ipv4.ip_local_reserved_ports`.
    pub reserved: ReservedPorts,
    /// The settings that decide when `connect()` may take over TIME_WAIT.
    pub time_wait_reuse: TimeWaitReuse,
}

/// Which socket source to use, as `--collector.source` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// BPF for TCP, else netlink, else procfs, per protocol, each step
    /// taken where the one before is refused or unsupported.
    Auto,
    /// BPF for TCP and netlink for UDP (UDP too from the one walk of
    /// `--collector.netns=all`); a sample fails where either does.
    Bpf,
    /// Netlink only; a sample fails where netlink does.
    Netlink,
    /// procfs only.
    Procfs,
}

/// The most a sysctl file may hold: `ip_local_reserved_ports` listing
/// every port one by one would take about 330 KiB.
const SMALL_FILE_LIMIT: u64 = 1 << 20;

/// Opens a file below the procfs root for reading: a regular file, as
/// kernel files are, opened without blocking (`files::open_regular`).
pub(crate) fn open_kernel_file(path: &Path) -> io::Result<std::fs::File> {
    crate::files::open_regular(path)
}

/// Reads a whole small kernel file as text: a regular file of at most
/// `SMALL_FILE_LIMIT` bytes.
pub(crate) fn read_small_file(path: &Path) -> io::Result<String> {
    String::from_utf8(crate::files::read_bounded(path, SMALL_FILE_LIMIT)?)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Reads a whole small text file, naming it in the error.
fn read_text(path: &Path) -> Result<String, SourceError> {
    read_small_file(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The names of the interfaces with these indexes, in the calling thread's
/// namespace (the one just read): an interface's index means something only
/// inside its namespace.
pub fn interface_names(indexes: &BTreeSet<u32>) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    for &index in indexes {
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname writes at most.
        let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
        if !found.is_null() {
            // SAFETY: on success the kernel's name is NUL-terminated in `name`.
            let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
            names.insert(index, name.to_string_lossy().into_owned());
        }
    }
    names
}
