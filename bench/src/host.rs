//! The host the numbers come from: CPU, kernel, KVM flavour, memory.

use serde::Serialize;

/// What `/dev/kvm` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KvmFlavour {
    /// VT-x or AMD-V (kvm_intel / kvm_amd).
    Hardware,
    /// PVM (kvm_pvm): guests run through KVM's instruction emulator.
    Pvm,
    /// No vendor module visible.
    Unknown,
    /// No /dev/kvm.
    Missing,
}

impl KvmFlavour {
    /// Looks at /dev/kvm and the loaded KVM modules.
    pub fn detect() -> KvmFlavour {
        let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if !std::path::Path::new("/dev/kvm").exists() {
            KvmFlavour::Missing
        } else if module("kvm_intel") || module("kvm_amd") {
            KvmFlavour::Hardware
        } else if module("kvm_pvm") {
            KvmFlavour::Pvm
        } else {
            KvmFlavour::Unknown
        }
    }

    /// For the report.
    pub fn describe(self) -> &'static str {
        match self {
            KvmFlavour::Hardware => "hardware virtualization (kvm_intel/kvm_amd)",
            KvmFlavour::Pvm => {
                "PVM (kvm_pvm: no VT-x/AMD-V; guests run through KVM's instruction emulator)"
            }
            KvmFlavour::Unknown => "KVM of unknown kind (no vendor module visible)",
            KvmFlavour::Missing => "no /dev/kvm",
        }
    }
}

/// The host, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// `hostname`.
    pub hostname: String,
    /// CPU model name.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// KVM flavour.
    pub kvm: KvmFlavour,
    /// MemTotal, MiB.
    pub mem_total_mib: u64,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
}

/// The `model name` line of /proc/cpuinfo text.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(epoch_secs: u64) -> String {
    let days = epoch_secs / 86_400;
    let secs = epoch_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl HostInfo {
    /// Reads everything from /proc and /sys.
    pub fn detect() -> HostInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = crate::procfs::meminfo_kib(&meminfo, "MemTotal").unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        HostInfo {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            cpu: parse_cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            kvm: KvmFlavour::detect(),
            mem_total_mib: mem_total_kib / 1024,
            date: rfc3339_utc(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpu_model_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) X\n";
        assert_eq!(parse_cpu_model(text).as_deref(), Some("Intel(R) Xeon(R) X"));
    }

    #[test]
    fn test_rfc3339_of_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // 2026-12-01 09:19:15 UTC.
        assert_eq!(rfc3339_utc(1_796_116_755), "2026-12-01T09:19:15Z");
        // Leap day.
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
