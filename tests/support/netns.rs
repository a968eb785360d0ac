//! Network namespaces of the test's own, deleted on drop.

use super::*;

/// A network namespace of the test's own, deleted on drop.
pub struct Netns {
    name: String,
    handle: File,
    next_client_port: AtomicU16,
}

impl Netns {
    /// A new namespace with loopback up and the given ephemeral range and
    /// reserved ports (`ip_local_reserved_ports` syntax, may be empty).
    pub fn new(range: (u16, u16), reserved: &str) -> Netns {
        require_root();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portstat-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard owns the namespace, even if setup fails.
        let handle = File::open(format!("/run/netns/{name}"));
        let netns = Netns {
            name: name.clone(),
            handle: match handle {
                Ok(handle) => handle,
                Err(error) => {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                    panic!("cannot open /run/netns/{name}: {error}");
                }
            },
            next_client_port: AtomicU16::new(20000),
        };
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        netns.set_range(range);
        netns.set_reserved(reserved);
        netns
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode, as `--collector.netns=all` labels it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.handle.metadata().expect("the namespace's inode").ino()
    }

    /// Sets `ip_local_port_range` inside the namespace.
    pub fn set_range(&self, (start, end): (u16, u16)) {
        self.write_sysctl("ip_local_port_range", &format!("{start} {end}"));
    }

    /// Sets `ip_local_reserved_ports` inside the namespace.
    pub fn set_reserved(&self, reserved: &str) {
        let reserved = if reserved.is_empty() { "\n" } else { reserved };
        self.write_sysctl("ip_local_reserved_ports", reserved);
    }

    /// Writes `/proc/sys/net/ipv4/NAME` inside the namespace.
    pub fn write_sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/net/ipv4/{name}");
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|error| panic!("cannot write {path}: {error}"));
    }

    /// Runs `work` on a thread that has entered the namespace: sockets it
    /// creates belong to the namespace, whichever thread uses them later.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: fd is a namespace file that self keeps open; setns
                    // changes only this thread, which ends with the scope.
                    let result = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                    assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .expect("the namespace thread panicked")
        })
    }

    /// A command that runs inside the namespace; with
    /// `PORTSTAT_TEST_REFUSE_BPF` set, `bpf()` is refused to it.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let fd = self.handle.as_raw_fd();
        // SAFETY: setns is async-signal-safe, and fd stays open in the child
        // until exec (close-on-exec closes it then).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if refusing_bpf() {
            refuse_syscall(&mut command, libc::SYS_bpf, None, libc::EPERM);
        }
        command
    }

    /// The exporter inside the namespace as `nobody`, without any
    /// capability (setpriv, from util-linux), with `args`.
    pub fn unprivileged_exporter(&self, args: &[&str]) -> Command {
        let mut command = self.command("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                exporter(),
            ])
            .args(args);
        command
    }

    /// A connection from inside the namespace to `address`, from a local
    /// port outside the test's range so that it does not change the figures.
    pub fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        let local = if address.is_ipv4() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.next_port()))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.next_port()))
        };
        self.run(move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(address),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.bind(&local.into())?;
            socket.connect_timeout(&address.into(), Duration::from_secs(2))?;
            Ok(socket.into())
        })
    }

    /// A local port outside any test range, for the harness's own clients.
    fn next_port(&self) -> u16 {
        self.next_client_port.fetch_add(1, Ordering::Relaxed)
    }
}

impl Place for Netns {
    fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, program: &str) -> Command {
        Netns::command(self, program)
    }

    fn exporter_command(&self) -> Command {
        Netns::command(self, exporter())
    }

    fn inspect_command(&self) -> Command {
        let mut command = Netns::command(self, exporter());
        command.arg("inspect");
        command
    }

    fn listen_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 10042))
    }

    fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        Netns::connect(self, address)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
