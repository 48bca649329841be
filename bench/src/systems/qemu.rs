//! QEMU's microvm machine (Debian's qemu-system-x86) with KVM, booting the same guest
//! through PVH: QEMU loads an ELF vmlinux only by its PVH entry note, which Linux has
//! and the probe has too (resources/probe/src/pvh_entry.S).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child::{ChildError, Measured};
use crate::guest::{Guest, GuestKind};
use crate::procfs::MemoryUse;
use crate::systems::elf_note::{has_note, PVH_OWNER, PVH_TYPE};
use crate::systems::probe_check::{probe_verdict, ProbeEntry};
use crate::systems::runc::find_program;
use crate::systems::{
    check_exit, guest_image, version_line, vm_memory, ImageFile, Instance, Kind, Sandbox,
    SystemError, Workload,
};

/// Debian's microvm-only build of QEMU (same version and package as
/// qemu-system-x86_64, KVM only, a fraction of the libraries: it starts faster).
const MICROVM_BUILD: &str = "qemu-system-x86_64-microvm";
const FULL_BUILD: &str = "qemu-system-x86_64";

/// The QEMU binary for `accel`: the microvm build for KVM if it is installed, else
/// (and for TCG, which the microvm build lacks) qemu-system-x86_64.
fn find_qemu(accel: &str) -> Option<PathBuf> {
    let microvm = (accel == "kvm")
        .then(|| find_program(MICROVM_BUILD))
        .flatten();
    microvm.or_else(|| find_program(FULL_BUILD))
}

/// The QEMU binary to run: `explicit` (`--qemu PATH`) if given, else the one
/// [`find_qemu`] finds for `accel`; `Err` says why there is none.
pub fn qemu_binary(explicit: Option<&Path>, accel: &str) -> Result<PathBuf, String> {
    explicit
        .map(Path::to_owned)
        .or_else(|| find_qemu(accel))
        .ok_or_else(|| {
            format!(
                "neither {MICROVM_BUILD} nor {FULL_BUILD} is installed (Debian package \
                 qemu-system-x86)"
            )
        })
}

/// qemu-system-x86_64 -M microvm.
#[derive(Debug)]
pub struct Qemu {
    binary: PathBuf,
    guest: Guest,
    timeout: Duration,
    accel: String,
    cpu: Option<String>,
    initrd: Option<PathBuf>,
}

impl Qemu {
    /// QEMU at `binary` booting `guest`.
    pub fn new(binary: PathBuf, guest: Guest, timeout: Duration) -> Qemu {
        Qemu {
            binary,
            guest,
            timeout,
            accel: "kvm".into(),
            cpu: None,
            initrd: None,
        }
    }

    /// Gives the guest `-cpu model` (`host` where KVM has hardware virtualization;
    /// on PVM hosts QEMU aborts with it, so the default is QEMU's own model).
    pub fn with_cpu(mut self, model: &str) -> Qemu {
        self.cpu = Some(model.to_owned());
        self
    }

    /// Loads `initrd` with the kernel (`-initrd`).
    pub fn with_initrd(mut self, initrd: &Path) -> Qemu {
        self.initrd = Some(initrd.to_owned());
        self
    }

    /// Uses `accel` instead of KVM (`tcg` checks the harness where KVM cannot run
    /// the guest; its numbers mean nothing).
    pub fn with_accel(mut self, accel: &str) -> Qemu {
        self.accel = accel.to_owned();
        self
    }

    /// The kernel image QEMU is given: the same ELF vmlinux spry boots, which QEMU
    /// enters through its PVH note (a bzImage would go through qboot's 16-bit setup
    /// entry, which the probe does not implement).
    fn kernel(&self) -> &PathBuf {
        &self.guest.vmlinux
    }

    /// The arguments for `workload`.
    pub fn args(&self, workload: Workload) -> Vec<String> {
        self.args_with(&self.guest.boot_args(workload), &[])
    }

