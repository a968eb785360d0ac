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
mod program_load;
mod shared_use;

pub use names::NameSource;
pub use nat_read::{NatError, NatRead};
pub use shared_use::SharedTablesUse;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};

pub use portstat_core::model::ReadReport;
use portstat_core::model::{
    NamespaceSample, OwnedSocket, OwnerLookup, PerProtocol, PortRange, Protocol, ReservedPorts,
    SocketOwners, SocketRecord, SocketSink, SourceKind, TimeWaitReuse,
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

/// Reads whole samples of the network namespace that the process is in.
pub struct NamespaceReader {
    procfs_root: PathBuf,
    /// The namespace's `net` folder below the procfs root.
    net: PathBuf,
    choice: SourceChoice,
    attribution: bool,
    procfs: procfs::ProcfsSockets,
    netlink: netlink::NetlinkSockets,
    bpf: bpf::BpfSockets,
    owners: owners::OwnerResolver,
    /// The source in use for each protocol.
    sources: PerProtocol<SourceKind>,
    /// The socket counts of the last `read_settings`, where readable.
    census: Option<census::Census>,
    /// For each protocol, whether the source in use is known to run here
    /// (it read, or was loaded): where the counts let a dump be skipped,
    /// a source not yet proven is loaded first (the BPF program, the
    /// netlink socket), so that one that cannot run is found out and
    /// replaced rather than named while it never ran.
    proven: PerProtocol<bool>,
    /// The running kernel, where its release parses: what netlink reports
    /// depends on it.
    kernel: Option<portstat_core::rules::KernelVersion>,
    /// Owners from BPF: `None` until first asked, then the loaded program
    /// or `Err` where it cannot load (owners then come from procfs).
    bpf_owners: Option<Result<bpf::owners::BpfOwners, ()>>,
    /// Source NAT from conntrack, where asked for (`with_nat`).
    conntrack: Option<conntrack::ConntrackReader>,
    /// The namespaces, by inode, where source NAT was seen: their NAT
    /// figures are written from then on, at zero too, so that series do
    /// not come and go with the traffic.
    nat_seen: HashSet<u64>,
    /// The one walk of the host's TCP tables for every namespace on them
    /// (`--collector.netns=all`), `None` where it is not to be used: turned
    /// off, or found not to run here.
    shared_tables: Option<bpf::shared::SharedTables>,
    /// The BPF programs loading on a thread of their own
    /// (`load_programs_in_background`); TCP is read over netlink meanwhile.
    loading: Option<bpf::background::ProgramLoad>,
    /// Who closed each connection, by namespace, for the sockets no
    /// process holds: each namespace's read takes its namer as it starts.
    connection_names: Option<Box<dyn NameSource>>,
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
        let sources = match choice {
            SourceChoice::Auto | SourceChoice::Bpf => PerProtocol {
                tcp: SourceKind::Bpf,
                udp: SourceKind::Netlink,
            },
            SourceChoice::Netlink => PerProtocol::both(SourceKind::Netlink),
            SourceChoice::Procfs => PerProtocol::both(SourceKind::Procfs),
        };
        let tables = if thread_namespace {
            procfs_root.join("thread-self").join("net")
        } else {
            procfs_root.join("net")
        };
        NamespaceReader {
            procfs: procfs::ProcfsSockets::new(&tables),
            net: tables,
            netlink: netlink::NetlinkSockets::new(),
            bpf: bpf::BpfSockets::new(
                None,
                inode_reading(owner_lookup_before_load(attribution), None),
            ),
            owners: owners::OwnerResolver::new(&procfs_root),
            procfs_root,
            choice,
            attribution,
            sources,
            census: None,
            proven: PerProtocol::both(false),
            kernel: running_kernel(),
            bpf_owners: None,
            conntrack: None,
            nat_seen: HashSet::new(),
            shared_tables: None,
            loading: None,
            connection_names: None,
        }
    }

    /// Whether socket owners are found.
    pub fn finds_owners(&self) -> bool {
        self.attribution
    }

    /// Loads the BPF program from `object` rather than the one built in:
    /// for a rebuilt program, and for the tests that make it fail.
    pub fn with_bpf_object(mut self, object: Option<PathBuf>) -> NamespaceReader {
        self.bpf = bpf::BpfSockets::new(object, inode_reading(self.owner_lookup(), None));
        self
    }

    /// Reads the namespace's port settings, and what the socket counts say
    /// is there to find, for `read_sockets`.
    ///
    /// Settings are read fresh each time: the sysctls can change at run time.
    pub fn read_settings(&mut self) -> Result<PortSettings, SourceError> {
        let (range, reserved) = sysctl::read_port_settings(&self.procfs_root)?;
        // Where the counts show a protocol has nothing to find, its dump,
        // a walk of a table all namespaces may share, is skipped.
        self.census = census::read(&self.net);
        // Without TCP sockets there is no TIME_WAIT to judge.
        let time_wait_reuse = if self.census.is_some_and(|census| census.tcp_empty()) {
            TimeWaitReuse::default()
        } else {
            sysctl::read_time_wait_reuse(&self.procfs_root)?
        };
        Ok(PortSettings {
            range,
            reserved,
            time_wait_reuse,
        })
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
        self.read_sockets_with(range, keep_port, sink, PerProtocol::both(true))
    }

    /// `read_sockets` of the protocols `read` says.
    fn read_sockets_with(
        &mut self,
        range: PortRange,
        keep_port: Option<u16>,
        sink: &mut dyn SocketSink,
        read: PerProtocol<bool>,
    ) -> Result<ReadReport, SourceError> {
        self.bpf
            .set_inode_reading(inode_reading(self.owner_lookup(), keep_port));
        let mut sink = NotingInterfaces {
            sink,
            indexes: BTreeSet::new(),
            added: 0,
        };
        let mut skipped = PerProtocol::both(false);
        // Where the counts show that no socket is outside every table, no
        // bound-but-inactive one can exist: there is nothing to miss.
        let bound_inactive = self
            .census
            .is_none_or(|census| census.may_hold_bound_inactive());
        let mut bound_inactive_seen = !bound_inactive;
        for protocol in Protocol::ALL {
            skipped[protocol] = self.census.is_some_and(|census| match protocol {
                Protocol::Tcp => census.tcp_empty(),
                Protocol::Udp => census.udp_empty(),
            });
            if skipped[protocol] && self.proven[protocol] {
                continue;
            }
            if !read[protocol] {
                continue;
            }
            let read = if skipped[protocol] {
                Reading::Prove
            } else {
                Reading::Read { bound_inactive }
            };
            let seen = self.read_protocol(protocol, range, read, &mut sink)?;
            self.proven[protocol] = true;
            // The dumps and the BPF walk leave out connections whose local
            // port is outside the range; procfs and UDP read every socket.
            if let Some(port) = keep_port.filter(|&port| !range.contains(port))
                && protocol == Protocol::Tcp
                && matches!(read, Reading::Read { .. })
                && self.sources[protocol] != SourceKind::Procfs
            {
                self.netlink
                    .read_port(port, &mut sink)
                    .map_err(SourceError::Netlink)?;
            }
            if protocol == Protocol::Tcp {
                bound_inactive_seen |= seen;
            }
        }
        Ok(ReadReport {
            sources: self.sources,
            skipped,
            interfaces: interface_names(&sink.indexes),
            shares_host_tcp_table: sysctl::read_shares_host_tcp_table(&self.procfs_root),
            bound_inactive_seen,
            one_walk: false,
        })
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
        let Some(Ok(mut owners)) = self.bpf_owners.take() else {
            return Ok((self.read_sockets(range, keep_port, sink)?, Ok(())));
        };
        let (report, owned) = std::thread::scope(|scope| {
            let pass = scope.spawn(|| {
                let result = owners.read(keep_port, take);
                (owners, result)
            });
            let report = self.read_sockets(range, keep_port, sink);
            match pass.join() {
                Ok((owners, result)) => {
                    self.bpf_owners = Some(Ok(owners));
                    (report, result)
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
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
        self.netlink.close();
        if let Some(conntrack) = &mut self.conntrack {
            conntrack.close();
        }
    }

    /// The procfs root this reader reads.
    pub fn procfs_root(&self) -> &Path {
        &self.procfs_root
    }

    /// How owners are found now: not at all without attribution; from BPF
    /// records where the owners program is loaded; else by inode through
    /// `/proc/<pid>/fd`.
    pub fn owner_lookup(&self) -> OwnerLookup {
        match &self.bpf_owners {
            _ if !self.attribution => OwnerLookup::Off,
            Some(Ok(_)) => OwnerLookup::Records,
            _ => OwnerLookup::ByInode,
        }
    }

    /// Where each protocol's sockets are read from now.
    pub fn sources(&self) -> PerProtocol<SourceKind> {
        self.sources
    }

    /// Whether the one walk of the host's shared tables is on.
    pub fn walks_shared_tables(&self) -> bool {
        self.shared_tables.is_some()
    }

    /// Hands every TCP and UDP socket a process holds to `take`, with
    /// `OwnerLookup::Records`; each record names the socket's namespace.
    /// The inodes of sockets on `keep_port` are always read; of other
    /// sockets, only where they must be told apart from the rest on their
    /// port (listeners, files referred to more than once).
    pub fn read_owner_records(
        &mut self,
        keep_port: Option<u16>,
        take: &mut dyn FnMut(&OwnedSocket),
    ) -> Result<(), SourceError> {
        match &mut self.bpf_owners {
            Some(Ok(owners)) => owners.read(keep_port, take).map_err(SourceError::Bpf),
            _ => Ok(()),
        }
    }

    /// Finds the processes that own the sockets with inodes `wanted`, unless
    /// attribution is off. Owners that cannot be found are left out, never an
    /// error.
    pub fn resolve_owners(&mut self, wanted: &[u64]) -> SocketOwners {
        if !self.attribution || wanted.is_empty() {
            return SocketOwners::default();
        }
        self.owners.resolve(wanted.iter().copied().collect())
    }

    /// Reads one protocol with its current source, or only proves that
    /// the source can run; in `auto`, a source that cannot serve here
    /// hands over to the next (BPF, then netlink, then procfs) for good,
    /// logged once. Returns whether the TCP sockets bound but neither
    /// listening nor connected were read: by a complete walk of the bind
    /// hash, or over netlink where the kernel reports them.
    fn read_protocol(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        read: Reading,
        sink: &mut dyn SocketSink,
    ) -> Result<bool, SourceError> {
        let netlink_reports_bound_inactive = self
            .kernel
            .is_some_and(|kernel| kernel.inet_diag_reports_bound_inactive());
        loop {
            let source = self.sources[protocol];
            let result = match (source, read) {
                (SourceKind::Procfs, Reading::Prove) => return Ok(false),
                (SourceKind::Procfs, Reading::Read { .. }) => {
                    self.procfs.read_sockets(protocol, sink)?;
                    return Ok(false);
                }
                (SourceKind::Netlink, Reading::Prove) => self
                    .netlink
                    .open()
                    .map(|()| false)
                    .map_err(SourceError::Netlink),
                (SourceKind::Netlink, Reading::Read { bound_inactive }) => self
                    .netlink
                    .read_sockets(protocol, range, bound_inactive, sink)
                    .map(|()| netlink_reports_bound_inactive)
                    .map_err(SourceError::Netlink),
                (SourceKind::Bpf, Reading::Prove) => self
                    .bpf
                    .load_once()
                    .map(|()| false)
                    .map_err(SourceError::Bpf),
                (SourceKind::Bpf, Reading::Read { bound_inactive }) => self
                    .bpf
                    .read_sockets(range, bound_inactive, &mut self.netlink, sink)
                    .map(|walked| walked || netlink_reports_bound_inactive)
                    .map_err(SourceError::Bpf),
            };
            let error = match result {
                Ok(seen) => return Ok(seen),
                Err(error) => error,
            };
            let unsupported = match &error {
                SourceError::Netlink(error) => netlink::Unsupported::is_unsupported(error),
                SourceError::Bpf(error) => error.is_unsupported(),
                _ => false,
            };
            if self.choice != SourceChoice::Auto || !unsupported {
                return Err(error);
            }
            sink.restart(protocol);
            let next = match source {
                SourceKind::Bpf => SourceKind::Netlink,
                _ => SourceKind::Procfs,
            };
            warn_of_fallback(protocol, source, &error);
            self.sources[protocol] = next;
        }
    }
}

/// Logs that `protocol` cannot be read from `source` here, for `error`,
/// and what is read instead.
fn warn_of_fallback(protocol: Protocol, source: SourceKind, error: &SourceError) {
    match source {
        SourceKind::Bpf => tracing::warn!(
            protocol = protocol.label(),
            err = %error,
            "the BPF source cannot run here; reading netlink instead, so ports bound \
             before connect() count as shared and headroom is an upper bound"
        ),
        _ => tracing::warn!(
            protocol = protocol.label(),
            err = %error,
            "netlink sock_diag is not available; reading procfs instead"
        ),
    }
}

/// Logs that owners cannot come from the BPF program here, for `error`.
fn log_owners_fallback(error: &bpf::BpfError) {
    tracing::info!(
        err = %error,
        "socket owners cannot come from BPF here; walking /proc/<pid>/fd instead"
    );
}

/// What `read_protocol` does with a protocol's source.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// Only proves that the source can run here: the counts show that a
    /// dump would find nothing.
    Prove,
    /// Reads the sockets; `bound_inactive`: look for TCP sockets bound but
    /// neither listening nor connected.
    Read { bound_inactive: bool },
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

/// A sink that passes sockets on, noting the interfaces that sockets bound
/// to link-local addresses name by index, and yielding the CPU every
/// `SOCKETS_BETWEEN_YIELDS` sockets.
struct NotingInterfaces<'a> {
    sink: &'a mut dyn SocketSink,
    indexes: BTreeSet<u32>,
    added: u32,
}

/// How many sockets a sample takes between two yields of the CPU. On a
/// kernel without preemption a thread is switched out only when a tick
/// notices its time slice is over, up to 4 ms later: a scrape that arrives
/// while the sampler runs would wait that long. Yielding this often hands
/// the CPU to the server within a fraction of a millisecond, for about a
/// microsecond a yield.
pub(crate) const SOCKETS_BETWEEN_YIELDS: u32 = 256;

impl SocketSink for NotingInterfaces<'_> {
    fn add(&mut self, socket: &SocketRecord) {
        self.added += 1;
        if self.added.is_multiple_of(SOCKETS_BETWEEN_YIELDS) {
            std::thread::yield_now();
        }
        if let std::net::IpAddr::V6(address) = socket.local.ip()
            && address.is_unicast_link_local()
            && socket.interface != 0
        {
            self.indexes.insert(socket.interface);
        }
        self.sink.add(socket);
    }

    fn restart(&mut self, protocol: Protocol) {
        self.sink.restart(protocol);
    }
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

/// The release of the running kernel (`uname -r`), where it parses.
fn running_kernel() -> Option<portstat_core::rules::KernelVersion> {
    // SAFETY: utsname is plain bytes, for which zeroes are valid; uname
    // fills the struct it is given, with NUL-terminated fields.
    let (names, result) = unsafe {
        let mut names: libc::utsname = std::mem::zeroed();
        let result = libc::uname(&mut names);
        (names, result)
    };
    if result != 0 {
        return None;
    }
    // SAFETY: on success `release` is NUL-terminated within its array.
    let release = unsafe { std::ffi::CStr::from_ptr(names.release.as_ptr()) };
    portstat_core::rules::KernelVersion::parse(&release.to_string_lossy())
}

/// The inodes the BPF source reads, as owners are found (`lookup`): none,
/// every socket's, or those of listeners and of sockets on `keep_port`.
fn inode_reading(lookup: OwnerLookup, keep_port: Option<u16>) -> bpf::InodeReading {
    match lookup {
        OwnerLookup::Off => bpf::InodeReading::None,
        OwnerLookup::ByInode => bpf::InodeReading::All,
        OwnerLookup::Records => bpf::InodeReading::Listeners { port: keep_port },
    }
}

/// How owners are found before any program is loaded.
fn owner_lookup_before_load(attribution: bool) -> OwnerLookup {
    if attribution {
        OwnerLookup::ByInode
    } else {
        OwnerLookup::Off
    }
}
