//! The systems under comparison, each able to start the common workload (start,
//! signal "running", exit or idle) and to say what it is.

pub mod elf_note;
pub mod jailed;
pub mod probe_check;
pub mod qemu;
pub mod runc;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::child::{ChildError, Exit, Measured};
use crate::procfs::{MemoryUse, ProcError};

/// Errors starting, measuring or stopping a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The process misbehaved or did not signal.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Reading its memory failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Writing a config or bundle file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its output or error.
        detail: String,
    },
    /// It ended badly.
    #[error("{system} exited with {status} instead of 0; last output:\n{tail}")]
    BadExit {
        /// Which system.
        system: String,
        /// The wait status.
        status: String,
        /// The end of its output.
        tail: String,
    },
}

/// What the sandbox does after it signals "running".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// Exit at once (start-time runs).
    RunToExit,
    /// Idle until stopped; the process that was started ends when the workload does
    /// (restart runs).
    IdleAttached,
    /// Idle until stopped, in the lightest form the system offers (memory and
    /// density runs; runc detaches).
    Idle,
}

/// VM or container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// A virtual machine monitor.
    Vm,
    /// A container runtime.
    Container,
}

/// A started sandbox that has signalled "running".
#[derive(Debug)]
pub struct Instance {
    /// The process that was started.
    pub process: Measured,
    /// `CLOCK_MONOTONIC` of the running signal, µs.
    pub running_us: u64,
    /// spry only: µs from its `main` to the vCPU's first KVM_RUN.
    pub vcpu_entry_us: Option<u64>,
    /// spry only: `CLOCK_MONOTONIC` of its `main`, µs (from the boot-timer stamp).
    pub main_us: Option<u64>,
    /// runc only: the container id.
    pub container: Option<String>,
    /// Jailed spry only: its jail directory (`<base>/spry/<id>`), removed when done.
    pub jail: Option<PathBuf>,
}

/// A file a system needs on disk to start the workload.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFile {
    /// What it is ("kernel", "root file system", "bundle").
    pub role: String,
    /// Where.
    pub path: PathBuf,
    /// Apparent size, bytes.
    pub bytes: u64,
    /// Space allocated on disk, bytes.
    pub disk_bytes: u64,
}

/// One system under comparison.
pub trait Sandbox: Sync {
    /// Short name for tables ("spry", "runc", "QEMU", "Firecracker").
    fn name(&self) -> &str;
    /// The phrase a headline uses ("a runc container", "QEMU").
    fn phrase(&self) -> String;
    /// VM or container.
    fn kind(&self) -> Kind;
    /// Version string of the runtime.
    fn version(&self) -> String;
    /// The exact command line that starts `workload`.
    fn command_line(&self, workload: Workload) -> String;
    /// Starts `workload` and waits for its running signal. `tag` makes names unique.
    fn start(&self, workload: Workload, tag: usize) -> Result<Instance, SystemError>;
    /// Asks an idle instance to end (the guest's own reboot, the container's init
    /// exiting, or deleting a detached container) without waiting.
    fn request_stop(&self, instance: &mut Instance) -> Result<(), SystemError>;
    /// Memory of the whole idle sandbox.
    fn memory(&self, instance: &Instance) -> Result<MemoryUse, SystemError>;
    /// What it needs on disk.
    fn image(&self) -> Vec<ImageFile>;
    /// The first console line of a VM's guest, for comparing VMs that lack spry's
    /// boot-timer stamp on equal terms; `None` for containers.
    fn console_line(&self) -> Option<&'static str> {
        None
    }
    /// VMs: how the VMM enters the guest kernel (boot protocol and entry point), for
    /// the report; `None` for containers.
    fn boot_entry(&self) -> Option<String> {
        None
    }
    /// Deletes leftovers of a finished instance (containers); no-op for VMs.
    fn finish(&self, _instance: &mut Instance) {}

    /// Asks an idle instance to end and waits until its process has exited.
    fn stop(&self, instance: &mut Instance, timeout: Duration) -> Result<Exit, SystemError> {
        self.request_stop(instance)?;
        let exit = instance.process.wait_exit(timeout)?;
        self.finish(instance);
        Ok(exit)
    }
}

/// Starts `system`'s run-to-exit workload once and waits for its clean exit.
pub fn run_to_exit(
    system: &dyn Sandbox,
    tag: usize,
    timeout: Duration,
) -> Result<(Instance, Exit), SystemError> {
    let mut instance = system.start(Workload::RunToExit, tag)?;
    let exit = instance.process.wait_exit(timeout)?;
    system.finish(&mut instance);
    check_exit(system.name(), &exit, &instance.process)?;
    Ok((instance, exit))
}

/// When a VM's guest printed its first console line (`console_line`), µs
/// (`CLOCK_MONOTONIC`, as the harness read it); `None` for containers or if the line
/// has not come.
pub fn console_at_us(system: &dyn Sandbox, instance: &Instance) -> Option<u64> {
    let prefix = system.console_line()?;
    instance
        .process
        .lines
        .iter()
        .find(|l| l.text.starts_with(prefix))
        .map(|l| l.at_us)
}

/// Fails with [`SystemError::BadExit`] unless `exit` is a clean exit 0.
pub fn check_exit(system: &str, exit: &Exit, process: &Measured) -> Result<(), SystemError> {
    if exit.status.success() {
        return Ok(());
    }
    Err(SystemError::BadExit {
        system: system.to_owned(),
        status: exit.status.to_string(),
        tail: process.tail(),
    })
}

/// The files a VM booting `guest` needs.
pub fn guest_image(guest: &crate::guest::Guest) -> Vec<ImageFile> {
    guest
        .files()
        .into_iter()
        .map(|(role, path)| image_file(role, path))
        .collect()
}

/// File size and allocated size of `path` (summed over a directory tree).
pub fn image_file(role: &str, path: PathBuf) -> ImageFile {
    let (bytes, disk_bytes) = tree_size(&path);
    ImageFile {
        role: role.to_owned(),
        path,
        bytes,
        disk_bytes,
    }
}

fn tree_size(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    let mut sizes = (meta.len(), meta.blocks() * 512);
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            let (a, d) = tree_size(&entry.path());
            sizes.0 += a;
            sizes.1 += d;
        }
    }
    sizes
}

/// The first line `binary --version` prints, or "unknown".
pub fn version_line(binary: &std::path::Path) -> String {
    run_helper(binary, &["--version"])
        .ok()
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// A VM's memory: smaps of its process, guest RAM found by `mem_mib`.
pub fn vm_memory(instance: &Instance, mem_mib: u32) -> Result<MemoryUse, SystemError> {
    let guest_kib = u64::from(mem_mib) * 1024;
    Ok(crate::procfs::memory_use(
        instance.process.pid(),
        Some(guest_kib),
    )?)
}

/// Runs a helper command to completion and returns its stdout.
pub fn run_helper(program: &std::path::Path, args: &[&str]) -> Result<String, SystemError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SystemError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SystemError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
