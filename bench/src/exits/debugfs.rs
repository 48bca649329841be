//! KVM's per-VM statistics in debugfs: `/sys/kernel/debug/kvm/<pid>-<fd>/`, one
//! file per counter (the vCPU counters summed over the VM's vCPUs), present while
//! the VM exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where debugfs keeps KVM's statistics.
pub const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";

/// Errors finding or reading a VM's statistics.
#[derive(Debug, thiserror::Error)]
pub enum DebugfsError {
    /// The KVM directory cannot be listed.
    #[error(
        "cannot list {path} (KVM's debugfs statistics: needs root and debugfs mounted at \
         /sys/kernel/debug)"
    )]
    List {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No VM of this process.
    #[error("no VM of process {pid} in {dir} (entries: {entries})")]
    NoVm {
        /// The VMM's pid.
        pid: i32,
        /// The KVM directory.
        dir: PathBuf,
        /// What was there.
        entries: String,
    },
    /// The VM's directory had no counters (it went away while being read).
    #[error("{0}: no counters could be read (did the VM end?)")]
    Empty(PathBuf),
}

/// A counter file's value: one unsigned integer (`None` for anything else, such as
/// the histogram and rmap files that print several numbers or none).
pub fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The fds of `pid`'s VMs among the KVM directory's entry names (`<pid>-<fd>`).
pub fn vm_fds_of<'a>(names: impl IntoIterator<Item = &'a str>, pid: i32) -> Vec<u32> {
    let mut fds: Vec<u32> = names
        .into_iter()
        .filter_map(|name| {
            let (p, fd) = name.split_once('-')?;
            (p.parse::<i32>().ok()? == pid).then(|| fd.parse().ok())?
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The counters among `(file name, contents)` pairs: every file holding one number.
pub fn parse_counters<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<String, u64> {
    files
        .into_iter()
        .filter_map(|(name, text)| Some((name.to_owned(), parse_counter(text)?)))
        .collect()
}

/// One VM's counters, read from its directory.
#[derive(Debug, Clone)]
pub struct VmStats {
    /// `<pid>-<fd>`.
    pub dir: String,
    /// Counter name to value.
    pub counters: BTreeMap<String, u64>,
}

/// Reads every counter file in `dir` (subdirectories, the per-vCPU ones, are left
/// out: on Linux 6.1 they hold the vCPU's TSC offset and such, no exit counts).
pub fn read_dir_counters(dir: &Path) -> Result<BTreeMap<String, u64>, DebugfsError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DebugfsError::List {
        path: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        // A file that cannot be read (some are write-only) is not a counter.
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            files.push((entry.file_name().to_string_lossy().into_owned(), text));
        }
    }
    let counters = parse_counters(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    if counters.is_empty() {
        return Err(DebugfsError::Empty(dir.to_owned()));
    }
    Ok(counters)
}

/// The counters of the VM that process `pid` created, from `kvm_dir` (normally
/// [`KVM_DEBUGFS`]). A VMM that created more than one VM (a capability probe) is
/// measured by the one with the most exits.
pub fn vm_stats(kvm_dir: &Path, pid: i32) -> Result<VmStats, DebugfsError> {
    let names: Vec<String> = std::fs::read_dir(kvm_dir)
        .map_err(|source| DebugfsError::List {
            path: kvm_dir.to_owned(),
            source,
        })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let fds = vm_fds_of(names.iter().map(String::as_str), pid);
    let mut best: Option<VmStats> = None;
    for fd in fds {
        let dir = format!("{pid}-{fd}");
        let Ok(counters) = read_dir_counters(&kvm_dir.join(&dir)) else {
            continue;
        };
        let exits = |s: &VmStats| s.counters.get("exits").copied().unwrap_or(0);
        let candidate = VmStats { dir, counters };
        if best.as_ref().is_none_or(|b| exits(&candidate) > exits(b)) {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| {
        let mut vms: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| n.contains('-'))
            .collect();
        vms.sort_unstable();
        DebugfsError::NoVm {
            pid,
            dir: kvm_dir.to_owned(),
            entries: if vms.is_empty() {
                "no VM directories".into()
            } else {
                vms.join(", ")
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counter_is_one_number() {
        assert_eq!(parse_counter("38115\n"), Some(38115));
        assert_eq!(parse_counter("0"), Some(0));
        assert_eq!(parse_counter(""), None);
        assert_eq!(parse_counter("1 2 3 4\n"), None);
        assert_eq!(parse_counter("-1"), None);
    }

    #[test]
    fn test_vm_dirs_are_picked_by_pid() {
        let names = [
            "exits", "126-11", "1260-12", "126-14", "12-6", "126-x", "io_exits",
        ];
        assert_eq!(vm_fds_of(names, 126), [11, 14]);
        assert_eq!(vm_fds_of(names, 12), [6]);
        assert!(vm_fds_of(names, 7).is_empty());
    }

    #[test]
    fn test_counters_keep_only_numeric_files() {
        let files = [
            ("exits", "38115\n"),
            ("io_exits", "24903\n"),
            ("mmu_rmaps_stat", ""),
            ("halt_wait_hist", "0 0 0 1\n"),
        ];
        let counters = parse_counters(files);
        assert_eq!(counters.len(), 2);
        assert_eq!(counters["exits"], 38115);
        assert_eq!(counters["io_exits"], 24903);
    }

    #[test]
    fn test_vm_stats_reads_the_vm_with_the_most_exits() {
        let kvm = std::env::temp_dir().join(format!("spry-bench-kvm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&kvm);
        for (dir, exits) in [("77-9", "5"), ("77-12", "900"), ("78-9", "100000")] {
            std::fs::create_dir_all(kvm.join(dir).join("vcpu0")).unwrap();
            std::fs::write(kvm.join(dir).join("exits"), exits).unwrap();
            std::fs::write(kvm.join(dir).join("io_exits"), "3\n").unwrap();
            std::fs::write(kvm.join(dir).join("vcpu0/pid"), "1\n").unwrap();
        }
        std::fs::write(kvm.join("exits"), "123456").unwrap();
        let stats = vm_stats(&kvm, 77).unwrap();
        assert_eq!(stats.dir, "77-12");
        assert_eq!(stats.counters["exits"], 900);
        assert!(
            !stats.counters.contains_key("pid"),
            "vCPU subdirectories are left out"
        );
        let err = vm_stats(&kvm, 79).unwrap_err().to_string();
        assert!(err.contains("77-12, 77-9, 78-9"), "{err}");
        let _ = std::fs::remove_dir_all(&kvm);
    }
}
