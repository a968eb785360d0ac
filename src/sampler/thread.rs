//! What the sampler thread asks of the system: a lower priority and a
//! short time slice, so that a scrape gets the CPU back at once; the heap's
//! free memory handed back after each sample; and the exposition gzipped.

use std::io::Write;

use bytes::Bytes;

/// Niceness of the sampler thread above the server's.
const SAMPLER_NICENESS: i32 = 10;
/// The time slice the sampler thread asks for, in nanoseconds: short, so that
/// the server, woken by a scrape, gets the CPU back within it rather than
/// after a default slice of a few milliseconds. Linux 6.12 and later honour
/// it; older kernels refuse the call, and niceness alone applies.
const SAMPLER_SLICE_NANOSECONDS: u64 = 100_000;

/// `struct sched_attr`, as `sched_setattr(2)` takes it.
#[repr(C)]
struct SchedulingAttributes {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Lowers the calling thread's scheduling priority, so that the scheduler
/// runs the server before the sampler when both want a CPU: a sample of a
/// busy host takes tens of milliseconds of CPU, and a scrape must not wait
/// behind it. Both calls act on this thread only.
pub(super) fn lower_thread_priority() {
    // SAFETY: gettid has no preconditions.
    let thread = unsafe { libc::gettid() };
    let attributes = SchedulingAttributes {
        size: std::mem::size_of::<SchedulingAttributes>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: SAMPLER_NICENESS,
        priority: 0,
        runtime: SAMPLER_SLICE_NANOSECONDS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: attributes outlives the call and carries its own size.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            thread,
            &attributes as *const SchedulingAttributes,
            0,
        )
    };
    if result == 0 {
        return;
    }
    // SAFETY: setpriority has no memory-safety preconditions.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, SAMPLER_NICENESS) };
    if result != 0 {
        tracing::debug!(
            err = %std::io::Error::last_os_error(),
            "cannot lower the sampler thread's priority"
        );
    }
}

/// Hands memory that is free in the allocator back to the kernel. A burst of
/// connections (a scrape storm, an attack) leaves freed buffers scattered in
/// the heap, which the allocator would otherwise keep for good; once per
/// sample, this returns the process to its usual size.
pub(super) fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn gzip(text: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text);
    Bytes::from(encoder.finish().unwrap_or_default())
}
