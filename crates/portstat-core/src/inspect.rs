//! `portstat_exporter inspect`: the figures of a `Snapshot`, and who holds one
//! port, as a report for a terminal (80 columns) or as JSON for scripts.

use std::fmt::Write as _;

use crate::aggregate::nat::NatFigures;
use crate::aggregate::processes::{Pids, ProcessUsage};
use crate::aggregate::{ExclusiveReason, NO_PROCESS, Snapshot, UNKNOWN_PROCESS};
use crate::metrics::failures;
use crate::model::{
    NamespaceFailures, Protocol, SocketOwners, SocketRecord, SocketState, TcpState,
};
use crate::text::push_json_string;

/// Who holds a connection that no process has accepted yet.
const WAITING_IN_ACCEPT_QUEUE: &str = "waiting in accept queue";

/// One socket on the port asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The socket's state label.
    pub state: &'static str,
    /// Local address and port.
    pub local: String,
    /// Remote address and port.
    pub remote: String,
    /// The owning process, `unknown`, or `none`.
    pub process: String,
}

/// The sockets on `port`, TCP first, each with its owner.
///
/// Without `attribution` the sources may leave inodes unread, so only
/// TIME_WAIT, which no process ever holds, is known to be held by none.
pub fn port_holders<'a>(
    sockets: impl Iterator<Item = &'a SocketRecord>,
    owners: &SocketOwners,
    port: u16,
    attribution: bool,
) -> Vec<PortHolder> {
    let mut holders: Vec<PortHolder> = sockets
        .filter(|socket| socket.local.port() == port)
        .map(|socket| PortHolder {
            protocol: socket.state.protocol().label(),
            state: socket.state.label(),
            local: socket.local.to_string(),
            remote: socket.remote.to_string(),
            process: if socket.state == SocketState::Tcp(TcpState::TimeWait) {
                NO_PROCESS.to_string()
            } else if !attribution {
                UNKNOWN_PROCESS.to_string()
            } else if socket.inode == 0 {
                // Connected with no file: not accepted yet. Any other
                // state with no file is TIME_WAIT or an orphan.
                match socket.state {
                    SocketState::Tcp(
                        TcpState::Established | TcpState::SynRecv | TcpState::CloseWait,
                    ) => WAITING_IN_ACCEPT_QUEUE.to_string(),
                    _ => NO_PROCESS.to_string(),
                }
            } else {
                owners
                    .process_name(socket.inode)
                    .unwrap_or(UNKNOWN_PROCESS)
                    .to_string()
            },
        })
        .collect();
    holders.sort_by(|a, b| {
        (a.protocol, a.state, &a.local, &a.remote).cmp(&(b.protocol, b.state, &b.local, &b.remote))
    });
    holders
}

/// A bar of `width` cells, filled in proportion to `ratio`.
fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// `text` made printable and cut to `width` characters, a cut marked `~`.
fn fit(text: &str, width: usize) -> String {
    let text = &printable(text);
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('~');
    cut
}

/// `text` with each control character written as an escape (`\x1b`,
/// `\u{85}`), so that a process name cannot drive the operator's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match u32::from(c) {
            code if code < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{code:02x}");
            }
            code if c.is_control() => {
                let _ = write!(out, "\\u{{{code:x}}}");
            }
            _ => out.push(c),
        }
    }
    out
}

/// One row per process: its name and the ports it holds.
/// The built-in `none` reads, in a list of processes, as if nothing held
/// the ports: say what does.
fn process_rows(out: &mut String, processes: &[ProcessUsage]) {
    for usage in processes {
        let name = if usage.process == NO_PROCESS {
            "none (TIME_WAIT, orphans, accept queues)".to_string()
        } else {
            named_with_pids(&usage.process, &usage.pids)
        };
        let _ = writeln!(out, "  {:<56}{:>6}", fit(&name, 56), usage.ports_used);
    }
}

/// A process name with its pids, as in `python3 (pid 812)`: two processes
/// of one name are told apart.
fn named_with_pids(name: &str, pids: &Pids) -> String {
    let pids = pids.describe();
    if pids.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({pids})")
    }
}

