//! Snapshots over the API, in Firecracker's dialect: the counting probe is paused,
//! snapshotted (`PUT /snapshot/create`), and loaded in a new spry process
//! (`PUT /snapshot/load`), where it counts on from where it stopped; with seccomp
//! on, as spry runs by default. Also the refusals Firecracker's rules call for.

mod api_support;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use api_support::SpryApi;
use common::{probe_args, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn spry_without_vm(scratch: &Scratch, socket: &str) -> SpryApi {
    SpryApi::start(&scratch.path(socket), &["--log-level", "info"])
}

/// Boots the probe counting every 20 ms, with 128 MiB.
fn boot_counting_probe(spry: &SpryApi) {
    boot_counting_probe_with(spry, false);
}

/// Boots the probe counting every 20 ms, with 128 MiB, logging dirty pages if asked.
fn boot_counting_probe_with(spry: &SpryApi, track_dirty_pages: bool) {
    boot_counting_probe_with_drive(spry, track_dirty_pages, None);
}

/// As [`boot_counting_probe_with`], with `drive` attached as a (non-root) disk.
fn boot_counting_probe_with_drive(
    spry: &SpryApi,
    track_dirty_pages: bool,
    drive: Option<&PathBuf>,
) {
    boot_counting_probe_on(spry, 1, track_dirty_pages, drive);
}

/// The counting probe on `vcpus` vCPUs.
fn boot_counting_probe_on(
    spry: &SpryApi,
    vcpus: u8,
    track_dirty_pages: bool,
    drive: Option<&PathBuf>,
) {
    if let Some(path) = drive {
        let body = serde_json::json!({
            "drive_id": "data", "path_on_host": path, "is_root_device": false,
            "is_read_only": false
        });
        let answer = spry.call("PUT", "/drives/data", &body.to_string());
        assert_eq!(answer.status, 204, "{answer:?}");
    }
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args(&format!(
            "probe.expect_cpus={vcpus} probe.expect_mem_mib=128 probe.mode=count probe.count_ms=20"
        )),
    });
    let machine = serde_json::json!({
        "vcpu_count": vcpus, "mem_size_mib": 128, "track_dirty_pages": track_dirty_pages
    });
    let calls = [
        ("/boot-source", boot_source.to_string()),
        ("/machine-config", machine.to_string()),
        ("/actions", r#"{"action_type": "InstanceStart"}"#.to_owned()),
    ];
    for (path, body) in calls {
        let answer = spry.call("PUT", path, &body);
        assert_eq!(
            answer.status,
            204,
            "PUT {path}: {answer:?}\n{}",
            spry.stderr()
        );
    }
}

fn create_body(state: &PathBuf, mem: &PathBuf) -> String {
    serde_json::json!({"snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full"})
        .to_string()
}

fn load_body(state: &PathBuf, mem: &PathBuf) -> String {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    })
    .to_string()
}

/// A counting probe, paused after its third count and snapshotted; returns the
/// files and the last count it printed.
fn snapshotted_probe(scratch: &Scratch) -> (PathBuf, PathBuf, u64) {
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let mut first = spry_without_vm(scratch, "first.sock");
    boot_counting_probe(&first);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    let pause = first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = first.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    // A line the guest wrote just before the pause may still be on its way.
    std::thread::sleep(Duration::from_millis(100));
    let last = *first.probe_counts().last().unwrap();
    assert_eq!(pause.status, 204);
    assert_eq!(create.status, 204, "{create:?}\n{}", first.stderr());
    first.terminate();
    (state, mem, last)
}

#[test]
fn test_counting_probe_snapshotted_mid_run_counts_on_in_a_new_process() {
    let scratch = Scratch::new();
    let (state, mem, last) = snapshotted_probe(&scratch);
    let second = spry_without_vm(&scratch, "second.sock");

    let started = Instant::now();
    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    let loaded_in = started.elapsed();
    let next = format!("probe: count {}", last + 2);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);

    let restored = second.wait_for_log(Duration::from_secs(1), |l| l.contains("snapshot restored"));
    eprintln!("PUT /snapshot/load answered in {loaded_in:?}; {restored}");
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    let seen = second.probe_counts();
    assert_eq!(seen[..2], [last + 1, last + 2], "{seen:?}");
    let info = second.call("GET", "/", "").json();
    assert_eq!(info["state"], "Running");
    let config = second.call("GET", "/vm/config", "").json();
    assert_eq!(config["machine-config"]["mem_size_mib"], 128);
}

