//! The socket source of a namespace: one fallback chain, BPF → netlink →
//! procfs per protocol (`SourceChoice::Auto`), behind one interface,
//! `SocketSource::read`. It reads the port settings and the socket counts
//! too, which say what there is to find.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portstat_core::model::{
    OwnerLookup, PerProtocol, PortRange, Protocol, ReadReport, SocketRecord, SocketSink,
    SourceKind, TimeWaitReuse,
};

use super::{
    PortSettings, SourceChoice, SourceError, bpf, census, interface_names, netlink, procfs, sysctl,
};

/// Where a namespace's sockets are read from, protocol by protocol, and
/// what decides it: the choice, what proved to run here, and the counts.
pub struct SocketSource {
    procfs_root: PathBuf,
    /// The namespace's `net` folder below the procfs root.
    net: PathBuf,
    choice: SourceChoice,
    procfs: procfs::ProcfsSockets,
    pub(super) netlink: netlink::NetlinkSockets,
    pub(super) bpf: bpf::BpfSockets,
    /// The source in use for each protocol.
    pub(super) sources: PerProtocol<SourceKind>,
    /// The socket counts of the last `read_settings`, where readable.
    pub(super) census: Option<census::Census>,
    /// For each protocol, whether the source in use is known to run here
    /// (it read, or was loaded): where the counts let a dump be skipped,
    /// a source not yet proven is loaded first (the BPF program, the
    /// netlink socket), so that one that cannot run is found out and
    /// replaced rather than named while it never ran.
    pub(super) proven: PerProtocol<bool>,
    /// The running kernel, where its release parses: what netlink reports
    /// depends on it.
    kernel: Option<portstat_core::rules::KernelVersion>,
}

impl SocketSource {
    /// The source `choice` names, with procfs at `procfs_root` and the
    /// namespace's tables in `net` below it; the BPF program reads the
    /// inodes `lookup` needs.
    pub fn new(
        procfs_root: &Path,
        net: PathBuf,
        choice: SourceChoice,
        lookup: OwnerLookup,
    ) -> SocketSource {
        let sources = match choice {
            SourceChoice::Auto | SourceChoice::Bpf => PerProtocol {
                tcp: SourceKind::Bpf,
                udp: SourceKind::Netlink,
            },
            SourceChoice::Netlink => PerProtocol::both(SourceKind::Netlink),
            SourceChoice::Procfs => PerProtocol::both(SourceKind::Procfs),
        };
        SocketSource {
            procfs_root: procfs_root.to_path_buf(),
            procfs: procfs::ProcfsSockets::new(&net),
            net,
            choice,
            netlink: netlink::NetlinkSockets::new(),
            bpf: bpf::BpfSockets::new(None, inode_reading(lookup, None)),
            sources,
            census: None,
            proven: PerProtocol::both(false),
            kernel: running_kernel(),
        }
    }

    /// Loads the BPF program from `object` rather than the one built in.
    pub fn set_bpf_object(&mut self, object: Option<PathBuf>, lookup: OwnerLookup) {
        self.bpf = bpf::BpfSockets::new(object, inode_reading(lookup, None));
    }

    /// The namespace's `net` folder below the procfs root.
    pub fn net(&self) -> &Path {
        &self.net
    }

    /// How the source was chosen (`--collector.source`).
    pub fn choice(&self) -> SourceChoice {
        self.choice
    }

    /// Where each protocol's sockets are read from now.
    pub fn sources(&self) -> PerProtocol<SourceKind> {
        self.sources
    }

    /// Whether TCP is to be read with the BPF program loaded on a thread of
    /// its own (`--collector.source auto`, the program not yet refused).
    pub fn loads_in_background(&self) -> bool {
        self.choice == SourceChoice::Auto && self.sources.tcp == SourceKind::Bpf
    }

    /// The object the BPF program is loaded from, where not the one built in.
    pub fn bpf_object(&self) -> Option<&Path> {
        self.bpf.object()
    }

    /// Reads TCP over netlink while its BPF program loads in the background.
    pub fn read_tcp_over_netlink_meanwhile(&mut self) {
        self.sources.tcp = SourceKind::Netlink;
    }

    /// Takes the TCP program loaded in the background after `took_ms`, and
    /// reads TCP with it from now on; or, where it did not load, logs why
    /// and keeps reading TCP over netlink.
    pub fn install_tcp_program(
        &mut self,
        loaded: Result<bpf::Loaded, bpf::BpfError>,
        took_ms: u64,
    ) {
        match loaded {
            Ok(program) => {
                self.bpf.install(program);
                self.sources.tcp = SourceKind::Bpf;
                self.proven.tcp = true;
                tracing::info!(
                    took_ms,
                    "the BPF programs are loaded; TCP is read with BPF from now on, with exact headroom"
                );
            }
            Err(error) => warn_of_fallback(Protocol::Tcp, SourceKind::Bpf, &error.into()),
        }
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

    /// Hands every socket of the protocols `read` says to `sink`, one at a
    /// time, for the `range` of the last `read_settings`, reading the inodes
    /// owners are found by with `lookup`. The inodes of sockets on
    /// `keep_port` are always read.
    pub fn read(
        &mut self,
        range: PortRange,
        keep_port: Option<u16>,
        sink: &mut dyn SocketSink,
        read: PerProtocol<bool>,
        lookup: OwnerLookup,
    ) -> Result<ReadReport, SourceError> {
        self.bpf.set_inode_reading(inode_reading(lookup, keep_port));
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

    /// Whether the namespace of the last `read_settings` may hold TCP
    /// sockets bound but neither listening nor connected.
    pub fn may_hold_bound_inactive(&self) -> bool {
        self.census
            .is_none_or(|census| census.may_hold_bound_inactive())
    }

    /// Closes what ties the source to the namespace it last read (its
    /// netlink socket).
    pub fn leave_namespace(&mut self) {
        self.netlink.close();
    }
}

/// Logs that `protocol` cannot be read from `source` here, for `error`,
/// and what is read instead.
pub(super) fn warn_of_fallback(protocol: Protocol, source: SourceKind, error: &SourceError) {
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
pub(crate) fn inode_reading(lookup: OwnerLookup, keep_port: Option<u16>) -> bpf::InodeReading {
    match lookup {
        OwnerLookup::Off => bpf::InodeReading::None,
        OwnerLookup::ByInode => bpf::InodeReading::All,
        OwnerLookup::Records => bpf::InodeReading::Listeners { port: keep_port },
    }
}
