//! Issue 5: spry side by side with a runc container, QEMU and Firecracker: start,
//! restart, memory, CPU per start, density and image size, every system given the
//! same warm-up and the same number of runs, alternated (A B C A B C ...).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::clock::{monotonic_us, ms_between};
use crate::guest::{Guest, GuestKind};
use crate::host::HostInfo;
use crate::procfs;
use crate::progress::Progress;
use crate::setup::{Env, SetupError};
use crate::systems::qemu::{qemu_binary, Qemu};
use crate::systems::runc::{build_bundle, find_program, Runc};
use crate::systems::vm::{VmSystem, Vmm};
use crate::systems::{
    check_exit, console_at_us, run_to_exit, ImageFile, Instance, Kind, Sandbox, SystemError,
    Workload,
};

/// Errors of the comparison.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// spry's guest did not pass its check boot.
    #[error("{0}")]
    SpryCheck(String),
    /// spry itself failed (peers that fail are listed, spry must run).
    #[error("spry failed in the {phase} phase")]
    Spry {
        /// Which phase.
        phase: &'static str,
        /// Why.
        #[source]
        source: SystemError,
    },
}

/// How much to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Measured runs per system and metric.
    pub runs: usize,
    /// Warm-up runs per system.
    pub warmup: usize,
    /// Density levels (concurrent idle sandboxes).
    pub density: Vec<usize>,
    /// Smoke-run mode.
    pub quick: bool,
    /// A Firecracker binary to compare with.
    pub firecracker: Option<PathBuf>,
    /// Skip QEMU.
    pub no_qemu: bool,
    /// A QEMU binary to use instead of the one found (see `qemu::find_qemu`).
    pub qemu: Option<PathBuf>,
}

/// One start: spawn to running signal, spawn to exit, CPU.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StartSample {
    /// Spawn to the running signal, ms.
    pub to_running_ms: f64,
    /// Spawn to the process's exit after the workload ended, ms.
    pub to_exit_ms: f64,
    /// VMs: spawn to the guest's first console line, ms (the signal every VMM has).
    pub to_console_ms: Option<f64>,
    /// User + system CPU of the process tree, ms.
    pub cpu_ms: f64,
}

/// Memory of one idle sandbox, MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemorySample {
    /// Rss of the sandbox's processes.
    pub rss_mib: f64,
    /// Pss of the sandbox's processes.
    pub pss_mib: f64,
    /// Rss outside guest RAM (the VMM's own; all of it for containers).
    pub own_rss_mib: f64,
    /// Pss outside guest RAM.
    pub own_pss_mib: f64,
    /// VMs: whether the guest-RAM mapping was found by its size (if not, the "own"
    /// figures include guest RAM); always false for containers, which have none.
    pub guest_mapping_found: bool,
}

/// K idle sandboxes at once.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DensityPoint {
    /// How many.
    pub k: usize,
    /// First spawn to the last running signal, ms.
    pub launch_ms: f64,
    /// Sandboxes per second over that time.
    pub launch_per_s: f64,
    /// Pss of all of them / K, MiB.
    pub pss_per_instance_mib: f64,
    /// Rss of all of them / K, MiB.
    pub rss_per_instance_mib: f64,
    /// Drop of the host's MemAvailable / K, MiB (includes kernel memory).
    pub host_mem_per_instance_mib: f64,
}

/// Everything measured for one system.
#[derive(Debug, Serialize)]
pub struct SystemResult {
    /// Table name.
    pub name: String,
    /// Headline phrase.
    pub phrase: String,
    /// VM or container.
    pub kind: Kind,
    /// Runtime version.
    pub version: String,
    /// VMs: how the VMM enters the guest kernel.
    pub boot_entry: Option<String>,
    /// Exact commands: run-to-exit, attached idle, idle.
    pub commands: Vec<(String, String)>,
    /// Start runs.
    pub start: Vec<StartSample>,
    /// Restart runs: stop request to the replacement's running signal, ms.
    pub restart_ms: Vec<f64>,
    /// VMs, the same restart runs: stop request to the replacement guest's first
    /// console line, ms (the signal every VMM has).
    pub restart_console_ms: Vec<f64>,
    /// Idle memory runs.
    pub memory: Vec<MemorySample>,
    /// Density levels.
    pub density: Vec<DensityPoint>,
    /// What it needs on disk.
    pub image: Vec<ImageFile>,
}

