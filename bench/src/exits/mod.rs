//! Issue 9, item 8: VM exits of a Linux boot to init, by kind, under spry, QEMU
//! (microvm) and Firecracker. The number of exits does not depend on how fast the
//! CPU is: it is what a boot costs on real hardware, so it can be measured where
//! timings mean little, in the nested host (L1: kvm_amd under QEMU's TCG emulator).
//!
//! Each VMM boots the project's Linux guest with the same kernel command line; the
//! guest's init prints a marker and waits; when the marker arrives, KVM's per-VM
//! debugfs counters (`/sys/kernel/debug/kvm/<pid>-<fd>/`, gone once the VM is) are
//! read and the VMM is killed.

pub mod debugfs;
pub mod mapping;
pub mod report;
pub mod trace;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::child::{ChildError, Line, Measured};
use crate::clock::ms_between;
use crate::compare::Unavailable;
use crate::guest::{form_urlencode, Guest};
use crate::host::{HostInfo, KvmFlavour};
use crate::nested;
use crate::progress::Progress;
use crate::setup::{Env, SetupError};
use crate::systems::qemu::{qemu_binary, Qemu};
use crate::systems::vm::{vm_config, vmm_command, write_json, Vmm};
use crate::systems::{version_line, SystemError};

/// The line the guest prints when init is reached.
pub const MARKER: &str = "spry-bench-exits-ready";

/// The kernel command line every VMM gets (each adds what its devices need).
pub const BASE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux \
                             i8042.nomux i8042.nopnp i8042.dumbkbd";

/// One boot in L1 takes 5-60 s (every instruction of L1 is emulated, the other
/// core may be busy); this much means the guest is stuck (in the nested host one
/// now and then waits for an interrupt that never comes).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Errors of the exits benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ExitsError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// This host cannot measure, nor hand the work to the nested host.
    #[error("{0}")]
    Host(String),
    /// spry itself failed (peers that fail are listed; spry must run).
    #[error("spry failed ({case})")]
    Spry {
        /// Which case and boot.
        case: String,
        /// Why.
        #[source]
        source: Box<BootError>,
    },
    /// The nested host could not run the measurement.
    #[error("the measurement in the nested host failed: {0}")]
    Nested(String),
    /// The report could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why one boot gave no counts.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VMM could not be started or configured.
    #[error(transparent)]
    System(#[from] SystemError),
    /// The marker did not come.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The counters could not be read.
    #[error(transparent)]
    Debugfs(#[from] debugfs::DebugfsError),
    /// The guest is not the one asked for.
    #[error("{0}")]
    Guest(String),
}

/// How the guest finds its root file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Root {
    /// build/guest/initramfs.cpio as the initrd, no devices at all.
    Initrd,
    /// build/guest/rootfs.ext4 as a read-only virtio-blk root drive.
    Drive,
}

/// Whether the kernel prints its boot log on the serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    /// The whole boot log (the command line as given, no `quiet`).
    Full,
    /// `quiet` added: the kernel prints warnings and errors only.
    Quiet,
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Measured boots per VMM and case (after its check boot).
    pub runs: usize,
    /// Times a failed boot is tried again before its VMM is dropped from the case.
    pub retries: usize,
    /// vCPU counts.
    pub vcpus: Vec<u8>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Root file system variants.
    pub roots: Vec<Root>,
    /// Kernel log variants.
    pub kernel_logs: Vec<KernelLog>,
    /// A Firecracker binary to include.
    pub firecracker: Option<PathBuf>,
    /// A QEMU binary to use instead of the one found.
    pub qemu: Option<PathBuf>,
    /// Leave QEMU out.
    pub no_qemu: bool,
    /// Break each check boot down by tracepoints.
    pub trace: bool,
    /// Output directory (default <build>/bench).
    pub out: Option<PathBuf>,
    /// The nested host's launcher (default <repo>/tools/nested/nested-host).
    pub nested_host: Option<PathBuf>,
}

/// One guest configuration every VMM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Case {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Initrd or root drive.
    pub root: Root,
    /// Full or quiet kernel log.
    pub kernel_log: KernelLog,
}

