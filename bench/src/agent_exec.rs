//! Issue 12: what container users know, asked of a VM. `spry exec -- true` (a round
//! trip through vsock and the guest agent) and 100 MiB copied in (`spry cp`, and the
//! same bytes piped through `spry exec -- sh -c 'cat > FILE'`), against `runc exec`
//! into a runc container of the same run (the pipe form; runc has no `cp`).
//!
//! The guest is the project's Linux guest with its agent, so this needs KVM with
//! hardware virtualization: on other hosts it runs itself in the nested host, runc
//! included, so that both sides run on the same emulated CPU.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::child::{ChildError, Measured};
use crate::cleanup;
use crate::exits::{where_to_measure, Where};
use crate::nested;
use crate::phase_output::{self, PhaseOutputError};
use crate::setup::{Env, SetupError};
use crate::stats::{summarize, Summary};
use crate::systems::runc::{build_bundle, runc_path};
use crate::systems::{version_line, SystemError};

/// The guest's kernel command line: quiet, init idles, the agent starts because the
/// VM has a vsock device.
const GUEST_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet i8042.noaux \
                          i8042.nomux i8042.nopnp i8042.dumbkbd spry.mode=run \
                          spry.cmd=sleep+1000000";

/// The console line of an agent ready for `spry exec`.
const AGENT_READY: &str = "spry-agent: listening on vsock port 52";

/// The container's init: say so, then idle.
const CONTAINER_INIT: &str = "echo spry-bench: running; exec sleep 1000000";

/// A Linux boot in the nested host takes 20-60 s; this long means it is stuck.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// One exec or copy in the nested host takes seconds; this long means it is stuck
/// (it is killed and the benchmark fails).
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors of the exec benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ExecBenchError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// This host cannot measure, nor hand the work to the nested host.
    #[error("{0}")]
    Host(String),
    /// The nested host could not run the measurement.
    #[error("the measurement in the nested host failed: {0}")]
    Nested(String),
    /// The container could not be made or started.
    #[error(transparent)]
    Container(#[from] SystemError),
    /// spry could not be started or its guest did not come up.
    #[error("spry: {0}")]
    Spry(#[from] ChildError),
    /// A measured step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// The command line.
        step: String,
        /// Its exit status and output, or why it could not run.
        detail: String,
    },
    /// A step failed while spry ran: with the tail of its console and log.
    #[error("{source}\nspry's console and log, last lines:\n{console}")]
    WithConsole {
        /// What failed.
        source: Box<ExecBenchError>,
        /// The tail of spry's output.
        console: String,
    },
    /// The results could not be written.
    #[error(transparent)]
    Output(#[from] PhaseOutputError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `exec true` round trips per system after one warm-up.
    pub runs: usize,
    /// Copies per system and way.
    pub copy_runs: usize,
    /// The copied file's size, MiB.
    pub copy_mib: u32,
    /// Output directory (default <repo>/build/bench).
    pub out: Option<PathBuf>,
    /// The nested host's launcher (default <repo>/tools/nested/nested-host).
    pub nested_host: Option<PathBuf>,
}

/// One measured operation, both systems.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What was done.
    pub what: String,
    /// The runc command measured.
    pub runc_command: String,
    /// The spry command measured.
    pub spry_command: String,
    /// runc's samples, ms.
    pub runc: Option<Summary>,
    /// spry's samples, ms.
    pub spry: Option<Summary>,
}

impl Row {
    /// spry's median over runc's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.spry?.median / self.runc?.median)
    }
}

/// The benchmark's result.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Where it ran: this host, or the nested host on which machine.
    pub host: String,
    /// Whether the figures are emulated (the nested host).
    pub emulated: bool,
    /// The runc and spry versions.
    pub versions: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

