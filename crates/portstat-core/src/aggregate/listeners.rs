//! What listens where: listening sockets grouped by protocol, address, port
//! and process, with their accept queues. `aggregate` hands each listening
//! socket to `ListenerGroups`, which groups them and keeps the limit;
//! `metrics::listeners` writes the groups.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::processes::Pids;
use crate::model::{ListenQueue, Protocol, SocketRecord, SocketState, TcpState, UdpState};

/// Sockets that listen on one protocol, address and port, owned by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// TCP for LISTEN sockets, UDP for unconnected bound sockets.
    pub protocol: Protocol,
    /// The local address.
    pub address: IpAddr,
    /// For a link-local address, the interface it belongs to: the same
    /// address on two interfaces is two listeners.
    pub interface: Option<String>,
    /// The local port.
    pub port: u16,
    /// The owner's `comm`, or `unknown`.
    pub process: String,
    /// The processes of that name that hold the sockets, for people.
    pub pids: Pids,
    /// How many sockets share this address and port (an SO_REUSEPORT group).
    pub sockets: u64,
    /// A TCP listener on an unreserved port inside the ephemeral range.
    pub in_ephemeral_range: bool,
    /// The accept queue summed over the group, where the source reports it.
    pub accept_queue: Option<AcceptQueue>,
}

impl Listener {
    /// The address as the `address` label writes it: with its interface
    /// for a link-local one, as in `fe80::1%eth0`.
    pub fn address_label(&self) -> String {
        match &self.interface {
            Some(interface) => format!("{}%{interface}", self.address),
            None => self.address.to_string(),
        }
    }

    /// The address and port, as in `127.0.0.1:80` or `[fe80::1%eth0]:80`.
    pub fn endpoint(&self) -> String {
        match self.address {
            IpAddr::V6(_) => format!("[{}]:{}", self.address_label(), self.port),
            IpAddr::V4(_) => format!("{}:{}", self.address, self.port),
        }
    }
}

/// A listener group's accept queue, summed over its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcceptQueue {
    /// Connections waiting for `accept()`.
    pub waiting: u64,
    /// The most that may wait.
    pub limit: u64,
}

impl AcceptQueue {
    fn add(&mut self, queue: ListenQueue) {
        self.waiting += u64::from(queue.waiting);
        self.limit += u64::from(queue.limit);
    }
}

/// Whether a socket is a listener: TCP in LISTEN, or an unconnected bound UDP
/// socket whose port is not one the kernel hands out automatically (an
/// unconnected UDP socket on an ephemeral port is almost always a client).
pub fn is_listener(socket: &SocketRecord, is_ephemeral: &impl Fn(u16) -> bool) -> bool {
    match socket.state {
        SocketState::Tcp(state) => state == TcpState::Listen,
        SocketState::Udp(state) => {
            let port = socket.local.port();
            state == UdpState::Unconnected && port != 0 && !is_ephemeral(port)
        }
    }
}

/// Where a listening socket listens, and who owns it: its group.
type GroupKey<'a> = (Protocol, IpAddr, Option<String>, u16, &'a str);

/// What a listener group adds up while the sockets are walked.
#[derive(Default)]
struct Tally {
    sockets: u64,
    accept_queue: Option<AcceptQueue>,
    pids: std::collections::BTreeSet<u32>,
}

/// Listening sockets gathered into groups while the sockets are walked.
#[derive(Default)]
pub struct ListenerGroups<'a> {
    groups: BTreeMap<GroupKey<'a>, Tally>,
}

impl<'a> ListenerGroups<'a> {
    /// Adds one listening socket, owned by `process` (`pid`, where known),
    /// on `interface` when its address is link-local.
    pub fn add(
        &mut self,
        socket: &SocketRecord,
        interface: Option<String>,
        process: &'a str,
        pid: Option<u32>,
    ) {
        let tally = self
            .groups
            .entry((
                socket.state.protocol(),
                socket.local.ip(),
                interface,
                socket.local.port(),
                process,
            ))
            .or_default();
        tally.sockets += 1;
        tally.pids.extend(pid);
        if let Some(queue) = socket.listen_queue {
            tally.accept_queue.get_or_insert_default().add(queue);
        }
    }

    /// The groups in order, at most `max` of them, and the sockets of those
    /// left out. Listeners inside the range matter most: past the limit,
    /// they are kept first.
    pub fn finish(self, max: usize, is_ephemeral: impl Fn(u16) -> bool) -> (Vec<Listener>, u64) {
        let mut listeners: Vec<Listener> = self
            .groups
            .into_iter()
            .map(
                |((protocol, address, interface, port, process), tally)| Listener {
                    protocol,
                    address,
                    interface,
                    port,
                    process: process.to_string(),
                    pids: Pids::of(tally.pids),
                    sockets: tally.sockets,
                    in_ephemeral_range: protocol == Protocol::Tcp && is_ephemeral(port),
                    accept_queue: tally.accept_queue,
                },
            )
            .collect();
        let mut omitted = 0;
        if listeners.len() > max {
            // A stable sort keeps the rest in order.
            listeners.sort_by_key(|listener| !listener.in_ephemeral_range);
            omitted = listeners[max..]
                .iter()
                .map(|listener| listener.sockets)
                .sum();
            listeners.truncate(max);
            listeners.sort_by(|a, b| {
                (a.protocol, a.address, a.port, &a.process)
                    .cmp(&(b.protocol, b.address, b.port, &b.process))
            });
        }
        (listeners, omitted)
    }
}
