//! portstat_exporter: parse flags, start logging, wire the pipeline, wait for
//! a signal.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;

use portstat_core::aggregate::{Finishing, Snapshot};
use portstat_core::inspect;
use portstat_core::status::Collector;
use portstat_exporter::cli::{Cli, Command};
use portstat_exporter::collector::Collectors;
use portstat_exporter::collector::read::{Reading, SocketsRead, read_namespace};
use portstat_exporter::render::Renderer;
use portstat_exporter::sampler::{
    Exposition, NamespaceScope, Sampler, connection_names_of, failures_counted_by, running_exporter,
};
use portstat_exporter::scrapes::ScrapeClock;
use portstat_exporter::serve::{self, ServeConfig};
use portstat_exporter::source::bpf::failures::{Counting, RunningExporter};
use portstat_exporter::webconfig::WebConfig;

fn main() -> ExitCode {
    // clap exits with status 2 and names the flag on a malformed value.
    let cli = Cli::parse_from(portstat_exporter::cli::with_negations_spelled_out(
        std::env::args_os(),
    ));
    portstat_exporter::log::init(cli.log_level, cli.log_format);

    if let Some(Command::Inspect { port, json }) = cli.command {
        return inspect(&cli, port, json);
    }

    // A daemon takes its signals over before anything slow (the web
    // configuration, the BPF programs, binding): SIGHUP's default would
    // otherwise end it, and SIGTERM would not wait for the shutdown.
    let daemon = if cli.once {
        None
    } else {
        match start_runtime() {
            Ok(started) => Some(started),
            Err(code) => return code,
        }
    };

    let all_namespaces = cli.namespaces() != NamespaceScope::Own;
    let reader = cli.namespace_reader(all_namespaces);
    let renderer = Renderer::new(!cli.disable_exporter_metrics, &cli.telemetry_path);
    let mut sampler = Sampler::new(reader, renderer, cli.limits(), cli.namespaces());

    let Some((runtime, signals)) = daemon else {
        sampler.resolve_plan();
        return sample_once(&mut sampler);
    };
    match run(&cli, sampler, runtime, signals) {
        Ok(code) | Err(code) => code,
    }
}

/// The signals a daemon handles, taken over from their default actions.
struct Signals {
    hangup: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

/// The server's runtime, and the signals taken over in it: a signal that
/// comes before the server runs waits for it.
fn start_runtime() -> Result<(tokio::runtime::Runtime, Signals), ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("portstat_exporter: cannot start the runtime: {error}");
            ExitCode::from(1)
        })?;
    let signals = {
        let _inside = runtime.enter();
        let take = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|error| tracing::warn!(err = %error, "cannot handle {name}"))
                .ok()
        };
        Signals {
            hangup: take(SignalKind::hangup(), "SIGHUP"),
            terminate: take(SignalKind::terminate(), "SIGTERM"),
            interrupt: take(SignalKind::interrupt(), "SIGINT"),
        }
    };
    Ok((runtime, signals))
}

/// Below this `--collector.interval`, samples follow each other so closely
/// that the sampler is seldom idle, and the exporter says so.
const BUSY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a daemon that stops waits for the work of its blocking threads.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the daemon: reads the web configuration, binds, starts the
/// sampler, and serves until a signal or the sampler stops.
fn run(
    cli: &Cli,
    mut sampler: Sampler,
    runtime: tokio::runtime::Runtime,
    signals: Signals,
) -> Result<ExitCode, ExitCode> {
    let web = web_config(cli)?;
    // Before the sampler starts: the raised limit is the process's.
    let max_connections = connection_limit(cli);
    // Bind before anything else runs, so that an address in use fails at once.
    let listeners = bind(cli)?;

    let loads_bpf = !matches!(
        cli.sockets.source,
        portstat_exporter::source::SourceChoice::Netlink
            | portstat_exporter::source::SourceChoice::Procfs
    );
    if cli.failures.count || loads_bpf {
        portstat_exporter::source::bpf::prepare_kernel_types();
    }
    if cli.failures.count {
        sampler.count_failures(Counting {
            autobind: cli.failures.autobind,
            connects: cli.failures.connects,
        });
    }
    let (sender, receiver) = watch::channel(Arc::new(Exposition::default()));
    let interval = cli.interval;
    if interval < BUSY_INTERVAL {
        tracing::warn!(
            interval = ?interval,
            "samples this close keep a CPU busy reading every socket; \
             --collector.interval of 1s or more is usual"
        );
    }
    let scrapes = Arc::new(ScrapeClock::new(interval, cli.follow_scrapes));
    let clock = scrapes.clone();
    std::thread::Builder::new()
        .name("sampler".to_string())
        .spawn(move || sampler.run(interval, &clock, sender))
        .map_err(|error| {
            eprintln!("portstat_exporter: cannot start the sampler thread: {error}");
            ExitCode::from(1)
        })?;

    let config = ServeConfig {
        telemetry_path: cli.telemetry_path.clone(),
        max_requests: cli.max_requests,
        max_connections,
        web: web.clone(),
        scrapes: Some(scrapes),
    };
    let code = runtime.block_on(serve_until_stopped(
        cli, listeners, config, receiver, web, signals,
    ));
    // Work on blocking threads (a password check, a reload's reads of a
    // file that never answers) is not waited for past this.
    runtime.shutdown_timeout(SHUTDOWN_WAIT);
    Ok(code)
}

