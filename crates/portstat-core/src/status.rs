//! How the sampler has fared, and what the binary is: read by the renderer,
//! the landing page and the server, written by the sampler. It imports only
//! `model`, which imports no other module.

use crate::model::PerProtocol;

/// What the binary is, for `portstat_build_info` and the landing page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    /// The version the binary was built from.
    pub version: &'static str,
    /// The source revision the binary was built from, or `unknown`.
    pub revision: &'static str,
}

impl Default for Build {
    /// This crate's version, of an unknown revision.
    fn default() -> Self {
        Build {
            version: env!("CARGO_PKG_VERSION"),
            revision: "unknown",
        }
    }
}

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

/// The collectors a sample runs, as the `collector` label names them: each
/// reads one kind of thing from the kernel, and its health is reported on
/// its own (`portstat_collector_success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collector {
    /// The failure counter's maps, read at the start of a sample.
    Failures,
    /// The network namespaces of the host (`--collector.netns=all`).
    Namespaces,
    /// Each namespace's port settings and sockets.
    Sockets,
    /// Each namespace's source NAT, from conntrack
    /// (`--collector.nat`).
    Conntrack,
    /// The processes that own the sockets.
    Owners,
}

impl Collector {
    /// Every collector, in the order a sample runs them and metrics list
    /// them.
    pub const ALL: [Collector; 5] = [
        Collector::Failures,
        Collector::Namespaces,
        Collector::Sockets,
        Collector::Conntrack,
        Collector::Owners,
    ];

    /// The `collector` label value.
    pub fn label(self) -> &'static str {
        match self {
            Collector::Failures => "failures",
            Collector::Namespaces => "namespaces",
            Collector::Sockets => "sockets",
            Collector::Conntrack => "conntrack",
            Collector::Owners => "owners",
        }
    }
}

/// How one collector fared in the latest sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollectorStatus {
    /// The collector.
    pub collector: Collector,
    /// Whether every read it made succeeded.
    pub success: bool,
    /// The time its reads took, summed over the namespaces, in seconds.
    pub duration_seconds: f64,
}

/// Where failures are counted from, for `portstat_failures_source_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FailureCounting {
    /// `--collector.failures=false`, or a one-shot run: nothing is written.
    #[default]
    Off,
    /// The BPF programs count.
    Bpf {
        /// Whether bind() to port 0 and UDP failures are counted too
        /// (`--collector.failures.autobind`).
        autobind: bool,
        /// Whether connects are counted, and TIME_WAIT named after who
        /// connected (`--collector.failures.connects`).
        connects: bool,
    },
    /// The program could not load or attach.
    Unavailable {
        /// Where loading stopped, as a label value (`verify`, `kernel_btf`).
        stage: String,
    },
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
    /// The period of the scrapes the samples follow (`crate::cadence`),
    /// when they follow one.
    pub scrape_period_seconds: Option<f64>,
    /// Samples taken since start.
    pub samples: u64,
    /// Where failures are counted from.
    pub failure_counting: FailureCounting,
    /// Runs of the counting programs the kernel skipped, so far: each may
    /// have been a connect, a failure or a close that nothing counted.
    pub counting_runs_missed: u64,
    /// Names of connections the kernel's map dropped while the connection
    /// was still there, so far.
    pub connection_names_evicted: u64,
    /// What the binary is.
    pub build: Build,
    /// The collectors the latest sample ran, in `Collector::ALL` order.
    pub collectors: Vec<CollectorStatus>,
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
    /// Sampled namespaces whose TCP sockets came from the one walk of the
    /// host's shared tables.
    pub one_walk: u64,
    /// Sampled namespaces on the host's TCP table whose TCP sockets were
    /// dumped on their own, each dump a walk of every namespace's.
    pub sharing_dumped_apart: u64,
    /// Sampled namespaces whose dump of each protocol was skipped because
    /// their socket counts showed nothing to find.
    pub skipped: PerProtocol<u64>,
}
