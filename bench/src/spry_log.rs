//! The lines spry (and Firecracker) log that the benchmarks time against.

use serde::Serialize;

/// One boot-timer write, as spry logs it:
/// `Guest-boot-time = <us> us <ms> ms, <cpu us> CPU us <ms> CPU ms (monotonic <us> us)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootTimerStamp {
    /// Microseconds since spry's `main` started.
    pub since_main_us: u64,
    /// spry's CPU time so far, microseconds.
    pub cpu_us: u64,
    /// `CLOCK_MONOTONIC` at the write, microseconds (`None` for VMMs that do not log it).
    pub monotonic_us: Option<u64>,
}

fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let end = text.find(suffix)?;
    let start = text[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    text[start..end].parse().ok()
}

/// Parses a boot-timer line; `None` for any other line.
pub fn parse_boot_timer(line: &str) -> Option<BootTimerStamp> {
    let rest = &line[line.find("Guest-boot-time = ")? + "Guest-boot-time = ".len()..];
    let since_main_us = number_before(rest, " us ")?;
    let cpu_us = number_before(rest, " CPU us").unwrap_or(0);
    let monotonic_us = rest
        .find("(monotonic ")
        .and_then(|i| number_before(&rest[i..], " us)"));
    Some(BootTimerStamp {
        since_main_us,
        cpu_us,
        monotonic_us,
    })
}

/// Parses `vCPU 0 entering the guest <us> us after spry started`: the microseconds
/// from spry's `main` to the first KVM_RUN.
pub fn parse_vcpu_entry(line: &str) -> Option<u64> {
    let rest = &line[line.find("vCPU 0 entering the guest ")?..];
    number_before(rest, " us after spry started")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_timer_line_with_monotonic_stamp() {
        let line =
            "[spry   17.065ms INFO ] Guest-boot-time = 17061 us 17 ms, 4423 CPU us 4 CPU ms \
                    (monotonic 3560122058 us)";
        assert_eq!(
            parse_boot_timer(line),
            Some(BootTimerStamp {
                since_main_us: 17061,
                cpu_us: 4423,
                monotonic_us: Some(3560122058),
            })
        );
    }

    #[test]
    fn test_firecracker_boot_timer_line_has_no_monotonic_stamp() {
        let line = "2024-01-01T00:00:00 [anonymous-instance:fc_vcpu 0] Guest-boot-time =  \
                    12345 us 12 ms, 3000 CPU us 3 CPU ms";
        let stamp = parse_boot_timer(line).unwrap();
        assert_eq!(
            (stamp.since_main_us, stamp.cpu_us, stamp.monotonic_us),
            (12345, 3000, None)
        );
    }

    #[test]
    fn test_other_lines_are_not_boot_timer_lines() {
        assert_eq!(parse_boot_timer("[spry 1ms INFO ] VM stopped"), None);
    }

    #[test]
    fn test_vcpu_entry_line() {
        let line = "[spry   15.121ms INFO ] vCPU 0 entering the guest 15119 us after spry started";
        assert_eq!(parse_vcpu_entry(line), Some(15119));
    }

    #[test]
    fn test_vcpu_entry_of_another_vcpu_is_ignored() {
        assert_eq!(
            parse_vcpu_entry("vCPU 1 entering the guest 5 us after spry started"),
            None
        );
    }
}
