//! Issue 2's boot benchmark: spry alone, the guest booted N times, with the VMM's own
//! share of the start (to the first KVM_RUN) and its own memory beyond guest RAM.
//! Issue 11: the same in one run for spry as users run it (seccomp on), spry
//! `--no-seccomp` and spry under spry-jailer, boots alternated between them, with
//! what seccomp and the jail add.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::clock::ms_between;
use crate::guest::Guest;
use crate::progress::Progress;
use crate::report::table::{markdown_table, num, signed, summary_cells};
use crate::setup::{Env, SetupError};
use crate::stats::{percentile, summarize, Summary};
use crate::systems::jailed::{jailer_next_to, JailedSpry};
use crate::systems::vm::{VmSystem, Vmm};
use crate::systems::{check_exit, run_to_exit, Sandbox, SystemError, Workload};

/// Errors of the boot benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A boot failed.
    #[error("boot {run} of {variant} failed")]
    Run {
        /// Which variant.
        variant: &'static str,
        /// Which run (0 = first warm-up).
        run: usize,
        /// Why.
        #[source]
        source: SystemError,
    },
    /// A variant's system could not be set up.
    #[error("cannot set up {variant}")]
    Prepare {
        /// Which variant.
        variant: &'static str,
        /// Why.
        #[source]
        source: SystemError,
    },
    /// The jailed variant was asked for where it cannot run.
    #[error("--variants jailed: {0}")]
    NoJail(String),
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

/// How spry is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Variant {
    /// spry as users run it: its seccomp filters on (the default).
    Default,
    /// `spry --no-seccomp`: no filter installed.
    NoSeccomp,
    /// spry under spry-jailer (root mode, a fresh jail per boot), filters on.
    Jailed,
    /// The same with `--share-exec-file`: spry's binary bind-mounted, not copied.
    JailedShared,
}

impl Variant {
    /// Every variant, in the order boots take turns.
    pub const ALL: [Variant; 4] = [
        Variant::Default,
        Variant::NoSeccomp,
        Variant::Jailed,
        Variant::JailedShared,
    ];

    /// The name in tables and progress lines.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Default => "spry (seccomp on, the default)",
            Variant::NoSeccomp => "spry --no-seccomp",
            Variant::Jailed => "spry under spry-jailer (seccomp on)",
            Variant::JailedShared => "spry under spry-jailer --share-exec-file (seccomp on)",
        }
    }

    /// A column header.
    fn short(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::NoSeccomp => "--no-seccomp",
            Variant::Jailed => "jailed",
            Variant::JailedShared => "jailed, shared binary",
        }
    }

    /// Whether spry-jailer runs it.
    fn jailed(self) -> bool {
        matches!(self, Variant::Jailed | Variant::JailedShared)
    }
}

/// The variants to run and, when the jailed one is left out by default, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantChoice {
    /// In the order boots take turns.
    pub variants: Vec<Variant>,
    /// Why the jailed variant is not among them (it was not asked for by name).
    pub note: Option<String>,
}

/// Picks the variants: those `asked` for (each once, in their order; the jailed one
/// needs root and a spry-jailer), else all three where the jailed one can run and
/// the two unjailed ones elsewhere, with a note saying why.
pub fn choose_variants(
    asked: Option<&[Variant]>,
    root: bool,
    jailer: Option<&std::path::Path>,
    spry: &std::path::Path,
) -> Result<VariantChoice, BootError> {
    let why_not = if !root {
        Some("spry-jailer needs root".to_owned())
    } else if jailer.is_none() {
        Some(format!(
            "no spry-jailer next to {} (`cargo build --release -p spry` builds both)",
            spry.display()
        ))
    } else {
        None
    };
    match asked {
        Some(asked) => {
            let variants = asked.iter().fold(Vec::new(), |mut seen, v| {
                if !seen.contains(v) {
                    seen.push(*v);
                }
                seen
            });
            match why_not {
                Some(why) if variants.iter().any(|v| v.jailed()) => Err(BootError::NoJail(why)),
                _ => Ok(VariantChoice {
                    variants,
                    note: None,
                }),
            }
        }
        None => match why_not {
            Some(why) => Ok(VariantChoice {
                variants: vec![Variant::Default, Variant::NoSeccomp],
                note: Some(format!("the jailed variants are left out: {why}")),
            }),
            None => Ok(VariantChoice {
                variants: Variant::ALL.to_vec(),
                note: None,
            }),
        },
    }
}

