//! What `/proc` says about a running process: resident memory per mapping (smaps),
//! CPU time (stat), its children, and the host's available memory (meminfo).

use std::path::PathBuf;

use serde::Serialize;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A /proc file could not be read (the process may have exited).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A /proc file did not have the expected layout.
    #[error("{path}: unexpected format: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// Resident and proportional set sizes of one or more processes, split into the
/// guest-RAM mapping and everything else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// Rss of every mapping, KiB.
    pub rss_kib: u64,
    /// Pss of every mapping, KiB.
    pub pss_kib: u64,
    /// Rss of the guest-RAM mapping, KiB (0 for containers).
    pub guest_rss_kib: u64,
    /// Pss of the guest-RAM mapping, KiB.
    pub guest_pss_kib: u64,
    /// Whether a mapping of the guest-RAM size was found.
    pub guest_mapping_found: bool,
}

impl MemoryUse {
    /// Rss without the guest-RAM mapping: the VMM's own share.
    pub fn own_rss_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }

    /// Pss without the guest-RAM mapping.
    pub fn own_pss_kib(&self) -> u64 {
        self.pss_kib.saturating_sub(self.guest_pss_kib)
    }

    /// Both added up (for several processes of one sandbox).
    pub fn add(&mut self, other: MemoryUse) {
        self.rss_kib += other.rss_kib;
        self.pss_kib += other.pss_kib;
        self.guest_rss_kib += other.guest_rss_kib;
        self.guest_pss_kib += other.guest_pss_kib;
        self.guest_mapping_found |= other.guest_mapping_found;
    }
}

/// The value of smaps/meminfo field `name` in `line` (`Name:   123 kB`), KiB.
pub(crate) fn kib_field(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    let mut words = rest.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// Sums `/proc/<pid>/smaps` text. The first mapping whose `Size` is exactly
/// `guest_kib` (the guest's memory size) counts as guest RAM; `None` means none does.
pub fn parse_smaps(text: &str, guest_kib: Option<u64>) -> MemoryUse {
    let mut total = MemoryUse::default();
    let mut in_guest = false;
    for line in text.lines() {
        if let Some(size) = kib_field(line, "Size") {
            in_guest = !total.guest_mapping_found && Some(size) == guest_kib;
            total.guest_mapping_found |= in_guest;
        } else if let Some(rss) = kib_field(line, "Rss") {
            total.rss_kib += rss;
            if in_guest {
                total.guest_rss_kib += rss;
            }
        } else if let Some(pss) = kib_field(line, "Pss") {
            total.pss_kib += pss;
            if in_guest {
                total.guest_pss_kib += pss;
            }
        }
    }
    total
}

/// Memory use of process `pid`, with guest RAM identified by its size.
pub fn memory_use(pid: i32, guest_kib: Option<u64>) -> Result<MemoryUse, ProcError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/smaps")))?;
    Ok(parse_smaps(&text, guest_kib))
}

/// On-CPU time of every thread of `pid` (name, ns) from schedstat; empty once it
/// has exited.
pub fn thread_cpu_ns(pid: i32) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((name.trim().to_owned(), parse_schedstat_ns(&stat)?))
        })
        .collect()
}

/// On-CPU time (ns) of vhost workers serving `pid` that are *not* threads of it:
/// before Linux 6.4 each vhost device had a kernel thread `vhost-<pid>`, outside the
/// VMM's thread group, so neither wait4 nor [`thread_cpu_ns`] sees it. Since 6.4
/// the worker is a thread of the VMM (counted there already) and this is 0.
pub fn vhost_kthread_ns(pid: i32) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let name = format!("vhost-{pid}");
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&other| other != pid)
        .filter_map(|other| {
            let comm = std::fs::read_to_string(format!("/proc/{other}/comm")).ok()?;
            // "vhost-" and at most 7 digits (pid_max) fit comm's 15 bytes
            (comm.trim() == name).then_some(())?;
            let stat = std::fs::read_to_string(format!("/proc/{other}/schedstat")).ok()?;
            parse_schedstat_ns(&stat)
        })
        .sum()
}

/// The on-CPU nanoseconds (first field) of a schedstat line.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `pid` and all its descendants, from `/proc/<pid>/task/<tid>/children`.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() {
        let parent = all[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    all
}

/// Field `name` ("MemTotal", "MemAvailable") of `/proc/meminfo` text, in KiB.
pub fn meminfo_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| kib_field(l, name))
}

/// `MemAvailable` from `/proc/meminfo` text, in KiB.
pub fn parse_mem_available(text: &str) -> Option<u64> {
    meminfo_kib(text, "MemAvailable")
}

/// The host's `MemAvailable` now, in KiB.
pub fn mem_available_kib() -> Result<u64, ProcError> {
    let path = PathBuf::from("/proc/meminfo");
    let text = read(path.clone())?;
    parse_mem_available(&text).ok_or(ProcError::Format {
        path,
        what: "MemAvailable",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 123 /usr/bin/spry
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                2048 kB
Pss:                2048 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
";

    #[test]
    fn test_smaps_splits_the_guest_ram_mapping_by_size() {
        let m = parse_smaps(SMAPS, Some(131072));
        assert!(m.guest_mapping_found);
        assert_eq!((m.rss_kib, m.pss_kib), (2860, 2460));
        assert_eq!(
            (m.guest_rss_kib, m.own_rss_kib(), m.own_pss_kib()),
            (2048, 812, 412)
        );
    }

    #[test]
    fn test_smaps_without_guest_size_counts_everything_as_own() {
        let m = parse_smaps(SMAPS, None);
        assert!(!m.guest_mapping_found);
        assert_eq!(m.own_rss_kib(), 2860);
    }

    #[test]
    fn test_smaps_ignores_lookalike_fields() {
        let m = parse_smaps("SwapPss:  10 kB\nRss: 5 kB\nPss_Dirty: 3 kB\n", None);
        assert_eq!((m.rss_kib, m.pss_kib), (5, 0));
    }

    #[test]
    fn test_schedstat_first_field_is_ns_on_cpu() {
        assert_eq!(
            parse_schedstat_ns(
                "915608 0 1
"
            ),
            Some(915_608)
        );
    }

    #[test]
    fn test_no_vhost_worker_for_a_pid_that_does_not_exist() {
        assert_eq!(vhost_kthread_ns(i32::MAX), 0);
    }

    #[test]
    fn test_threads_of_self_have_cpu_time() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!thread_cpu_ns(me).is_empty());
    }

    #[test]
    fn test_mem_available() {
        let text = "MemTotal: 100 kB\nMemFree: 50 kB\nMemAvailable: 75 kB\n";
        assert_eq!(parse_mem_available(text), Some(75));
    }

    #[test]
    fn test_mem_total_is_a_meminfo_field_in_kib() {
        let text = "MemTotal:       24557640 kB\nMemFree: 50 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_557_640));
        assert_eq!(meminfo_kib(text, "MemTota"), None);
    }

    #[test]
    fn test_process_tree_of_self_holds_self() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(process_tree(me)[0], me);
    }
}
