//! What loading the BPF programs costs in memory: the exporter's own loader
//! (`source/bpf/loader.rs`), which relocates against a compact copy of the
//! few kernel types the programs name, against aya's `EbpfLoader`, which
//! parses the kernel's whole BTF. The programs and maps are the same; the
//! load is what differs, and a sample's memory does not depend on it.
//!
//! Run as root: `cargo bench --bench loader_cost`, or
//! `cargo bench --bench loader_cost -- --rounds 5`.
//!
//! Each round runs each loader in a process of its own (this bench runs
//! itself again), which loads every object the exporter can load, one at a
//! time as the exporter does, drops each, and reports its peak RSS
//! (`VmHWM`) and the time the loads took; a third process loads nothing,
//! for the baseline of the bench binary itself. The medians are printed.

use std::process::Command;
use std::time::Instant;

use portstat_exporter::source::bpf::{AttachPoint, OBJECTS, verify_every_program};

/// The environment variable that makes a process of this bench one loader's.
const CHILD: &str = "PORTSTAT_LOADER_COST_CHILD";

fn main() {
    if let Ok(loader) = std::env::var(CHILD) {
        child(&loader);
        return;
    }
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--rounds N");
        }
    }
    let kernel_btf = std::fs::metadata("/sys/kernel/btf/vmlinux").map_or(0, |m| m.len());
    println!(
        "kernel {}, its BTF {:.1} MiB; {rounds} rounds, medians",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        kernel_btf as f64 / (1 << 20) as f64
    );
    println!(
        "{:<12}{:>16}{:>22}{:>14}",
        "loader", "peak RSS", "above the baseline", "load time"
    );
    let mut baseline = 0.0;
    for loader in ["none", "portstat", "aya"] {
        let mut peaks = Vec::new();
        let mut times = Vec::new();
        for _ in 0..rounds {
            let (peak, time) = run_child(loader);
            peaks.push(peak);
            times.push(time);
        }
        let peak = median(&mut peaks);
        let time = median(&mut times);
        if loader == "none" {
            baseline = peak;
        }
        println!(
            "{loader:<12}{:>12.1} MiB{:>18.1} MiB{:>11.1} ms",
            peak / 1024.0,
            (peak - baseline) / 1024.0,
            time
        );
    }
}

/// Runs this bench as `loader`'s process; its peak RSS in KiB and its
/// loads' time in milliseconds.
fn run_child(loader: &str) -> (f64, f64) {
    let output = Command::new(std::env::current_exe().expect("the bench's path"))
        .env(CHILD, loader)
        .output()
        .expect("cannot run the bench again");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {loader} loader failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut fields = text.split_whitespace().map(|field| field.parse::<f64>());
    match (fields.next(), fields.next()) {
        (Some(Ok(peak)), Some(Ok(time))) => (peak, time),
        _ => panic!("the {loader} loader wrote {text:?}"),
    }
}

/// Loads every object with `loader`, then prints its peak RSS (KiB) and the
/// loads' time (ms).
fn child(loader: &str) {
    let started = Instant::now();
    match loader {
        "none" => {}
        "portstat" => {
            for (name, result) in verify_every_program() {
                if let Err(error) = result {
                    panic!("{name}: {error}");
                }
            }
        }
        "aya" => {
            for (name, object, programs) in OBJECTS {
                load_with_aya(name, object, programs);
            }
        }
        other => panic!("no loader {other}"),
    }
    let time = started.elapsed().as_secs_f64() * 1000.0;
    println!("{} {time}", peak_rss_kib());
}

/// Loads `object` and its `programs` with aya's own loader, as aya's users
/// do: the kernel's BTF parsed whole, the maps made, each program loaded.
fn load_with_aya(name: &str, object: &[u8], programs: &[(&str, AttachPoint<'_>)]) {
    let btf = aya::Btf::from_sys_fs().expect("the kernel's BTF");
    let mut ebpf = aya::EbpfLoader::new()
        .btf(Some(&btf))
        .load(object)
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    for &(program, attach) in programs {
        let loaded = ebpf
            .program_mut(program)
            .unwrap_or_else(|| panic!("{name}: no program {program}"));
        let result = match attach {
            AttachPoint::Iterator(target) => {
                let iter: &mut aya::programs::Iter = loaded.try_into().expect("an iterator");
                iter.load(target, &btf)
            }
            AttachPoint::RawTracepoint(tracepoint) => {
                let traced: &mut aya::programs::BtfTracePoint =
                    loaded.try_into().expect("a BTF tracepoint");
                traced.load(tracepoint, &btf)
            }
        };
        result.unwrap_or_else(|error| panic!("{name} {program}: {error}"));
    }
}

/// The process's peak resident set, in KiB (`VmHWM`).
fn peak_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .expect("VmHWM in /proc/self/status")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
