//! `PUT /snapshot/rollback` (spry's own route): a VM loaded from a snapshot goes
//! back to it in place. The counting probe counts from the snapshot's value again,
//! memory it dirtied since reads as at the snapshot (`probe.dirty_mib`), repeated
//! rollbacks leak nothing, and a booted VM has nothing to roll back to.

mod api_support;
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::SpryApi;
use common::{probe_args, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn spry_without_vm(scratch: &Scratch, socket: &str) -> SpryApi {
    SpryApi::start(&scratch.path(socket), &["--log-level", "info"])
}

/// `(n, found)` of each `probe: count n [found v]` line so far (`found` is `n` when
/// the probe does not dirty memory).
fn counts(spry: &SpryApi) -> Vec<(u64, u64)> {
    counts_from(spry, 0)
}

/// As [`counts`], from console line `from` on.
fn counts_from(spry: &SpryApi, from: usize) -> Vec<(u64, u64)> {
    spry.lines()
        .iter()
        .skip(from)
        .filter_map(|l| count_in(l))
        .collect()
}

/// `(n, found)` of a `probe: count n [found v]` line. The line may start with what
/// the guest printed of it before a rollback took it back to before the print.
fn count_in(line: &str) -> Option<(u64, u64)> {
    let (_, rest) = line.rsplit_once("probe: count ")?;
    let mut words = rest.split(" found ");
    let n: u64 = words.next()?.trim().parse().ok()?;
    let found = words.next().map_or(Some(n), |v| v.trim().parse().ok())?;
    Some((n, found))
}

/// Boots the counting probe (every 20 ms) with `mem_mib` MiB, dirtying `dirty_mib`
/// MiB per count, pauses it after count 3 and snapshots it; returns the files.
fn snapshotted_probe(scratch: &Scratch, mem_mib: u64, dirty_mib: u64) -> (PathBuf, PathBuf) {
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let mut first = spry_without_vm(scratch, "first.sock");
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args(&format!(
            "probe.expect_cpus=1 probe.expect_mem_mib={mem_mib} probe.mode=count \
             probe.count_ms=20 probe.dirty_mib={dirty_mib}"
        )),
    });
    let machine = serde_json::json!({"vcpu_count": 1, "mem_size_mib": mem_mib});
    let calls = [
        ("/boot-source", boot_source.to_string()),
        ("/machine-config", machine.to_string()),
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
    first.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: count 3"));
    let pause = first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    let create = first.call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(pause.status, 204);
    assert_eq!(create.status, 204, "{create:?}\n{}", first.stderr());
    first.terminate();
    (state, mem)
}

/// The last count before the snapshot: one less than the first count a VM loaded
/// from it prints (the snapshotted process's own last line may still have been on
/// its way when it was stopped).
fn last_before_snapshot(spry: &SpryApi) -> u64 {
    spry.wait_for_line(Duration::from_secs(20), |l| l.starts_with("probe: count "));
    counts(spry)[0].0 - 1
}

/// A new spry running the snapshot from its memory file.
fn loaded(scratch: &Scratch, state: &Path, mem: &Path) -> SpryApi {
    let spry = spry_without_vm(scratch, "second.sock");
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    let load = spry.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(load.status, 204, "{load:?}\n{}", spry.stderr());
    spry
}

/// Rolls back once the probe, in its current run (since the load or the last
/// rollback), printed `ahead` counts past `last`, and waits for the count after
/// `last` to come again.
fn roll_back_after(spry: &SpryApi, last: u64, ahead: u64) {
    wait_count_from(
        spry,
        current_run(spry, last),
        last + ahead,
        Duration::from_secs(20),
    );
    let before = spry.lines().len();
    let answer = spry.call("PUT", "/snapshot/rollback", "{}");
    assert_eq!(answer.status, 204, "{answer:?}\n{}", spry.stderr());
    wait_count_from(spry, before, last + 1, Duration::from_secs(10));
}

/// The console line where the probe's current run starts: the last `count
/// last + 1`.
fn current_run(spry: &SpryApi, last: u64) -> usize {
    spry.lines()
        .iter()
        .rposition(|l| count_in(l).map(|(n, _)| n) == Some(last + 1))
        .unwrap_or(0)
}

