//! Headroom: the exclusive ports, TIME_WAIT that `connect()` may take over,
//! and how many further `connect()` calls each destination can make.
//!
//! The semantics (which ports are exclusive, which a destination uses) are
//! shared with the occupancy and process families and live in `aggregate`.

use crate::exposition::MetricFamily;

use super::{BaseLabels, Family, single_gauge};
use crate::aggregate::{ExclusiveReason, Snapshot};

/// Writes the headroom families of one namespace.
pub fn render(snapshot: &Snapshot, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut exclusive = Family::new(
        "portstat_ephemeral_ports_exclusive",
        "Unreserved ports inside the range that no destination can share, because bind() made their bind bucket: by reason (listener, bound: bound but not connected, bind_before_connect: bound before connect(), BPF source only). Each port counts under one reason.",
        base,
    );
    for reason in ExclusiveReason::ALL {
        exclusive.gauge(
            &[("protocol", "tcp"), ("reason", reason.label())],
            f64::from(snapshot.exclusive.get(reason)),
        );
    }
    exclusive.finish(out);

    let mut reusable = Family::new(
        "portstat_ephemeral_time_wait_reusable",
        "TIME_WAIT sockets on shared ports inside the range that connect() may take over now (net.ipv4.tcp_tw_reuse); they count toward no destination's ports used.",
        base,
    );
    reusable.gauge(&[("protocol", "tcp")], snapshot.time_wait_reusable as f64);
    reusable.finish(out);

    single_gauge(
        out,
        base,
        "portstat_ephemeral_headroom_exact",
        "1 when the TCP source sees ports bound before connect() (BPF) and every socket bound but idle, so headroom is exact (within portstat_ephemeral_headroom_slack); 0 when some of those may have counted as shared or free, so headroom is an upper bound.",
        if snapshot.headroom_exact() { 1.0 } else { 0.0 },
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_headroom_slack",
        "How many more connect() calls than each headroom says may still get a port: 1 on a range of an odd number of ports (5 or more), whose scan leaves out its first or its last port by a secret per-destination offset, else 0. Headroom and the used ratio take the safe side.",
        f64::from(snapshot.headroom_slack),
    );

    let mut destination_ports = Family::new(
        "portstat_ephemeral_destination_ports_used",
        "Distinct unreserved local ports inside the range used by TCP connections to a destination that connect() cannot pick again for it, for the destinations that use the most.",
        base,
    );
    let mut destination_headroom = Family::new(
        "portstat_ephemeral_destination_headroom",
        "Further connect() calls to a destination that surely get a port: capacity - exclusive ports - the destination's ports used, less an end port its scan may leave out on a range of an odd length.",
        base,
    );
    for usage in &snapshot.destinations {
        let destination = &usage.destination;
        let local_address = destination.local_address.to_string();
        let remote_address = destination.remote_address.to_string();
        let mut port = itoa::Buffer::new();
        let labels = [
            ("local_address", local_address.as_str()),
            ("remote_address", remote_address.as_str()),
            ("remote_port", port.format(destination.remote_port)),
        ];
        destination_ports.gauge(&labels, f64::from(usage.ports_used));
        destination_headroom.gauge(&labels, f64::from(usage.headroom));
    }
    destination_ports.finish(out);
    destination_headroom.finish(out);

    single_gauge(
        out,
        base,
        "portstat_ephemeral_new_destination_headroom",
        "connect() calls to a destination not yet connected to that surely get a port: capacity - exclusive ports, less an end port its scan may leave out on a range of an odd length.",
        f64::from(snapshot.new_destination_headroom),
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_destination_min_headroom",
        "Fewest further connect() calls that surely get a port, for the destination that has fewest, whatever --collector.destinations.top lists.",
        f64::from(snapshot.min_destination_headroom),
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_destination_max_used_ratio",
        "(capacity - the fewest headroom any destination has) / capacity: (most ports used by connections to one destination + exclusive ports) / capacity on ranges of an even length; 1 when connect() to that destination fails, and on a range with slack possibly one port before.",
        snapshot.destination_max_used_ratio,
    );
    single_gauge(
        out,
        base,
        "portstat_ephemeral_destinations",
        "Distinct destinations (local address, remote address, remote port) of TCP connections from ports inside the range.",
        snapshot.destination_count as f64,
    );
}
