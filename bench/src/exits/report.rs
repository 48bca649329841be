//! The exits report: per case, the exits of a boot by kind (medians over the
//! measured boots) for each VMM with spry/peer ratios, related counters, and the
//! check boot's tracepoint breakdown; Markdown (`exits.md`) and JSON (`exits.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exits::trace::Breakdown;
use crate::exits::{Boot, CaseResult, ExitsError, ExitsReport, KernelLog, BASE_ARGS};
use crate::report::table::{markdown_table, num};
use crate::stats::summarize;

/// The computed kind: exits that are none of the others.
pub const OTHER: &str = "other";

/// The exit kinds, by their debugfs counter (or [`OTHER`]), with what they are. The
/// kinds after the first are disjoint: each is one kind of VM exit.
pub const EXIT_KINDS: [(&str, &str); 9] = [
    ("exits", "all VM exits"),
    (
        "io_exits",
        "port I/O (serial console, PIT, PIC, i8042, CMOS, ...)",
    ),
    (
        "mmio_exits",
        "MMIO handled by the VMM (virtio-mmio, boot timer, a userspace IOAPIC)",
    ),
    (
        "pf_taken",
        "nested page faults on guest RAM (first touch; 2 MiB pages take fewer)",
    ),
    ("halt_exits", "HLT (idle vCPU)"),
    ("irq_exits", "host interrupts"),
    ("irq_window_exits", "interrupt windows"),
    ("nmi_window_exits", "NMI windows"),
    (
        OTHER,
        "other: CPUID, MSRs (timer, APIC), CR writes, in-kernel APIC/IOAPIC MMIO, ...",
    ),
];

/// Counters that are not exits but say where exits come from.
pub const RELATED: [(&str, &str); 10] = [
    (
        "insn_emulation",
        "instructions KVM emulated (in-kernel APIC/IOAPIC MMIO, ...)",
    ),
    ("irq_injections", "interrupts injected"),
    ("halt_wakeup", "wake-ups from HLT"),
    (
        "request_irq_exits",
        "returns to the VMM to inject an interrupt",
    ),
    ("signal_exits", "returns to the VMM for a signal"),
    (
        "host_state_reload",
        "host state reloads (returns to the VMM, preemption)",
    ),
    ("hypercalls", "hypercalls"),
    ("tlb_flush", "guest TLB flushes"),
    ("pages_4k", "guest RAM mapped in 4 KiB pages at the marker"),
    ("pages_2m", "guest RAM mapped in 2 MiB pages at the marker"),
];

/// The value of kind `counter` in one boot's counters ([`OTHER`]: all exits minus
/// the other kinds).
pub fn kind_value(counters: &BTreeMap<String, u64>, counter: &str) -> Option<u64> {
    if counter != OTHER {
        return counters.get(counter).copied();
    }
    let all = *counters.get("exits")?;
    let known: u64 = EXIT_KINDS[1..EXIT_KINDS.len() - 1]
        .iter()
        .filter_map(|(c, _)| counters.get(*c))
        .sum();
    Some(all.saturating_sub(known))
}

/// The median of kind `counter` over `boots`.
pub fn median(boots: &[Boot], counter: &str) -> Option<f64> {
    let values: Vec<f64> = boots
        .iter()
        .filter_map(|b| kind_value(&b.counters, counter))
        .map(|v| v as f64)
        .collect();
    summarize(&values).map(|s| s.median)
}

/// A count: whole numbers as such, a median between two as `x.5`.
pub fn count_cell(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// spry's count over the peer's: `1.25x` (`17.6x`, `0.002x`: three significant
/// digits at most); `=` when both are 0, `–` when only the peer's is (or either is
/// missing).
pub fn ratio_cell(spry: Option<f64>, peer: Option<f64>) -> String {
    match (spry, peer) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.1}x")
            } else if r >= 0.1 || r == 0.0 {
                format!("{r:.2}x")
            } else {
                format!("{r:.3}x")
            }
        }
        (Some(a), Some(b)) if a == 0.0 && b == 0.0 => "=".into(),
        _ => "–".into(),
    }
}