/// The web configuration (`--web.config.file`), its warnings logged.
fn web_config(cli: &Cli) -> Result<Arc<std::sync::RwLock<Arc<WebConfig>>>, ExitCode> {
    let web = match &cli.web_config_file {
        Some(path) => match WebConfig::load(path) {
            Ok(web) => {
                for warning in &web.warnings {
                    tracing::warn!(file = %path.display(), "{warning}");
                }
                web
            }
            Err(error) => {
                eprintln!("portstat_exporter: --web.config.file {error}");
                return Err(ExitCode::from(1));
            }
        },
        None => WebConfig::plain(),
    };
    Ok(Arc::new(std::sync::RwLock::new(Arc::new(web))))
}

/// The connections served at once: `--web.max-connections`, lowered to
/// what the descriptor limit allows.
fn connection_limit(cli: &Cli) -> usize {
    let (max_connections, descriptors) = serve::connection_budget(cli.max_connections as usize);
    if max_connections < cli.max_connections as usize {
        tracing::warn!(
            requested = cli.max_connections,
            limit = max_connections,
            descriptors,
            reserve = serve::DESCRIPTOR_RESERVE,
            "--web.max-connections exceeds what the descriptor limit allows beside the sampler's reserve; lowered"
        );
    } else {
        tracing::info!(limit = max_connections, descriptors, "connection limit");
    }
    max_connections
}

/// A listener on each `--web.listen-address`.
fn bind(cli: &Cli) -> Result<Vec<std::net::TcpListener>, ExitCode> {
    let mut listeners = Vec::with_capacity(cli.listen_addresses.len());
    for address in &cli.listen_addresses {
        match serve::bind(*address) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                tracing::error!(address = %address, err = %error, "cannot listen");
                eprintln!("portstat_exporter: cannot listen on {address}: {error}");
                return Err(ExitCode::from(1));
            }
        }
    }
    Ok(listeners)
}

/// Serves on `listeners` until a signal, or until the sampler stops (exit
/// status 1, for the service manager to restart the exporter).
async fn serve_until_stopped(
    cli: &Cli,
    listeners: Vec<std::net::TcpListener>,
    config: ServeConfig,
    receiver: watch::Receiver<Arc<Exposition>>,
    web: Arc<std::sync::RwLock<Arc<WebConfig>>>,
    signals: Signals,
) -> ExitCode {
    let mut tokio_listeners = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let address = listener.local_addr().ok();
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => tokio_listeners.push(listener),
            Err(error) => {
                eprintln!("portstat_exporter: cannot listen on {address:?}: {error}");
                return ExitCode::from(1);
            }
        }
    }
    let Signals {
        hangup,
        terminate,
        interrupt,
    } = signals;
    match cli.web_config_file.clone() {
        Some(path) => tokio::spawn(serve::reload_web_config(path, web, hangup)),
        None => tokio::spawn(serve::log_hangups(hangup)),
    };
    // The addresses bound, with the port the kernel picked for `:0`.
    for listener in &tokio_listeners {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(address = %address, path = %cli.telemetry_path, "listening");
        }
    }
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let sampler = serve::sampler_stopped(receiver.clone());
    let shutdown = async {
        tokio::select! {
            () = shutdown_signal(terminate, interrupt) => {}
            () = sampler => {
                stopped.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    "the sampler stopped; exiting with status 1 so that the service \
                     manager restarts the exporter"
                );
            }
        }
    };
    serve::serve(tokio_listeners, config, receiver, shutdown).await;
    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(1);
    }
    tracing::info!("shut down");
    ExitCode::SUCCESS
}