#[test]
fn test_loaded_without_resume_the_vm_stays_paused_until_resumed() {
    let scratch = Scratch::new();
    let (state, mem, last) = snapshotted_probe(&scratch);
    let second = spry_without_vm(&scratch, "second.sock");
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem}).to_string();

    let load = second.call("PUT", "/snapshot/load", &body);
    std::thread::sleep(Duration::from_millis(300));
    let while_paused = second.probe_counts().len();
    let info = second.call("GET", "/", "").json();
    let resume = second.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let next = format!("probe: count {}", last + 1);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);

    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert_eq!(while_paused, 0);
    assert_eq!(info["state"], "Paused");
    assert_eq!(resume.status, 204);
}

#[test]
fn test_snapshot_of_a_running_vm_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    boot_counting_probe(&spry);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));

    let create = spry.call("PUT", "/snapshot/create", &create_body(&state, &mem));

    assert!(create.fault().contains("pause it first"), "{create:?}");
    assert!(!state.exists() && !mem.exists());
}

#[test]
fn test_vsock_device_comes_back_with_its_socket_after_a_load() {
    let scratch = Scratch::new();
    let mut spry = spry_without_vm(&scratch, "api.sock");
    let uds = scratch.path("v.sock");
    let vsock = serde_json::json!({"guest_cid": 7, "uds_path": uds});
    let answer = spry.call("PUT", "/vsock", &vsock.to_string());
    assert_eq!(answer.status, 204, "{answer:?}");
    boot_counting_probe(&spry);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    let paused = spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(paused.status, 204, "{paused:?}");
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let create = spry.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    assert_eq!(create.status, 204, "{create:?}\n{}", spry.stderr());
    assert_eq!(
        spry.terminate(),
        Some(128 + libc::SIGTERM),
        "{}",
        spry.stderr()
    );
    assert!(!uds.exists(), "spry left its vsock socket behind");

    let restored = spry_without_vm(&scratch, "restored.sock");
    let load = restored.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    assert_eq!(load.status, 204, "{load:?}\n{}", restored.stderr());
    restored.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    let config = restored.call("GET", "/vm/config", "").json();
    assert_eq!(config["vsock"]["guest_cid"], 7, "{config}");
    assert!(
        std::os::unix::net::UnixStream::connect(&uds).is_ok(),
        "the restored vsock socket does not accept"
    );
}

#[test]
fn test_load_after_a_boot_configuring_call_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    let machine = spry.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));

    let load = spry.call("PUT", "/snapshot/load", &load_body(&state, &mem));

    assert_eq!(machine.status, 204);
    assert_eq!(
        load.fault(),
        "Loading a microVM snapshot not allowed after configuring boot-specific resources."
    );
}

#[test]
fn test_corrupted_snapshot_is_refused_and_the_process_stays_fresh() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x20;
    std::fs::write(&state, &bytes).unwrap();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    let info = second.call("GET", "/", "").json();

    assert!(
        load.fault()
            .starts_with("corrupted snapshot: payload CRC-32 is"),
        "{load:?}"
    );
    assert_eq!(info["state"], "Not started");
}

#[test]
fn test_memory_file_of_the_wrong_size_is_refused() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));

    assert!(
        load.fault()
            .contains("is 67108864 bytes, the snapshot's memory is 134217728 bytes"),
        "{load:?}"
    );
}

#[test]
fn test_diff_layered_on_full_restores_the_later_count() {
    let scratch = Scratch::new();
    let (full_state, full_mem) = (scratch.path("full.snap"), scratch.path("full.mem"));
    let (diff_state, diff_mem) = (scratch.path("diff.snap"), scratch.path("diff.mem"));
    let mut first = spry_without_vm(&scratch, "first.sock");
    boot_counting_probe_with(&first, true);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 2");
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let full = first.call(
        "PUT",
        "/snapshot/create",
        &create_body(&full_state, &full_mem),
    );
    first.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 6");
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let diff_body = serde_json::json!({
        "snapshot_path": diff_state, "mem_file_path": diff_mem, "snapshot_type": "Diff"
    });
    let diff = first.call("PUT", "/snapshot/create", &diff_body.to_string());
    std::thread::sleep(Duration::from_millis(100));
    let last = *first.probe_counts().last().unwrap();
    first.terminate();
    let full_size = std::fs::metadata(&full_mem).unwrap();
    let diff_size = std::fs::metadata(&diff_mem).unwrap();

    spry::snapshot::memory::apply_diff(&full_mem, &diff_mem).unwrap();
    let second = spry_without_vm(&scratch, "second.sock");
    let load = second.call("PUT", "/snapshot/load", &load_body(&diff_state, &full_mem));
    let next = format!("probe: count {}", last + 2);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);

    use std::os::unix::fs::MetadataExt;
    eprintln!(
        "memory files: Full {} KiB on disk, Diff {} KiB on disk (of {} MiB)",
        full_size.blocks() / 2,
        diff_size.blocks() / 2,
        full_size.len() >> 20
    );
    assert_eq!((full.status, diff.status), (204, 204), "{diff:?}");
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert_eq!(second.probe_counts()[0], last + 1);
    assert!(diff_size.blocks() < full_size.blocks());
}

