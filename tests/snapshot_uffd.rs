//! The `Uffd` memory backend of `PUT /snapshot/load`: the counting probe is
//! snapshotted mid-run, and a new spry process loads it with its memory served, page
//! by page, by `spry-uffd-handler` (a separate process, as Firecracker's handlers
//! are) from the memory file. Also the ways a handler can fail spry.

mod api_support;
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use api_support::SpryApi;
use common::{probe_args, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn spry_without_vm(scratch: &Scratch, socket: &str) -> SpryApi {
    SpryApi::start(&scratch.path(socket), &["--log-level", "info"])
}

/// A counting probe (every 20 ms, 128 MiB), paused after its third count and
/// snapshotted; returns the files and the last count it printed.
fn snapshotted_probe(scratch: &Scratch) -> (PathBuf, PathBuf, u64) {
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let mut first = spry_without_vm(scratch, "first.sock");
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args(
            "probe.expect_cpus=1 probe.expect_mem_mib=128 probe.mode=count probe.count_ms=20"
        ),
    });
    let calls = [
        ("/boot-source", boot_source.to_string()),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_owned(),
        ),
        ("/actions", r#"{"action_type": "InstanceStart"}"#.to_owned()),
    ];
    for (path, body) in calls {
        let answer = first.call("PUT", path, &body);
        assert_eq!(
            answer.status,
            204,
            "PUT {path}: {answer:?}\n{}",
            first.stderr()
        );
    }
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    let pause = first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    let create = first.call("PUT", "/snapshot/create", &body.to_string());
    // A line the guest wrote just before the pause may still be on its way (a busy
    // host delays it).
    std::thread::sleep(Duration::from_millis(300));
    let last = *first.probe_counts().last().unwrap();
    assert_eq!(pause.status, 204);
    assert_eq!(create.status, 204, "{create:?}\n{}", first.stderr());
    first.terminate();
    (state, mem, last)
}

fn uffd_load_body(state: &Path, socket: &Path) -> String {
    serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
        "resume_vm": true,
    })
    .to_string()
}

/// `spry-uffd-handler` serving `mem` on `socket`, with its output lines.
struct Handler {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Handler {
    fn start(socket: &Path, mem: &Path, args: &[&str]) -> Handler {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spry-uffd-handler"))
            .arg(socket)
            .arg(mem)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn spry-uffd-handler");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let handler = Handler { child, lines };
        let first = handler.next_line(Duration::from_secs(10));
        assert!(first.starts_with("listening on"), "{first}");
        handler
    }

