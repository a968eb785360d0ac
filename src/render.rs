//! Turns a `Snapshot` and the sampler's status into Prometheus text.
//!
//! Every family is built fresh from the snapshot it describes, so a listener
//! that closed is gone from the next render: there are no stale series.

use prometheus::core::Collector;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::aggregate::{ExclusiveReason, Snapshot};
use crate::model::Protocol;
use crate::status::{REVISION, SampleStatus, Stage, VERSION};

/// Renders expositions and landing pages; owns the collectors of the
/// exporter's own process.
pub struct Renderer {
    process: Option<prometheus::process_collector::ProcessCollector>,
    metrics_path: String,
}

impl Renderer {
    /// A renderer; `exporter_metrics` adds the standard `process_*` families,
    /// and pages link to the metrics at `metrics_path`.
    pub fn new(exporter_metrics: bool, metrics_path: &str) -> Renderer {
        Renderer {
            process: exporter_metrics
                .then(prometheus::process_collector::ProcessCollector::for_self),
            metrics_path: metrics_path.to_string(),
        }
    }

    /// The path the metrics are served at, which pages link to.
    pub fn metrics_path(&self) -> &str {
        &self.metrics_path
    }

    /// Renders the snapshot, if there is one yet, and the status as text.
    pub fn render(
        &self,
        snapshots: &[Snapshot],
        status: &SampleStatus,
    ) -> Result<String, prometheus::Error> {
        let mut families = Vec::new();
        for snapshot in snapshots {
            snapshot_families(snapshot, &mut families);
        }
        let mut families = merge_by_name(families);
        status_families(status, &mut families);
        if let Some(process) = &self.process {
            families.extend(process.collect());
        }
        let mut text = Vec::with_capacity(4096);
        TextEncoder::new().encode(&families, &mut text)?;
        // The text encoder writes only UTF-8 (it escapes label values itself).
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Joins families of the same name (one per namespace) into one, keeping the
/// order in which names first appear: the text format lists each family once.
fn merge_by_name(families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::with_capacity(families.len());
    for mut family in families {
        match merged.iter_mut().find(|seen| seen.name() == family.name()) {
            Some(seen) => {
                let mut metrics = seen.take_metric();
                metrics.extend(family.take_metric());
                seen.set_metric(metrics);
            }
            None => merged.push(family),
        }
    }
    merged
}

/// The labels that say which namespace a series belongs to: none when only
/// the exporter's own namespace is sampled.
fn namespace_labels(snapshot: &Snapshot) -> Vec<(&'static str, String)> {
    let Some(namespace) = &snapshot.namespace else {
        return Vec::new();
    };
    let mut labels = vec![("netns", namespace.inode.to_string())];
    for (name, value) in [
        ("netns_name", &namespace.name),
        ("container_id", &namespace.container_id),
        ("pod_uid", &namespace.pod_uid),
    ] {
        if let Some(value) = value {
            labels.push((name, value.clone()));
        }
    }
    labels
}

/// The families that describe the namespace.
fn snapshot_families(snapshot: &Snapshot, families: &mut Vec<MetricFamily>) {
    let base = namespace_labels(snapshot);
    let family = |name: &str, help: &str| family_with(name, help, &base);
    let mut start = family(
        "portstat_ephemeral_range_start",
        "First port of the ephemeral port range (net.ipv4.ip_local_port_range).",
    );
    start.gauge(&[], f64::from(snapshot.range.start));
    families.extend(start.done());

    let mut end = family(
        "portstat_ephemeral_range_end",
        "Last port of the ephemeral port range (net.ipv4.ip_local_port_range).",
    );
    end.gauge(&[], f64::from(snapshot.range.end));
    families.extend(end.done());

    let mut reserved = family(
        "portstat_ephemeral_reserved_ports",
        "Ports inside the ephemeral range listed in net.ipv4.ip_local_reserved_ports.",
    );
    reserved.gauge(&[], f64::from(snapshot.reserved_in_range));
    families.extend(reserved.done());

    let mut capacity = family(
        "portstat_ephemeral_ports_capacity",
        "Ports the kernel can hand out automatically: range end - start + 1 - reserved.",
    );
    capacity.gauge(&[], f64::from(snapshot.capacity));
    families.extend(capacity.done());

    let mut used = family(
        "portstat_ephemeral_ports_used",
        "Distinct unreserved ports inside the ephemeral range held by at least one socket, in any state.",
    );
    let mut ratio = family(
        "portstat_ephemeral_ports_used_ratio",
        "portstat_ephemeral_ports_used divided by portstat_ephemeral_ports_capacity, 0 to 1.",
    );
    let mut sockets = family(
        "portstat_ephemeral_sockets",
        "Sockets whose local port is inside the ephemeral range, by state.",
    );
    let mut scanned = family(
        "portstat_sockets_scanned",
        "Sockets read from the kernel in the last successful sample, inside the range or not.",
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
    for built in [used, ratio, sockets, scanned] {
        families.extend(built.done());
    }

    let mut exclusive = family(
        "portstat_ephemeral_ports_exclusive",
        "Unreserved ports inside the range that no destination can share, because bind() made their bind bucket: by reason (listener, bound: bound but not connected, bind_before_connect: bound before connect(), BPF source only). Each port counts under one reason.",
    );
    for reason in ExclusiveReason::ALL {
        exclusive.gauge(
            &[("protocol", "tcp"), ("reason", reason.label())],
            f64::from(snapshot.exclusive.get(reason)),
        );
    }
    families.extend(exclusive.done());

    let mut reusable = family(
        "portstat_ephemeral_time_wait_reusable",
        "TIME_WAIT sockets on shared ports inside the range that connect() may take over now (net.ipv4.tcp_tw_reuse); they count toward no destination's ports used.",
    );
    reusable.gauge(&[("protocol", "tcp")], snapshot.time_wait_reusable as f64);
    families.extend(reusable.done());

    let mut exact = family(
        "portstat_ephemeral_headroom_exact",
        "1 when the TCP source sees ports bound before connect() (BPF), so headroom is exact; 0 when they count as shared, so headroom is an upper bound.",
    );
    exact.gauge(&[], if snapshot.headroom_exact() { 1.0 } else { 0.0 });
    families.extend(exact.done());

    let mut destination_ports = family(
        "portstat_ephemeral_destination_ports_used",
        "Distinct unreserved local ports inside the range used by TCP connections to a destination that connect() cannot pick again for it, for the destinations that use the most.",
    );
    let mut destination_headroom = family(
        "portstat_ephemeral_destination_headroom",
        "Further connect() calls to a destination that can get a port: capacity - exclusive ports - the destination's ports used.",
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
        destination_headroom.gauge(&labels, f64::from(snapshot.headroom(usage.ports_used)));
    }
    families.extend(destination_ports.done());
    families.extend(destination_headroom.done());

    let mut new_destination = family(
        "portstat_ephemeral_new_destination_headroom",
        "connect() calls to a destination not yet connected to that can get a port: capacity - exclusive ports.",
    );
    new_destination.gauge(&[], f64::from(snapshot.headroom(0)));
    families.extend(new_destination.done());

    let mut max_ratio = family(
        "portstat_ephemeral_destination_max_used_ratio",
        "(Most ports used by connections to any one destination + exclusive ports) / capacity: 1 when connect() to that destination fails.",
    );
    max_ratio.gauge(&[], snapshot.destination_max_used_ratio);
    families.extend(max_ratio.done());

    let mut destinations = family(
        "portstat_ephemeral_destinations",
        "Distinct destinations (local address, remote address, remote port) of TCP connections from ports inside the range.",
    );
    destinations.gauge(&[], snapshot.destination_count as f64);
    families.extend(destinations.done());

    let mut process_ports = family(
        "portstat_ephemeral_process_ports_used",
        "Distinct unreserved (protocol, port) pairs inside the range held by a process's sockets, for the processes that hold the most; none for sockets no process holds (TIME_WAIT).",
    );
    for usage in &snapshot.processes {
        process_ports.gauge(&[("process", &usage.process)], f64::from(usage.ports_used));
    }
    families.extend(process_ports.done());

    let mut bind_first = family(
        "portstat_ephemeral_process_bind_before_connect_ports",
        "Distinct ports inside the range a process holds with TCP sockets bound before connect(), exclusive to it, for the processes that hold the most (BPF source only); none for TIME_WAIT.",
    );
    for usage in &snapshot.bind_before_connect_processes {
        bind_first.gauge(&[("process", &usage.process)], f64::from(usage.ports_used));
    }
    families.extend(bind_first.done());

    let mut listeners = family(
        "portstat_listener_sockets",
        "Listening sockets (TCP LISTEN, unconnected UDP outside the ephemeral range or reserved) by address, port and owning process.",
    );
    let mut in_range = family(
        "portstat_listener_in_ephemeral_range",
        "1 for a TCP listener on an unreserved port inside the ephemeral range.",
    );
    let mut accept_queue = family(
        "portstat_listener_accept_queue",
        "Connections waiting to be accepted by a TCP listener (netlink source only).",
    );
    let mut accept_queue_limit = family(
        "portstat_listener_accept_queue_limit",
        "Most connections that may wait to be accepted by a TCP listener: its backlog (netlink source only).",
    );
    let mut port = itoa::Buffer::new();
    for listener in &snapshot.listeners {
        let address = listener.address_label();
        let port = port.format(listener.port);
        listeners.gauge(
            &[
                ("protocol", listener.protocol.label()),
                ("address", &address),
                ("port", port),
                ("process", &listener.process),
            ],
            listener.sockets as f64,
        );
        if listener.in_ephemeral_range {
            in_range.gauge(
                &[
                    ("address", &address),
                    ("port", port),
                    ("process", &listener.process),
                ],
                1.0,
            );
        }
        if let Some(queue) = listener.accept_queue {
            let labels = [
                ("address", address.as_str()),
                ("port", port),
                ("process", listener.process.as_str()),
            ];
            accept_queue.gauge(&labels, queue.waiting as f64);
            accept_queue_limit.gauge(&labels, queue.limit as f64);
        }
    }
    families.extend(listeners.done());
    families.extend(in_range.done());

    let mut omitted = family(
        "portstat_listener_sockets_omitted",
        "Listening sockets left out of portstat_listener_sockets by --collector.listeners.max.",
    );
    omitted.gauge(&[], snapshot.listeners_omitted as f64);
    families.extend(omitted.done());
    families.extend(accept_queue.done());
    families.extend(accept_queue_limit.done());

    let mut source = family(
        "portstat_source_info",
        "A constant 1, labelled with where each protocol's sockets are read from.",
    );
    for (protocol, kind) in Protocol::ALL.iter().zip(snapshot.sources) {
        source.gauge(
            &[("protocol", protocol.label()), ("source", kind.label())],
            1.0,
        );
    }
    families.extend(source.done());
}

/// The families that describe the sampler and the build.
fn status_families(status: &SampleStatus, families: &mut Vec<MetricFamily>) {
    let mut success = family(
        "portstat_sample_success",
        "1 if the last sample succeeded, 0 if it failed.",
    );
    success.gauge(&[], if status.success { 1.0 } else { 0.0 });
    families.extend(success.done());

    let mut duration = family(
        "portstat_sample_duration_seconds",
        "Wall time the last sample took, in seconds.",
    );
    duration.gauge(&[], status.duration_seconds);
    families.extend(duration.done());

    if let Some(seconds) = status.interval_seconds {
        let mut interval = family(
            "portstat_sample_interval_seconds",
            "Time between samples (--collector.interval), in seconds: a sample that takes nearly as long cannot keep up.",
        );
        interval.gauge(&[], seconds);
        families.extend(interval.done());
    }

    if let Some(seconds) = status.last_success_seconds {
        let mut timestamp = family(
            "portstat_sample_timestamp_seconds",
            "Unix time of the last successful sample, in seconds.",
        );
        timestamp.gauge(&[], seconds);
        families.extend(timestamp.done());
    }

    let mut errors = family(
        "portstat_sample_errors_total",
        "Samples that failed since start, by the stage that failed.",
    );
    for (stage, count) in Stage::ALL.iter().zip(status.errors) {
        errors.counter(&[("stage", stage.label())], count as f64);
    }
    families.extend(errors.done());

    if let Some(counts) = status.namespaces {
        for (name, help, value) in [
            (
                "portstat_netns_sampled",
                "Network namespaces sampled in the last sample.",
                counts.sampled,
            ),
            (
                "portstat_netns_omitted",
                "Network namespaces beyond --collector.netns.max, not sampled.",
                counts.omitted,
            ),
            (
                "portstat_netns_failed",
                "Network namespaces that could not be read in the last sample.",
                counts.failed,
            ),
        ] {
            let mut builder = family(name, help);
            builder.gauge(&[], value as f64);
            families.extend(builder.done());
        }
        let mut sharing = family(
            "portstat_netns_sharing_host_tcp_table",
            "Sampled network namespaces that share the host's TCP hash table (net.ipv4.tcp_ehash_entries negative inside them): a dump of any of them walks the sockets of all. net.ipv4.tcp_child_ehash_entries gives namespaces created after it is set their own.",
        );
        sharing.gauge(&[], counts.sharing_host_tcp_table as f64);
        families.extend(sharing.done());
        let mut skipped = family(
            "portstat_netns_dumps_skipped",
            "Sampled network namespaces whose sockets of a protocol were not dumped in the last sample, because their socket counts (sockstat) showed none to find.",
        );
        for (protocol, count) in Protocol::ALL.iter().zip(counts.skipped) {
            skipped.gauge(&[("protocol", protocol.label())], count as f64);
        }
        families.extend(skipped.done());
    }

    let mut build = family(
        "portstat_build_info",
        "A constant 1, labelled with the version and source revision of the exporter.",
    );
    build.gauge(&[("version", VERSION), ("revision", REVISION)], 1.0);
    families.extend(build.done());
}

/// A metric family under construction.
struct FamilyBuilder {
    family: MetricFamily,
    metrics: Vec<Metric>,
    /// Labels every series of the family starts with.
    base: Vec<(&'static str, String)>,
}

fn family(name: &str, help: &str) -> FamilyBuilder {
    family_with(name, help, &[])
}

fn family_with(name: &str, help: &str, base: &[(&'static str, String)]) -> FamilyBuilder {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    FamilyBuilder {
        family,
        metrics: Vec::new(),
        base: base.to_vec(),
    }
}

impl FamilyBuilder {
    fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        self.family.set_field_type(MetricType::GAUGE);
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_gauge(gauge);
        metric.set_label(self.label_pairs(labels));
        self.metrics.push(metric);
    }

    fn counter(&mut self, labels: &[(&str, &str)], value: f64) {
        self.family.set_field_type(MetricType::COUNTER);
        let mut counter = Counter::default();
        counter.set_value(value);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        metric.set_label(self.label_pairs(labels));
        self.metrics.push(metric);
    }

    /// The finished family, or none when it has no series: the text format
    /// has no way to write a family without samples.
    fn done(mut self) -> Option<MetricFamily> {
        if self.metrics.is_empty() {
            return None;
        }
        self.family.set_metric(self.metrics);
        Some(self.family)
    }
}

impl FamilyBuilder {
    fn label_pairs(&self, labels: &[(&str, &str)]) -> Vec<LabelPair> {
        self.base
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .chain(labels.iter().copied())
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::model::{
        ListenQueue, PortBinding, SourceKind, TcpState, TimeWait, TimeWaitReuse, UdpState,
    };
    use crate::model::{NamespaceSample, PortRange, SocketOwners, SocketRecord, SocketState};
    use crate::source::sysctl::parse_reserved_ports;

    fn snapshot() -> Snapshot {
        let record = |state, local: &str, remote: &str, inode| {
            SocketRecord::new(
                state,
                local.parse().unwrap(),
                remote.parse().unwrap(),
                inode,
            )
        };
        let mut owners = SocketOwners::default();
        owners.pid_by_inode.insert(1, 100);
        owners.pid_by_inode.insert(2, 100);
        owners.pid_by_inode.insert(5, 100);
        owners
            .comm_by_pid
            .insert(100, "haproxy \"edge\"".to_string());
        let mut sample = NamespaceSample {
            range: PortRange {
                start: 40000,
                end: 40099,
            },
            reserved: parse_reserved_ports("40010-40019").unwrap(),
            sockets: vec![
                record(
                    SocketState::Tcp(TcpState::Listen),
                    "0.0.0.0:443",
                    "0.0.0.0:0",
                    1,
                ),
                record(
                    SocketState::Tcp(TcpState::Listen),
                    "[::]:40050",
                    "[::]:0",
                    2,
                ),
                record(
                    SocketState::Tcp(TcpState::Established),
                    "10.0.0.1:40001",
                    "10.0.0.9:5432",
                    3,
                ),
                record(
                    SocketState::Tcp(TcpState::TimeWait),
                    "10.0.0.1:40002",
                    "10.0.0.9:5432",
                    0,
                ),
                record(
                    SocketState::Udp(UdpState::Unconnected),
                    "127.0.0.53:53",
                    "0.0.0.0:0",
                    4,
                ),
                // Bound before connecting: exclusive, held by haproxy.
                record(
                    SocketState::Tcp(TcpState::Established),
                    "10.0.0.1:40003",
                    "10.0.0.9:5432",
                    5,
                ),
                // TIME_WAIT to loopback that connect() may take over.
                record(
                    SocketState::Tcp(TcpState::TimeWait),
                    "127.0.0.1:40004",
                    "127.0.0.1:8080",
                    0,
                ),
            ],
            owners,
            time_wait_reuse: TimeWaitReuse::default(),
            // TCP over BPF (bindings, accept queues, bound_inactive), UDP
            // over procfs.
            sources: [SourceKind::Bpf, SourceKind::Procfs],
            interfaces: Default::default(),
            skipped: [false; 2],
            shares_host_tcp_table: None,
        };
        for socket in &mut sample.sockets {
            if socket.state.protocol() == Protocol::Tcp {
                socket.binding = PortBinding::Connect;
            }
        }
        sample.sockets[5].binding = PortBinding::Bind;
        sample.sockets[6].time_wait = Some(TimeWait {
            age_ms: 5000,
            timestamps: Some(true),
            bound_device: Some(0),
        });
        sample.sockets[3].time_wait = Some(TimeWait {
            age_ms: 5000,
            timestamps: Some(true),
            bound_device: Some(0),
        });
        sample.sockets[0].listen_queue = Some(ListenQueue {
            waiting: 3,
            limit: 4096,
        });
        sample.sockets[1].listen_queue = Some(ListenQueue {
            waiting: 0,
            limit: 128,
        });
        aggregate(&sample, &crate::aggregate::Limits::default())
    }

    fn status() -> SampleStatus {
        SampleStatus {
            success: true,
            duration_seconds: 0.0125,
            last_success_seconds: Some(1_795_694_629.5),
            errors: [2, 0],
            namespaces: None,
            interval_seconds: Some(5.0),
        }
    }

    #[test]
    fn exposition() {
        let text = Renderer::new(false, "/metrics")
            .render(&[snapshot()], &status())
            .unwrap()
            .replace(&format!("revision=\"{REVISION}\""), "revision=\"REVISION\"");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn exposition_before_any_good_sample() {
        let status = SampleStatus {
            success: false,
            duration_seconds: 0.001,
            last_success_seconds: None,
            errors: [1, 0],
            namespaces: None,
            interval_seconds: None,
        };
        let text = Renderer::new(false, "/metrics")
            .render(&[], &status)
            .unwrap()
            .replace(&format!("revision=\"{REVISION}\""), "revision=\"REVISION\"");
        insta::assert_snapshot!(text);
    }
}
