//! spry driven over its Firecracker-compatible API socket by real HTTP clients
//! (curl, and a raw client for pipelining, stalls and garbage), booting the probe
//! guest.

mod api_support;
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api_support::{call, corpus, curl, Client, Rng, SpryApi};
use common::{probe_args, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn kernel() -> PathBuf {
    common::probe_vmlinux()
}

/// spry with an API socket and no VM.
fn spry_without_vm(scratch: &Scratch) -> SpryApi {
    SpryApi::start(&scratch.path("api.sock"), &["--log-level", "info"])
}

/// Configures the probe over the API (Firecracker's getting-started order) and
/// starts it.
fn boot_probe(spry: &SpryApi, extra_args: &str, vcpus: u8, mem_mib: u32) {
    let boot_source = serde_json::json!({
        "kernel_image_path": kernel(),
        "boot_args": probe_args(&format!(
            "probe.expect_cpus={vcpus} probe.expect_mem_mib={mem_mib} {extra_args}"
        )),
    });
    let machine = serde_json::json!({"vcpu_count": vcpus, "mem_size_mib": mem_mib});
    let calls = [
        ("/boot-source", boot_source.to_string()),
        ("/machine-config", machine.to_string()),
        ("/actions", r#"{"action_type": "InstanceStart"}"#.to_owned()),
    ];
    for (path, body) in calls {
        let (status, answer) = curl(&spry.socket, "PUT", path, &body);
        assert_eq!(status, 204, "PUT {path}: {answer}\n{}", spry.stderr());
    }
}

/// The probe in console mode, running.
fn running_console_probe(scratch: &Scratch) -> SpryApi {
    let spry = spry_without_vm(scratch);
    boot_probe(&spry, "probe.mode=console", 1, 128);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    spry
}

/// The probe's summary line when every check passed (their number depends on the
/// devices it finds).
fn all_checks_ok(line: &str) -> bool {
    line.starts_with("probe: all ") && line.ends_with(" checks ok")
}

/// Types a marker on the console and waits for the probe's echo: the guest runs.
fn assert_guest_echoes(spry: &mut SpryApi, marker: &str) {
    spry.type_keys(format!("{marker}\n").as_bytes());
    spry.wait_for_line(Duration::from_secs(10), |l| l.contains(marker));
}

fn scratch_disk(scratch: &Scratch, name: &str, size: usize) -> PathBuf {
    scratch.write(name, &vec![0u8; size])
}

#[test]
fn test_getting_started_flow_boots_the_probe_and_removes_the_socket() {
    let scratch = Scratch::new();
    let mut spry = spry_without_vm(&scratch);
    let disk = scratch_disk(&scratch, "rootfs.img", 1 << 20);
    let drive = serde_json::json!({
        "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false
    });

    let (status, body) = curl(&spry.socket, "PUT", "/drives/rootfs", &drive.to_string());
    boot_probe(&spry, "", 2, 256);

    assert_eq!(status, 204, "{body}");
    spry.wait_for_line(BOOT_TIMEOUT, all_checks_ok);
    assert_eq!(spry.wait_exit(BOOT_TIMEOUT), Some(0), "{}", spry.stderr());
    assert!(!spry.socket.exists(), "the socket outlived spry");
}

#[test]
fn test_api_serves_within_firecracker_8_ms_cpu_budget() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);

    let line = spry.wait_for_log(Duration::from_secs(10), |l| l.contains("API serving"));

    // "... API serving 280 us after spry started (1330 us of CPU)"
    let cpu_us: u64 = line
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CPU figure in {line:?}"));
    assert!(cpu_us < 8_000, "{line}");
}

