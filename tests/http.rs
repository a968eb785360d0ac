//! The HTTP interface: endpoints, content negotiation, methods, shutdown.

mod support;

use support::Place;

use support::OutputWithin;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use support::{Netns, Recorded};

#[test]
fn endpoints_answer_as_documented() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&["--collector.interval", "200ms"]);

    let landing = exporter.get("/").unwrap();
    assert_eq!(landing.status, 200);
    assert_eq!(
        landing.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = landing.text();
    assert!(page.contains("<a href=\"/metrics\">"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");

    assert_eq!(exporter.get("/-/healthy").unwrap().status, 200);
    assert_eq!(exporter.get("/-/ready").unwrap().status, 200);
    assert_eq!(exporter.get("/nowhere").unwrap().status, 404);
    assert_eq!(exporter.get("/metrics/extra").unwrap().status, 404);

    let metrics = exporter.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(metrics.header("content-encoding"), None);
    let text = metrics.text();
    assert!(
        text.contains("# TYPE portstat_ephemeral_ports_used gauge"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(
        text.contains(&format!(
            "portstat_build_info{{version=\"{}\",revision=",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );

    let gzipped = exporter
        .request("GET", "/metrics", &[("Accept-Encoding", "gzip, deflate")])
        .unwrap();
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("Accept-Encoding"));
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gzipped.body[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert!(unzipped.contains("# TYPE portstat_ephemeral_ports_used gauge"));
    assert!(unzipped.ends_with('\n'));

    let head = exporter.request("HEAD", "/metrics", &[]).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    for method in ["POST", "PUT", "DELETE"] {
        let response = exporter.request(method, "/metrics", &[]).unwrap();
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn telemetry_path_and_exporter_metrics_flags() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&[
        "--web.telemetry-path",
        "/scrape",
        "--web.disable-exporter-metrics",
    ]);
    assert_eq!(exporter.get("/metrics").unwrap().status, 404);
    let response = exporter.get("/scrape").unwrap();
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(
        text.contains("portstat_ephemeral_ports_capacity 100"),
        "{text}"
    );
    assert!(!text.contains("process_"), "{text}");
    assert!(
        exporter
            .get("/")
            .unwrap()
            .text()
            .contains("href=\"/scrape\"")
    );
}

#[test]
fn ready_only_after_a_sample_succeeded() {
    let place = Recorded::new((40000, 40099), "");
    // No socket table to read: every sample fails.
    std::fs::remove_dir_all(place.procfs().join("net")).unwrap();
    let exporter = place.spawn_exporter(&["--collector.interval", "100ms"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        if let Ok(response) = exporter.get("/-/healthy") {
            break response;
        }
        assert!(std::time::Instant::now() < deadline, "never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(healthy.status, 200);
    // /metrics answers 503 until the first sample has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Ok(response) = exporter.get("/metrics")
            && response.status == 200
        {
            let metrics = support::Metrics::parse(&response.text());
            if metrics
                .get(r#"portstat_sample_errors_total{stage="source"}"#)
                .is_some_and(|errors| errors >= 2.0)
            {
                break metrics;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two samples did not fail within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exporter.get("/-/ready").unwrap().status, 503);
    assert_eq!(metrics.value("portstat_sample_success"), 0.0);
    assert_eq!(metrics.get("portstat_ephemeral_ports_capacity"), None);
    assert_eq!(metrics.get("portstat_sample_timestamp_seconds"), None);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let place = Recorded::new((40000, 40099), "");
    let mut exporter = place.start_exporter(&[]);
    let status = exporter
        .terminate(Duration::from_secs(5))
        .expect("the exporter did not exit within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        exporter.log().contains("shutting down"),
        "{}",
        exporter.log()
    );
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn listens_on_every_address_given_dual_stack_when_the_host_is_empty() {
    let netns = Netns::new((40000, 40099), "");
    let exporter = netns.start_exporter(&["--web.listen-address", ":10043"]);
    for address in ["127.0.0.1:10043", "[::1]:10043", "127.0.0.1:10042"] {
        let response = exporter
            .get_at(address.parse().unwrap(), "/-/healthy")
            .unwrap();
        assert_eq!(response.status, 200, "{address}");
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::Write;
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&[]);
    let mut stream = exporter.connect(exporter.address()).unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    // The server closes the connection once the header-read timeout passes.
    let _ = stream.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    // Scrapes are still served.
    assert_eq!(exporter.get("/metrics").unwrap().status, 200);
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn an_unprivileged_exporter_still_works_and_says_so_once() {
    let netns = Netns::new((40000, 40099), "");
    // A listener of root's, whose descriptors nobody may read.
    let _listener = netns.run(|| std::net::TcpListener::bind("127.0.0.1:7000").unwrap());
    let mut command = netns.unprivileged_exporter(&[
        "--web.listen-address=127.0.0.1:10042",
        "--collector.interval=100ms",
    ]);
    let log =
        std::env::temp_dir().join(format!("portstat-unprivileged-{}.log", std::process::id()));
    let mut child = command
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv (util-linux) is needed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let response = netns.http_get("127.0.0.1:10042".parse().unwrap(), "/metrics");
        if let Ok(response) = response
            && response.status == 200
            && response.text().contains("port=\"7000\"")
        {
            break support::Metrics::parse(&response.text());
        }
        assert!(std::time::Instant::now() < deadline, "never served");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(metrics.value("portstat_sample_success"), 1.0);
    assert_eq!(
        metrics.value(r#"portstat_listener_sockets{protocol="tcp",address="127.0.0.1",port="7000",process="unknown"}"#),
        1.0
    );
    // Its own sockets it can still name.
    assert_eq!(
        metrics.value(r#"portstat_listener_sockets{protocol="tcp",address="127.0.0.1",port="10042",process="portstat_export"}"#),
        1.0
    );
    // Once, naming the process and the error, and the capabilities the
    // exporter (nobody, none held) lacks.
    assert_eq!(text.matches("cannot read /proc/").count(), 1, "{text}");
    assert!(
        text.contains("the exporter lacks CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")
            && text.contains("Permission denied"),
        "{text}"
    );
}

/// At the limit, a new connection takes the place of the oldest that has
/// sent no request; where every connection has sent one, the new one is
/// closed at once.
#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    use std::io::Read;
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&["--web.max-connections", "3"]);
    let address = exporter.address();
    let closed_at_once = |stream: &mut std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 16];
        let started = std::time::Instant::now();
        let read = stream.read(&mut buffer);
        assert!(
            matches!(read, Ok(0)) || read.is_err(),
            "the connection was served: {read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not closed at once"
        );
    };
    // Three that ask once and keep their connection open.
    let mut held: Vec<_> = (0..3).map(|_| exporter.connect(address).unwrap()).collect();
    for stream in &mut held {
        stream
            .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
    }
    let mut extra = exporter.connect(address).unwrap();
    closed_at_once(&mut extra);
    drop(held);
    // Three idle ones: each new connection pushes out the oldest.
    std::thread::sleep(Duration::from_millis(200));
    let mut idle: Vec<_> = (0..3).map(|_| exporter.connect(address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(exporter.get("/-/healthy").unwrap().status, 200);
    closed_at_once(&mut idle[0]);
}

/// `nc -N`, socat and many health checks send a request, then close their
/// side for writing, and wait for the answer.
#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&["--collector.interval", "200ms"]);
    for _ in 0..20 {
        let mut stream = exporter.connect(exporter.address()).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
        assert!(answer.contains("portstat_ephemeral_ports_capacity"));
    }
    // 100 pipelined requests, then the half-close: 100 answers.
    let mut stream = exporter.connect(exporter.address()).unwrap();
    let request = "GET /-/healthy HTTP/1.1\r\nHost: a\r\n\r\n".repeat(100);
    stream.write_all(request.as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answers = Vec::new();
    stream.read_to_end(&mut answers).unwrap();
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 100);
}

/// Service managers send SIGHUP to reload; without a web configuration
/// there is nothing to reload, and the exporter must carry on.
#[test]
fn sighup_without_a_web_config_is_logged_and_survived() {
    let place = Recorded::new((40000, 40099), "");
    let mut exporter = place.start_exporter(&["--collector.interval", "200ms"]);
    exporter.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !exporter.log().contains("received SIGHUP") {
        assert!(
            exporter.running() && std::time::Instant::now() < deadline,
            "the exporter did not log the SIGHUP; it logged:
{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(exporter.running(), "SIGHUP killed the exporter");
    assert_eq!(exporter.get("/metrics").unwrap().status, 200);
    assert!(
        exporter.log().contains("received SIGHUP"),
        "{}",
        exporter.log()
    );
    let status = exporter.terminate(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status:?}");
}

/// A client with HTTP/2 prior knowledge is told, in HTTP/2, that only
/// HTTP/1.1 is served: a GOAWAY with HTTP_1_1_REQUIRED and the reason.
#[test]
fn http2_with_prior_knowledge_is_told_to_use_http1() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&[]);
    let mut stream = exporter.connect(exporter.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The preface in two pieces, as a slow client may send it.
    stream.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(b"\r\nSM\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    // A SETTINGS frame (type 4), then GOAWAY (type 7) with error code 13.
    assert_eq!(&answer[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0], "{answer:?}");
    let goaway = &answer[9..];
    assert_eq!(goaway[3], 7, "{answer:?}");
    assert_eq!(&goaway[13..17], &[0, 0, 0, 13], "{answer:?}");
    assert!(
        String::from_utf8_lossy(&goaway[17..]).contains("use HTTP/1.1"),
        "{answer:?}"
    );
    // HTTP/1.1 is served as before.
    assert_eq!(exporter.get("/-/healthy").unwrap().status, 200);
}

/// As root with every capability dropped, the exporter can list root's
/// processes' descriptors but not read them: their sockets are
/// `process="unknown"`, and one line in the log says why.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn root_without_capabilities_says_why_owners_are_unknown() {
    let netns = Netns::new((40000, 40099), "");
    let _listener = netns.run(|| std::net::TcpListener::bind("127.0.0.1:7000").unwrap());
    let output = netns
        .command("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            support::exporter(),
            "--once",
        ])
        .output_within()
        .expect("setpriv (util-linux) is needed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let metrics = support::Metrics::parse(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(
        metrics.value(r#"portstat_listener_sockets{protocol="tcp",address="127.0.0.1",port="7000",process="unknown"}"#),
        1.0
    );
    // Once, with the process and the capabilities the exporter lacks.
    assert_eq!(stderr.matches("cannot read /proc/").count(), 1, "{stderr}");
    assert!(
        stderr.contains("the exporter lacks CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
}

/// Whether process `pid` catches `signal`, by its `SigCgt` mask.
fn catches(pid: u32, signal: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// A SIGHUP or a SIGTERM that comes while the exporter starts waits for
/// the server instead of ending the process: the exporter is held at its
/// first bind() (its listener's, after the web configuration and before the
/// BPF programs), and must handle both signals there.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn signals_are_handled_from_before_the_exporter_binds() {
    let netns = Netns::new((40000, 40099), "");
    let mut exporter = netns.spawn_exporter_with(&[], |command| {
        support::hold_syscall(command, libc::SYS_bind);
    });
    let held = support::HeldCalls::of(exporter.pid());
    let first = held.next().expect("the exporter never called bind()");
    assert!(
        catches(exporter.pid(), libc::SIGHUP) && catches(exporter.pid(), libc::SIGTERM),
        "the exporter handles neither SIGHUP nor SIGTERM when it binds"
    );
    exporter.signal(libc::SIGHUP);
    held.release(first);
    held.release_all();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !exporter
        .get("/-/ready")
        .is_ok_and(|response| response.status == 200)
    {
        assert!(
            exporter.running() && std::time::Instant::now() < deadline,
            "the exporter did not survive a SIGHUP at its start; it logged:\n{}",
            exporter.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        exporter.log().contains("received SIGHUP"),
        "{}",
        exporter.log()
    );
    let status = exporter.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status:?}");
}

/// The seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A scraper every 3 s, samples at most 1 s apart: once the scrapes'
/// period is confirmed, the exporter takes one sample a scrape, just
/// before it, and each scrape gets figures less than the interval old.
#[test]
fn samples_follow_steady_scrapes_one_a_scrape() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&["--collector.interval", "1s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut next = std::time::Instant::now();
    let mut last_samples = None;
    let mut followed = 0;
    let mut seen = Vec::new();
    // Four scrapes in a row, each served by the one sample taken since the
    // scrape before, ended within the interval before it.
    while followed < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "scrapes never followed: (samples, period, age) at each scrape {seen:?}"
        );
        next += Duration::from_secs(3);
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        let asked = unix_now();
        let metrics = exporter.metrics();
        let samples = metrics.value("portstat_samples_total");
        let period = metrics.value("portstat_sample_scrape_period_seconds");
        let age = asked - metrics.value("portstat_sample_timestamp_seconds");
        seen.push((samples, period, age));
        let one_since = last_samples.is_some_and(|last: f64| samples == last + 1.0);
        if (period - 3.0).abs() < 0.5 && one_since && age < 1.0 {
            followed += 1;
        } else {
            followed = 0;
        }
        last_samples = Some(samples);
    }
}

/// With `--no-collector.follow-scrapes`, steady scrapes leave samples
/// every interval.
#[test]
fn without_following_samples_run_every_interval_whatever_the_scrapes() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter(&[
        "--collector.interval",
        "1s",
        "--no-collector.follow-scrapes",
    ]);
    let mut next = std::time::Instant::now();
    let mut samples = Vec::new();
    for _ in 0..8 {
        next += Duration::from_secs(3);
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        let metrics = exporter.metrics();
        assert_eq!(metrics.value("portstat_sample_scrape_period_seconds"), 0.0);
        samples.push(metrics.value("portstat_samples_total"));
    }
    // Eight scrapes 3 s apart, after the fourth of which a period would be
    // followed, one sample a scrape: past it, the timer's samples.
    assert!(
        samples[4..].windows(2).any(|pair| pair[1] - pair[0] >= 2.0),
        "samples at each scrape: {samples:?}"
    );
}
