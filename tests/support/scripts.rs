//! Python processes run inside a namespace, ended on drop.

use super::*;

/// A Python script run inside a namespace, started once it printed
/// `ready`; it is told to end by the close of its standard input, and ended
/// on drop.
pub struct ReadyScript(Child);

impl ReadyScript {
    pub fn start(netns: &Netns, script: &str, args: &[&str]) -> ReadyScript {
        let mut child = netns
            .command("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        ReadyScript(child)
    }
}

impl Drop for ReadyScript {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        // A script given a moment to end on its own ends what it started.
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python3 process inside a namespace, named `comm` (raw bytes, which the
/// kernel cuts at 15), listening on 127.0.0.1:`port`; ended on drop.
pub struct NamedListener(#[allow(dead_code)] ReadyScript);

impl NamedListener {
    pub fn start(netns: &Netns, comm: &[u8], port: u16) -> NamedListener {
        let hex: String = comm.iter().map(|byte| format!("{byte:02x}")).collect();
        NamedListener(ReadyScript::start(
            netns,
            "import ctypes,socket,sys\n\
             ctypes.CDLL(None).prctl(15,ctypes.c_char_p(bytes.fromhex(sys.argv[1])),0,0,0)\n\
             s=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[2])))\ns.listen()\n\
             print('ready',flush=True)\nsys.stdin.read()",
            &[&hex, &port.to_string()],
        ))
    }
}
