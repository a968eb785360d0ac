//! Loading the BPF programs a reader reads with: on a thread of their own
//! for a daemon, whose first samples then never wait for the verifier, or
//! where they are first used.

use std::path::Path;

use portstat_core::model::{Protocol, SourceKind};

use super::sockets::warn_of_fallback;
use super::{NamespaceReader, SourceChoice, bpf};

impl NamespaceReader {
    /// With the `auto` source, starts loading the BPF programs (TCP,
    /// owners where they are found, the one walk where it is on) on a
    /// thread of their own, and reads TCP over netlink and owners through
    /// `/proc/<pid>/fd` until `take_loaded_programs` finds them loaded: a
    /// daemon's first samples then never wait for the verifier. Elsewhere
    /// (`bpf` asked for, which fails where BPF cannot load, or a one-shot
    /// run), the programs load where they are first used.
    pub fn load_programs_in_background(&mut self) {
        if self.sockets.choice() != SourceChoice::Auto
            || self.sockets.sources.tcp != SourceKind::Bpf
            || self.loading.is_some()
        {
            return;
        }
        let owners = self.owners.wants_program();
        match bpf::background::ProgramLoad::start(
            self.sockets.bpf.object().map(Path::to_path_buf),
            owners,
            self.shared.is_on(),
        ) {
            Ok(loading) => {
                self.loading = Some(loading);
                self.sockets.sources.tcp = SourceKind::Netlink;
            }
            Err(error) => {
                tracing::debug!(err = %error, "cannot load the BPF programs on a thread of their own; loading them at first use");
            }
        }
    }

    /// Where the programs of `load_programs_in_background` are loaded
    /// (waiting at most `wait` for them), switches to them: TCP is read
    /// with BPF from the next read on, logged once; a program that cannot
    /// load is logged once with the reason, and its fallback kept.
    pub fn take_loaded_programs(&mut self, wait: std::time::Duration) {
        let Some(loading) = &self.loading else {
            return;
        };
        let Some(loaded) = loading.finished(wait) else {
            return;
        };
        self.loading = None;
        let took_ms = loaded.took.as_millis() as u64;
        match loaded.sockets {
            Ok(program) => {
                self.sockets.bpf.install(program);
                self.sockets.sources.tcp = SourceKind::Bpf;
                self.sockets.proven.tcp = true;
                tracing::info!(
                    took_ms,
                    "the BPF programs are loaded; TCP is read with BPF from now on, with exact headroom"
                );
            }
            Err(error) => warn_of_fallback(Protocol::Tcp, SourceKind::Bpf, &error.into()),
        }
        if let Some(owners) = loaded.owners {
            self.owners.install(owners);
        }
        if let Some(shared) = loaded.shared_tables {
            self.shared.install(shared);
        }
    }

    /// Loads the owners program where owners are to come from BPF records
    /// (attribution on, the `auto` or `bpf` source) and it is neither
    /// loaded nor loading in the background; where it cannot load, owners
    /// are found through `/proc/<pid>/fd`, logged once. Part of resolving
    /// what the exporter reads, at start: `owner_lookup` never loads.
    pub fn load_owner_program(&mut self) {
        if !self.owners.wants_program()
            || !matches!(
                self.sockets.choice(),
                SourceChoice::Auto | SourceChoice::Bpf
            )
            || self.loading.is_some()
        {
            return;
        }
        self.owners.load_program();
    }
}
