//! The ephemeral port range: its bounds, the reserved ports inside it, and
//! the capacity they leave.
//!
//! Computed in `aggregate` (the capacity is shared by every ratio).

use crate::exposition::MetricFamily;

use super::{BaseLabels, single_gauge};
use crate::aggregate::Snapshot;

/// Writes the range families of one namespace.
pub fn render(snapshot: &Snapshot, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    single_gauge(
        out,
        base,
        "portstat_ephemeral_range_start",
        "First port of the ephemeral port range (net.ipv4.ip_local_port_range).",
        f64::from(snapshot.range.start),
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_range_end",
        "Last port of the ephemeral port range (net.ipv4.ip_local_port_range).",
        f64::from(snapshot.range.end),
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_reserved_ports",
        "Ports inside the ephemeral range listed in net.ipv4.ip_local_reserved_ports.",
        f64::from(snapshot.reserved_in_range),
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_ports_capacity",
        "Ports the kernel can hand out automatically: range end - start + 1 - reserved.",
        f64::from(snapshot.capacity),
    );
}
