//! `CLOCK_MONOTONIC` as microseconds, the clock spry stamps its boot-timer log lines with.

/// `CLOCK_MONOTONIC` now, in microseconds.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; clock_gettime
    // only writes to it.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if ret != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// Microseconds from `from` to `to` as milliseconds (negative if `to` is earlier).
pub fn ms_between(from_us: u64, to_us: u64) -> f64 {
    (to_us as f64 - from_us as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_monotonic_never_goes_back() {
        let a = monotonic_us();
        let b = monotonic_us();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn test_ms_between_handles_either_order() {
        assert_eq!(ms_between(1_000, 3_500), 2.5);
        assert_eq!(ms_between(3_500, 1_000), -2.5);
    }
}
