//! Records the source revision for `portstat_build_info`, and whether the
//! build runs as root: the tests that create network namespaces or load BPF
//! programs are left for root (`#[cfg_attr(not(portstat_root), ignore = ...)]`)
//! when an ordinary user runs `cargo test`.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn main() {
    let revision = std::env::var("PORTSTAT_REVISION")
        .ok()
        .filter(|revision| !revision.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PORTSTAT_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=PORTSTAT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");

    println!("cargo:rustc-check-cfg=cfg(portstat_root)");
    // /proc/self belongs to the effective user of whoever opens it.
    if std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == 0) {
        println!("cargo:rustc-cfg=portstat_root");
    }
    // Another user reruns this script: a build shared between root and
    // another user would otherwise keep the first one's answer.
    for variable in ["USER", "LOGNAME", "HOME", "SUDO_UID"] {
        println!("cargo:rerun-if-env-changed={variable}");
    }
}

fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let revision = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !revision.is_empty()).then_some(revision)
}
