//! The aggregate's unit tests, by what they cover, and the socket records
//! they share.

mod headroom;
mod occupancy;
mod owners;

use super::*;
use crate::model::{PortBinding, SocketOwners, TimeWait};
use crate::parse::sysctl::parse_reserved_ports;
use std::collections::BTreeMap;

fn tcp(state: TcpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
    SocketRecord::new(
        SocketState::Tcp(state),
        local.parse().unwrap(),
        remote.parse().unwrap(),
        inode,
    )
}

fn udp(state: UdpState, local: &str, remote: &str, inode: u64) -> SocketRecord {
    SocketRecord::new(
        SocketState::Udp(state),
        local.parse().unwrap(),
        remote.parse().unwrap(),
        inode,
    )
}

/// A TIME_WAIT socket with what the BPF source tells of it.
fn time_wait(
    local: &str,
    remote: &str,
    age_ms: u32,
    timestamps: bool,
    device: i32,
) -> SocketRecord {
    let mut socket = tcp(TcpState::TimeWait, local, remote, 0);
    socket.time_wait = Some(TimeWait {
        age_ms,
        timestamps: Some(timestamps),
        bound_device: Some(device),
    });
    socket
}

fn sample(sockets: Vec<SocketRecord>, reserved: &str) -> NamespaceSample {
    NamespaceSample {
        range: PortRange {
            start: 40000,
            end: 40099,
        },
        reserved: parse_reserved_ports(reserved).unwrap(),
        sockets,
        owners: SocketOwners::default(),
        time_wait_reuse: TimeWaitReuse::default(),
        report: ReadReport::complete(PerProtocol::both(SourceKind::Procfs)),
    }
}

fn states(occupancy: &ProtocolOccupancy) -> BTreeMap<&'static str, u64> {
    occupancy
        .sockets_by_state
        .iter()
        .map(|(state, count)| (state.label(), *count))
        .collect()
}
