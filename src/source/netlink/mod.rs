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
//! Three parts: `wire` (the core's `parse::netlink`) builds requests and
//! parses replies (pure, tested on bytes and fuzzed), `socket` sends and
//! receives, and `NetlinkSockets` here runs the dumps: retries, fallbacks,
//! and the buffers it reuses. What an error code means is decided here,
//! with `libc`'s codes (`Unsupported`).

pub mod socket;
pub use portstat_core::parse::netlink as wire;

use portstat_core::model::{PortRange, Protocol, SocketRecord, SocketSink};
use socket::NetlinkSocket;
use wire::{
    BYTECODE_LENGTH, Dump, HEADER_LENGTH, Progress, RECEIVE_BUFFER_LENGTH, REQUEST_LENGTH,
    build_request, describe, dumps_for, parse_datagram, state_mask,
};

pub use wire::NetlinkError;

/// A `NETLINK_SOCK_DIAG` socket with its reused buffers.
pub struct NetlinkSockets {
    socket: Option<NetlinkSocket>,
    request: Vec<u8>,
    buffer: Vec<u8>,
    sequence: u32,
    /// Whether TCP is dumped with `TCPDIAG_GETSOCK`, until a kernel refuses it.
    tcp_both_families: bool,
    /// The sockets of one datagram, reused.
    batch: Vec<SocketRecord>,
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
            batch: Vec::new(),
        }
    }

    /// Opens the socket where none is open, in the calling thread's network
    /// namespace: what a dump needs first, to prove that this source can
    /// run here without running one.
    pub fn open(&mut self) -> Result<(), NetlinkError> {
        if self.socket.is_none() {
            let socket = NetlinkSocket::open()
                .map_err(|(call, source)| NetlinkError::System { call, source })?;
            self.socket = Some(socket);
        }
        Ok(())
    }

    /// Closes the socket; the next dump opens one in the calling thread's
    /// network namespace.
    pub fn close(&mut self) {
        self.socket = None;
    }

    /// Hands `sink` the sockets of `protocol` the exporter needs: listeners
    /// anywhere, everything else whose source port is inside `range`.
    /// `bound_inactive`: whether to look for TCP sockets bound but neither
    /// listening nor connected (see `census`). Where the dumps must be run
    /// again, `sink` is told to forget the protocol's sockets first.
    pub fn read_sockets(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        bound_inactive: bool,
        sink: &mut dyn SocketSink,
    ) -> Result<(), NetlinkError> {
        let both_families = protocol == Protocol::Tcp && self.tcp_both_families;
        match self.read_again_if_interrupted(protocol, range, both_families, bound_inactive, sink) {
            Err(NetlinkError::Refused { source, .. }) if both_families => {
                tracing::info!(
                    err = %source,
                    "TCPDIAG_GETSOCK refused; dumping TCP one address family at a time"
                );
                self.tcp_both_families = false;
                sink.restart(protocol);
                self.read_again_if_interrupted(protocol, range, false, bound_inactive, sink)
            }
            other => other,
        }
    }

    /// Hands `sink` the TCP sockets bound inside `range` that neither listen
    /// nor are connected (Linux 6.5+; older kernels return none). They are
    /// in no table a BPF `iter/tcp` program walks.
    pub fn read_bound_inactive(
        &mut self,
        range: PortRange,
        sink: &mut dyn SocketSink,
    ) -> Result<(), NetlinkError> {
        self.read_held(state_mask::BOUND_INACTIVE, range, sink)
    }

    /// Hands `sink` the TCP sockets on local `port` that do not listen:
    /// connections, and bound-but-inactive sockets where the kernel reports
    /// them. For a port outside the ephemeral range, whose sockets the
    /// range's dumps leave out (`inspect PORT`).
    pub fn read_port(&mut self, port: u16, sink: &mut dyn SocketSink) -> Result<(), NetlinkError> {
        let only = PortRange {
            start: port,
            end: port,
        };
        self.read_held(
            state_mask::CONNECTIONS | state_mask::BOUND_INACTIVE,
            only,
            sink,
        )
    }

    /// Dumps the TCP sockets in `states` whose local port is in `ports`,
    /// holding them until every dump completes, so that `sink` never needs
    /// to forget them: they are few.
    fn read_held(
        &mut self,
        states: u32,
        ports: PortRange,
        sink: &mut dyn SocketSink,
    ) -> Result<(), NetlinkError> {
        let both_families = self.tcp_both_families;
        let families: &[Option<u8>] = if both_families {
            &[None]
        } else {
            &[Some(libc::AF_INET as u8), Some(libc::AF_INET6 as u8)]
        };
        let mut held: Vec<SocketRecord> = Vec::new();
        for &family in families {
            let dump = Dump {
                family,
                protocol: Protocol::Tcp,
                states,
                source_ports: Some(ports),
            };
            let start = held.len();
            let mut attempts = 0;
            while self.dump_once(&dump, &mut held)? {
                held.truncate(start);
                attempts += 1;
                if attempts == 2 {
                    return Err(NetlinkError::Interrupted(describe(&dump)));
                }
            }
        }
        for socket in &held {
            sink.add(socket);
        }
        Ok(())
    }

    /// Runs the protocol's dumps, and once again from the start if the
    /// kernel marked any of them interrupted.
    fn read_again_if_interrupted(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        both_families: bool,
        bound_inactive: bool,
        sink: &mut dyn SocketSink,
    ) -> Result<(), NetlinkError> {
        let mut interrupted = None;
        for _ in 0..2 {
            interrupted = self.run_dumps(protocol, range, both_families, bound_inactive, sink)?;
            match &interrupted {
                None => return Ok(()),
                Some(_) => sink.restart(protocol),
            }
        }
        Err(NetlinkError::Interrupted(
            interrupted.as_ref().map(describe).unwrap_or_default(),
        ))
    }

    /// Runs the protocol's dumps; returns the last one the kernel marked
    /// interrupted, if any.
    fn run_dumps(
        &mut self,
        protocol: Protocol,
        range: PortRange,
        both_families: bool,
        bound_inactive: bool,
        sink: &mut dyn SocketSink,
    ) -> Result<Option<Dump>, NetlinkError> {
        let mut interrupted = None;
        for dump in dumps_for(protocol, range, both_families, bound_inactive) {
            match self.dump_once(&dump, sink) {
                Ok(true) => interrupted = Some(dump),
                Ok(false) => {}
                // A kernel without IPv6 has no inet6 diag handler: that is no
                // IPv6 sockets, once the IPv4 dumps have worked.
                Err(NetlinkError::Refused { source, .. })
                    if dump.family == Some(libc::AF_INET6 as u8)
                        && matches!(
                            source.raw_os_error(),
                            Some(libc::ENOENT | libc::EAFNOSUPPORT)
                        ) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(interrupted)
    }

    /// Runs one dump, handing its sockets to `sink` a datagram at a time;
    /// returns whether the kernel marked it interrupted. After an error the
    /// socket, which may hold the rest of the dump, is closed.
    fn dump_once(&mut self, dump: &Dump, sink: &mut dyn SocketSink) -> Result<bool, NetlinkError> {
        let result = self.dump_once_on_socket(dump, sink);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    fn dump_once_on_socket(
        &mut self,
        dump: &Dump,
        sink: &mut dyn SocketSink,
    ) -> Result<bool, NetlinkError> {
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => NetlinkSocket::open()
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
            self.batch.clear();
            let progress = parse_datagram(
                datagram,
                self.sequence,
                dump,
                &mut interrupted,
                &mut self.batch,
            )?;
            for socket in &self.batch {
                sink.add(socket);
            }
            match progress {
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

/// Whether an error means this kernel cannot serve a kind of request at
/// all, as opposed to a passing failure.
pub trait Unsupported {
    /// No netlink, no `inet_diag`/`udp_diag`, not permitted.
    fn is_unsupported(&self) -> bool;
}

impl Unsupported for NetlinkError {
    fn is_unsupported(&self) -> bool {
        let code = match self {
            NetlinkError::System { source, .. } | NetlinkError::Refused { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        };
        // sock_diag answers EINVAL to a request kind it does not know.
        code == Some(libc::EINVAL) || means_unavailable(code)
    }
}

/// Whether a netlink error code means that the kernel cannot serve a kind
/// of request at all (no such netlink family or subsystem, not permitted),
/// as opposed to a passing failure. The codes are `libc`'s, right on every
/// architecture.
pub fn means_unavailable(code: Option<i32>) -> bool {
    matches!(
        code,
        Some(
            libc::ENOENT
                | libc::EPROTONOSUPPORT
                | libc::EAFNOSUPPORT
                | libc::EOPNOTSUPP
                | libc::EPERM
                | libc::EACCES
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn error_codes_that_mean_the_kernel_cannot_serve() {
        let refused = |code| NetlinkError::Refused {
            dump: "tcp".to_string(),
            source: std::io::Error::from_raw_os_error(code),
        };
        for code in [
            libc::ENOENT,
            libc::EPERM,
            libc::EACCES,
            libc::EOPNOTSUPP,
            libc::EINVAL,
        ] {
            assert!(refused(code).is_unsupported(), "{code}");
        }
        for code in [libc::EINTR, libc::EBUSY, libc::ENOBUFS] {
            assert!(!refused(code).is_unsupported(), "{code}");
        }
        assert!(!NetlinkError::Malformed("short".to_string()).is_unsupported());
        assert!(means_unavailable(Some(libc::EAFNOSUPPORT)));
        assert!(!means_unavailable(Some(libc::EINVAL)) && !means_unavailable(None));
    }

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
