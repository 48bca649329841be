//! `spry-bench exits`'s command line: what it accepts and what it refuses. Each
//! command runs with a spry that does not exist, so an accepted one stops right after
//! parsing (exit 1, spry-bench's "no spry binary" line) and boots nothing; a refused
//! one is a usage error (exit 2) naming the problem.

use std::path::PathBuf;
use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spry-bench"))
        .args(["--spry", "/nonexistent/spry-bench-exits-test/spry"])
        .args(args)
        .env_remove("FIRECRACKER")
        .output()
        .expect("spry-bench runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn accepted(args: &[&str]) {
    let (code, _, stderr) = run(args);
    assert!(
        code == Some(1) && stderr.contains("no spry binary at"),
        "`spry-bench {}` was not accepted: {code:?} {stderr}",
        args.join(" ")
    );
}

fn refused(args: &[&str], naming: &str) {
    let (code, _, stderr) = run(args);
    assert_eq!(code, Some(2), "`spry-bench {}`: {stderr}", args.join(" "));
    assert!(
        stderr.contains(naming),
        "`spry-bench {}` did not name {naming}: {stderr}",
        args.join(" ")
    );
}

#[test]
fn test_exits_accepts_its_documented_options() {
    accepted(&["exits"]);
    accepted(&["exits", "--firecracker", "../shared/peers/firecracker"]);
    accepted(&["exits", "--runs", "3", "--vcpus", "1,2,4"]);
    accepted(&[
        "exits",
        "--root",
        "initrd,drive",
        "--kernel-log",
        "full,quiet",
    ]);
    accepted(&["exits", "--mem-mib", "512", "--no-qemu", "--trace"]);
    accepted(&[
        "exits",
        "--qemu",
        "/usr/bin/qemu-system-x86_64",
        "--out",
        "/tmp/spry-bench-exits-out",
    ]);
    // --spry and --build-dir are global: they may follow the command.
    let build: PathBuf = std::env::temp_dir().join("spry-bench-exits-build");
    accepted(&[
        "exits",
        "--build-dir",
        build.to_str().unwrap(),
        "--runs",
        "1",
    ]);
}

#[test]
fn test_exits_refuses_nonsense() {
    refused(&["exits", "--runs", "0"], "--runs");
    refused(&["exits", "--vcpus", "0"], "--vcpus");
    refused(&["exits", "--vcpus", "1,x"], "--vcpus");
    refused(&["exits", "--root", "disk"], "initrd");
    refused(&["exits", "--kernel-log", "loud"], "quiet");
    refused(&["exits", "--mem-mib", "16"], "--mem-mib");
    refused(&["exits", "--quick"], "--quick");
    refused(&["exits", "--no-trace"], "--no-trace");
}

#[test]
fn test_compare_options_before_exits_are_refused() {
    refused(&["--firecracker", "/fc", "exits"], "before `exits`");
}

#[test]
fn test_exits_help_explains_the_nested_host() {
    let (code, stdout, stderr) = run(&["exits", "--help"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("nested host"), "{stdout}");
    for option in [
        "--firecracker",
        "--runs",
        "--vcpus",
        "--root",
        "--kernel-log",
    ] {
        assert!(stdout.contains(option), "no {option} in: {stdout}");
    }
}
