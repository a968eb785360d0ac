//! Turns a `Snapshot` and the sampler's status into Prometheus text, by
//! asking each family's module in `metrics` to write its families.
//!
//! Every family is built fresh from the snapshot it describes, so a listener
//! that closed is gone from the next render: there are no stale series.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use crate::aggregate::Snapshot;
use crate::metrics;
use crate::status::SampleStatus;

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
            let mut process_families = process.collect();
            precise_cpu_seconds(&mut process_families, cpu_seconds());
            families.extend(process_families);
        }
        let mut text = Vec::with_capacity(4096);
        TextEncoder::new().encode(&families, &mut text)?;
        // The text encoder writes only UTF-8 (it escapes label values itself).
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The CPU time the process has used, user and system, from
/// `getrusage(2)` in microseconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: `usage` is a plain C struct that getrusage fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` outlives the call, which only writes it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Sets `process_cpu_seconds_total` to `seconds`: the process collector
/// counts whole seconds (clock ticks divided, as integers, by their rate),
/// so a `rate()` of it moves in steps of one second.
fn precise_cpu_seconds(families: &mut [MetricFamily], seconds: Option<f64>) {
    let Some(seconds) = seconds else {
        return;
    };
    for family in families
        .iter_mut()
        .filter(|family| family.name() == "process_cpu_seconds_total")
    {
        for metric in family.mut_metric() {
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(seconds);
            metric.set_counter(counter);
        }
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

/// The families that describe the namespace, in the order they are written.
fn snapshot_families(snapshot: &Snapshot, out: &mut Vec<MetricFamily>) {
    let base = namespace_labels(snapshot);
    metrics::range::render(snapshot, &base, out);
    metrics::occupancy::render(snapshot, &base, out);
    metrics::headroom::render(snapshot, &base, out);
    metrics::processes::render(
        &snapshot.processes,
        &snapshot.bind_before_connect_processes,
        &base,
        out,
    );
    metrics::listeners::render(&snapshot.listeners, snapshot.listeners_omitted, &base, out);
    metrics::source::render(snapshot, &base, out);
    if let Some(nat) = &snapshot.nat {
        metrics::nat::render(nat, &base, out);
    }
    if let Some(failures) = &snapshot.failures {
        metrics::failures::render(failures, &base, out);
    }
}

/// The families that describe the sampler and the build.
fn status_families(status: &SampleStatus, out: &mut Vec<MetricFamily>) {
    metrics::sampling::render(status, out);
    metrics::failures::render_counting(&status.failure_counting, status.failures_unrecorded, out);
    if let Some(counts) = &status.namespaces {
        metrics::netns::render(counts, out);
    }
    metrics::build::render(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::metrics::nat::NatTable;
    use crate::model::Protocol;
    use crate::model::{ConntrackCounters, NatEntry, ReadReport};
    use crate::model::{FailureKind, NamespaceFailures, PortFailure};
    use crate::model::{
        ListenQueue, PortBinding, SourceKind, TcpState, TimeWait, TimeWaitReuse, UdpState,
    };
    use crate::model::{NamespaceSample, PortRange, SocketOwners, SocketRecord, SocketState};
    use crate::source::sysctl::parse_reserved_ports;
    use crate::status::FailureCounting;
    use crate::status::REVISION;
    use std::net::SocketAddr;

    #[test]
    fn process_cpu_seconds_are_not_truncated() {
        // Some CPU time, so that truncation to whole seconds would show.
        let mut spin = 0u64;
        while cpu_seconds().unwrap() < 0.3 {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        let renderer = Renderer::new(true, "/metrics");
        let before = cpu_seconds().unwrap();
        let text = renderer.render(&[], &SampleStatus::default()).unwrap();
        let after = cpu_seconds().unwrap();
        let value: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            before <= value && value <= after,
            "{before} <= {value} <= {after}"
        );
    }

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
            report: ReadReport::complete([SourceKind::Bpf, SourceKind::Procfs]),
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
        let mut snapshot = aggregate(&sample, &crate::aggregate::Limits::default());
        // A masquerading router: 17 of 20 NAT ports to one TCP destination,
        // 3 to a DNS server, and a dropped first packet.
        let mut nat = NatTable::new(PortRange {
            start: 45000,
            end: 45019,
        });
        let entry = |protocol, port: u16, remote: &str| NatEntry {
            protocol,
            nat: SocketAddr::from(([10, 0, 2, 1], port)),
            remote: remote.parse().unwrap(),
        };
        for port in 45000..45017 {
            nat.add(&entry(Protocol::Tcp, port, "10.0.9.9:443"));
        }
        for port in 45000..45003 {
            nat.add(&entry(Protocol::Udp, port, "10.0.9.53:53"));
        }
        let counters = ConntrackCounters {
            entries: 20,
            limit: Some(262_144),
            insert_failed: 1,
            drop: 1,
        };
        snapshot.nat = Some(nat.finish(10, Some(counters)));
        // Failed connect() calls: 5 to one destination from two processes
        // (3 of them from IPv4-mapped sockets), 2 to another, one of them
        // past the prediction.
        let failure = |process: &str, remote: &str, mapped, count| PortFailure {
            netns: 1,
            kind: FailureKind::Connect,
            protocol: Protocol::Tcp,
            local_address: "10.0.0.1".parse().unwrap(),
            remote_address: remote.parse().unwrap(),
            remote_port: 443,
            ipv4_mapped: mapped,
            process: process.to_string(),
            last_pid: 4321,
            count,
        };
        snapshot.failures = Some(NamespaceFailures {
            totals: [((FailureKind::Connect, Protocol::Tcp), 7)].into(),
            by_destination_and_process: vec![
                failure("java", "10.0.9.9", true, 3),
                failure("curl", "10.0.9.9", false, 2),
                failure("java", "10.0.9.10", false, 2),
            ],
            unpredicted: 1,
        });
        snapshot
    }

    fn status() -> SampleStatus {
        SampleStatus {
            success: true,
            duration_seconds: 0.0125,
            last_success_seconds: Some(1_795_694_629.5),
            errors: [2, 0],
            namespaces: None,
            interval_seconds: Some(5.0),
            failure_counting: FailureCounting::Bpf { autobind: false },
            failures_unrecorded: 0,
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
            failure_counting: FailureCounting::Unavailable {
                stage: "verify".to_string(),
            },
            failures_unrecorded: 0,
        };
        let text = Renderer::new(false, "/metrics")
            .render(&[], &status)
            .unwrap()
            .replace(&format!("revision=\"{REVISION}\""), "revision=\"REVISION\"");
        insta::assert_snapshot!(text);
    }
}
