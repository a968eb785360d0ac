//! What the exporter reads, and how: which source reads each protocol, how
//! owners are found, which namespaces are read and whether in one walk,
//! whether source NAT is read and whether failures are counted. Resolved
//! when the sampler starts (`Sampler::resolve_plan`), it changes only when
//! the kernel says so: a BPF program that finishes loading in the
//! background or is refused, a source that falls back, the one walk found
//! not to run here. The sampler executes it, and logs each change once.

use portstat_core::model::{OwnerLookup, PerProtocol, SourceKind};

/// Which namespaces a sample reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespaces {
    /// The exporter's own (`--collector.netns=self`).
    Own,
    /// Every namespace of the host, at most `max`; with `one_walk`, the TCP
    /// sockets of those on the host's shared tables in one walk.
    All { max: usize, one_walk: bool },
}

/// What a sample reads, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Where each protocol's sockets are read from.
    pub sources: PerProtocol<SourceKind>,
    /// How the sockets' owners are found.
    pub owners: OwnerLookup,
    /// Which namespaces are read.
    pub namespaces: Namespaces,
    /// Whether source NAT is read from conntrack.
    pub nat: bool,
    /// Whether failures are counted in the kernel.
    pub failures: bool,
}

impl Plan {
    /// Logs the plan: at the first sample, and whenever it changed since
    /// `before`.
    pub fn log_change(&self, before: Option<&Plan>) {
        if before == Some(self) {
            return;
        }
        let PerProtocol { tcp, udp } = self.sources.map(SourceKind::label);
        let (namespaces, one_walk) = match self.namespaces {
            Namespaces::Own => ("self", false),
            Namespaces::All { one_walk, .. } => ("all", one_walk),
        };
        tracing::info!(
            tcp,
            udp,
            owners = self.owners.label().unwrap_or("off"),
            netns = namespaces,
            one_walk,
            nat = self.nat,
            failures = self.failures,
            "sockets read"
        );
    }
}
