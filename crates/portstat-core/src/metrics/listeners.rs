//! What listens where: the listener groups of `aggregate::listeners`, their
//! accept queues, and TCP listeners inside the range.

use crate::aggregate::listeners::Listener;
use crate::exposition::MetricFamily;

use super::{BaseLabels, Family, single_gauge};

/// Writes the listener families of one namespace: `omitted` sockets were
/// left out by `--collector.listeners.max`.
pub fn render(
    listeners: &[Listener],
    omitted: u64,
    base: &BaseLabels,
    out: &mut Vec<MetricFamily>,
) {
    let mut sockets = Family::new(
        "portstat_listener_sockets",
        "Listening sockets (TCP LISTEN, unconnected UDP outside the ephemeral range or reserved) by address, port and owning process.",
        base,
    );
    let mut in_range = Family::new(
        "portstat_listener_in_ephemeral_range",
        "1 for a TCP listener on an unreserved port inside the ephemeral range.",
        base,
    );
    let mut accept_queue = Family::new(
        "portstat_listener_accept_queue",
        "Connections waiting to be accepted by a TCP listener (netlink source only).",
        base,
    );
    let mut accept_queue_limit = Family::new(
        "portstat_listener_accept_queue_limit",
        "Most connections that may wait to be accepted by a TCP listener: its backlog (netlink source only).",
        base,
    );
    let mut port = itoa::Buffer::new();
    for listener in listeners {
        let address = listener.address_label();
        let port = port.format(listener.port);
        sockets.gauge(
            &[
                ("protocol", listener.protocol.label()),
                ("address", &address),
                ("port", port),
                ("process", &listener.process),
            ],
            listener.sockets as f64,
        );
        let labels = [
            ("address", address.as_str()),
            ("port", port),
            ("process", listener.process.as_str()),
        ];
        if listener.in_ephemeral_range {
            in_range.gauge(&labels, 1.0);
        }
        if let Some(queue) = listener.accept_queue {
            accept_queue.gauge(&labels, queue.waiting as f64);
            accept_queue_limit.gauge(&labels, queue.limit as f64);
        }
    }
    sockets.finish(out);
    in_range.finish(out);
    single_gauge(
        out,
        base,
        "portstat_listener_sockets_omitted",
        "Listening sockets left out of portstat_listener_sockets by --collector.listeners.max.",
        omitted as f64,
    );
    accept_queue.finish(out);
    accept_queue_limit.finish(out);
}
