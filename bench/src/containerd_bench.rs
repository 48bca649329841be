//! Issue 14: "VMs versus containers" asked the way operators meet it, through
//! containerd. `ctr run --rm IMAGE ID echo hello` to its first output and to its
//! exit, then K tasks at once, with `io.containerd.runc.v2` against
//! `io.containerd.spry.v2`, alternated in one run on one private containerd.
//!
//! spry's side boots the project's Linux guest, so this needs KVM with hardware
//! virtualization: on other hosts it runs itself in the nested host, runc and
//! containerd included, so both sides run on the same emulated CPU (and the
//! report says so).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::exits::{where_to_measure, Where};
use crate::nested;
use crate::phase_output::{self, PhaseOutputError};
use crate::setup::{Env, SetupError};
use crate::stats::{summarize, Summary};
use crate::systems::version_line;

/// The runtimes compared, as containerd names them.
const RUNC: &str = "io.containerd.runc.v2";
const SPRY: &str = "io.containerd.spry.v2";
/// The image every task runs (tools/containerd/oci-image).
const IMAGE: &str = "localhost/spry-busybox:latest";

/// Errors of the containerd benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdBenchError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// This host cannot measure, nor hand the work to the nested host.
    #[error("{0}")]
    Host(String),
    /// The nested host could not run the measurement.
    #[error("the measurement in the nested host failed: {0}")]
    Nested(String),
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// The command line.
        step: String,
        /// Its exit status and output, or why it could not run.
        detail: String,
    },
    /// The results could not be written.
    #[error(transparent)]
    Output(#[from] PhaseOutputError),
}

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ctr run` per runtime after one warm-up.
    pub runs: usize,
    /// How many tasks at once, per measurement.
    pub at_once: Vec<usize>,
    /// Guest memory per spry VM, MiB.
    pub mem_mib: u32,
    /// Output directory (default <repo>/build/bench).
    pub out: Option<PathBuf>,
    /// The nested host's launcher (default <repo>/tools/nested/nested-host).
    pub nested_host: Option<PathBuf>,
}

/// One measured thing, both runtimes.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What was measured.
    pub what: String,
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
    /// Where it ran.
    pub host: String,
    /// Whether the figures are emulated (the nested host).
    pub emulated: bool,
    /// containerd, runc and spry versions.
    pub versions: Vec<String>,
    /// The snapshotter containerd used.
    pub snapshotter: String,
    /// The rows.
    pub rows: Vec<Row>,
}

/// The benchmark: here on a hardware-virtualization host, else in the nested
/// host. `args` is this process's command line (without the program).
pub fn run(
    env: &Env,
    settings: &Settings,
    args: Vec<OsString>,
) -> Result<(), ContainerdBenchError> {
    match where_to_measure(env.host.kvm, nested::outer_host().as_deref())
        .map_err(ContainerdBenchError::Host)?
    {
        Where::Nested => {
            env.ensure_guest()?;
            let launcher = settings
                .nested_host
                .clone()
                .unwrap_or_else(|| env.repo.join("tools/nested/nested-host"));
            let most = settings.at_once.iter().copied().max().unwrap_or(1);
            let vm_mib = u32::try_from(most)
                .unwrap_or(u32::MAX)
                .saturating_mul(settings.mem_mib + 32);
            nested::rerun(
                env,
                nested::Rerun {
                    launcher: &launcher,
                    mem_mib: (4096 + vm_mib).min(16384),
                    timeout_s: 1800
                        + 60 * settings.runs
                        + 30 * settings.at_once.iter().sum::<usize>(),
                    args,
                    what: "containerd",
                },
            )
            .map_err(ContainerdBenchError::Nested)
        }
        Where::Here => {
            let report = measure(env, settings)?;
            let out = settings
                .out
                .clone()
                .unwrap_or_else(|| env.build.join("bench"));
            phase_output::write_phase(&out, "containerd", &render(&report), &report)?;
            Ok(())
        }
    }
}

fn step_error(cmd: &Command, detail: String) -> ContainerdBenchError {
    ContainerdBenchError::Step {
        step: format!("{cmd:?}"),
        detail,
    }
}

/// Runs `cmd` to its end; its stdout, or an error with its output.
fn checked(mut cmd: Command) -> Result<String, ContainerdBenchError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| step_error(&cmd, e.to_string()))?;
    if !out.status.success() {
        return Err(step_error(
            &cmd,
            format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private containerd (tools/containerd/containerd-env), stopped on drop.
struct Daemon {
    env_tool: PathBuf,
    dir: PathBuf,
    namespace: String,
    snapshotter: String,
}

impl Daemon {
    fn start(env: &Env, shim_config: &Path) -> Result<Daemon, ContainerdBenchError> {
        let env_tool = env.repo.join("tools/containerd/containerd-env");
        // /run: a tmpfs here and in the nested host's L1 (whose /tmp is this
        // host's, shared over virtiofs), where overlayfs works and paths stay
        // short.
        let dir = PathBuf::from(format!("/run/spry-bench-ctrd-{}", std::process::id()));
        let shim_dir = env.spry.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cmd = Command::new(&env_tool);
        cmd.arg("start")
            .arg(&dir)
            .env("SPRY_SHIM_CONFIG", shim_config)
            .env("SPRY_SHIM_DIR", shim_dir);
        let printed = checked(cmd)?;
        let value = |key: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        Ok(Daemon {
            namespace: value("namespace"),
            snapshotter: value("snapshotter"),
            env_tool,
            dir,
        })
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.env("CONTAINERD_SNAPSHOTTER", &self.snapshotter)
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    fn run_cmd(&self, runtime: &str, id: &str, args: &[&str]) -> Command {
        let mut cmd = self.ctr();
        cmd.args(["run", "--rm", "--runtime", runtime, IMAGE, id])
            .args(args);
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new(&self.env_tool)
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// `ctr run` to the first byte of output and to its exit, ms.
fn first_output_and_exit(
    daemon: &Daemon,
    runtime: &str,
    id: &str,
) -> Result<(f64, f64), ContainerdBenchError> {
    let mut cmd = daemon.run_cmd(runtime, id, &["echo", "hello"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| step_error(&cmd, e.to_string()))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| step_error(&cmd, "no stdout".into()))?;
    let mut first = [0u8; 1];
    let got = stdout.read(&mut first).unwrap_or(0);
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let out = child
        .wait_with_output()
        .map_err(|e| step_error(&cmd, e.to_string()))?;
    let exit_ms = t.elapsed().as_secs_f64() * 1e3;
    if got != 1 || first[0] != b'h' || !out.status.success() {
        return Err(step_error(
            &cmd,
            format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok((first_ms, exit_ms))
}

/// `n` tasks started together: ms until the last has exited, and the errors
/// of those that failed. In the nested host an emulated guest now and then
/// triple-faults (QEMU TCG, not spry: the Linux tests rerun such boots), so
/// there failures are counted and reported rather than ending the run.
fn at_once(
    daemon: &Daemon,
    runtime: &str,
    tag: &str,
    n: usize,
    emulated: bool,
) -> Result<(f64, Vec<String>), ContainerdBenchError> {
    let t = Instant::now();
    let results: Vec<Result<String, ContainerdBenchError>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || checked(daemon.run_cmd(runtime, &format!("{tag}-{i}"), &["true"])))
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join().unwrap_or_else(|_| {
                    Err(ContainerdBenchError::Host(
                        "a task's thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(_) => {}
            Err(e) if emulated => failed.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok((ms, failed))
}

/// Measures both runtimes, alternating them run by run.
pub fn measure(env: &Env, settings: &Settings) -> Result<Report, ContainerdBenchError> {
    env.ensure_guest()?;
    let emulated = nested::outer_host().is_some();
    let scratch = env.scratch_dir("containerd")?;
    let shim_config = scratch.join("shim.json");
    let guest = env.build.join("guest");
    let config = serde_json::json!({
        "spry": env.spry,
        "kernel": guest.join("vmlinux"),
        "initramfs": guest.join("initramfs.cpio"),
        "mem_mib": settings.mem_mib,
        "boot_timeout_s": if emulated { 1800 } else { 60 },
        "image_cache": scratch.join("images"),
        // Jailed, as by default; on /run, a tmpfs here and in the nested host
        // (whose /tmp is virtiofs, where the jail's device nodes cannot be made).
        "jailer": { "chroot_base": format!("/run/spry-bench-jails-{}", std::process::id()) },
    });
    std::fs::write(&shim_config, config.to_string()).map_err(|e| {
        ContainerdBenchError::Host(format!("cannot write {}: {e}", shim_config.display()))
    })?;
    let image = scratch.join("image.tar");
    let mut build = Command::new(env.repo.join("tools/containerd/oci-image"));
    build.arg(&image).arg(IMAGE);
    checked(build)?;
    let daemon = Daemon::start(env, &shim_config)?;
    let mut import = daemon.ctr();
    import.arg("image").arg("import").arg(&image);
    checked(import)?;

    let mut rows = Vec::new();
    let (mut first, mut exit) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for run in 0..=settings.runs {
        for (side, runtime) in [RUNC, SPRY].iter().enumerate() {
            let (f, e) = first_output_and_exit(&daemon, runtime, &format!("r{run}-{side}"))?;
            eprintln!(
                "spry-bench containerd: run {run}/{}: {runtime}: first output {f:.0} ms, exit {e:.0} ms",
                settings.runs
            );
            if run > 0 {
                first[side].push(f);
                exit[side].push(e);
            }
        }
    }
    rows.push(Row {
        what: "`ctr run --rm IMAGE ID echo hello` → first output".into(),
        runc: summarize(&first[0]),
        spry: summarize(&first[1]),
    });
    rows.push(Row {
        what: "`ctr run --rm IMAGE ID echo hello` → exit".into(),
        runc: summarize(&exit[0]),
        spry: summarize(&exit[1]),
    });
    for &n in &settings.at_once {
        let mut ms = [0.0f64; 2];
        let mut failures = Vec::new();
        for (side, runtime) in [RUNC, SPRY].iter().enumerate() {
            let (took, failed) = at_once(&daemon, runtime, &format!("k{n}-{side}"), n, emulated)?;
            ms[side] = took;
            eprintln!(
                "spry-bench containerd: {n} at once: {runtime}: {took:.0} ms, {} failed",
                failed.len()
            );
            for why in &failed {
                eprintln!("spry-bench containerd: {runtime}: {why}");
            }
            if !failed.is_empty() {
                failures.push(format!("{} of {n} {runtime} tasks failed", failed.len()));
            }
        }
        let what = format!("{n} × `ctr run --rm IMAGE ID true` at once → last exit");
        rows.push(Row {
            what: if failures.is_empty() {
                what
            } else {
                format!("{what} ({}: emulator faults)", failures.join(", "))
            },
            runc: summarize(&ms[..1]),
            spry: summarize(&ms[1..]),
        });
    }
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
        versions: vec![
            version_line(Path::new("containerd")),
            version_line(Path::new("runc")),
            version_line(&env.spry),
        ],
        snapshotter: daemon.snapshotter.clone(),
        rows,
    })
}

fn cell(summary: Option<Summary>) -> String {
    summary.map_or_else(
        || "–".to_owned(),
        |s| {
            if s.n == 1 {
                format!("{:.0}", s.median)
            } else {
                format!(
                    "{:.0} (p90 {:.0}, {:.0}–{:.0})",
                    s.median, s.p90, s.min, s.max
                )
            }
        },
    )
}

/// The report as Markdown.
pub fn render(report: &Report) -> String {
    let mut text = String::from("## containerd: runc against spry, through `ctr`\n\n");
    let _ = writeln!(text, "Host: {}.", report.host);
    if report.emulated {
        text.push_str(
            "\nEmulated: containerd, runc and spry all ran in the nested host, where QEMU's \
             TCG emulates every instruction of L1 (and of spry's guests); the figures say how \
             the two runtimes compare on one slow CPU, not what either costs on hardware.\n",
        );
    }
    let _ = writeln!(
        text,
        "\nVersions: {}. Snapshotter: {}. spry's root file system: the snapshot copied into \
         an ext4 image per task (`mkfs.ext4 -d`).\n",
        report.versions.join("; "),
        report.snapshotter
    );
    text.push_str("| what | runc, ms | spry, ms | spry / runc |\n|---|---|---|---|\n");
    for row in &report.rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} |",
            row.what,
            cell(row.runc),
            cell(row.spry),
            row.ratio().map_or("–".into(), |r| format!("{r:.2}x"))
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
            versions: vec!["containerd 1.6".into()],
            snapshotter: "overlayfs".into(),
            rows: vec![Row {
                what: "exit".into(),
                runc: summary(100.0),
                spry: summary(250.0),
            }],
        };
        let text = render(&report);
        assert!(text.contains("Emulated"), "{text}");
        assert!(text.contains("| exit | 100 | 250 | 2.50x |"), "{text}");
    }
}