impl Case {
    /// "1 vCPU, 256 MiB, initrd, full kernel log".
    pub fn label(&self) -> String {
        let plural = if self.vcpus == 1 { "" } else { "s" };
        let root = match self.root {
            Root::Initrd => "initrd, no devices",
            Root::Drive => "virtio-blk root drive",
        };
        let log = match self.kernel_log {
            KernelLog::Full => "full kernel log",
            KernelLog::Quiet => "quiet kernel",
        };
        format!(
            "{} vCPU{plural}, {} MiB, {root}, {log}",
            self.vcpus, self.mem_mib
        )
    }

    /// "1cpu-initrd-full", for file names.
    pub fn slug(&self) -> String {
        let root = match self.root {
            Root::Initrd => "initrd",
            Root::Drive => "drive",
        };
        let log = match self.kernel_log {
            KernelLog::Full => "full",
            KernelLog::Quiet => "quiet",
        };
        format!("{}cpu-{root}-{log}", self.vcpus)
    }

    /// The kernel command line: [`BASE_ARGS`], `quiet` for a quiet case (unless
    /// `full_output`, as in the check boot), and init's run mode printing the marker
    /// and then waiting on the console.
    pub fn boot_args(&self, full_output: bool) -> String {
        let quiet = if self.kernel_log == KernelLog::Quiet && !full_output {
            " quiet"
        } else {
            ""
        };
        let cmd = form_urlencode(&format!("echo {MARKER}; read x"));
        format!("{BASE_ARGS}{quiet} spry.mode=run spry.cmd={cmd}")
    }
}

/// Every combination of the settings' variants, by root, kernel log, then vCPUs.
pub fn cases(settings: &Settings) -> Vec<Case> {
    let mut cases = Vec::new();
    for &root in &settings.roots {
        for &kernel_log in &settings.kernel_logs {
            for &vcpus in &settings.vcpus {
                cases.push(Case {
                    vcpus,
                    mem_mib: settings.mem_mib,
                    root,
                    kernel_log,
                });
            }
        }
    }
    cases
}

/// Whether `line` carries the marker as a word of its own (the kernel's echo of
/// its command line holds it inside `spry.cmd=...`).
pub fn is_marker(line: &str) -> bool {
    line.split_whitespace().any(|w| w == MARKER)
}

/// The CPU count in init's `spry-guest: init running cpus=N ...` line.
pub fn init_cpus(line: &str) -> Option<u32> {
    let rest = line.split("spry-guest: init running ").nth(1)?;
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix("cpus="))?
        .parse()
        .ok()
}

/// The command line the kernel says it was given (its `Command line: ` line).
pub fn kernel_command_line(line: &str) -> Option<&str> {
    let (before, args) = line.split_once("Command line: ")?;
    (!before.contains("Kernel")).then(|| args.trim())
}

/// The kernel's warnings and errors among a boot's lines (their first lines): a
/// warning's register dump and backtrace go through the serial console too, so the
/// counts of a boot that warned are not the plain boot's.
pub fn kernel_warnings(lines: &[Line]) -> Vec<String> {
    const SIGNS: [&str; 5] = ["WARNING:", "BUG:", "Oops", "Kernel panic", "Call Trace"];
    lines
        .iter()
        .filter(|l| SIGNS.iter().any(|s| l.text.contains(s)))
        .filter(|l| !l.text.contains("Call Trace"))
        .map(|l| l.text.clone())
        .collect()
}

/// Where to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// Here: KVM has hardware virtualization.
    Here,
    /// In the nested host (tools/nested/nested-host), which has.
    Nested,
}

/// Where to measure on a host whose KVM is `flavour`; `nested` (the machine under
/// it) says whether this is the nested host already (then anything but hardware KVM
/// is an error, not a reason to nest again).
pub fn where_to_measure(flavour: KvmFlavour, nested: Option<&str>) -> Result<Where, String> {
    match (flavour, nested) {
        (KvmFlavour::Hardware, _) => Ok(Where::Here),
        (other, Some(outer)) => Err(format!(
            "this is the nested host (on {outer}), but its /dev/kvm is {}: cannot measure a \
             Linux boot here",
            other.describe()
        )),
        (_, None) => Ok(Where::Nested),
    }
}

/// A VMM that boots the guest.
#[derive(Debug, Clone)]
pub enum Engine {
    /// spry.
    Spry(PathBuf),
    /// QEMU, `-M microvm`, `-cpu host`.
    Qemu(PathBuf),
    /// Firecracker.
    Firecracker(PathBuf),
}