/// Waits until console line `from` on holds count `n`.
fn wait_count_from(spry: &SpryApi, from: usize, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !counts_from(spry, from).iter().any(|&(m, _)| m == n) {
        assert!(
            Instant::now() < deadline,
            "no count {n} from line {from}: {:?}\n{}",
            spry.lines(),
            spry.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn test_rolled_back_probe_counts_from_the_snapshot_again_several_times() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 0);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);

    roll_back_after(&spry, last, 3);
    roll_back_after(&spry, last, 3);
    roll_back_after(&spry, last, 5);

    let seen: Vec<u64> = counts(&spry).into_iter().map(|(n, _)| n).collect();
    // Each run counts up from last + 1 again: three times back to the start.
    let restarts = seen.windows(2).filter(|w| w[1] <= w[0]).count();
    assert_eq!(restarts, 3, "{seen:?}");
    assert_eq!(spry.call("GET", "/", "").json()["state"], "Running");
}

#[test]
fn test_memory_dirtied_after_the_snapshot_reads_back_as_at_the_snapshot() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 4);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);

    roll_back_after(&spry, last, 3);
    roll_back_after(&spry, last, 2);
    wait_count_from(
        &spry,
        current_run(&spry, last),
        last + 3,
        Duration::from_secs(10),
    );

    // Count n finds what count n - 1 wrote (n) only if memory went back with the
    // vCPU: without the rollback of memory, count last + 1 would find what the
    // latest count before the rollback wrote.
    let seen = counts(&spry);
    assert!(seen.iter().all(|&(n, found)| n == found), "{seen:?}");
    assert!(seen.len() >= 8, "{seen:?}");
}

#[test]
fn test_rollback_with_an_empty_body_is_accepted() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 0);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);
    let past = format!("probe: count {}", last + 2);
    spry.wait_for_line(Duration::from_secs(20), |l| l == past);

    let answer = spry.call("PUT", "/snapshot/rollback", "");
    let unknown = spry.call("PUT", "/snapshot/rollback", r#"{"to": "x"}"#);

    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.fault().contains("unknown field `to`"),
        "{unknown:?}"
    );
}

#[test]
fn test_paused_vm_stays_paused_after_a_rollback() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 0);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);
    let past = format!("probe: count {}", last + 3);
    spry.wait_for_line(Duration::from_secs(20), |l| l == past);
    let pause = spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);

    let answer = spry.call("PUT", "/snapshot/rollback", "{}");
    std::thread::sleep(Duration::from_millis(200));
    let before = spry.lines().len();
    std::thread::sleep(Duration::from_millis(200));
    let while_paused = spry.lines().len() - before;
    let info = spry.call("GET", "/", "").json();
    let resume = spry.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let next = format!("probe: count {}", last + 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !counts_from(&spry, before)
        .iter()
        .any(|&(n, _)| n == last + 1)
    {
        assert!(Instant::now() < deadline, "no {next} after the resume");
        std::thread::sleep(Duration::from_millis(10));
    }

    assert_eq!(pause.status, 204);
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(while_paused, 0);
    assert_eq!(info["state"], "Paused");
    assert_eq!(resume.status, 204);
}

#[test]
fn test_rollback_of_a_booted_vm_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.expect_cpus=1 probe.mode=count probe.count_ms=20"),
    });
    let answer = spry.call("PUT", "/boot-source", &boot_source.to_string());
    assert_eq!(answer.status, 204, "{answer:?}");
    let start = spry.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(start.status, 204, "{start:?}");
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");

    let answer = spry.call("PUT", "/snapshot/rollback", "{}");

    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.fault(),
        "cannot roll back to the snapshot: no snapshot to roll back to: this VM was booted, \
         not loaded from a snapshot"
    );
    assert_eq!(spry.call("GET", "/", "").json()["state"], "Running");
}

#[test]
fn test_rollback_before_start_is_refused() {
    let scratch = Scratch::new();
    let spry = spry_without_vm(&scratch, "api.sock");

    let answer = spry.call("PUT", "/snapshot/rollback", "{}");

    assert_eq!(answer.status, 400);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Once spry has closed the API's connections: the same open fds and threads as
/// `before` (fds, threads, RSS), and RSS grown by no more than the probe's dirtying
/// (4 MiB per count) and a little allocator slack.
fn assert_nothing_leaked(pid: u32, before: (usize, usize, u64)) {
    let (fds, tasks, rss) = before;
    std::thread::sleep(Duration::from_millis(200));
    let after = (open_fds(pid), threads(pid), rss_kib(pid));
    eprintln!(
        "fds {fds} -> {}, threads {tasks} -> {}, RSS {rss} -> {} KiB",
        after.0, after.1, after.2
    );
    assert_eq!((after.0, after.1), (fds, tasks));
    assert!(after.2 < rss + 6 * 1024, "RSS {rss} -> {} KiB", after.2);
}

#[test]
fn test_a_hundred_rollbacks_leak_no_fds_threads_or_memory() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 4);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);
    let pid = spry.child.id();
    roll_back_after(&spry, last, 2);
    // Each API call's connection must be closed by spry before counting.
    std::thread::sleep(Duration::from_millis(200));
    let (fds, tasks, rss) = (open_fds(pid), threads(pid), rss_kib(pid));

    for _ in 0..100 {
        let answer = spry.call("PUT", "/snapshot/rollback", "{}");
        assert_eq!(answer.status, 204, "{answer:?}\n{}", spry.stderr());
    }
    roll_back_after(&spry, last, 2);
    assert_nothing_leaked(pid, (fds, tasks, rss));
    let seen = counts(&spry);
    assert!(seen.iter().all(|&(n, found)| n == found), "{seen:?}");
}

