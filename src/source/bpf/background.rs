//! Loads a daemon's BPF programs on a thread of their own, so that its
//! first samples never wait for the kernel's verifier: until the programs
//! are loaded the reader reads over netlink (and finds owners through
//! `/proc/<pid>/fd`), and it switches when they are (see
//! `NamespaceReader::load_programs_in_background`). A one-shot run loads
//! them where it reads instead: it reads once, and exactly.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use super::{BpfError, Loaded, owners, shared, unavailable};

/// What the thread loaded: the TCP program, and where asked for, the
/// owners program and the one walk's. Each is loaded whatever became of
/// the others.
pub struct LoadedPrograms {
    /// The TCP program (`tcp_ports.bpf.c`).
    pub sockets: Result<Loaded, BpfError>,
    /// The owners program (`socket_owners.bpf.c`), where owners are found.
    pub owners: Option<Result<owners::BpfOwners, BpfError>>,
    /// The one walk of the host's tables (`shared_tables.bpf.c`), where
    /// it is on.
    pub shared_tables: Option<Result<shared::Loaded, BpfError>>,
    /// From the start of the load to its end.
    pub took: Duration,
}

/// A load under way.
pub struct ProgramLoad {
    receiver: Receiver<LoadedPrograms>,
    started: Instant,
}

impl ProgramLoad {
    /// Starts loading the TCP program from `object` (the embedded one
    /// where `None`), and with `owners` and `shared_tables` those programs
    /// too, on a new thread.
    pub fn start(
        object: Option<PathBuf>,
        owners: bool,
        shared_tables: bool,
    ) -> std::io::Result<ProgramLoad> {
        let (sender, receiver) = channel();
        let started = Instant::now();
        std::thread::Builder::new()
            .name("bpf-load".to_string())
            .spawn(move || {
                let sockets = super::load(object.as_deref());
                let owners = owners.then(owners::BpfOwners::load);
                let shared_tables = shared_tables.then(shared::load);
                // The reader may be gone (the exporter ending): nothing to
                // hand over then.
                let _ = sender.send(LoadedPrograms {
                    sockets,
                    owners,
                    shared_tables,
                    took: started.elapsed(),
                });
            })?;
        Ok(ProgramLoad { receiver, started })
    }

    /// The programs, once loaded: waits at most `wait` for them, and
    /// returns `None` while they are still loading.
    pub fn finished(&self, wait: Duration) -> Option<LoadedPrograms> {
        match self.receiver.recv_timeout(wait) {
            Ok(loaded) => Some(loaded),
            Err(RecvTimeoutError::Timeout) => None,
            // The thread ended without a word: it panicked.
            Err(RecvTimeoutError::Disconnected) => {
                let gone = || unavailable("load", "the thread loading the programs ended");
                Some(LoadedPrograms {
                    sockets: Err(gone()),
                    owners: None,
                    shared_tables: None,
                    took: self.started.elapsed(),
                })
            }
        }
    }
}
