//! Where the owners of a namespace's sockets come from: the BPF owners
//! program's records, where it loads, else a walk of `/proc/<pid>/fd` by
//! socket inode; nowhere without attribution.

use portstat_core::model::{OwnedSocket, OwnerLookup, SocketOwners};

use super::{SourceError, bpf, owners};

/// The owners of sockets, and how they are found.
pub struct OwnerSource {
    /// Whether owners are found at all (`--collector.processes`).
    attribution: bool,
    /// The walk of `/proc/<pid>/fd`.
    resolver: owners::OwnerResolver,
    /// Owners from BPF: `None` until first asked, then the loaded program
    /// or `Err` where it cannot load (owners then come from procfs).
    bpf: Option<Result<bpf::owners::BpfOwners, ()>>,
}

impl OwnerSource {
    /// Owners found below `procfs_root`, where `attribution` is on.
    pub fn new(procfs_root: &std::path::Path, attribution: bool) -> OwnerSource {
        OwnerSource {
            attribution,
            resolver: owners::OwnerResolver::new(procfs_root),
            bpf: None,
        }
    }

    /// Whether socket owners are found.
    pub fn finds_owners(&self) -> bool {
        self.attribution
    }

    /// How owners are found now: not at all without attribution; from BPF
    /// records where the owners program is loaded; else by inode through
    /// `/proc/<pid>/fd`.
    pub fn lookup(&self) -> OwnerLookup {
        match &self.bpf {
            _ if !self.attribution => OwnerLookup::Off,
            Some(Ok(_)) => OwnerLookup::Records,
            _ => OwnerLookup::ByInode,
        }
    }

    /// Whether the owners program is still to be loaded: attribution is
    /// on, and it was neither loaded nor found unable to load.
    pub fn wants_program(&self) -> bool {
        self.attribution && self.bpf.is_none()
    }

    /// Loads the owners program; where it cannot load, owners are found
    /// through `/proc/<pid>/fd` from now on, logged once.
    pub fn load_program(&mut self) {
        self.install(bpf::owners::BpfOwners::load());
    }

    /// Takes the owners program loaded elsewhere (on a thread of its own),
    /// or its failure, logged once.
    pub fn install(&mut self, loaded: Result<bpf::owners::BpfOwners, bpf::BpfError>) {
        self.bpf = Some(loaded.map_err(|error| log_owners_fallback(&error)));
    }

    /// The loaded owners program, taken out for a pass on another thread
    /// (`put_back` returns it).
    pub fn take_program(&mut self) -> Option<bpf::owners::BpfOwners> {
        match self.bpf.take() {
            Some(Ok(owners)) => Some(owners),
            other => {
                self.bpf = other;
                None
            }
        }
    }

    /// Returns the program `take_program` took.
    pub fn put_back(&mut self, owners: bpf::owners::BpfOwners) {
        self.bpf = Some(Ok(owners));
    }

    /// Hands every TCP and UDP socket a process holds to `take`, with
    /// `OwnerLookup::Records`; each record names the socket's namespace.
    /// The inodes of sockets on `keep_port` are always read; of other
    /// sockets, only where they must be told apart from the rest on their
    /// port (listeners, files referred to more than once).
    pub fn read_records(
        &mut self,
        keep_port: Option<u16>,
        take: &mut dyn FnMut(&OwnedSocket),
    ) -> Result<(), SourceError> {
        match &mut self.bpf {
            Some(Ok(owners)) => owners.read(keep_port, take).map_err(SourceError::Bpf),
            _ => Ok(()),
        }
    }

    /// Finds the processes that own the sockets with inodes `wanted`, unless
    /// attribution is off. Owners that cannot be found are left out, never an
    /// error.
    pub fn resolve(&mut self, wanted: &[u64]) -> SocketOwners {
        if !self.attribution || wanted.is_empty() {
            return SocketOwners::default();
        }
        self.resolver.resolve(wanted.iter().copied().collect())
    }

    /// How owners are found before any program is loaded.
    pub fn lookup_before_load(attribution: bool) -> OwnerLookup {
        if attribution {
            OwnerLookup::ByInode
        } else {
            OwnerLookup::Off
        }
    }
}

/// Logs that owners cannot come from the BPF program here, for `error`.
fn log_owners_fallback(error: &bpf::BpfError) {
    tracing::info!(
        err = %error,
        "socket owners cannot come from BPF here; walking /proc/<pid>/fd instead"
    );
}
