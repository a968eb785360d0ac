//! Under attack on loopback, bounded in count and time: idle connections,
//! slow-header (slowloris) connections and a flood of oversized headers at
//! once, while a well-behaved scraper keeps scraping. Afterwards memory and
//! descriptors are back where they started.

mod support;

use support::Place;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::Recorded;

const ATTACK: Duration = Duration::from_secs(12);

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Adds `count` TCP listeners on 127.0.0.1, from port `first` on, to the
/// place's recorded socket table.
fn record_listeners(place: &Recorded, first: u16, count: u16) {
    let path = place.procfs().join("net/tcp");
    let mut table = std::fs::read_to_string(&path).unwrap();
    let recorded = table.lines().count() - 1;
    for index in 0..count {
        table.push_str(&format!(
            "{:4}: 0100007F:{:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     \
             0        0 {} 1 0000000000000000 100 0 0 10 0\n",
            recorded + usize::from(index),
            first + index,
            900_000 + u32::from(index),
        ));
    }
    std::fs::write(&path, table).unwrap();
}

#[test]
fn scrapes_stay_fast_under_attack_and_resources_come_back() {
    attack(None, 1000);
}

/// The same attack under `ulimit -n 1024`, a common default: the exporter
/// fits its connections beside the descriptors sampling needs (896 of
/// them), with 600 idle connections and 200 slow ones held.
#[test]
fn scrapes_stay_fast_under_attack_with_1024_descriptors() {
    attack(Some(1024), 600);
}

/// More idle connections than fit under `ulimit -n 1024`: the ones beyond
/// the limit are closed at once, and sampling, which keeps a reserve of
/// descriptors, goes on without an error. The limit is logged once.
#[test]
fn more_idle_connections_than_descriptors_do_not_stop_sampling() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter_with(&["--collector.interval", "200ms"], |command| {
        support::limit_descriptors(command, 1024)
    });
    let log = exporter.log();
    assert_eq!(
        log.matches("--web.max-connections exceeds").count(),
        1,
        "{log}"
    );
    assert!(log.contains("limit=896"), "{log}");
    let errors = r#"portstat_sample_errors_total{stage="source"}"#;
    let before = exporter.metrics();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| place.connect(exporter.address()).ok())
        .collect();
    assert_eq!(idle.len(), 1100);
    std::thread::sleep(Duration::from_secs(3));
    drop(idle);
    let after = exporter
        .metrics_until(|metrics| {
            metrics.value("portstat_sample_timestamp_seconds")
                > before.value("portstat_sample_timestamp_seconds") + 3.0
        })
        .unwrap();
    assert_eq!(
        after.value(errors),
        before.value(errors),
        "{}",
        exporter.log()
    );
    assert_eq!(after.value("portstat_sample_success"), 1.0);
    let log = exporter.log();
    assert!(!log.contains("sampling failed"), "{log}");
    assert!(
        log.matches("accepting a connection failed").count() <= 1,
        "{log}"
    );
}

