//! Every network namespace of the host (`--collector.netns=all`): each read
//! in turn on this thread (`read`), then the TCP sockets of those on the
//! host's shared tables in one walk (`walk`), so that what comes back is
//! finished: each namespace's read and report, or why it could not be read.

use portstat_core::aggregate::Limits;
use portstat_core::model::NamespaceIdentity;

use super::Collectors;
use super::NamespaceReader;
use super::read::{NamespaceRead, Reading, SocketsRead, read_namespace};
use super::walk::{OnSharedTables, read_shared_tables};
use crate::source::{NameSource, SourceError, namespaces};

/// The namespaces a sample read, with what is left to the one walk.
pub struct NamespacesRead {
    /// Each namespace read, with its identity.
    pub samples: Vec<(NamespaceIdentity, NamespaceRead)>,
    /// The namespaces whose TCP sockets are to come from the one walk.
    pub on_shared_tables: Vec<OnSharedTables>,
    /// How many could not be read.
    pub failed: u64,
    /// Why the first of those could not.
    pub first_failure: Option<SourceError>,
}

/// Reads each namespace of `entries`, entering it on this thread (the
/// exporter's own, `own`, needs no setns nor the CAP_SYS_ADMIN it takes),
/// then the TCP sockets of those on the host's shared tables in one walk.
/// Namespaces gone meanwhile are left out.
pub fn read_all(
    reader: &mut NamespaceReader,
    limits: &Limits,
    names: Option<&mut (dyn NameSource + 'static)>,
    entries: Vec<namespaces::NamespaceEntry>,
    own: Option<u64>,
    collectors: &mut Collectors,
) -> NamespacesRead {
    let mut read = read_namespaces(reader, limits, names, entries, own, collectors);
    if !read.on_shared_tables.is_empty() {
        let failures = read_shared_tables(
            reader,
            &mut read.samples,
            &read.on_shared_tables,
            collectors,
        );
        for (index, error) in failures.into_iter().rev() {
            if let Some(error) = error {
                read.failed += 1;
                read.first_failure.get_or_insert(error);
            }
            read.samples.remove(index);
        }
    }
    read
}

/// Reads each namespace of `entries` in turn; their TCP sockets, where they
/// are on the host's shared tables, are left to the one walk.
fn read_namespaces(
    reader: &mut NamespaceReader,
    limits: &Limits,
    mut names: Option<&mut (dyn NameSource + 'static)>,
    entries: Vec<namespaces::NamespaceEntry>,
    own: Option<u64>,
    collectors: &mut Collectors,
) -> NamespacesRead {
    let mut read = NamespacesRead {
        samples: Vec::with_capacity(entries.len()),
        on_shared_tables: Vec::new(),
        failed: 0,
        first_failure: None,
    };
    for entry in entries {
        let is_own = Some(entry.identity.inode) == own;
        let inside = if is_own {
            None
        } else {
            match namespaces::Entered::enter(&entry.handle) {
                Ok(inside) => Some(inside),
                Err(error) if namespaces::is_gone(&error) => continue,
                Err(error) => {
                    read.failed += 1;
                    tracing::debug!(netns = entry.identity.inode, err = %error, "cannot enter a network namespace");
                    read.first_failure.get_or_insert(SourceError::Enter {
                        path: entry.handle.clone(),
                        source: error,
                    });
                    continue;
                }
            }
        };
        let reading = Reading {
            limits,
            keep_port: None,
            names: names.as_deref_mut(),
            sockets: SocketsRead::LeavingTheWalk,
        };
        let result = read_namespace(reader, reading, collectors);
        // Hold nothing of the namespace once out of it, the exporter's own
        // too: a netlink socket left open would read this namespace for the
        // next one.
        reader.leave_namespace();
        drop(inside);
        match result {
            Ok(mut sample) => {
                if let Some(left) = sample.left_to_the_walk.take() {
                    read.on_shared_tables.push(OnSharedTables {
                        index: read.samples.len(),
                        handle: entry.handle.clone(),
                        own: is_own,
                        range: left.range,
                        may_hold_bound_inactive: left.may_hold_bound_inactive,
                        udp: left.using.udp,
                        host_udp_table: left.using.host_udp_table,
                    });
                }
                read.samples.push((entry.identity, sample));
            }
            Err(error) => {
                read.failed += 1;
                tracing::debug!(netns = entry.identity.inode, err = %error, "cannot sample a network namespace");
                read.first_failure.get_or_insert(error);
            }
        }
    }
    read
}
