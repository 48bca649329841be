//! Clones of one snapshot running side by side, each in its own spry process with
//! its own API socket, sharing one read-only base image through copy-on-write
//! drives (`drive_overrides` at `PUT /snapshot/load`). The guest is the probe in
//! `probe.mode=blkclone`: a letter typed on its console makes it read its
//! sectors (saying whether they hold the base's data, its own or another's),
//! write its own pattern there and read it back.

mod api_support;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use api_support::SpryApi;
use common::{probe_args, Scratch};
use serde_json::{json, Value};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
const ROUND_TIMEOUT: Duration = Duration::from_secs(20);
/// The sectors each round covers: 17 sectors from sector 3, so the writes start
/// and end inside a 4 KiB block of the overlay.
const FIRST: u64 = 3;
const COUNT: u64 = 17;
/// Clones started from the one snapshot.
const CLONES: usize = 8;
/// The base image: 1 MiB.
const BASE_BYTES: u64 = 1 << 20;

/// Byte `i` of sector `s` as the probe writes it (resources/probe/README.md).
fn sector_pattern(s: u64) -> Vec<u8> {
    (0..512u64)
        .map(|i| u8::try_from((s * 31 + i * 7 + 0x5a) & 0xff).unwrap_or(0))
        .collect()
}

/// A base image holding the probe's plain pattern in every sector.
fn base_image(scratch: &Scratch) -> PathBuf {
    let bytes: Vec<u8> = (0..BASE_BYTES / 512).flat_map(sector_pattern).collect();
    scratch.write("base.img", &bytes)
}

fn checksum(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

/// The blkclone probe's command line; it writes `touch_mib` MiB of its RAM (a
/// working set) before it idles.
fn blkclone_args(touch_mib: u64) -> String {
    probe_args(&format!(
        "probe.mode=blkclone probe.blk_sectors={FIRST}:{COUNT} probe.touch_mib={touch_mib}"
    ))
}

/// Boots the blkclone probe with `drive` as drive "rootfs", and waits until it idles.
fn boot_blkclone(spry: &SpryApi, drive: &Value, touch_mib: u64) {
    let boot_source = json!({
        "kernel_image_path": common::probe_vmlinux(),
        "boot_args": blkclone_args(touch_mib),
    });
    let calls = [
        ("/drives/rootfs", drive.to_string()),
        ("/boot-source", boot_source.to_string()),
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}).to_string(),
        ),
        (
            "/actions",
            json!({"action_type": "InstanceStart"}).to_string(),
        ),
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
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: blkclone ready");
}

/// The golden VM: the probe on a copy-on-write view of `base` (its writes, none
/// before the snapshot, would stay in memory), idle, paused and snapshotted.
/// (`spry-bench clones` measures fleets of such clones against cold boots.)
fn golden_snapshot(scratch: &Scratch, base: &Path) -> (PathBuf, PathBuf) {
    let (state, mem) = (scratch.path("golden.snap"), scratch.path("golden.mem"));
    let mut golden = SpryApi::start(&scratch.path("golden.sock"), &[]);
    let drive = json!({
        "drive_id": "rootfs", "path_on_host": base, "is_root_device": false,
        "copy_on_write": {"overlay_type": "Memory"}
    });
    boot_blkclone(&golden, &drive, 0);
    snapshot(&golden, &state, &mem);
    golden.terminate();
    (state, mem)
}

fn snapshot(spry: &SpryApi, state: &Path, mem: &Path) {
    let pause = spry.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let body = json!({"snapshot_path": state, "mem_file_path": mem});
    let create = spry.call("PUT", "/snapshot/create", &body.to_string());
    assert_eq!(pause.status, 204, "{pause:?}");
    assert_eq!(create.status, 204, "{create:?}\n{}", spry.stderr());
}

fn load_body(state: &Path, mem: &Path, overrides: &Value) -> String {
    json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
        "drive_overrides": overrides,
    })
    .to_string()
}

/// Clone `i`'s copy-on-write view of `base`: a memory overlay for even `i`, a
/// file overlay for odd `i`.
fn clone_override(scratch: &Scratch, base: &Path, i: usize) -> Value {
    let cow = if i % 2 == 0 {
        json!({"overlay_type": "Memory"})
    } else {
        json!({"overlay_type": "File", "overlay_path": overlay_path(scratch, i)})
    };
    json!([{"drive_id": "rootfs", "path_on_host": base, "copy_on_write": cow}])
}