impl Engine {
    /// Its name in tables.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Spry(_) => "spry",
            Engine::Qemu(_) => "QEMU",
            Engine::Firecracker(_) => "Firecracker",
        }
    }

    fn binary(&self) -> &Path {
        match self {
            Engine::Spry(b) | Engine::Qemu(b) | Engine::Firecracker(b) => b,
        }
    }

    /// The command booting `guest` (with `initrd`, if given) with `boot_args`;
    /// spry's and Firecracker's config is written into `dir`.
    pub fn command(
        &self,
        guest: &Guest,
        initrd: Option<&Path>,
        boot_args: &str,
        dir: &Path,
    ) -> Result<Command, SystemError> {
        let vmm = match self {
            Engine::Qemu(binary) => {
                let mut qemu =
                    Qemu::new(binary.clone(), guest.clone(), BOOT_TIMEOUT).with_cpu("host");
                if let Some(initrd) = initrd {
                    qemu = qemu.with_initrd(initrd);
                }
                return Ok(qemu.command_with(boot_args, &[]));
            }
            Engine::Spry(_) => Vmm::Spry,
            Engine::Firecracker(_) => Vmm::Firecracker,
        };
        let none = serde_json::json!([]);
        let mut config = vm_config(guest, boot_args, none.clone(), none);
        if let Some(initrd) = initrd {
            config["boot-source"]["initrd_path"] = serde_json::json!(initrd);
        }
        let path = dir.join(format!("{}.json", self.name().to_lowercase()));
        write_json(&path, &config)?;
        Ok(vmm_command(vmm, self.binary(), &path))
    }
}

/// `program arg arg ...`, quoting arguments with spaces.
pub fn command_text(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        if arg.contains(' ') {
            text.push_str(&format!("'{arg}'"));
        } else {
            text.push_str(&arg);
        }
    }
    text
}

/// One boot's counters.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    /// The VM's debugfs directory, `<pid>-<fd>`.
    pub vm_dir: String,
    /// Every counter KVM offered, at the marker.
    pub counters: BTreeMap<String, u64>,
    /// Spawn to the marker's arrival, ms (in the nested host: emulated time).
    pub to_marker_ms: f64,
}

/// A boot and what its output said.
#[derive(Debug)]
struct Booted {
    boot: Boot,
    lines: Vec<Line>,
    breakdown: Option<trace::Breakdown>,
    mapping: Option<mapping::GuestMapping>,
}

/// The guest for `case`: the project's Linux guest with the case's vCPUs and memory,
/// its root drive only for [`Root::Drive`].
fn guest_for(env: &Env, case: &Case) -> (Guest, Option<PathBuf>) {
    let mut guest = Guest::linux(&env.build, case.mem_mib);
    guest.vcpus = case.vcpus;
    match case.root {
        Root::Initrd => {
            guest.rootfs = None;
            (guest, Some(env.build.join("guest/initramfs.cpio")))
        }
        Root::Drive => (guest, None),
    }
}

/// Boots `engine` once: waits for the marker, reads the VM's counters (and, with a
/// tracer, the tracepoint histograms), kills the VMM, checks the guest's CPU count.
fn boot_once(
    engine: &Engine,
    env: &Env,
    case: &Case,
    full_output: bool,
    dir: &Path,
    trace: bool,
) -> Result<Booted, BootError> {
    let (guest, initrd) = guest_for(env, case);
    let cmd = engine.command(&guest, initrd.as_deref(), &case.boot_args(full_output), dir)?;
    let tracer = if trace {
        trace::Tracer::start().ok()
    } else {
        None
    };
    let mut process = Measured::spawn(cmd, true).map_err(SystemError::from)?;
    let marker = process.wait_for("the marker line", BOOT_TIMEOUT, |l| {
        is_marker(&l.text).then_some(())
    });
    let stats = marker
        .as_ref()
        .ok()
        .map(|_| debugfs::vm_stats(Path::new(debugfs::KVM_DEBUGFS), process.pid()));
    let breakdown = tracer.as_ref().map(trace::Tracer::read);
    drop(tracer);
    let mapping = full_output
        .then(|| mapping::guest_mapping(process.pid(), u64::from(case.mem_mib) * 1024))
        .flatten();
    process.kill();
    let ((), at_us) = marker?;
    let stats = stats.expect("read when the marker came")?;
    let cpus = process.lines.iter().find_map(|l| init_cpus(&l.text));
    if cpus != Some(u32::from(case.vcpus)) {
        return Err(BootError::Guest(format!(
            "the guest's init saw {} CPUs, not {}",
            cpus.map_or("no".into(), |c| c.to_string()),
            case.vcpus
        )));
    }
    Ok(Booted {
        boot: Boot {
            vm_dir: stats.dir,
            counters: stats.counters,
            to_marker_ms: ms_between(process.spawned_us, at_us),
        },
        lines: std::mem::take(&mut process.lines),
        breakdown,
        mapping,
    })
}