/// The exec benchmark: here on a hardware-virtualization host, else in the nested
/// host. `args` is this process's command line (without the program).
pub fn run(env: &Env, settings: &Settings, args: Vec<OsString>) -> Result<(), ExecBenchError> {
    match where_to_measure(env.host.kvm, nested::outer_host().as_deref())
        .map_err(ExecBenchError::Host)?
    {
        Where::Nested => {
            // Built here, where it is fast: L1 sees the same build directory.
            env.ensure_guest()?;
            let launcher = settings
                .nested_host
                .clone()
                .unwrap_or_else(|| env.repo.join("tools/nested/nested-host"));
            let copies = 4 * (settings.copy_runs + 1);
            nested::rerun(
                env,
                nested::Rerun {
                    launcher: &launcher,
                    mem_mib: 3072,
                    timeout_s: 1200 + 10 * settings.runs + 120 * copies,
                    args,
                    what: "exec",
                },
            )
            .map_err(ExecBenchError::Nested)
        }
        Where::Here => {
            let report = measure(env, settings)?;
            let out = settings
                .out
                .clone()
                .unwrap_or_else(|| env.build.join("bench"));
            phase_output::write_phase(&out, "exec", &render(&report), &report)?;
            Ok(())
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ExecBenchError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ExecBenchError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(path, bytes).map_err(|source| ExecBenchError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A command measured from spawn to exit; fails unless it exits 0.
fn timed(mut cmd: Command, stdin: Option<&Path>) -> Result<(f64, Vec<u8>), ExecBenchError> {
    let step = format!("{cmd:?}");
    let fail = |detail: String| ExecBenchError::Step {
        step: step.clone(),
        detail,
    };
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?,
        ),
        None => Stdio::null(),
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let (done, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = watched.recv_timeout(STEP_TIMEOUT) {
            // SAFETY: kill has no memory effects; `pid` is our child, not yet
            // reaped (the waiting thread reaps it only once it has exited).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out.map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok((ms, out.stdout))
}

/// The two sandboxes under test and how to run a command in each.
struct Sides {
    runc: PathBuf,
    container: String,
    spry: PathBuf,
    vsock: PathBuf,
}

impl Sides {
    fn runc_exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("exec").arg(&self.container).args(args);
        cmd
    }

    fn spry_exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.spry);
        cmd.arg("exec")
            .arg("--vsock-uds")
            .arg(&self.vsock)
            .arg("--")
            .args(args);
        cmd
    }

    fn spry_cp(&self, src: &Path, dst: &str) -> Command {
        let mut cmd = Command::new(&self.spry);
        cmd.arg("cp")
            .arg("--vsock-uds")
            .arg(&self.vsock)
            .arg(src)
            .arg(dst);
        cmd
    }
}

/// The sha256 of `path`'s contents, as `sha256sum` prints it.
fn sha256_of(path: &Path) -> Result<String, ExecBenchError> {
    let (_, out) = timed(
        {
            let mut c = Command::new("sha256sum");
            c.arg(path);
            c
        },
        None,
    )?;
    first_word(&out)
}

fn first_word(out: &[u8]) -> Result<String, ExecBenchError> {
    String::from_utf8_lossy(out)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| ExecBenchError::Step {
            step: "sha256sum".into(),
            detail: "printed nothing".into(),
        })
}

/// Checks that `sum` (a `sha256sum` output from inside a sandbox) is `want`.
fn check_sum(who: &str, out: &[u8], want: &str) -> Result<(), ExecBenchError> {
    let got = first_word(out)?;
    if got == want {
        Ok(())
    } else {
        Err(ExecBenchError::Step {
            step: format!("{who}: the copied file's sha256"),
            detail: format!("{got}, not the source's {want}"),
        })
    }
}

/// Makes the runc container idle with a tmpfs /tmp (as the guest's).
fn start_container(env: &Env, runc: &Path) -> Result<String, ExecBenchError> {
    let dir = env.scratch_dir("exec-runc")?;
    let bundle = build_bundle(runc, &env.build.join("guest/initramfs.cpio"), &dir)?;
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|source| ExecBenchError::Write {
        path: config.clone(),
        source,
    })?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExecBenchError::Step {
            step: format!("read {}", config.display()),
            detail: e.to_string(),
        })?;
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", CONTAINER_INIT]);
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"]
        }));
    }
    write(&config, spec.to_string().as_bytes())?;
    let id = format!("spry-bench-exec-{}", std::process::id());
    // The detached container keeps runc's stdio: a pipe here would never close.
    let log = dir.join("runc.log");
    let stderr = std::fs::File::create(&log).map_err(|source| ExecBenchError::Write {
        path: log.clone(),
        source,
    })?;
    let mut cmd = Command::new(runc);
    cmd.args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let status = cleanup::creating(|| {
        cleanup::add_container(&id);
        cmd.status()
    })
    .map_err(|e| ExecBenchError::Step {
        step: "runc run --detach".into(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        return Err(ExecBenchError::Step {
            step: format!("runc run --detach {id}"),
            detail: std::fs::read_to_string(&log)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        });
    }
    Ok(id)
}

/// Boots the Linux guest with a vsock device and waits for its agent.
fn start_spry(env: &Env) -> Result<(Measured, PathBuf), ExecBenchError> {
    let dir = env.scratch_dir("exec-spry")?;
    let vsock = dir.join("v.sock");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": env.build.join("guest/vmlinux"),
            "initrd_path": env.build.join("guest/initramfs.cpio"),
            "boot_args": GUEST_ARGS,
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 512 },
        "vsock": { "guest_cid": 3, "uds_path": vsock },
    });
    let path = dir.join("vm.json");
    write(&path, config.to_string().as_bytes())?;
    let mut cmd = Command::new(&env.spry);
    cmd.arg("--config-file").arg(&path);
    let mut spry = Measured::spawn(cmd, false)?;
    spry.wait_for("the agent's ready line", BOOT_TIMEOUT, |l| {
        l.text.contains(AGENT_READY).then_some(())
    })?;
    Ok((spry, vsock))
}

