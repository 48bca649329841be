//! `ctr task metrics` for a spry container: what its VM costs the host, read
//! from the spry process's /proc entry and reported in containerd's cgroup
//! metrics format (the guest's own accounting stays inside the guest).

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;

/// Errors reading the VM's usage.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// /proc could not be read (the VM has ended).
    #[error("cannot read /proc/{pid}/{file}: {source}")]
    Read {
        /// The VM's pid.
        pid: u32,
        /// The file.
        file: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// /proc/PID/stat did not parse.
    #[error("unexpected /proc/{pid}/stat: {text}")]
    Parse {
        /// The VM's pid.
        pid: u32,
        /// What it said.
        text: String,
    },
}

/// CPU time (user, system) in clock ticks and thread count from a
/// /proc/PID/stat line.
fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, num_threads 20.
    let field = |n: usize| fields.get(n - 3)?.parse().ok();
    Some((field(14)?, field(15)?, field(20)?))
}

/// Resident memory in bytes from /proc/PID/status.
fn parse_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The VM process's CPU time, resident memory and threads.
pub fn vm_metrics(pid: u32) -> Result<Metrics, StatsError> {
    let read =
        |file: &'static str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|source| StatsError::Read { pid, file, source })
        };
    let stat = read("stat")?;
    let (utime, stime, threads) = parse_stat(&stat).ok_or_else(|| StatsError::Parse {
        pid,
        text: stat.clone(),
    })?;
    let rss = parse_rss(&read("status")?).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let usec = |t: u64| t.saturating_mul(1_000_000) / ticks;
    Ok(Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                // Nanoseconds, as cgroup v1's cpuacct reports them.
                total: usec(utime + stime) * 1000,
                user: usec(utime) * 1000,
                kernel: usec(stime) * 1000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            rss,
            usage: MessageField::some(MemoryEntry {
                usage: rss,
                ..Default::default()
            }),
            ..Default::default()
        }),
        pids: MessageField::some(PidsStat {
            current: threads,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_parse() {
        let stat = "123 (spry vm) S 1 123 123 0 -1 4194560 500 0 0 0 25 7 0 0 20 0 4 0 100 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((25, 7, 4)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_rss("Name:\tspry\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
    }

    #[test]
    fn this_process_has_metrics() {
        let m = vm_metrics(std::process::id()).unwrap();
        assert!(m.memory.usage.usage > 0);
        assert!(m.pids.current >= 1);
    }
}
