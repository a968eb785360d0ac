//! The clock TIME_WAIT ages are measured on: `CLOCK_MONOTONIC` as the
//! kernel reads it, inside a time namespace too.

/// `CLOCK_MONOTONIC` as the kernel reads it, in milliseconds: the clock of
/// `tcp_clock_ms()` that stamps TIME_WAIT entry. Inside a time namespace
/// (Linux 5.6) the exporter's own clock runs ahead or behind the kernel's
/// by the namespace's offset, which is taken back out.
pub(super) fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` outlives the call; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let own_ns = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let kernel_ns = own_ns - i128::from(*time_namespace_offset_ns());
    u64::try_from(kernel_ns / 1_000_000).unwrap_or(0)
}

/// The offset of the exporter's time namespace on `CLOCK_MONOTONIC`, in
/// nanoseconds: read once, as a process stays in its time namespace; 0
/// outside one, or where the kernel has none (before Linux 5.6).
fn time_namespace_offset_ns() -> &'static i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    OFFSET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/timens_offsets")
            .ok()
            .and_then(|text| monotonic_offset_ns(&text))
            .unwrap_or(0)
    })
}

/// The `monotonic` offset of a `/proc/<pid>/timens_offsets` text, in
/// nanoseconds: lines of a clock's name (or number, 1 for
/// `CLOCK_MONOTONIC`), seconds and nanoseconds.
pub(super) fn monotonic_offset_ns(text: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        if clock != "monotonic" && clock != "1" {
            return None;
        }
        let seconds: i64 = fields.next()?.parse().ok()?;
        let nanoseconds: i64 = fields.next()?.parse().ok()?;
        seconds.checked_mul(1_000_000_000)?.checked_add(nanoseconds)
    })
}
