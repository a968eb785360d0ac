//! Exporter processes started in a place (a namespace, or the host with a
//! recorded procfs), killed on drop, and the harness's HTTP client for them.

use super::*;

/// An exporter process, killed on drop.
pub struct Exporter<'a> {
    pub(super) child: Child,
    pub(super) place: &'a dyn Place,
    pub(super) address: SocketAddr,
    pub(super) log: PathBuf,
}

/// An HTTP response as the harness's client read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl Exporter<'_> {
    /// The exporter's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first address it logged it listens on, once it has logged one
    /// (`None` when it exited or logged none within `READY_DEADLINE`).
    pub fn logged_address(&mut self) -> Option<SocketAddr> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let log = self.log();
            let address = log
                .lines()
                .filter(|line| line.contains("listening"))
                .find_map(|line| {
                    let rest = line
                        .split("address=")
                        .nth(1)
                        .or_else(|| line.split("\"address\":\"").nth(1))?;
                    rest.split(|c: char| c.is_whitespace() || c == '"')
                        .next()?
                        .parse()
                        .ok()
                });
            if address.is_some() || !self.running() || Instant::now() > deadline {
                return address;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address it serves on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends `signal` to the exporter.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Whether the exporter has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the exporter logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, `limit` at most, until the exporter has logged `text`;
    /// returns its log.
    pub fn wait_for_log(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the exporter never logged {text:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        self.request("GET", path, &[])
    }

    /// The parsed metrics of one scrape.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics").expect("scrape failed");
        assert_eq!(response.status, 200, "scrape answered {}", response.status);
        Metrics::parse(&response.text())
    }

    /// Waits until the exporter's failure counter is loaded: the programs
    /// load in the background, after the exporter is ready.
    pub fn wait_for_the_counter(&self) {
        self.metrics_until(|metrics| {
            metrics.get(r#"portstat_failures_source_info{source="bpf",reason="loaded"}"#)
                == Some(1.0)
        })
        .unwrap_or_else(|timed_out| panic!("the failure counter loaded: {timed_out:?}"));
    }

    /// Waits until the exporter, with `--collector.netns=all`, samples each
    /// of `namespaces`: the kernel records a namespace's connects, failures
    /// and closes from the sample that first finds it.
    pub fn wait_until_sampled(&self, namespaces: &[&Netns]) {
        let series: Vec<String> = namespaces
            .iter()
            .map(|netns| {
                format!(
                    r#"portstat_ephemeral_range_start{{netns="{}",netns_name="{}"}}"#,
                    netns.inode(),
                    netns.name()
                )
            })
            .collect();
        self.metrics_until(|metrics| series.iter().all(|series| metrics.get(series).is_some()))
            .unwrap_or_else(|timed_out| panic!("the namespaces sampled: {timed_out:?}"));
    }

    /// Scrapes until `done` holds for the metrics; `Err` with the last
    /// metrics when it did not within `READY_DEADLINE`.
    pub fn metrics_until(&self, done: impl Fn(&Metrics) -> bool) -> Result<Metrics, TimedOut> {
        poll_until(|| self.metrics(), done)
    }

    /// Sends one HTTP/1.1 request from the place, from a local port that
    /// does not change the figures.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<HttpResponse> {
        let stream = self.place.connect(self.address)?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        read_response(stream, &request, method == "HEAD")
    }

    /// GET `path` from another address the exporter listens on.
    pub fn get_at(&self, address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
        self.place.http_get(address, path)
    }

    /// A connection from the place to `address`.
    pub fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        self.place.connect(address)
    }

    /// Sends SIGTERM and waits for the exit status, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(limit)
    }

    /// Waits for the process to exit by itself, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Exporter<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub(super) fn read_response(
    mut stream: TcpStream,
    request: &str,
    head: bool,
) -> std::io::Result<HttpResponse> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head {
        assert!(body.is_empty(), "a HEAD answer carried a body");
    }
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..end]).unwrap_or("0").trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}