/// Idle, slow-header and oversized-header connections at once, `idle` of
/// the first kind, with the exporter under `descriptors` open files.
fn attack(descriptors: Option<u64>, idle: usize) {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter_with(&["--collector.interval", "1s"], |command| {
        if let Some(descriptors) = descriptors {
            support::limit_descriptors(command, descriptors)
        }
    });
    let address = exporter.address();
    // Warm up: the first scrapes and samples allocate what they keep.
    for _ in 0..20 {
        exporter.metrics();
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = resident_kib(exporter.pid());
    let descriptors_before = open_descriptors(exporter.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        // Connections that never send a byte.
        let idle: Vec<TcpStream> = (0..idle)
            .filter_map(|_| place.connect(address).ok())
            .collect();
        // 200 that send a header line a second and never finish.
        let mut slow: Vec<TcpStream> = (0..200)
            .filter_map(|_| place.connect(address).ok())
            .collect();
        for stream in &mut slow {
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n");
        }
        let slow_stop = stop.clone();
        scope.spawn(move || {
            while !slow_stop.load(Ordering::Relaxed) {
                for stream in &mut slow {
                    let _ = stream.write_all(b"X-Slow: 1\r\n");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        // A flood of requests with 64 KiB of headers.
        let flood_stop = stop.clone();
        let flood_rejected = rejected.clone();
        let place = &place;
        scope.spawn(move || {
            let header = format!(
                "GET /metrics HTTP/1.1\r\nHost: flood\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            );
            while !flood_stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = place.connect(address) else {
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.write_all(header.as_bytes());
                let mut answer = [0u8; 12];
                if stream.read_exact(&mut answer).is_ok() && &answer[9..12] == b"431" {
                    flood_rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        // The well-behaved scraper, with a new connection each time.
        let mut latencies = Vec::new();
        let started = Instant::now();
        while started.elapsed() < ATTACK {
            let begun = Instant::now();
            let response = exporter
                .get("/metrics")
                .expect("a scrape failed under attack");
            latencies.push(begun.elapsed());
            assert_eq!(response.status, 200);
            assert!(
                response
                    .text()
                    .contains("portstat_ephemeral_ports_capacity")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        println!(
            "{} scrapes under attack: p50 {:?}, p99 {:?}, max {:?}; {} oversized requests answered 431",
            latencies.len(),
            latencies[latencies.len() / 2],
            p99,
            latencies.last().unwrap(),
            rejected.load(Ordering::Relaxed)
        );
        assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
        drop(idle);
    });
    assert!(
        rejected.load(Ordering::Relaxed) > 0,
        "no oversized request was answered 431"
    );

    // Everything the attack opened is closed again, and memory returns.
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_descriptors(exporter.pid()) > descriptors_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = resident_kib(exporter.pid());
    let descriptors_after = open_descriptors(exporter.pid());
    println!(
        "RSS {rss_before} KiB before, {rss_after} KiB after; descriptors {descriptors_before} before, {descriptors_after} after"
    );
    assert!(
        descriptors_after as f64 <= descriptors_before as f64 * 1.1,
        "descriptors {descriptors_before} -> {descriptors_after}"
    );
    assert!(
        rss_after as f64 <= rss_before as f64 * 1.1,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

/// More idle connections than the limit allows, opened faster than any
/// timeout: the oldest that sent no request gives its place to each new
/// connection, so the scraper still gets in.
#[test]
fn an_idle_flood_does_not_lock_out_the_scraper() {
    let place = Recorded::new((40000, 40099), "");
    let exporter = place.start_exporter_with(&["--collector.interval", "1s"], |command| {
        support::limit_descriptors(command, 1024)
    });
    assert!(exporter.log().contains("limit=896"), "{}", exporter.log());
    let address = exporter.address();
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| place.connect(address).ok())
        .collect();
    println!("1100 idle connections opened in {:?}", started.elapsed());
    assert_eq!(idle.len(), 1100);
    let scrapes: Vec<_> = (0..5)
        .map(|_| exporter.get("/metrics").map(|response| response.status))
        .collect();
    println!("scrapes during the idle flood: {scrapes:?}");
    assert!(
        scrapes.iter().all(|status| matches!(status, Ok(200))),
        "{scrapes:?}\n{}",
        exporter.log()
    );
    drop(idle);
}

/// Clients that ask for the metrics and never read hold nothing for
/// longer than the write timeout (10 s without progress): their
/// connections, and the exposition each was being sent, are let go.
#[test]
fn clients_that_never_read_are_let_go() {
    let place = Recorded::new((40000, 40099), "");
    // 3,000 listeners: an exposition far larger than the socket buffers.
    record_listeners(&place, 50000, 3000);
    let exporter = place.start_exporter(&[
        "--collector.interval",
        "1s",
        "--collector.listeners.max",
        "5000",
    ]);
    let size = exporter
        .metrics_until(|metrics| metrics.family("portstat_listener_sockets").len() >= 3000)
        .unwrap();
    let exposition = exporter.get("/metrics").unwrap().body.len();
    assert!(
        size.family("portstat_listener_sockets").len() >= 3000,
        "{} listener series\n{}",
        size.family("portstat_listener_sockets").len(),
        exporter.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = resident_kib(exporter.pid());
    let descriptors_before = open_descriptors(exporter.pid());
    let address = exporter.address();
    let clients: Vec<socket2::Socket> = place.run(|| {
        (0..40)
            .map(|_| {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .unwrap();
                // A small window.
                socket.set_recv_buffer_size(4096).unwrap();
                socket.connect(&address.into()).unwrap();
                // Twenty requests at once, pipelined: more than the kernel's
                // buffers take, so the exporter's writes stall.
                socket
                    .send(
                        b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n"
                            .repeat(20)
                            .as_slice(),
                    )
                    .unwrap();
                socket
            })
            .collect()
    });
    std::thread::sleep(Duration::from_secs(2));
    let rss_held = resident_kib(exporter.pid());
    let descriptors_held = open_descriptors(exporter.pid());
    assert!(descriptors_held >= descriptors_before + 40);
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_descriptors(exporter.pid()) > descriptors_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let let_go = open_descriptors(exporter.pid());
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = resident_kib(exporter.pid());
    println!(
        "exposition {exposition} bytes; RSS {rss_before} KiB before, {rss_held} KiB with 40 \
         non-reading clients, {rss_after} KiB after they were let go; descriptors \
         {descriptors_before}, {descriptors_held}, {let_go}"
    );
    assert!(
        let_go <= descriptors_before,
        "the non-reading clients were not let go: {descriptors_before} -> {let_go}"
    );
    // A scrape still works.
    assert_eq!(exporter.get("/metrics").unwrap().status, 200);
    drop(clients);
}
