//! Issue 2's boot benchmark: spry alone, the guest booted N times, with the VMM's own
//! share of the start (to the first KVM_RUN) and its own memory beyond guest RAM.

use std::time::Duration;

use serde::Serialize;

use crate::clock::ms_between;
use crate::guest::Guest;
use crate::progress::Progress;
use crate::report::table::{markdown_table, summary_cells};
use crate::setup::{Env, SetupError};
use crate::stats::{summarize, Summary};
use crate::systems::vm::{VmSystem, Vmm};
use crate::systems::{check_exit, run_to_exit, Sandbox, SystemError, Workload};

/// Errors of the boot benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A boot failed.
    #[error("boot {run} failed")]
    Run {
        /// Which run (0 = first warm-up).
        run: usize,
        /// Why.
        #[source]
        source: SystemError,
    },
}

/// One boot's times, ms from the parent's spawn (and spry's own clock).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BootSample {
    /// Spawn to the guest's first boot-timer write.
    pub to_running_ms: f64,
    /// Spawn to spry's exit after the guest's reset.
    pub to_exit_ms: f64,
    /// Spawn to `vCPU 0 entering the guest`.
    pub to_vcpu_entry_ms: Option<f64>,
    /// Spawn to spry's `main` (exec, dynamic loading, runtime start).
    pub exec_to_main_ms: Option<f64>,
    /// spry's `main` to the first KVM_RUN.
    pub main_to_vcpu_entry_ms: Option<f64>,
    /// User + system CPU of the whole run.
    pub cpu_ms: f64,
}

/// Boots `system` once, to exit, and times it.
pub fn boot_once(
    system: &dyn Sandbox,
    tag: usize,
    timeout: Duration,
) -> Result<BootSample, SystemError> {
    let (instance, exit) = run_to_exit(system, tag, timeout)?;
    let spawned = instance.process.spawned_us;
    let main_to_vcpu = instance.vcpu_entry_us.map(|us| us as f64 / 1000.0);
    let exec_to_main = instance.main_us.map(|m| ms_between(spawned, m));
    Ok(BootSample {
        to_running_ms: ms_between(spawned, instance.running_us),
        to_exit_ms: ms_between(spawned, exit.at_us),
        to_vcpu_entry_ms: exec_to_main.zip(main_to_vcpu).map(|(a, b)| a + b),
        exec_to_main_ms: exec_to_main,
        main_to_vcpu_entry_ms: main_to_vcpu,
        cpu_ms: exit.cpu_ms(),
    })
}

/// spry's memory while the guest idles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OwnMemory {
    /// Rss outside the guest-RAM mapping, MiB.
    pub own_rss_mib: f64,
    /// Pss outside the guest-RAM mapping, MiB.
    pub own_pss_mib: f64,
    /// Rss of the guest-RAM mapping (pages the guest touched), MiB.
    pub guest_rss_mib: f64,
    /// Whether the guest-RAM mapping was found by its size.
    pub guest_mapping_found: bool,
}

/// Starts the idle (console-mode) guest, reads spry's smaps, and stops it with the
/// guest's own reboot.
pub fn own_memory(
    system: &dyn Sandbox,
    tag: usize,
    timeout: Duration,
) -> Result<OwnMemory, SystemError> {
    let mut instance = system.start(Workload::Idle, tag)?;
    let memory = system.memory(&instance);
    let exit = system.stop(&mut instance, timeout)?;
    check_exit(system.name(), &exit, &instance.process)?;
    let memory = memory?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(OwnMemory {
        own_rss_mib: mib(memory.own_rss_kib()),
        own_pss_mib: mib(memory.own_pss_kib()),
        guest_rss_mib: mib(memory.guest_rss_kib),
        guest_mapping_found: memory.guest_mapping_found,
    })
}

/// Everything the boot benchmark measured.
#[derive(Debug, Serialize)]
pub struct BootReport {
    /// Which guest and why.
    pub guest: Guest,
    /// Runs after warm-up.
    pub runs: usize,
    /// Every boot.
    pub samples: Vec<BootSample>,
    /// Every memory reading.
    pub memory: Vec<OwnMemory>,
}

fn column(samples: &[BootSample], f: impl Fn(&BootSample) -> Option<f64>) -> Option<Summary> {
    summarize(&samples.iter().filter_map(f).collect::<Vec<_>>())
}