/// The whole cycle a sandbox platform runs, 100 times in one process: pause, a
/// Full snapshot (over the same files), resume, roll back. Counted: open file
/// descriptors, threads, resident memory.
#[test]
fn test_a_hundred_snapshot_and_rollback_cycles_leak_no_fds_threads_or_memory() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 4);
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);
    let pid = spry.child.id();
    let (again_state, again_mem) = (scratch.path("again.snap"), scratch.path("again.mem"));
    let create = serde_json::json!({"snapshot_path": again_state, "mem_file_path": again_mem});
    let cycle = || {
        for (method, path, body) in [
            ("PATCH", "/vm", r#"{"state": "Paused"}"#.to_owned()),
            ("PUT", "/snapshot/create", create.to_string()),
            ("PATCH", "/vm", r#"{"state": "Resumed"}"#.to_owned()),
            ("PUT", "/snapshot/rollback", "{}".to_owned()),
        ] {
            let answer = spry.call(method, path, &body);
            assert_eq!(
                answer.status,
                204,
                "{method} {path}: {answer:?}\n{}",
                spry.stderr()
            );
        }
    };
    for _ in 0..5 {
        cycle();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (fds, tasks, rss) = (open_fds(pid), threads(pid), rss_kib(pid));

    for _ in 0..100 {
        cycle();
    }
    roll_back_after(&spry, last, 2);
    assert_nothing_leaked(pid, (fds, tasks, rss));
    let seen = counts(&spry);
    assert!(seen.iter().all(|&(n, found)| n == found), "{seen:?}");
}

/// `spry-uffd-handler` serving `mem` on `socket`, once it listens.
fn uffd_handler(socket: &Path, mem: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spry-uffd-handler"))
        .arg(socket)
        .arg(mem)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn spry-uffd-handler");
    let mut first = String::new();
    let stdout = child.stdout.as_mut().expect("stdout");
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    child
}

#[test]
fn test_uffd_loaded_vm_rolls_back_with_pages_served_again() {
    let scratch = Scratch::new();
    let (state, mem) = snapshotted_probe(&scratch, 128, 4);
    let socket = scratch.path("uffd.sock");
    let mut handler = uffd_handler(&socket, &mem);
    let spry = spry_without_vm(&scratch, "second.sock");
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
        "resume_vm": true,
    });
    let load = spry.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(load.status, 204, "{load:?}\n{}", spry.stderr());
    let last = last_before_snapshot(&spry);

    roll_back_after(&spry, last, 3);
    roll_back_after(&spry, last, 2);

    let seen = counts(&spry);
    assert!(seen.iter().all(|&(n, found)| n == found), "{seen:?}");
    let _ = handler.kill();
    let _ = handler.wait();
}

/// Rollback time against MiB dirtied since the snapshot (1, 10, 100), for a `File`
/// and a `Uffd` load: prints one line per size. `cargo test --release --test
/// snapshot_rollback -- --ignored --nocapture bench`.
#[test]
#[ignore = "a measurement, not a check"]
fn bench_rollback_time_by_mib_dirtied() {
    for dirty_mib in [1u64, 10, 100] {
        let scratch = Scratch::new();
        let (state, mem) = snapshotted_probe(&scratch, 256, dirty_mib);
        let spry = loaded(&scratch, &state, &mem);
        bench_rollbacks(&spry, &format!("File, {dirty_mib} MiB dirtied"));
        drop(spry);
        let socket = scratch.path("uffd.sock");
        let mut handler = uffd_handler(&socket, &mem);
        let spry = spry_without_vm(&scratch, "uffd-api.sock");
        let body = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
            "resume_vm": true,
        });
        let load = spry.call("PUT", "/snapshot/load", &body.to_string());
        assert_eq!(load.status, 204, "{load:?}");
        bench_rollbacks(&spry, &format!("Uffd, {dirty_mib} MiB dirtied"));
        let _ = handler.kill();
        let _ = handler.wait();
    }
}

