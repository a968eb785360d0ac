//! The netlink source: sock_diag dumps over a `NETLINK_SOCK_DIAG` socket, the
//! interface `ss` uses.
//!
//! The kernel is asked for as little as possible. Each dump names the states
//! it wants, and all but the listener dumps carry `INET_DIAG_REQ_BYTECODE`, a
//! filter program the kernel runs on every socket so that only those whose
//! source port is inside the ephemeral range come back. No extension is
//! requested, so the kernel computes no per-socket info that goes unused.
//!
//! A dump walks the kernel's whole socket table whatever it returns, and a
//! `SOCK_DIAG_BY_FAMILY` request names one address family, so IPv4 and IPv6
//! would cost two walks. For TCP the older `TCPDIAG_GETSOCK` request (same
//! replies, same filter) dumps both families in one walk; where a kernel
//! refuses it, the reader falls back to one `SOCK_DIAG_BY_FAMILY` dump per
//! family. UDP has only the per-family request.
//!
//! Three parts: `wire` builds requests and parses replies (pure, tested on
//! bytes and fuzzed), `socket` sends and receives, and `NetlinkSockets`
//! here runs the dumps: retries, fallbacks, and the buffers it reuses.

pub mod socket;
pub mod wire;

use crate::model::{PortRange, Protocol, SocketRecord};
use socket::DiagSocket;
use wire::{
    BYTECODE_LENGTH, Dump, HEADER_LENGTH, Progress, RECEIVE_BUFFER_LENGTH, REQUEST_LENGTH,
    build_request, describe, dumps_for, parse_datagram, state_mask,
};

pub use wire::NetlinkError;

/// A `NETLINK_SOCK_DIAG` socket with its reused buffers.
pub struct NetlinkSockets {
    socket: Option<DiagSocket>,
    request: Vec<u8>,
    buffer: Vec<u8>,
    sequence: u32,
    /// Whether TCP is dumped with `TCPDIAG_GETSOCK`, until a kernel refuses it.
    tcp_both_families: bool,
}

impl NetlinkSockets {
    /// A source that opens its socket at first use.
    pub fn new() -> NetlinkSockets {
        NetlinkSockets {
            socket: None,
            request: Vec::with_capacity(HEADER_LENGTH + REQUEST_LENGTH + 4 + BYTECODE_LENGTH),
            buffer: Vec::with_capacity(RECEIVE_BUFFER_LENGTH),
            sequence: 0,
            tcp_both_families: true,
        }
    }

    /// Closes the socket; the next dump opens one in the calling thread's
    /// network namespace.
    pub fn close(&mut self) {
        self.socket = None;
    }