/// Rows `kinds` of `case`: what, counter, each VMM's median, spry over each peer.
fn kind_rows(case: &CaseResult, kinds: &[(&str, &str)]) -> Vec<Vec<String>> {
    let spry = case.results.iter().find(|r| r.system == "spry");
    kinds
        .iter()
        .map(|(counter, what)| {
            let mut row = vec![(*what).to_owned(), format!("`{counter}`")];
            row.extend(
                case.results
                    .iter()
                    .map(|r| count_cell(median(&r.boots, counter))),
            );
            let mine = spry.and_then(|s| median(&s.boots, counter));
            row.extend(
                case.results
                    .iter()
                    .filter(|r| r.system != "spry")
                    .map(|r| ratio_cell(mine, median(&r.boots, counter))),
            );
            row
        })
        .collect()
}

fn headers(case: &CaseResult, first: &str) -> Vec<String> {
    let mut headers = vec![first.to_owned(), "counter".to_owned()];
    headers.extend(case.results.iter().map(|r| r.system.clone()));
    headers.extend(
        case.results
            .iter()
            .filter(|r| r.system != "spry")
            .map(|r| format!("spry/{}", r.system)),
    );
    headers
}

fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    markdown_table(&headers, rows)
}

/// The exits table of `case`, with the wall time last (`emulated`: labelled as the
/// emulator's time it is).
pub fn exits_table(case: &CaseResult, emulated: bool) -> String {
    let mut rows = kind_rows(case, &EXIT_KINDS);
    let wall = |boots: &[Boot]| {
        let ms: Vec<f64> = boots.iter().map(|b| b.to_marker_ms).collect();
        summarize(&ms).map(|s| s.median)
    };
    let mut row = vec![
        if emulated {
            "wall time, start → init's marker, ms: EMULATED (TCG), not a hardware time".to_owned()
        } else {
            "wall time, start → init's marker, ms".to_owned()
        },
        "–".to_owned(),
    ];
    row.extend(
        case.results
            .iter()
            .map(|r| wall(&r.boots).map_or("–".into(), num)),
    );
    let mine = case
        .results
        .iter()
        .find(|r| r.system == "spry")
        .and_then(|s| wall(&s.boots));
    row.extend(
        case.results
            .iter()
            .filter(|r| r.system != "spry")
            .map(|r| ratio_cell(mine, wall(&r.boots))),
    );
    rows.push(row);
    table(&headers(case, "exit kind (medians per boot)"), &rows)
}

/// The related counters of `case`.
pub fn related_table(case: &CaseResult) -> String {
    table(
        &headers(case, "related counter (not exits)"),
        &kind_rows(case, &RELATED),
    )
}

/// "spry 25020–25051, QEMU ...": the range of all exits over each VMM's boots.
pub fn spread_line(case: &CaseResult) -> String {
    let parts: Vec<String> = case
        .results
        .iter()
        .map(|r| {
            let all: Vec<f64> = r
                .boots
                .iter()
                .filter_map(|b| b.counters.get("exits").map(|&v| v as f64))
                .collect();
            match summarize(&all) {
                Some(s) => format!(
                    "{} {}–{} ({} boots)",
                    r.system,
                    count_cell(Some(s.min)),
                    count_cell(Some(s.max)),
                    s.n
                ),
                None => format!("{} –", r.system),
            }
        })
        .collect();
    format!("All exits, lowest–highest: {}.", parts.join("; "))
}