#[test]
fn test_instance_info_before_boot_says_not_started() {
    let scratch = Scratch::new();
    let spry = SpryApi::start(&scratch.path("api.sock"), &["--id", "sandbox-7"]);

    let (status, body) = curl(&spry.socket, "GET", "/", "");

    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "sandbox-7");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "spry");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn test_version_reports_the_firecracker_dialect() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);

    let version = spry.call("GET", "/version", "").json();

    assert!(version["firecracker_version"].is_string(), "{version}");
    assert_eq!(version["spry_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn test_machine_config_defaults_to_1_vcpu_and_128_mib() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);

    let config = spry.call("GET", "/machine-config", "").json();

    assert_eq!(config["vcpu_count"], 1);
    assert_eq!(config["mem_size_mib"], 128);
}

#[test]
fn test_patch_machine_config_changes_only_the_given_field() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    spry.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    );

    let patch = spry.call("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#);

    assert_eq!(patch.status, 204);
    let config = spry.call("GET", "/machine-config", "").json();
    assert_eq!(
        (
            config["vcpu_count"].as_u64(),
            config["mem_size_mib"].as_u64()
        ),
        (Some(2), Some(512))
    );
}

#[test]
fn test_instance_info_after_boot_says_running() {
    let scratch = Scratch::new();
    let spry = running_console_probe(&scratch);

    let info = spry.call("GET", "/", "").json();

    assert_eq!(info["state"], "Running");
}

#[test]
fn test_pause_stops_the_count_and_resume_continues_it() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    boot_probe(&spry, "probe.mode=count probe.count_ms=20", 1, 128);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");

    let pause = spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    // A line the guest wrote just before the pause may still be on its way.
    std::thread::sleep(Duration::from_millis(100));
    let at_pause = spry.probe_counts().len();
    let state = spry.call("GET", "/", "").json()["state"].clone();
    std::thread::sleep(Duration::from_millis(600));
    let after_wait = spry.probe_counts().len();
    let resume = spry.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let next = format!("probe: count {}", at_pause + 2);
    spry.wait_for_line(Duration::from_secs(10), |l| l == next);

    assert_eq!((pause.status, resume.status), (204, 204));
    assert_eq!(state, "Paused");
    assert_eq!(after_wait, at_pause, "the count went on while paused");
    let seen = spry.probe_counts();
    let expected: Vec<u64> = (0..seen.len() as u64).collect();
    assert_eq!(
        seen, expected,
        "the count skipped or repeated across the pause"
    );
}

#[test]
fn test_send_ctrl_alt_del_reaches_the_guest_which_resets() {
    let scratch = Scratch::new();
    let mut spry = running_console_probe(&scratch);

    let (status, body) = curl(
        &spry.socket,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );

    assert_eq!(status, 204, "{body}");
    spry.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("probe: ctrl-alt-del")
    });
    assert_eq!(spry.wait_exit(BOOT_TIMEOUT), Some(0), "{}", spry.stderr());
}

#[test]
fn test_vm_config_fed_back_as_config_file_boots_the_same_vm() {
    let scratch = Scratch::new();
    let mut first = spry_without_vm(&scratch);
    let disk = scratch_disk(&scratch, "rootfs.img", 1 << 20);
    let drive = serde_json::json!({
        "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": true
    });
    first.call("PUT", "/drives/rootfs", &drive.to_string());
    boot_probe(&first, "probe.mode=console", 2, 192);
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    let (status, exported) = curl(&first.socket, "GET", "/vm/config", "");
    first.terminate();

    let config_file = scratch.write("exported.json", exported.as_bytes());
    let second = SpryApi::start(
        &scratch.path("second.sock"),
        &["--config-file", config_file.to_str().unwrap()],
    );

    assert_eq!(status, 200, "{exported}");
    second.wait_for_line(BOOT_TIMEOUT, all_checks_ok);
    let reexported = second.call("GET", "/vm/config", "").json();
    let exported: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(reexported, exported);
    assert_eq!(exported["machine-config"]["vcpu_count"], 2);
    assert_eq!(
        exported["drives"][0]["path_on_host"],
        disk.to_str().unwrap()
    );
}