    /// Appends the sockets of `protocol` the exporter needs: listeners
    /// anywhere, everything else whose source port is inside `range`.
    /// `bound_inactive`: whether to look for TCP sockets bound but neither
    /// listening nor connected (see `census`).
    pub fn read_sockets(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        bound_inactive: bool,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<(), NetlinkError> {
        let start = sockets.len();
        let both_families = protocol == Protocol::Tcp && self.tcp_both_families;
        match self.run_dumps(protocol, range, both_families, bound_inactive, sockets) {
            Err(NetlinkError::Refused { source, .. }) if both_families => {
                tracing::info!(
                    err = %source,
                    "TCPDIAG_GETSOCK refused; dumping TCP one address family at a time"
                );
                self.tcp_both_families = false;
                sockets.truncate(start);
                self.run_dumps(protocol, range, false, bound_inactive, sockets)
            }
            other => other,
        }
    }

    /// Appends the TCP sockets bound inside `range` that neither listen nor
    /// are connected (Linux 6.5+; older kernels return none). They are in
    /// no table a BPF `iter/tcp` program walks.
    pub fn read_bound_inactive(
        &mut self,
        range: PortRange,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<(), NetlinkError> {
        let both_families = self.tcp_both_families;
        let families: &[Option<u8>] = if both_families {
            &[None]
        } else {
            &[Some(libc::AF_INET as u8), Some(libc::AF_INET6 as u8)]
        };
        for &family in families {
            let dump = Dump {
                family,
                protocol: Protocol::Tcp,
                states: state_mask::BOUND_INACTIVE,
                source_ports: Some(range),
            };
            self.dump_retrying(&dump, sockets)?;
        }
        Ok(())
    }

    fn run_dumps(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        both_families: bool,
        bound_inactive: bool,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<(), NetlinkError> {
        for dump in dumps_for(protocol, range, both_families, bound_inactive) {
            match self.dump_retrying(&dump, sockets) {
                // A kernel without IPv6 has no inet6 diag handler: that is no
                // IPv6 sockets, once the IPv4 dumps have worked.
                Err(NetlinkError::Refused { source, .. })
                    if dump.family == Some(libc::AF_INET6 as u8)
                        && matches!(
                            source.raw_os_error(),
                            Some(libc::ENOENT | libc::EAFNOSUPPORT)
                        ) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Runs one dump, again once if the kernel marks it interrupted.
    fn dump_retrying(
        &mut self,
        dump: &Dump,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<(), NetlinkError> {
        let start = sockets.len();
        for _ in 0..2 {
            sockets.truncate(start);
            match self.dump_once(dump, sockets) {
                Ok(false) => return Ok(()),
                Ok(true) => continue,
                Err(error) => {
                    // The socket may hold the rest of the failed dump.
                    self.socket = None;
                    sockets.truncate(start);
                    return Err(error);
                }
            }
        }
        sockets.truncate(start);
        Err(NetlinkError::Interrupted(describe(dump)))
    }

    /// Runs one dump; returns whether it was interrupted.
    fn dump_once(
        &mut self,
        dump: &Dump,
        sockets: &mut Vec<SocketRecord>,
    ) -> Result<bool, NetlinkError> {
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => DiagSocket::open()
                .map_err(|(call, source)| NetlinkError::System { call, source })?,
        };
        let socket = self.socket.insert(socket);
        self.sequence = self.sequence.wrapping_add(1);
        build_request(dump, self.sequence, &mut self.request);
        socket
            .send(&self.request)
            .map_err(|source| NetlinkError::System {
                call: "sendto",
                source,
            })?;
        let mut interrupted = false;
        loop {
            let length =
                socket
                    .receive(&mut self.buffer)
                    .map_err(|source| NetlinkError::System {
                        call: "recv",
                        source,
                    })?;
            if length > self.buffer.len() {
                return Err(NetlinkError::Malformed(format!(
                    "a datagram of {length} bytes overflowed the {}-byte buffer",
                    self.buffer.capacity()
                )));
            }
            let datagram = &self.buffer[..length];
            match parse_datagram(datagram, self.sequence, dump, &mut interrupted, sockets)? {
                Progress::More => {}
                Progress::Done { interrupted } => return Ok(interrupted),
            }
        }
    }
}

impl Default for NetlinkSockets {
    fn default() -> Self {
        NetlinkSockets::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// Both ways of dumping TCP return the same sockets, from the kernel this
    /// test runs on (its own sockets, in whatever namespace it is in).
    #[test]
    fn both_tcp_requests_agree_on_real_sockets() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let client4 = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let client6 = std::net::TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let bound =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        bound
            .bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let ours: Vec<u16> = [
            v4.local_addr().unwrap().port(),
            v6.local_addr().unwrap().port(),
            client4.local_addr().unwrap().port(),
            client6.local_addr().unwrap().port(),
            bound.local_addr().unwrap().as_socket().unwrap().port(),
        ]
        .to_vec();
        let range = PortRange {
            start: 1,
            end: 65535,
        };
        let read = |both_families: bool| {
            let mut source = NetlinkSockets::new();
            let mut sockets = Vec::new();
            source
                .run_dumps(Protocol::Tcp, range, both_families, true, &mut sockets)
                .unwrap();
            let mut ours: Vec<String> = sockets
                .iter()
                .filter(|socket| ours.contains(&socket.local.port()))
                .map(|socket| format!("{socket:?}"))
                .collect();
            ours.sort();
            ours
        };
        let both = read(true);
        // Two listeners, two client ends, two accepted ends, one bound.
        assert_eq!(both.len(), 7, "{both:#?}");
        assert!(both.iter().any(|socket| socket.contains("BoundInactive")));
        assert_eq!(both, read(false));
    }
}
