//! Reads one network namespace from the kernel: its port settings, its sockets
//! and the processes that own them. Everything here does I/O; what the figures
//! mean is decided in `aggregate`.

pub mod owners;
pub mod procfs;
pub mod sysctl;

use std::io;
use std::path::{Path, PathBuf};

use crate::model::NamespaceSample;

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
    /// A file was read but its content is not what the kernel writes.
    #[error("malformed {path}: {reason}")]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, with the line where it is known.
        reason: String,
    },
}

/// Reads whole samples of the network namespace that the process is in,
/// through the files below a procfs root.
pub struct NamespaceReader {
    procfs: PathBuf,
    sockets: procfs::ProcfsSockets,
}

impl NamespaceReader {
    /// A reader of the procfs mounted at `procfs` (normally `/proc`).
    pub fn new(procfs: PathBuf) -> NamespaceReader {
        NamespaceReader {
            sockets: procfs::ProcfsSockets::new(&procfs),
            procfs,
        }
    }

    /// Reads the namespace's port settings, sockets and socket owners.
    ///
    /// Settings are read fresh each time: the sysctls can change at run time.
    /// Owners that cannot be resolved are left out, never an error.
    pub fn read(&mut self) -> Result<NamespaceSample, SourceError> {
        let (range, reserved) = sysctl::read_port_settings(&self.procfs)?;
        let mut sockets = Vec::new();
        self.sockets.read_sockets(&mut sockets)?;
        let owners = owners::resolve_owners(&self.procfs, &sockets);
        Ok(NamespaceSample {
            range,
            reserved,
            sockets,
            owners,
        })
    }
}

/// Reads a whole small text file, naming it in the error.
fn read_text(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })
}
