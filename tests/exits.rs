//! How a guest ends decides spry's exit code and the line it prints: tiny kernels
//! that end in each way. Also which kernels a PVM host boots: everything but Linux.

mod common;

use common::{config, tiny_kernel, Outcome, Scratch, Spry};
use spry::host::HostKvm;

fn run_kernel(kernel: &[u8], log_level: &str) -> Outcome {
    let scratch = Scratch::new();
    let kernel = scratch.write("vmlinux", kernel);
    Spry::with_config(&scratch, &config(&kernel, "console=ttyS0", None, 1, 64))
        .arg("--log-level")
        .arg(log_level)
        .run()
}

fn run(code: &[u8]) -> Outcome {
    run_kernel(&tiny_kernel(code), "info")
}

// `tiny_kernel` lays out: the ELF header, two program headers (PT_LOAD, then PT_NOTE),
// then the note `namesz 5, descsz 13, type 1, "spry\0", "emulator-safe"`.
/// Offset of the PT_NOTE program header's `p_type`.
const NOTE_PHDR_TYPE: usize = 64 + 56;
/// Offset of the note itself.
const NOTE: usize = 64 + 2 * 56;

/// The tiny kernel with no notes at all (its PT_NOTE header made PT_NULL): a small
/// custom ELF kernel nothing marks as emulator-safe.
fn unmarked_kernel(code: &[u8]) -> Vec<u8> {
    let mut elf = tiny_kernel(code);
    assert_eq!(elf[NOTE_PHDR_TYPE..NOTE_PHDR_TYPE + 4], 4u32.to_le_bytes());
    elf[NOTE_PHDR_TYPE..NOTE_PHDR_TYPE + 4].copy_from_slice(&0u32.to_le_bytes());
    elf
}

/// The tiny kernel with spry's note turned into one of Linux's own (owner "Linux",
/// type 0x100, the build salt every vmlinux carries): an ELF spry takes for Linux.
fn linux_noted_kernel(code: &[u8]) -> Vec<u8> {
    let mut elf = tiny_kernel(code);
    assert_eq!(&elf[NOTE + 12..NOTE + 20], b"spry\0\0\0\0");
    elf[NOTE..NOTE + 4].copy_from_slice(&6u32.to_le_bytes());
    elf[NOTE + 8..NOTE + 12].copy_from_slice(&0x100u32.to_le_bytes());
    elf[NOTE + 12..NOTE + 20].copy_from_slice(b"Linux\0\0\0");
    elf
}

/// `mov $0xfe, %al; out %al, $0x64` (i8042 reset), then `hlt`.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];
/// `mov $0x3f8, %dx`, then `mov $c, %al; out %al, (%dx)` for "ok\n" on COM1, then
/// the i8042 reset.
const SAY_OK_AND_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'o', 0xee, 0xb0, b'k', 0xee, 0xb0, b'\n', 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4,
];
/// `mov $0xfe, %al`, then `out %al, $0x64` in a loop, as Linux retries its reset
/// until the machine goes away.
const RESET_FOREVER: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfc];
/// `ud2` with no IDT: #UD, #GP, double fault, triple fault.
const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];
/// `popcnt %rax, %rax`, which KVM's instruction emulator does not implement (nor SSE,
/// AVX, `crc32` or `xgetbv`; `rdrand` and `lzcnt` it runs), then the i8042 reset.
const POPCNT: &[u8] = &[0xf3, 0x48, 0x0f, 0xb8, 0xc0, 0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// spry's one line on stderr, asserting it printed nothing else and the guest
/// nothing at all.
fn only_line(out: &Outcome) -> &str {
    assert_eq!(out.stdout, "", "{out}");
    let mut lines = out.stderr.lines();
    let line = lines.next().unwrap_or_default();
    assert!(!line.is_empty() && lines.next().is_none(), "{out}");
    line
}

/// Whether the host is PVM; elsewhere the calling test is reported skipped.
fn on_pvm_only(test: &str, why: &str) -> bool {
    if HostKvm::detect() == HostKvm::Pvm {
        return true;
    }
    common::skip(test, why);
    false
}

const POPCNT_RUNS_NATIVELY: &str =
    "popcnt runs natively with hardware virtualization; only the emulator refuses it";

#[test]
fn test_i8042_reset_exits_zero_and_logs_it() {
    let out = run(RESET);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("VM stopped: guest reset the machine"),
        "{out}"
    );
}

#[test]
fn test_repeated_i8042_reset_logs_once() {
    let out = run(RESET_FOREVER);
    assert_eq!(out.code(), Some(0), "{out}");
    let resets = out
        .stderr
        .lines()
        .filter(|l| l.contains("guest reset the machine through the i8042"))
        .count();
    assert_eq!(resets, 1, "{out}");
}

#[test]
fn test_triple_fault_exits_3_with_one_line() {
    let out = run(TRIPLE_FAULT);
    assert_eq!(out.code(), Some(3), "{out}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l == "spry: vCPU 0 triple-faulted (KVM shutdown)"),
        "{out}"
    );
}

#[test]
fn test_emulation_failure_exits_4_naming_the_rip() {
    if !on_pvm_only(
        "test_emulation_failure_exits_4_naming_the_rip",
        POPCNT_RUNS_NATIVELY,
    ) {
        return;
    }
    let out = run(POPCNT);
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(
        out.stderr.lines().any(|l| l.starts_with("spry: vCPU 0: ")
            && l.contains("RIP 0x1000000")
            && l.contains("bytes from there: f3 48 0f b8 c0")),
        "{out}"
    );
}

#[test]
fn test_unmarked_tiny_kernel_boots_and_runs() {
    let out = run_kernel(&unmarked_kernel(SAY_OK_AND_RESET), "warn");
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "ok\n", "{out}");
    assert_eq!(out.stderr, "", "{out}");
}

#[test]
fn test_unemulated_instruction_on_pvm_is_explained_in_one_line() {
    if !on_pvm_only(
        "test_unemulated_instruction_on_pvm_is_explained_in_one_line",
        POPCNT_RUNS_NATIVELY,
    ) {
        return;
    }
    let out = run_kernel(&unmarked_kernel(POPCNT), "warn");
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(
        only_line(&out).starts_with(
            "spry: vCPU 0: this host is PVM (no VT-x/AMD-V), where KVM emulates every guest \
             instruction, and the guest executed an instruction KVM's emulator cannot run at \
             RIP 0x1000000 (bytes from there: f3 48 0f b8 c0 "
        ),
        "{out}"
    );
}

#[test]
fn test_elf_with_linux_notes_is_refused_on_pvm_in_one_line() {
    if !on_pvm_only(
        "test_elf_with_linux_notes_is_refused_on_pvm_in_one_line",
        "hosts with hardware virtualization boot Linux",
    ) {
        return;
    }
    let out = run_kernel(&linux_noted_kernel(SAY_OK_AND_RESET), "warn");
    assert_eq!(out.code(), Some(1), "{out}");
    let line = only_line(&out);
    assert!(
        line.contains("cannot boot") && line.contains("PVM"),
        "{out}"
    );
}