#[test]
fn test_config_file_with_api_socket_serves_runtime_calls_only() {
    let scratch = Scratch::new();
    let config = common::config(&kernel(), &probe_args("probe.mode=console"), None, 1, 128);
    let config_file = scratch.write("vm.json", config.as_bytes());
    let spry = SpryApi::start(
        &scratch.path("api.sock"),
        &["--config-file", config_file.to_str().unwrap()],
    );
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");

    let info = spry.call("GET", "/", "").json();
    let refused = spry.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
    );

    assert_eq!(info["state"], "Running");
    assert_eq!(
        refused.fault(),
        "The requested operation is not supported after starting the microVM."
    );
}

#[test]
fn test_patch_drive_points_the_drive_at_another_file() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let old = scratch_disk(&scratch, "old.img", 4096);
    let new = scratch_disk(&scratch, "new.img", 8192);
    let drive = serde_json::json!({
        "drive_id": "data", "path_on_host": old, "is_root_device": false
    });
    spry.call("PUT", "/drives/data", &drive.to_string());
    boot_probe(&spry, "probe.mode=console", 1, 128);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    let patch = serde_json::json!({"drive_id": "data", "path_on_host": new});

    let answer = spry.call("PATCH", "/drives/data", &patch.to_string());

    assert_eq!(answer.status, 204, "{:?}", answer);
    let config = spry.call("GET", "/vm/config", "").json();
    assert_eq!(config["drives"][0]["path_on_host"], new.to_str().unwrap());
}

#[test]
fn test_patch_of_an_unknown_drive_names_it() {
    let scratch = Scratch::new();
    let spry = running_console_probe(&scratch);

    let answer = spry.call(
        "PATCH",
        "/drives/nodisk",
        r#"{"drive_id": "nodisk", "path_on_host": "/tmp/x"}"#,
    );

    assert_eq!(answer.fault(), "drives: there is no drive \"nodisk\"");
}

#[test]
fn test_flush_metrics_writes_a_json_line_with_exit_and_api_counts() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let metrics = scratch.path("metrics.json");
    let body = serde_json::json!({"metrics_path": metrics});
    spry.call("PUT", "/metrics", &body.to_string());
    boot_probe(&spry, "probe.mode=console", 1, 128);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");

    let flush = spry.call("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);

    assert_eq!(flush.status, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["vcpu"]["exit_io_out"].as_u64() > Some(100), "{line}");
    assert!(line["api_server"]["requests"].as_u64() >= Some(4), "{line}");
    assert!(line["utc_timestamp_ms"].as_u64() > Some(0), "{line}");
}

#[test]
fn test_metrics_section_of_the_config_file_is_flushed() {
    let scratch = Scratch::new();
    let metrics = scratch.path("metrics.json");
    let mut config: serde_json::Value = serde_json::from_str(&common::config(
        &kernel(),
        &probe_args("probe.mode=console"),
        None,
        1,
        128,
    ))
    .unwrap();
    config["metrics"] = serde_json::json!({"metrics_path": metrics});
    let config_file = scratch.write("vm.json", config.to_string().as_bytes());
    let spry = SpryApi::start(
        &scratch.path("api.sock"),
        &["--config-file", config_file.to_str().unwrap()],
    );
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");

    let flush = spry.call("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);

    assert_eq!(flush.status, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["vcpu"]["exit_io_out"].as_u64() > Some(100), "{line}");
    let exported = spry.call("GET", "/vm/config", "").json();
    assert_eq!(
        exported["metrics"]["metrics_path"],
        metrics.to_str().unwrap()
    );
}

#[test]
fn test_put_logger_sends_log_lines_to_the_file() {
    let scratch = Scratch::new();
    let spry = SpryApi::start(&scratch.path("api.sock"), &[]);
    let log = scratch.path("spry.log");
    let body = serde_json::json!({"log_path": log, "level": "Info", "show_level": true});
    let answer = spry.call("PUT", "/logger", &body.to_string());

    boot_probe(&spry, "probe.mode=console", 1, 128);

    assert_eq!(answer.status, 204);
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO ] vCPU 0 entering the guest"), "{text}");
}