fn overlay_path(scratch: &Scratch, i: usize) -> PathBuf {
    scratch.path(&format!("clone{i}.cow"))
}

fn tag(i: usize) -> u8 {
    b'a' + u8::try_from(i).unwrap()
}

/// Types clone `i`'s tag and returns the probe's answer for that round.
fn round(spry: &mut SpryApi, tag: u8, seen_before: usize) -> String {
    let prefix = format!("probe: blkclone {}: ", char::from(tag));
    spry.type_keys(&[tag]);
    let answered = |l: &str| l.starts_with(&prefix);
    spry.out_wait(ROUND_TIMEOUT, seen_before, answered)
}

/// Waits for the `n+1`th line satisfying `pred` (earlier rounds print the same
/// prefix).
trait NthLine {
    fn out_wait(&self, timeout: Duration, n: usize, pred: impl Fn(&str) -> bool) -> String;
}

impl NthLine for SpryApi {
    fn out_wait(&self, timeout: Duration, n: usize, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().filter(|l| pred(l)).nth(n) {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no answer in {timeout:?}; console: {:?}\nstderr: {}",
                self.lines(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn ok_line(tag: u8, before: &str) -> String {
    format!(
        "probe: blkclone {}: before {before}, write+read {COUNT} sectors: ok",
        char::from(tag)
    )
}

/// Starts `CLONES` spry processes and loads the snapshot into each at once, each
/// with its own socket and its own copy-on-write view of `base`.
fn start_clones(scratch: &Scratch, state: &Path, mem: &Path, base: &Path) -> Vec<SpryApi> {
    let clones: Vec<SpryApi> = (0..CLONES)
        .map(|i| SpryApi::start(&scratch.path(&format!("clone{i}.sock")), &[]))
        .collect();
    let loads: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = clones
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let body = load_body(state, mem, &clone_override(scratch, base, i));
                s.spawn(move || c.call("PUT", "/snapshot/load", &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, load) in loads.iter().enumerate() {
        assert_eq!(
            load.status,
            204,
            "clone {i}: {load:?}\n{}",
            clones[i].stderr()
        );
    }
    clones
}

#[test]
fn test_eight_clones_of_one_snapshot_keep_their_own_writes_over_one_base() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let before = checksum(&base);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let mut clones = start_clones(&scratch, &state, &mem, &base);

    // One clone after the other, so each first round comes after every earlier
    // clone wrote: each must still find the base's data.
    let first: Vec<String> = clones
        .iter_mut()
        .enumerate()
        .map(|(i, c)| round(c, tag(i), 0))
        .collect();
    let second: Vec<String> = clones
        .iter_mut()
        .enumerate()
        .map(|(i, c)| round(c, tag(i), 1))
        .collect();

    for i in 0..CLONES {
        assert_eq!(first[i], ok_line(tag(i), "base"), "clone {i}");
        assert_eq!(second[i], ok_line(tag(i), "mine"), "clone {i}");
        let config = clones[i].call("GET", "/vm/config", "").json();
        let cow = &config["drives"][0]["copy_on_write"];
        let kind = if i % 2 == 0 { "Memory" } else { "File" };
        assert_eq!(cow["overlay_type"], kind, "clone {i}: {config}");
    }
    assert_eq!(checksum(&base), before, "the base image was written");
    // A file overlay holds its clone's pattern at the disk offset: sector s of
    // clone i holds the plain pattern of sector s + tag.
    let overlay = std::fs::read(overlay_path(&scratch, 1)).unwrap();
    let at = usize::try_from(FIRST * 512).unwrap();
    assert_eq!(
        overlay[at..at + 512],
        sector_pattern(FIRST + u64::from(tag(1)))
    );
}

#[test]
fn test_each_clone_answers_on_its_own_api_socket() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = golden_snapshot(&scratch, &base);

    let clones = start_clones(&scratch, &state, &mem, &base);

    let pids: Vec<u32> = clones.iter().map(|c| c.child.id()).collect();
    for (i, c) in clones.iter().enumerate() {
        let info = c.call("GET", "/", "").json();
        assert_eq!(info["state"], "Running", "clone {i}");
        let paused = c.call("PATCH", "/vm", r#"{"state": "Paused"}"#);
        assert_eq!(paused.status, 204, "clone {i}");
        // Pausing clone i paused it alone.
        for (j, other) in clones.iter().enumerate().filter(|(j, _)| *j > i) {
            let state = other.call("GET", "/", "").json()["state"].clone();
            assert_eq!(state, "Running", "clone {j} after pausing {i}");
        }
    }
    assert_eq!(
        pids.iter().collect::<std::collections::HashSet<_>>().len(),
        CLONES
    );
}

#[test]
fn test_override_of_a_drive_the_snapshot_lacks_is_refused() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let clone = SpryApi::start(&scratch.path("clone.sock"), &[]);
    let overrides = json!([{"drive_id": "scratch", "path_on_host": base}]);

    let load = clone.call(
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, &overrides),
    );
    let info = clone.call("GET", "/", "").json();

    assert_eq!(load.status, 400, "{load:?}");
    assert_eq!(
        load.fault(),
        "drive_overrides: the snapshot has no drive \"scratch\""
    );
    assert_eq!(info["state"], "Not started");
}

#[test]
fn test_override_to_a_missing_file_is_refused_before_any_vcpu_runs() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let mut clone = SpryApi::start(&scratch.path("clone.sock"), &[]);
    let missing = scratch.path("missing.img");
    let overrides = json!([{"drive_id": "rootfs", "path_on_host": missing,
                            "copy_on_write": {"overlay_type": "Memory"}}]);

    let load = clone.call(
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, &overrides),
    );
    let info = clone.call("GET", "/", "").json();
    // The process is still fresh: the same snapshot loads once the override is right.
    let good = clone_override(&scratch, &base, 0);
    let retry = clone.call("PUT", "/snapshot/load", &load_body(&state, &mem, &good));
    let answer = round(&mut clone, b'z', 0);