#[test]
fn test_diff_without_dirty_tracking_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    boot_counting_probe(&spry);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({
        "snapshot_path": scratch.path("s"), "mem_file_path": scratch.path("m"),
        "snapshot_type": "Diff"
    });

    let create = spry.call("PUT", "/snapshot/create", &body.to_string());

    assert!(create.fault().contains("track_dirty_pages"), "{create:?}");
    assert_eq!(spry.call("GET", "/", "").json()["state"], "Paused");
}

#[test]
fn test_snapshot_from_a_cpu_with_more_features_is_refused() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let bytes = std::fs::read(&state).unwrap();
    let mut snap: serde_json::Value = spry::snapshot::format::decode(&bytes).unwrap();
    // Every feature bit of leaf 1 ECX: no host has them all (bit 5 is VMX, which a
    // guest of spry never gets). kvm-bindings saves a CPUID entry as its 40 bytes:
    // function, index, flags, EAX, EBX, ECX (bytes 20..24), EDX, padding.
    for entry in snap["vcpus"][0]["cpuid"].as_array_mut().unwrap() {
        let bytes = entry.as_array_mut().unwrap();
        let word = |i: usize| {
            let b: Vec<u8> = bytes[i..i + 4]
                .iter()
                .map(|v| u8::try_from(v.as_u64().unwrap()).unwrap())
                .collect();
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        if word(0) == 1 && word(4) == 0 {
            bytes[20..24].fill(serde_json::json!(0xff));
        }
    }
    std::fs::write(&state, spry::snapshot::format::encode(&snap).unwrap()).unwrap();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));

    assert!(
        load.fault()
            .starts_with("the snapshot's CPU has features this host lacks: CPUID 0x1.0 Ecx"),
        "{load:?}"
    );
}

#[test]
fn test_restored_console_echoes_what_is_typed() {
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let mut first = spry_without_vm(&scratch, "first.sock");
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.mode=console"),
    });
    first.call("PUT", "/boot-source", &boot_source.to_string());
    first.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = first.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    first.terminate();
    let mut second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    second.type_keys(b"restored-marker\n");
    second.wait_for_line(Duration::from_secs(10), |l| l.contains("restored-marker"));
    second.type_keys(b"q");
    let code = second.wait_exit(BOOT_TIMEOUT);

    assert_eq!((create.status, load.status), (204, 204), "{load:?}");
    assert_eq!(code, Some(0), "{}", second.stderr());
}

#[test]
fn test_diff_before_any_full_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    boot_counting_probe_with(&spry, true);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({
        "snapshot_path": scratch.path("s"), "mem_file_path": scratch.path("m"),
        "snapshot_type": "Diff"
    });

    let create = spry.call("PUT", "/snapshot/create", &body.to_string());

    assert!(
        create.fault().contains("needs a Full one to layer on"),
        "{create:?}"
    );
}

#[test]
fn test_failed_create_leaves_no_state_file_and_the_vm_paused() {
    let scratch = Scratch::new();
    let (state, _, _) = snapshotted_probe(&scratch);
    let spry = spry_without_vm(&scratch, "api.sock");
    boot_counting_probe(&spry);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    // The old snapshot's state file, with memory going where it cannot be written.
    let body = serde_json::json!({
        "snapshot_path": state, "mem_file_path": "/nonexistent-spry-dir/vm.mem"
    });

    let create = spry.call("PUT", "/snapshot/create", &body.to_string());

    assert!(
        create.fault().contains("/nonexistent-spry-dir/vm.mem"),
        "{create:?}"
    );
    assert!(!state.exists(), "a state file survived the failed create");
    assert_eq!(spry.call("GET", "/", "").json()["state"], "Paused");
}