// ---- refused requests: 400 with a fault_message that names the problem ----

fn preboot_fault(method: &str, path: &str, body: &str) -> String {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    spry.call(method, path, body).fault()
}

#[test]
fn test_unknown_route_is_refused() {
    let message = preboot_fault("GET", "/balloon", "");

    assert_eq!(message, "Invalid request method and/or path: GET /balloon.");
}

#[test]
fn test_unknown_method_is_refused() {
    let message = preboot_fault("DELETE", "/drives/rootfs", "");

    assert_eq!(
        message,
        "Invalid request method and/or path: DELETE /drives/rootfs."
    );
}

#[test]
fn test_malformed_json_is_refused() {
    let message = preboot_fault("PUT", "/machine-config", r#"{"vcpu_count": 2,"#);

    assert!(
        message.starts_with("An error occurred when deserializing the json body of a request:"),
        "{message}"
    );
    assert!(message.contains("EOF while parsing"), "{message}");
}

#[test]
fn test_unknown_field_is_refused() {
    let message = preboot_fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128, "cpus": 4}"#,
    );

    assert!(message.contains("unknown field `cpus`"), "{message}");
}

#[test]
fn test_wrong_type_is_refused() {
    let message = preboot_fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
    );

    assert!(
        message.contains("vcpu_count: invalid type: string \"two\""),
        "{message}"
    );
}

#[test]
fn test_path_id_differing_from_body_id_is_refused() {
    let message = preboot_fault(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "other", "path_on_host": "/tmp/d", "is_root_device": true}"#,
    );

    assert!(
        message.starts_with("The id from the path does not match the id from the body!"),
        "{message}"
    );
    assert!(
        message.contains("\"rootfs\"") && message.contains("\"other\""),
        "{message}"
    );
}

#[test]
fn test_id_with_other_characters_is_refused() {
    let message = preboot_fault(
        "PUT",
        "/network-interfaces/eth-0",
        r#"{"iface_id": "eth-0", "host_dev_name": "tap0"}"#,
    );

    assert!(
        message.starts_with(
            "API Resource IDs can only contain alphanumeric characters and underscores"
        ),
        "{message}"
    );
    assert!(message.contains("\"eth-0\""), "{message}");
}

#[test]
fn test_runtime_call_before_boot_is_refused() {
    let message = preboot_fault("PATCH", "/vm", r#"{"state": "Paused"}"#);

    assert_eq!(
        message,
        "The requested operation is not supported before starting the microVM."
    );
}

#[test]
fn test_pre_boot_call_after_boot_is_refused() {
    let scratch = Scratch::new();
    let spry = running_console_probe(&scratch);

    let answer = spry.call("PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#);

    assert_eq!(
        answer.fault(),
        "The requested operation is not supported after starting the microVM."
    );
}

#[test]
fn test_instance_start_after_boot_is_refused() {
    let scratch = Scratch::new();
    let spry = running_console_probe(&scratch);

    let answer = spry.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);

    assert_eq!(
        answer.fault(),
        "The requested operation is not supported after starting the microVM."
    );
}

#[test]
fn test_empty_put_body_is_refused() {
    let message = preboot_fault("PUT", "/actions", "");

    assert_eq!(message, "Empty PUT request.");
}

#[test]
fn test_get_with_a_body_is_refused() {
    let message = preboot_fault("GET", "/", r#"{"x": 1}"#);

    assert_eq!(message, "GET request cannot have a body.");
}

#[test]
fn test_body_over_the_limit_is_refused_and_the_connection_closed() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let huge = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(60_000));
    let mut client = Client::connect(&spry.socket);

    let answer = client.call("PUT", "/boot-source", &huge);

    assert_eq!(
        answer.fault(),
        "The request body is 60025 bytes, over the limit of 51200 bytes."
    );
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(spry.call("GET", "/", "").status, 200);
}

