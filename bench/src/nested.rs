//! Running a benchmark's own command line again inside the nested host
//! (tools/nested/nested-host: kvm_amd in an L1 under QEMU's TCG emulator), for the
//! measurements that need KVM with hardware virtualization on hosts without it.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cleanup;
use crate::host::HostInfo;
use crate::setup::Env;

/// Set for the spry-bench that runs in the nested host: the machine under it, as
/// the outer spry-bench describes it (the nested host keeps the environment).
pub const NESTED_ENV: &str = "SPRY_BENCH_NESTED";

/// The nested host prints a progress line per step and a note per failed one; this
/// long without a line means L1 itself hangs.
pub const NESTED_SILENCE: Duration = Duration::from_secs(15 * 60);

/// One line about this machine for the report written in the nested host.
pub fn outer_host_line(host: &HostInfo) -> String {
    format!(
        "{} ({} CPUs, Linux {}, /dev/kvm: {})",
        host.cpu,
        host.cpus,
        host.kernel,
        host.kvm.describe()
    )
}

/// The machine under this one when this spry-bench runs in the nested host.
pub fn outer_host() -> Option<String> {
    std::env::var(NESTED_ENV).ok()
}

/// How to run a command line in the nested host.
#[derive(Debug)]
pub struct Rerun<'a> {
    /// The launcher (it must take `run [--mem M] [--timeout S] -- CMD ARGS...`).
    pub launcher: &'a Path,
    /// L1's memory, MiB.
    pub mem_mib: u32,
    /// Seconds after which the launcher gives up.
    pub timeout_s: usize,
    /// This process's arguments (without the program), run again in L1.
    pub args: Vec<OsString>,
    /// The benchmark, for messages (`exits`, `exec`).
    pub what: &'static str,
}

/// Runs this very spry-bench again in the nested host, streaming its output; its
/// report lands in the shared file system. The error says why, in one line.
pub fn rerun(env: &Env, rerun: Rerun<'_>) -> Result<(), String> {
    if !rerun.launcher.is_file() {
        return Err(format!(
            "/dev/kvm here is {} and {} is missing: cannot measure with a Linux guest",
            env.host.kvm.describe(),
            rerun.launcher.display()
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("where is spry-bench: {e}"))?;
    // The inner spry-bench's scratch directory goes under ours: where L1 shares
    // this machine's /tmp, our cleanup removes it even if L1 dies.
    let l1_tmp = env.scratch_dir("l1").map_err(|e| e.to_string())?;
    let mut cmd = Command::new(rerun.launcher);
    cmd.args([
        "run",
        "--mem",
        &rerun.mem_mib.to_string(),
        "--timeout",
        &rerun.timeout_s.to_string(),
        "--",
    ])
    .arg(exe)
    .args(rerun.args)
    .env(NESTED_ENV, outer_host_line(&env.host))
    .env("TMPDIR", &l1_tmp);
    eprintln!(
        "spry-bench {}: /dev/kvm here is {}; measuring in the nested host ({} run: L1 with \
         kvm_amd under QEMU's TCG emulator; every instruction emulated, so expect minutes)",
        rerun.what,
        env.host.kvm.describe(),
        rerun.launcher.display()
    );
    match cleanup::run_stoppable(cmd, NESTED_SILENCE).map_err(|e| e.to_string())? {
        cleanup::Ended::Exited(status) if status.success() => Ok(()),
        cleanup::Ended::Exited(status) => {
            Err(format!("{} exited with {status}", rerun.launcher.display()))
        }
        cleanup::Ended::Silent => Err(format!(
            "it printed nothing for {} minutes, so L1 hangs (under TCG it now and then \
             does, more often while another nested host keeps the CPUs busy); stopped it: \
             run it again",
            NESTED_SILENCE.as_secs() / 60
        )),
    }
}
