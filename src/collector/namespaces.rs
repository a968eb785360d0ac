//! The namespaces collector (`--collector.netns=all`): which network
//! namespaces a sample reads, found at each sample among the host's
//! (`source::namespaces::discover`), at most `--collector.netns.max`, the
//! exporter's own kept first. It keeps, from one sample to the next, a file
//! that refers to each namespace read, by inode, by which the failures
//! collector reads their cookies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use portstat_core::status::Collector;

use super::{Collectors, Registration};
use crate::plan::Namespaces as PlannedNamespaces;
use crate::source::{SourceError, namespaces};

/// Runs where every namespace is read; a failure is its own where some
/// namespaces could still be read, and the sample's where none could.
pub const REGISTRATION: Registration = Registration {
    collector: Collector::Namespaces,
    runs: |plan| matches!(plan.namespaces, PlannedNamespaces::All { .. }),
    messages: Some((
        "some network namespaces cannot be sampled (portstat_netns_failed)",
        "every network namespace can be sampled again",
    )),
    fails_the_read: false,
};

/// `--collector.netns`. Like every flag's set of values, it derives clap's
/// `ValueEnum` in the module whose choice it is (`SourceChoice` in
/// `source`, `LogLevel` in `log`), and `cli` only flattens the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetnsChoice {
    /// The exporter's own network namespace.
    #[value(name = "self")]
    Own,
    /// Every network namespace on the host.
    All,
}

/// The namespaces collector's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NamespacesFlags {
    /// Which network namespaces to sample: `self`, the exporter's own, or
    /// `all` on the host, each series then labelled with its namespace.
    #[arg(long = "collector.netns", value_enum, default_value_t = NetnsChoice::Own)]
    pub netns: NetnsChoice,

    /// Most network namespaces sampled with --collector.netns=all (at
    /// least 1: the exporter's own comes first).
    #[arg(long = "collector.netns.max", value_name = "N", default_value_t = 500,
          value_parser = parse_at_least_one)]
    pub max: usize,

    /// With --collector.netns=all and the BPF source, read the TCP sockets
    /// of every namespace on the host's shared TCP tables in one walk of
    /// them, rather than one walk a namespace. `false` reads each namespace
    /// on its own, as the netlink and procfs sources do.
    #[arg(
        long = "collector.netns.one-walk",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub one_walk: bool,
}

/// The namespaces a sample reads.
pub struct Found {
    /// Each to read, by inode.
    pub entries: Vec<namespaces::NamespaceEntry>,
    /// How many were left out past the most read.
    pub omitted: usize,
}

/// The host's namespaces, found anew at each sample.
pub struct Namespaces {
    procfs_root: PathBuf,
    /// The most read.
    max: usize,
    /// A file that refers to each namespace of the last sample, by inode.
    handles: HashMap<u64, PathBuf>,
}

impl Namespaces {
    /// At most `max` namespaces, found below `procfs_root`.
    pub fn new(procfs_root: &Path, max: usize) -> Namespaces {
        Namespaces {
            procfs_root: procfs_root.to_path_buf(),
            max,
            handles: HashMap::new(),
        }
    }

    /// The namespaces this sample reads: every one of the host's, at most
    /// `max`, the exporter's own kept first past the limit, in the order of
    /// their inodes. Timed as this collector's; its failure noted.
    pub fn find(&mut self, collectors: &mut Collectors) -> Result<Found, SourceError> {
        let discovered = collectors.time(Collector::Namespaces, || {
            namespaces::discover(&self.procfs_root, Path::new(namespaces::NAMED_NAMESPACES))
        });
        let mut entries = discovered.inspect_err(|error| {
            collectors.failed(Collector::Namespaces, error);
        })?;
        let own = namespaces::own_namespace_inode();
        entries.sort_by_key(|entry| Some(entry.identity.inode) != own);
        let omitted = entries.len().saturating_sub(self.max);
        entries.truncate(self.max);
        entries.sort_by_key(|entry| entry.identity.inode);
        self.handles = entries
            .iter()
            .map(|entry| (entry.identity.inode, entry.handle.clone()))
            .collect();
        Ok(Found { entries, omitted })
    }

    /// A file that refers to each namespace of the last sample, by inode.
    pub fn handles(&self) -> &HashMap<u64, PathBuf> {
        &self.handles
    }
}

/// Parses a telemetry path: it must start with `/`, be a path a request can
/// ask for (no query, fragment, space or other character a URL path cannot
/// hold as it is), and not be one of the built-in endpoints.
/// A count of at least 1: `0` would sample nothing and fail every sample.
pub fn parse_at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(error) => Err(error.to_string()),
    }
}
