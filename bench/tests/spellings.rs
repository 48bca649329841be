//! Every way the docs tell people to run the benchmarks parses: the command lines in
//! README.md, bench/README.md, `tools/devtool help`, `tools/bench`'s header and
//! spry-bench's `--help`. Each runs spry-bench the way `tools/bench` does (`--spry
//! PATH` first, then the user's arguments) with a spry that does not exist, so it
//! stops right after parsing: exit 1 with spry-bench's own "no spry binary" line
//! means the arguments were accepted; a usage error exits 2.

use std::path::PathBuf;
use std::process::Command;

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spry-bench"))
}

/// What `tools/bench` adds in front of the user's arguments, with a spry that is
/// not there.
const TOOLS_BENCH_PREFIX: &[&str] = &["--spry", "/nonexistent/spry-bench-test/spry"];

/// The argument lists the docs show, after `tools/bench`, `tools/devtool bench` or
/// `spry-bench`, with placeholders filled in.
const DOCUMENTED: &[&[&str]] = &[
    // README.md "Measured", tools/devtool help, tools/bench, bench/README.md.
    &[],
    // tools/devtool help ("without args spry vs ... (vs --firecracker PATH)").
    &["--firecracker", "/path/to/firecracker"],
    // What people type after reading the line above; the quick comparison.
    &["--quick"],
    // tools/devtool help, tools/bench, bench/README.md.
    &["compare", "--quick"],
    &["compare", "--firecracker", "/path/to/firecracker"],
    &["compare", "--qemu", "/usr/bin/qemu-system-x86_64"],
    // bench/README.md, compare's flags.
    &["compare", "--density", "10,50,100"],
    &["compare", "--out", "/tmp/spry-bench-out"],
    &["compare", "--no-qemu"],
    &["compare", "--runs", "20", "--warmup", "3"],
    // README.md "Measured", tools/devtool help, tools/bench, bench/README.md.
    &["boot"],
    &["boot", "--runs", "20"],
    // README.md "Security", bench/README.md, tools/bench (issue 11).
    &["boot", "--runs", "30"],
    &["boot", "--variants", "default,no-seccomp,jailed"],
    &[
        "block",
        "--systems",
        "spry,spry-no-seccomp,qemu",
        "--sizes",
        "4K",
    ],
    &[
        "block",
        "--systems",
        "spry,spry-no-seccomp,qemu",
        "--sizes",
        "4K",
        "--runs",
        "7",
        "--reqs",
        "5000",
    ],
    &[
        "net",
        "--systems",
        "spry,spry-no-seccomp,qemu",
        "--sizes",
        "64",
        "--runs",
        "7",
        "--reqs",
        "5000",
    ],
    // README.md "Measured" (`bench block` and `bench net`), tools/devtool help.
    &["block"],
    &["net"],
    // tools/bench, bench/README.md.
    &[
        "block",
        "--sizes",
        "4K,64K,1M",
        "--reqs",
        "1000",
        "--runs",
        "5",
        "--systems",
        "spry,qemu",
        "--qemu",
        "/usr/bin/qemu-system-x86_64",
        "--qemu-vhost",
    ],
    &["net", "--sizes", "64,1514,65535", "--qemu-vhost"],
    // bench/README.md "Latest device benchmark".
    &["block", "--runs", "7", "--reqs", "5000"],
    &["net", "--runs", "7", "--reqs", "5000"],
    // bench/README.md, device flags.
    &["block", "--ops", "read,write", "--guest", "probe"],
    &["net", "--ops", "tx,rx", "--guest", "linux"],
    &["block", "--guest", "linux", "--qemu-accel", "tcg"],
    // bench/README.md, the exits command.
    &["exits"],
    &[
        "exits",
        "--firecracker",
        "/path/to/firecracker",
        "--runs",
        "5",
    ],
    &[
        "exits",
        "--vcpus",
        "1,2",
        "--kernel-log",
        "full,quiet",
        "--root",
        "initrd,drive",
    ],
    // bench/README.md "Latest VM exits of a Linux boot".
    &[
        "exits",
        "--firecracker",
        "../shared/peers/firecracker",
        "--vcpus",
        "1,2",
        "--kernel-log",
        "full,quiet",
        "--runs",
        "5",
    ],
    &["exits", "--kernel-log", "quiet"],
    // tools/bench, bench/README.md, README.md "Clones", tools/devtool help.
    &["clones"],
    &[
        "clones",
        "--fleets",
        "10,50,100",
        "--working-set-mib",
        "32",
        "--use",
        "read",
        "--no-runc",
    ],
];

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bench_bin())
        .args(TOOLS_BENCH_PREFIX)
        .args(args)
        .output()
        .expect("spry-bench runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn test_every_documented_spelling_parses() {
    let refused: Vec<String> = DOCUMENTED
        .iter()
        .filter_map(|args| {
            let (code, stderr) = run(args);
            let parsed = code == Some(1) && stderr.contains("no spry binary at");
            (!parsed).then(|| format!("`spry-bench {}`: {code:?} {stderr}", args.join(" ")))
        })
        .collect();
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

#[test]
fn test_a_misspelling_is_a_usage_error() {
    let (code, stderr) = run(&["--quik"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--quick"), "{stderr}");
}

#[test]
fn test_compare_options_before_another_command_are_a_usage_error() {
    let (code, stderr) = run(&["--quick", "boot"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("before `boot`"), "{stderr}");
}

#[test]
fn test_help_names_the_top_level_compare_options() {
    let out = Command::new(bench_bin())
        .arg("--help")
        .output()
        .expect("spry-bench runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{help}");
    assert!(
        help.contains("Options of compare (the default command)") && help.contains("--quick"),
        "{help}"
    );
}