/// The report as text, at most 80 columns wide.
pub fn text_report(snapshot: &Snapshot, port: Option<(u16, &[PortHolder])>) -> String {
    let mut out = String::new();
    let range = snapshot.range;
    let _ = writeln!(
        out,
        "Ephemeral range {}-{}: {} ports, {} reserved, capacity {}",
        range.start,
        range.end,
        range.port_count(),
        snapshot.reserved_in_range,
        snapshot.capacity
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<8}{:>8}{:>10}{:>8}",
        "protocol", "used", "capacity", "fill"
    );
    for occupancy in &snapshot.occupancy {
        let _ = writeln!(
            out,
            "{:<8}{:>8}{:>10}{:>7.1}%  {}",
            occupancy.protocol.label(),
            occupancy.ports_used,
            snapshot.capacity,
            occupancy.used_ratio * 100.0,
            bar(occupancy.used_ratio, 30)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Busiest destination: {} + {} exclusive = {:.1}% of capacity",
        count_of(snapshot.busiest_destination_ports as usize, "port"),
        snapshot.exclusive.total(),
        snapshot.destination_max_used_ratio * 100.0
    );
    let _ = writeln!(
        out,
        "{}  (connect() to it fails at 100%)",
        bar(snapshot.destination_max_used_ratio, 30)
    );
    let _ = writeln!(
        out,
        "Exclusive: {}",
        ExclusiveReason::ALL
            .iter()
            .map(|&reason| format!("{} {}", snapshot.exclusive.get(reason), reason.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The reason for "at most" goes on a line of its own, within 80
    // columns.
    let _ = writeln!(
        out,
        "A new destination can get {} ports{}{}",
        snapshot.new_destination_headroom,
        if snapshot.headroom_exact() {
            ""
        } else {
            " at most"
        },
        if snapshot.headroom_slack > 0 {
            " (or one more: an odd-sized range)"
        } else {
            ""
        },
    );
    if !snapshot.headroom_exact() {
        let _ = writeln!(out, "  (ports bound before connect() need BPF to be seen)");
    }
    if snapshot.time_wait_reusable > 0 {
        let _ = writeln!(
            out,
            "TIME_WAIT that connect() may take over (not counted as used): {}",
            snapshot.time_wait_reusable
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<58}{:>6}{:>10}",
        format!("Top destinations ({} in all)", snapshot.destination_count),
        "used",
        "headroom"
    );
    if snapshot.destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for usage in &snapshot.destinations {
        let destination = usage.destination;
        let remote = std::net::SocketAddr::new(destination.remote_address, destination.remote_port);
        let name = format!("{} -> {remote}", destination.local_address);
        let _ = writeln!(
            out,
            "  {:<56}{:>6}{:>10}",
            fit(&name, 56),
            usage.ports_used,
            usage.headroom
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<58}{:>6}",
        "Top processes (ports held in the range)", "ports"
    );
    if snapshot.processes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    process_rows(&mut out, &snapshot.processes);
    if !snapshot.bind_before_connect_processes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Ports bound before connect() are exclusive; IP_BIND_ADDRESS_NO_PORT frees them."
        );
        let _ = writeln!(out, "{:<58}{:>6}", "Bound before connect()", "ports");
        process_rows(&mut out, &snapshot.bind_before_connect_processes);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Listeners (* inside the ephemeral range: may fail to restart)"
    );
    let _ = writeln!(
        out,
        "  {:<4} {:<34} {:<24} {:>7}",
        "", "address", "process", "sockets"
    );
    for listener in &snapshot.listeners {
        let address = listener.endpoint();
        let _ = writeln!(
            out,
            "{} {:<4} {:<34} {:<24} {:>7}",
            if listener.in_ephemeral_range {
                "*"
            } else {
                " "
            },
            listener.protocol.label(),
            fit(&address, 34),
            fit(&named_with_pids(&listener.process, &listener.pids), 24),
            listener.sockets
        );
    }
    if snapshot.listeners_omitted > 0 {
        let _ = writeln!(
            out,
            "  ... and {} more",
            count_of(snapshot.listeners_omitted as usize, "socket")
        );
    }
    if let Some(failures) = &snapshot.failures {
        failures_text(&mut out, failures);
    }
    if let Some(nat) = &snapshot.nat {
        nat_text(&mut out, nat);
    }
    if let Some((port, holders)) = port {
        let _ = writeln!(out);
        if holders.is_empty() {
            let _ = writeln!(out, "Port {port}: no socket");
            return out;
        }
        let _ = writeln!(out, "Port {port}: {}", count_of(holders.len(), "socket"));
        // The local port is the one asked for: the address alone leaves
        // the process room to be read whole.
        let _ = writeln!(
            out,
            "  {:<4} {:<12}{:<16}{:<22}process",
            "", "state", "address", "remote"
        );
        for holder in holders {
            let address = holder
                .local
                .rsplit_once(':')
                .map_or(holder.local.as_str(), |(address, _)| address);
            let _ = writeln!(
                out,
                "  {:<4} {:<12}{:<16}{:<22}{}",
                holder.protocol,
                holder.state,
                fit(address, 15),
                fit(&holder.remote, 21),
                fit(&holder.process, 23)
            );
        }
    }
    out
}

/// `count` things, in the singular for one: "1 socket", "2 sockets".
fn count_of(count: usize, thing: &str) -> String {
    if count == 1 {
        format!("1 {thing}")
    } else {
        format!("{count} {thing}s")
    }
}

/// How many destinations and processes the failures section lists.
const FAILURES_LISTED: usize = 5;

/// The failures the running exporter counted: totals, then the
/// destinations and processes with the most.
fn failures_text(out: &mut String, failures: &NamespaceFailures) {
    let _ = writeln!(out);
    let totals: Vec<String> = failures
        .totals
        .iter()
        .map(|((kind, protocol), count)| format!("{} {} {count}", protocol.label(), kind.call()))
        .collect();
    let _ = writeln!(
        out,
        "Failed calls since the exporter started: {}",
        totals.join(", ")
    );
    let _ = writeln!(
        out,
        "{:<64}{:>10}",
        "Top destinations of failed calls", "failed"
    );
    let destinations = failures::most(&failures::by_destination(failures), FAILURES_LISTED);
    if destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((protocol, destination), count) in destinations {
        let name = format!(
            "{} {} -> {}",
            protocol.label(),
            destination.local_address,
            std::net::SocketAddr::new(destination.remote_address, destination.remote_port)
        );
        let _ = writeln!(out, "  {:<62}{count:>10}", fit(&name, 62));
    }
    let _ = writeln!(
        out,
        "{:<64}{:>10}",
        "Top processes of failed calls", "failed"
    );
    let processes = failures::most(&failures::by_process(failures), FAILURES_LISTED);
    if processes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((kind, protocol, process), count) in processes {
        let pid = failures::a_pid_of(failures, kind, protocol, process).unwrap_or(0);
        let name = format!("{process} (pid {pid}) {} {}", protocol.label(), kind.call());
        let _ = writeln!(out, "  {:<62}{count:>10}", fit(&name, 62));
    }
}

/// The source NAT section: the busiest (NAT address, destination) pairs
/// against the NAT port capacity, and the conntrack table.
fn nat_text(out: &mut String, nat: &NatFigures) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Source NAT (conntrack): {} ports per (NAT address, destination)",
        nat.capacity
    );
    for protocol in Protocol::ALL {
        let ratio = nat.max_used_ratio(protocol);
        let _ = writeln!(
            out,
            "  {:<4} busiest {:>5.1}% {}  ({})",
            protocol.label(),
            ratio * 100.0,
            bar(ratio, 30),
            count_of(nat.pairs(protocol) as usize, "pair")
        );
    }
    let _ = writeln!(out, "{:<58}{:>6}{:>10}", "Top NAT pairs", "used", "left");
    if nat.destinations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for usage in &nat.destinations {
        let destination = usage.destination;
        let name = format!(
            "{} {} -> {}",
            destination.protocol.label(),
            destination.nat_address,
            destination.remote
        );
        let _ = writeln!(
            out,
            "  {:<56}{:>6}{:>10}",
            fit(&name, 56),
            usage.ports_used,
            nat.capacity.saturating_sub(usage.ports_used)
        );
    }
    if let Some(counters) = &nat.counters {
        let limit = counters
            .limit
            .map_or_else(|| "?".to_string(), |limit| limit.to_string());
        let _ = writeln!(
            out,
            "conntrack: {} of {limit} entries; so far {} inserts failed, {} packets dropped",
            counters.entries, counters.insert_failed, counters.drop
        );
    }
}

