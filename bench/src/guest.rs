//! Which guest the VM rows boot, and how each workload is asked of it: the probe
//! guest on PVM hosts (Linux cannot boot there), the project's Linux guest elsewhere.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::KvmFlavour;
use crate::systems::Workload;

/// The guest kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GuestKind {
    /// spry's probe guest (resources/probe).
    Probe,
    /// The project's Linux guest (resources/guest).
    Linux,
}

/// The guest every VM row boots.
#[derive(Debug, Clone, Serialize)]
pub struct Guest {
    /// Probe or Linux.
    pub kind: GuestKind,
    /// ELF vmlinux.
    pub vmlinux: PathBuf,
    /// bzImage of the same kernel.
    pub bzimage: PathBuf,
    /// Root file system image (Linux only).
    pub rootfs: Option<PathBuf>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Why this guest was chosen.
    pub why: String,
}

/// Console words common to every boot.
const PROBE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off probe.quiet=1";
const LINUX_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet i8042.noaux \
                          i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Why PVM hosts boot the probe.
const PVM_WHY: &str = "this host's /dev/kvm is PVM (no VT-x/AMD-V): unmodified Linux cannot \
                       boot under KVM's instruction emulator, so every VM boots spry's probe \
                       guest, the same ELF vmlinux and command line for every VMM (it has \
                       both a Linux 64-bit and a PVH entry; ~2 500 instructions to its \
                       boot-timer write)";

impl Guest {
    /// The guest for a host with this KVM: the probe on PVM, Linux otherwise.
    pub fn for_host(flavour: KvmFlavour, build: &Path, mem_mib: u32) -> Guest {
        match flavour {
            KvmFlavour::Pvm => Guest::probe(build, mem_mib, PVM_WHY.into()),
            _ => Guest::linux(build, mem_mib),
        }
    }

    /// spry's probe guest from `build/probe`.
    pub fn probe(build: &Path, mem_mib: u32, why: String) -> Guest {
        Guest {
            kind: GuestKind::Probe,
            vmlinux: build.join("probe/vmlinux"),
            bzimage: build.join("probe/bzImage"),
            rootfs: None,
            mem_mib,
            vcpus: 1,
            why,
        }
    }

    /// The Linux guest from `build/guest`.
    pub fn linux(build: &Path, mem_mib: u32) -> Guest {
        Guest {
            kind: GuestKind::Linux,
            vmlinux: build.join("guest/vmlinux"),
            bzimage: build.join("guest/bzImage"),
            rootfs: Some(build.join("guest/rootfs.ext4")),
            mem_mib,
            vcpus: 1,
            why: "this host has hardware virtualization: every VM boots the project's Linux guest \
                  (Debian linux-source-6.1, tiny config, busybox root file system; its init \
                  writes the boot timer first thing)"
                .into(),
        }
    }

    /// One-word description for tables.
    pub fn label(&self) -> &'static str {
        match self.kind {
            GuestKind::Probe => "probe guest",
            GuestKind::Linux => "Linux guest",
        }
    }

    /// The kernel command line for `workload` (without device words the VMM adds).
    pub fn boot_args(&self, workload: Workload) -> String {
        match (self.kind, workload) {
            (GuestKind::Probe, Workload::RunToExit) => PROBE_ARGS.to_owned(),
            (GuestKind::Probe, _) => format!("{PROBE_ARGS} probe.mode=console"),
            (GuestKind::Linux, Workload::RunToExit) => format!("{LINUX_ARGS} spry.mode=exit"),
            // `read x` on the console, then the init reboots.
            (GuestKind::Linux, _) => format!("{LINUX_ARGS} spry.mode=run spry.cmd=read+x"),
        }
    }

    /// The run-to-exit command line with the guest's full output: the probe's check
    /// boot (every check printed) before a VMM is compared.
    pub fn check_args(&self) -> String {
        self.boot_args(Workload::RunToExit)
            .replace(" probe.quiet=1", "")
    }

    /// The Linux guest's command line running `cmd` with `sh -c` (init's run mode),
    /// then rebooting; `extra` words are added (e.g. `ip=`).
    pub fn linux_run_args(cmd: &str, extra: &str) -> String {
        format!(
            "{LINUX_ARGS} {extra} spry.mode=run spry.cmd={}",
            form_urlencode(cmd)
        )
    }

    /// Console input that makes an idle guest reboot.
    pub fn stop_input(&self) -> &'static [u8] {
        match self.kind {
            GuestKind::Probe => b"q",
            GuestKind::Linux => b"\n",
        }
    }

    /// The console line after which an idle guest waits for input (Linux's init
    /// prints it just before running `read x`).
    pub fn idle_line(&self) -> Option<&'static str> {
        match self.kind {
            GuestKind::Probe => Some("probe: console ready"),
            GuestKind::Linux => Some("spry-guest: init running"),
        }
    }

    /// Waits until an idle guest printed its idle line (if it has one).
    pub fn wait_idle(
        &self,
        process: &mut crate::child::Measured,
        timeout: std::time::Duration,
    ) -> Result<(), crate::child::ChildError> {
        if let Some(idle) = self.idle_line() {
            process.wait_for(idle, timeout, |l| l.text.contains(idle).then_some(()))?;
        }
        Ok(())
    }

    /// The first console line that proves the guest runs (for VMMs without a boot
    /// timer device).
    pub fn running_line(&self) -> &'static str {
        match self.kind {
            GuestKind::Probe => "probe: ",
            GuestKind::Linux => "spry-guest: init running",
        }
    }

    /// The files this guest needs.
    pub fn files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut files = vec![("kernel (vmlinux)", self.vmlinux.clone())];
        if let Some(rootfs) = &self.rootfs {
            files.push(("root file system", rootfs.clone()));
        }
        files
    }
}

/// `spry.cmd=` encoding (the guest init's urldecode): a space is `+`, bytes other
/// than letters, digits and `-_./=` are `%XX`.
pub fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b' ' => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'=' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_form_urlencode_matches_the_guest_init() {
        assert_eq!(form_urlencode("echo hello; exit 3"), "echo+hello%3B+exit+3");
        assert_eq!(form_urlencode("date +%s"), "date+%2B%25s");
        assert_eq!(form_urlencode("a=$(cat /x)"), "a=%24%28cat+/x%29");
    }

    #[test]
    fn test_pvm_host_boots_the_probe() {
        let g = Guest::for_host(KvmFlavour::Pvm, Path::new("/b"), 128);
        assert_eq!(g.kind, GuestKind::Probe);
        assert_eq!(g.vmlinux, PathBuf::from("/b/probe/vmlinux"));
        assert!(g.boot_args(Workload::Idle).ends_with("probe.mode=console"));
        assert!(g.boot_args(Workload::RunToExit).contains("probe.quiet=1"));
        assert!(!g.check_args().contains("probe.quiet"));
    }

    #[test]
    fn test_hardware_host_boots_linux_with_a_root_disk() {
        let g = Guest::for_host(KvmFlavour::Hardware, Path::new("/b"), 128);
        assert_eq!(g.kind, GuestKind::Linux);
        assert_eq!(g.rootfs, Some(PathBuf::from("/b/guest/rootfs.ext4")));
        assert!(g.boot_args(Workload::RunToExit).ends_with("spry.mode=exit"));
    }
}