#[test]
fn test_absurd_content_length_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let mut client = Client::connect(&spry.socket);

    client.send_raw(b"PUT /actions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{}");
    let answer = client.read_response();

    assert_eq!(
        answer.fault(),
        "The request body is 99999999999 bytes, over the limit of 51200 bytes."
    );
}

#[test]
fn test_invalid_utf8_body_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let mut client = Client::connect(&spry.socket);
    let body = b"{\"kernel_image_path\": \"\xff\xfe\"}";
    let mut raw = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);

    client.send_raw(&raw);
    let answer = client.read_response();

    assert!(
        answer.fault().contains("invalid unicode code point")
            || answer.fault().contains("invalid UTF-8"),
        "{answer:?}"
    );
}

#[test]
fn test_kernel_that_does_not_exist_is_named() {
    let message = preboot_fault(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
    );

    assert_eq!(
        message,
        "boot-source.kernel_image_path: cannot read /nonexistent/vmlinux: No such file or directory (os error 2)"
    );
}

#[test]
fn test_instance_start_without_a_kernel_is_refused() {
    let message = preboot_fault("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);

    assert_eq!(
        message,
        "boot-source: not configured yet (PUT /boot-source first)"
    );
}

// ---- the socket ----

fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spry"))
        .args(args)
        .output()
        .expect("run spry");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_existing_socket_path_is_refused_and_left_alone() {
    let scratch = Scratch::new();
    let path = scratch.write("api.sock", b"not ours");

    let (code, stderr) = refused_start(&["--api-sock", path.to_str().unwrap()]);

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the path exists"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
}

#[test]
fn test_socket_in_a_missing_directory_is_refused() {
    let (code, stderr) = refused_start(&["--api-sock", "/nonexistent-spry/api.sock"]);

    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim(),
        "spry: API socket /nonexistent-spry/api.sock: directory /nonexistent-spry does not exist"
    );
}

#[test]
fn test_socket_where_spry_may_not_create_one_is_refused() {
    let (code, stderr) = refused_start(&["--api-sock", "/sys/spry-api.sock"]);

    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("spry: API socket /sys/spry-api.sock: cannot create it: "),
        "{stderr}"
    );
}

#[test]
fn test_socket_is_removed_when_spry_is_terminated() {
    let scratch = Scratch::new();
    let mut spry = spry_without_vm(&scratch);

    let code = spry.terminate();

    assert_eq!(code, Some(128 + libc::SIGTERM));
    assert!(!spry.socket.exists());
}

#[test]
fn test_socket_is_removed_when_the_config_file_is_bad() {
    let scratch = Scratch::new();
    let config = scratch.write(
        "vm.json",
        br#"{"boot-source": {"kernel_image_path": "/nonexistent"}}"#,
    );
    let socket = scratch.path("api.sock");

    let (code, stderr) = refused_start(&[
        "--api-sock",
        socket.to_str().unwrap(),
        "--config-file",
        config.to_str().unwrap(),
    ]);

    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read /nonexistent"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn test_no_api_with_a_config_file_boots_without_a_socket() {
    let scratch = Scratch::new();
    let config = common::config(&kernel(), &probe_args("probe.quiet=1"), None, 1, 128);

    let out = common::Spry::with_config(&scratch, &config)
        .arg("--no-api")
        .run();

    assert_eq!(out.code(), Some(0), "{out}");
    assert!(!scratch.path("api.sock").exists());
}

#[test]
fn test_no_api_without_a_config_file_is_a_usage_error() {
    let (code, stderr) = refused_start(&["--no-api"]);

    assert_eq!(code, Some(2));
    assert!(stderr.contains("--config-file"), "{stderr}");
}

