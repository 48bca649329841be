//! Process-relative timestamps for the boot timer and the logs.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Records "now" as the process start; the first call wins. `main` calls this first.
pub fn mark_process_start() {
    START.get_or_init(Instant::now);
}

/// Time since [`mark_process_start`] (or since the first call of this function).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    let ret = unsafe { libc::clock_gettime(id, &mut ts) };
    if ret != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// CPU time (user + system) this process has used so far, all threads.
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `CLOCK_MONOTONIC` now, comparable with timestamps taken by other processes.
pub fn monotonic_now() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}
