//! Basic authentication under a flood of wrong passwords: correct scrapes
//! keep being answered at once, and an unknown user takes as long to refuse
//! as a wrong password for a real one, so that timing does not name users.
//! In a binary of its own, so that other tests do not share its two cores.

mod support;

use support::Place;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Exporter, Recorded};

const FLOOD: Duration = Duration::from_secs(15);
const FLOODERS: usize = 128;

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A web configuration of one bcrypt user of cost 10, removed on drop.
struct Config(PathBuf);

impl Config {
    fn new(name: &str, password: &str) -> Config {
        Config::with_cost(name, password, 10)
    }

    /// With a hash of bcrypt cost `cost`.
    fn with_cost(name: &str, password: &str, cost: u32) -> Config {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("auth-{}-{name}.yml", std::process::id()));
        let hash = bcrypt::hash(password, cost).unwrap();
        std::fs::write(
            &path,
            format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
        )
        .unwrap();
        Config(path)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start<'a>(place: &'a Recorded, config: &Config) -> Exporter<'a> {
    let exporter = place.spawn_exporter(&["--web.config.file", config.0.to_str().unwrap()]);
    let authorization = basic("prometheus", "right");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exporter
        .request("GET", "/metrics", &[("Authorization", &authorization)])
        .is_ok_and(|response| response.status == 200)
    {
        assert!(Instant::now() < deadline, "{}", exporter.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    exporter
}

/// The time one request with `authorization` takes to be answered 401.
fn refusal(exporter: &Exporter, authorization: &str) -> Duration {
    let begun = Instant::now();
    let response = exporter
        .request("GET", "/metrics", &[("Authorization", authorization)])
        .unwrap();
    assert_eq!(response.status, 401);
    begun.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[test]
fn correct_scrapes_are_answered_at_once_during_a_wrong_password_flood() {
    let place = Recorded::new((40000, 40099), "");
    let config = Config::new("flood", "right");
    let exporter = start(&place, &config);
    let right = basic("prometheus", "right");
    let address = exporter.address();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for flooder in 0..FLOODERS {
            let stop = stop.clone();
            let refused = refused.clone();
            let place = &place;
            scope.spawn(move || {
                let mut attempt = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    attempt += 1;
                    // A new wrong password each time: nothing to remember.
                    let request = format!(
                        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                         Authorization: {}\r\n\r\n",
                        basic("prometheus", &format!("wrong-{flooder}-{attempt}"))
                    );
                    let Ok(mut stream) = place.connect(address) else {
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                    let _ = stream.write_all(request.as_bytes());
                    let mut answer = Vec::new();
                    let _ = stream.read_to_end(&mut answer);
                    if answer.starts_with(b"HTTP/1.1 401") || answer.starts_with(b"HTTP/1.1 503") {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // The flood under way before the scraper starts.
        std::thread::sleep(Duration::from_secs(2));
        // Failures are gathered, not asserted here: a panic now would leave
        // the flooders running and the scope waiting for them.
        let mut latencies = Vec::new();
        let mut failures = Vec::new();
        let started = Instant::now();
        while started.elapsed() < FLOOD {
            let begun = Instant::now();
            match exporter.request("GET", "/metrics", &[("Authorization", &right)]) {
                Ok(response)
                    if response.status == 200
                        && response
                            .text()
                            .contains("portstat_ephemeral_ports_capacity") =>
                {
                    latencies.push(begun.elapsed())
                }
                Ok(response) => failures.push(format!("answered {}", response.status)),
                Err(error) => failures.push(format!("{error} after {:?}", begun.elapsed())),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        latencies.sort();
        println!(
            "{} correct scrapes during a {FLOODERS}-thread wrong-password flood: p50 {:?}, \
             p99 {:?}, max {:?}; {} failed; {} wrong passwords refused",
            latencies.len(),
            latencies.get(latencies.len() / 2),
            latencies.get(latencies.len() * 99 / 100),
            latencies.last(),
            failures.len(),
            refused.load(Ordering::Relaxed)
        );
        assert!(failures.is_empty(), "{failures:?}");
        let p99 = latencies[latencies.len() * 99 / 100];
        assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    });
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the flood was not refused"
    );
}

#[test]
fn an_unknown_user_takes_as_long_to_refuse_as_a_wrong_password() {
    let place = Recorded::new((40000, 40099), "");
    let config = Config::new("timing", "right");
    let exporter = start(&place, &config);
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    // Alternating, with passwords never tried before.
    for attempt in 0..9 {
        wrong.push(refusal(
            &exporter,
            &basic("prometheus", &format!("w{attempt}")),
        ));
        unknown.push(refusal(&exporter, &basic("nobody", &format!("w{attempt}"))));
    }
    let (wrong, unknown) = (median(wrong), median(unknown));
    println!("median refusal: wrong password {wrong:?}, unknown user {unknown:?}");
    // A bcrypt check of cost 10 takes tens of milliseconds; a lookup that
    // finds no user, microseconds. Equal costs are within noise of each
    // other.
    assert!(
        unknown * 3 >= wrong && wrong * 3 >= unknown,
        "wrong password {wrong:?}, unknown user {unknown:?}"
    );
}

/// Whether process `pid` has exited (a zombie until reaped, or gone).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// SIGTERM ends the exporter while checks of the costliest hash it takes
/// (bcrypt cost 14, about a second each) run and wait: those running are
/// waited for a bounded time, those waiting not at all.
#[test]
fn sigterm_ends_the_exporter_while_password_checks_run() {
    let place = Recorded::new((40000, 40099), "");
    let config = Config::with_cost("costly", "right", 14);
    let mut exporter = start(&place, &config);
    let pid = exporter.pid();
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let wrong = basic("prometheus", "wrong");
    let ended = std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let _ = exporter.request("GET", "/metrics", &[("Authorization", &wrong)]);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent.load(Ordering::Relaxed) < 8 {
            assert!(Instant::now() < deadline, "no request was sent");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ended = exited(pid);
        if !ended {
            // SAFETY: as above; frees the requests still waiting.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        ended
    });
    assert!(
        ended,
        "SIGTERM did not end the exporter within 60 s while checks ran; it logged:\n{}",
        exporter.log()
    );
    let status = exporter.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status:?}");
}
