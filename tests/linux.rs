//! The project's Linux guest through spry. It needs hardware virtualization: on PVM
//! hosts these tests are skipped with the reason, except the one that checks spry
//! refuses Linux there with a one-line explanation.

mod common;

use common::{linux_artifact, linux_unavailable, skip, Scratch, Spry};
use spry::host::HostKvm;

const LINUX_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

fn linux_config(
    kernel: &str,
    args: &str,
    initrd: Option<&str>,
    extra: &str,
    vcpus: u8,
    mem_mib: u32,
) -> String {
    let initrd = initrd
        .map(|p| format!(r#", "initrd_path": "{}""#, linux_artifact(p).display()))
        .unwrap_or_default();
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{LINUX_ARGS} {args}"{initrd}}},
            "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": {mem_mib}}}{extra}}}"#,
        linux_artifact(kernel).display()
    )
}

#[test]
fn test_linux_on_pvm_host_is_refused_in_one_line() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_on_pvm_host_is_refused_in_one_line",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "vmlinux",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            1,
            128,
        ),
    )
    .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("cannot boot") && lines[0].contains("PVM"),
        "{out}"
    );
}

#[test]
fn test_linux_bzimage_on_pvm_host_is_refused_too() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_bzimage_on_pvm_host_is_refused_too",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config("bzImage", "spry.mode=report", None, "", 1, 128),
    )
    .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("PVM"), "{out}");
}

#[test]
fn test_linux_vmlinux_boots_to_init_reports_and_reboots() {
    if let Some(reason) = linux_unavailable() {
        skip(
            "test_linux_vmlinux_boots_to_init_reports_and_reboots",
            &reason,
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "vmlinux",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            2,
            256,
        ),
    )
    .arg("--log-level")
    .arg("info")
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("spry-guest: report cpus=2 mem_kib="),
        "{out}"
    );
    assert!(out.stderr.contains("Guest-boot-time"), "{out}");
}

#[test]
fn test_linux_bzimage_boots_with_4_vcpus() {
    if let Some(reason) = linux_unavailable() {
        skip("test_linux_bzimage_boots_with_4_vcpus", &reason);
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "bzImage",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            4,
            512,
        ),
    )
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("spry-guest: report cpus=4"), "{out}");
}