    assert_eq!(load.status, 400, "{load:?}");
    let fault = load.fault();
    assert!(
        fault.starts_with("drive_overrides: drive \"rootfs\"")
            && fault.contains(&missing.display().to_string()),
        "{fault}"
    );
    assert_eq!(info["state"], "Not started");
    assert_eq!(retry.status, 204, "{retry:?}");
    assert_eq!(answer, ok_line(b'z', "base"));
}

/// A clone's own snapshot brings its disk back as it was at the snapshot: the
/// overlay (memory or file) is frozen beside the state file, and a load resets
/// the overlay to it, so what the clone wrote after the snapshot is gone.
#[test]
fn test_snapshot_of_a_clone_restores_its_changes_for_both_overlays() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let before = checksum(&base);
    let (state, mem) = golden_snapshot(&scratch, &base);
    for i in [0usize, 1] {
        let mut clone = SpryApi::start(&scratch.path(&format!("c{i}.sock")), &[]);
        let load = clone_override(&scratch, &base, i);
        let loaded = clone.call("PUT", "/snapshot/load", &load_body(&state, &mem, &load));
        assert_eq!(loaded.status, 204, "{loaded:?}");
        round(&mut clone, tag(i), 0);
        let (s2, m2) = (
            scratch.path(&format!("c{i}.snap")),
            scratch.path(&format!("c{i}.mem")),
        );
        snapshot(&clone, &s2, &m2);
        // Written after the snapshot: the file overlay holds it, the snapshot not.
        let resumed = clone.call("PATCH", "/vm", r#"{"state": "Resumed"}"#);
        assert_eq!(resumed.status, 204, "{resumed:?}");
        let later = round(&mut clone, b'x', 0);
        assert_eq!(later, ok_line(b'x', "other"));
        clone.terminate();

        let mut again = SpryApi::start(&scratch.path(&format!("again{i}.sock")), &[]);
        let reloaded = again.call("PUT", "/snapshot/load", &load_body(&s2, &m2, &json!([])));
        let answer = round(&mut again, tag(i), 0);

        assert_eq!(reloaded.status, 204, "{reloaded:?}\n{}", again.stderr());
        assert_eq!(answer, ok_line(tag(i), "mine"), "overlay of clone {i}");
    }
    assert_eq!(checksum(&base), before);
}