/// What the boot benchmark measured for one variant.
#[derive(Debug, Serialize)]
pub struct VariantReport {
    /// Which.
    pub variant: Variant,
    /// Every boot after warm-up.
    pub samples: Vec<BootSample>,
    /// Every memory reading.
    pub memory: Vec<OwnMemory>,
}

/// Everything the boot benchmark measured.
#[derive(Debug, Serialize)]
pub struct BootReport {
    /// Which guest and why.
    pub guest: Guest,
    /// Runs after warm-up, per variant.
    pub runs: usize,
    /// Each variant measured, in the order boots took turns.
    pub variants: Vec<VariantReport>,
    /// Why a variant was left out.
    pub note: Option<String>,
    /// The jailed variant: spry's binary size, bytes (spry-jailer copies it into
    /// every jail).
    pub spry_bytes: Option<u64>,
}

/// The middle of a distribution and its 10th and 90th percentiles.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    p10: f64,
    median: f64,
    p90: f64,
}

/// The most the jail and seccomp each may add to start (issue 11), ms.
pub const START_AIM_MS: f64 = 0.3;

fn column(samples: &[BootSample], f: impl Fn(&BootSample) -> Option<f64>) -> Option<Summary> {
    summarize(&samples.iter().filter_map(f).collect::<Vec<_>>())
}

/// A metric of one boot.
type Metric = fn(&BootSample) -> Option<f64>;

/// The per-boot metrics compared between variants: name, whether the start aim
/// applies, and how to read it.
const COMPARED: [(&str, bool, Metric); 6] = [
    ("(a) start → guest boot-timer write", true, |b| {
        Some(b.to_running_ms)
    }),
    ("(b) start → spry exit", false, |b| Some(b.to_exit_ms)),
    ("(c) start → vCPU 0 enters the guest", true, |b| {
        b.to_vcpu_entry_ms
    }),
    ("    exec → spry main", false, |b| b.exec_to_main_ms),
    ("    spry main → vCPU 0 enters the guest", false, |b| {
        b.main_to_vcpu_entry_ms
    }),
    ("CPU per boot (user + system)", false, |b| Some(b.cpu_ms)),
];

/// `added` ms against the start aim: "met" or "MISSED".
fn verdict(added: f64) -> &'static str {
    if added < START_AIM_MS {
        "met"
    } else {
        "MISSED"
    }
}

