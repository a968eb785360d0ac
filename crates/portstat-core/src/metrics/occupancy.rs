//! How much of the range each protocol uses: ports held, the used ratio,
//! sockets by state, and the sockets read.
//!
//! Computed in `aggregate`, in the one walk over the sockets that every
//! family shares.

use crate::exposition::MetricFamily;

use super::{BaseLabels, Family};
use crate::aggregate::Snapshot;

/// Writes the occupancy families of one namespace.
pub fn render(snapshot: &Snapshot, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut used = Family::new(
        "portstat_ephemeral_ports_used",
        "Distinct unreserved ports inside the ephemeral range held by at least one socket, in any state.",
        base,
    );
    let mut ratio = Family::new(
        "portstat_ephemeral_ports_used_ratio",
        "portstat_ephemeral_ports_used divided by portstat_ephemeral_ports_capacity, 0 to 1.",
        base,
    );
    let mut sockets = Family::new(
        "portstat_ephemeral_sockets",
        "Sockets whose local port is inside the ephemeral range, by state.",
        base,
    );
    let mut scanned = Family::new(
        "portstat_sockets_scanned",
        "Sockets read from the kernel in the last successful sample, inside the range or not.",
        base,
    );
    for occupancy in &snapshot.occupancy {
        let protocol = occupancy.protocol.label();
        used.gauge(&[("protocol", protocol)], f64::from(occupancy.ports_used));
        ratio.gauge(&[("protocol", protocol)], occupancy.used_ratio);
        for (state, count) in &occupancy.sockets_by_state {
            sockets.gauge(
                &[("protocol", protocol), ("state", state.label())],
                *count as f64,
            );
        }
        scanned.gauge(&[("protocol", protocol)], occupancy.sockets_scanned as f64);
    }
    for family in [used, ratio, sockets, scanned] {
        family.finish(out);
    }
}
