//! The one walk of the host's shared TCP tables (`SharedWalk`): whether a
//! namespace is on them, which of its protocols the walk reads and which
//! are left for it to read on its own, and the walk itself.

use std::path::{Path, PathBuf};

use portstat_core::model::{SocketRecord, SourceKind};

use super::{SOCKETS_BETWEEN_YIELDS, SocketSource, SourceError, bpf, sysctl};

/// How the namespace of the last `read_settings` is read with the one walk
/// of the host's tables (`collector::sockets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedTablesUse {
    /// Its TCP sockets come from the walk.
    pub tcp: bool,
    /// Its UDP sockets come from the walk too.
    pub udp: bool,
    /// It is on the host's UDP table as well, and the walk can read that
    /// table from inside it.
    pub host_udp_table: bool,
}

/// The one walk of the host's TCP tables for every namespace on them
/// (`--collector.netns=all`).
pub struct SharedWalk {
    procfs_root: PathBuf,
    /// `None` where it is not to be used: turned off, or found not to run
    /// here.
    tables: Option<bpf::shared::SharedTables>,
}

impl SharedWalk {
    /// The walk, below `procfs_root`, where `on`.
    pub fn new(procfs_root: &Path, on: bool) -> SharedWalk {
        SharedWalk {
            procfs_root: procfs_root.to_path_buf(),
            tables: on.then(bpf::shared::SharedTables::new),
        }
    }

    /// Whether the walk is on.
    pub fn is_on(&self) -> bool {
        self.tables.is_some()
    }

    /// Takes the walk's program, loaded on a thread of its own, or turns
    /// the walk off where it could not load.
    pub fn install(&mut self, loaded: Result<bpf::shared::Loaded, bpf::BpfError>) {
        match loaded {
            Ok(program) => {
                if let Some(tables) = &mut self.tables {
                    tables.install(program);
                }
            }
            Err(error) => self.give_up(&error),
        }
    }

    /// Whether the TCP sockets of the namespace of the last `read_settings`
    /// (the calling thread's) are to come from the walk: the walk is on,
    /// TCP is read with BPF, the counts show TCP sockets, and the kernel
    /// says the namespace is on the host's table (`tcp_ehash_entries` below
    /// 0, or, for the host's own namespace, the program's probe). Where the
    /// walk cannot run here, it is turned off for good, logged once.
    ///
    /// Its UDP sockets come from the walk too where the kernel names each
    /// namespace's UDP table (Linux 6.2+), netlink reads UDP, the counts
    /// show UDP sockets, and the namespace is on the host's UDP table
    /// (`udp_hash_entries` below 0, or the host's own namespace).
    pub fn using(&mut self, sockets: &SocketSource) -> SharedTablesUse {
        if sockets.sources.tcp != SourceKind::Bpf
            || sockets.census.is_some_and(|census| census.tcp_empty())
        {
            return SharedTablesUse::default();
        }
        let Some(shared) = &mut self.tables else {
            return SharedTablesUse::default();
        };
        // The host's own namespace shows a positive count, as one with
        // tables of its own does: the probe tells them apart.
        let on_host_table = match sysctl::read_shares_host_tcp_table(&self.procfs_root) {
            Some(true) => shared.load_once().map(|()| (true, false)),
            Some(false) => shared
                .probe()
                .map(|probe| (probe.on_host_table, probe.on_host_table)),
            // Before Linux 6.1 the kernel does not say.
            None => return SharedTablesUse::default(),
        };
        let on_host_table = on_host_table.and_then(|(tcp, host)| {
            let udp_table = shared.reads_udp()?
                && match sysctl::read_shares_host_udp_table(&self.procfs_root) {
                    Some(shares) => shares || host,
                    None => false,
                };
            Ok(SharedTablesUse {
                tcp,
                udp: tcp
                    && udp_table
                    && sockets.sources.udp == SourceKind::Netlink
                    && !sockets.census.is_some_and(|census| census.udp_empty()),
                host_udp_table: tcp && udp_table,
            })
        });
        match on_host_table {
            Ok(using) => using,
            Err(error) => {
                if error.is_unsupported() {
                    self.give_up(&error);
                } else {
                    tracing::debug!(err = %error, "cannot tell whether a namespace shares the host's TCP tables");
                }
                SharedTablesUse::default()
            }
        }
    }

    /// Walks the host's TCP tables once, from the calling thread's
    /// namespace, which must be on them, handing `each` the TCP sockets of
    /// the `namespaces` with their namespace's inode, reading the inodes
    /// `inodes` says. With `bound_inactive`, the sockets bound but neither
    /// listening nor connected too. With `read_udp`, the UDP sockets of the
    /// namespaces that ask for them, from the calling thread's namespace's
    /// UDP table, which must be the host's.
    pub fn walk(
        &mut self,
        namespaces: &[bpf::shared::SharedNamespace],
        read_udp: bool,
        inodes: bpf::InodeReading,
        bound_inactive: bool,
        each: &mut dyn FnMut(u32, &SocketRecord),
    ) -> Result<bpf::shared::WalkOutcome, SourceError> {
        let Some(shared) = &mut self.tables else {
            return Err(SourceError::Bpf(bpf::BpfError::Unavailable {
                stage: "shared tables",
                reason: "turned off".into(),
            }));
        };
        let mut added = 0u32;
        let walked = shared.walk(
            namespaces,
            read_udp,
            inodes,
            bound_inactive,
            &mut |netns, socket| {
                added += 1;
                if added.is_multiple_of(SOCKETS_BETWEEN_YIELDS) {
                    std::thread::yield_now();
                }
                each(netns, socket);
            },
        );
        walked.map_err(|error| {
            if error.is_unsupported() {
                self.give_up(&error);
            }
            SourceError::Bpf(error)
        })
    }

    /// Turns the walk off for good, where `error` says it cannot run here;
    /// logged once.
    fn give_up(&mut self, error: &bpf::BpfError) {
        tracing::info!(
            err = %error,
            "the host's TCP tables cannot be walked once for every namespace here; \
             each namespace is read on its own"
        );
        self.tables = None;
    }
}