/// A breakdown table: labels (the `limit` largest, the rest summed) by VMM.
fn breakdown_table(
    case: &CaseResult,
    what: &str,
    get: fn(&Breakdown) -> &BTreeMap<String, u64>,
    limit: usize,
) -> Option<String> {
    let traced: Vec<(&str, &BTreeMap<String, u64>)> = case
        .results
        .iter()
        .filter_map(|r| Some((r.system.as_str(), get(r.breakdown.as_ref()?))))
        .collect();
    let mut labels: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, map) in &traced {
        for (label, &n) in *map {
            let top = labels.entry(label).or_insert(0);
            *top = (*top).max(n);
        }
    }
    if labels.is_empty() {
        return None;
    }
    let mut order: Vec<(&str, u64)> = labels.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let (shown, rest) = order.split_at(order.len().min(limit));
    let mut rows: Vec<Vec<String>> = shown
        .iter()
        .map(|(label, _)| {
            let mut row = vec![(*label).to_owned()];
            row.extend(
                traced
                    .iter()
                    .map(|(_, m)| m.get(*label).copied().unwrap_or(0).to_string()),
            );
            row
        })
        .collect();
    if !rest.is_empty() {
        let mut row = vec![format!("{} more", rest.len())];
        row.extend(traced.iter().map(|(_, m)| {
            rest.iter()
                .map(|(l, _)| m.get(*l).copied().unwrap_or(0))
                .sum::<u64>()
                .to_string()
        }));
        rows.push(row);
    }
    let mut headers = vec![what.to_owned()];
    headers.extend(traced.iter().map(|(s, _)| (*s).to_owned()));
    Some(table(&headers, &rows))
}

/// One breakdown table: title, first column, the counts it shows, rows at most.
type Section = (
    &'static str,
    &'static str,
    fn(&Breakdown) -> &BTreeMap<String, u64>,
    usize,
);

/// The check boots' tracepoint tables of `case`.
fn breakdown_section(case: &CaseResult) -> String {
    let sections: [Section; 5] = [
        (
            "VM exits by reason (`kvm_exit`)",
            "exit reason",
            |b| &b.exit_reasons,
            16,
        ),
        (
            "Returns from KVM_RUN to the VMM by reason (`kvm_userspace_exit`): the \
             exits the VMM's own code handles",
            "reason",
            |b| &b.to_vmm,
            8,
        ),
        (
            "Port I/O by device and register (`kvm_pio`; the PIT and PIC are in the \
             kernel, the rest goes to the VMM)",
            "port",
            |b| &b.ports,
            14,
        ),
        (
            "MMIO by region (`kvm_mmio`; the APIC and, in spry and Firecracker, the \
             IOAPIC are in the kernel)",
            "region",
            |b| &b.mmio,
            10,
        ),
        (
            "MSR accesses KVM handled (`kvm_msr`)",
            "MSR",
            |b| &b.msrs,
            12,
        ),
    ];
    let totals: Vec<String> = case
        .results
        .iter()
        .filter_map(|r| {
            let b = r.breakdown.as_ref()?;
            Some(format!("{} {}", r.system, b.to_vmm_total()))
        })
        .collect();
    let mut out = String::new();
    if !totals.is_empty() {
        out.push_str(&format!(
            "Returns to the VMM, all reasons: {}.\n\n",
            totals.join(", ")
        ));
    }
    for (title, column, get, limit) in sections {
        if let Some(t) = breakdown_table(case, column, get, limit) {
            out.push_str(&format!("{title}:\n\n{t}\n"));
        }
    }
    out
}

/// Where the numbers come from, in one paragraph.
fn place_paragraph(r: &ExitsReport) -> String {
    let host = &r.place.host;
    let hw = format!(
        "{} on {} ({} CPUs, Linux {})",
        r.place.kvm_module, host.cpu, host.cpus, host.kernel
    );
    match &r.place.outer_host {
        Some(outer) => format!(
            "Measured in the nested host (`{}`) on {outer}: L1 is Linux {} \
             with {} (nested paging) under QEMU's TCG emulator. The exit counts are what \
             these boots cost under KVM with AMD-V on real hardware, except that exits \
             driven by time (host interrupts, timer MSRs, HLT and its wake-ups) grow with the \
             emulated boot's length; every time is emulated and means little.",
            r.place
                .launcher
                .as_deref()
                .map_or("tools/nested/nested-host".into(), |p| p
                    .display()
                    .to_string()),
            host.kernel,
            r.place.kvm_module,
        ),
        None => format!("Measured on {hw}."),
    }
}