    fn next_line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .expect("a line from spry-uffd-handler")
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn test_counting_probe_counts_on_after_a_uffd_load_in_a_new_process() {
    let scratch = Scratch::new();
    let (state, mem, last) = snapshotted_probe(&scratch);
    let socket = scratch.path("uffd.sock");
    let handler = Handler::start(&socket, &mem, &[]);
    let mut second = spry_without_vm(&scratch, "second.sock");

    let load = second.call("PUT", "/snapshot/load", &uffd_load_body(&state, &socket));
    let next = format!("probe: count {}", last + 2);
    second.wait_for_line(Duration::from_secs(10), |l| l == next);
    second.terminate();
    let served = handler.next_line(Duration::from_secs(10));

    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    let seen = second.probe_counts();
    assert_eq!(seen[..2], [last + 1, last + 2], "{seen:?}");
    // The probe touches a few dozen pages; every one came from the handler.
    let pages: u64 = served
        .strip_prefix("served ")
        .and_then(|s| s.strip_suffix(" pages"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{served}"));
    assert!(pages > 0, "{served}");
    eprintln!("handler: {served}");
}

#[test]
fn test_uffd_load_with_no_handler_socket_is_refused_and_the_process_stays_fresh() {
    let scratch = Scratch::new();
    let (state, _mem, _) = snapshotted_probe(&scratch);
    let spry = spry_without_vm(&scratch, "second.sock");
    let socket = scratch.path("nobody.sock");

    let load = spry.call("PUT", "/snapshot/load", &uffd_load_body(&state, &socket));
    let info = spry.call("GET", "/", "").json();

    assert_eq!(load.status, 400);
    assert_eq!(
        load.fault(),
        format!(
            "snapshot/load with a Uffd backend: cannot connect to the page-fault handler \
             socket {}: No such file or directory (os error 2)",
            socket.display()
        )
    );
    assert_eq!(info["state"], "Not started");
}

#[test]
fn test_uffd_load_on_a_socket_nobody_listens_on_is_refused() {
    let scratch = Scratch::new();
    let (state, _mem, _) = snapshotted_probe(&scratch);
    let spry = spry_without_vm(&scratch, "second.sock");
    let socket = scratch.path("stale.sock");
    // Bound, then closed: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let load = spry.call("PUT", "/snapshot/load", &uffd_load_body(&state, &socket));

    assert_eq!(load.status, 400);
    assert!(load.fault().contains("Connection refused"), "{load:?}");
}

#[test]
fn test_handler_that_exits_without_serving_stops_the_vm_with_a_clear_error() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let socket = scratch.path("uffd.sock");
    let handler = Handler::start(&socket, &mem, &["--exit-after-receive"]);
    let mut spry = spry_without_vm(&scratch, "second.sock");

    let load = spry.call("PUT", "/snapshot/load", &uffd_load_body(&state, &socket));
    let code = spry.wait_exit(Duration::from_secs(10));

    assert_eq!(load.status, 204, "{load:?}\n{}", spry.stderr());
    assert_eq!(
        handler.next_line(Duration::from_secs(1)),
        "exiting without serving"
    );
    assert_eq!(code, Some(4), "{}", spry.stderr());
    assert!(
        spry.stderr().contains(&format!(
            "spry: the page-fault handler on {} ended",
            socket.display()
        )),
        "{}",
        spry.stderr()
    );
    assert!(spry.probe_counts().is_empty());
}

#[test]
fn test_full_snapshot_of_a_uffd_vm_holds_the_pages_the_guest_never_touched() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let socket = scratch.path("uffd.sock");
    let _handler = Handler::start(&socket, &mem, &[]);
    let mut second = spry_without_vm(&scratch, "second.sock");
    let load = second.call("PUT", "/snapshot/load", &uffd_load_body(&state, &socket));
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    second.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: count "));
    let (state2, mem2) = (scratch.path("again.snap"), scratch.path("again.mem"));

    let pause = second.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({"snapshot_path": state2, "mem_file_path": mem2});
    let create = second.call("PUT", "/snapshot/create", &body.to_string());
    std::thread::sleep(Duration::from_millis(300));
    let last = *second.probe_counts().last().unwrap();
    second.terminate();
    let third = spry_without_vm(&scratch, "third.sock");
    let file_load = serde_json::json!({
        "snapshot_path": state2, "mem_file_path": mem2, "resume_vm": true
    });
    let load2 = third.call("PUT", "/snapshot/load", &file_load.to_string());
    let next = format!("probe: count {}", last + 2);
    third.wait_for_line(Duration::from_secs(10), |l| l == next);

    assert_eq!(pause.status, 204);
    assert_eq!(create.status, 204, "{create:?}\n{}", second.stderr());
    assert_eq!(load2.status, 204, "{load2:?}\n{}", third.stderr());
    // Most pages with data were never touched after the first load: had they been
    // saved as zero (as untouched anonymous memory is), the second file would hold
    // far fewer.
    assert!(
        data_pages(&mem2) >= data_pages(&mem),
        "{} < {}",
        data_pages(&mem2),
        data_pages(&mem)
    );
}

/// 4 KiB pages of `path` that are not all zero.
fn data_pages(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count()
}

/// Runs `spry --api-sock socket` without CAP_SYS_PTRACE (capsh) and with
/// /dev/userfaultfd replaced by /dev/null in a mount namespace of its own (unshare):
/// a host that refuses it a userfaultfd for kernel faults. `None` where that cannot
/// be arranged (not root, no capsh or unshare).
fn spry_without_userfaultfd(socket: &Path) -> Option<Child> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !root || !have("capsh") || !have("unshare") {
        return None;
    }
    let inner = format!(
        "exec {} --api-sock {}",
        env!("CARGO_BIN_EXE_spry"),
        socket.display()
    );
    let script = format!(
        "mount --bind /dev/null /dev/userfaultfd 2>/dev/null || true; \
         exec capsh --drop=cap_sys_ptrace -- -c '{inner}'"
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "spry never served its API"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child)
}

#[test]
fn test_host_refusing_userfaultfd_gives_one_clear_error() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let socket = scratch.path("uffd.sock");
    let _handler = Handler::start(&socket, &mem, &[]);
    let api = scratch.path("second.sock");
    let Some(mut spry) = spry_without_userfaultfd(&api) else {
        common::skip(
            "test_host_refusing_userfaultfd_gives_one_clear_error",
            "needs root, capsh and unshare to take userfaultfd away from spry",
        );
        return;
    };

    let load = api_support::call(
        &api,
        "PUT",
        "/snapshot/load",
        &uffd_load_body(&state, &socket),
    );
    let _ = spry.kill();
    let _ = spry.wait();

    assert_eq!(load.status, 400);
    assert_eq!(
        load.fault(),
        "snapshot/load with a Uffd backend: this host refuses spry a userfaultfd that handles \
         kernel faults: allow it with `sysctl vm.unprivileged_userfaultfd=1`, run spry with \
         CAP_SYS_PTRACE, or give it read-write access to /dev/userfaultfd: Operation not \
         permitted (os error 1)"
    );
}

/// Firecracker v1.16.1, the peer of the benchmarks, if this machine has it.
fn firecracker() -> Option<PathBuf> {
    let path = common::repo().join("../shared/peers/firecracker");
    path.exists().then_some(path)
}

