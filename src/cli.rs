//! Command-line flags, named after node_exporter's.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::collector::namespaces::NetnsChoice;
use crate::collector::{self, NamespaceReader};
use crate::log::{LogFormat, LogLevel};
use crate::sampler::NamespaceScope;
use portstat_core::aggregate::Limits;

/// Prometheus exporter for ephemeral port range usage and listening sockets.
#[derive(Debug, Parser)]
#[command(name = "portstat_exporter", version, about, long_about = None)]
pub struct Cli {
    /// What to do instead of serving metrics.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for scrapes, as [HOST]:PORT; an empty host means
    /// every address. Repeat the flag to listen on several.
    #[arg(
        long = "web.listen-address",
        value_name = "[HOST]:PORT",
        default_value = ":10042",
        value_parser = parse_listen_address,
    )]
    pub listen_addresses: Vec<SocketAddr>,

    /// A web configuration file (exporter-toolkit format) enabling TLS,
    /// basic authentication and response headers; re-read when it changes
    /// or on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        value_name = "PATH",
        default_value = "/metrics",
        value_parser = parse_telemetry_path,
    )]
    pub telemetry_path: String,

    /// Most requests served at once; beyond it answer 503. 0 means no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,

    /// Most connections open at once; beyond it a new connection takes the
    /// place of the oldest that has sent no request, or is closed at once.
    /// Idle connections are closed after 10 s without a request.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Leave out the exporter's own process_* metrics.
    #[arg(
        long = "web.disable-exporter-metrics",
        value_name = "BOOL",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub disable_exporter_metrics: bool,

    /// Time between samples, such as 500ms, 5s or 1m.
    #[arg(
        long = "collector.interval",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration,
        allow_hyphen_values = true,
    )]
    pub interval: Duration,

    /// Once scrapes come at a steady period longer than the interval, take
    /// one sample just before each scrape rather than one every interval:
    /// scrapes at the period get figures no older than the interval, and a
    /// scrape off it may get older ones (portstat_sample_timestamp_seconds
    /// says how old).
    #[arg(
        long = "collector.follow-scrapes",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub follow_scrapes: bool,

    /// Destinations listed by ports used (the top ones); 0 lists none.
    #[arg(
        long = "collector.destinations.top",
        global = true,
        value_name = "K",
        default_value_t = 10
    )]
    pub destinations_top: usize,

    /// Most listener series; the sockets of the rest are summed in
    /// portstat_listener_sockets_omitted.
    #[arg(
        long = "collector.listeners.max",
        global = true,
        value_name = "N",
        default_value_t = 1000
    )]
    pub listeners_max: usize,

    #[command(flatten)]
    pub sockets: collector::sockets::SocketsFlags,

    #[command(flatten)]
    pub owners: collector::owners::OwnersFlags,

    #[command(flatten)]
    pub conntrack: collector::conntrack::ConntrackFlags,

    #[command(flatten)]
    pub failures: collector::failures::FailuresFlags,

    #[command(flatten)]
    pub namespaces: collector::namespaces::NamespacesFlags,

    /// procfs mountpoint.
    #[arg(
        long = "path.procfs",
        global = true,
        value_name = "PATH",
        default_value = "/proc"
    )]
    pub procfs: PathBuf,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level",
        global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format",
        global = true, value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,

    /// Sample once, print the exposition to standard output and exit.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub once: bool,
}

/// The command line with node_exporter's negated boolean flags,
/// `--no-NAME`, spelled out as `--NAME=false`, for every boolean flag
/// (each also takes `--NAME`, `--NAME=true`, `--NAME=false` and, as
/// before, `--NAME false`); what follows `--` is left as it is.
pub fn with_negations_spelled_out(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut booleans = Vec::new();
    for command in std::iter::once(&command).chain(command.get_subcommands()) {
        for argument in command.get_arguments() {
            // Every boolean flag is declared with the value name BOOL.
            if argument
                .get_value_names()
                .is_some_and(|names| names.len() == 1 && names[0] == "BOOL")
                && let Some(long) = argument.get_long()
            {
                booleans.push(long.to_string());
            }
        }
    }
    let mut ended = false;
    args.into_iter()
        .map(|arg| {
            ended |= arg == "--";
            match arg.to_str().and_then(|text| text.strip_prefix("--no-")) {
                Some(name) if !ended && booleans.iter().any(|flag| flag == name) => {
                    format!("--{name}=false").into()
                }
                _ => arg,
            }
        })
        .collect()
}