/// The whole Markdown report.
pub fn render(r: &ExitsReport) -> String {
    let emulated = r.place.outer_host.is_some();
    let mut out = String::from("# VM exits of a Linux boot to init\n\n");
    out.push_str(&format!(
        "`spry-bench exits`, {} ({}).\n\n{}\n\n",
        r.place.host.date,
        r.place.host.hostname,
        place_paragraph(r)
    ));
    out.push_str(&format!(
        "Guest: `{}` (the project's Linux guest), the same kernel command line for every VMM \
         (each adds what its devices need): `{BASE_ARGS}` plus `spry.mode=run \
         spry.cmd=...` (init prints a marker line, then waits on the console). Each VMM \
         boots each case once with the full kernel log (the check boot: it must reach init \
         and see the asked-for CPUs, or the VMM is not compared), then {} times, alternated \
         between the VMMs. When the marker arrives, KVM's counters of the VM \
         (`/sys/kernel/debug/kvm/<pid>-<fd>/`, the vCPUs' summed) are read and the VMM is \
         killed. Medians over the measured boots; every counter of every boot is in \
         `exits.json`.\n\n",
        r.kernel.display(),
        r.settings.runs
    ));
    out.push_str("VMMs:\n\n");
    for (name, version) in &r.versions {
        out.push_str(&format!("- {name}: {version}\n"));
    }
    for peer in &r.unavailable {
        out.push_str(&format!("- {}: not run: {}\n", peer.name, peer.reason));
    }
    out.push('\n');
    for case in &r.cases {
        out.push_str(&format!("## {}\n\n", case.label));
        out.push_str(&format!("Kernel command line: `{}`\n\n", case.boot_args));
        out.push_str(&exits_table(case, emulated));
        out.push('\n');
        out.push_str(&related_table(case));
        out.push_str(&format!("\n{}\n\n", spread_line(case)));
        for note in warning_notes(case) {
            out.push_str(&format!("Note: {note}.\n\n"));
        }
        for peer in &case.not_compared {
            out.push_str(&format!("Not compared: {}: {}\n\n", peer.name, peer.reason));
        }
        out.push_str("Commands and the command line each guest kernel reported:\n\n");
        for result in &case.results {
            out.push_str(&format!(
                "- {}: `{}`\n  - kernel: `{}`\n",
                result.system,
                result.command,
                result.guest_cmdline.as_deref().unwrap_or("(not printed)")
            ));
            if let Some(mapping) = &result.guest_mapping {
                out.push_str(&format!("  - guest RAM mapped {}\n", mapping.describe()));
            }
            for warning in &result.kernel_warnings {
                out.push_str(&format!("  - kernel warned: `{warning}`\n"));
            }
            for failure in &result.failed_boots {
                out.push_str(&format!(
                    "  - a boot failed and was tried again: {failure}\n"
                ));
            }
        }
        out.push('\n');
        let breakdown = breakdown_section(case);
        if !breakdown.is_empty() {
            out.push_str(&format!(
                "### Where the exits of the check boot come from\n\nTracepoint histograms \
                 of each VMM's check boot (full kernel log), set before the VMM started and \
                 read at the marker.\n\n{breakdown}\n"
            ));
        }
    }
    if let Some(problem) = &r.trace_problem {
        out.push_str(&format!("No tracepoint breakdown: {problem}.\n"));
    }
    out
}

/// A note for each VMM whose guest kernel warned in `case`'s check boot.
fn warning_notes(case: &CaseResult) -> Vec<String> {
    let effect = match case.case.kernel_log {
        KernelLog::Full => "its console output counts in every boot of the case",
        KernelLog::Quiet => "`quiet` keeps it off the console in the measured boots",
    };
    case.results
        .iter()
        .filter(|r| !r.kernel_warnings.is_empty())
        .map(|r| {
            format!(
                "the guest kernel warned under {} ({}): {effect}",
                r.system,
                r.kernel_warnings.join(" / ")
            )
        })
        .collect()
}