/// `firecracker --api-sock socket`, its console collected by SpryApi's means.
fn firecracker_api(binary: &Path, socket: &Path) -> Child {
    let child = Command::new(binary)
        .arg("--api-sock")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn firecracker");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "firecracker never served its API"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// The other side of the protocol: Firecracker's own snapshot, loaded by Firecracker
/// with a Uffd backend, is served by spry-uffd-handler, and its probe counts on.
#[test]
fn test_spry_uffd_handler_serves_firecracker() {
    let Some(fc) = firecracker() else {
        common::skip(
            "test_spry_uffd_handler_serves_firecracker",
            "no Firecracker at ../shared/peers/firecracker",
        );
        return;
    };
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("fc.snap"), scratch.path("fc.mem"));
    let first_sock = scratch.path("fc1.sock");
    let mut first = firecracker_api(&fc, &first_sock);
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args(
            "probe.expect_cpus=1 probe.expect_mem_mib=128 probe.mode=count probe.count_ms=20"
        ),
    });
    let snapshot = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    let calls = [
        ("PUT", "/boot-source", boot_source.to_string()),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.to_owned(),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_owned(),
        ),
    ];
    for (method, path, body) in calls {
        let answer = api_support::call(&first_sock, method, path, &body);
        assert_eq!(answer.status, 204, "{method} {path}: {answer:?}");
    }
    std::thread::sleep(Duration::from_millis(1000));
    let pause = api_support::call(&first_sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = api_support::call(
        &first_sock,
        "PUT",
        "/snapshot/create",
        &snapshot.to_string(),
    );
    let _ = first.kill();
    let _ = first.wait();
    let socket = scratch.path("uffd.sock");
    let handler = Handler::start(&socket, &mem, &[]);
    let second_sock = scratch.path("fc2.sock");
    let mut second = firecracker_api(&fc, &second_sock);
    let stdout = second.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let load = api_support::call(
        &second_sock,
        "PUT",
        "/snapshot/load",
        &uffd_load_body(&state, &socket),
    );
    let counted = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok())
        .find(|l| l.starts_with("probe: count "));
    let _ = second.kill();
    let _ = second.wait();
    let served = handler.next_line(Duration::from_secs(10));

    assert_eq!(pause.status, 204, "{pause:?}");
    assert_eq!(create.status, 204, "{create:?}");
    assert_eq!(load.status, 204, "{load:?}");
    assert!(
        counted.is_some(),
        "Firecracker's guest did not count after the load"
    );
    assert!(served.starts_with("served "), "{served}");
}

#[test]
fn test_diff_of_a_uffd_vm_with_dirty_tracking_layers_on_the_handler_s_file() {
    let scratch = Scratch::new();
    let (state, mem, _) = snapshotted_probe(&scratch);
    let socket = scratch.path("uffd.sock");
    let _handler = Handler::start(&socket, &mem, &[]);
    let mut second = spry_without_vm(&scratch, "second.sock");
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
        "track_dirty_pages": true,
        "resume_vm": true,
    });
    let load = second.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(load.status, 204, "{load:?}\n{}", second.stderr());
    let first_count = second.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: count "));
    let start: u64 = first_count["probe: count ".len()..].parse().unwrap();
    let later = format!("probe: count {}", start + 4);
    second.wait_for_line(Duration::from_secs(10), |l| l == later);
    let (diff_state, diff_mem) = (scratch.path("diff.snap"), scratch.path("diff.mem"));

    let pause = second.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let diff_body = serde_json::json!({
        "snapshot_path": diff_state, "mem_file_path": diff_mem, "snapshot_type": "Diff"
    });
    let diff = second.call("PUT", "/snapshot/create", &diff_body.to_string());
    std::thread::sleep(Duration::from_millis(300));
    let last = *second.probe_counts().last().unwrap();
    second.terminate();
    // The handler's file is the Diff's base: layered on it, it holds the memory at
    // the Diff's time.
    spry::snapshot::memory::apply_diff(&mem, &diff_mem).unwrap();
    let third = spry_without_vm(&scratch, "third.sock");
    let file_load = serde_json::json!({
        "snapshot_path": diff_state, "mem_file_path": mem, "resume_vm": true
    });
    let load3 = third.call("PUT", "/snapshot/load", &file_load.to_string());
    let next = format!("probe: count {}", last + 2);
    third.wait_for_line(Duration::from_secs(10), |l| l == next);

    assert_eq!(pause.status, 204);
    assert_eq!(diff.status, 204, "{diff:?}");
    assert_eq!(load3.status, 204, "{load3:?}\n{}", third.stderr());
    assert_eq!(third.probe_counts()[0], last + 1);
    // A Diff holds only what changed: far less than the 128 MiB of guest RAM.
    assert!(
        data_pages(&diff_mem) < 1024,
        "{} pages",
        data_pages(&diff_mem)
    );
}
