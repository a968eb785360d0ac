//! The landing page `/`: the figures of the last `Snapshot` at a glance, as
//! plain HTML and CSS (no script), rendered once per sample like the metrics.

use std::fmt::Write as _;

use crate::aggregate::Snapshot;
use crate::aggregate::nat::NatFigures;
use crate::aggregate::processes::{Pids, ProcessUsage};
use crate::metrics::failures;
use crate::model::{NamespaceFailures, Protocol};
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
    let _ = write!(
        page,
        "<tr id=\"fill-busiest\"><td>busiest destination</td><td class=\"num\">{}</td>\
         <td class=\"bar\">{}</td><td class=\"num\">{:.1}%</td></tr>\n</table>\n\
         <p class=\"meta\">The busiest destination's share counts its own ports and the \
         ports no destination can share (listeners, sockets bound but not connected, sockets \
         bound before <code>connect()</code>: {} now); \
         <code>connect()</code> to it fails at 100%. A destination not yet connected to can \
         get <span id=\"new-destination-headroom\">{}</span> ports{}.</p>\n",
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
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{remote}</td><td class=\"num\">{}</td><td class=\"num\">{headroom}</td></tr>",
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
        let pids = Pids::of(failures::a_pid_of(failures, kind, protocol, process));
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{count}</td></tr>",
            process_cell(process, &pids),
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
    let pids = pids.describe();
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
    let pairs = Protocol::ALL.map(|protocol| nat.pairs(protocol));
    let _ = write!(
        page,
        "<p class=\"meta\">{} TCP and {} UDP pairs in all.",
        pairs[0], pairs[1]
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

    #[test]
    fn before_any_sample() {
        let page = landing_page(None, &SampleStatus::default(), "/metrics");
        assert!(page.contains("No sample has succeeded yet."));
        assert!(page.contains("<a href=\"/metrics\">Metrics</a>"));
        assert!(page.contains("Last successful sample: never"));
    }
}