/// What spry-bench prints: each case's exits table.
pub fn summary(r: &ExitsReport) -> String {
    let emulated = r.place.outer_host.is_some();
    let mut out = format!("VM exits of a Linux boot to init. {}\n", place_paragraph(r));
    for case in &r.cases {
        out.push_str(&format!(
            "\n{}\n\n{}",
            case.label,
            exits_table(case, emulated)
        ));
        out.push_str(&format!("{}\n", spread_line(case)));
        for note in warning_notes(case) {
            out.push_str(&format!("note: {note}\n"));
        }
        for r in case.results.iter().filter(|r| !r.failed_boots.is_empty()) {
            out.push_str(&format!(
                "note: {} boot(s) of {} failed and were tried again (see the report)\n",
                r.failed_boots.len(),
                r.system
            ));
        }
        for peer in &case.not_compared {
            out.push_str(&format!("not compared: {}: {}\n", peer.name, peer.reason));
        }
    }
    for peer in &r.unavailable {
        out.push_str(&format!("not run: {}: {}\n", peer.name, peer.reason));
    }
    out
}

fn write_file(path: &Path, text: &str) -> Result<(), ExitsError> {
    std::fs::write(path, text).map_err(|source| ExitsError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes `exits.md` and `exits.json` into `dir`; returns their paths.
pub fn write(r: &ExitsReport, dir: &Path) -> Result<(PathBuf, PathBuf), ExitsError> {
    let markdown = dir.join("exits.md");
    write_file(&markdown, &render(r))?;
    let json = dir.join("exits.json");
    let text = serde_json::to_string_pretty(r).map_err(|e| ExitsError::Write {
        path: json.clone(),
        source: e.into(),
    })?;
    write_file(&json, &text)?;
    Ok((markdown, json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Unavailable;
    use crate::exits::{Case, Root, VmmResult};

    fn boot(pairs: &[(&str, u64)], ms: f64) -> Boot {
        Boot {
            vm_dir: "1-2".into(),
            counters: pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            to_marker_ms: ms,
        }
    }

    fn result(system: &str, boots: Vec<Boot>) -> VmmResult {
        VmmResult {
            system: system.into(),
            command: format!("{system} --config-file x"),
            guest_cmdline: Some("console=ttyS0".into()),
            kernel_warnings: Vec::new(),
            guest_mapping: None,
            failed_boots: Vec::new(),
            check: boots[0].clone(),
            breakdown: None,
            boots,
        }
    }

    fn case() -> CaseResult {
        let spry = |exits, io| {
            boot(
                &[
                    ("exits", exits),
                    ("io_exits", io),
                    ("pf_taken", 6000),
                    ("halt_exits", 10),
                    ("mmio_exits", 1),
                ],
                9000.0,
            )
        };
        let qemu = boot(
            &[
                ("exits", 20000),
                ("io_exits", 16800),
                ("pf_taken", 340),
                ("halt_exits", 0),
                ("mmio_exits", 597),
            ],
            18000.0,
        );
        let case = Case {
            vcpus: 1,
            mem_mib: 256,
            root: Root::Initrd,
            kernel_log: KernelLog::Full,
        };
        CaseResult {
            case,
            label: case.label(),
            boot_args: case.boot_args(false),
            results: vec![
                result(
                    "spry",
                    vec![spry(25000, 16400), spry(25100, 16500), spry(25050, 16450)],
                ),
                result("QEMU", vec![qemu]),
            ],
            not_compared: vec![Unavailable {
                name: "Firecracker".into(),
                reason: "its check boot failed".into(),
            }],
        }
    }

    #[test]
    fn test_other_is_what_no_kind_counts() {
        let c = boot(
            &[
                ("exits", 100),
                ("io_exits", 50),
                ("pf_taken", 20),
                ("irq_exits", 5),
            ],
            1.0,
        )
        .counters;
        assert_eq!(kind_value(&c, OTHER), Some(25));
        assert_eq!(kind_value(&c, "io_exits"), Some(50));
        assert_eq!(kind_value(&c, "hypercalls"), None);
        let mut broken = c.clone();
        broken.insert("exits".into(), 10);
        assert_eq!(kind_value(&broken, OTHER), Some(0));
    }

    #[test]
    fn test_cells() {
        assert_eq!(count_cell(Some(25050.0)), "25050");
        assert_eq!(count_cell(Some(2.5)), "2.5");
        assert_eq!(count_cell(None), "–");
        assert_eq!(ratio_cell(Some(25050.0), Some(20000.0)), "1.25x");
        assert_eq!(ratio_cell(Some(0.0), Some(0.0)), "=");
        assert_eq!(ratio_cell(Some(0.0), Some(5.0)), "0.00x");
        assert_eq!(ratio_cell(Some(3.0), Some(0.0)), "–");
        assert_eq!(ratio_cell(None, Some(1.0)), "–");
    }

    #[test]
    fn test_exits_table_has_medians_and_ratios() {
        let t = exits_table(&case(), true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains(" spry |")
                && lines[0].contains(" QEMU |")
                && lines[0].contains("spry/QEMU"),
            "{t}"
        );
        let all = lines.iter().find(|l| l.contains("`exits`")).unwrap();
        assert!(
            all.contains("25050") && all.contains("20000") && all.contains("1.25x"),
            "{t}"
        );
        let pf = lines.iter().find(|l| l.contains("`pf_taken`")).unwrap();
        assert!(pf.contains("17.6x"), "{t}");
        let mmio = lines.iter().find(|l| l.contains("`mmio_exits`")).unwrap();
        assert!(mmio.contains("0.002x"), "{t}");
        // other = 25050 - 16450 - 1 - 6000 - 10 for spry; 20000 - 16800 - 597 - 340 for QEMU.
        let other = lines.iter().find(|l| l.contains("`other`")).unwrap();
        assert!(other.contains("2589") && other.contains("2263"), "{t}");
        let wall = lines.last().unwrap();
        assert!(wall.contains("EMULATED") && wall.contains("0.50x"), "{t}");
        assert_eq!(lines.len(), 2 + EXIT_KINDS.len() + 1);
        assert!(!exits_table(&case(), false).contains("EMULATED"));
    }

    #[test]
    fn test_report_names_place_peers_and_spread() {
        let report = ExitsReport {
            place: crate::exits::Place {
                host: crate::host::HostInfo::detect(),
                kvm_module: "kvm_amd".into(),
                outer_host: Some("AMD EPYC (2 CPUs, Linux 6.18, /dev/kvm: PVM)".into()),
                launcher: Some("/repo/tools/nested/exits-host".into()),
            },
            settings: crate::exits::Settings {
                runs: 3,
                retries: 2,
                vcpus: vec![1],
                mem_mib: 256,
                roots: vec![Root::Initrd],
                kernel_logs: vec![KernelLog::Full],
                firecracker: None,
                qemu: None,
                no_qemu: false,
                trace: false,
                out: None,
                nested_host: None,
            },
            kernel: "build/guest/vmlinux".into(),
            versions: vec![("spry".into(), "spry 0.1.0".into())],
            trace_problem: None,
            cases: vec![case()],
            unavailable: Vec::new(),
        };
        let md = render(&report);
        assert!(md.contains("nested host"), "{md}");
        assert!(md.contains("exits-host`) on AMD EPYC (2 CPUs"), "{md}");
        assert!(md.contains("## 1 vCPU, 256 MiB, initrd, no devices, full kernel log"));
        assert!(md.contains("Not compared: Firecracker: its check boot failed"));
        assert!(md.contains("spry 25000–25100 (3 boots); QEMU 20000–20000 (1 boots)"));
        assert!(md.contains("`pages_2m`"));
        let text = summary(&report);
        assert!(text.contains("not compared: Firecracker"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["cases"][0]["results"][0]["boots"][0]["counters"]["exits"],
            25000
        );
    }
}
