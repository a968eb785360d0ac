//! The landing page `/`: the figures of the last `Snapshot` at a glance, as
//! plain HTML and CSS (no script), rendered once per sample like the metrics.

use std::fmt::Write as _;

use crate::aggregate::Snapshot;
use crate::aggregate::nat::NatFigures;
use crate::aggregate::processes::{Pids, ProcessUsage};
use crate::metrics::failures;
use crate::model::{FailureKind, NamespaceFailures, Protocol, SocketState, TcpState};
use crate::rules::Destination;
use crate::status::SampleStatus;
use crate::text::rfc3339;

/// A fill from this ratio on shows as a warning, as the warning alert fires.
const WARNING_RATIO: f64 = 0.8;
/// A fill from this ratio on shows as critical, as the critical alert fires.
const CRITICAL_RATIO: f64 = 0.95;

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;color:#1f2937;max-width:64em}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
p.meta{color:#4b5563;margin:0}\
table{border-collapse:collapse;width:100%}\
th,td{padding:.3em .6em;text-align:left;border-bottom:1px solid #e5e7eb}\
th{font-weight:600;color:#374151}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
td.bar{width:45%}\
div.bar{background:#e5e7eb;height:1.1em;border-radius:3px;overflow:hidden}\
div.fill{height:100%;background:#16a34a}div.fill.warning{background:#d97706}div.fill.critical{background:#dc2626}\
tr.inside td{background:#fee2e2;font-weight:600}\
tr.low td{background:#fef3c7}tr.low.critical td{background:#fee2e2;font-weight:600}\
p.verdict{font-size:1.15em;font-weight:600;margin:.8em 0 0;padding:.4em .6em;border-radius:4px;background:#dcfce7}\
p.verdict.warning{background:#fef3c7}p.verdict.critical{background:#fee2e2;color:#991b1b}\
.failing{color:#b91c1c;font-weight:600}";

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A NAT pair's fill from this ratio on shows as a warning, as
/// `NatPortsFillingUp` fires.
const NAT_WARNING_RATIO: f64 = 0.85;
/// A NAT pair's fill from this ratio on shows as critical, as
/// `NatPortsNearlyExhausted` fires.
const NAT_CRITICAL_RATIO: f64 = 0.97;

/// A bar filled to `ratio`, coloured by the ephemeral port alerts'
/// thresholds.
fn bar(ratio: f64) -> String {
    bar_at(ratio, WARNING_RATIO, CRITICAL_RATIO)
}

/// A bar filled to `ratio`, amber from `warning`, red from `critical`.
fn bar_at(ratio: f64, warning: f64, critical: f64) -> String {
    let level = if ratio >= critical {
        " critical"
    } else if ratio >= warning {
        " warning"
    } else {
        ""
    };
    format!(
        "<div class=\"bar\"><div class=\"fill{level}\" style=\"width:{:.1}%\"></div></div>",
        (ratio.clamp(0.0, 1.0) * 100.0)
    )
}

/// The landing page for the snapshot, if there is one yet, and the status.
pub fn landing_page(
    snapshot: Option<&Snapshot>,
    status: &SampleStatus,
    metrics_path: &str,
) -> String {
    let mut page = String::with_capacity(8 * 1024);
    header(&mut page, status, metrics_path);
    let Some(snapshot) = snapshot else {
        page.push_str("<p>No sample has succeeded yet.</p>\n</body>\n</html>\n");
        return page;
    };
    verdict(&mut page, snapshot);
    fill_section(&mut page, snapshot);
    processes_section(&mut page, snapshot);
    destinations_section(&mut page, snapshot);
    if let Some(failures) = &snapshot.failures {
        failures_section(&mut page, failures);
    }
    if let Some(nat) = &snapshot.nat {
        nat_section(&mut page, nat);
    }
    listeners_section(&mut page, snapshot);
    page.push_str("</body>\n</html>\n");
    page
}

/// The page's head, its links, and when it was last sampled.
fn header(page: &mut String, status: &SampleStatus, metrics_path: &str) {
    let metrics_path = html_escape(metrics_path);
    let version = html_escape(status.build.version);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>portstat_exporter</title><style>{STYLE}</style></head>\n<body>\n\
         <h1>portstat_exporter</h1>\n<p class=\"meta\">Ephemeral port range usage and listening \
         sockets, for Prometheus. Version {version}. \
         <a href=\"{metrics_path}\">Metrics</a> · <a href=\"/-/healthy\">Health</a> · \
         <a href=\"/-/ready\">Readiness</a></p>\n"
    );
    let sampled = match status.last_success_seconds {
        Some(seconds) => rfc3339(seconds as u64, ((seconds.fract()) * 1000.0) as u32),
        None => "never".to_string(),
    };
    let _ = write!(
        page,
        "<p class=\"meta\" id=\"sampled\">Last successful sample: {sampled}"
    );
    if !status.success {
        let _ = write!(
            page,
            " <span class=\"failing\">(the latest sample failed; figures below are from the last good one)</span>"
        );
    }
    page.push_str("</p>\n");
}

/// The share of the range a destination with `headroom` ports left has
/// used, as `portstat_ephemeral_destination_max_used_ratio` counts it.
fn destination_ratio(headroom: u32, capacity: u32) -> f64 {
    if capacity == 0 {
        return 1.0;
    }
    f64::from(capacity.saturating_sub(headroom)) / f64::from(capacity)
}

/// " warning" or " critical" from the alerts' thresholds, else "".
fn level(ratio: f64) -> &'static str {
    if ratio >= CRITICAL_RATIO {
        " critical"
    } else if ratio >= WARNING_RATIO {
        " warning"
    } else {
        ""
    }
}

/// `count` followed by `one` or `many`.
fn counted(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// The `connect()` failures toward `destination` since the exporter
/// started, where they are counted.
fn failures_toward(snapshot: &Snapshot, destination: &Destination) -> u64 {
    let Some(failures) = &snapshot.failures else {
        return 0;
    };
    failures
        .by_destination_and_process
        .iter()
        .filter(|failure| {
            failure.kind == FailureKind::Connect
                && failure.local_address == destination.local_address
                && failure.remote_address == destination.remote_address
                && failure.remote_port == destination.remote_port
        })
        .map(|failure| failure.count)
        .sum()
}

/// One line that says how near `connect()` is to failing, and where: the
/// destination with the least headroom, how full its share of the range
/// is, the ports left and the failures toward it, coloured as the alerts
/// would be.
fn verdict(page: &mut String, snapshot: &Snapshot) {
    let tightest = snapshot
        .destinations
        .iter()
        .min_by_key(|usage| usage.headroom);
    let (ratio, text) = match tightest {
        Some(usage) => {
            let destination = usage.destination;
            let ratio = destination_ratio(usage.headroom, snapshot.capacity);
            let remote =
                std::net::SocketAddr::new(destination.remote_address, destination.remote_port);
            let mut text = format!(
                "{:.1}% toward {remote}: {} left",
                ratio * 100.0,
                counted(u64::from(usage.headroom), "port", "ports")
            );
            let failed = failures_toward(snapshot, &destination);
            if failed > 0 {
                let _ = write!(
                    text,
                    ", {} since the exporter started",
                    counted(failed, "failure", "failures")
                );
            }
            (ratio, text)
        }
        None => (
            0.0,
            format!(
                "No destination holds a port of the range: a new one can get {}",
                counted(
                    u64::from(snapshot.new_destination_headroom),
                    "port",
                    "ports"
                )
            ),
        ),
    };
    let _ = writeln!(
        page,
        "<p id=\"verdict\" class=\"verdict{}\">{}</p>",
        level(ratio),
        html_escape(&text)
    );
}

/// The TCP sockets in the range that hold a connection, and those in
/// TIME_WAIT with how many of them `connect()` may take over now.
fn time_wait_split(snapshot: &Snapshot) -> String {
    let tcp = snapshot
        .occupancy
        .iter()
        .find(|occupancy| occupancy.protocol == Protocol::Tcp);
    let in_state = |wanted: TcpState| {
        tcp.map_or(0, |occupancy| {
            occupancy
                .sockets_by_state
                .iter()
                .filter(|(state, _)| *state == SocketState::Tcp(wanted))
                .map(|(_, count)| count)
                .sum::<u64>()
        })
    };
    format!(
        "<p class=\"meta\" id=\"tcp-states\">TCP sockets in the range: {} established, \
         {} in TIME_WAIT, of which {} reusable by <code>connect()</code> now.</p>\n",
        in_state(TcpState::Established),
        in_state(TcpState::TimeWait),
        snapshot.time_wait_reusable
    )
}

/// How full the range is, per protocol and for the busiest destination.
fn fill_section(page: &mut String, snapshot: &Snapshot) {
    let range = snapshot.range;
    let _ = write!(
        page,
        "<h2>Ephemeral range {}–{}</h2>\n<p class=\"meta\">{} ports, {} reserved, capacity {}.</p>\n\
         <table id=\"fill\"><tr><th></th><th class=\"num\">used</th><th>fill</th><th class=\"num\"></th></tr>\n",
        range.start,
        range.end,
        range.port_count(),
        snapshot.reserved_in_range,
        snapshot.capacity
    );
    for occupancy in &snapshot.occupancy {
        let _ = writeln!(
            page,
            "<tr id=\"fill-{protocol}\"><td>{protocol}</td><td class=\"num\">{}</td>\
             <td class=\"bar\">{}</td><td class=\"num\">{:.1}%</td></tr>",
            occupancy.ports_used,
            bar(occupancy.used_ratio),
            occupancy.used_ratio * 100.0,
            protocol = occupancy.protocol.label(),
        );
    }
    let split = time_wait_split(snapshot);
    let _ = write!(
        page,
        "<tr id=\"fill-busiest\"><td>busiest destination</td><td class=\"num\">{}</td>\
         <td class=\"bar\">{}</td><td class=\"num\">{:.1}%</td></tr>\n</table>\n\
         <p class=\"meta\">The busiest destination's share counts its own ports and the \
         ports no destination can share (listeners, sockets bound but not connected, sockets \
         bound before <code>connect()</code>: {} now); \
         <code>connect()</code> to it fails at 100%. A destination not yet connected to can \
         get <span id=\"new-destination-headroom\">{}</span> ports{}.</p>\n{split}",
        snapshot.busiest_destination_ports + snapshot.exclusive.total(),
        bar(snapshot.destination_max_used_ratio),
        snapshot.destination_max_used_ratio * 100.0,
        snapshot.exclusive.total(),
        snapshot.new_destination_headroom,
        if snapshot.headroom_exact() {
            ""
        } else {
            " at most: ports bound before <code>connect()</code> are seen only by the BPF source"
        }
    );
}

/// The processes holding the most ports, and those holding ports bound
/// before `connect()`.
fn processes_section(page: &mut String, snapshot: &Snapshot) {
    page.push_str(
        "<h2>Top processes</h2>\n<p class=\"meta\">Ports of the range each process \
         holds; none: sockets no process holds (TIME_WAIT, orphans, accept queues).</p>\n\
         <table id=\"processes\"><tr><th>process</th><th class=\"num\">ports</th></tr>\n",
    );
    if snapshot.processes.is_empty() {
        page.push_str("<tr><td colspan=\"2\">none known</td></tr>\n");
    }
    process_rows(page, &snapshot.processes);
    page.push_str("</table>\n");
    if !snapshot.bind_before_connect_processes.is_empty() {
        page.push_str(
            "<h2>Ports bound before connect()</h2>\n<p class=\"meta\">No other destination \
             can use these ports. Setting <code>IP_BIND_ADDRESS_NO_PORT</code> before \
             <code>bind()</code> frees them.</p>\n<table id=\"bind-before-connect\">\
             <tr><th>process</th><th class=\"num\">ports</th></tr>\n",
        );
        process_rows(page, &snapshot.bind_before_connect_processes);
        page.push_str("</table>\n");
    }
}

/// The destinations using the most ports.
fn destinations_section(page: &mut String, snapshot: &Snapshot) {
    let _ = write!(
        page,
        "<h2>Top destinations</h2>\n<table id=\"destinations\"><tr><th>from</th><th>to</th>\
         <th class=\"num\">ports used</th><th class=\"num\">headroom</th></tr>\n"
    );
    if snapshot.destinations.is_empty() {
        page.push_str("<tr><td colspan=\"4\">none</td></tr>\n");
    }
    for usage in &snapshot.destinations {
        let destination = usage.destination;
        let remote = std::net::SocketAddr::new(destination.remote_address, destination.remote_port);
        let headroom = usage.headroom;
        let low = match level(destination_ratio(headroom, snapshot.capacity)) {
            "" => "",
            " warning" => " class=\"low\"",
            _ => " class=\"low critical\"",
        };
        let _ = writeln!(
            page,
            "<tr{low}><td>{}</td><td>{remote}</td><td class=\"num\">{}</td><td class=\"num\">{headroom}</td></tr>",
            destination.local_address, usage.ports_used
        );
    }
    let _ = write!(
        page,
        "</table>\n<p class=\"meta\">{} destinations in all.</p>\n",
        snapshot.destination_count
    );
}

/// The listeners.
fn listeners_section(page: &mut String, snapshot: &Snapshot) {
    let _ = write!(
        page,
        "<h2>Listeners</h2>\n<p class=\"meta\">Highlighted: TCP listeners inside the \
         ephemeral range, which can fail to restart once an outgoing connection takes \
         their port.</p>\n<table id=\"listeners\"><tr><th>protocol</th><th>address</th>\
         <th class=\"num\">port</th><th>process</th><th class=\"num\">sockets</th></tr>\n"
    );
    for listener in &snapshot.listeners {
        let _ = writeln!(
            page,
            "<tr{}><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            if listener.in_ephemeral_range {
                " class=\"inside\""
            } else {
                ""
            },
            listener.protocol.label(),
            html_escape(&listener.address_label()),
            listener.port,
            process_cell(&listener.process, &listener.pids),
            listener.sockets
        );
    }
    page.push_str("</table>\n");
    if snapshot.listeners_omitted > 0 {
        let _ = writeln!(
            page,
            "<p class=\"meta\">{} more listening sockets not shown.</p>",
            snapshot.listeners_omitted
        );
    }
}

/// How many destinations and processes the failures section lists.
const FAILURES_LISTED: usize = 5;

/// The calls that found no free port since the exporter started, counted
/// in the kernel: the totals, and the destinations and processes with the
/// most.
fn failures_section(page: &mut String, failures: &NamespaceFailures) {
    let totals: Vec<String> = failures
        .totals
        .iter()
        .map(|((kind, protocol), count)| format!("{} {} {count}", protocol.label(), kind.call()))
        .collect();
    let failed = failures.totals.values().any(|&count| count > 0);
    let _ = write!(
        page,
        "<h2>Failures</h2>\n<p class=\"meta\">Calls that found no free port since the \
         exporter started, counted in the kernel as they happened: \
         <span id=\"failure-totals\"{}>{}</span>.</p>\n\
         <table id=\"failure-destinations\"><tr><th>protocol</th><th>from</th><th>to</th>\
         <th class=\"num\">failed calls</th></tr>\n",
        if failed { " class=\"failing\"" } else { "" },
        totals.join(", ")
    );
    let destinations = failures::most(
        &failures::by_destination(&failures.by_destination_and_process),
        FAILURES_LISTED,
    );
    if destinations.is_empty() {
        page.push_str("<tr><td colspan=\"4\">none</td></tr>\n");
    }
    for ((protocol, destination), count) in destinations {
        let remote = std::net::SocketAddr::new(destination.remote_address, destination.remote_port);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{remote}</td><td class=\"num\">{count}</td></tr>",
            protocol.label(),
            destination.local_address
        );
    }
    page.push_str(
        "</table>\n<table id=\"failure-processes\"><tr><th>process</th><th>call</th>\
         <th>protocol</th><th class=\"num\">failed calls</th></tr>\n",
    );
    let processes = failures::most(
        &failures::by_process(&failures.by_destination_and_process),
        FAILURES_LISTED,
    );
    if processes.is_empty() {
        page.push_str("<tr><td colspan=\"4\">none</td></tr>\n");
    }
    for ((kind, protocol, process), count) in processes {
        let pids = failures::failing_pids(failures, kind, protocol, process).describe();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{count}</td></tr>",
            described_cell(process, &pids),
            kind.call(),
            protocol.label()
        );
    }
    page.push_str("</table>\n");
}

/// A row per process: its name with its pids, and the ports it holds.
fn process_rows(page: &mut String, usages: &[ProcessUsage]) {
    for usage in usages {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
            process_cell(&usage.process, &usage.pids),
            usage.ports_used
        );
    }
}

/// A process's name with its pids, as in `python3 (pid 812)`, escaped.
fn process_cell(name: &str, pids: &Pids) -> String {
    described_cell(name, &pids.describe())
}

/// A process's name with what is known of its pids (`pids`, as
/// `Pids::describe` or `FailingPids::describe` give it), escaped.
fn described_cell(name: &str, pids: &str) -> String {
    if pids.is_empty() {
        html_escape(name)
    } else {
        format!("{} ({pids})", html_escape(name))
    }
}

/// Source NAT: the busiest (NAT address, destination) pairs, against the
/// NAT port capacity, and the conntrack table.
fn nat_section(page: &mut String, nat: &NatFigures) {
    let _ = write!(
        page,
        "<h2>Source NAT</h2>\n<p class=\"meta\">Connections this host translates \
         (MASQUERADE, SNAT), from conntrack: each (NAT address, destination) has {} NAT \
         ports (<code>--collector.nat.port-range</code>); when they are all held, the \
         first packet of each new connection to it is dropped.</p>\n\
         <table id=\"nat\"><tr><th>protocol</th><th>NAT address</th><th>to</th>\
         <th class=\"num\">ports used</th><th>fill</th><th class=\"num\">left</th></tr>\n",
        nat.capacity
    );
    if nat.destinations.is_empty() {
        page.push_str("<tr><td colspan=\"6\">none</td></tr>\n");
    }
    for usage in &nat.destinations {
        let destination = usage.destination;
        let ratio = if nat.capacity == 0 {
            1.0
        } else {
            f64::from(usage.ports_used) / f64::from(nat.capacity)
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"bar\">{}</td><td class=\"num\">{}</td></tr>",
            destination.protocol.label(),
            destination.nat_address,
            destination.remote,
            usage.ports_used,
            bar_at(ratio, NAT_WARNING_RATIO, NAT_CRITICAL_RATIO),
            nat.capacity.saturating_sub(usage.ports_used)
        );
    }
    page.push_str("</table>\n");
    let _ = write!(
        page,
        "<p class=\"meta\">{} TCP and {} UDP pairs in all.",
        nat.pairs(Protocol::Tcp),
        nat.pairs(Protocol::Udp)
    );
    if let Some(counters) = &nat.counters {
        let limit = counters
            .limit
            .map_or_else(|| "?".to_string(), |limit| limit.to_string());
        let _ = write!(
            page,
            " conntrack holds {} of {limit} entries; so far {} inserts failed and {} \
             packets were dropped.",
            counters.entries, counters.insert_failed, counters.drop
        );
    }
    page.push_str("</p>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn bars_follow_the_alert_thresholds() {
        assert!(bar(0.5).contains("class=\"fill\" style=\"width:50.0%\""));
        assert!(bar(0.8).contains("fill warning"));
        assert!(bar(0.97).contains("fill critical"));
        assert!(bar(2.0).contains("width:100.0%"));
    }

    fn snapshot(connected: u16, time_wait: u16) -> Snapshot {
        crate::aggregate::fixtures::ten_port_snapshot(connected, time_wait)
    }

    fn page_of(snapshot: &Snapshot) -> String {
        landing_page(Some(snapshot), &SampleStatus::default(), "/metrics")
    }

    #[test]
    fn the_verdict_names_the_tightest_destination_coloured_as_the_alerts() {
        let page = page_of(&snapshot(7, 2));
        assert!(
            page.contains(
                "<p id=\"verdict\" class=\"verdict warning\">90.0% toward 127.0.0.2:8080: 1 port left</p>"
            ),
            "{page}"
        );
        assert!(page.contains("<tr class=\"low\"><td>127.0.0.1</td><td>127.0.0.2:8080</td>"));
        let page = page_of(&snapshot(2, 0));
        assert!(page.contains("class=\"verdict\">20.0% toward 127.0.0.2:8080: 8 ports left</p>"));
        assert!(page.contains("<tr><td>127.0.0.1</td><td>127.0.0.2:8080</td>"));
        let page = page_of(&snapshot(0, 0));
        assert!(page.contains(
            "class=\"verdict\">No destination holds a port of the range: a new one can get 10 ports</p>"
        ));
    }

    #[test]
    fn the_verdict_counts_the_failures_toward_that_destination() {
        let mut full = snapshot(10, 0);
        let failure =
            |remote: &str, count| crate::aggregate::fixtures::tcp_connect("client", remote, count);
        full.failures = Some(NamespaceFailures {
            by_destination_and_process: vec![failure("127.0.0.2", 35), failure("127.0.0.3", 4)],
            ..NamespaceFailures::default()
        });
        let page = page_of(&full);
        assert!(
            page.contains(
                "class=\"verdict critical\">100.0% toward 127.0.0.2:8080: 0 ports left, 35 failures since the exporter started</p>"
            ),
            "{page}"
        );
        assert!(page.contains("<tr class=\"low critical\">"));
    }

    #[test]
    fn established_and_time_wait_are_told_apart() {
        let page = page_of(&snapshot(3, 4));
        assert!(
            page.contains(
                "TCP sockets in the range: 3 established, 4 in TIME_WAIT, of which 0 reusable"
            ),
            "{page}"
        );
    }

    #[test]
    fn before_any_sample() {
        let page = landing_page(None, &SampleStatus::default(), "/metrics");
        assert!(page.contains("No sample has succeeded yet."));
        assert!(page.contains("<a href=\"/metrics\">Metrics</a>"));
        assert!(page.contains("Last successful sample: never"));
    }
}
