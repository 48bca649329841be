//! How a guest ends decides spry's exit code and the line it prints: tiny kernels
//! that end in each way.

mod common;

use common::{config, tiny_kernel, Scratch, Spry};
use spry::host::HostKvm;

fn run(code: &[u8]) -> common::Outcome {
    let scratch = Scratch::new();
    let kernel = scratch.write("vmlinux", &tiny_kernel(code));
    Spry::with_config(&scratch, &config(&kernel, "console=ttyS0", None, 1, 64))
        .arg("--log-level")
        .arg("info")
        .run()
}

/// `mov $0xfe, %al; out %al, $0x64` (i8042 reset), then `hlt`.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];
/// `ud2` with no IDT: #UD, #GP, double fault, triple fault.
const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];
/// `popcnt %rax, %rax`, which KVM's instruction emulator does not implement.
const POPCNT: &[u8] = &[0xf3, 0x48, 0x0f, 0xb8, 0xc0, 0xb0, 0xfe, 0xe6, 0x64, 0xf4];

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
    if HostKvm::detect() != HostKvm::Pvm {
        common::skip(
            "test_emulation_failure_exits_4_naming_the_rip",
            "popcnt runs natively with hardware virtualization; only the emulator refuses it",
        );
        return;
    }
    let out = run(POPCNT);
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(
        out.stderr.lines().any(|l| l
            .starts_with("spry: vCPU 0: KVM emulation failure: instruction emulation failed")
            && l.contains("RIP 0x1000000")),
        "{out}"
    );
}
