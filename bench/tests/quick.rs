//! `spry-bench compare --quick` end to end: the report, the raw numbers and the plots
//! exist and hold sane numbers; and Ctrl-C leaves no sandbox behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two tests start sandboxes with the same names: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spry-bench"))
}

/// The spry binary spry-bench will use: the one cargo built next to it.
fn spry_bin() -> PathBuf {
    std::env::var_os("SPRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bench_bin().with_file_name("spry"))
}

/// Records a skip the way the root crate's tests do (`tools/devtool test` lists them).
fn skip(test: &str, reason: &str) {
    eprintln!("skipped {test}: {reason}");
    if let Some(path) = std::env::var_os("SPRY_SKIPPED_TESTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Why this machine cannot run the benchmark at all, if it cannot.
fn cannot_run() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("no /dev/kvm on this machine".into());
    }
    if !spry_bin().is_file() {
        return Some(format!(
            "no spry binary at {} (run `cargo test --workspace`, which builds it)",
            spry_bin().display()
        ));
    }
    None
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spry-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn numbers(values: &serde_json::Value, field: &str) -> Vec<f64> {
    values
        .as_array()
        .map(|a| a.iter().filter_map(|v| v[field].as_f64()).collect())
        .unwrap_or_default()
}

#[test]
fn test_quick_compare_writes_sane_report_json_and_plots() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = cannot_run() {
        skip(
            "test_quick_compare_writes_sane_report_json_and_plots",
            &reason,
        );
        return;
    }
    let out = out_dir("quick");
    let started = Instant::now();
    let output = Command::new(bench_bin())
        .args(["compare", "--quick", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run spry-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "spry-bench failed\n{stdout}\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert!(stdout.contains("report:  "), "{stdout}");

    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for heading in [
        "## Headline",
        "## Start time",
        "## Restart time",
        "## Memory per idle sandbox",
        "## CPU per start",
        "## Density",
        "## Image size",
        "## Peers that did not run",
        "## How it was measured",
    ] {
        assert!(
            report.contains(heading),
            "no {heading} in report.md:\n{report}"
        );
    }
    assert!(report.contains("| spry "), "no spry row:\n{report}");

    let json = read_json(&out.join("results.json"));
    let spry = &json["systems"][0];
    assert_eq!(spry["name"], "spry");
    let starts = numbers(&spry["start"], "to_running_ms");
    assert_eq!(starts.len(), 3, "{spry}");
    assert!(
        starts.iter().all(|&ms| ms > 0.0 && ms < 10_000.0),
        "start times {starts:?}"
    );
    let exits = numbers(&spry["start"], "to_exit_ms");
    assert!(
        exits.iter().zip(&starts).all(|(e, s)| e >= s),
        "exit before running: {exits:?} {starts:?}"
    );
    let restarts: Vec<f64> = spry["restart_ms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert!(
        restarts.len() == 3 && restarts.iter().all(|&ms| ms > 0.0),
        "restarts {restarts:?}"
    );
    let pss = numbers(&spry["memory"], "pss_mib");
    assert!(
        pss.len() == 3 && pss.iter().all(|&m| m > 0.1 && m < 512.0),
        "Pss {pss:?}"
    );
    let density = numbers(&spry["density"], "launch_per_s");
    assert!(
        density.len() == 1 && density[0] > 0.0,
        "density {density:?}"
    );
    let image: u64 = spry["image"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["bytes"].as_u64())
        .sum();
    assert!(image > 1000, "image {image}");

    // Every peer is either measured or listed with a reason.
    let measured: Vec<&str> = json["systems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let listed: Vec<&str> = json["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for peer in ["runc", "QEMU", "Firecracker"] {
        assert!(
            measured.contains(&peer) || listed.contains(&peer),
            "{peer} neither measured nor listed"
        );
    }
    assert!(json["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["reason"].as_str().is_some_and(|r| r.len() > 10)));

    for plot in [
        "start",
        "start-to-exit",
        "restart",
        "memory",
        "cpu",
        "density-memory",
        "density-launch",
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{plot}.svg"))).expect("svg plot");
        assert!(svg.contains("<svg") && svg.contains("spry"), "{plot}.svg");
        let png = std::fs::read(out.join(format!("{plot}.png"))).expect("png plot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
            "{plot}.png"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn test_ctrl_c_leaves_no_vmm_container_or_scratch_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = cannot_run() {
        skip(
            "test_ctrl_c_leaves_no_vmm_container_or_scratch_behind",
            &reason,
        );
        return;
    }
    let out = out_dir("interrupt");
    let mut child = Command::new(bench_bin())
        .args(["compare", "--quick", "--no-qemu", "--runs", "40", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spry-bench");
    let pid = child.id();
    let marker = format!("spry-bench-{pid}");
    // Interrupt in the memory phase, when idle sandboxes (and detached containers) live.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr: the cleanup message comes after the interrupt.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        let in_memory_phase = line.starts_with("[memory]");
        seen.push(line);
        if in_memory_phase {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("[memory]")),
        "never reached the memory phase:\n{}",
        seen.join("\n")
    );
    std::thread::sleep(Duration::from_millis(30));
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait spry-bench");
    let _ = reader.join();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(exit.code(), Some(130), "exit {exit:?}\n{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");

    assert_eq!(
        processes_with(&marker),
        Vec::<String>::new(),
        "stray processes"
    );
    assert_eq!(
        processes_with("/sbin/spry-bench-init"),
        Vec::<String>::new(),
        "stray container inits"
    );
    assert!(
        !std::env::temp_dir().join(&marker).exists(),
        "scratch directory left behind"
    );
    if let Ok(list) = Command::new("runc").args(["list", "-q"]).output() {
        let ids = String::from_utf8_lossy(&list.stdout).into_owned();
        assert!(!ids.contains(&marker), "stray containers: {ids}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs a device benchmark; `None` (with the skip recorded) where this probe or host
/// cannot.
fn device_bench(test: &str, args: &[&str]) -> Option<String> {
    if let Some(reason) = cannot_run() {
        skip(test, &reason);
        return None;
    }
    let output = Command::new(bench_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run spry-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.contains("has no probe.mode=") {
        skip(
            test,
            "the probe guest has no benchmark modes yet (resources/probe blkbench/netbench)",
        );
        return None;
    }
    assert!(
        output.status.success(),
        "spry-bench {args:?} failed\n{stdout}\n{stderr}"
    );
    Some(stdout)
}

/// The cells of `system`'s table row for `op` after the op (size, requests, runs,
/// req/s, MiB/s, then the CPU columns).
fn row_cells<'a>(table: &'a str, system: &str, op: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&system) && cells.get(2) == Some(&op))
        .map(|cells| {
            cells[3..]
                .iter()
                .copied()
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The numeric cells of `system`'s table row for `op`.
fn row_numbers(table: &str, system: &str, op: &str) -> Vec<f64> {
    table
        .lines()
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&system) && cells.get(2) == Some(&op))
        .map(|cells| cells.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

/// QEMU's rows for `ops` (and the spry/QEMU ratios) where spry-bench found QEMU and
/// it could boot the guest; else the skip is recorded with spry-bench's reason (its
/// `not compared: QEMU: ...` line, also when QEMU is not installed). QEMU's rows have
/// no event-loop cell: 6 numbers.
fn check_qemu_rows(test: &str, stdout: &str, ops: &[&str]) {
    if let Some(why) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("not compared: QEMU: "))
    {
        skip(&format!("{test} (QEMU part)"), why);
        return;
    }
    for op in ops {
        // The CPU cells are differences against a baseline run, which a loaded host
        // can push below zero: the report shows those as "–" rather than a number.
        let cells = row_cells(stdout, "QEMU", op);
        let number = |i: usize| cells.get(i).and_then(|c| c.parse::<f64>().ok());
        assert!(
            cells.len() == 8
                && number(3).is_some_and(|r| r > 10.0)
                && number(4).is_some_and(|r| r > 0.0)
                && cells[5..]
                    .iter()
                    .all(|c| *c == "–" || c.parse::<f64>().is_ok()),
            "QEMU {op}: {cells:?}\n{stdout}"
        );
    }
    assert!(
        stdout.contains("spry / peer") && stdout.contains("| QEMU | "),
        "no spry/QEMU ratios\n{stdout}"
    );
}

#[test]
fn test_block_bench_reports_rates_and_cpu_per_request() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let args = [
        "block", "--runs", "1", "--reqs", "64", "--sizes", "4K", "--ops", "read",
    ];
    let Some(stdout) = device_bench("test_block_bench_reports_rates_and_cpu_per_request", &args)
    else {
        return;
    };
    // requests, runs, req/s, MiB/s, CPU µs/req, non-vCPU µs/req, event-loop µs/req.
    let cells = row_numbers(&stdout, "spry", "read");
    assert_eq!(cells.len(), 7, "{stdout}");
    assert_eq!(cells[0], 64.0);
    assert!(
        cells[2] > 10.0 && cells[3] > 0.0,
        "rates {cells:?}\n{stdout}"
    );
    check_qemu_rows(
        "test_block_bench_reports_rates_and_cpu_per_request",
        &stdout,
        &["read"],
    );
}

#[test]
fn test_net_bench_sends_and_receives_and_removes_its_tap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        skip(
            "test_net_bench_sends_and_receives_and_removes_its_tap",
            "needs root to create tap devices and raw sockets (CAP_NET_ADMIN, CAP_NET_RAW)",
        );
        return;
    }
    let args = ["net", "--runs", "1", "--reqs", "64", "--sizes", "64"];
    let Some(stdout) = device_bench(
        "test_net_bench_sends_and_receives_and_removes_its_tap",
        &args,
    ) else {
        return;
    };
    for op in ["tx", "rx"] {
        let cells = row_numbers(&stdout, "spry", op);
        assert!(
            cells.len() == 7 && cells[2] > 10.0,
            "{op}: {cells:?}\n{stdout}"
        );
    }
    check_qemu_rows(
        "test_net_bench_sends_and_receives_and_removes_its_tap",
        &stdout,
        &["tx", "rx"],
    );
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("sbt"),
        "tap left behind"
    );
}

/// Whether this test runs as root (the jailer needs it).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn test_boot_compares_spry_with_and_without_seccomp_and_jailed_and_leaves_no_jail() {
    let test = "test_boot_compares_spry_with_and_without_seccomp_and_jailed_and_leaves_no_jail";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = cannot_run() {
        skip(test, &reason);
        return;
    }
    let jailed = running_as_root() && spry_bin().with_file_name("spry-jailer").is_file();
    if !jailed {
        skip(
            &format!("{test} (jailed part)"),
            "needs root and spry-jailer next to spry",
        );
    }
    let variants = if jailed {
        "default,no-seccomp,jailed"
    } else {
        "default,no-seccomp"
    };
    let child = Command::new(bench_bin())
        .args(["boot", "--runs", "2", "--warmup", "1", "--memory-runs", "1"])
        .args(["--variants", variants])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spry-bench");
    let marker = format!("spry-bench-{}", child.id());
    let jail_ids = format!("bench-{}-", child.id());
    let out = child.wait_with_output().expect("wait spry-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);

    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("spry --no-seccomp\n"), "{stdout}");
    assert!(
        stdout.contains("seccomp adds ") && stdout.contains("aim < 0.3 ms"),
        "{stdout}"
    );
    assert_eq!(
        stdout.contains("the jail (with seccomp) adds "),
        jailed,
        "{stdout}"
    );
    assert_eq!(processes_with(&jail_ids), Vec::<String>::new());
    assert!(
        !std::env::temp_dir().join(&marker).exists(),
        "scratch directory (and its jails) left behind"
    );
}