/// One VMM's boots of one case.
#[derive(Debug, Clone, Serialize)]
pub struct VmmResult {
    /// "spry", "QEMU", "Firecracker".
    pub system: String,
    /// The command of its measured boots.
    pub command: String,
    /// The command line its guest kernel reported (check boot).
    pub guest_cmdline: Option<String>,
    /// The guest kernel's warnings and errors in the check boot.
    pub kernel_warnings: Vec<String>,
    /// Where the VMM mapped guest RAM (check boot).
    pub guest_mapping: Option<mapping::GuestMapping>,
    /// The check boot (full output; not in the medians).
    pub check: Boot,
    /// Its tracepoint breakdown, if traced.
    pub breakdown: Option<trace::Breakdown>,
    /// The measured boots.
    pub boots: Vec<Boot>,
    /// Boots that failed and were tried again, and why.
    pub failed_boots: Vec<String>,
}

/// Every VMM's boots of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The guest configuration.
    pub case: Case,
    /// "1 vCPU, 256 MiB, ...".
    pub label: String,
    /// The kernel command line of the measured boots (before what each VMM adds).
    pub boot_args: String,
    /// The VMMs that booted it, spry first.
    pub results: Vec<VmmResult>,
    /// Peers that did not, and why.
    pub not_compared: Vec<Unavailable>,
}

/// Where the measurement ran.
#[derive(Debug, Clone, Serialize)]
pub struct Place {
    /// The host that ran the VMs (L1 in the nested host).
    pub host: HostInfo,
    /// `kvm_amd` or `kvm_intel`.
    pub kvm_module: String,
    /// In the nested host: the machine it runs on, as the outer spry-bench
    /// described it.
    pub outer_host: Option<String>,
    /// In the nested host: the launcher the outer spry-bench ran.
    pub launcher: Option<PathBuf>,
}

/// The whole exits benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ExitsReport {
    /// Where it ran.
    pub place: Place,
    /// What was asked.
    pub settings: Settings,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// VMM versions.
    pub versions: Vec<(String, String)>,
    /// Why no tracepoint breakdown, if asked for and not possible.
    pub trace_problem: Option<String>,
    /// Per case.
    pub cases: Vec<CaseResult>,
    /// Peers that were not run at all, and why.
    pub unavailable: Vec<Unavailable>,
}

/// The VMMs to run and the peers that cannot run, with the reason.
fn engines(env: &Env, settings: &Settings) -> (Vec<Engine>, Vec<Unavailable>) {
    let mut engines = vec![Engine::Spry(env.spry.clone())];
    let mut unavailable = Vec::new();
    let mut missing = |name: &str, reason: String| {
        unavailable.push(Unavailable {
            name: name.to_owned(),
            reason,
        });
    };
    if settings.no_qemu {
        missing("QEMU", "skipped (--no-qemu)".into());
    } else {
        match qemu_binary(settings.qemu.as_deref(), "kvm") {
            Ok(binary) => engines.push(Engine::Qemu(binary)),
            Err(why) => missing("QEMU", why),
        }
    }
    match &settings.firecracker {
        Some(path) if path.is_file() => engines.push(Engine::Firecracker(path.clone())),
        Some(path) => missing(
            "Firecracker",
            format!("no Firecracker binary at {}", path.display()),
        ),
        None => missing(
            "Firecracker",
            "no binary given; pass --firecracker PATH to include it".into(),
        ),
    }
    (engines, unavailable)
}

