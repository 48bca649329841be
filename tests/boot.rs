//! The probe guest booted through spry on real KVM: every entry check the Linux boot
//! protocol promises must print `ok`, and the guest's reset must end spry with 0.

mod common;

use std::time::Duration;

use common::{
    config, probe_args, probe_bzimage, probe_initrd, probe_vmlinux, Outcome, Scratch, Spry,
};

fn boot(
    kernel: &std::path::Path,
    extra: &str,
    initrd: Option<&[u8]>,
    vcpus: u8,
    mem_mib: u32,
) -> Outcome {
    let scratch = Scratch::new();
    let initrd_path = initrd.map(|bytes| scratch.write("initrd.img", bytes));
    let args = probe_args(&format!(
        "probe.expect_cpus={vcpus} probe.expect_mem_mib={mem_mib} {extra}"
    ));
    let text = config(kernel, &args, initrd_path.as_deref(), vcpus, mem_mib);
    Spry::with_config(&scratch, &text)
        .arg("--log-level")
        .arg("info")
        .run()
}

#[test]
fn test_probe_vmlinux_1_vcpu_128_mib() {
    let out = boot(&probe_vmlinux(), "", None, 1, 128);
    out.assert_probe_all_ok();
}

#[test]
fn test_probe_bzimage_1_vcpu_128_mib() {
    let out = boot(&probe_bzimage(), "", None, 1, 128);
    out.assert_probe_all_ok();
    assert!(out.stdout.contains("bzImage boot"), "{out}");
}

#[test]
fn test_probe_vmlinux_with_initrd() {
    let out = boot(
        &probe_vmlinux(),
        "probe.expect_initrd=1",
        Some(&probe_initrd(4096 - 24)),
        1,
        128,
    );
    out.assert_probe_all_ok();
    assert!(
        out.stdout.contains("probe: initrd: ok 4096 bytes at 0x"),
        "{out}"
    );
}

#[test]
fn test_probe_bzimage_with_initrd() {
    let out = boot(
        &probe_bzimage(),
        "probe.expect_initrd=1",
        Some(&probe_initrd(1000)),
        1,
        128,
    );
    out.assert_probe_all_ok();
}

#[test]
fn test_probe_sees_4_vcpus_in_the_mp_table() {
    let out = boot(&probe_vmlinux(), "", None, 4, 128);
    out.assert_probe_all_ok();
    assert!(out.stdout.contains("probe: mptable: ok 4 cpus"), "{out}");
}

#[test]
fn test_probe_32_vcpus() {
    let out = boot(&probe_vmlinux(), "", None, 32, 128);
    out.assert_probe_all_ok();
}

#[test]
fn test_probe_6_gib_has_ram_above_4_gib() {
    let out = boot(&probe_vmlinux(), "", None, 1, 6144);
    out.assert_probe_all_ok();
    assert!(
        out.stdout.contains("probe: e820: ok 4 entries, 6144 MiB"),
        "{out}"
    );
}

#[test]
fn test_probe_6_gib_bzimage_with_initrd_and_4_vcpus() {
    let out = boot(
        &probe_bzimage(),
        "probe.expect_initrd=1",
        Some(&probe_initrd(8192)),
        4,
        6144,
    );
    out.assert_probe_all_ok();
}

#[test]
fn test_command_line_reaches_the_guest_verbatim() {
    let out = boot(&probe_vmlinux(), "spry.test=hello_world", None, 1, 128);
    out.assert_probe_all_ok();
    let line = out
        .probe_lines()
        .into_iter()
        .find(|l| l.starts_with("probe: cmdline: ok"))
        .unwrap_or_default();
    assert!(line.contains("spry.test=hello_world"), "{out}");
}

#[test]
fn test_interrupt_arrives_through_irqfd_and_ioapic() {
    let out = boot(&probe_vmlinux(), "", None, 1, 128);
    assert!(out.stdout.contains("probe: interrupt: ok vector"), "{out}");
}

#[test]
fn test_boot_timer_write_is_logged() {
    let out = boot(&probe_vmlinux(), "", None, 1, 128);
    out.assert_probe_all_ok();
    assert!(out.stderr.contains("Guest-boot-time = "), "{out}");
}

#[test]
fn test_guest_reset_is_logged_and_exits_zero() {
    let out = boot(&probe_vmlinux(), "probe.quiet=1", None, 2, 128);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("guest reset the machine"), "{out}");
}

#[test]
fn test_console_echoes_input_and_quits_on_q() {
    let scratch = Scratch::new();
    let text = config(
        &probe_vmlinux(),
        &probe_args("probe.mode=console"),
        None,
        1,
        128,
    );
    let out = Spry::with_config(&scratch, &text)
        .stdin(b"hello spry\nq")
        .run();
    assert!(out.stdout.contains("probe: console ready"), "{out}");
    assert!(out.stdout.contains("hello spry"), "{out}");
    assert!(out.stdout.contains("probe: console bye"), "{out}");
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_sigterm_stops_a_running_guest_cleanly() {
    let scratch = Scratch::new();
    let text = config(
        &probe_vmlinux(),
        &probe_args("probe.mode=console"),
        None,
        2,
        128,
    );
    let mut spry = Spry::with_config(&scratch, &text);
    let mut child = spry.spawn();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child process; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn test_probe_boots_with_drives_and_a_tap_attached() {
    let ns = match common::NetNs::new("boot") {
        Ok(ns) => ns,
        Err(reason) => {
            common::skip("test_probe_boots_with_drives_and_a_tap_attached", &reason);
            return;
        }
    };
    ns.add_tap("sprytap0");
    let scratch = Scratch::new();
    let root = scratch.write("root.img", &vec![0u8; 1 << 20]);
    let data = scratch.write("data.img", &vec![0u8; 1 << 16]);
    let mut config: serde_json::Value = serde_json::from_str(&config(
        &probe_vmlinux(),
        &probe_args("probe.quiet=1"),
        None,
        1,
        128,
    ))
    .unwrap();
    config["drives"] = serde_json::json!([
        {"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false},
        {"drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": true},
    ]);
    config["network-interfaces"] = serde_json::json!([
        {"iface_id": "eth0", "host_dev_name": "sprytap0", "guest_mac": "AA:FC:00:00:00:01"},
    ]);
    let out = ns
        .spry(&scratch, &config.to_string())
        .arg("--log-level")
        .arg("debug")
        .run();
    out.assert_probe_all_ok();
    assert!(
        out.stderr
            .contains("virtio-blk rootfs at 0xd0000000, IRQ 5"),
        "{out}"
    );
    assert!(
        out.stderr.contains("virtio-blk data at 0xd0001000, IRQ 6"),
        "{out}"
    );
    assert!(
        out.stderr.contains("virtio-net eth0 at 0xd0002000, IRQ 7"),
        "{out}"
    );
}
