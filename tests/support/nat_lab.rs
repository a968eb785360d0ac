//! Three namespaces joined by two links, the middle one masquerading.

use super::*;

/// Three namespaces joined by two links: a client with 11 addresses
/// (10.77.1.2 to .12, and fd77:1::2) routed through a router (10.77.1.1,
/// 10.77.2.1; fd77:1::1, fd77:2::1) that masquerades TCP and UDP leaving for
/// the server (10.77.2.2, fd77:2::2) to its own address and the ports
/// `nat_ports`, over IPv4 and IPv6, as a NAT gateway or a Kubernetes node
/// does. The server listens on TCP port 8080 and UDP port 53. Every
/// namespace is deleted on drop, which takes the links with it.
pub struct NatLab {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    /// The server's sockets, open as long as the lab.
    _listeners: (socket2::Socket, socket2::Socket, std::net::UdpSocket),
}

impl NatLab {
    /// The router's address toward the server: the NAT address.
    pub const NAT_ADDRESS: &'static str = "10.77.2.1";
    /// The server's address.
    pub const SERVER: &'static str = "10.77.2.2";
    /// The router's IPv6 address toward the server.
    pub const NAT_ADDRESS_V6: &'static str = "fd77:2::1";
    /// The server's IPv6 address.
    pub const SERVER_V6: &'static str = "fd77:2::2";

    /// The lab, masquerading to the ports `nat_ports` (`--to-ports`).
    pub fn new(nat_ports: (u16, u16)) -> NatLab {
        let range = (40000, 40999);
        let client = Netns::new(range, "");
        let router = Netns::new(range, "");
        let server = Netns::new(range, "");
        let (c, r, s) = (client.name(), router.name(), server.name());
        let ip = |line: String| run(Command::new("ip").args(line.split_whitespace()));
        ip(format!(
            "link add nat-c0 netns {c} type veth peer name nat-r0 netns {r}"
        ));
        ip(format!(
            "link add nat-r1 netns {r} type veth peer name nat-s0 netns {s}"
        ));
        for (netns, link) in [(c, "nat-c0"), (r, "nat-r0"), (r, "nat-r1"), (s, "nat-s0")] {
            ip(format!("-n {netns} link set {link} up"));
        }
        for host in 2..=12 {
            ip(format!("-n {c} addr add 10.77.1.{host}/24 dev nat-c0"));
        }
        // nodad: the addresses are usable at once, not after duplicate
        // address detection.
        for (netns, address, link) in [
            (r, "10.77.1.1/24", "nat-r0"),
            (r, "10.77.2.1/24", "nat-r1"),
            (s, "10.77.2.2/24", "nat-s0"),
            (c, "fd77:1::2/64 nodad", "nat-c0"),
            (r, "fd77:1::1/64 nodad", "nat-r0"),
            (r, "fd77:2::1/64 nodad", "nat-r1"),
            (s, "fd77:2::2/64 nodad", "nat-s0"),
        ] {
            ip(format!("-n {netns} addr add {address} dev {link}"));
        }
        for (netns, gateway) in [
            (c, "10.77.1.1"),
            (s, "10.77.2.1"),
            (c, "fd77:1::1"),
            (s, "fd77:2::1"),
        ] {
            ip(format!("-n {netns} route add default via {gateway}"));
        }
        router.write_sysctl("ip_forward", "1");
        router
            .run(|| std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1"))
            .expect("cannot turn IPv6 forwarding on");
        let to_ports = format!("{}-{}", nat_ports.0, nat_ports.1);
        for tables in ["iptables", "ip6tables"] {
            for protocol in ["tcp", "udp"] {
                let rule = format!(
                    "-t nat -A POSTROUTING -o nat-r1 -p {protocol} -j MASQUERADE --to-ports {to_ports}"
                );
                run(router.command(tables).args(rule.split_whitespace()));
            }
        }
        let listeners = server.run(|| {
            (
                listening_socket("10.77.2.2:8080", false, 1024),
                listening_socket("[fd77:2::2]:8080", false, 1024),
                std::net::UdpSocket::bind("10.77.2.2:53").expect("bind UDP 53"),
            )
        });
        NatLab {
            client,
            router,
            server,
            _listeners: listeners,
        }
    }

    /// A TCP connection over IPv6 from the client's fd77:1::2 to the
    /// server's port 8080, given a second for its handshake.
    pub fn connect_v6(&self) -> std::io::Result<TcpStream> {
        let server: SocketAddr = format!("[{}]:8080", Self::SERVER_V6).parse().unwrap();
        self.client
            .run(move || TcpStream::connect_timeout(&server, Duration::from_secs(1)))
    }

    /// A TCP connection from the client's address `10.77.1.(2 + n % 11)` to
    /// the server's port 8080, given a second for its handshake.
    pub fn connect(&self, n: usize) -> std::io::Result<TcpStream> {
        let local: SocketAddr = format!("10.77.1.{}:0", 2 + n % 11).parse().unwrap();
        let server: SocketAddr = format!("{}:8080", Self::SERVER).parse().unwrap();
        self.client.run(move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&server.into(), Duration::from_secs(1))?;
            Ok(socket.into())
        })
    }

    /// A DNS-sized UDP datagram from a new client socket to the server's
    /// port 53: one more UDP conntrack entry. The socket is returned so
    /// that its port stays the client's.
    pub fn send_udp(&self) -> std::net::UdpSocket {
        let server: SocketAddr = format!("{}:53", Self::SERVER).parse().unwrap();
        self.client.run(move || {
            let socket = std::net::UdpSocket::bind("10.77.1.2:0").expect("bind UDP");
            socket.send_to(&[0; 32], server).expect("send UDP");
            socket
        })
    }

    /// The router's conntrack entries of `protocol` to the server's `port`,
    /// as `conntrack -L` lists them.
    pub fn conntrack_entries(&self, protocol: &str, port: u16) -> usize {
        let output = self
            .router
            .command("conntrack")
            .args(["-L", "-p", protocol, "--dport", &port.to_string()])
            .output_within()
            .expect("conntrack is needed (Debian package conntrack); .ci/run installs it");
        assert!(
            output.status.success(),
            "conntrack -L: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).lines().count()
    }
}
