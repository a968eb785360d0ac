//! How the sampler has fared, and what the binary is: read by the renderer,
//! the landing page and the server, written by the sampler. A leaf: it
//! imports no other module of the exporter.

/// The version and revision the binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision the binary was built from, or `unknown`.
pub const REVISION: &str = env!("PORTSTAT_REVISION");

/// The stages of a sample that can fail, as the `stage` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the kernel.
    Source,
    /// Encoding the exposition.
    Render,
}

impl Stage {
    /// Every stage, in the order metrics list them.
    pub const ALL: [Stage; 2] = [Stage::Source, Stage::Render];

    /// The `stage` label value.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Render => "render",
        }
    }
}

/// How the sampler has fared, published beside the snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleStatus {
    /// Whether the latest sample succeeded.
    pub success: bool,
    /// Wall time of the latest sample, in seconds.
    pub duration_seconds: f64,
    /// Unix time of the latest successful sample, in seconds.
    pub last_success_seconds: Option<f64>,
    /// Failed samples since start, by the stage that failed (`Stage::ALL` order).
    pub errors: [u64; 2],
    /// With every namespace sampled, how that went in the latest sample.
    pub namespaces: Option<NamespaceCounts>,
    /// The time between samples, when sampling runs on (not `--once`).
    pub interval_seconds: Option<f64>,
}

/// How many network namespaces the latest sample covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceCounts {
    /// Namespaces sampled.
    pub sampled: u64,
    /// Namespaces beyond `--collector.netns.max`, not sampled.
    pub omitted: u64,
    /// Namespaces that could not be read.
    pub failed: u64,
    /// Sampled namespaces that share the host's TCP hash table.
    pub sharing_host_tcp_table: u64,
    /// Sampled namespaces whose TCP, then UDP, dump was skipped because
    /// their socket counts showed nothing to find.
    pub skipped: [u64; 2],
}