/// Samples once and prints the exposition; exit status 1 if the sample failed.
fn sample_once(sampler: &mut Sampler) -> ExitCode {
    let exposition = sampler.sample();
    if !sampler.succeeded() {
        return ExitCode::from(1);
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(&exposition.text)
        .and_then(|()| stdout.flush())
    {
        eprintln!("portstat_exporter: cannot write the exposition: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Samples once and prints the report for people; exit status 1 if the
/// sample failed.
fn inspect(cli: &Cli, port: Option<u16>, json: bool) -> ExitCode {
    let mut reader = cli.namespace_reader(false);
    reader.load_owner_program();
    let limits = cli.limits();
    // Its reads' failures are logged as a daemon's are, once.
    let mut collectors =
        Collectors::new(&[Collector::Sockets, Collector::Conntrack, Collector::Owners]);
    collectors.start_sample();
    let running = running_exporter();
    let mut names = match &running {
        Ok(Some(exporter)) => connection_names_of(exporter),
        _ => None,
    };
    let reading = Reading {
        limits: &limits,
        keep_port: port,
        names: names.as_deref_mut(),
        sockets: SocketsRead::WithOwners,
    };
    let read = read_namespace(&mut reader, reading, &mut collectors);
    collectors.finish_sample();
    let mut read = match read {
        Ok(read) => read,
        Err(error) => {
            eprintln!("portstat_exporter: {error}");
            return ExitCode::from(1);
        }
    };
    let mut owners = read.owners.take().unwrap_or_default();
    // With BPF, the owners of the kept sockets are named by the aggregator.
    let named = read.aggregator.named_owners();
    owners.pid_by_inode.extend(&named.pid_by_inode);
    owners.comm_by_pid.extend(
        named
            .comm_by_pid
            .iter()
            .map(|(pid, comm)| (*pid, comm.clone())),
    );
    // A process that closed a socket runs still where its pid has its name.
    let procfs = reader.procfs_root().to_path_buf();
    let still_runs = |pid: u32, comm: &[u8; 16]| {
        let end = comm.iter().position(|&byte| byte == 0).unwrap_or(16);
        std::fs::read(procfs.join(pid.to_string()).join("comm"))
            .is_ok_and(|now| now.strip_suffix(b"\n").unwrap_or(&now) == &comm[..end])
    };
    let holders = port.map(|port| {
        inspect::port_holders(
            read.aggregator.kept_sockets(),
            &owners,
            read.aggregator.kept_connection_names(),
            port,
            cli.owners.processes,
            &still_runs,
        )
    });
    // Sockets no process holds are named after who closed them, which may
    // have exited since.
    let runs_as = |pid: u32, process: &str| {
        std::fs::read(procfs.join(pid.to_string()).join("comm")).is_ok_and(|now| {
            let now = now.strip_suffix(b"\n").unwrap_or(&now);
            portstat_core::model::process_label(portstat_core::model::comm_text(now)) == process
        })
    };
    let mut failures = |snapshot: &Snapshot| match running.as_ref().map_err(ToString::to_string) {
        Ok(Some(exporter)) => match failures_counted_by(exporter, snapshot) {
            Ok(failures) => {
                eprintln!("portstat_exporter: {}", counted_by(exporter));
                Some(failures)
            }
            Err(error) => {
                cannot_read_failures(&error);
                None
            }
        },
        Ok(None) => {
            eprintln!(
                "portstat_exporter: no exporter on this host counts failed connect() calls \
                 in this network namespace"
            );
            None
        }
        Err(error) => {
            cannot_read_failures(&error);
            None
        }
    };
    let snapshot = read.finish_with(Finishing {
        owners: &owners,
        namespace: None,
        runs_as: Some(&runs_as),
        failures: Some(&mut failures),
    });
    let port = port.zip(holders.as_deref());
    let report = if json {
        inspect::json_report(&snapshot, port)
    } else {
        inspect::text_report(&snapshot, port)
    };
    print!("{report}");
    ExitCode::SUCCESS
}

/// Says that the failures a running exporter counted could not be read.
fn cannot_read_failures(error: &dyn std::fmt::Display) {
    eprintln!(
        "portstat_exporter: cannot read the failures the running exporter counted \
         (needs CAP_SYS_ADMIN): {error}"
    );
}

/// Which exporter's counts `inspect` lists.
fn counted_by(exporter: &RunningExporter) -> String {
    let own = portstat_exporter::source::namespaces::own_namespace_inode();
    let place = match exporter.netns {
        Some(netns) if Some(netns) == own => "in this network namespace".to_string(),
        Some(netns) => format!("in network namespace {netns}, none running in this one"),
        None => "its network namespace unknown".to_string(),
    };
    match exporter.pid {
        Some(pid) => format!("failures as counted by the exporter of pid {pid}, {place}"),
        None => "failures as counted by the newest exporter on this host".to_string(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
) {
    let (Some(mut terminate), Some(mut interrupt)) = (terminate, interrupt) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = interrupt.recv() => tracing::info!("received SIGINT, shutting down"),
    }
}
