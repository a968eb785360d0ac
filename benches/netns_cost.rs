//! What sampling every network namespace costs on a host with many of them.
//!
//! Run as root: `cargo bench --bench netns_cost` (100 namespaces), or
//! `cargo bench --bench netns_cost -- --namespaces 50 --connections 20`.
//!
//! Each namespace gets a listener and some connections to it, as a pod with
//! some traffic would. Reported: the sampler thread's CPU per sample and the
//! last sample's wall time with `--collector.netns=all` and with `self`, and
//! the daemon's peak RSS.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{sampler_cpu_seconds, vm_hwm_kib};
use support::{Netns, listening_socket};

fn main() {
    let mut namespaces = 100usize;
    let mut connections = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match arg.as_str() {
            "--namespaces" => namespaces = value(),
            "--connections" => connections = value(),
            _ => {} // cargo passes --bench
        }
    }
    let mut held = Vec::new();
    let pods: Vec<Netns> = (0..namespaces)
        .map(|_| {
            let netns = Netns::new((32768, 60999), "");
            held.push(netns.run(|| {
                let server = listening_socket("127.0.0.1:80", false, 4096);
                let streams: Vec<TcpStream> = (0..connections)
                    .map(|_| TcpStream::connect("127.0.0.1:80").unwrap())
                    .collect();
                (server, streams)
            }));
            netns
        })
        .collect();
    let home = Netns::new((32768, 60999), "");
    println!(
        "{namespaces} namespaces with a listener and {connections} connections each, plus the exporter's"
    );
    for scope in ["all", "self"] {
        let mut daemon =
            home.spawn_exporter(&["--collector.netns", scope, "--collector.interval", "500ms"]);
        std::thread::sleep(Duration::from_millis(1500));
        let before = sampler_cpu_seconds(daemon.pid());
        std::thread::sleep(Duration::from_secs(10));
        let per_sample = (sampler_cpu_seconds(daemon.pid()) - before) / 20.0;
        let metrics = daemon.metrics();
        println!(
            "--collector.netns={scope}: sampler CPU {:.1} ms per sample, last sample {:.1} ms, {} namespaces sampled, peak RSS {:.1} MiB",
            per_sample * 1e3,
            metrics.value("portstat_sample_duration_seconds") * 1e3,
            metrics.get("portstat_netns_sampled").unwrap_or(1.0),
            vm_hwm_kib(daemon.pid()) as f64 / 1024.0
        );
        daemon.terminate(Duration::from_secs(5));
    }
    drop(held);
    drop(pods);
}