/// A counting probe with a 1 MiB drive, paused after its third count and
/// snapshotted; returns the state file, the memory file, the drive and the last
/// count.
fn snapshotted_probe_with_drive(scratch: &Scratch) -> (PathBuf, PathBuf, PathBuf, u64) {
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let disk = scratch.write("data.img", &vec![0u8; 1 << 20]);
    let mut first = spry_without_vm(scratch, "first.sock");
    boot_counting_probe_with_drive(&first, false, Some(&disk));
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = first.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    std::thread::sleep(Duration::from_millis(100));
    let last = *first.probe_counts().last().unwrap();
    assert_eq!(create.status, 204, "{create:?}");
    first.terminate();
    (state, mem, disk, last)
}

#[test]
fn test_snapshot_with_a_drive_reopens_it_on_load() {
    let scratch = Scratch::new();
    let (state, mem, _, last) = snapshotted_probe_with_drive(&scratch);
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    let next = format!("probe: count {}", last + 1);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);
    let config = second.call("GET", "/vm/config", "").json();

    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert_eq!(config["drives"][0]["drive_id"], "data");
}

#[test]
fn test_drive_of_another_size_is_refused_on_load() {
    let scratch = Scratch::new();
    let (state, mem, disk, _) = snapshotted_probe_with_drive(&scratch);
    std::fs::write(&disk, vec![0u8; 2 << 20]).unwrap();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));

    assert!(
        load.fault()
            .contains("holds 4096 sectors, the snapshot's disk had 2048"),
        "{load:?}"
    );
    assert_eq!(second.call("GET", "/", "").json()["state"], "Not started");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn test_repeated_snapshots_leak_no_file_descriptors() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    boot_counting_probe(&spry);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let first = spry.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    // The API thread closes the connection of that call a moment after the answer:
    // count once it has.
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(spry.child.id());

    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            spry.call("PUT", "/snapshot/create", &create_body(&state, &mem))
                .status
        })
        .collect();
    // The API thread closes its side of each client's connection a moment after
    // the client saw the answer; a leak stays.
    let settled = Instant::now() + Duration::from_secs(5);
    let mut after = open_fds(spry.child.id());
    while after > before && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(20));
        after = open_fds(spry.child.id());
    }
    let written = spry.wait_for_log(Duration::from_secs(1), |l| l.contains("Full snapshot:"));

    eprintln!("{written}");
    assert_eq!(first.status, 204, "{first:?}");
    assert_eq!(statuses, [204; 10]);
    assert_eq!(after, before);
}

#[test]
fn test_two_vcpu_probe_counts_on_after_a_load() {
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let mut first = spry_without_vm(&scratch, "first.sock");
    boot_counting_probe_on(&first, 2, false, None);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = first.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    std::thread::sleep(Duration::from_millis(100));
    let last = *first.probe_counts().last().unwrap();
    first.terminate();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    let next = format!("probe: count {}", last + 2);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);
    let snap: serde_json::Value =
        spry::snapshot::format::decode(&std::fs::read(&state).unwrap()).unwrap();

    assert_eq!(create.status, 204, "{create:?}");
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert_eq!(snap["vcpus"].as_array().unwrap().len(), 2);
    assert_eq!(second.probe_counts()[0], last + 1);
}

#[test]
fn test_override_of_an_interface_the_snapshot_lacks_is_refused() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let second = spry_without_vm(&scratch, "second.sock");
    let body = serde_json::json!({
        "snapshot_path": state, "mem_file_path": mem,
        "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]
    });

    let load = second.call("PUT", "/snapshot/load", &body.to_string());

    assert_eq!(
        load.fault(),
        "network_overrides: the snapshot has no network interface \"eth9\""
    );
}