impl BootReport {
    fn variant(&self, variant: Variant) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.variant == variant)
    }

    /// The median of `metric` for `variant`, if it ran.
    fn median(&self, variant: Variant, metric: Metric) -> Option<f64> {
        column(&self.variant(variant)?.samples, metric).map(|s| s.median)
    }

    /// `of` − `against` in medians of `metric`, where both ran.
    fn added(&self, of: Variant, against: Variant, metric: Metric) -> Option<f64> {
        Some(self.median(of, metric)? - self.median(against, metric)?)
    }

    /// `of` − `against` of `metric` round by round: the boots of one round are
    /// neighbours in time, so a host whose load changes over the run moves both.
    fn paired(&self, of: Variant, against: Variant, metric: Metric) -> Option<Spread> {
        let a = &self.variant(of)?.samples;
        let b = &self.variant(against)?.samples;
        let mut differences: Vec<f64> = a
            .iter()
            .zip(b)
            .filter_map(|(x, y)| Some(metric(x)? - metric(y)?))
            .collect();
        differences.sort_by(f64::total_cmp);
        Some(Spread {
            p10: percentile(&differences, 10.0)?,
            median: percentile(&differences, 50.0)?,
            p90: percentile(&differences, 90.0)?,
        })
    }

    /// The tables: each variant's (with the aims checked), then what seccomp and the
    /// jail add.
    pub fn render(&self) -> String {
        let mut out = format!(
            "spry boot benchmark: {} ({} vCPU, {} MiB), {} boots of each variant after \
             warm-up, alternated; memory from {} idle boots each\n",
            self.guest.label(),
            self.guest.vcpus,
            self.guest.mem_mib,
            self.runs,
            self.variants.first().map_or(0, |v| v.memory.len()),
        );
        for v in &self.variants {
            out.push_str(&format!("\n{}\n\n", v.variant.label()));
            out.push_str(&render_variant(v));
        }
        if self.variants.len() > 1 {
            out.push_str(&self.render_added());
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("\nnote: {note}\n"));
        }
        out.push_str(&format!("\nguest: {}\n", self.guest.why));
        out
    }

    /// The medians side by side and the differences against `--no-seccomp`.
    fn render_added(&self) -> String {
        use Variant::{Default, Jailed, JailedShared, NoSeccomp};
        let ran: Vec<Variant> = self.variants.iter().map(|v| v.variant).collect();
        let mut headers = vec!["metric (medians)", "unit"];
        headers.extend(ran.iter().map(|v| v.short()));
        headers.extend([
            "seccomp adds",
            "jail adds (with seccomp)",
            "jail alone",
            "shared-binary jail adds",
            "aim < 0.3 ms added",
        ]);
        let cell = |x: Option<f64>, f: fn(f64) -> String| x.map_or_else(|| "–".to_owned(), f);
        let rows: Vec<Vec<String>> = COMPARED
            .iter()
            .map(|&(name, aim, metric)| {
                let mut cells = vec![name.to_owned(), "ms".to_owned()];
                cells.extend(ran.iter().map(|&v| cell(self.median(v, metric), num)));
                let seccomp = self.added(Default, NoSeccomp, metric);
                let jail = self.added(Jailed, NoSeccomp, metric);
                let shared = self.added(JailedShared, NoSeccomp, metric);
                cells.push(cell(seccomp, signed));
                cells.push(cell(jail, signed));
                cells.push(cell(self.added(Jailed, Default, metric), signed));
                cells.push(cell(shared, signed));
                let judged: Vec<String> = [
                    ("seccomp", seccomp),
                    ("jail", jail),
                    ("shared-binary jail", shared),
                ]
                .into_iter()
                .filter(|_| aim)
                .filter_map(|(what, added)| Some(format!("{what} {}", verdict(added?))))
                .collect();
                cells.push(judged.join(", "));
                cells
            })
            .collect();
        let mut out = format!(
            "\nWhat confinement adds (differences of medians against spry --no-seccomp; \
             \"jail alone\" against the default; the jail's share includes spry-jailer \
             copying spry's binary{} into each fresh jail; the shared-binary jail \
             bind-mounts it instead)\n\n{}",
            self.spry_bytes
                .map(|b| format!(" ({} MiB)", num(b as f64 / (1024.0 * 1024.0))))
                .unwrap_or_default(),
            markdown_table(&headers, &rows)
        );
        let start: Metric = COMPARED[0].2;
        for (what, of) in [
            ("seccomp", Default),
            ("the jail (with seccomp)", Jailed),
            ("the shared-binary jail (with seccomp)", JailedShared),
        ] {
            if let Some(added) = self.added(of, NoSeccomp, start) {
                out.push_str(&format!(
                    "\n{what} adds {} ms to start → guest boot-timer write: aim < {START_AIM_MS} \
                     ms {}",
                    signed(added),
                    verdict(added)
                ));
                if let Some(p) = self.paired(of, NoSeccomp, start) {
                    out.push_str(&format!(
                        " (per-round differences: median {}, 10th-90th percentile {} to {} ms)",
                        signed(p.median),
                        signed(p.p10),
                        signed(p.p90)
                    ));
                }
            }
        }
        out.push('\n');
        out
    }
}