/// Five rollbacks of `spry`'s counting probe, each once it wrote all its pages
/// again; prints the client's and spry's times.
fn bench_rollbacks(spry: &SpryApi, what: &str) {
    let last = last_before_snapshot(spry);
    let mut times = Vec::new();
    let mut from = 0;
    for _ in 0..5 {
        // Count last + 2 has written all of its pages since the load or the
        // previous rollback.
        wait_count_from(spry, from, last + 2, Duration::from_secs(120));
        from = spry.lines().len();
        let started = Instant::now();
        let answer = spry.call("PUT", "/snapshot/rollback", "{}");
        times.push(started.elapsed());
        assert_eq!(answer.status, 204, "{answer:?}");
    }
    std::thread::sleep(Duration::from_millis(100));
    let logs: Vec<String> = spry
        .stderr()
        .lines()
        .filter_map(|l| l.split("rolled back to the snapshot in ").nth(1))
        .map(str::to_owned)
        .collect();
    eprintln!("{what}: PUT /snapshot/rollback answered in {times:?}; spry: {logs:?}");
}

#[test]
fn test_block_io_in_flight_at_a_rollback_completes_every_request() {
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let disk = scratch.write("data.img", &vec![0u8; 1 << 20]);
    let mut first = spry_without_vm(&scratch, "first.sock");
    let drive = serde_json::json!({
        "drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true
    });
    first.call("PUT", "/drives/data", &drive.to_string());
    // 85 reads of 4 KiB in flight at any time, completions awaited by interrupt;
    // about 2.5 s of requests, so both rollbacks below come in the middle.
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.mode=blkbench probe.bench_reqs=100000 probe.bench_irq=1"),
    });
    first.call("PUT", "/boot-source", &boot_source.to_string());
    first.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_line(BOOT_TIMEOUT, |l| l.starts_with("probe: blkbench start"));
    std::thread::sleep(Duration::from_millis(200));
    first.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    let create = first.call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(create.status, 204, "{create:?}");
    first.terminate();
    let spry = loaded(&scratch, &state, &mem);

    std::thread::sleep(Duration::from_millis(300));
    let first_rollback = spry.call("PUT", "/snapshot/rollback", "{}");
    std::thread::sleep(Duration::from_millis(300));
    let second_rollback = spry.call("PUT", "/snapshot/rollback", "");
    let done = spry.wait_for_line(Duration::from_secs(60), |l| {
        l.starts_with("probe: blkbench done") || l.contains("FAIL")
    });
    let summary = spry.wait_for_line(Duration::from_secs(10), |l| {
        l.starts_with("probe: all ") || l.contains("FAIL")
    });

    assert_eq!(
        first_rollback.status,
        204,
        "{first_rollback:?}\n{}",
        spry.stderr()
    );
    assert_eq!(second_rollback.status, 204, "{second_rollback:?}");
    assert!(
        done.starts_with("probe: blkbench done 100000 requests"),
        "{done}"
    );
    assert!(
        summary.ends_with(" checks ok"),
        "{summary}\n{:?}",
        spry.lines()
    );
    // Once: the rollbacks put the guest back before it finished.
    let dones = spry
        .lines()
        .iter()
        .filter(|l| l.starts_with("probe: blkbench done"))
        .count();
    assert_eq!(dones, 1, "{:?}", spry.lines());
}

#[test]
fn test_vm_with_a_vsock_device_rolls_back_and_keeps_its_socket() {
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let uds = scratch.path("v.sock");
    let mut first = spry_without_vm(&scratch, "first.sock");
    let vsock = serde_json::json!({"guest_cid": 7, "uds_path": uds});
    assert_eq!(first.call("PUT", "/vsock", &vsock.to_string()).status, 204);
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.expect_cpus=1 probe.mode=count probe.count_ms=20"),
    });
    assert_eq!(
        first
            .call("PUT", "/boot-source", &boot_source.to_string())
            .status,
        204
    );
    let start = first.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(start.status, 204, "{start:?}");
    first.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 1");
    assert_eq!(
        first.call("PATCH", "/vm", r#"{"state": "Paused"}"#).status,
        204
    );
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    let create = first.call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(create.status, 204, "{create:?}");
    first.terminate();
    let spry = loaded(&scratch, &state, &mem);
    let last = last_before_snapshot(&spry);

    roll_back_after(&spry, last, 3);
    roll_back_after(&spry, last, 2);

    assert!(
        std::os::unix::net::UnixStream::connect(&uds).is_ok(),
        "the vsock socket does not accept after the rollbacks"
    );
    let config = spry.call("GET", "/vm/config", "").json();
    assert_eq!(config["vsock"]["guest_cid"], 7, "{config}");
}