/// Measures both systems, alternating them run by run.
pub fn measure(env: &Env, settings: &Settings) -> Result<Report, ExecBenchError> {
    env.ensure_guest()?;
    // In the nested host runc finds cgroup2 mounted by L1's init.
    let emulated = nested::outer_host().is_some();
    let runc = runc_path();
    let container = start_container(env, &runc)?;
    let (mut spry, vsock) = start_spry(env)?;
    let sides = Sides {
        runc: runc.clone(),
        container: container.clone(),
        spry: env.spry.clone(),
        vsock,
    };
    let result = measure_sides(env, settings, &sides).map_err(|e| {
        spry.drain();
        ExecBenchError::WithConsole {
            source: Box::new(e),
            console: spry.tail(),
        }
    });
    spry.kill();
    cleanup::delete_container(&runc, &container);
    let rows = result?;
    let host = match nested::outer_host() {
        Some(outer) => format!(
            "the nested host (L1: {} CPUs, kvm_amd under QEMU TCG) on {outer}",
            env.host.cpus
        ),
        None => format!(
            "{} ({} CPUs, Linux {}, /dev/kvm: {})",
            env.host.cpu,
            env.host.cpus,
            env.host.kernel,
            env.host.kvm.describe()
        ),
    };
    Ok(Report {
        host,
        emulated,
        versions: vec![version_line(&runc), version_line(&env.spry)],
        rows,
    })
}

fn measure_sides(
    env: &Env,
    settings: &Settings,
    sides: &Sides,
) -> Result<Vec<Row>, ExecBenchError> {
    let mut rows = Vec::new();

    let (mut runc, mut spry) = (Vec::new(), Vec::new());
    for run in 0..=settings.runs {
        let (r, _) = timed(sides.runc_exec(&["/bin/true"]), None)?;
        let (s, _) = timed(sides.spry_exec(&["true"]), None)?;
        if run > 0 {
            runc.push(r);
            spry.push(s);
        }
        eprintln!(
            "spry-bench exec: true {run}/{}: runc {r:.1} ms, spry {s:.1} ms",
            settings.runs
        );
    }
    rows.push(Row {
        what: "exec `true` (round trip)".into(),
        runc_command: "runc exec ID /bin/true".into(),
        spry_command: "spry exec --vsock-uds PATH -- true".into(),
        runc: summarize(&runc),
        spry: summarize(&spry),
    });

    let blob = env.scratch_dir("exec-data")?.join("blob");
    write_blob(&blob, settings.copy_mib)?;
    let want = sha256_of(&blob)?;
    let (mut runc, mut spry_pipe, mut spry_cp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=settings.copy_runs {
        let (r, _) = timed(
            sides.runc_exec(&["sh", "-c", "cat > /tmp/blob"]),
            Some(&blob),
        )?;
        let (_, sum) = timed(sides.runc_exec(&["sha256sum", "/tmp/blob"]), None)?;
        check_sum("runc", &sum, &want)?;
        timed(sides.runc_exec(&["rm", "/tmp/blob"]), None)?;

        let (p, _) = timed(
            sides.spry_exec(&["sh", "-c", "cat > /tmp/blob"]),
            Some(&blob),
        )?;
        let (_, sum) = timed(sides.spry_exec(&["sha256sum", "/tmp/blob"]), None)?;
        check_sum("spry exec", &sum, &want)?;
        timed(sides.spry_exec(&["rm", "/tmp/blob"]), None)?;

        let (c, _) = timed(sides.spry_cp(&blob, ":/tmp/blob"), None)?;
        let (_, sum) = timed(sides.spry_exec(&["sha256sum", "/tmp/blob"]), None)?;
        check_sum("spry cp", &sum, &want)?;
        timed(sides.spry_exec(&["rm", "/tmp/blob"]), None)?;

        if run > 0 {
            runc.push(r);
            spry_pipe.push(p);
            spry_cp.push(c);
        }
        eprintln!(
            "spry-bench exec: {} MiB in {run}/{}: runc exec {r:.0} ms, spry exec {p:.0} ms, \
             spry cp {c:.0} ms",
            settings.copy_mib, settings.copy_runs
        );
    }
    let runc_cmd = "runc exec ID sh -c 'cat > /tmp/blob' < FILE".to_owned();
    rows.push(Row {
        what: format!("{} MiB in through a pipe", settings.copy_mib),
        runc_command: runc_cmd.clone(),
        spry_command: "spry exec --vsock-uds PATH -- sh -c 'cat > /tmp/blob' < FILE".into(),
        runc: summarize(&runc),
        spry: summarize(&spry_pipe),
    });
    rows.push(Row {
        what: format!("{} MiB in as a file", settings.copy_mib),
        runc_command: runc_cmd,
        spry_command: "spry cp --vsock-uds PATH FILE :/tmp/blob".into(),
        runc: summarize(&runc),
        spry: summarize(&spry_cp),
    });
    Ok(rows)
}

/// `mib` MiB that do not compress, the same in every run.
fn write_blob(path: &Path, mib: u32) -> Result<(), ExecBenchError> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let len = usize::try_from(mib).unwrap_or(0) << 20;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        // xorshift64: cheap bytes with no pattern a transport could exploit.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    write(path, &data)
}