/// The report as one JSON object.
pub fn json_report(snapshot: &Snapshot, port: Option<(u16, &[PortHolder])>) -> String {
    let mut json = Json::default();
    json.open('{');
    json.key("range");
    json.open('{');
    json.field_number("start", f64::from(snapshot.range.start));
    json.field_number("end", f64::from(snapshot.range.end));
    json.close('}');
    json.field_number("reserved", f64::from(snapshot.reserved_in_range));
    json.field_number("capacity", f64::from(snapshot.capacity));
    json.key("protocols");
    json.open('[');
    for occupancy in &snapshot.occupancy {
        json.open('{');
        json.field_string("protocol", occupancy.protocol.label());
        json.field_number("used", f64::from(occupancy.ports_used));
        json.field_number("used_ratio", occupancy.used_ratio);
        json.key("sockets");
        json.open('{');
        for (state, count) in &occupancy.sockets_by_state {
            json.field_number(state.label(), *count as f64);
        }
        json.close('}');
        json.close('}');
    }
    json.close(']');
    json.field_number("exclusive", f64::from(snapshot.exclusive.total()));
    json.key("exclusive_by_reason");
    json.open('{');
    for reason in ExclusiveReason::ALL {
        json.field_number(reason.label(), f64::from(snapshot.exclusive.get(reason)));
    }
    json.close('}');
    json.field_number(
        "new_destination_headroom",
        f64::from(snapshot.new_destination_headroom),
    );
    json.field_bool("headroom_exact", snapshot.headroom_exact());
    json.field_number("headroom_slack", f64::from(snapshot.headroom_slack));
    json.field_number("time_wait_reusable", snapshot.time_wait_reusable as f64);
    json.field_number("destination_count", snapshot.destination_count as f64);
    json.field_number(
        "destination_max_used_ratio",
        snapshot.destination_max_used_ratio,
    );
    json.key("destinations");
    json.open('[');
    for usage in &snapshot.destinations {
        let destination = usage.destination;
        json.open('{');
        json.field_string("local_address", &destination.local_address.to_string());
        json.field_string("remote_address", &destination.remote_address.to_string());
        json.field_number("remote_port", f64::from(destination.remote_port));
        json.field_number("used", f64::from(usage.ports_used));
        json.field_number("headroom", f64::from(usage.headroom));
        json.close('}');
    }
    json.close(']');
    json.process_list("processes", &snapshot.processes);
    json.process_list(
        "bind_before_connect_processes",
        &snapshot.bind_before_connect_processes,
    );
    json.key("listeners");
    json.open('[');
    for listener in &snapshot.listeners {
        json.open('{');
        json.field_string("protocol", listener.protocol.label());
        json.field_string("address", &listener.address_label());
        json.field_number("port", f64::from(listener.port));
        json.field_string("process", &listener.process);
        json.pids(&listener.pids);
        json.field_number("sockets", listener.sockets as f64);
        json.field_bool("in_ephemeral_range", listener.in_ephemeral_range);
        json.close('}');
    }
    json.close(']');
    json.field_number("listeners_omitted", snapshot.listeners_omitted as f64);
    if let Some(failures) = &snapshot.failures {
        json.failures(failures);
    }
    if let Some(nat) = &snapshot.nat {
        json.nat(nat);
    }
    if let Some((port, holders)) = port {
        json.key("port");
        json.open('{');
        json.field_number("port", f64::from(port));
        json.key("sockets");
        json.open('[');
        for holder in holders {
            json.open('{');
            json.field_string("protocol", holder.protocol);
            json.field_string("state", holder.state);
            json.field_string("local", &holder.local);
            json.field_string("remote", &holder.remote);
            json.field_string("process", &holder.process);
            json.close('}');
        }
        json.close(']');
        json.close('}');
    }
    json.close('}');
    json.text.push('\n');
    json.text
}