impl BootReport {
    /// The table, with the aims checked.
    pub fn render(&self) -> String {
        let s = &self.samples;
        let memory =
            |f: fn(&OwnMemory) -> f64| summarize(&self.memory.iter().map(f).collect::<Vec<_>>());
        let vmm_share = column(s, |b| b.to_vcpu_entry_ms);
        let own = memory(|m| m.own_rss_mib);
        let aim = |summary: Option<Summary>, limit: f64, unit: &str| match summary {
            Some(x) if x.median < limit => format!("aim < {limit} {unit}: met"),
            Some(_) => format!("aim < {limit} {unit}: MISSED"),
            None => format!("aim < {limit} {unit}: not measured"),
        };
        let metrics: [(&str, &str, Option<Summary>, String); 9] = [
            (
                "(a) start → guest boot-timer write",
                "ms",
                column(s, |b| Some(b.to_running_ms)),
                String::new(),
            ),
            (
                "(b) start → spry exit after the guest's reset",
                "ms",
                column(s, |b| Some(b.to_exit_ms)),
                String::new(),
            ),
            (
                "(c) start → vCPU 0 enters the guest (VMM share)",
                "ms",
                vmm_share,
                aim(vmm_share, 5.0, "ms"),
            ),
            (
                "    exec → spry main",
                "ms",
                column(s, |b| b.exec_to_main_ms),
                String::new(),
            ),
            (
                "    spry main → vCPU 0 enters the guest",
                "ms",
                column(s, |b| b.main_to_vcpu_entry_ms),
                String::new(),
            ),
            (
                "CPU per boot (user + system, incl. the emulated guest)",
                "ms",
                column(s, |b| Some(b.cpu_ms)),
                String::new(),
            ),
            (
                "(d) spry's own memory: Rss outside guest RAM",
                "MiB",
                own,
                aim(own, 5.0, "MiB"),
            ),
            (
                "    Pss outside guest RAM",
                "MiB",
                memory(|m| m.own_pss_mib),
                String::new(),
            ),
            (
                "    guest RAM touched (Rss of the guest mapping)",
                "MiB",
                memory(|m| m.guest_rss_mib),
                String::new(),
            ),
        ];
        let rows: Vec<Vec<String>> = metrics
            .into_iter()
            .map(|(name, unit, summary, note)| {
                let mut cells = vec![name.to_owned(), unit.to_owned()];
                cells.extend(summary_cells(summary.as_ref()));
                cells.push(note);
                cells
            })
            .collect();
        let mapping = if self.memory.iter().all(|m| m.guest_mapping_found) {
            ""
        } else {
            " (guest-RAM mapping NOT found by its size: own memory includes it)"
        };
        format!(
            "spry boot benchmark: {} ({} vCPU, {} MiB), {} boots after warm-up; memory from {} \
             idle boots{mapping}\n\n{}\nguest: {}\n",
            self.guest.label(),
            self.guest.vcpus,
            self.guest.mem_mib,
            self.runs,
            self.memory.len(),
            markdown_table(
                &["metric", "unit", "median", "p90", "min", "max", "note"],
                &rows
            ),
            self.guest.why
        )
    }
}

/// Runs the boot benchmark: `warmup` + `runs` boots, then `memory_runs` idle runs.
pub fn run(
    env: &Env,
    runs: usize,
    warmup: usize,
    memory_runs: usize,
) -> Result<BootReport, BootError> {
    let guest = Guest::for_host(env.host.kvm, &env.build, 128);
    env.ensure_probe()?;
    let dir = env.scratch_dir("boot")?;
    let timeout = Duration::from_secs(30);
    let spry = VmSystem::new(Vmm::Spry, env.spry.clone(), guest.clone(), &dir, timeout)
        .map_err(|source| BootError::Run { run: 0, source })?;
    let mut progress = Progress::new("boot", warmup + runs + memory_runs);
    let mut samples = Vec::with_capacity(runs);
    for run in 0..warmup + runs {
        progress.step("spry", run < warmup);
        let sample =
            boot_once(&spry, run, timeout).map_err(|source| BootError::Run { run, source })?;
        if run >= warmup {
            samples.push(sample);
        }
    }
    let mut memory = Vec::with_capacity(memory_runs);
    for run in 0..memory_runs {
        progress.step("spry idle", false);
        memory.push(
            own_memory(&spry, run, timeout).map_err(|source| BootError::Run { run, source })?,
        );
    }
    progress.done();
    Ok(BootReport {
        guest,
        runs,
        samples,
        memory,
    })
}
