//! Measurements the benchmarks share.

/// CPU time of the exporter's thread named `sampler`, from its stat file.
pub fn sampler_cpu_seconds(pid: u32) -> f64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "sampler" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime, fields 14 and 15 of stat, counted after the name.
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        return ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    }
    panic!("no sampler thread in process {pid}");
}

/// The process's peak resident set size (VmHWM), in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