fn kvm_module() -> String {
    ["kvm_amd", "kvm_intel", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .unwrap_or("unknown")
        .to_owned()
}

/// Writes the console of a check boot next to the report.
fn save_console(out: &Path, case: &Case, system: &str, lines: &[Line]) {
    let path = out.join(format!(
        "exits-console-{}-{}.txt",
        case.slug(),
        system.to_lowercase()
    ));
    let text: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    // The console copy is an aid for reading the report, never a reason to fail it.
    let _ = std::fs::write(path, text);
}

/// Measures here (KVM with hardware virtualization): every case, every VMM.
pub fn measure(env: &Env, settings: &Settings, out: &Path) -> Result<ExitsReport, ExitsError> {
    env.ensure_guest()?;
    if std::env::var_os(nested::NESTED_ENV).is_some() {
        // L1's own kernel: let its warnings (soft lockups with their backtraces, KVM's
        // complaints) reach the console, where the nested host's quiet command line
        // keeps only errors. Only a diagnostic aid: a failure changes nothing.
        let _ = std::fs::write("/proc/sys/kernel/printk", "5");
    }
    std::fs::create_dir_all(out).map_err(|source| ExitsError::Write {
        path: out.to_owned(),
        source,
    })?;
    let dir = env.scratch_dir("exits")?;
    let (engines, unavailable) = engines(env, settings);
    let trace_problem = if settings.trace {
        trace::Tracer::start().err()
    } else {
        None
    };
    let trace = settings.trace && trace_problem.is_none();
    let cases = cases(settings);
    let mut progress = Progress::new("exits", cases.len() * engines.len() * (settings.runs + 1));
    let mut results = Vec::new();
    for case in &cases {
        results.push(measure_case(
            env,
            case,
            &engines,
            settings,
            trace,
            &dir,
            out,
            &mut progress,
        )?);
    }
    progress.done();
    Ok(ExitsReport {
        place: Place {
            host: env.host.clone(),
            kvm_module: kvm_module(),
            outer_host: std::env::var(nested::NESTED_ENV).ok(),
            launcher: std::env::var_os(nested::NESTED_ENV)
                .map(|_| nested_launcher(&env.repo, settings)),
        },
        settings: settings.clone(),
        kernel: env.build.join("guest/vmlinux"),
        versions: engines
            .iter()
            .map(|e| {
                let version = version_line(e.binary());
                let version = match (e, crate::systems::vm::git_commit()) {
                    (Engine::Spry(_), Some(commit)) => format!("{version} (git {commit})"),
                    _ => version,
                };
                (e.name().to_owned(), version)
            })
            .collect(),
        trace_problem,
        cases: results,
        unavailable,
    })
}

/// One case: each VMM's check boot (full output, traced), then `runs` rounds of
/// one boot per VMM. A peer that fails is dropped from the case with the reason.
#[allow(clippy::too_many_arguments)]
fn measure_case(
    env: &Env,
    case: &Case,
    engines: &[Engine],
    settings: &Settings,
    trace: bool,
    dir: &Path,
    out: &Path,
    progress: &mut Progress,
) -> Result<CaseResult, ExitsError> {
    let fail =
        |engine: &Engine, what: &str, source: BootError| -> Result<Unavailable, ExitsError> {
            match engine {
                Engine::Spry(_) => Err(ExitsError::Spry {
                    case: format!("{}, {what}", case.label()),
                    source: Box::new(source),
                }),
                _ => {
                    let error = one_line(&source);
                    Ok(Unavailable {
                        name: engine.name().to_owned(),
                        reason: format!("{what} failed: {error}{}", firecracker_hint(&error)),
                    })
                }
            }
        };
    let attempts = settings.retries + 1;
    let mut results: Vec<(Engine, VmmResult)> = Vec::new();
    let mut not_compared = Vec::new();
    for engine in engines {
        progress.step(
            &format!("{} {} check boot", engine.name(), case.slug()),
            false,
        );
        let (guest, initrd) = guest_for(env, case);
        let command = engine
            .command(&guest, initrd.as_deref(), &case.boot_args(false), dir)
            .map(|c| command_text(&c))
            .unwrap_or_default();
        let mut failed = Vec::new();
        let label = format!("{} {} check boot", engine.name(), case.slug());
        let note = |line: &str| progress.note(&format!("{label} {line}"));
        match boot_with_retries(attempts, &mut failed, note, || {
            boot_once(engine, env, case, true, dir, trace)
        }) {
            Ok(booted) => {
                save_console(out, case, engine.name(), &booted.lines);
                let guest_cmdline = booted
                    .lines
                    .iter()
                    .find_map(|l| kernel_command_line(&l.text))
                    .map(str::to_owned);
                results.push((
                    engine.clone(),
                    VmmResult {
                        system: engine.name().to_owned(),
                        command,
                        guest_cmdline,
                        kernel_warnings: kernel_warnings(&booted.lines),
                        guest_mapping: booted.mapping,
                        check: booted.boot,
                        breakdown: booted.breakdown,
                        boots: Vec::new(),
                        failed_boots: failed,
                    },
                ));
            }
            Err(e) => {
                let what = format!("its check boot (full output, {attempts} attempts)");
                not_compared.push(fail(engine, &what, e)?);
            }
        }
    }
    for run in 0..settings.runs {
        let mut dropped = Vec::new();
        for (i, (engine, result)) in results.iter_mut().enumerate() {
            let label = format!("{} {}", engine.name(), case.slug());
            progress.step(&label, false);
            let note = |line: &str| progress.note(&format!("{label} {line}"));
            match boot_with_retries(attempts, &mut result.failed_boots, note, || {
                boot_once(engine, env, case, false, dir, false)
            }) {
                Ok(booted) => result.boots.push(booted.boot),
                Err(e) => {
                    let what = format!("measured boot {} ({attempts} attempts)", run + 1);
                    not_compared.push(fail(engine, &what, e)?);
                    dropped.push(i);
                }
            }
        }
        for i in dropped.into_iter().rev() {
            results.remove(i);
        }
    }
    Ok(CaseResult {
        case: *case,
        label: case.label(),
        boot_args: case.boot_args(false),
        results: results.into_iter().map(|(_, r)| r).collect(),
        not_compared,
    })
}

/// An error on one line, at most 600 characters (the end kept: the guest's last
/// words are there).
fn one_line(error: &dyn std::error::Error) -> String {
    let text = error.to_string().replace('\n', " / ");
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 600 {
        return text;
    }
    let head: String = chars[..200].iter().collect();
    let tail: String = chars[chars.len() - 400..].iter().collect();
    format!("{head} ... {tail}")
}

/// Runs `boot` up to `attempts` times until it succeeds, adding each failure to
/// `failed`; the last error if none succeeds. (In the nested host a guest now and
/// then dies of the emulator's nested-virtualization bugs rather than of its VMM.)
fn boot_with_retries<T>(
    attempts: usize,
    failed: &mut Vec<String>,
    mut note: impl FnMut(&str),
    mut boot: impl FnMut() -> Result<T, BootError>,
) -> Result<T, BootError> {
    let mut attempt = 1;
    loop {
        match boot() {
            Ok(value) => return Ok(value),
            Err(e) => {
                let line = one_line(&e);
                if attempt >= attempts {
                    note(&format!("failed again, giving up: {line}"));
                    failed.push(line);
                    return Err(e);
                }
                note(&format!("failed, trying again: {line}"));
                failed.push(line);
                attempt += 1;
            }
        }
    }
}

/// The nested host's launcher: `--nested-host`, else tools/nested/exits-host (an L1
/// CPU with XSAVE, which Firecracker needs) when Firecracker is to run, else
/// tools/nested/nested-host.
pub fn nested_launcher(repo: &Path, settings: &Settings) -> PathBuf {
    match (&settings.nested_host, &settings.firecracker) {
        (Some(launcher), _) => launcher.clone(),
        (None, Some(_)) => repo.join("tools/nested/exits-host"),
        (None, None) => repo.join("tools/nested/nested-host"),
    }
}

/// A hint for a Firecracker that refused this host's KVM.
fn firecracker_hint(error: &str) -> &'static str {
    if error.contains("Missing KVM capabilities: 0x38") {
        " (KVM_CAP_XCRS: KVM offers it only on a CPU with XSAVE; tools/nested/nested-host \
         gives L1 none, tools/nested/exits-host does)"
    } else {
        ""
    }
}

