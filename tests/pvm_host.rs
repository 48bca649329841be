//! On a PVM host (no VT-x/AMD-V: KVM runs guests through its instruction emulator)
//! spry refuses to boot Linux, in one line, instead of letting it die obscurely.

mod common;

use common::{linux_artifact, skip, Scratch, Spry};
use spry::host::HostKvm;

fn linux_config(kernel: &str, initrd: Option<&str>) -> String {
    common::config(
        &linux_artifact(kernel),
        "console=ttyS0 reboot=k panic=1 pci=off spry.mode=report",
        initrd.map(linux_artifact).as_deref(),
        1,
        128,
    )
}

#[test]
fn test_linux_vmlinux_on_pvm_host_is_refused_in_one_line() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_vmlinux_on_pvm_host_is_refused_in_one_line",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(&scratch, &linux_config("vmlinux", Some("initramfs.cpio"))).run();
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
fn test_linux_bzimage_on_pvm_host_is_refused_in_one_line() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_bzimage_on_pvm_host_is_refused_in_one_line",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(&scratch, &linux_config("bzImage", None)).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("PVM"), "{out}");
}
