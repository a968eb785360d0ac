//! End to end with the real Prometheus: it scrapes the exporter every second
//! and evaluates `deploy/prometheus/alerts.yml` (with `for` shortened) while
//! one destination is driven to exhaustion with real connections; then every
//! query of the Grafana dashboard runs against it.

mod support;

use support::Place;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{Netns, listening_socket};

const PROMETHEUS: &str = "127.0.0.1:9090";

/// A process killed on drop, with its scratch folder removed.
struct Service {
    child: Child,
    folder: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The alert rules as shipped, with every `for` shortened to seconds.
fn rules_for_the_test() -> String {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(duration) => {
                let shortened = match duration {
                    "5m" => "2s",
                    _ => "1s",
                };
                line.replace(duration, shortened)
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn start_prometheus(netns: &Netns, scrape_interval: &str) -> Service {
    let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "prometheus-{}-{}",
        std::process::id(),
        netns.name()
    ));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("rules.yml"), rules_for_the_test()).unwrap();
    std::fs::write(
        folder.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: portstat\n    static_configs:\n      - targets: ['127.0.0.1:10042']\n"
        ),
    )
    .unwrap();
    let child = netns
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            folder.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            folder.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(folder.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is needed (Debian package prometheus); .ci/run installs it");
    let service = Service { child, folder };
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
        netns
            .http_get(PROMETHEUS.parse().unwrap(), "/-/ready")
            .is_ok_and(|response| response.status == 200)
    });
    service
}

/// Polls `done` every 100 ms until it holds; fails the test after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Percent-encodes a query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn api(netns: &Netns, path: &str) -> serde_json::Value {
    let response = netns.http_get(PROMETHEUS.parse().unwrap(), path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("{path}: {error}: {}", response.text()));
    assert_eq!(json["status"], "success", "{path}: {json}");
    json
}

/// The states of the alerts named `name` ("pending", "firing").
fn alert_states(netns: &Netns, name: &str) -> Vec<String> {
    api(netns, "/api/v1/alerts")["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| alert["labels"]["alertname"] == name)
        .map(|alert| alert["state"].as_str().unwrap().to_string())
        .collect()
}

fn firing(netns: &Netns, name: &str) -> bool {
    alert_states(netns, name)
        .iter()
        .any(|state| state == "firing")
}

/// Connects to `server` until `count` connections are open; `None` on
/// EADDRNOTAVAIL.
fn connect_up_to(
    netns: &Netns,
    server: SocketAddr,
    streams: &mut Vec<TcpStream>,
    count: usize,
) -> Option<()> {
    while streams.len() < count {
        match netns.run(move || TcpStream::connect(server)) {
            Ok(stream) => streams.push(stream),
            Err(error) if error.kind() == ErrorKind::AddrNotAvailable => return None,
            Err(error) => panic!("connect: {error}"),
        }
    }
    Some(())
}

#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn alerts_fire_before_connect_fails_and_the_dashboard_queries_answer() {
    support::require_bpf();
    // 100 ports; a listener inside the range takes one from every destination.
    let netns = Netns::new((40000, 40099), "");
    let server: SocketAddr = "127.0.0.2:80".parse().unwrap();
    let _listeners = netns.run(|| {
        (
            listening_socket("127.0.0.2:80", false, 1024),
            listening_socket("0.0.0.0:40090", false, 1024),
        )
    });
    let _exporter = netns.start_exporter(&[
        "--collector.interval",
        "500ms",
        "--collector.failures.autobind",
        "true",
    ]);
    let _prometheus = start_prometheus(&netns, "1s");
    wait_for(Duration::from_secs(30), "the first scrape", || {
        api(
            &netns,
            &format!(
                "/api/v1/query?query={}",
                encode("up{job=\"portstat\"} == 1")
            ),
        )["data"]["result"]
            .as_array()
            .is_some_and(|result| !result.is_empty())
    });

    let mut streams = Vec::new();
    // 84 connections + 1 exclusive port: 85 % of what the destination can
    // have. The warning fires, and connect() still works afterwards.
    connect_up_to(&netns, server, &mut streams, 84).expect("exhausted too early");
    wait_for(Duration::from_secs(30), "the warning alert", || {
        firing(&netns, "EphemeralPortsFillingUp")
    });
    // The rules have now been evaluated for 2 s on scrapes that saw 85 %
    // (the warning's shortened `for`), longer than the critical alert's
    // 1 s: it is neither firing nor pending.
    assert_eq!(
        alert_states(&netns, "EphemeralPortsNearlyExhausted"),
        Vec::<String>::new()
    );
    // 97 %: the critical alert fires, connect() still works.
    connect_up_to(&netns, server, &mut streams, 96).expect("exhausted too early");
    wait_for(Duration::from_secs(30), "the critical alert", || {
        firing(&netns, "EphemeralPortsNearlyExhausted")
    });
    assert_eq!(
        alert_states(&netns, "EphemeralPortConnectFailures"),
        Vec::<String>::new(),
        "no call has failed yet"
    );
    // On to the first EADDRNOTAVAIL.
    assert!(connect_up_to(&netns, server, &mut streams, 1000).is_none());
    assert_eq!(streams.len(), 99, "100 ports less the listener's");
    // The failure alert has no `for`: it fires at the first evaluation that
    // sees the counter rise, never pending.
    let mut states_seen = Vec::new();
    wait_for(Duration::from_secs(30), "the failure alert", || {
        let states = alert_states(&netns, "EphemeralPortConnectFailures");
        states_seen.extend(states.iter().cloned());
        states.iter().any(|state| state == "firing")
    });
    assert!(
        !states_seen.iter().any(|state| state == "pending"),
        "{states_seen:?}"
    );
    assert_eq!(
        query_value(
            &netns,
            "portstat_ephemeral_destination_connect_failures_total{remote_address=\"127.0.0.2\",remote_port=\"80\"}"
        ),
        Some(1.0)
    );
    // A bind() to port 0 finds none either, for the dashboard's bind query.
    let in_use = netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_err();
    assert_eq!(in_use.kind(), ErrorKind::AddrInUse, "{in_use}");
    // Two scrapes of its process series, which the failure made, so that
    // the dashboard's increase() has two points.
    wait_for(
        Duration::from_secs(30),
        "the bind failure in Prometheus",
        || {
            query_value(
                &netns,
                "count_over_time(portstat_ephemeral_process_bind_failures_total{protocol=\"tcp\"}[1m])",
            )
            .is_some_and(|samples| samples >= 2.0)
        },
    );
    assert_eq!(
        query_value(
            &netns,
            "portstat_ephemeral_bind_failures_total{protocol=\"tcp\"}"
        ),
        Some(1.0)
    );
    assert!(firing(&netns, "EphemeralPortsFillingUp"));
    assert!(firing(&netns, "EphemeralPortsNearlyExhausted"));
    wait_for(
        Duration::from_secs(30),
        "the ratio at 1 in Prometheus",
        || {
            api(
                &netns,
                &format!(
                    "/api/v1/query?query={}",
                    encode("portstat_ephemeral_destination_max_used_ratio == 1")
                ),
            )["data"]["result"]
                .as_array()
                .is_some_and(|result| result.len() == 1)
        },
    );
    // The listener inside the range has its own alert.
    wait_for(Duration::from_secs(30), "the listener alert", || {
        firing(&netns, "ListenerInEphemeralRange")
    });
    assert!(!firing(&netns, "PortstatSamplingFailing"));

    // Every query of the dashboard but the source NAT row's (tested on a
    // router below), as Grafana would send it.
    let expressions: Vec<String> = dashboard_expressions()
        .into_iter()
        .filter(|expression| !expression.contains("portstat_nat_"))
        .collect();
    assert!(expressions.len() >= 10, "{expressions:?}");
    assert_every_query_answers(&netns, &expressions);
    assert_every_docs_example_evaluates(&netns);
}

