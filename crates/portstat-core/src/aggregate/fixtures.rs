//! Snapshots the unit tests of several modules build alike.

use super::{Limits, Snapshot, aggregate};
use crate::model::{
    FailureKind, NamespaceSample, PerProtocol, PortFailure, PortFailureCounts, PortRange,
    ReadReport, ReservedPorts, SocketOwners, SocketRecord, SocketState, SourceKind, TcpState,
    TimeWaitReuse,
};

/// `count` TCP connects of process `process` in namespace 7, from
/// 127.0.0.1 toward `remote`:8080, its last caller pid 1: a failure by
/// destination and process as the kernel's map gives it (the kind
/// `FailureKind::Connect` serves the connects map too).
pub fn tcp_connect(process: &str, remote: &str, count: u64) -> PortFailure {
    PortFailure {
        netns: 7,
        kind: FailureKind::Connect,
        protocol: crate::model::Protocol::Tcp,
        local_address: "127.0.0.1".parse().unwrap(),
        remote_address: remote.parse().unwrap(),
        remote_port: 8080,
        ipv4_mapped: false,
        process: process.to_string(),
        last_pid: 1,
        several_pids: false,
        count,
    }
}

/// A namespace with a 10-port range (40000-40009), `connected` connections
/// to 127.0.0.2:8080 and `time_wait` more of them in TIME_WAIT, seen by a
/// source that sees bindings.
pub fn ten_port_snapshot(connected: u16, time_wait: u16) -> Snapshot {
    let sockets = (0..connected + time_wait)
        .map(|index| {
            let state = if index < connected {
                TcpState::Established
            } else {
                TcpState::TimeWait
            };
            SocketRecord::new(
                SocketState::Tcp(state),
                format!("127.0.0.1:{}", 40000 + index).parse().unwrap(),
                "127.0.0.2:8080".parse().unwrap(),
                u64::from(index) + 1,
            )
        })
        .collect();
    let sample = NamespaceSample {
        range: PortRange {
            start: 40000,
            end: 40009,
        },
        reserved: ReservedPorts::default(),
        sockets,
        owners: SocketOwners::default(),
        time_wait_reuse: TimeWaitReuse::default(),
        report: ReadReport::complete(PerProtocol::both(SourceKind::Bpf)),
    };
    aggregate(&sample, &Limits::default())
}

/// `tcp_connect` toward `remote`, its calls made by an IPv6 socket to the
/// IPv4-mapped address where `mapped`.
pub fn tcp_connect_mapped(process: &str, remote: &str, mapped: bool, count: u64) -> PortFailure {
    PortFailure {
        ipv4_mapped: mapped,
        ..tcp_connect(process, remote, count)
    }
}

/// The counts of namespace 7 as the failure counter reads them: `failures`,
/// their totals, and `attempts` connect attempts.
pub fn counts_of(failures: Vec<PortFailure>, attempts: u64) -> PortFailureCounts {
    let mut counts = PortFailureCounts::default();
    for failure in &failures {
        counts.add_total(7, failure.kind, failure.protocol, failure.count);
    }
    counts.add_connect_attempts(7, attempts);
    counts.failures = failures;
    counts.failures.sort_by(|a, b| a.key().cmp(&b.key()));
    counts
}

/// `ten_port_snapshot` with `connected` connections and none in
/// TIME_WAIT, whose headroom is exact.
pub fn exact_ten_port_snapshot(connected: u16) -> Snapshot {
    let snapshot = ten_port_snapshot(connected, 0);
    assert!(snapshot.headroom_exact());
    snapshot
}