    /// The arguments booting the guest's kernel with `boot_args` and `devices` (extra
    /// QEMU arguments) after the root disk, if the guest has one.
    pub fn args_with(&self, boot_args: &str, devices: &[String]) -> Vec<String> {
        let rtc = match self.guest.kind {
            GuestKind::Linux => "on",
            GuestKind::Probe => "off",
        };
        let mut boot_args = boot_args.to_owned();
        let mut args: Vec<String> = [
            "-M",
            &format!("microvm,x-option-roms=off,acpi=off,rtc={rtc}"),
            "-accel",
            &self.accel,
            "-m",
            &self.guest.mem_mib.to_string(),
            "-smp",
            &self.guest.vcpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            &self.kernel().to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(cpu) = &self.cpu {
            args.extend(["-cpu".to_owned(), cpu.clone()]);
        }
        if let Some(initrd) = &self.initrd {
            args.extend(["-initrd".to_owned(), initrd.to_string_lossy().into_owned()]);
        }
        if self.guest.kind == GuestKind::Probe {
            // The probe ends by resetting through the i8042 (and its console mode
            // watches it for Ctrl-Alt-Del); microvm has none unless asked, and
            // -no-reboot turns the reset into QEMU's exit.
            args.extend(["-device".to_owned(), "i8042".to_owned()]);
        }
        if let Some(rootfs) = &self.guest.rootfs {
            boot_args.push_str(" root=/dev/vda ro");
            args.extend(
                [
                    "-drive",
                    &format!(
                        "id=root,file={},format=raw,if=none,readonly=on",
                        rootfs.display()
                    ),
                    "-device",
                    "virtio-blk-device,drive=root",
                ]
                .map(str::to_owned),
            );
        }
        args.extend(devices.iter().cloned());
        args.extend(["-append".to_owned(), boot_args]);
        args
    }

    /// The command booting the guest's kernel with `boot_args` and `devices`.
    pub fn command_with(&self, boot_args: &str, devices: &[String]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args_with(boot_args, devices));
        cmd
    }

    /// Boots once; `Err(reason)` says why QEMU cannot run this guest here. The probe
    /// boots with its full output (the benchmark's command line without
    /// `probe.quiet=1`) and must have entered through PVH and passed every check.
    pub fn check(&self) -> Result<(), String> {
        let trial = match self.guest.kind {
            GuestKind::Probe => self.probe_trial(),
            GuestKind::Linux => self.start(Workload::RunToExit, 0).and_then(|mut instance| {
                let exit = instance.process.wait_exit(self.timeout)?;
                check_exit("QEMU", &exit, &instance.process)
            }),
        };
        trial.map_err(|e| self.diagnose(&e))
    }

    fn probe_trial(&self) -> Result<(), SystemError> {
        let verbose = self.guest.check_args();
        let mut process = Measured::spawn(self.command_with(&verbose, &[]), false)?;
        let exit = process.wait_exit(self.timeout)?;
        check_exit("QEMU", &exit, &process)?;
        probe_verdict(&process.lines, Some(ProbeEntry::Pvh))
            .map(|_| ())
            .map_err(|e| SystemError::Command {
                command: format!("the probe under QEMU ({verbose})"),
                detail: e.to_string(),
            })
    }

    fn diagnose(&self, error: &SystemError) -> String {
        let observed = match error {
            SystemError::Child(ChildError::NoSignal { timeout, tail, .. }) => format!(
                "no console line within {timeout:?}; QEMU said: '{}'",
                tail.replace('\n', " / ")
            ),
            other => other.to_string().replace('\n', " / "),
        };
        let guest = self.guest.label();
        let kernel = self.kernel();
        // QEMU refuses an ELF without a PVH note ("Error loading uncompressed kernel
        // without PVH ELF Note"): name that first, with the likely cause.
        match has_note(kernel, PVH_OWNER, PVH_TYPE) {
            Some(false) => format!(
                "QEMU cannot boot the {guest}: {} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY; \
                 a probe built before it had one? rebuild it with resources/probe/build.sh): \
                 {observed}",
                kernel.display()
            ),
            None => format!(
                "QEMU cannot boot the {guest}: {} is not a readable ELF64 kernel: {observed}",
                kernel.display()
            ),
            Some(true) => format!(
                "QEMU did not boot the {guest} through its PVH entry ({}): {observed}",
                kernel.display()
            ),
        }
    }
}

impl Sandbox for Qemu {
    fn name(&self) -> &str {
        "QEMU"
    }

    fn phrase(&self) -> String {
        "QEMU".into()
    }

    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn version(&self) -> String {
        version_line(&self.binary)
    }

    fn command_line(&self, workload: Workload) -> String {
        let args: Vec<String> = self
            .args(workload)
            .into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect();
        format!("{} {}", self.binary.display(), args.join(" "))
    }

