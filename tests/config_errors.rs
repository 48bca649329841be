//! Bad configs start nothing: spry exits 2 with one line naming the field and value.

mod common;

use common::{probe_vmlinux, NetNs, Scratch, Spry};

/// Runs spry on `config` and checks the refusal: exit 2, nothing on the console,
/// exactly one line on stderr, and (at debug level) no vCPU ever started.
fn refused(config: &str) -> String {
    let scratch = Scratch::new();
    let out = Spry::with_config(&scratch, config).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line\n{out}");
    assert!(lines[0].starts_with("spry: "), "{out}");

    let debug = Spry::with_config(&scratch, config)
        .arg("--log-level")
        .arg("debug")
        .run();
    assert!(
        !debug.stderr.contains("vCPU"),
        "a vCPU was touched\n{debug}"
    );
    lines[0].to_owned()
}

fn kernel() -> String {
    probe_vmlinux().display().to_string()
}

#[test]
fn test_unknown_top_level_field_is_named() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "bogus": 1}}"#,
        kernel()
    ));
    assert!(line.contains("bogus: unknown field `bogus`"), "{line}");
}

#[test]
fn test_unknown_machine_config_field_is_named() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 2}}}}"#,
        kernel()
    ));
    assert!(
        line.contains("machine-config.vcpus: unknown field `vcpus`"),
        "{line}"
    );
}

#[test]
fn test_wrong_type_names_field_and_value() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": "two", "mem_size_mib": 128}}}}"#,
        kernel()
    ));
    assert!(
        line.contains("machine-config.vcpu_count: invalid type: string \"two\""),
        "{line}"
    );
}

#[test]
fn test_malformed_json_is_refused() {
    let line = refused(r#"{"boot-source": {"kernel_image_path": "/k""#);
    assert!(line.contains("EOF while parsing"), "{line}");
}

#[test]
fn test_missing_config_file_is_refused() {
    let out = Spry::new()
        .arg("--config-file")
        .arg("/nonexistent/vm.json")
        .run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "spry: cannot read config file /nonexistent/vm.json: No such file or directory (os error 2)"
    );
}

#[test]
fn test_missing_kernel_is_named() {
    let line = refused(r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#);
    assert!(
        line.ends_with("boot-source.kernel_image_path: cannot read /nonexistent/vmlinux: No such file or directory (os error 2)"),
        "{line}"
    );
}

#[test]
fn test_kernel_that_is_not_a_kernel_is_refused() {
    let scratch = Scratch::new();
    let text = scratch.write("notes.txt", b"just some text\n");
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}}}"#,
        text.display()
    ));
    assert!(
        line.contains("is not a kernel: neither an x86_64 ELF vmlinux nor a bzImage"),
        "{line}"
    );
}

#[test]
fn test_unreadable_kernel_directory_is_refused() {
    let line = refused(r#"{"boot-source": {"kernel_image_path": "/"}}"#);
    assert!(
        line.contains("boot-source.kernel_image_path: cannot read /"),
        "{line}"
    );
}

#[test]
fn test_missing_initrd_is_named() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "/nonexistent/initrd"}}}}"#,
        kernel()
    ));
    assert!(
        line.contains("boot-source.initrd_path: cannot read /nonexistent/initrd"),
        "{line}"
    );
}

#[test]
fn test_zero_vcpus_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 0, "mem_size_mib": 128}}}}"#,
        kernel()
    ));
    assert!(
        line.ends_with("machine-config.vcpu_count: 0 is out of range (1 to 32)"),
        "{line}"
    );
}

#[test]
fn test_33_vcpus_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 33, "mem_size_mib": 128}}}}"#,
        kernel()
    ));
    assert!(
        line.ends_with("machine-config.vcpu_count: 33 is out of range (1 to 32)"),
        "{line}"
    );
}

#[test]
fn test_memory_below_minimum_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 8}}}}"#,
        kernel()
    ));
    assert!(
        line.ends_with("machine-config.mem_size_mib: 8 MiB is below the 16 MiB minimum"),
        "{line}"
    );
}

#[test]
fn test_memory_above_host_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 100000000}}}}"#,
        kernel()
    ));
    assert!(
        line.contains("machine-config.mem_size_mib: 100000000 MiB is more than this host's"),
        "{line}"
    );
}

#[test]
fn test_boot_args_longer_than_kernel_accepts_are_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{}"}}}}"#,
        kernel(),
        "x".repeat(3000)
    ));
    assert!(
        line.ends_with(
            "boot-source.boot_args: 3000 bytes, longer than the 2047 bytes the kernel accepts"
        ),
        "{line}"
    );
}