impl Cli {
    /// The network namespaces to sample.
    pub fn namespaces(&self) -> NamespaceScope {
        NamespaceScope::new(self.namespaces.netns, self.namespaces.max)
    }

    /// The reader of namespaces these flags ask for; with
    /// `thread_namespace`, of whichever namespace the sampling thread has
    /// entered.
    pub fn namespace_reader(&self, thread_namespace: bool) -> NamespaceReader {
        let reader = NamespaceReader::new(
            self.procfs.clone(),
            self.sockets.source,
            self.owners.processes,
            thread_namespace,
        )
        .with_bpf_object(self.sockets.bpf_object.clone())
        .with_shared_tables(self.namespaces.netns == NetnsChoice::All && self.namespaces.one_walk);
        if self.conntrack.nat {
            reader.with_nat(self.conntrack.mark)
        } else {
            reader
        }
    }

    /// The bounds on the families that follow the host's size.
    pub fn limits(&self) -> Limits {
        Limits {
            destinations_top: self.destinations_top,
            // Without attribution every socket would be "unknown".
            processes_top: if self.owners.processes {
                self.owners.top
            } else {
                0
            },
            listeners_max: self.listeners_max,
            nat_ports: self.conntrack.ports,
        }
    }
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sample once and print a report for people: the range, its fill per
    /// protocol, the busiest destinations with their headroom, the processes
    /// holding the most ports, and the listeners; with PORT, who holds that
    /// port and in which states.
    Inspect {
        /// A port to look at.
        port: Option<u16>,
        /// Print JSON, for scripts, instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `[HOST]:PORT`. An empty host is every address (IPv6 and IPv4); a
/// name is resolved once, at start.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected [HOST]:PORT, such as :10042 or 127.0.0.1:10042".to_string());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (0 to 65535)"))?;
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(address) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(address, port));
    }
    (bare, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| format!("cannot resolve host {host:?}"))
}

/// The paths the server answers itself, which the telemetry path may not
/// take over.
const BUILT_IN_PATHS: [&str; 3] = ["/", "/-/healthy", "/-/ready"];

fn parse_telemetry_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err("expected a path starting with /, such as /metrics".to_string());
    }
    // RFC 3986 path characters: unreserved, sub-delims, ':', '@', '/', and
    // '%' for an escape.
    if let Some(bad) = text
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)))
    {
        return Err(format!(
            "{:?} cannot appear in a request's path as it is, so no scrape would match",
            bad
        ));
    }
    if BUILT_IN_PATHS.contains(&text) {
        return Err(format!("{text} is the exporter's own endpoint"));
    }
    Ok(text.to_string())
}

/// The longest duration taken: whatever is added to a clock's reading
/// must stay a reading the clock can hold.
const LONGEST_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a positive duration in Prometheus's style: numbers each with a unit
/// out of `ms`, `s`, `m`, `h`, `d`, `w`, `y` (365 days), such as `500ms`,
/// `5s` or `1m30s`; at most 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORM: &str = "expected a duration such as 500ms, 5s or 1m30s";
    const ZERO: &str = "the duration must be above zero";
    const LONG: &str = "the duration must be at most 100y";
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(FORM.to_string());
    }
    if rest.starts_with('-') {
        return Err("the duration must be above zero, not negative".to_string());
    }
    // A bare number has no unit; a bare zero is zero in every unit, and is
    // refused as 0s is.
    if rest.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(if rest.bytes().all(|byte| byte == b'0') {
            ZERO.to_string()
        } else {
            format!("{FORM}: a number needs a unit")
        });
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_length = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_length == 0 {
            return Err(FORM.to_string());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| LONG.to_string())?;
        let unit = &rest[digits..digits + unit_length];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(FORM.to_string()),
        };
        total = number
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .and_then(|part| total.checked_add(part))
            .filter(|total| *total <= LONGEST_DURATION)
            .ok_or_else(|| LONG.to_string())?;
        rest = &rest[digits + unit_length..];
    }
    if total.is_zero() {
        return Err(ZERO.to_string());
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