    fn start(&self, workload: Workload, _tag: usize) -> Result<Instance, SystemError> {
        let cmd = self.command_with(&self.guest.boot_args(workload), &[]);
        let mut process = Measured::spawn(cmd, workload != Workload::RunToExit)?;
        let running = self.guest.running_line();
        let ((), running_us) = process.wait_for(running, self.timeout, |l| {
            l.text.starts_with(running).then_some(())
        })?;
        if workload != Workload::RunToExit {
            self.guest.wait_idle(&mut process, self.timeout)?;
        }
        Ok(Instance {
            process,
            running_us,
            vcpu_entry_us: None,
            main_us: None,
            container: None,
            jail: None,
        })
    }

    fn console_line(&self) -> Option<&'static str> {
        Some(self.guest.running_line())
    }

    fn request_stop(&self, instance: &mut Instance) -> Result<(), SystemError> {
        Ok(instance.process.send(self.guest.stop_input())?)
    }

    fn memory(&self, instance: &Instance) -> Result<MemoryUse, SystemError> {
        vm_memory(instance, self.guest.mem_mib)
    }

    fn boot_entry(&self) -> Option<String> {
        Some(match self.guest.kind {
            GuestKind::Probe => "PVH: QEMU loads the ELF vmlinux by its PVH note \
                                 (XEN_ELFNOTE_PHYS32_ENTRY); its microvm firmware (qboot) writes \
                                 hvm_start_info, the memory map and an MP table and jumps to the \
                                 probe's 32-bit pvh_start, which sets up its own page tables and \
                                 long mode (resources/probe/src/pvh_entry.S)"
                .into(),
            GuestKind::Linux => "PVH: QEMU loads the ELF vmlinux by Linux's PVH note; its \
                                 microvm firmware (qboot) enters pvh_start_xen in 32-bit \
                                 protected mode"
                .into(),
        })
    }

    fn image(&self) -> Vec<ImageFile> {
        guest_image(&self.guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_probe_boots_its_vmlinux_through_pvh_on_microvm_with_kvm() {
        let guest = Guest::probe(std::path::Path::new("/b"), 128, String::new());
        let qemu = Qemu::new("qemu".into(), guest, Duration::from_secs(1));
        let args = qemu.args(Workload::RunToExit);
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].as_str())
        };
        assert_eq!(at("-accel"), Some("kvm"));
        assert_eq!(at("-kernel"), Some("/b/probe/vmlinux"));
        assert_eq!(at("-m"), Some("128"));
        assert_eq!(at("-device"), Some("i8042"));
        assert!(args.contains(&"-no-reboot".to_owned()));
        assert!(
            !args.iter().any(|a| a == "-cpu"),
            "QEMU aborts on -cpu host here"
        );
        assert_eq!(args[args.len() - 2], "-append");
        assert!(qemu.boot_entry().is_some_and(|e| e.starts_with("PVH")));
    }

    #[test]
    fn test_missing_pvh_note_is_named_in_the_diagnosis() {
        let dir = std::env::temp_dir().join(format!("qemu-diag-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("probe")).unwrap();
        // an ELF64 header without program headers: no notes at all
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        std::fs::write(dir.join("probe/vmlinux"), elf).unwrap();
        let guest = Guest::probe(&dir, 128, String::new());
        let qemu = Qemu::new("qemu".into(), guest, Duration::from_secs(1));
        let why = qemu.diagnose(&SystemError::Command {
            command: "qemu".into(),
            detail: "Error loading uncompressed kernel without PVH ELF Note".into(),
        });
        assert!(why.contains("has no PVH entry note"), "{why}");
        assert!(why.contains("without PVH ELF Note"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_an_explicit_qemu_binary_is_taken_as_given() {
        let binary = qemu_binary(Some(Path::new("/opt/q")), "kvm");
        assert_eq!(binary, Ok(PathBuf::from("/opt/q")));
    }

    #[test]
    fn test_linux_gets_its_root_disk_read_only_before_extra_devices() {
        let guest = Guest::linux(std::path::Path::new("/b"), 128);
        let qemu = Qemu::new("qemu".into(), guest, Duration::from_secs(1)).with_accel("tcg");
        let args = qemu.args_with("quiet", &["-device".into(), "x".into()]);
        let root = args.iter().position(|a| a.contains("rootfs.ext4")).unwrap();
        let extra = args.iter().position(|a| a == "x").unwrap();
        assert!(root < extra);
        assert!(args[root].ends_with("readonly=on"));
        assert_eq!(
            args.last().map(String::as_str),
            Some("quiet root=/dev/vda ro")
        );
    }
}