/// The probe's malformed requests (`probe.mode=hostile`: buffers in the MMIO gap
/// and past guest memory, loops, huge lengths, bad indices...) against two
/// copy-on-write drives over one base, a memory and a file overlay: each gets its
/// error, both drives keep serving, and the base is never written.
#[test]
fn test_hostile_guest_on_copy_on_write_drives_never_writes_the_base() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let before = checksum(&base);
    let mut config: Value = serde_json::from_str(&common::config(
        &common::probe_vmlinux(),
        &probe_args("probe.mode=hostile"),
        None,
        1,
        128,
    ))
    .unwrap();
    config["drives"] = json!([
        {"drive_id": "bad", "path_on_host": base, "is_root_device": true,
         "copy_on_write": {"overlay_type": "Memory"}},
        {"drive_id": "good", "path_on_host": base, "is_root_device": false,
         "copy_on_write": {"overlay_type": "File", "overlay_path": scratch.path("good.cow")}},
    ]);

    let out = common::Spry::with_config(&scratch, &config.to_string()).run();

    out.assert_probe_all_ok();
    for case in [
        "hostile blk0 huge length",
        "hostile blk0 data at 64 GiB",
        "hostile blk1 write+read",
        "hostile blk0 reinit write+read",
    ] {
        let line = out.probe_lines().into_iter().find(|l| l.contains(case));
        assert!(
            line.is_some_and(|l| l.contains(": ok")),
            "'{case}' missing or failed\n{out}"
        );
    }
    assert_eq!(checksum(&base), before, "the base image was written");
}

/// Without `copy_on_write`, an override is an ordinary drive on the named file:
/// the clone's writes land there, and the snapshot's own drive is untouched.
#[test]
fn test_override_without_copy_on_write_writes_the_named_file() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let before = checksum(&base);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let own = scratch.path("own.img");
    std::fs::copy(&base, &own).unwrap();
    let mut clone = SpryApi::start(&scratch.path("clone.sock"), &[]);
    let overrides = json!([{"drive_id": "rootfs", "path_on_host": own}]);

    let load = clone.call(
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, &overrides),
    );
    let answer = round(&mut clone, b'p', 0);
    let config = clone.call("GET", "/vm/config", "").json();

    assert_eq!(load.status, 204, "{load:?}");
    assert_eq!(answer, ok_line(b'p', "base"));
    assert_eq!(config["drives"][0]["path_on_host"], json!(own));
    assert!(
        config["drives"][0].get("copy_on_write").is_none(),
        "{config}"
    );
    let written = std::fs::read(&own).unwrap();
    let at = usize::try_from(FIRST * 512).unwrap();
    assert_eq!(
        written[at..at + 512],
        sector_pattern(FIRST + u64::from(b'p'))
    );
    assert_eq!(checksum(&base), before);
}

/// Two clones cannot share one overlay file: the second load is refused (the
/// first holds the file's lock) and that process stays fresh.
#[test]
fn test_second_clone_on_the_same_overlay_file_is_refused() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let overrides = clone_override(&scratch, &base, 1);
    let first = SpryApi::start(&scratch.path("first.sock"), &[]);
    let second = SpryApi::start(&scratch.path("second.sock"), &[]);
    let body = load_body(&state, &mem, &overrides);

    let loaded = first.call("PUT", "/snapshot/load", &body);
    let refused = second.call("PUT", "/snapshot/load", &body);
    let info = second.call("GET", "/", "").json();

    assert_eq!(loaded.status, 204, "{loaded:?}");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.fault().contains("is in use by another drive"),
        "{refused:?}"
    );
    assert_eq!(info["state"], "Not started");
}

/// `PATCH /drives` cannot swap a copy-on-write drive's base: its overlay holds
/// changes to that base only.
#[test]
fn test_patch_of_a_copy_on_write_drive_is_refused() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = golden_snapshot(&scratch, &base);
    let clone = SpryApi::start(&scratch.path("clone.sock"), &[]);
    let body = load_body(&state, &mem, &clone_override(&scratch, &base, 0));
    let loaded = clone.call("PUT", "/snapshot/load", &body);
    let patch = json!({"drive_id": "rootfs", "path_on_host": base});

    let answer = clone.call("PATCH", "/drives/rootfs", &patch.to_string());

    assert_eq!(loaded.status, 204, "{loaded:?}");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer
            .fault()
            .starts_with("drives[0].path_on_host: drive \"rootfs\" is copy-on-write"),
        "{answer:?}"
    );
}