/// A small JSON writer: objects, arrays, strings, numbers and booleans.
#[derive(Default)]
struct Json {
    text: String,
    /// Whether the next value needs a comma before it.
    needs_comma: bool,
}

impl Json {
    /// `failures: {totals, destinations, processes}`, every entry.
    fn failures(&mut self, failures: &NamespaceFailures) {
        self.key("failures");
        self.open('{');
        self.key("totals");
        self.open('[');
        for ((kind, protocol), count) in &failures.totals {
            self.open('{');
            self.field_string("call", kind.call().trim_end_matches("()"));
            self.field_string("protocol", protocol.label());
            self.field_number("failed", *count as f64);
            self.close('}');
        }
        self.close(']');
        self.key("destinations");
        self.open('[');
        for ((protocol, destination), count) in
            failures::most(&failures::by_destination(failures), usize::MAX)
        {
            self.open('{');
            self.field_string("protocol", protocol.label());
            self.field_string("local_address", &destination.local_address.to_string());
            self.field_string("remote_address", &destination.remote_address.to_string());
            self.field_number("remote_port", f64::from(destination.remote_port));
            self.field_number("failed", count as f64);
            self.close('}');
        }
        self.close(']');
        self.key("processes");
        self.open('[');
        for ((kind, protocol, process), count) in
            failures::most(&failures::by_process(failures), usize::MAX)
        {
            self.open('{');
            self.field_string("process", process);
            if let Some(pid) = failures::a_pid_of(failures, kind, protocol, process) {
                self.field_number("pid", f64::from(pid));
            }
            self.field_string("call", kind.call().trim_end_matches("()"));
            self.field_string("protocol", protocol.label());
            self.field_number("failed", count as f64);
            self.close('}');
        }
        self.close(']');
        self.close('}');
    }