fn cell(summary: Option<Summary>) -> String {
    summary.map_or_else(
        || "–".to_owned(),
        |s| {
            format!(
                "{:.1} (p90 {:.1}, {:.1}–{:.1})",
                s.median, s.p90, s.min, s.max
            )
        },
    )
}

/// The report as Markdown.
pub fn render(report: &Report) -> String {
    let mut text = String::from("## spry exec / spry cp against runc exec\n\n");
    let _ = writeln!(text, "Host: {}.", report.host);
    if report.emulated {
        text.push_str(
            "\nEmulated: both runc and spry ran in the nested host, where QEMU's TCG \
             emulates every instruction of L1 (and so of spry's guest); the figures say how \
             the two compare on one slow CPU, not what either costs on hardware.\n",
        );
    }
    let _ = writeln!(text, "\nVersions: {}.\n", report.versions.join("; "));
    text.push_str("| what | runc, ms | spry, ms | spry / runc |\n|---|---|---|---|\n");
    for row in &report.rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} |",
            row.what,
            cell(row.runc),
            cell(row.spry),
            row.ratio()
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x"))
        );
    }
    text.push_str("\nCommands (medians of alternated runs after one warm-up; p90, min–max):\n\n");
    for row in &report.rows {
        let _ = writeln!(
            text,
            "- {}: `{}` against `{}`",
            row.what, row.spry_command, row.runc_command
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64) -> Option<Summary> {
        summarize(&[median])
    }

    #[test]
    fn test_report_gives_ratios_and_says_when_emulated() {
        let report = Report {
            host: "L1".into(),
            emulated: true,
            versions: vec!["runc 1".into(), "spry 2".into()],
            rows: vec![Row {
                what: "exec `true` (round trip)".into(),
                runc_command: "runc exec".into(),
                spry_command: "spry exec".into(),
                runc: summary(10.0),
                spry: summary(25.0),
            }],
        };
        let text = render(&report);
        assert!(text.contains("| 2.50x |"), "{text}");
        assert!(text.contains("Emulated"), "{text}");
    }

    #[test]
    fn test_blob_has_the_size_asked_and_is_reproducible() {
        let dir = std::env::temp_dir().join(format!("exec-blob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_blob(&dir.join("a"), 1).unwrap();
        write_blob(&dir.join("b"), 1).unwrap();
        let (a, b) = (
            std::fs::read(dir.join("a")).unwrap(),
            std::fs::read(dir.join("b")).unwrap(),
        );
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