/// A peer that could not take part, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    /// The peer.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The whole comparison.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// The host.
    pub host: HostInfo,
    /// The guest of the VM rows.
    pub guest: Guest,
    /// The spry binary.
    pub spry: PathBuf,
    /// What was asked.
    pub settings: Settings,
    /// Systems that ran (spry first).
    pub systems: Vec<SystemResult>,
    /// Peers that did not.
    pub unavailable: Vec<Unavailable>,
    /// Density levels dropped for lack of memory.
    pub density_capped: Vec<String>,
    /// Things the reader should know.
    pub notes: Vec<String>,
}

static TAGS: AtomicUsize = AtomicUsize::new(1);

fn tag() -> usize {
    TAGS.fetch_add(1, Ordering::Relaxed)
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `workload` once, to exit.
fn start_sample(system: &dyn Sandbox) -> Result<StartSample, SystemError> {
    let (instance, exit) = run_to_exit(system, tag(), TIMEOUT)?;
    let spawned = instance.process.spawned_us;
    Ok(StartSample {
        to_running_ms: ms_between(spawned, instance.running_us),
        to_exit_ms: ms_between(spawned, exit.at_us),
        to_console_ms: console_at_us(system, &instance).map(|at| ms_between(spawned, at)),
        cpu_ms: exit.cpu_ms(),
    })
}

/// Stops `current` (an attached idle instance) and starts its replacement: the time
/// from the stop request to the replacement's running signal, and (VMs) to its
/// guest's first console line, ms.
fn restart_sample(
    system: &dyn Sandbox,
    current: &mut Instance,
) -> Result<(f64, Option<f64>), SystemError> {
    let asked = monotonic_us();
    let exit = system.stop(current, TIMEOUT)?;
    check_exit(system.name(), &exit, &current.process)?;
    // `start` of an idle VM returns once the guest printed its idle line, so the
    // console line is among the lines read by then.
    let next = system.start(Workload::IdleAttached, tag())?;
    let running = ms_between(asked, next.running_us);
    let console = console_at_us(system, &next).map(|at| ms_between(asked, at));
    *current = next;
    Ok((running, console))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Settling time before idle memory is read (lazy page faults, runc's exit).
const SETTLE: Duration = Duration::from_millis(100);

fn memory_sample(system: &dyn Sandbox) -> Result<MemorySample, SystemError> {
    let mut instance = system.start(Workload::Idle, tag())?;
    std::thread::sleep(SETTLE);
    let memory = system.memory(&instance);
    let exit = system.stop(&mut instance, TIMEOUT);
    let memory = memory?;
    exit?;
    Ok(MemorySample {
        rss_mib: mib(memory.rss_kib),
        pss_mib: mib(memory.pss_kib),
        own_rss_mib: mib(memory.own_rss_kib()),
        own_pss_mib: mib(memory.own_pss_kib()),
        guest_mapping_found: memory.guest_mapping_found,
    })
}

pub(crate) fn density_point(system: &dyn Sandbox, k: usize) -> Result<DensityPoint, SystemError> {
    let available_before = procfs::mem_available_kib()?;
    let first_spawn = monotonic_us();
    let started: Vec<Result<Instance, SystemError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..k)
            .map(|_| scope.spawn(|| system.start(Workload::Idle, tag())))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SystemError::Command {
                        command: "start".into(),
                        detail: "a launcher thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut instances = Vec::with_capacity(k);
    let mut failure = None;
    for result in started {
        match result {
            Ok(instance) => instances.push(instance),
            Err(e) => failure = Some(e),
        }
    }
    let measured = match failure {
        Some(e) => Err(e),
        None => measure_density(system, k, first_spawn, available_before, &instances),
    };
    std::thread::scope(|scope| {
        for instance in instances.iter_mut() {
            scope.spawn(|| {
                let _ = system.stop(instance, TIMEOUT);
            });
        }
    });
    measured
}

fn measure_density(
    system: &dyn Sandbox,
    k: usize,
    first_spawn: u64,
    available_before: u64,
    instances: &[Instance],
) -> Result<DensityPoint, SystemError> {
    let last_running = instances
        .iter()
        .map(|i| i.running_us)
        .max()
        .unwrap_or(first_spawn);
    std::thread::sleep(SETTLE);
    let mut total = procfs::MemoryUse::default();
    for instance in instances {
        total.add(system.memory(instance)?);
    }
    let available_after = procfs::mem_available_kib()?;
    let launch_ms = ms_between(first_spawn, last_running);
    let per = |kib: u64| mib(kib) / k as f64;
    Ok(DensityPoint {
        k,
        launch_ms,
        launch_per_s: k as f64 / (launch_ms / 1000.0).max(1e-6),
        pss_per_instance_mib: per(total.pss_kib),
        rss_per_instance_mib: per(total.rss_kib),
        host_mem_per_instance_mib: per(available_before.saturating_sub(available_after)),
    })
}

/// The systems that run, and the peers that cannot (with the reason).
type Roster = (Vec<Box<dyn Sandbox>>, Vec<Unavailable>);

/// The systems that run here, and the peers that cannot, with the reason.
fn systems(env: &Env, guest: &Guest, settings: &Settings) -> Result<Roster, CompareError> {
    let dir = env.scratch_dir("compare")?;
    let spry = VmSystem::new(Vmm::Spry, env.spry.clone(), guest.clone(), &dir, TIMEOUT).map_err(
        |source| CompareError::Spry {
            phase: "setup",
            source,
        },
    )?;
    spry.check().map_err(CompareError::SpryCheck)?;
    let mut systems: Vec<Box<dyn Sandbox>> = vec![Box::new(spry)];
    let mut unavailable = Vec::new();
    let mut add = |name: &str, peer: Result<Box<dyn Sandbox>, String>| match peer {
        Ok(system) => systems.push(system),
        Err(reason) => unavailable.push(Unavailable {
            name: name.to_owned(),
            reason,
        }),
    };
    add(
        "runc",
        runc(env, &dir).map(|r| Box::new(r) as Box<dyn Sandbox>),
    );
    add(
        "QEMU",
        qemu(guest, settings).map(|q| Box::new(q) as Box<dyn Sandbox>),
    );
    add(
        "Firecracker",
        firecracker(guest, settings, &dir).map(|f| Box::new(f) as Box<dyn Sandbox>),
    );
    Ok((systems, unavailable))
}

/// QEMU, if it is installed and boots the guest.
fn qemu(guest: &Guest, settings: &Settings) -> Result<Qemu, String> {
    if settings.no_qemu {
        return Err("skipped (--no-qemu)".into());
    }
    let binary = qemu_binary(settings.qemu.as_deref(), "kvm")?;
    Qemu::new(binary.clone(), guest.clone(), Duration::from_secs(5)).check()?;
    Ok(Qemu::new(binary, guest.clone(), TIMEOUT))
}

/// Firecracker, if there is a binary and its guest passes the check boot.
fn firecracker(
    guest: &Guest,
    settings: &Settings,
    dir: &std::path::Path,
) -> Result<VmSystem, String> {
    let binary = settings.firecracker.clone().ok_or(format!(
        "no Firecracker binary on this machine (none at {}); pass --firecracker PATH to \
         include it",
        crate::setup::default_firecracker().display()
    ))?;
    let fc = VmSystem::new(
        Vmm::Firecracker,
        binary.clone(),
        guest.clone(),
        dir,
        TIMEOUT,
    )
    .map_err(|e| format!("{}: {e}", binary.display()))?;
    fc.check()?;
    Ok(fc)
}

pub(crate) fn runc(env: &Env, dir: &std::path::Path) -> Result<Runc, String> {
    let Some(binary) = find_program("runc") else {
        return Err("runc is not installed (Debian package runc)".into());
    };
    env.ensure_guest().map_err(|e| e.to_string())?;
    let cpio = env.build.join("guest/initramfs.cpio");
    let bundle = build_bundle(&binary, &cpio, dir).map_err(|e| e.to_string())?;
    let prefix = format!("spry-bench-{}", std::process::id());
    let runc = Runc::new(binary, bundle, prefix, TIMEOUT);
    start_sample(&runc)
        .map(|_| ())
        .map_err(|e| format!("a trial container did not run: {e}"))?;
    Ok(runc)
}

/// Which systems are still in the comparison: a peer that fails a phase is dropped
/// and listed with the reason; spry (system 0) failing ends the run.
struct Roll {
    names: Vec<String>,
    alive: Vec<bool>,
    dropped: Vec<Unavailable>,
}

impl Roll {
    fn new(systems: &[Box<dyn Sandbox>]) -> Roll {
        Roll {
            names: systems.iter().map(|s| s.name().to_owned()).collect(),
            alive: vec![true; systems.len()],
            dropped: Vec::new(),
        }
    }

    fn alive(&self, index: usize) -> bool {
        self.alive[index]
    }

    /// The value of system `index`'s `result` in `phase`, or `None` once it failed.
    fn take<T>(
        &mut self,
        index: usize,
        phase: &'static str,
        result: Result<T, SystemError>,
    ) -> Result<Option<T>, CompareError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(source) if index == 0 => Err(CompareError::Spry { phase, source }),
            Err(e) => {
                self.alive[index] = false;
                self.dropped.push(Unavailable {
                    name: self.names[index].clone(),
                    reason: format!("failed in the {phase} phase: {e}"),
                });
                Ok(None)
            }
        }
    }
}

/// Runs the whole comparison.
pub fn run(env: &Env, settings: Settings) -> Result<Comparison, CompareError> {
    env.ensure_probe()?;
    let guest = Guest::for_host(env.host.kvm, &env.build, 128);
    if guest.kind == GuestKind::Linux {
        env.ensure_guest()?;
    }
    eprintln!("spry-bench: checking which peers run here");
    let (systems, mut unavailable) = self::systems(env, &guest, &settings)?;
    let mut results: Vec<SystemResult> = systems
        .iter()
        .map(|s| SystemResult {
            name: s.name().to_owned(),
            phrase: s.phrase(),
            kind: s.kind(),
            version: s.version(),
            boot_entry: s.boot_entry(),
            commands: [
                ("run to exit", Workload::RunToExit),
                ("idle (restart)", Workload::IdleAttached),
                ("idle (memory, density)", Workload::Idle),
            ]
            .iter()
            .map(|(what, w)| ((*what).to_owned(), s.command_line(*w)))
            .collect(),
            start: Vec::new(),
            restart_ms: Vec::new(),
            restart_console_ms: Vec::new(),
            memory: Vec::new(),
            density: Vec::new(),
            image: s.image(),
        })
        .collect();
    let mut roll = Roll::new(&systems);

    // Start: warm-up, then N alternated runs.
    let mut progress = Progress::new("start", systems.len() * (settings.warmup + settings.runs));
    for run in 0..settings.warmup + settings.runs {
        for (i, system) in systems.iter().enumerate() {
            if !roll.alive(i) {
                continue;
            }
            progress.step(system.name(), run < settings.warmup);
            let sample = roll.take(i, "start", start_sample(system.as_ref()))?;
            if let Some(sample) = sample.filter(|_| run >= settings.warmup) {
                results[i].start.push(sample);
            }
        }
    }
    progress.done();

    // Restart: stop an attached idle instance, start its replacement.
    let mut progress = Progress::new("restart", systems.len() * settings.runs);
    let mut current: Vec<Option<Instance>> = Vec::with_capacity(systems.len());
    for (i, system) in systems.iter().enumerate() {
        let started = system.start(Workload::IdleAttached, tag());
        current.push(roll.take(i, "restart", started)?);
    }
    for _ in 0..settings.runs {
        for (i, system) in systems.iter().enumerate() {
            let Some(instance) = current[i].as_mut().filter(|_| roll.alive(i)) else {
                continue;
            };
            progress.step(system.name(), false);
            let sample = restart_sample(system.as_ref(), instance);
            if let Some((running, console)) = roll.take(i, "restart", sample)? {
                results[i].restart_ms.push(running);
                results[i].restart_console_ms.extend(console);
            }
        }
    }
    for (system, instance) in systems.iter().zip(current.iter_mut()) {
        if let Some(mut instance) = instance.take() {
            let _ = system.stop(&mut instance, TIMEOUT);
        }
    }
    progress.done();

    // Memory of one idle sandbox.
    let mut progress = Progress::new("memory", systems.len() * settings.runs);
    for _ in 0..settings.runs {
        for (i, system) in systems.iter().enumerate() {
            if !roll.alive(i) {
                continue;
            }
            progress.step(system.name(), false);
            if let Some(sample) = roll.take(i, "memory", memory_sample(system.as_ref()))? {
                results[i].memory.push(sample);
            }
        }
    }
    progress.done();

    // Density, capped by memory.
    let (levels, density_capped) = density_levels(&settings.density, &results)?;
    let mut progress = Progress::new("density", systems.len() * levels.len());
    for &k in &levels {
        for (i, system) in systems.iter().enumerate() {
            if !roll.alive(i) {
                continue;
            }
            progress.step(&format!("{} x{k}", system.name()), false);
            if let Some(point) = roll.take(i, "density", density_point(system.as_ref(), k))? {
                results[i].density.push(point);
            }
        }
    }
    progress.done();
    unavailable.extend(roll.dropped);

    let mut notes = vec![
        "Restart = stop + start: spry exits when the guest resets (no in-process restart yet), \
         so a restart is the guest's own reboot request (console input that makes it reset), \
         spry's exit, and a fresh spry process until its guest's boot-timer write; for the \
         container, EOF on the init's stdin ends it, runc exits, and a fresh `runc run` runs \
         until its init's running line."
            .to_owned(),
        "Running signal: spry — the guest's boot-timer write, which spry logs with a \
         CLOCK_MONOTONIC stamp; Firecracker — the same write (its `--boot-timer` device \
         sits at the same MMIO address, 0xc000_0000), whose `Guest-boot-time` log line has \
         no such stamp and is timed when it arrives; QEMU (no boot-timer device: the \
         guest's write lands in unassigned MMIO) — the guest's first console line, timed \
         when it arrives; container — the \
         init's `spry-bench: running` line on stdout, timed when it arrives. spry against a \
         VM peer is judged on the first console line for both (\"start → console\" and \
         \"stop + start → console\", in the headline sentences and the aims), which comes a \
         little after the boot-timer write; against the container on its boot-timer write \
         (\"start → running\", \"stop + start → running\"). The plots show spry both ways."
            .to_owned(),
        "Memory: Rss/Pss summed over /proc/<pid>/smaps of the sandbox's processes while it \
         idles (the VMM process, including the guest memory it touched; for the container, \
         its init's process tree; runc itself has exited: the container runs detached, which \
         is the lightest a runc container gets; Docker would add a containerd-shim per \
         container). \"Own\" excludes the guest-RAM mapping, found by its size; \
         where it was not found the own figures include guest RAM and are marked so."
            .to_owned(),
        "CPU per start: user + system time of the started process and everything it reaped \
         (wait4 rusage), from spawn to exit. Under PVM this includes the guest itself, run by \
         KVM's instruction emulator in the VMM's vCPU thread."
            .to_owned(),
    ];
    if results.iter().any(|r| r.name == "QEMU") {
        notes.push(
            "QEMU: Debian's qemu-system-x86_64-microvm when installed (the microvm-only build \
             of the same QEMU: KVM only, far fewer shared libraries, so it starts faster and \
             maps less than qemu-system-x86_64; --qemu PATH picks another); -M microvm with \
             its shipped qboot firmware, no option ROMs, no ACPI, no RTC, -nodefaults \
             -no-user-config, the serial console on stdio, -no-reboot so the guest's reset \
             ends QEMU; no -cpu host (on PVM QEMU aborts setting MSR 0x10a); it boots the \
             same vmlinux as spry, through its PVH entry (see \"Guest entry per VMM\")."
                .to_owned(),
        );
        if guest.kind == GuestKind::Probe {
            notes.push(
                "QEMU with the probe: also -device i8042 (microvm has none; the probe resets \
                 through it). Before the runs QEMU booted the probe once with its full output \
                 (the same command line without probe.quiet=1) and had to enter through PVH \
                 (its pvh-entry check) and pass every check."
                    .to_owned(),
            );
        }
    }
    notes.push(
        "Check boot: before any measured run every VMM booted the guest once with its full \
         output (the probe: the same command line without probe.quiet=1) and had to pass \
         every check; a VMM that did not is listed under \"Not compared\" with the failing \
         checks and is in no headline."
            .to_owned(),
    );
    if results.iter().any(|r| r.name == "Firecracker") {
        notes.push(
            "Firecracker: `--no-api --boot-timer --level Info --config-file` with the same \
             config file as spry; the binary given (by default ../shared/peers/firecracker \
             next to the repository) is the project's static build of v1.16.1, whose default \
             seccomp filter is empty (no policy for the gnu target): it runs unconfined, as \
             spry does today, so neither pays for a filter."
                .to_owned(),
        );
    }
    if env.spry_is_debug() {
        notes.push(format!(
            "spry is a debug build ({}): not representative",
            env.spry.display()
        ));
    }
    Ok(Comparison {
        host: env.host.clone(),
        guest,
        spry: env.spry.clone(),
        settings,
        systems: results,
        unavailable,
        density_capped,
        notes,
    })
}

/// Headroom: density may use at most this share of MemAvailable.
const DENSITY_MEMORY_SHARE: f64 = 0.5;

/// The density levels that fit in half of the host's available memory, judged by the
/// largest per-instance Rss measured, and the levels dropped (with why).
fn density_levels(
    wanted: &[usize],
    results: &[SystemResult],
) -> Result<(Vec<usize>, Vec<String>), CompareError> {
    let available_mib = mib(procfs::mem_available_kib().map_err(|e| CompareError::Spry {
        phase: "density",
        source: e.into(),
    })?);
    let per_instance = results
        .iter()
        .flat_map(|r| r.memory.iter().map(|m| m.rss_mib))
        .fold(1.0, f64::max);
    Ok(cap_levels(
        wanted,
        available_mib * DENSITY_MEMORY_SHARE,
        per_instance,
    ))
}

/// Keeps the levels whose `k * per_instance_mib` fits in `budget_mib`.
pub fn cap_levels(
    wanted: &[usize],
    budget_mib: f64,
    per_instance_mib: f64,
) -> (Vec<usize>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for &k in wanted {
        let need = k as f64 * per_instance_mib;
        if need <= budget_mib {
            kept.push(k);
        } else {
            dropped.push(format!(
                "K={k}: needs ~{need:.0} MiB ({per_instance_mib:.1} MiB each), more than the \
                 {budget_mib:.0} MiB budget (half of MemAvailable)"
            ));
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_density_levels_beyond_the_budget_are_dropped() {
        let (kept, dropped) = cap_levels(&[10, 50, 100], 1000.0, 12.0);
        assert_eq!(kept, vec![10, 50]);
        assert_eq!(dropped.len(), 1);
        assert!(
            dropped[0].starts_with("K=100: needs ~1200 MiB"),
            "{}",
            dropped[0]
        );
    }
}