/// Every PromQL example of the docs (each line of a ```promql block but
/// comments), with where it is.
fn docs_examples() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "md"))
        .collect();
    files.push(root.join("README.md"));
    files.sort();
    let mut examples = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut inside = false;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                inside = trimmed == "```promql";
                continue;
            }
            if inside && !trimmed.is_empty() && !trimmed.starts_with('#') {
                let place = format!(
                    "{}:{}",
                    file.strip_prefix(root).unwrap().display(),
                    number + 1
                );
                examples.push((place, trimmed.to_string()));
            }
        }
    }
    examples
}

/// Runs every PromQL example of the docs against Prometheus scraping the
/// exporter: each must parse and evaluate without error (a many-to-many
/// match is an error only at evaluation, on real series), and name only
/// metric families that docs/metrics.md lists.
fn assert_every_docs_example_evaluates(netns: &Netns) {
    let examples = docs_examples();
    assert!(examples.len() >= 10, "{examples:?}");
    let families =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    for (place, expression) in &examples {
        let response = netns
            .http_get(
                PROMETHEUS.parse().unwrap(),
                &format!("/api/v1/query?query={}", encode(expression)),
            )
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(json["status"], "success", "{place}: {expression}: {json}");
        for (at, _) in expression.match_indices("portstat_") {
            let name: String = expression[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                families.contains(&format!("`{name}`")),
                "{place}: {name} is no family listed in docs/metrics.md"
            );
        }
    }
    println!("{} PromQL examples of the docs evaluated", examples.len());
}

/// Every `expr` of the Grafana dashboard.
fn dashboard_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/portstat.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    expressions
}

/// Runs each dashboard query as Grafana would send it, and fails on any
/// that returns no data.
fn assert_every_query_answers(netns: &Netns, expressions: &[String]) {
    for expression in expressions {
        let query = expression
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let json = api(netns, &format!("/api/v1/query?query={}", encode(&query)));
        let result = json["data"]["result"].as_array().expect("a vector");
        assert!(
            !result.is_empty(),
            "no result for the dashboard query {expression}"
        );
    }
}