/// One variant's table (the boot benchmark's own columns), with the aims checked.
fn render_variant(v: &VariantReport) -> String {
    let s = &v.samples;
    let memory = |f: fn(&OwnMemory) -> f64| summarize(&v.memory.iter().map(f).collect::<Vec<_>>());
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
    let mapping = if v.memory.iter().all(|m| m.guest_mapping_found) {
        String::new()
    } else {
        "\n(guest-RAM mapping NOT found by its size: own memory includes it)\n".to_owned()
    };
    format!(
        "{}{mapping}",
        markdown_table(
            &["metric", "unit", "median", "p90", "min", "max", "note"],
            &rows
        )
    )
}

/// Where a benchmark run is: which variant goes in `round` at position `slot`.
/// Each round starts one variant later than the one before, so no variant always
/// follows the same other one.
fn turn(round: usize, slot: usize, count: usize) -> usize {
    (round + slot) % count.max(1)
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What the boot benchmark runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Boots measured per variant.
    pub runs: usize,
    /// Warm-up boots per variant.
    pub warmup: usize,
    /// Idle boots per variant whose memory is read.
    pub memory_runs: usize,
    /// `--variants`, if given.
    pub variants: Option<Vec<Variant>>,
}

/// Runs the boot benchmark: `warmup` + `runs` rounds of one boot per variant, then
/// `memory_runs` rounds of idle runs.
pub fn run(env: &Env, settings: &Settings) -> Result<BootReport, BootError> {
    let jailer = jailer_next_to(&env.spry);
    let choice = choose_variants(
        settings.variants.as_deref(),
        running_as_root(),
        jailer.as_deref(),
        &env.spry,
    )?;
    let guest = Guest::for_host(env.host.kvm, &env.build, 128);
    env.ensure_probe()?;
    let dir = env.scratch_dir("boot")?;
    let timeout = Duration::from_secs(30);
    let systems: Vec<Box<dyn Sandbox>> = choice
        .variants
        .iter()
        .map(|&variant| {
            system(env, variant, jailer.clone(), &guest, &dir, timeout).map_err(|source| {
                BootError::Prepare {
                    variant: variant.label(),
                    source,
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let count = systems.len();
    let (warmup, runs, memory_runs) = (settings.warmup, settings.runs, settings.memory_runs);
    let mut progress = Progress::new("boot", (warmup + runs + memory_runs) * count);
    let mut reports: Vec<VariantReport> = choice
        .variants
        .iter()
        .map(|&variant| VariantReport {
            variant,
            samples: Vec::with_capacity(runs),
            memory: Vec::with_capacity(memory_runs),
        })
        .collect();
    for round in 0..warmup + runs {
        for slot in 0..count {
            let i = turn(round, slot, count);
            let variant = reports[i].variant;
            progress.step(variant.short(), round < warmup);
            let sample = boot_once(systems[i].as_ref(), round, timeout).map_err(|source| {
                BootError::Run {
                    variant: variant.label(),
                    run: round,
                    source,
                }
            })?;
            if round >= warmup {
                reports[i].samples.push(sample);
            }
        }
    }
    for round in 0..memory_runs {
        for slot in 0..count {
            let i = turn(round, slot, count);
            let variant = reports[i].variant;
            progress.step(&format!("{} idle", variant.short()), false);
            let memory = own_memory(systems[i].as_ref(), round, timeout).map_err(|source| {
                BootError::Run {
                    variant: variant.label(),
                    run: round,
                    source,
                }
            })?;
            reports[i].memory.push(memory);
        }
    }
    progress.done();
    let spry_bytes = choice
        .variants
        .contains(&Variant::Jailed)
        .then(|| std::fs::metadata(&env.spry).ok().map(|m| m.len()))
        .flatten();
    Ok(BootReport {
        guest,
        runs,
        variants: reports,
        note: choice.note,
        spry_bytes,
    })
}

/// The system that boots the guest as `variant` runs spry.
fn system(
    env: &Env,
    variant: Variant,
    jailer: Option<PathBuf>,
    guest: &Guest,
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<Box<dyn Sandbox>, SystemError> {
    let spry = || VmSystem::new(Vmm::Spry, env.spry.clone(), guest.clone(), dir, timeout);
    Ok(match (variant, jailer) {
        (Variant::Default, _) => Box::new(spry()?),
        (Variant::NoSeccomp, _) => {
            Box::new(spry()?.with_args(&["--no-seccomp"], "spry --no-seccomp"))
        }
        (Variant::Jailed, Some(jailer)) => Box::new(JailedSpry::new(
            jailer,
            env.spry.clone(),
            guest.clone(),
            dir,
            timeout,
        )?),
        (Variant::JailedShared, Some(jailer)) => Box::new(
            JailedSpry::new(jailer, env.spry.clone(), guest.clone(), dir, timeout)?
                .sharing_exec_file(),
        ),
        // choose_variants keeps the jailed variants out without a jailer.
        (Variant::Jailed | Variant::JailedShared, None) => {
            return Err(SystemError::Command {
                command: "spry-jailer".into(),
                detail: format!("not found next to {}", env.spry.display()),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sample(running: f64, vcpu: f64) -> BootSample {
        BootSample {
            to_running_ms: running,
            to_exit_ms: running + 2.0,
            to_vcpu_entry_ms: Some(vcpu),
            exec_to_main_ms: Some(1.0),
            main_to_vcpu_entry_ms: Some(vcpu - 1.0),
            cpu_ms: 5.0,
        }
    }

    fn report(variants: &[(Variant, f64, f64)]) -> BootReport {
        BootReport {
            guest: Guest::probe(Path::new("/b"), 128, "why".into()),
            runs: 1,
            variants: variants
                .iter()
                .map(|&(variant, running, vcpu)| VariantReport {
                    variant,
                    samples: vec![sample(running, vcpu)],
                    memory: Vec::new(),
                })
                .collect(),
            note: None,
            spry_bytes: Some(3 << 20),
        }
    }

    #[test]
    fn test_all_three_variants_by_default_as_root_with_a_jailer() {
        let choice = choose_variants(
            None,
            true,
            Some(Path::new("/t/spry-jailer")),
            Path::new("/t/spry"),
        )
        .unwrap();
        assert_eq!(choice.variants, Variant::ALL);
        assert_eq!(choice.note, None);
    }

    #[test]
    fn test_without_root_the_jailed_variant_is_left_out_with_a_note() {
        let choice = choose_variants(
            None,
            false,
            Some(Path::new("/t/spry-jailer")),
            Path::new("/t/spry"),
        )
        .unwrap();
        assert_eq!(choice.variants, [Variant::Default, Variant::NoSeccomp]);
        assert!(choice.note.unwrap().contains("needs root"));
    }

    #[test]
    fn test_without_a_jailer_the_note_names_where_it_was_looked_for() {
        let choice = choose_variants(None, true, None, Path::new("/t/spry")).unwrap();
        assert_eq!(choice.variants, [Variant::Default, Variant::NoSeccomp]);
        assert!(choice.note.unwrap().contains("next to /t/spry"));
    }

    #[test]
    fn test_jailed_asked_for_without_root_is_refused() {
        let asked = [Variant::Default, Variant::Jailed];
        let e = choose_variants(Some(&asked), false, None, Path::new("/t/spry")).unwrap_err();
        assert!(matches!(e, BootError::NoJail(_)), "{e:?}");
    }

    #[test]
    fn test_asked_variants_are_run_once_each_in_their_order() {
        let asked = [Variant::NoSeccomp, Variant::Default, Variant::NoSeccomp];
        let choice = choose_variants(Some(&asked), false, None, Path::new("/t/spry")).unwrap();
        assert_eq!(choice.variants, [Variant::NoSeccomp, Variant::Default]);
    }

    #[test]
    fn test_rounds_rotate_which_variant_boots_first() {
        let round = |r| (0..3).map(|slot| turn(r, slot, 3)).collect::<Vec<_>>();
        assert_eq!(round(0), [0, 1, 2]);
        assert_eq!(round(1), [1, 2, 0]);
        assert_eq!(round(3), [0, 1, 2]);
    }

    #[test]
    fn test_added_is_the_difference_of_medians_against_no_seccomp() {
        let r = report(&[
            (Variant::Default, 5.2, 2.7),
            (Variant::NoSeccomp, 5.0, 2.25),
            (Variant::Jailed, 9.0, 6.0),
        ]);
        let start: Metric = COMPARED[0].2;
        let vcpu: Metric = COMPARED[2].2;

        let seccomp = r
            .added(Variant::Default, Variant::NoSeccomp, start)
            .unwrap();
        let jail = r.added(Variant::Jailed, Variant::NoSeccomp, vcpu).unwrap();

        assert!((seccomp - 0.2).abs() < 1e-9, "{seccomp}");
        assert!((jail - 3.75).abs() < 1e-9, "{jail}");
    }

    #[test]
    fn test_report_marks_the_start_aim_met_and_missed() {
        let r = report(&[
            (Variant::Default, 5.2, 2.7),
            (Variant::NoSeccomp, 5.0, 2.25),
            (Variant::Jailed, 9.0, 6.0),
        ]);

        let text = r.render();

        assert!(
            text.contains(
                "seccomp adds +0.20 ms to start → guest boot-timer write: aim < 0.3 ms met"
            ),
            "{text}"
        );
        assert!(
            text.contains("the jail (with seccomp) adds +4.00 ms to start → guest boot-timer write: aim < 0.3 ms MISSED"),
            "{text}"
        );
        // Row (c): vCPU entry 2.7 - 2.25 = 0.45 for seccomp.
        let row_c = text
            .lines()
            .rfind(|l| l.starts_with("| (c) start → vCPU 0 enters the guest "))
            .unwrap();
        assert!(row_c.contains("+0.45"), "{row_c}");
        assert!(row_c.contains("seccomp MISSED, jail MISSED"), "{row_c}");
        assert!(text.contains("copying spry's binary (3.00 MiB)"), "{text}");
    }

    #[test]
    fn test_paired_differences_are_taken_round_by_round() {
        let mut r = report(&[(Variant::Default, 0.0, 0.0), (Variant::NoSeccomp, 0.0, 0.0)]);
        // The host slows down over the run: round 2 is 10 ms slower for both, seccomp
        // adds 0.2 and 0.4 ms.
        r.variants[0].samples = vec![sample(4.2, 3.0), sample(14.4, 13.0)];
        r.variants[1].samples = vec![sample(4.0, 2.8), sample(14.0, 12.7)];
        let start: Metric = COMPARED[0].2;

        let p = r
            .paired(Variant::Default, Variant::NoSeccomp, start)
            .unwrap();

        assert!((p.median - 0.3).abs() < 1e-9, "{p:?}");
        assert!((p.p10 - 0.22).abs() < 1e-9, "{p:?}");
        assert!((p.p90 - 0.38).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn test_a_single_variant_has_no_comparison() {
        let text = report(&[(Variant::Default, 5.0, 2.0)]).render();
        assert!(text.contains("aim < 5 ms: met"), "{text}");
        assert!(!text.contains("What confinement adds"), "{text}");
    }

    #[test]
    fn test_without_the_jailed_variant_its_columns_are_dashes() {
        let r = report(&[
            (Variant::Default, 5.2, 2.7),
            (Variant::NoSeccomp, 5.0, 2.25),
        ]);
        let text = r.render();
        let row_a = text
            .lines()
            .rfind(|l| l.starts_with("| (a) start → guest boot-timer write "))
            .unwrap();
        assert!(row_a.contains("+0.20"), "{row_a}");
        assert!(row_a.contains("seccomp met"), "{row_a}");
        assert!(!row_a.contains("jail"), "{row_a}");
    }
}