    /// `nat: {capacity, max_used_ratio, destinations, conntrack}`.
    fn nat(&mut self, nat: &NatFigures) {
        self.key("nat");
        self.open('{');
        self.field_number("capacity", f64::from(nat.capacity));
        for protocol in Protocol::ALL {
            self.key(protocol.label());
            self.open('{');
            self.field_number("max_used_ratio", nat.max_used_ratio(protocol));
            self.field_number("destination_count", nat.pairs(protocol) as f64);
            self.close('}');
        }
        self.key("destinations");
        self.open('[');
        for usage in &nat.destinations {
            let destination = usage.destination;
            self.open('{');
            self.field_string("protocol", destination.protocol.label());
            self.field_string("nat_address", &destination.nat_address.to_string());
            self.field_string("remote_address", &destination.remote.ip().to_string());
            self.field_number("remote_port", f64::from(destination.remote.port()));
            self.field_number("used", f64::from(usage.ports_used));
            self.close('}');
        }
        self.close(']');
        if let Some(counters) = &nat.counters {
            self.key("conntrack");
            self.open('{');
            self.field_number("entries", counters.entries as f64);
            if let Some(limit) = counters.limit {
                self.field_number("limit", limit as f64);
            }
            self.field_number("insert_failed", counters.insert_failed as f64);
            self.field_number("drop", counters.drop as f64);
            self.close('}');
        }
        self.close('}');
    }

    /// `key: [{process, ports}, ...]`.
    fn process_list(&mut self, key: &str, usages: &[ProcessUsage]) {
        self.key(key);
        self.open('[');
        for usage in usages {
            self.open('{');
            self.field_string("process", &usage.process);
            self.pids(&usage.pids);
            self.field_number("ports", f64::from(usage.ports_used));
            self.close('}');
        }
        self.close(']');
    }

    fn separate(&mut self) {
        if self.needs_comma {
            self.text.push(',');
        }
        self.needs_comma = false;
    }

    fn open(&mut self, bracket: char) {
        self.separate();
        self.text.push(bracket);
    }

    fn close(&mut self, bracket: char) {
        self.text.push(bracket);
        self.needs_comma = true;
    }

    fn key(&mut self, key: &str) {
        self.separate();
        push_json_string(&mut self.text, key);
        self.text.push(':');
    }

    fn field_string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.text, value);
        self.needs_comma = true;
    }

    fn field_number(&mut self, key: &str, value: f64) {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.text, "{value}");
        } else {
            self.text.push_str("null");
        }
        self.needs_comma = true;
    }

    /// `pids: [the lowest], processes: how many`.
    fn pids(&mut self, pids: &Pids) {
        self.key("pids");
        self.open('[');
        for &pid in &pids.lowest {
            self.separate();
            let _ = write!(self.text, "{pid}");
            self.needs_comma = true;
        }
        self.close(']');
        self.field_number("process_count", f64::from(pids.count));
    }

    fn field_bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.text.push_str(if value { "true" } else { "false" });
        self.needs_comma = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_cuts() {
        assert_eq!(bar(0.0, 4), "[....]");
        assert_eq!(bar(0.5, 4), "[##..]");
        assert_eq!(bar(1.5, 4), "[####]");
        assert_eq!(fit("abcdef", 4), "abc~");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn json_escapes() {
        let mut json = Json::default();
        json.open('{');
        json.field_string("a\"b", "c\\d\u{1}");
        json.field_number("n", f64::NAN);
        json.field_bool("t", true);
        json.close('}');
        assert_eq!(json.text, r#"{"a\"b":"c\\d\u0001","n":null,"t":true}"#);
    }
}
