//! The Markdown report of a comparison.

use std::fmt::Write;

use crate::compare::{Comparison, SystemResult};
use crate::report::headline::{self, Wording};
use crate::report::table::{markdown_table, num, summary_cells};
use crate::stats::{summarize, Summary};
use crate::systems::Kind;

fn summary(values: impl Iterator<Item = f64>) -> Option<Summary> {
    summarize(&values.collect::<Vec<_>>())
}

/// Start → running signal of a system, ms.
pub fn start_running(r: &SystemResult) -> Option<Summary> {
    summary(r.start.iter().map(|s| s.to_running_ms))
}

/// Start → the guest's first console line (VMs only), ms.
pub fn start_console(r: &SystemResult) -> Option<Summary> {
    summary(r.start.iter().filter_map(|s| s.to_console_ms))
}

/// Start → the process's exit after the workload, ms.
pub fn start_exit(r: &SystemResult) -> Option<Summary> {
    summary(r.start.iter().map(|s| s.to_exit_ms))
}

/// Stop request → the replacement's running signal, ms.
pub fn restart(r: &SystemResult) -> Option<Summary> {
    summary(r.restart_ms.iter().copied())
}

/// Stop request → the replacement guest's first console line (VMs only), ms.
pub fn restart_console(r: &SystemResult) -> Option<Summary> {
    summary(r.restart_console_ms.iter().copied())
}

fn rss(r: &SystemResult) -> Option<Summary> {
    summary(r.memory.iter().map(|m| m.rss_mib))
}

/// Pss of an idle sandbox, MiB.
pub fn pss(r: &SystemResult) -> Option<Summary> {
    summary(r.memory.iter().map(|m| m.pss_mib))
}

fn own_rss(r: &SystemResult) -> Option<Summary> {
    summary(r.memory.iter().map(|m| m.own_rss_mib))
}

fn own_pss(r: &SystemResult) -> Option<Summary> {
    summary(r.memory.iter().map(|m| m.own_pss_mib))
}

/// User + system CPU per start, ms.
pub fn cpu(r: &SystemResult) -> Option<Summary> {
    summary(r.start.iter().map(|s| s.cpu_ms))
}

fn image_mib(r: &SystemResult) -> f64 {
    r.image.iter().map(|f| f.bytes as f64).sum::<f64>() / (1024.0 * 1024.0)
}

/// A statistic of a system's results.
type Stat<'a> = &'a dyn Fn(&SystemResult) -> Option<Summary>;

/// The headline sentence for one metric, spry against every peer that has a value.
/// `vm_metric`, if given, compares spry with VM peers instead (same signal for both).
fn sentence(
    c: &Comparison,
    wording: Wording,
    metric: impl Fn(&SystemResult) -> Option<Summary>,
    vm_metric: Option<Stat<'_>>,
) -> Option<String> {
    let (spry, peers) = c.systems.split_first()?;
    let theirs: Vec<(String, f64, f64)> = peers
        .iter()
        .filter_map(|p| {
            let m: Stat<'_> = match (p.kind, vm_metric) {
                (Kind::Vm, Some(vm)) => vm,
                _ => &metric,
            };
            Some((p.phrase.clone(), m(spry)?.median, m(p)?.median))
        })
        .collect();
    headline::sentence(wording, &theirs)
}

/// The headline sentences (medians of this run).
pub fn headline_sentences(c: &Comparison) -> Vec<String> {
    let mut lines: Vec<String> = [
        sentence(c, headline::STARTS, start_running, Some(&start_console)),
        sentence(c, headline::RESTARTS, restart, Some(&restart_console)),
        sentence(c, headline::MEMORY, pss, None),
        sentence(c, headline::CPU, cpu, None),
    ]
    .into_iter()
    .flatten()
    .collect();
    lines.extend(aims(c));
    lines
}

