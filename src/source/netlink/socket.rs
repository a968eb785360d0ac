//! A netlink socket itself (`NETLINK_SOCK_DIAG` here, `NETLINK_NETFILTER`
//! for conntrack): open, send a request, receive a datagram. No bytes are interpreted here (`wire` does that), and no
//! `unsafe` is needed: `netlink-sys` owns the descriptor and `socket2` sets
//! its timeout.

use std::io;
use std::time::Duration;

/// `NETLINK_SOCK_DIAG`, the netlink family of socket diagnostics.
const NETLINK_SOCK_DIAG: isize = libc::NETLINK_SOCK_DIAG as isize;

/// How long a receive waits: a kernel that stops answering must not stall
/// the sampler for ever.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A netlink socket, in the network namespace of the thread that opened it.
pub struct NetlinkSocket {
    socket: netlink_sys::Socket,
}

impl NetlinkSocket {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    /// Errors name the call that failed.
    pub fn open() -> Result<NetlinkSocket, (&'static str, io::Error)> {
        NetlinkSocket::open_family(NETLINK_SOCK_DIAG)
    }

    /// Opens a socket of the netlink `family` (`NETLINK_*`) in the calling
    /// thread's network namespace.
    pub fn open_family(family: isize) -> Result<NetlinkSocket, (&'static str, io::Error)> {
        let socket = netlink_sys::Socket::new(family).map_err(|e| ("socket", e))?;
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(|e| ("setsockopt(SO_RCVTIMEO)", e))?;
        Ok(NetlinkSocket { socket })
    }

    /// Sends one request to the kernel (an unconnected netlink socket sends
    /// to port 0, the kernel), again if a signal interrupts it.
    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        loop {
            match self.socket.send(request, 0) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Receives one datagram into `buffer`, replacing what it held, up to
    /// its capacity. Returns the datagram's whole length (`MSG_TRUNC`), so a
    /// datagram longer than the buffer shows as a length beyond it rather
    /// than being cut silently.
    pub fn receive(&self, buffer: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            buffer.clear();
            match self.socket.recv(buffer, libc::MSG_TRUNC) {
                Ok(length) => return Ok(length),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}
