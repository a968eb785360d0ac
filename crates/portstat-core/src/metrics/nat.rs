//! Source NAT: the ports NAT picks per NAT address and destination, and
//! conntrack's counters, as `aggregate::nat` computes them.

use crate::aggregate::nat::NatFigures;
use crate::exposition::MetricFamily;
use crate::model::Protocol;

use super::{BaseLabels, Family, single_gauge};

/// Writes the NAT families of one namespace.
pub fn render(figures: &NatFigures, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut ports_used = Family::new(
        "portstat_nat_destination_ports_used",
        "Distinct NAT ports inside --collector.nat.port-range held by conntrack entries whose source was translated to nat_address, going to a destination, for the destinations that hold the most.",
        base,
    );
    for usage in &figures.destinations {
        let destination = &usage.destination;
        let nat_address = destination.nat_address.to_string();
        let remote_address = destination.remote.ip().to_string();
        let mut port = itoa::Buffer::new();
        ports_used.gauge(
            &[
                ("protocol", destination.protocol.label()),
                ("nat_address", &nat_address),
                ("remote_address", &remote_address),
                ("remote_port", port.format(destination.remote.port())),
            ],
            f64::from(usage.ports_used),
        );
    }
    ports_used.finish(out);

    let mut destinations = Family::new(
        "portstat_nat_destinations",
        "Distinct (NAT address, destination address, destination port) of source-NAT'd conntrack entries.",
        base,
    );
    let mut ratio = Family::new(
        "portstat_nat_destination_max_used_ratio",
        "Most NAT ports held by the entries of any one (NAT address, destination), over the ports of --collector.nat.port-range: 1 when the next new connection to it is dropped.",
        base,
    );
    for protocol in Protocol::ALL {
        let labels = [("protocol", protocol.label())];
        destinations.gauge(&labels, figures.pairs(protocol) as f64);
        ratio.gauge(&labels, figures.max_used_ratio(protocol));
    }
    destinations.finish(out);
    ratio.finish(out);

    single_gauge(
        out,
        base,
        "portstat_nat_port_capacity",
        "Ports a NAT rule picks from for one (NAT address, destination): the size of --collector.nat.port-range.",
        f64::from(figures.capacity),
    );

    let Some(counters) = &figures.counters else {
        return;
    };
    single_gauge(
        out,
        base,
        "portstat_nat_conntrack_entries",
        "Entries in the connection tracking table (nf_conntrack_count).",
        counters.entries as f64,
    );
    if let Some(limit) = counters.limit {
        single_gauge(
            out,
            base,
            "portstat_nat_conntrack_entries_limit",
            "Most entries the connection tracking table takes (nf_conntrack_max).",
            limit as f64,
        );
    }
    let mut insert_failed = Family::new(
        "portstat_nat_insert_failed_total",
        "New connections whose conntrack entry could not be inserted, as when NAT found no free port, summed over CPUs (/proc/net/stat/nf_conntrack).",
        base,
    );
    insert_failed.counter(&[], counters.insert_failed as f64);
    insert_failed.finish(out);
    let mut dropped = Family::new(
        "portstat_nat_drop_total",
        "Packets dropped because their connection could not be tracked, as a first packet whose NAT found no free port, summed over CPUs (/proc/net/stat/nf_conntrack).",
        base,
    );
    dropped.counter(&[], counters.drop as f64);
    dropped.finish(out);
}
