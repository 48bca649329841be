//! spry and Firecracker: same JSON config, same boot-timer device, started as
//! `--config-file` processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::child::Measured;
use crate::guest::Guest;
use crate::guest::GuestKind;
use crate::procfs::MemoryUse;
use crate::spry_log::{parse_boot_timer, parse_vcpu_entry};
use crate::systems::probe_check::{probe_verdict, ProbeEntry};
use crate::systems::{check_exit, ImageFile, Instance, Kind, Sandbox, SystemError, Workload};

/// Which Firecracker-compatible VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// spry.
    Spry,
    /// Firecracker (a binary the user points at).
    Firecracker,
}

/// A Firecracker-compatible VMM booting the benchmark guest.
#[derive(Debug)]
pub struct VmSystem {
    vmm: Vmm,
    binary: PathBuf,
    guest: Guest,
    run_config: PathBuf,
    idle_config: PathBuf,
    check_config: PathBuf,
    timeout: Duration,
    /// How the probe said it was entered in [`VmSystem::check`].
    entered: OnceLock<ProbeEntry>,
    /// Arguments added to every command line (`--no-seccomp`).
    extra_args: Vec<String>,
    /// The name in tables, when not the VMM's own.
    label: Option<String>,
}

/// The Firecracker-style config for `guest` with `boot_args`, plus `drives` and
/// `network-interfaces` JSON values.
pub fn vm_config(
    guest: &Guest,
    boot_args: &str,
    drives: serde_json::Value,
    nets: serde_json::Value,
) -> serde_json::Value {
    let mut drives = drives;
    if let (Some(rootfs), Some(list)) = (&guest.rootfs, drives.as_array_mut()) {
        list.insert(
            0,
            serde_json::json!({
                "drive_id": "rootfs",
                "path_on_host": rootfs,
                "is_root_device": true,
                "is_read_only": true,
            }),
        );
    }
    serde_json::json!({
        "boot-source": {"kernel_image_path": guest.vmlinux, "boot_args": boot_args},
        "machine-config": {"vcpu_count": guest.vcpus, "mem_size_mib": guest.mem_mib},
        "drives": drives,
        "network-interfaces": nets,
    })
}

/// The commit of the repository spry-bench was built from (spry is built from the
/// same tree by tools/bench), with `-dirty` for uncommitted changes.
pub(crate) fn git_commit() -> Option<String> {
    let repo = crate::setup::default_repo();
    let repo = repo.to_string_lossy();
    let commit = super::run_helper(
        std::path::Path::new("git"),
        &[
            "-C",
            &repo,
            "describe",
            "--always",
            "--dirty",
            "--abbrev=10",
        ],
    )
    .ok()?;
    Some(commit.trim().to_owned()).filter(|c| !c.is_empty())
}

