//! What this host's KVM can run: hardware virtualization, or PVM, which runs
//! unmodified guests only through KVM's instruction emulator.

use std::path::Path;

/// The kind of KVM behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    /// VT-x or AMD-V (`kvm_intel` / `kvm_amd`): any x86_64 guest runs natively.
    Hardware,
    /// PVM (`kvm_pvm`): no VT-x/AMD-V; guests run only through KVM's instruction
    /// emulator, where Linux dies early and other guests run as long as they keep to
    /// the instructions it implements.
    Pvm,
    /// Neither module is visible (KVM built in, or an unusual setup).
    Unknown,
}

impl HostKvm {
    /// Looks at which KVM vendor module is loaded; the first call looks, later ones
    /// (a vCPU explaining a failure, under a filter that allows no `stat`) reuse its
    /// answer.
    pub fn detect() -> HostKvm {
        static DETECTED: std::sync::OnceLock<HostKvm> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Self::detect_in(Path::new("/sys/module")))
    }

    fn detect_in(modules: &Path) -> HostKvm {
        let loaded = |name: &str| modules.join(name).exists();
        if loaded("kvm_intel") || loaded("kvm_amd") {
            HostKvm::Hardware
        } else if loaded("kvm_pvm") {
            HostKvm::Pvm
        } else {
            HostKvm::Unknown
        }
    }

    /// Whether Linux can boot here. Where it cannot (PVM), spry refuses Linux and
    /// tries every other guest (`KernelKind`).
    pub fn runs_linux(self) -> bool {
        self != HostKvm::Pvm
    }

    /// One line for users and logs.
    pub fn describe(self) -> &'static str {
        match self {
            HostKvm::Hardware => "hardware virtualization (kvm_intel/kvm_amd)",
            HostKvm::Pvm => {
                "PVM (kvm_pvm: no VT-x/AMD-V; guests run through KVM's instruction emulator)"
            }
            HostKvm::Unknown => "KVM of unknown kind",
        }
    }
}

/// Total RAM of this host in bytes (`MemTotal`), if it can be read.
pub fn total_memory() -> Option<u64> {
    // SAFETY: sysinfo is plain data; zeroed is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo(2) fills the struct it is given.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    info.totalram.checked_mul(u64::from(info.mem_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> vmm_sys_util::tempdir::TempDir {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        for n in names {
            std::fs::create_dir(dir.as_path().join(n)).unwrap();
        }
        dir
    }

    #[test]
    fn test_pvm_module_means_pvm() {
        let dir = modules(&["kvm", "kvm_pvm"]);
        assert_eq!(HostKvm::detect_in(dir.as_path()), HostKvm::Pvm);
        assert!(!HostKvm::Pvm.runs_linux());
    }

    #[test]
    fn test_vendor_module_means_hardware() {
        let dir = modules(&["kvm", "kvm_amd"]);
        assert_eq!(HostKvm::detect_in(dir.as_path()), HostKvm::Hardware);
    }

    #[test]
    fn test_host_memory_is_readable() {
        assert!(total_memory().unwrap() > 0);
    }
}
