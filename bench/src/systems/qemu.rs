//! QEMU's microvm machine (Debian's qemu-system-x86) with KVM, booting the same guest.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::child::{ChildError, Measured};
use crate::guest::{Guest, GuestKind};
use crate::procfs::MemoryUse;
use crate::systems::{
    image_file, version_line, vm_memory, ImageFile, Instance, Kind, Sandbox, SystemError, Workload,
};

/// qemu-system-x86_64 -M microvm.
#[derive(Debug)]
pub struct Qemu {
    binary: PathBuf,
    guest: Guest,
    timeout: Duration,
    accel: String,
}

impl Qemu {
    /// QEMU at `binary` booting `guest`.
    pub fn new(binary: PathBuf, guest: Guest, timeout: Duration) -> Qemu {
        Qemu {
            binary,
            guest,
            timeout,
            accel: "kvm".into(),
        }
    }

    /// Uses `accel` instead of KVM (`tcg` checks the harness where KVM cannot run
    /// the guest; its numbers mean nothing).
    pub fn with_accel(mut self, accel: &str) -> Qemu {
        self.accel = accel.to_owned();
        self
    }

    /// The kernel image QEMU is given: QEMU loads an ELF vmlinux only through a PVH
    /// note, which Linux has and the probe has not, so the probe goes in as a bzImage.
    fn kernel(&self) -> &PathBuf {
        match self.guest.kind {
            GuestKind::Linux => &self.guest.vmlinux,
            GuestKind::Probe => &self.guest.bzimage,
        }
    }

    /// The arguments for `workload` with `kernel`.
    pub fn args(&self, workload: Workload, kernel: &std::path::Path) -> Vec<String> {
        self.args_with(&self.guest.boot_args(workload), kernel, &[])
    }

    /// The arguments booting `kernel` with `boot_args` and `devices` (extra QEMU
    /// arguments) after the root disk, if the guest has one.
    pub fn args_with(
        &self,
        boot_args: &str,
        kernel: &std::path::Path,
        devices: &[String],
    ) -> Vec<String> {
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
            &kernel.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
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

    /// The command booting the guest's usual kernel with `boot_args` and `devices`.
    pub fn command_with(&self, boot_args: &str, devices: &[String]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args_with(boot_args, self.kernel(), devices));
        cmd
    }

    fn spawn(&self, workload: Workload, kernel: &std::path::Path) -> Result<Measured, SystemError> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(workload, kernel));
        Ok(Measured::spawn(cmd, workload != Workload::RunToExit)?)
    }

    /// Boots once; `Err(reason)` says why QEMU cannot run this guest here.
    pub fn check(&self) -> Result<(), String> {
        match self.start(Workload::RunToExit, 0) {
            Ok(mut instance) => {
                let _ = instance.process.wait_exit(self.timeout);
                Ok(())
            }
            Err(e) => Err(self.diagnose(&e)),
        }
    }

    fn diagnose(&self, error: &SystemError) -> String {
        if self.guest.kind != GuestKind::Probe {
            return format!(
                "QEMU did not boot the Linux guest: {}",
                error.to_string().replace('\n', " / ")
            );
        }
        // What QEMU said while it sat there, and what the ELF vmlinux gets.
        let observed = match error {
            SystemError::Child(ChildError::NoSignal { timeout, tail, .. }) => format!(
                "no console line within {timeout:?}; QEMU said: '{}'",
                tail.replace('\n', " / ")
            ),
            other => other.to_string().replace('\n', " / "),
        };
        let elf = self
            .spawn(Workload::RunToExit, &self.guest.vmlinux)
            .ok()
            .and_then(|mut p| p.wait_exit(Duration::from_secs(5)).ok().map(|_| p.tail()))
            .map(|t| t.replace('\n', " / "))
            .unwrap_or_default();
        format!(
            "QEMU cannot boot the probe guest. The ELF vmlinux: refused ('{elf}'): QEMU loads \
             ELF kernels only through a PVH entry note, which the probe lacks. The bzImage: \
             QEMU's microvm firmware (qboot) enters it through the 16-bit real-mode setup \
             entry, where the probe only has `cli; hlt` (it implements the 64-bit entry only): \
             {observed}."
        )
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
            .args(workload, self.kernel())
            .into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect();
        format!("{} {}", self.binary.display(), args.join(" "))
    }

    fn start(&self, workload: Workload, _tag: usize) -> Result<Instance, SystemError> {
        let mut process = self.spawn(workload, self.kernel())?;
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

    fn image(&self) -> Vec<ImageFile> {
        let mut files = vec![image_file("kernel", self.kernel().clone())];
        if let Some(rootfs) = &self.guest.rootfs {
            files.push(image_file("root file system", rootfs.clone()));
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_probe_boots_as_bzimage_on_microvm_with_kvm() {
        let guest = Guest::probe(std::path::Path::new("/b"), 128, String::new());
        let qemu = Qemu::new("qemu".into(), guest, Duration::from_secs(1));
        let args = qemu.args(Workload::RunToExit, qemu.kernel());
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].as_str())
        };
        assert_eq!(at("-accel"), Some("kvm"));
        assert_eq!(at("-kernel"), Some("/b/probe/bzImage"));
        assert_eq!(at("-m"), Some("128"));
        assert!(args.contains(&"-no-reboot".to_owned()));
        assert_eq!(args[args.len() - 2], "-append");
    }

    #[test]
    fn test_linux_gets_its_root_disk_read_only_before_extra_devices() {
        let guest = Guest::linux(std::path::Path::new("/b"), 128);
        let qemu = Qemu::new("qemu".into(), guest, Duration::from_secs(1)).with_accel("tcg");
        let args = qemu.args_with(
            "quiet",
            std::path::Path::new("/k"),
            &["-device".into(), "x".into()],
        );
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