/// Writes `value` as JSON to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), SystemError> {
    std::fs::write(path, value.to_string()).map_err(|source| SystemError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The command that boots `config` with `vmm`.
pub fn vmm_command(vmm: Vmm, binary: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(binary);
    match vmm {
        Vmm::Spry => cmd
            .arg("--config-file")
            .arg(config)
            .args(["--log-level", "info"]),
        Vmm::Firecracker => cmd
            .args([
                "--no-api",
                "--boot-timer",
                "--level",
                "Info",
                "--config-file",
            ])
            .arg(config),
    };
    cmd
}

/// Waits for the first boot-timer line of a VMM process and returns
/// (its monotonic time, spry's `main` monotonic time if known).
pub fn wait_boot_timer(
    process: &mut Measured,
    timeout: Duration,
) -> Result<(u64, Option<u64>), SystemError> {
    let (stamp, arrived_us) = process.wait_for("the boot-timer log line", timeout, |l| {
        parse_boot_timer(&l.text)
    })?;
    // spry stamps the write with CLOCK_MONOTONIC; Firecracker does not, so its line's
    // arrival time stands in.
    let running_us = stamp.monotonic_us.unwrap_or(arrived_us);
    let main_us = stamp
        .monotonic_us
        .map(|m| m.saturating_sub(stamp.since_main_us));
    Ok((running_us, main_us))
}

/// Spawns `cmd`, a Firecracker-compatible VMM (or the jailer that becomes spry)
/// booting `guest` for `workload`, and waits for its running signal (and, idle, for
/// the guest's idle line).
pub fn start_vmm(
    cmd: Command,
    guest: &Guest,
    workload: Workload,
    timeout: Duration,
) -> Result<Instance, SystemError> {
    let mut process = Measured::spawn(cmd, workload != Workload::RunToExit)?;
    // Both have the boot timer at MMIO 0xc000_0000 (Firecracker 1.16 with
    // `--boot-timer`) and log its write; spry stamps it with CLOCK_MONOTONIC,
    // Firecracker's line is timed when it arrives.
    let (running_us, main_us) = wait_boot_timer(&mut process, timeout)?;
    let vcpu_entry_us = process.lines.iter().find_map(|l| parse_vcpu_entry(&l.text));
    if workload != Workload::RunToExit {
        guest.wait_idle(&mut process, timeout)?;
    }
    Ok(Instance {
        process,
        running_us,
        vcpu_entry_us,
        main_us,
        container: None,
        jail: None,
    })
}

/// `cmd` as one line (program and arguments, space-separated).
pub fn command_text(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

impl VmSystem {
    /// Writes the run-to-exit and idle configs for `guest` into `dir`.
    pub fn new(
        vmm: Vmm,
        binary: PathBuf,
        guest: Guest,
        dir: &Path,
        timeout: Duration,
    ) -> Result<VmSystem, SystemError> {
        let prefix = match vmm {
            Vmm::Spry => "spry",
            Vmm::Firecracker => "firecracker",
        };
        let run_config = dir.join(format!("{prefix}-run.json"));
        let idle_config = dir.join(format!("{prefix}-idle.json"));
        let check_config = dir.join(format!("{prefix}-check.json"));
        let none = serde_json::json!([]);
        write_json(
            &check_config,
            &vm_config(&guest, &guest.check_args(), none.clone(), none.clone()),
        )?;
        write_json(
            &run_config,
            &vm_config(
                &guest,
                &guest.boot_args(Workload::RunToExit),
                none.clone(),
                none.clone(),
            ),
        )?;
        write_json(
            &idle_config,
            &vm_config(&guest, &guest.boot_args(Workload::Idle), none.clone(), none),
        )?;
        Ok(VmSystem {
            vmm,
            binary,
            guest,
            run_config,
            idle_config,
            check_config,
            timeout,
            entered: OnceLock::new(),
            extra_args: Vec::new(),
            label: None,
        })
    }

    /// The same VMM started with `args` added to its command line, named `label` in
    /// tables (spry with `--no-seccomp`).
    pub fn with_args(mut self, args: &[&str], label: &str) -> VmSystem {
        self.extra_args = args.iter().map(|&a| a.to_owned()).collect();
        self.label = Some(label.to_owned());
        self
    }

    /// The command booting `config`, with the added arguments.
    fn command(&self, config: &Path) -> Command {
        let mut cmd = vmm_command(self.vmm, &self.binary, config);
        cmd.args(&self.extra_args);
        cmd
    }

    /// Boots the guest once before any measured run; `Err` says why this VMM
    /// cannot be compared (issue 13). The probe boots with its full output and
    /// must pass every check (spry through the Linux 64-bit entry it implements,
    /// Firecracker through whichever it picks, which is recorded); the Linux
    /// guest must run to a clean exit.
    pub fn check(&self) -> Result<(), String> {
        let failed = |e: String| {
            format!(
                "{} did not pass the {} check boot: {e}",
                self.binary.display(),
                self.guest.label()
            )
        };
        if self.guest.kind == GuestKind::Linux {
            return super::run_to_exit(self, 0, self.timeout)
                .map(|_| ())
                .map_err(|e| failed(e.to_string()));
        }
        let cmd = self.command(&self.check_config);
        let mut process = Measured::spawn(cmd, false).map_err(|e| failed(e.to_string()))?;
        let exit = process
            .wait_exit(self.timeout)
            .map_err(|e| failed(e.to_string()))?;
        check_exit(self.name(), &exit, &process).map_err(|e| failed(e.to_string()))?;
        let want = match self.vmm {
            Vmm::Spry => Some(ProbeEntry::Linux64),
            Vmm::Firecracker => None,
        };
        let entry = probe_verdict(&process.lines, want).map_err(|e| failed(e.to_string()))?;
        let _ = self.entered.set(entry);
        Ok(())
    }

    fn config(&self, workload: Workload) -> &Path {
        match workload {
            Workload::RunToExit => &self.run_config,
            Workload::Idle | Workload::IdleAttached => &self.idle_config,
        }
    }
}

impl Sandbox for VmSystem {
    fn name(&self) -> &str {
        if let Some(label) = &self.label {
            return label;
        }
        match self.vmm {
            Vmm::Spry => "spry",
            Vmm::Firecracker => "Firecracker",
        }
    }

    fn phrase(&self) -> String {
        self.name().to_owned()
    }

    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn version(&self) -> String {
        let version = super::version_line(&self.binary);
        match (self.vmm, git_commit()) {
            (Vmm::Spry, Some(commit)) => format!("{version} (git {commit})"),
            _ => version,
        }
    }

    fn command_line(&self, workload: Workload) -> String {
        command_text(&self.command(self.config(workload)))
    }

    fn start(&self, workload: Workload, _tag: usize) -> Result<Instance, SystemError> {
        start_vmm(
            self.command(self.config(workload)),
            &self.guest,
            workload,
            self.timeout,
        )
    }

    fn console_line(&self) -> Option<&'static str> {
        Some(self.guest.running_line())
    }

    fn boot_entry(&self) -> Option<String> {
        Some(match self.vmm {
            // src/loader.rs enters the ELF at e_entry and leaves linux-loader's PVH
            // capability unused.
            Vmm::Spry => "Linux 64-bit boot protocol: spry loads the ELF vmlinux and starts the \
                          vCPU in long mode at its e_entry (startup_64) with boot_params in \
                          RSI; it does not use the PVH note"
                .into(),
            Vmm::Firecracker => match self.entered.get() {
                Some(entry) => format!(
                    "Firecracker's choice, as the probe reported it in the check boot: {}",
                    entry.describe()
                ),
                None => "Firecracker's choice: PVH where this Firecracker supports it (1.12 \
                         and later enter an ELF with a PVH note through it, as the probe's \
                         vmlinux has), else the Linux 64-bit boot protocol"
                    .into(),
            },
        })
    }

    fn request_stop(&self, instance: &mut Instance) -> Result<(), SystemError> {
        Ok(instance.process.send(self.guest.stop_input())?)
    }

    fn memory(&self, instance: &Instance) -> Result<MemoryUse, SystemError> {
        super::vm_memory(instance, self.guest.mem_mib)
    }

    fn image(&self) -> Vec<ImageFile> {
        super::guest_image(&self.guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_linux_config_puts_the_read_only_root_drive_first() {
        let guest = Guest::linux(Path::new("/b"), 128);
        let extra = serde_json::json!([{"drive_id": "bench"}]);
        let config = vm_config(&guest, "console=ttyS0", extra, serde_json::json!([]));
        assert_eq!(config["drives"][0]["drive_id"], "rootfs");
        assert_eq!(config["drives"][0]["is_read_only"], true);
        assert_eq!(config["drives"][1]["drive_id"], "bench");
        assert_eq!(config["machine-config"]["mem_size_mib"], 128);
    }

    #[test]
    fn test_spry_logs_at_info_for_the_boot_timer_line() {
        let cmd = vmm_command(Vmm::Spry, Path::new("/spry"), Path::new("/vm.json"));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--config-file", "/vm.json", "--log-level", "info"]);
    }
}