/// A rolled-back clone's copy-on-write drive reads as at the snapshot again, both
/// for a drive the snapshot saved as copy-on-write and for one an override made
/// copy-on-write over a snapshot's ordinary drive; the base is never written.
#[test]
fn test_rollback_of_a_clone_drops_its_drive_writes() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let before = checksum(&base);
    let (cow_state, cow_mem) = golden_snapshot(&scratch, &base);
    // A golden VM whose drive is an ordinary one, on a copy of the base.
    let plain = scratch.path("plain.img");
    std::fs::copy(&base, &plain).unwrap();
    let (plain_state, plain_mem) = (scratch.path("plain.snap"), scratch.path("plain.mem"));
    let mut golden = SpryApi::start(&scratch.path("plain-golden.sock"), &[]);
    let drive = json!({"drive_id": "rootfs", "path_on_host": plain, "is_root_device": false});
    boot_blkclone(&golden, &drive, 0);
    snapshot(&golden, &plain_state, &plain_mem);
    golden.terminate();

    for (i, (state, mem)) in [(&cow_state, &cow_mem), (&plain_state, &plain_mem)]
        .into_iter()
        .enumerate()
    {
        let mut clone = SpryApi::start(&scratch.path(&format!("rb{i}.sock")), &[]);
        let body = load_body(state, mem, &clone_override(&scratch, &base, i));
        let load = clone.call("PUT", "/snapshot/load", &body);
        assert_eq!(load.status, 204, "{load:?}\n{}", clone.stderr());
        let first = round(&mut clone, tag(i), 0);
        let rollback = clone.call("PUT", "/snapshot/rollback", "{}");
        assert_eq!(rollback.status, 204, "{rollback:?}\n{}", clone.stderr());
        let again = round(&mut clone, tag(i), 1);
        clone.terminate();
        assert_eq!(first, ok_line(tag(i), "base"), "clone {i}");
        // Its own write is gone: the drive reads as the base again.
        assert_eq!(again, ok_line(tag(i), "base"), "clone {i}");
    }
    assert_eq!(checksum(&base), before, "the base image was written");
    assert_eq!(
        checksum(&plain),
        before,
        "the plain golden's drive was written"
    );
}

/// A clone whose drive an override gave a fresh overlay goes back to that fresh
/// overlay on a rollback, not to the blocks the golden VM had written (and its
/// snapshot froze) before the snapshot.
#[test]
fn test_rollback_of_an_overridden_drive_does_not_bring_back_the_golden_writes() {
    let scratch = Scratch::new();
    let base = base_image(&scratch);
    let (state, mem) = (scratch.path("golden.snap"), scratch.path("golden.mem"));
    let mut golden = SpryApi::start(&scratch.path("golden.sock"), &[]);
    let drive = json!({
        "drive_id": "rootfs", "path_on_host": base, "is_root_device": false,
        "copy_on_write": {"overlay_type": "Memory"}
    });
    boot_blkclone(&golden, &drive, 0);
    // The golden VM writes its pattern before the snapshot freezes its overlay.
    assert_eq!(round(&mut golden, b'z', 0), ok_line(b'z', "base"));
    snapshot(&golden, &state, &mem);
    golden.terminate();
    assert!(
        scratch.path("golden.snap.rootfs.cow").exists(),
        "nothing was frozen"
    );

    let mut clone = SpryApi::start(&scratch.path("clone.sock"), &[]);
    let load = clone.call(
        "PUT",
        "/snapshot/load",
        &load_body(&state, &mem, &clone_override(&scratch, &base, 0)),
    );
    assert_eq!(load.status, 204, "{load:?}\n{}", clone.stderr());
    let first = round(&mut clone, tag(0), 0);
    let rollback = clone.call("PUT", "/snapshot/rollback", "{}");
    assert_eq!(rollback.status, 204, "{rollback:?}\n{}", clone.stderr());
    let again = round(&mut clone, tag(0), 1);
    clone.terminate();
    assert_eq!(first, ok_line(tag(0), "base"));
    assert_eq!(again, ok_line(tag(0), "base"));
}
