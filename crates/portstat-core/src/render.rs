//! Turns a `Snapshot` and the sampler's status into Prometheus text, by
//! asking each family's module in `metrics` to write its families.
//!
//! Every family is built fresh from the snapshot it describes, so a listener
//! that closed is gone from the next render: there are no stale series.

use crate::aggregate::Snapshot;
use crate::exposition::{self, MetricFamily};
use crate::metrics;
use crate::status::{FailureCounting, SampleStatus};

/// The exposition of the snapshots, one per namespace sampled, and of the
/// status, in the text format.
pub fn render(snapshots: &[Snapshot], status: &SampleStatus) -> String {
    let mut families = Vec::new();
    for snapshot in snapshots {
        snapshot_families(snapshot, &mut families);
    }
    let mut families = exposition::merge_by_name(families);
    status_families(status, &mut families);
    let mut text = String::with_capacity(4096);
    exposition::encode(&families, &mut text);
    text
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
    metrics::connects::render_hold(snapshot, &base, out);
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
        metrics::connects::render(failures, &base, out);
    }
}

/// The families that describe the sampler and the build.
fn status_families(status: &SampleStatus, out: &mut Vec<MetricFamily>) {
    metrics::sampling::render(status, out);
    metrics::collector::render(status, out);
    metrics::failures::render_counting(&status.failure_counting, status.counting_runs_missed, out);
    if matches!(
        status.failure_counting,
        FailureCounting::Bpf { connects: true, .. }
    ) {
        metrics::connects::render_counting(status.connection_names_evicted, out);
    }
    if let Some(counts) = &status.namespaces {
        metrics::netns::render(counts, out);
    }
    metrics::build::render(&status.build, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::aggregate;
    use crate::aggregate::nat::NatTable;
    use crate::model::Protocol;
    use crate::model::{ConntrackCounters, NatEntry, PerProtocol, ReadReport};
    use crate::model::{FailureKind, NamespaceFailures, PortFailure};
    use crate::model::{
        ListenQueue, PortBinding, SourceKind, TcpState, TimeWait, TimeWaitReuse, UdpState,
    };
    use crate::model::{NamespaceSample, PortRange, SocketOwners, SocketRecord, SocketState};
    use crate::parse::sysctl::parse_reserved_ports;
    use crate::status::{Build, Collector, CollectorStatus};

    const BUILD: Build = Build {
        version: "0.1.0",
        revision: "REVISION",
    };
    use std::net::SocketAddr;

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
            report: ReadReport::complete(PerProtocol {
                tcp: SourceKind::Bpf,
                udp: SourceKind::Procfs,
            }),
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
            several_pids: false,
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
            connect_totals: [(Protocol::Tcp, 40)].into(),
            connects: vec![
                failure("java", "10.0.9.9", false, 25),
                failure("curl", "10.0.9.10", false, 15),
            ],
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
            scrape_period_seconds: Some(15.0),
            samples: 12,
            failure_counting: FailureCounting::Bpf {
                autobind: false,
                connects: true,
            },
            counting_runs_missed: 0,
            connection_names_evicted: 0,
            build: BUILD,
            collectors: vec![
                CollectorStatus {
                    collector: Collector::Sockets,
                    success: true,
                    duration_seconds: 0.0105,
                },
                CollectorStatus {
                    collector: Collector::Conntrack,
                    success: false,
                    duration_seconds: 0.002,
                },
            ],
        }
    }

    #[test]
    fn exposition() {
        let text = render(&[snapshot()], &status());
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
            scrape_period_seconds: None,
            samples: 1,
            failure_counting: FailureCounting::Unavailable {
                stage: "verify".to_string(),
            },
            counting_runs_missed: 0,
            connection_names_evicted: 0,
            build: BUILD,
            collectors: Vec::new(),
        };
        let text = render(&[], &status);
        insta::assert_snapshot!(text);
    }
}
