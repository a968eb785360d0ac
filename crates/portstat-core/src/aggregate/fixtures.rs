//! Snapshots the unit tests of several modules build alike.

use super::{Limits, Snapshot, aggregate};
use crate::model::{
    FailureKind, NamespaceSample, PerProtocol, PortFailure, PortRange, ReadReport, ReservedPorts,
    SocketOwners, SocketRecord, SocketState, SourceKind, TcpState, TimeWaitReuse,
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