/// The project's aims on PVM hosts: start within 2x of runc and ahead of QEMU.
fn aims(c: &Comparison) -> Vec<String> {
    let Some(spry) = c.systems.first().and_then(start_running) else {
        return Vec::new();
    };
    let peer = |name: &str| {
        c.systems
            .iter()
            .find(|s| s.name == name)
            .and_then(start_running)
    };
    let mut out = Vec::new();
    match peer("runc") {
        Some(runc) => out.push(format!(
            "Aim \"start within 2x of a runc container\": {} (spry/runc = {:.2}).",
            if spry.median <= 2.0 * runc.median {
                "met"
            } else {
                "MISSED"
            },
            spry.median / runc.median
        )),
        None => out.push(
            "Aim \"start within 2x of a runc container\": not judged (runc did not run).".into(),
        ),
    }
    let console = |name: &str| {
        c.systems
            .iter()
            .find(|s| s.name == name)
            .and_then(start_console)
    };
    match console("spry").zip(console("QEMU")) {
        Some((spry, qemu)) => out.push(format!(
            "Aim \"ahead of QEMU\" (start → first console line): {} (spry/QEMU = {:.2}).",
            if spry.median < qemu.median {
                "met"
            } else {
                "MISSED"
            },
            spry.median / qemu.median
        )),
        None => out.push("Aim \"ahead of QEMU\": not judged (QEMU did not run; see below).".into()),
    }
    out.extend(firecracker_aims(c));
    out
}

/// The density level the launch-rate aim is judged at.
const AIM_DENSITY_K: usize = 100;

/// Launches per second at K = [`AIM_DENSITY_K`].
fn launches_at_aim_k(r: &SystemResult) -> Option<Summary> {
    summary(
        r.density
            .iter()
            .filter(|d| d.k == AIM_DENSITY_K)
            .map(|d| d.launch_per_s),
    )
}

/// One aim against a peer: spry/peer of a median must stay at or below `limit`
/// (`at_least`: at or above it, for rates).
struct RatioAim<'a> {
    what: &'a str,
    metric: Stat<'a>,
    limit: f64,
    at_least: bool,
}

/// Issue 13's aims against Firecracker, each a ratio of medians of this run.
fn firecracker_aims(c: &Comparison) -> Vec<String> {
    const PEER: &str = "Firecracker";
    let aims = [
        RatioAim {
            what: "start → first console line ≤ 0.5x",
            metric: &start_console,
            limit: 0.5,
            at_least: false,
        },
        RatioAim {
            what: "start → exit ≤ 0.9x",
            metric: &start_exit,
            limit: 0.9,
            at_least: false,
        },
        RatioAim {
            what: "restart (stop + start → console) ≤ 0.7x",
            metric: &restart_console,
            limit: 0.7,
            at_least: false,
        },
        RatioAim {
            what: "idle Pss ≤",
            metric: &pss,
            limit: 1.0,
            at_least: false,
        },
        RatioAim {
            what: "own Pss (without guest RAM) ≤",
            metric: &own_pss,
            limit: 1.0,
            at_least: false,
        },
        RatioAim {
            what: "own Rss (without guest RAM) ≤",
            metric: &own_rss,
            limit: 1.0,
            at_least: false,
        },
        RatioAim {
            what: "CPU per start ≤ 0.8x",
            metric: &cpu,
            limit: 0.8,
            at_least: false,
        },
        RatioAim {
            what: "launches per second at K=100 ≥ 1.5x",
            metric: &launches_at_aim_k,
            limit: 1.5,
            at_least: true,
        },
    ];
    let spry = c.systems.first();
    let peer = c.systems.iter().find(|s| s.name == PEER);
    aims.iter()
        .map(|aim| {
            let label = format!("Aim \"{} {PEER}\"", aim.what);
            let Some(peer) = peer else {
                return format!("{label}: not judged ({PEER} did not run; see below).");
            };
            let values = spry.and_then(|s| (aim.metric)(s)).zip((aim.metric)(peer));
            let Some((ours, theirs)) = values.filter(|(_, t)| t.median > 0.0) else {
                return format!("{label}: not judged (no value for both in this run).");
            };
            let ratio = ours.median / theirs.median;
            let met = if aim.at_least {
                ratio >= aim.limit
            } else {
                ratio <= aim.limit
            };
            format!(
                "{label}: {} (spry/{PEER} = {ratio:.2}: {} vs {}).",
                if met { "met" } else { "MISSED" },
                num(ours.median),
                num(theirs.median)
            )
        })
        .collect()
}

