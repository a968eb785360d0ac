//! Where each protocol's sockets were read from, and where their owners
//! were looked for.

use crate::exposition::MetricFamily;

use super::{BaseLabels, Family};
use crate::aggregate::Snapshot;

/// Writes the source family of one namespace.
pub fn render(snapshot: &Snapshot, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut source = Family::new(
        "portstat_source_info",
        "A constant 1, labelled with where each protocol's sockets are read from.",
        base,
    );
    for (protocol, kind) in snapshot.sources.by_protocol() {
        source.gauge(
            &[("protocol", protocol.label()), ("source", kind.label())],
            1.0,
        );
    }
    source.finish(out);

    let mut owners = Family::new(
        "portstat_owners_source_info",
        "A constant 1, labelled with where the processes holding sockets are found: bpf (one iter/task_file pass) or procfs (a walk of /proc/<pid>/fd); absent with --collector.processes=false.",
        base,
    );
    if let Some(label) = snapshot.owner_lookup.label() {
        owners.gauge(&[("source", label)], 1.0);
    }
    owners.finish(out);
}