/// The value of a query that returns one series.
fn query_value(netns: &Netns, query: &str) -> Option<f64> {
    let json = api(netns, &format!("/api/v1/query?query={}", encode(query)));
    let result = json["data"]["result"].as_array()?.first()?.clone();
    result["value"][1].as_str()?.parse().ok()
}

/// Prometheus scraping every 3 s an exporter that samples at most 1 s
/// apart: the exporter finds the period of Prometheus's own scrape loop and
/// takes one sample just before each scrape, every scrape getting figures
/// less than the interval old.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn samples_follow_prometheus_s_scrapes() {
    let netns = Netns::new((40000, 40099), "");
    let _exporter = netns.start_exporter(&["--collector.interval", "1s"]);
    let _prometheus = start_prometheus(&netns, "3s");
    // Over the last five scrapes: the period followed throughout, one
    // sample a scrape (the timer would take about fifteen), and each
    // scrape's figures, from the sample's end to the scrape, under 1 s old.
    let followed = [
        "min_over_time(portstat_sample_scrape_period_seconds[14s]) > 2.5",
        "max_over_time(portstat_sample_scrape_period_seconds[14s]) < 3.5",
        "portstat_samples_total - portstat_samples_total offset 12s <= 4",
        "max_over_time((timestamp(portstat_sample_timestamp_seconds) - portstat_sample_timestamp_seconds)[14s:1s]) < 1",
    ];
    wait_for(
        Duration::from_secs(240),
        "samples to follow the scrapes",
        || {
            followed
                .iter()
                .all(|query| query_value(&netns, query).is_some())
        },
    );
}

/// A masquerading router with 20 NAT ports (`support::NatLab`): the NAT
/// warning fires before the first connection is dropped, the critical and
/// drop alerts once it is, and every query of the dashboard's source NAT
/// row answers.
#[test]
#[cfg_attr(
    not(portstat_root),
    ignore = "needs root: it creates network namespaces or loads BPF programs"
)]
fn nat_alerts_fire_before_the_first_dropped_syn_and_the_nat_row_answers() {
    let lab = support::NatLab::new((45000, 45019));
    let _exporter = lab.router.start_exporter(&[
        "--collector.interval",
        "500ms",
        "--collector.nat.port-range",
        "45000-45019",
    ]);
    let _prometheus = start_prometheus(&lab.router, "1s");
    let mut streams = Vec::new();
    let mut connect_up_to = |count: usize| {
        while streams.len() < count {
            let n = streams.len();
            streams.push(
                lab.connect(n)
                    .unwrap_or_else(|error| panic!("connection {} failed: {error}", n + 1)),
            );
        }
    };
    // 16 of 20 ports: 80 %, under the warning.
    connect_up_to(16);
    wait_for(
        Duration::from_secs(30),
        "16 NAT ports in Prometheus",
        || query_value(&lab.router, "max(portstat_nat_destination_ports_used)") == Some(16.0),
    );
    let drops = query_value(&lab.router, "portstat_nat_drop_total").expect("drop counter");
    // 17: 85 %. The warning fires while every connection still succeeds.
    connect_up_to(17);
    wait_for(Duration::from_secs(30), "the NAT warning", || {
        firing(&lab.router, "NatPortsFillingUp")
    });
    assert!(!firing(&lab.router, "NatPortsNearlyExhausted"));
    assert!(!firing(&lab.router, "NatConnectionsDropped"));
    assert_eq!(
        query_value(&lab.router, "portstat_nat_drop_total"),
        Some(drops),
        "a packet was dropped before the warning fired"
    );
    // On to the last port, then the first dropped SYN.
    connect_up_to(20);
    let error = lab
        .connect(20)
        .expect_err("a 21st connection through 20 NAT ports");
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    wait_for(
        Duration::from_secs(30),
        "the ratio at 1 in Prometheus",
        || {
            query_value(
                &lab.router,
                "portstat_nat_destination_max_used_ratio{protocol=\"tcp\"}",
            ) == Some(1.0)
        },
    );
    wait_for(Duration::from_secs(30), "the drop alert", || {
        firing(&lab.router, "NatConnectionsDropped")
    });
    wait_for(Duration::from_secs(30), "the critical NAT alert", || {
        firing(&lab.router, "NatPortsNearlyExhausted")
    });
    assert!(query_value(&lab.router, "portstat_nat_drop_total").unwrap() > drops);

    let expressions: Vec<String> = dashboard_expressions()
        .into_iter()
        .filter(|expression| expression.contains("portstat_nat_"))
        .collect();
    assert!(expressions.len() >= 4, "{expressions:?}");
    assert_every_query_answers(&lab.router, &expressions);
}

/// Every `expr` in the dashboard's panels.
fn collect_expressions(value: &serde_json::Value, expressions: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expression)) => {
                        expressions.push(expression.clone())
                    }
                    _ => collect_expressions(value, expressions),
                }
            }
        }
        serde_json::Value::Array(values) => {
            for value in values {
                collect_expressions(value, expressions);
            }
        }
        _ => {}
    }
}
