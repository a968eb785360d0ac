//! Setup commands, sockets in the states the tests need, and the test
//! process's own name.

use super::*;

/// Runs a setup command and fails the test if it fails.
pub fn run(command: &mut Command) {
    let output = command.output_within().expect("cannot run a setup command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP socket bound to `address` (port 0: the kernel picks one from the
/// ephemeral range), neither listening nor connected.
pub fn bound_socket(address: &str, reuse_port: bool) -> socket2::Socket {
    let address: SocketAddr = address.parse().expect("a socket address");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )
    .expect("a TCP socket");
    socket.set_reuse_port(reuse_port).expect("SO_REUSEPORT");
    socket.bind(&address.into()).expect("bind");
    socket
}

/// A TCP listener on `address` with room for `backlog` connections not yet
/// accepted.
pub fn listening_socket(address: &str, reuse_port: bool, backlog: i32) -> socket2::Socket {
    let socket = bound_socket(address, reuse_port);
    socket.listen(backlog).expect("listen");
    socket
}

/// The `comm` of this test process, as the exporter reports owners.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("cannot read /proc/self/comm")
        .trim_end()
        .to_string()
}

/// `TIME_WAIT` as `/proc/net/tcp` writes it.
pub const TIME_WAIT: &str = "06";

/// How many IPv4 TCP sockets of the calling thread's namespace are in
/// `state` (as `/proc/net/tcp` writes it, in hex: `TIME_WAIT`).
pub fn tcp_sockets_in_state(state: &str) -> usize {
    std::fs::read_to_string("/proc/thread-self/net/tcp")
        .expect("cannot read /proc/thread-self/net/tcp")
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(3) == Some(state))
        .count()
}