fn median_cell(s: Option<Summary>) -> String {
    s.map_or("–".into(), |s| num(s.median))
}

/// The one table for the README: medians per system.
pub fn headline_table(c: &Comparison) -> String {
    let rows: Vec<Vec<String>> = c
        .systems
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                median_cell(start_running(r)),
                median_cell(start_console(r)),
                median_cell(start_exit(r)),
                median_cell(restart(r)),
                median_cell(restart_console(r)),
                median_cell(pss(r)),
                median_cell(cpu(r)),
                r.density.last().map_or("–".into(), |d| {
                    format!("{} at K={}", num(d.launch_per_s), d.k)
                }),
                num(image_mib(r)),
            ]
        })
        .collect();
    markdown_table(
        &[
            "system",
            "start → running ms",
            "start → console ms",
            "start → exit ms",
            "restart → running ms",
            "restart → console ms",
            "idle Pss MiB",
            "CPU/start ms",
            "launches/s",
            "image MiB",
        ],
        &rows,
    )
}

/// A labelled statistic of a system.
type Metric<'a> = (&'a str, Stat<'a>);

fn stats_table(c: &Comparison, metrics: &[Metric<'_>]) -> String {
    stats_table_labelled(c, metrics, |_, label| label.to_owned())
}

/// [`stats_table`] with each row's metric cell from `label(system, metric label)`.
fn stats_table_labelled(
    c: &Comparison,
    metrics: &[Metric<'_>],
    label: impl Fn(&SystemResult, &str) -> String,
) -> String {
    let mut rows = Vec::new();
    for r in &c.systems {
        // A metric a system has no samples of (a container's console) is left out.
        for (name, metric) in metrics {
            let Some(s) = metric(r) else {
                continue;
            };
            let mut row = vec![r.name.clone(), label(r, name), s.n.to_string()];
            row.extend(summary_cells(Some(&s)));
            rows.push(row);
        }
    }
    markdown_table(
        &["system", "metric", "n", "median", "p90", "min", "max"],
        &rows,
    )
}

/// The metric cell of a VM's "own" memory row, marked where the guest-RAM mapping
/// was not found by its size (its "own" figures then include guest RAM).
fn own_memory_label(r: &SystemResult, label: &str) -> String {
    let missing = r.memory.iter().filter(|m| !m.guest_mapping_found).count();
    if r.kind != Kind::Vm || missing == 0 || !label.starts_with("own ") {
        return label.to_owned();
    }
    format!(
        "{label} — guest-RAM mapping NOT found in {missing} of {} runs: includes guest RAM",
        r.memory.len()
    )
}

/// The whole report. `plots` lists the plot files (relative to the report).
pub fn render(c: &Comparison, plots: &[String], plot_note: Option<&str>) -> String {
    let mut out = String::new();
    let h = &c.host;
    let _ = writeln!(out, "# spry benchmark: sandboxes side by side\n");
    let _ = writeln!(
        out,
        "{}, host `{}`: {} ({} CPUs), {} MiB RAM, Linux {}, KVM: {}.\n",
        h.date,
        h.hostname,
        h.cpu,
        h.cpus,
        h.mem_total_mib,
        h.kernel,
        h.kvm.describe()
    );
    let _ = writeln!(
        out,
        "VM guest: **{}** ({} vCPU, {} MiB): {}.\n",
        c.guest.label(),
        c.guest.vcpus,
        c.guest.mem_mib,
        c.guest.why
    );
    let entries: Vec<String> = c
        .systems
        .iter()
        .filter_map(|r| Some(format!("- **{}**: {}", r.name, r.boot_entry.as_deref()?)))
        .collect();
    if !entries.is_empty() {
        let _ = writeln!(out, "Guest entry per VMM:\n\n{}\n", entries.join("\n"));
    }
    let _ =
        writeln!(
        out,
        "Every system: {} warm-up and {} measured runs per metric, alternated between systems{}.\n",
        c.settings.warmup,
        c.settings.runs,
        if c.settings.quick { " (--quick smoke run: too few runs for conclusions)" } else { "" }
    );
    let _ = writeln!(out, "## Headline\n");
    for line in headline_sentences(c) {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "\nMedians:\n\n{}", headline_table(c));

    let _ = writeln!(out, "## Start time (ms)\n");
    let _ = writeln!(
        out,
        "Process start (parent's CLOCK_MONOTONIC just before spawn) to the running signal, \
         to the guest's first console line (VMs), and to the process's exit after the \
         workload ended. The running signal is spry's boot-timer stamp and the other \
         systems' first line as the harness reads it (see the notes): spry is compared with \
         VM peers on the console line, with the container on the running signal.\n"
    );
    out.push_str(&stats_table(
        c,
        &[
            ("start → running", &start_running),
            ("start → exit", &start_exit),
            ("start → console", &start_console),
        ],
    ));
    let _ = writeln!(out, "\n## Restart time (ms)\n");
    let _ = writeln!(
        out,
        "Stop request of an idle sandbox to its replacement's running signal, and (VMs) to \
         the replacement guest's first console line (stop + start; see the notes).\n"
    );
    out.push_str(&stats_table(
        c,
        &[
            ("stop + start → running", &restart),
            ("stop + start → console", &restart_console),
        ],
    ));
    let _ = writeln!(out, "\n## Memory per idle sandbox (MiB)\n");
    out.push_str(&stats_table_labelled(
        c,
        &[
            ("Rss", &rss),
            ("Pss", &pss),
            ("own Rss (without guest RAM)", &own_rss),
            ("own Pss (without guest RAM)", &own_pss),
        ],
        own_memory_label,
    ));
    let _ = writeln!(out, "\n## CPU per start (ms, user + system)\n");
    out.push_str(&stats_table(c, &[("CPU per start", &cpu)]));

    let _ = writeln!(out, "\n## Density\n");
    let _ = writeln!(
        out,
        "K idle sandboxes launched at once; launch time is the first spawn to the last \
         running signal. One sample per K; the host's MemAvailable moves with everything \
         else on the machine, so that column is noisy on a shared host.\n"
    );
    let rows: Vec<Vec<String>> = c
        .systems
        .iter()
        .flat_map(|r| {
            r.density.iter().map(|d| {
                vec![
                    r.name.clone(),
                    d.k.to_string(),
                    num(d.launch_ms),
                    num(d.launch_per_s),
                    num(d.pss_per_instance_mib),
                    num(d.rss_per_instance_mib),
                    num(d.host_mem_per_instance_mib),
                ]
            })
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "system",
            "K",
            "launch ms",
            "launches/s",
            "Pss/instance MiB",
            "Rss/instance MiB",
            "host MemAvailable drop/instance MiB",
        ],
        &rows,
    ));
    for capped in &c.density_capped {
        let _ = writeln!(out, "\n- dropped {capped}");
    }

    let _ = writeln!(out, "\n## Image size\n");
    let rows: Vec<Vec<String>> = c
        .systems
        .iter()
        .flat_map(|r| {
            r.image.iter().map(|f| {
                vec![
                    r.name.clone(),
                    f.role.clone(),
                    format!("`{}`", f.path.display()),
                    num(f.bytes as f64 / (1024.0 * 1024.0)),
                    num(f.disk_bytes as f64 / (1024.0 * 1024.0)),
                ]
            })
        })
        .collect();
    out.push_str(&markdown_table(
        &["system", "what", "path", "MiB", "MiB on disk"],
        &rows,
    ));
    let _ = writeln!(
        out,
        "\nThe container bundle is built in the run's scratch directory (removed afterwards) \
         from the same busybox tree as the Linux guest's root file system."
    );
    if c.guest.kind == crate::guest::GuestKind::Probe {
        let _ = writeln!(
            out,
            "The probe guest is a kernel alone; the Linux guest the VMs boot on hosts with \
             hardware virtualization needs its vmlinux and rootfs.ext4 (build/guest/), so \
             the VM row is not what a Linux sandbox needs."
        );
    }

    let _ = writeln!(out, "\n## Peers that did not run\n");
    if c.unavailable.is_empty() {
        let _ = writeln!(out, "None: every peer ran.");
    }
    for u in &c.unavailable {
        let _ = writeln!(out, "- **{}**: {}", u.name, u.reason);
    }

    let _ = writeln!(out, "\n## How it was measured\n");
    for note in &c.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out, "\nVersions and exact commands:\n");
    for r in &c.systems {
        let kind = match r.kind {
            Kind::Vm => "VM",
            Kind::Container => "container",
        };
        let _ = writeln!(out, "- **{}** ({kind}): {}", r.name, r.version);
        for (what, command) in &r.commands {
            let _ = writeln!(out, "  - {what}: `{command}`");
        }
    }
    let _ = writeln!(out, "\n## Plots\n");
    if let Some(note) = plot_note {
        let _ = writeln!(out, "{note}\n");
    }
    for plot in plots {
        let _ = writeln!(out, "- [{plot}]({plot})");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::compare::{DensityPoint, MemorySample, Settings, StartSample, Unavailable};
    use crate::guest::Guest;
    use crate::host::{HostInfo, KvmFlavour};

    fn system(name: &str, phrase: &str, kind: Kind, start_ms: f64, pss: f64) -> SystemResult {
        SystemResult {
            name: name.into(),
            phrase: phrase.into(),
            kind,
            version: format!("{name} 1.0"),
            boot_entry: (kind == Kind::Vm).then(|| format!("{name}'s entry")),
            commands: vec![("run to exit".into(), format!("{name} run"))],
            start: [1.0, 1.1, 0.9]
                .iter()
                .map(|f| StartSample {
                    to_running_ms: start_ms * f,
                    to_exit_ms: start_ms * f + 5.0,
                    to_console_ms: (kind == Kind::Vm).then_some(start_ms * f + 1.0),
                    cpu_ms: 2.0,
                })
                .collect(),
            restart_ms: vec![start_ms + 10.0; 3],
            restart_console_ms: if kind == Kind::Vm {
                vec![start_ms + 11.0; 3]
            } else {
                Vec::new()
            },
            memory: vec![
                MemorySample {
                    rss_mib: pss * 2.0,
                    pss_mib: pss,
                    own_rss_mib: pss,
                    own_pss_mib: pss,
                    guest_mapping_found: kind == Kind::Vm,
                };
                3
            ],
            density: vec![DensityPoint {
                k: 10,
                launch_ms: 100.0,
                launch_per_s: 100.0,
                pss_per_instance_mib: pss,
                rss_per_instance_mib: pss,
                host_mem_per_instance_mib: pss,
            }],
            image: Vec::new(),
        }
    }

    /// A comparison of spry (4 ms) with a container (10 ms) and QEMU (40 ms).
    pub(crate) fn fixture() -> Comparison {
        Comparison {
            host: HostInfo {
                hostname: "box".into(),
                cpu: "Test CPU".into(),
                cpus: 2,
                kernel: "6.1".into(),
                kvm: KvmFlavour::Pvm,
                mem_total_mib: 1024,
                date: "2026-12-01T00:00:00Z".into(),
            },
            guest: Guest::probe(std::path::Path::new("/b"), 128, "PVM host".into()),
            spry: "/bin/spry".into(),
            settings: Settings {
                runs: 3,
                warmup: 1,
                density: vec![10],
                quick: true,
                firecracker: None,
                no_qemu: false,
                qemu: None,
            },
            systems: vec![
                system("spry", "spry", Kind::Vm, 4.0, 2.0),
                system("runc", "a runc container", Kind::Container, 10.0, 1.0),
                system("QEMU", "QEMU", Kind::Vm, 40.0, 20.0),
            ],
            unavailable: vec![Unavailable {
                name: "Firecracker".into(),
                reason: "no binary given".into(),
            }],
            density_capped: Vec::new(),
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn test_headline_sentences_state_every_ratio() {
        let lines = headline_sentences(&fixture());
        assert_eq!(
            lines[0],
            "spry starts 2.5x faster than a runc container and 8.2x faster than QEMU."
        );
        assert_eq!(
            lines[2],
            "spry uses 2.0x more memory than a runc container and 10.0x less memory than QEMU."
        );
        assert!(lines.contains(
            &"Aim \"start within 2x of a runc container\": met (spry/runc = 0.40).".to_owned()
        ));
        assert!(lines.contains(
            &"Aim \"ahead of QEMU\" (start → first console line): met (spry/QEMU = 0.12)."
                .to_owned()
        ));
    }

    #[test]
    fn test_firecracker_aims_are_not_judged_without_firecracker() {
        let lines = headline_sentences(&fixture());
        assert!(lines.contains(
            &"Aim \"start → exit ≤ 0.9x Firecracker\": not judged (Firecracker did not run; \
              see below)."
                .to_owned()
        ));
    }

    #[test]
    fn test_firecracker_aims_state_each_ratio_and_verdict() {
        let mut c = fixture();
        c.systems[2].name = "Firecracker".into();
        c.systems[2].density[0].k = 100;
        c.systems[0].density[0].k = 100;
        c.systems[0].density[0].launch_per_s = 160.0;

        let lines = headline_sentences(&c);

        // console: 5 vs 41 ms
        assert!(
            lines.contains(
                &"Aim \"start → first console line ≤ 0.5x Firecracker\": met (spry/Firecracker = \
              0.12: 5.00 vs 41.0)."
                    .to_owned()
            ),
            "{lines:#?}"
        );
        // CPU: 2.0 vs 2.0 ms
        assert!(
            lines.contains(
                &"Aim \"CPU per start ≤ 0.8x Firecracker\": MISSED (spry/Firecracker = 1.00: 2.00 \
              vs 2.00)."
                    .to_owned()
            ),
            "{lines:#?}"
        );
        // launches: 160 vs 100 per second
        assert!(lines.contains(
            &"Aim \"launches per second at K=100 ≥ 1.5x Firecracker\": met (spry/Firecracker = \
              1.60: 160 vs 100)."
                .to_owned()
        ), "{lines:#?}");
    }

    #[test]
    fn test_restart_against_a_vm_peer_is_judged_on_the_console_line() {
        let lines = headline_sentences(&fixture());
        // runc: 14 vs 20 ms to the running signal; QEMU: 15 vs 51 ms to the console.
        assert_eq!(
            lines[1],
            "spry restarts 1.4x faster than a runc container and 3.4x faster than QEMU."
        );
    }

    #[test]
    fn test_own_memory_is_marked_where_the_guest_mapping_was_not_found() {
        let mut c = fixture();
        c.systems[2].memory[1].guest_mapping_found = false;
        let report = render(&c, &[], None);
        assert!(
            report.contains(
                "own Rss (without guest RAM) — guest-RAM mapping NOT found in 1 of 3 runs: \
                 includes guest RAM"
            ),
            "{report}"
        );
        assert_eq!(report.matches("NOT found").count(), 2, "{report}");
    }

    #[test]
    fn test_headline_table_has_a_row_per_system() {
        let table = headline_table(&fixture());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].starts_with("| spry   |"), "{table}");
        assert!(
            rows[0].contains("| 4.00 |") || rows[0].contains(" 4.00 "),
            "{table}"
        );
    }

    #[test]
    fn test_report_lists_unavailable_peers_and_commands() {
        let report = render(&fixture(), &["start.svg".into()], None);
        assert!(
            report.contains("- **Firecracker**: no binary given"),
            "{report}"
        );
        assert!(report.contains("  - run to exit: `runc run`"), "{report}");
        assert!(report.contains("- [start.svg](start.svg)"), "{report}");
        assert!(report.contains("KVM: PVM"), "{report}");
        assert!(report.contains("Guest entry per VMM:"), "{report}");
        assert!(report.contains("- **QEMU**: QEMU's entry"), "{report}");
        assert!(!report.contains("- **runc**: "), "{report}");
    }
}
