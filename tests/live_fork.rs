//! Live fork (issue 10): a VM booted with `machine-config.memory_file_dir` keeps its
//! RAM in an unnamed file on a tmpfs, so its first Full snapshot links that file at
//! `mem_file_path` instead of writing memory, and the VM goes on over a private
//! mapping of it. Clones load the snapshot in Firecracker's dialect and count on
//! from the fork point while the parent runs on; the parent can roll back to it;
//! the memory file never changes. A directory off tmpfs is refused, and a memory
//! file on another file system is written as for any Full snapshot.

mod api_support;
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_support::SpryApi;
use common::{probe_args, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory on the host's tmpfs, removed on drop.
struct TmpfsDir(PathBuf);

impl TmpfsDir {
    /// One under `/dev/shm`, or `None` where that is not a tmpfs.
    fn new(tag: &str) -> Option<TmpfsDir> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let shm_is_tmpfs = mounts.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1) == Some(&"/dev/shm") && fields.get(2) == Some(&"tmpfs")
        });
        if !shm_is_tmpfs {
            return None;
        }
        let dir = PathBuf::from(format!("/dev/shm/spry-fork-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(TmpfsDir(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpfsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spry with its API on `socket` in `scratch`, logging what it does.
fn spry(scratch: &Scratch, socket: &str) -> SpryApi {
    SpryApi::start(&scratch.path(socket), &["--log-level", "info"])
}

/// Boots the probe counting every 20 ms with its RAM in `memory_file_dir`; returns
/// the answer to `InstanceStart`.
fn boot_counting_probe(spry: &SpryApi, memory_file_dir: &Path) -> api_support::Response {
    let boot_source = serde_json::json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": probe_args("probe.mode=count probe.count_ms=20"),
    });
    let machine = serde_json::json!({
        "vcpu_count": 1, "mem_size_mib": 128, "memory_file_dir": memory_file_dir,
    });
    for (path, body) in [
        ("/boot-source", boot_source.to_string()),
        ("/machine-config", machine.to_string()),
    ] {
        let answer = spry.call("PUT", path, &body);
        assert_eq!(answer.status, 204, "PUT {path}: {answer:?}");
    }
    spry.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
}

/// Pauses the counting `parent` after its third count and takes a Full snapshot
/// into `state` and `mem`; returns the last count it printed.
fn pause_and_snapshot(parent: &SpryApi, state: &Path, mem: &Path) -> u64 {
    parent.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: count 3");
    let pause = parent.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(pause.status, 204, "{pause:?}");
    let body = serde_json::json!({
        "snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full"
    });
    let create = parent.call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(create.status, 204, "{create:?}\n{}", parent.stderr());
    // A line the guest wrote just before the pause may still be on its way.
    std::thread::sleep(Duration::from_millis(100));
    *parent
        .probe_counts()
        .last()
        .expect("a count before the pause")
}

/// Loads the snapshot in a fresh spry and checks it counts on from `last`.
fn clone_counts_on(scratch: &Scratch, socket: &str, state: &Path, mem: &Path, last: u64) {
    let clone = spry(scratch, socket);
    let body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    let load = clone.call("PUT", "/snapshot/load", &body.to_string());
    assert_eq!(load.status, 204, "{load:?}\n{}", clone.stderr());
    let next = format!("probe: count {}", last + 2);
    clone.wait_for_line(Duration::from_secs(10), |l| l == next);
    let seen = clone.probe_counts();
    assert_eq!(seen[..2], [last + 1, last + 2], "{socket}: {seen:?}");
}