#[test]
fn test_unsupported_firecracker_section_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "balloon": {{"amount_mib": 16}}}}"#,
        kernel()
    ));
    assert!(line.ends_with("balloon: not supported by spry"), "{line}");
}

#[test]
fn test_no_config_file_is_a_usage_error() {
    let out = Spry::new().run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("nothing to boot"), "{out}");
}

fn with_devices(devices: &str) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, {devices}}}"#,
        kernel()
    )
}

#[test]
fn test_missing_backing_file_is_named() {
    let line = refused(&with_devices(
        r#""drives": [{"drive_id": "rootfs", "path_on_host": "/nonexistent/rootfs.ext4", "is_root_device": true, "is_read_only": false}]"#,
    ));
    assert!(
        line.ends_with("drives[0].path_on_host: cannot open /nonexistent/rootfs.ext4: No such file or directory (os error 2)"),
        "{line}"
    );
}

#[test]
fn test_backing_file_of_partial_sectors_is_refused() {
    let scratch = Scratch::new();
    let disk = scratch.write("odd.img", &[0u8; 1000]);
    let line = refused(&with_devices(&format!(
        r#""drives": [{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}]"#,
        disk.display()
    )));
    assert!(
        line.ends_with("is 1000 bytes, not a multiple of 512"),
        "{line}"
    );
}

#[test]
fn test_duplicate_drive_id_is_refused() {
    let scratch = Scratch::new();
    let a = scratch.write("a.img", &[0u8; 512]);
    let b = scratch.write("b.img", &[0u8; 512]);
    let line = refused(&with_devices(&format!(
        r#""drives": [{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}, {{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}]"#,
        a.display(),
        b.display()
    )));
    assert!(
        line.ends_with(r#"drives[1].drive_id: "data" is used twice"#),
        "{line}"
    );
}

#[test]
fn test_two_root_devices_are_refused() {
    let scratch = Scratch::new();
    let a = scratch.write("a.img", &[0u8; 512]);
    let b = scratch.write("b.img", &[0u8; 512]);
    let line = refused(&with_devices(&format!(
        r#""drives": [{{"drive_id": "one", "path_on_host": "{}", "is_root_device": true}}, {{"drive_id": "two", "path_on_host": "{}", "is_root_device": true}}]"#,
        a.display(),
        b.display()
    )));
    assert!(
        line.ends_with(r#"drives[1].is_root_device: drive "two" is a second root device (drive "one" is the first)"#),
        "{line}"
    );
}

#[test]
fn test_missing_tap_is_refused() {
    let line = refused(&with_devices(
        r#""network-interfaces": [{"iface_id": "eth0", "host_dev_name": "sprymissing0"}]"#,
    ));
    assert!(
        line.contains(
            r#"network-interfaces[0].host_dev_name: tap device "sprymissing0" does not exist"#
        ),
        "{line}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net/sprymissing0").exists(),
        "spry created the tap"
    );
}

#[test]
fn test_unparsable_mac_is_refused() {
    let ns = match NetNs::new("mac") {
        Ok(ns) => ns,
        Err(reason) => {
            common::skip("test_unparsable_mac_is_refused", &reason);
            return;
        }
    };
    ns.add_tap("sprytap0");
    let scratch = Scratch::new();
    let config = with_devices(
        r#""network-interfaces": [{"iface_id": "eth0", "host_dev_name": "sprytap0", "guest_mac": "AA:FC:00:00:00"}]"#,
    );
    let out = ns.spry(&scratch, &config).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.trim_end().ends_with(r#"network-interfaces[0].guest_mac: "AA:FC:00:00:00" is not a MAC address (aa:bb:cc:dd:ee:ff)"#),
        "{out}"
    );
}

#[test]
fn test_same_tap_twice_is_refused() {
    let ns = match NetNs::new("duptap") {
        Ok(ns) => ns,
        Err(reason) => {
            common::skip("test_same_tap_twice_is_refused", &reason);
            return;
        }
    };
    ns.add_tap("sprytap0");
    let scratch = Scratch::new();
    let config = with_devices(
        r#""network-interfaces": [{"iface_id": "a", "host_dev_name": "sprytap0"}, {"iface_id": "b", "host_dev_name": "sprytap0"}]"#,
    );
    let out = ns.spry(&scratch, &config).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains(r#"tap "sprytap0" is used twice"#),
        "{out}"
    );
}

#[test]
fn test_text_after_the_json_is_refused() {
    let line = refused(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}}} {{"machine-config": {{"vcpu_count": 2}}}}"#,
        kernel()
    ));
    assert!(line.contains("trailing characters"), "{line}");
}
