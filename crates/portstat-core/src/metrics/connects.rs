//! Who uses the range up: TCP `connect()` calls that took a port of the
//! range by the kernel's own choice (the automatic bind of
//! `__inet_hash_connect`), counted in the kernel as they happen by the
//! failure counter's program (`source::bpf::failures`), in total, by
//! destination and by process. A connect counts once its port is taken:
//! when the connection is established, or when it ends in SYN_SENT having
//! held a port (refused, reset, timed out, abandoned). Connects with a port
//! bound before `connect()` are not counted: they take no port of the range
//! by the kernel's choice.
//!
//! Times how long each port then stays unusable
//! (`portstat_ephemeral_port_hold_seconds`, written here), a connect rate
//! toward one destination says how many of its ports TIME_WAIT will hold:
//! what `EphemeralPortChurnUnsustainable` watches.
//!
//! Every family here is a counter since the exporter started, kept as the
//! failure families are (a namespace's series only rise, and go with it).

use crate::exposition::MetricFamily;

use super::failures::{add_by_destination, by_process};
use super::{BaseLabels, Family};
use crate::aggregate::Snapshot;
use crate::model::NamespaceFailures;

/// Writes how long a port closed first stays unusable toward its
/// destination, the figure a connect rate is weighed with.
pub fn render_hold(snapshot: &Snapshot, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut hold = Family::new(
        "portstat_ephemeral_port_hold_seconds",
        "How long a port whose connection was closed first stays unusable to a new connect() toward the same destination: TIME_WAIT's 60 s, or net.ipv4.tcp_tw_reuse_delay where tcp_tw_reuse lets connect() take TIME_WAIT over (1: every destination; 2: loopback only) and tcp_timestamps is on. By scope: loopback or remote destinations.",
        base,
    );
    for (scope, ms) in ["loopback", "remote"].iter().zip(snapshot.port_hold_ms) {
        hold.gauge(&[("scope", scope)], f64::from(ms) / 1000.0);
    }
    hold.finish(out);
}

/// Writes the connect families of one namespace.
pub fn render(figures: &NamespaceFailures, base: &BaseLabels, out: &mut Vec<MetricFamily>) {
    let mut totals = Family::new(
        "portstat_ephemeral_connects_total",
        "TCP connect() calls that took a local port of the range by the kernel's choice (no bind() before), counted in the kernel as they happened, since the exporter started.",
        base,
    );
    for (protocol, count) in &figures.connect_totals {
        totals.counter(&[("protocol", protocol.label())], *count as f64);
    }
    totals.finish(out);

    let mut destinations = Family::new(
        "portstat_ephemeral_destination_connects_total",
        "TCP connect() calls that took a local port of the range, by destination (IPv4-mapped peers as IPv4), since the exporter started; the kernel keeps 1,024 (destination, process) pairs, the rest are in portstat_ephemeral_connects_unrecorded_total.",
        base,
    );
    add_by_destination(&mut destinations, &figures.connects);
    destinations.finish(out);

    // Absent, as the total is, where connects are not counted.
    if figures.connect_totals.is_empty() {
        return;
    }
    let mut unrecorded = Family::new(
        "portstat_ephemeral_connects_unrecorded_total",
        "Connects of the namespace that the kernel's map had no room to record by destination and process, since the exporter started: counted in portstat_ephemeral_connects_total, and here, so that the total is the destination series plus this.",
        base,
    );
    unrecorded.counter(&[], figures.connects_unrecorded() as f64);
    unrecorded.finish(out);

    let mut processes = Family::new(
        "portstat_ephemeral_process_connects_total",
        "TCP connect() calls that took a local port of the range, by the calling process's name (comm), since the exporter started.",
        base,
    );
    for ((_, protocol, process), count) in &by_process(&figures.connects) {
        processes.counter(
            &[("protocol", protocol.label()), ("process", process)],
            *count as f64,
        );
    }
    processes.finish(out);
}

/// Writes the exporter-wide connect family, where connects are counted:
/// how many names of connections the kernel's map of them had to drop
/// while the connection was still there.
pub fn render_counting(names_evicted: u64, out: &mut Vec<MetricFamily>) {
    let mut evicted = Family::new(
        "portstat_ephemeral_connection_names_evicted_total",
        "Connections whose connecting process the kernel's map of them (least recently used first out, sized at twice the range) dropped while the exporter still needed it: their TIME_WAIT and orphaned sockets then count under process=\"none\". Since the exporter started.",
        &[],
    );
    evicted.counter(&[], names_evicted as f64);
    evicted.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::encode;
    use crate::model::{PortFailure, Protocol};

    fn connect(process: &str, remote: &str, count: u64) -> PortFailure {
        crate::aggregate::fixtures::tcp_connect(process, remote, count)
    }

    #[test]
    fn connects_add_up_by_destination_and_by_process() {
        let figures = NamespaceFailures {
            connect_totals: [(Protocol::Tcp, 12)].into(),
            connects: vec![
                connect("curl", "127.0.0.2", 4),
                connect("java", "127.0.0.2", 3),
                connect("java", "127.0.0.3", 5),
            ],
            ..NamespaceFailures::default()
        };
        let mut out = Vec::new();
        render(&figures, &[], &mut out);
        let mut text = String::new();
        encode(&out, &mut text);
        for line in [
            r#"portstat_ephemeral_connects_total{protocol="tcp"} 12"#,
            r#"portstat_ephemeral_destination_connects_total{protocol="tcp",local_address="127.0.0.1",remote_address="127.0.0.2",remote_port="8080"} 7"#,
            r#"portstat_ephemeral_destination_connects_total{protocol="tcp",local_address="127.0.0.1",remote_address="127.0.0.3",remote_port="8080"} 5"#,
            r#"portstat_ephemeral_process_connects_total{protocol="tcp",process="curl"} 4"#,
            r#"portstat_ephemeral_process_connects_total{protocol="tcp",process="java"} 8"#,
            "# TYPE portstat_ephemeral_connects_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