// ---- many clients, keep-alive, pipelining, stalls ----

#[test]
fn test_keep_alive_connection_serves_many_requests() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let mut client = Client::connect(&spry.socket);

    let statuses: Vec<u16> = (0..200)
        .map(|_| client.call("GET", "/", "").status)
        .collect();

    assert_eq!(statuses, vec![200; 200]);
}

#[test]
fn test_pipelined_requests_are_answered_in_order() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let mut client = Client::connect(&spry.socket);
    let mut burst = api_support::request("GET", "/", "");
    burst.extend(api_support::request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 3, "mem_size_mib": 64}"#,
    ));
    burst.extend(api_support::request("GET", "/machine-config", ""));
    burst.extend(api_support::request("GET", "/version", ""));

    client.send_raw(&burst);
    let answers: Vec<_> = (0..4).map(|_| client.read_response()).collect();

    assert_eq!(answers[0].json()["app_name"], "spry");
    assert_eq!(answers[1].status, 204);
    assert_eq!(answers[2].json()["vcpu_count"], 3);
    assert!(answers[3].json()["firecracker_version"].is_string());
}

#[test]
fn test_concurrent_clients_each_get_their_own_answers() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let socket = spry.socket.clone();

    let workers: Vec<_> = (0..8)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket);
                (0..50)
                    .filter(|j| {
                        let (path, key) = match (i + j) % 2 {
                            0 => ("/", "app_name"),
                            _ => ("/machine-config", "vcpu_count"),
                        };
                        !client.call("GET", path, "").json()[key].is_null()
                    })
                    .count()
            })
        })
        .collect();
    let right: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    assert_eq!(right, vec![50; 8]);
}

#[test]
fn test_stalled_clients_block_neither_other_clients_nor_the_guest() {
    let scratch = Scratch::new();
    let mut spry = running_console_probe(&scratch);
    let _silent = UnixStream::connect(&spry.socket).unwrap();
    let mut half_headers = UnixStream::connect(&spry.socket).unwrap();
    half_headers
        .write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .unwrap();
    let mut half_body = UnixStream::connect(&spry.socket).unwrap();
    half_body
        .write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"state\":")
        .unwrap();

    let started = Instant::now();
    let answer = spry.call("GET", "/", "");
    let took = started.elapsed();

    assert_eq!(answer.status, 200);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_guest_echoes(&mut spry, "still-alive");
}

// ---- hostile input against a running guest ----

/// Sends `raw` on its own connection, closes the sending side and reads whatever
/// comes back; errors (the server closing early) are part of the game.
fn throw(socket: &Path, raw: &[u8]) -> Vec<u8> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = stream.write_all(raw);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn test_10000_mutated_requests_leave_the_api_and_the_guest_running() {
    let scratch = Scratch::new();
    let mut spry = running_console_probe(&scratch);
    let corpus = corpus();
    let mut rng = Rng(0x5eed_5a17_c0ff_ee11);

    let answered = (0..10_000)
        .filter(|_| !throw(&spry.socket, &rng.hostile_request(&corpus)).is_empty())
        .count();

    assert!(answered > 5_000, "only {answered} requests got an answer");
    assert_eq!(
        spry.child.try_wait().unwrap(),
        None,
        "spry died\n{}",
        spry.stderr()
    );
    assert_eq!(
        call(&spry.socket, "GET", "/", "").json()["state"],
        "Running"
    );
    assert_guest_echoes(&mut spry, "survived");
}

#[test]
fn test_truncated_requests_leave_the_api_answering() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch);
    let full = api_support::request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
    );

    let answers: Vec<usize> = (0..full.len())
        .map(|n| throw(&spry.socket, &full[..n]).len())
        .collect();

    assert_eq!(answers.len(), full.len());
    assert_eq!(spry.call("GET", "/", "").status, 200);
}
