//! Reads one network namespace from the kernel: its port settings, its sockets
//! and the processes that own them. Everything here does I/O; what the figures
//! mean is decided in `aggregate`.

pub mod all;
pub mod bpf;
pub mod census;
pub mod conntrack;
pub mod namespaces;
pub mod netlink;
pub mod owners;
pub mod procfs;
pub mod read;
pub mod sysctl;
pub mod walk;

mod names;
mod nat_read;
mod owner_source;
mod program_load;
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
use portstat_core::model::{
    NamespaceSample, OwnedSocket, OwnerLookup, PerProtocol, PortRange, ReservedPorts, SocketOwners,
    SocketSink, SourceKind, TimeWaitReuse,
};

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

/// Reads the network namespace the calling thread is in, one sample at a
/// time, from its parts: the socket source and its fallback chain
/// (`SocketSource`), the owners (`OwnerSource`), source NAT (`NatSource`),
/// the one walk of the host's shared tables (`shared_use`), and the BPF
/// programs loading in the background (`program_load`), which it hands to
/// the parts as they load.
pub struct NamespaceReader {
    procfs_root: PathBuf,
    /// The namespace's sockets.
    sockets: SocketSource,
    /// Their owners.
    owners: OwnerSource,
    /// Source NAT from conntrack, where asked for (`with_nat`).
    nat: Option<NatSource>,
    /// The one walk of the host's TCP tables for every namespace on them
    /// (`--collector.netns=all`).
    shared: SharedWalk,
    /// The BPF programs loading on a thread of their own
    /// (`load_programs_in_background`); TCP is read over netlink meanwhile.
    loading: Option<bpf::background::ProgramLoad>,
}

impl NamespaceReader {
    /// A reader of the namespace through `choice`, with procfs at
    /// `procfs_root` (normally `/proc`); `attribution` resolves socket owners.
    ///
    /// With `thread_namespace`, procfs tables are read from `thread-self/net`,
    /// the namespace of the calling thread (which `namespaces::Entered` may
    /// have moved), rather than `net`, that of the process.
    pub fn new(
        procfs_root: PathBuf,
        choice: SourceChoice,
        attribution: bool,
        thread_namespace: bool,
    ) -> NamespaceReader {
        let tables = if thread_namespace {
            procfs_root.join("thread-self").join("net")
        } else {
            procfs_root.join("net")
        };
        NamespaceReader {
            sockets: SocketSource::new(
                &procfs_root,
                tables,
                choice,
                OwnerSource::lookup_before_load(attribution),
            ),
            owners: OwnerSource::new(&procfs_root, attribution),
            shared: SharedWalk::new(&procfs_root, false),
            procfs_root,
            nat: None,
            loading: None,
        }
    }

    /// Whether socket owners are found.
    pub fn finds_owners(&self) -> bool {
        self.owners.finds_owners()
    }

    /// Loads the BPF program from `object` rather than the one built in:
    /// for a rebuilt program, and for the tests that make it fail.
    pub fn with_bpf_object(mut self, object: Option<PathBuf>) -> NamespaceReader {
        let lookup = self.owner_lookup();
        self.sockets = self.sockets.with_bpf_object(object, lookup);
        self
    }

    /// Reads the namespace's port settings, and what the socket counts say
    /// is there to find, for `read_sockets`.
    pub fn read_settings(&mut self) -> Result<PortSettings, SourceError> {
        self.sockets.read_settings()
    }

    /// Hands every socket the figures need to `sink`, one at a time, for the
    /// `range` of the last `read_settings`; owners are found afterwards with
    /// `resolve_owners` or `read_owner_records`. The inodes of sockets on
    /// `keep_port` are always read.
    pub fn read_sockets(
        &mut self,
        range: PortRange,
        keep_port: Option<u16>,
        sink: &mut dyn SocketSink,
    ) -> Result<ReadReport, SourceError> {
        let lookup = self.owner_lookup();
        self.sockets
            .read(range, keep_port, sink, PerProtocol::both(true), lookup)
    }

    /// `read_sockets`, with the owner records of `read_owner_records` read
    /// at the same time, on a second thread that hands them to `take`: the
    /// two passes are independent walks of the kernel (its socket tables,
    /// and every process's open files), so the wall time is the longer of
    /// the two rather than their sum. For one-shot commands, whose user
    /// waits for them; the CPU spent is the same. Without owner records
    /// (`OwnerLookup::Records`), only the sockets are read. Returns the
    /// sockets' report with whether the owner records were read.
    pub fn read_sockets_beside_owner_records(
        &mut self,
        range: PortRange,
        keep_port: Option<u16>,
        sink: &mut dyn SocketSink,
        take: &mut (dyn FnMut(&OwnedSocket) + Send),
    ) -> Result<(ReadReport, Result<(), SourceError>), SourceError> {
        let lookup = self.owner_lookup();
        let Some(mut owners) = self.owners.take_program() else {
            return Ok((self.read_sockets(range, keep_port, sink)?, Ok(())));
        };
        let sockets = &mut self.sockets;
        let (report, owned, owners) = std::thread::scope(|scope| {
            let pass = scope.spawn(|| {
                let result = owners.read(keep_port, take);
                (owners, result)
            });
            let report = sockets.read(range, keep_port, sink, PerProtocol::both(true), lookup);
            match pass.join() {
                Ok((owners, result)) => (report, result, owners),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        self.owners.put_back(owners);
        Ok((report?, owned.map_err(SourceError::Bpf)))
    }

    /// Reads the namespace's settings and every socket whole, into memory:
    /// for tests and fixtures. Owners are left empty for `resolve_owners`.
    pub fn read(&mut self) -> Result<NamespaceSample, SourceError> {
        let settings = self.read_settings()?;
        let mut sockets = Vec::new();
        let report = self.read_sockets(settings.range, None, &mut sockets)?;
        Ok(NamespaceSample {
            range: settings.range,
            reserved: settings.reserved,
            time_wait_reuse: settings.time_wait_reuse,
            sockets,
            owners: SocketOwners::default(),
            report,
        })
    }

    /// Closes what ties the reader to the namespace it last read (its netlink
    /// socket), so that it holds nothing of that namespace afterwards.
    pub fn leave_namespace(&mut self) {
        self.sockets.leave_namespace();
        if let Some(nat) = &mut self.nat {
            nat.leave_namespace();
        }
    }

    /// The procfs root this reader reads.
    pub fn procfs_root(&self) -> &Path {
        &self.procfs_root
    }

    /// How owners are found now (`OwnerSource::lookup`).
    pub fn owner_lookup(&self) -> OwnerLookup {
        self.owners.lookup()
    }

    /// Where each protocol's sockets are read from now.
    pub fn sources(&self) -> PerProtocol<SourceKind> {
        self.sockets.sources()
    }

    /// Whether the one walk of the host's shared tables is on.
    pub fn walks_shared_tables(&self) -> bool {
        self.shared.is_on()
    }

    /// Hands every TCP and UDP socket a process holds to `take`
    /// (`OwnerSource::read_records`).
    pub fn read_owner_records(
        &mut self,
        keep_port: Option<u16>,
        take: &mut dyn FnMut(&OwnedSocket),
    ) -> Result<(), SourceError> {
        self.owners.read_records(keep_port, take)
    }

    /// Finds the processes that own the sockets with inodes `wanted`
    /// (`OwnerSource::resolve`).
    pub fn resolve_owners(&mut self, wanted: &[u64]) -> SocketOwners {
        self.owners.resolve(wanted)
    }
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