/// Runs this very command line again inside the nested host (whose KVM is
/// kvm_amd), streaming its output; the report lands in the shared file system.
pub fn run_nested(env: &Env, settings: &Settings, args: Vec<OsString>) -> Result<(), ExitsError> {
    // Built here, where it is fast: L1 sees the same build directory.
    env.ensure_guest()?;
    let launcher = nested_launcher(&env.repo, settings);
    let systems = 3;
    let boots = cases(settings).len() * systems * (settings.runs + 1);
    nested::rerun(
        env,
        nested::Rerun {
            launcher: &launcher,
            mem_mib: 2048,
            timeout_s: 900 + 240 * boots,
            args,
            what: "exits",
        },
    )
    .map_err(ExitsError::Nested)
}

/// The exits benchmark: here on a hardware-virtualization host, else in the nested
/// host. `args` is this process's command line (without the program), passed on to
/// the nested host.
pub fn run(env: &Env, settings: &Settings, args: Vec<OsString>) -> Result<(), ExitsError> {
    let nested = std::env::var(nested::NESTED_ENV).ok();
    match where_to_measure(env.host.kvm, nested.as_deref()).map_err(ExitsError::Host)? {
        Where::Nested => run_nested(env, settings, args),
        Where::Here => {
            let out = settings
                .out
                .clone()
                .unwrap_or_else(|| env.build.join("bench"));
            let report = measure(env, settings, &out)?;
            let written = report::write(&report, &out)?;
            println!("{}", report::summary(&report));
            println!("report:  {}", written.0.display());
            println!("numbers: {}", written.1.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            runs: 3,
            retries: 2,
            vcpus: vec![1, 2],
            mem_mib: 256,
            roots: vec![Root::Initrd, Root::Drive],
            kernel_logs: vec![KernelLog::Full],
            firecracker: None,
            qemu: None,
            no_qemu: false,
            trace: true,
            out: None,
            nested_host: None,
        }
    }

    #[test]
    fn test_cases_cover_every_combination() {
        let cases = cases(&settings());
        let slugs: Vec<String> = cases.iter().map(Case::slug).collect();
        assert_eq!(
            slugs,
            [
                "1cpu-initrd-full",
                "2cpu-initrd-full",
                "1cpu-drive-full",
                "2cpu-drive-full"
            ]
        );
        assert_eq!(
            cases[1].label(),
            "2 vCPUs, 256 MiB, initrd, no devices, full kernel log"
        );
    }

    #[test]
    fn test_boot_args_print_the_marker_then_wait() {
        let case = Case {
            vcpus: 1,
            mem_mib: 256,
            root: Root::Initrd,
            kernel_log: KernelLog::Quiet,
        };
        let args = case.boot_args(false);
        assert!(args.starts_with(BASE_ARGS), "{args}");
        assert!(args.contains(" quiet spry.mode=run "), "{args}");
        assert!(
            args.ends_with("spry.cmd=echo+spry-bench-exits-ready%3B+read+x"),
            "{args}"
        );
        // The check boot prints the whole log.
        assert!(!case.boot_args(true).contains("quiet"));
        // The command line itself is no marker.
        assert!(!is_marker(&format!("[    0.000000] Command line: {args}")));
        assert!(is_marker("spry-bench-exits-ready"));
        assert!(is_marker(
            "[    9.1] random: crng init done spry-bench-exits-ready"
        ));
    }

    #[test]
    fn test_guest_lines() {
        assert_eq!(
            init_cpus("spry-guest: init running cpus=2 mem_kib=245908"),
            Some(2)
        );
        assert_eq!(init_cpus("spry-guest: rebooting"), None);
        assert_eq!(
            kernel_command_line("[    0.000000] Command line: console=ttyS0 quiet"),
            Some("console=ttyS0 quiet")
        );
        assert_eq!(
            kernel_command_line("[    0.28] Kernel command line: console=ttyS0"),
            None
        );
    }

    #[test]
    fn test_kernel_warnings_are_found() {
        let lines: Vec<Line> = [
            "[    0.1] x86/fpu: Enabled xstate features 0x7",
            "[    2.0] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606 fpu__init",
            "[    2.0] Call Trace:",
            "[    9.0] Kernel panic - not syncing: Attempted to kill init!",
            "spry-guest: init running cpus=1 mem_kib=1",
        ]
        .iter()
        .map(|t| Line {
            text: (*t).to_owned(),
            at_us: 0,
        })
        .collect();
        let found = kernel_warnings(&lines);
        assert_eq!(found.len(), 2);
        assert!(found[0].contains("xstate.c:606"));
        assert!(found[1].contains("Kernel panic"));
    }

    #[test]
    fn test_failed_boots_are_retried_and_recorded() {
        let mut failed = Vec::new();
        let mut calls = 0;
        let mut notes = Vec::new();
        let result = boot_with_retries(
            3,
            &mut failed,
            |n| notes.push(n.to_owned()),
            || {
                calls += 1;
                if calls < 3 {
                    Err(BootError::Guest(format!("crash {calls}\nlast line")))
                } else {
                    Ok(calls)
                }
            },
        );
        assert_eq!(result.unwrap(), 3);
        assert_eq!(failed, ["crash 1 / last line", "crash 2 / last line"]);
        assert_eq!(notes[0], "failed, trying again: crash 1 / last line");
        let mut failed = Vec::new();
        let result: Result<(), _> = boot_with_retries(
            2,
            &mut failed,
            |_| {},
            || Err(BootError::Guest("dead".into())),
        );
        assert!(result.is_err());
        assert_eq!(failed.len(), 2);
    }

    #[test]
    fn test_long_errors_keep_their_end() {
        let long = BootError::Guest(format!("{}THE END", "x".repeat(1000)));
        let line = one_line(&long);
        assert!(line.len() < 700 && line.ends_with("THE END"), "{line}");
    }

    #[test]
    fn test_firecracker_runs_in_the_nested_host_with_xsave() {
        let repo = Path::new("/repo");
        let mut s = settings();
        assert_eq!(
            nested_launcher(repo, &s),
            Path::new("/repo/tools/nested/nested-host")
        );
        s.firecracker = Some("/fc".into());
        assert_eq!(
            nested_launcher(repo, &s),
            Path::new("/repo/tools/nested/exits-host")
        );
        s.nested_host = Some("/opt/nh".into());
        assert_eq!(nested_launcher(repo, &s), Path::new("/opt/nh"));
        assert!(firecracker_hint("Kvm error: Missing KVM capabilities: 0x38").contains("XSAVE"));
        assert_eq!(firecracker_hint("exit 1"), "");
    }

    #[test]
    fn test_where_to_measure() {
        assert_eq!(
            where_to_measure(KvmFlavour::Hardware, None),
            Ok(Where::Here)
        );
        assert_eq!(
            where_to_measure(KvmFlavour::Hardware, Some("AMD EPYC (2 CPUs)")),
            Ok(Where::Here)
        );
        assert_eq!(where_to_measure(KvmFlavour::Pvm, None), Ok(Where::Nested));
        assert_eq!(
            where_to_measure(KvmFlavour::Missing, None),
            Ok(Where::Nested)
        );
        let err = where_to_measure(KvmFlavour::Pvm, Some("AMD EPYC (2 CPUs)")).unwrap_err();
        assert!(err.contains("nested host"), "{err}");
    }

    #[test]
    fn test_qemu_gets_cpu_host_and_the_initrd() {
        let guest = Guest::linux(Path::new("/b"), 256);
        let mut guest = guest;
        guest.rootfs = None;
        guest.vcpus = 2;
        let cmd = Engine::Qemu("/usr/bin/qemu".into())
            .command(
                &guest,
                Some(Path::new("/b/guest/initramfs.cpio")),
                "console=ttyS0",
                Path::new("/nonexistent"),
            )
            .unwrap();
        let text = command_text(&cmd);
        assert!(text.contains(" -cpu host "), "{text}");
        assert!(text.contains(" -initrd /b/guest/initramfs.cpio "), "{text}");
        assert!(text.contains(" -smp 2 "), "{text}");
        assert!(!text.contains("-drive"), "{text}");
        assert!(text.ends_with("-append console=ttyS0"), "{text}");
    }

    #[test]
    fn test_spry_config_gets_the_initrd_and_no_drive() {
        let dir = std::env::temp_dir().join(format!("spry-bench-exits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut guest = Guest::linux(Path::new("/b"), 256);
        guest.rootfs = None;
        let initrd = Path::new("/b/guest/initramfs.cpio");
        Engine::Spry("/spry".into())
            .command(&guest, Some(initrd), "console=ttyS0", &dir)
            .unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("spry.json")).unwrap()).unwrap();
        assert_eq!(
            config["boot-source"]["initrd_path"],
            "/b/guest/initramfs.cpio"
        );
        assert_eq!(config["drives"], serde_json::json!([]));
        assert_eq!(config["machine-config"]["mem_size_mib"], 256);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