#[test]
fn test_block_requests_in_flight_at_the_snapshot_complete_after_the_load() {
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let disk = scratch.write("data.img", &vec![0u8; 1 << 20]);
    let mut first = spry_without_vm(&scratch, "first.sock");
    let drive = serde_json::json!({
        "drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true
    });
    first.call("PUT", "/drives/data", &drive.to_string());
    // 85 reads of 4 KiB in flight at any time, completions awaited by interrupt.
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args(
            "probe.mode=blkbench probe.bench_reqs=40000 probe.bench_irq=1"
        ),
    });
    first.call("PUT", "/boot-source", &boot_source.to_string());
    first.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: blkbench start"));
    std::thread::sleep(Duration::from_millis(300));
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = first.call("PUT", "/snapshot/create", &create_body(&state, &mem));
    let finished_before = first
        .lines()
        .iter()
        .any(|l| l.starts_with("probe: blkbench done"));
    first.terminate();
    let second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &load_body(&state, &mem));
    let done = second.wait_for_line(Duration::from_secs(60), |l| {
        l.starts_with("probe: blkbench done") || l.contains("FAIL")
    });
    let summary = second.wait_for_line(Duration::from_secs(10), |l| {
        l.starts_with("probe: all ") || l.contains("FAIL")
    });

    assert_eq!(create.status, 204, "{create:?}");
    assert!(!finished_before, "the bench ended before the snapshot");
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert!(
        done.starts_with("probe: blkbench done 40000 requests"),
        "{done}"
    );
    assert!(
        summary.ends_with(" checks ok"),
        "{summary}\n{:?}",
        second.lines()
    );
}

/// A Diff taken while the block device serves requests, layered on a Full taken
/// earlier in the same run, comes back with every request answered. (The probe does
/// not check the data it reads, and its rings share pages the guest itself writes,
/// so this cannot tell whether the pages only the device wrote are in the Diff; the
/// unit tests of `device_writes` and of `iovec` cover that they are recorded.)
#[test]
fn test_diff_taken_during_block_io_completes_every_request() {
    let scratch = Scratch::new();
    let (full_state, full_mem) = (scratch.path("full.snap"), scratch.path("full.mem"));
    let (diff_state, diff_mem) = (scratch.path("diff.snap"), scratch.path("diff.mem"));
    let disk = scratch.write("data.img", &vec![0u8; 1 << 20]);
    let mut first = spry_without_vm(&scratch, "first.sock");
    let drive = serde_json::json!({
        "drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true
    });
    first.call("PUT", "/drives/data", &drive.to_string());
    first.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}"#,
    );
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.mode=blkbench probe.bench_reqs=40000 probe.bench_irq=1"),
    });
    first.call("PUT", "/boot-source", &boot_source.to_string());
    first.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: blkbench start"));
    std::thread::sleep(Duration::from_millis(200));
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let full = first.call(
        "PUT",
        "/snapshot/create",
        &create_body(&full_state, &full_mem),
    );
    first.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    // The device answers requests (used ring, status bytes, data) in between.
    std::thread::sleep(Duration::from_millis(300));
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let diff_body = serde_json::json!({
        "snapshot_path": diff_state, "mem_file_path": diff_mem, "snapshot_type": "Diff"
    });
    let diff = first.call("PUT", "/snapshot/create", &diff_body.to_string());
    let finished_before = first
        .lines()
        .iter()
        .any(|l| l.starts_with("probe: blkbench done"));
    first.terminate();

    spry::snapshot::memory::apply_diff(&full_mem, &diff_mem).unwrap();
    let second = spry_without_vm(&scratch, "second.sock");
    let load = second.call("PUT", "/snapshot/load", &load_body(&diff_state, &full_mem));
    let done = second.wait_for_line(Duration::from_secs(60), |l| {
        l.starts_with("probe: blkbench done") || l.contains("FAIL")
    });
    let summary = second.wait_for_line(Duration::from_secs(10), |l| {
        l.starts_with("probe: all ") || l.contains("FAIL")
    });

    assert_eq!((full.status, diff.status), (204, 204), "{diff:?}");
    assert!(!finished_before, "the bench ended before the Diff");
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    assert!(
        done.starts_with("probe: blkbench done 40000 requests"),
        "{done}"
    );
    assert!(
        summary.ends_with(" checks ok"),
        "{summary}\n{:?}",
        second.lines()
    );
}

#[test]
fn test_load_with_clock_realtime_counts_on() {
    let scratch = Scratch::new();
    let (state, mem, last) = snapshotted_probe(&scratch);
    let second = spry_without_vm(&scratch, "second.sock");
    let body = serde_json::json!({
        "snapshot_path": state, "mem_file_path": mem, "resume_vm": true, "clock_realtime": true
    });

    let load = second.call("PUT", "/snapshot/load", &body.to_string());
    let next = format!("probe: count {}", last + 1);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);

    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
}