#[test]
fn test_live_fork_links_guest_ram_and_clones_count_on_from_the_fork_point() {
    let Some(shm) = TmpfsDir::new("clones") else {
        common::skip(
            "test_live_fork_links_guest_ram_and_clones_count_on_from_the_fork_point",
            "/dev/shm is not a tmpfs here",
        );
        return;
    };
    let scratch = Scratch::new();
    let (state, mem) = (scratch.path("fork.snap"), shm.path("fork.mem"));
    let parent = spry(&scratch, "parent.sock");
    let start = boot_counting_probe(&parent, &shm.0);
    assert_eq!(start.status, 204, "{start:?}\n{}", parent.stderr());

    let last = pause_and_snapshot(&parent, &state, &mem);

    let forked = parent.wait_for_log(Duration::from_secs(1), |l| l.contains("live fork"));
    assert!(forked.contains("no memory written"), "{forked}");
    let file = std::fs::metadata(&mem).expect("the memory file");
    assert_eq!(file.len(), 128 << 20);
    // Only what the guest touched is in the file (the probe: well under 8 MiB).
    assert!(
        file.blocks() * 512 < 8 << 20,
        "{} bytes",
        file.blocks() * 512
    );
    let frozen = common::sha256(&mem);
    // The parent runs on; its writes stay its own.
    let resume = parent.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(resume.status, 204, "{resume:?}");
    let ahead = format!("probe: count {}", last + 10);
    parent.wait_for_line(Duration::from_secs(10), |l| l == ahead);

    clone_counts_on(&scratch, "clone1.sock", &state, &mem, last);
    clone_counts_on(&scratch, "clone2.sock", &state, &mem, last);

    // The parent goes back to the fork point, in place.
    let rollback = parent.call("PUT", "/snapshot/rollback", "{}");
    assert_eq!(rollback.status, 204, "{rollback:?}\n{}", parent.stderr());
    let again = format!("probe: count {}", last + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while parent.lines().iter().filter(|l| **l == again).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the parent did not count {} again after its rollback: {:?}",
            last + 1,
            parent.probe_counts()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        common::sha256(&mem),
        frozen,
        "the fork's memory file changed"
    );
}

#[test]
fn test_memory_file_dir_off_tmpfs_is_refused_at_start() {
    let scratch = Scratch::new();
    let disk_dir = scratch.path("ram");
    std::fs::create_dir(&disk_dir).expect("a directory on the scratch file system");
    let on_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/tmp") && l.contains(" tmpfs "));
    if on_tmpfs {
        common::skip(
            "test_memory_file_dir_off_tmpfs_is_refused_at_start",
            "the scratch directory is on a tmpfs here",
        );
        return;
    }
    let spry = spry(&scratch, "api.sock");

    let start = boot_counting_probe(&spry, &disk_dir);

    assert_eq!(start.status, 400, "{start:?}");
    let fault = start.fault();
    assert!(fault.contains("memory_file_dir"), "{fault}");
    assert!(fault.contains("not a tmpfs"), "{fault}");
    let missing = boot_counting_probe(&spry, &scratch.path("no-such-dir"));
    assert_eq!(missing.status, 400, "{missing:?}");
    assert!(
        missing.fault().contains("cannot make guest RAM's file"),
        "{missing:?}"
    );
}

#[test]
fn test_memory_file_on_another_file_system_is_written_and_clones_count_on() {
    let Some(shm) = TmpfsDir::new("exdev") else {
        common::skip(
            "test_memory_file_on_another_file_system_is_written_and_clones_count_on",
            "/dev/shm is not a tmpfs here",
        );
        return;
    };
    let scratch = Scratch::new();
    // Guest RAM on /dev/shm, the snapshot's memory file in the scratch directory.
    let (state, mem) = (scratch.path("vm.snap"), scratch.path("vm.mem"));
    let parent = spry(&scratch, "parent.sock");
    let start = boot_counting_probe(&parent, &shm.0);
    assert_eq!(start.status, 204, "{start:?}\n{}", parent.stderr());

    let last = pause_and_snapshot(&parent, &state, &mem);

    let why = parent.wait_for_log(Duration::from_secs(1), |l| l.contains("live fork"));
    assert!(why.contains("writing memory instead"), "{why}");
    assert!(parent
        .wait_for_log(Duration::from_secs(1), |l| l
            .contains("pages of memory written"))
        .contains("Full snapshot"));
    clone_counts_on(&scratch, "clone.sock", &state, &mem, last);
}
