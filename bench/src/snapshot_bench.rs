//! Issue 10's snapshot benchmark: snapshot create time and file sizes (Full and
//! Diff), and restore time (load request → answered with the VM running again, →
//! the guest's next console line, and process start → that line) for guests of
//! several sizes, against the same VMM's cold boot, for spry and Firecracker in one
//! run, alternated. The guest is the counting probe (`probe: count <n>` every 2 ms),
//! so "running again" is seen on the console.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::api_client::{self, ApiClientError};
use crate::child::{ChildError, Measured};
use crate::clock::{monotonic_us, ms_between};
use crate::guest::Guest;
use crate::phase_output::{self, PhaseOutputError};
use crate::progress::Progress;
use crate::setup::{Env, SetupError};
use crate::stats::{summarize, Summary};
use crate::systems::vm::{vm_config, Vmm};

/// The probe's command line: quiet, counting every 2 ms.
const BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off probe.quiet=1 probe.mode=count probe.count_ms=2";

/// A boot, a load or an API call this long means the VMM is stuck.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the snapshot benchmark.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotBenchError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A VMM could not be started or its guest did not count.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// An API call failed to complete.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The VMM refused an API call.
    #[error("{vmm}: {call} answered {status}: {body}")]
    Refused {
        /// Which VMM.
        vmm: String,
        /// The call.
        call: String,
        /// Its status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The results could not be written.
    #[error(transparent)]
    Output(#[from] PhaseOutputError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Restores and cold boots per VMM and guest size, after one warm-up each.
    pub runs: usize,
    /// Guest sizes, MiB.
    pub mem_mib: Vec<u32>,
    /// Firecracker, if it is to be compared.
    pub firecracker: Option<PathBuf>,
    /// Output directory (default <repo>/build/bench).
    pub out: Option<PathBuf>,
}

/// One VMM's figures for one guest size.
#[derive(Debug, Serialize)]
pub struct Case {
    /// The VMM.
    pub vmm: String,
    /// Guest RAM, MiB.
    pub mem_mib: u32,
    /// `PUT /snapshot/create` of a Full snapshot, ms.
    pub create_full_ms: f64,
    /// `PUT /snapshot/create` of a Diff snapshot (a few counts later), ms.
    pub create_diff_ms: Option<f64>,
    /// The state file, bytes.
    pub state_bytes: u64,
    /// The Full memory file: (length, bytes on disk).
    pub full_mem_bytes: (u64, u64),
    /// The Diff memory file: (length, bytes on disk).
    pub diff_mem_bytes: Option<(u64, u64)>,
    /// `PUT /snapshot/load` (resume_vm) until answered, ms.
    pub load: Option<Summary>,
    /// Load request → the guest's next console line, ms.
    pub load_to_console: Option<Summary>,
    /// Process start → the restored guest's next console line, ms.
    pub start_to_console: Option<Summary>,
    /// Cold boot: process start → the guest's first count, ms.
    pub cold_start_to_console: Option<Summary>,
    /// Why a part is missing.
    pub notes: Vec<String>,
}

/// A VMM under test.
#[derive(Debug, Clone)]
struct Engine {
    vmm: Vmm,
    binary: PathBuf,
}

impl Engine {
    fn name(&self) -> &'static str {
        match self.vmm {
            Vmm::Spry => "spry",
            Vmm::Firecracker => "Firecracker",
        }
    }

    /// The VMM serving its API on `socket`, booting `config` if given.
    fn command(&self, socket: &Path, config: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--api-sock").arg(socket);
        if let Some(config) = config {
            cmd.arg("--config-file").arg(config);
        }
        if self.vmm == Vmm::Firecracker {
            // Its log goes to stdout with the console; only errors, as spry's default.
            cmd.args(["--level", "Error"]);
        }
        cmd
    }

    fn call(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(), SnapshotBenchError> {
        let (status, answer) = api_client::call(socket, method, path, body)?;
        if status / 100 == 2 {
            Ok(())
        } else {
            Err(SnapshotBenchError::Refused {
                vmm: self.name().into(),
                call: format!("{method} {path} {body}"),
                status,
                body: answer,
            })
        }
    }
}

fn is_count(line: &str) -> bool {
    line.starts_with("probe: count ")
}

/// The size and on-disk bytes of `path`.
fn sizes(path: &Path) -> Result<(u64, u64), SnapshotBenchError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| SnapshotBenchError::File {
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.len(), meta.blocks() * 512))
}

/// The snapshot files of one VMM and guest size.
struct Files {
    state: PathBuf,
    memory: PathBuf,
}

/// Boots the counting guest, snapshots it Full (and Diff), and returns the files.
fn make_snapshot(
    env: &Env,
    engine: &Engine,
    mem_mib: u32,
    dir: &Path,
    case: &mut Case,
) -> Result<Files, SnapshotBenchError> {
    let guest = Guest::probe(&env.build, mem_mib, String::new());
    let mut config = vm_config(
        &guest,
        BOOT_ARGS,
        serde_json::json!([]),
        serde_json::json!([]),
    );
    config["machine-config"]["track_dirty_pages"] = true.into();
    let config_path = dir.join("vm.json");
    write(&config_path, config.to_string().as_bytes())?;
    let socket = dir.join("make.sock");
    let mut vm = Measured::spawn(engine.command(&socket, Some(&config_path)), false)?;
    let result = (|| {
        vm.wait_for("the guest's third count", TIMEOUT, |l| {
            (l.text == "probe: count 2").then_some(())
        })?;
        let files = Files {
            state: dir.join("state"),
            memory: dir.join("memory"),
        };
        engine.call(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
        let body = serde_json::json!({
            "snapshot_path": files.state, "mem_file_path": files.memory, "snapshot_type": "Full"
        });
        let started = monotonic_us();
        engine.call(&socket, "PUT", "/snapshot/create", &body.to_string())?;
        case.create_full_ms = ms_between(started, monotonic_us());
        case.state_bytes = sizes(&files.state)?.0;
        case.full_mem_bytes = sizes(&files.memory)?;

        // A few counts later, the pages dirtied since: a Diff into other files.
        engine.call(&socket, "PATCH", "/vm", r#"{"state": "Resumed"}"#)?;
        vm.drain();
        let last = vm
            .lines
            .iter()
            .rev()
            .find_map(|l| l.text.strip_prefix("probe: count ")?.parse::<u64>().ok())
            .unwrap_or(2);
        let want = format!("probe: count {}", last + 3);
        vm.wait_for("three more counts", TIMEOUT, |l| {
            (l.text == want).then_some(())
        })?;
        engine.call(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
        let diff_mem = dir.join("memory.diff");
        let body = serde_json::json!({
            "snapshot_path": dir.join("state.diff"), "mem_file_path": diff_mem,
            "snapshot_type": "Diff"
        });
        let started = monotonic_us();
        match engine.call(&socket, "PUT", "/snapshot/create", &body.to_string()) {
            Ok(()) => {
                case.create_diff_ms = Some(ms_between(started, monotonic_us()));
                case.diff_mem_bytes = Some(sizes(&diff_mem)?);
            }
            Err(e) => case.notes.push(format!("no Diff: {e}")),
        }
        Ok(files)
    })();
    vm.kill();
    result
}

/// One restore in a fresh process: (load ms, load → console ms, start → console ms).
fn restore_once(
    engine: &Engine,
    files: &Files,
    dir: &Path,
    tag: usize,
) -> Result<(f64, f64, f64), SnapshotBenchError> {
    let socket = dir.join(format!("load-{tag}.sock"));
    let mut vm = Measured::spawn(engine.command(&socket, None), false)?;
    let result = (|| {
        api_client::wait_for_socket(&socket, TIMEOUT)?;
        let body = serde_json::json!({
            "snapshot_path": files.state,
            "mem_backend": {"backend_type": "File", "backend_path": files.memory},
            "resume_vm": true,
        });
        let asked = monotonic_us();
        engine.call(&socket, "PUT", "/snapshot/load", &body.to_string())?;
        let answered = monotonic_us();
        let ((), counted) = vm.wait_for("a count after the load", TIMEOUT, |l| {
            is_count(&l.text).then_some(())
        })?;
        Ok((
            ms_between(asked, answered),
            ms_between(asked, counted),
            ms_between(vm.spawned_us, counted),
        ))
    })();
    vm.kill();
    let _ = std::fs::remove_file(&socket);
    result
}

/// One cold boot: process start → the guest's first count, ms.
fn cold_once(engine: &Engine, dir: &Path, tag: usize) -> Result<f64, SnapshotBenchError> {
    let socket = dir.join(format!("cold-{tag}.sock"));
    let mut vm = Measured::spawn(engine.command(&socket, Some(&dir.join("vm.json"))), false)?;
    let result = vm
        .wait_for("the first count", TIMEOUT, |l| {
            is_count(&l.text).then_some(())
        })
        .map(|((), at)| ms_between(vm.spawned_us, at));
    vm.kill();
    let _ = std::fs::remove_file(&socket);
    Ok(result?)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), SnapshotBenchError> {
    std::fs::write(path, bytes).map_err(|source| SnapshotBenchError::File {
        path: path.to_owned(),
        source,
    })
}

/// One VMM's measured runs for one guest size, ms.
#[derive(Debug, Default)]
struct Samples {
    load: Vec<f64>,
    load_to_console: Vec<f64>,
    start_to_console: Vec<f64>,
    cold: Vec<f64>,
}

/// Runs the benchmark and writes snapshot.md and snapshot.json.
pub fn run(env: &Env, settings: &Settings) -> Result<Vec<Case>, SnapshotBenchError> {
    env.ensure_probe()?;
    let mut engines = vec![Engine {
        vmm: Vmm::Spry,
        binary: env.spry.clone(),
    }];
    if let Some(fc) = &settings.firecracker {
        engines.push(Engine {
            vmm: Vmm::Firecracker,
            binary: fc.clone(),
        });
    }
    let steps = settings.mem_mib.len() * engines.len() * (1 + 2 * (settings.runs + 1));
    let mut progress = Progress::new("snapshot", steps);
    let mut cases = Vec::new();
    for &mem_mib in &settings.mem_mib {
        let mut made = Vec::new();
        for engine in &engines {
            let dir = env.scratch_dir(&format!("snapshot-{}-{mem_mib}", engine.name()))?;
            let mut case = Case {
                vmm: engine.name().into(),
                mem_mib,
                create_full_ms: 0.0,
                create_diff_ms: None,
                state_bytes: 0,
                full_mem_bytes: (0, 0),
                diff_mem_bytes: None,
                load: None,
                load_to_console: None,
                start_to_console: None,
                cold_start_to_console: None,
                notes: Vec::new(),
            };
            progress.step(
                &format!("{} {mem_mib} MiB: boot and snapshot", engine.name()),
                false,
            );
            let files = make_snapshot(env, engine, mem_mib, &dir, &mut case)?;
            made.push((engine, dir, files, case));
        }
        // Alternated: each run restores (and cold-boots) every VMM once.
        let mut samples: Vec<Samples> = made.iter().map(|_| Samples::default()).collect();
        for run in 0..=settings.runs {
            for ((engine, dir, files, _), s) in made.iter().zip(samples.iter_mut()) {
                progress.step(
                    &format!("{} {mem_mib} MiB restore", engine.name()),
                    run == 0,
                );
                let (load, to_console, start) = restore_once(engine, files, dir, run)?;
                progress.step(
                    &format!("{} {mem_mib} MiB cold boot", engine.name()),
                    run == 0,
                );
                let cold = cold_once(engine, dir, run)?;
                if run > 0 {
                    s.load.push(load);
                    s.load_to_console.push(to_console);
                    s.start_to_console.push(start);
                    s.cold.push(cold);
                }
            }
        }
        for ((_, _, _, mut case), s) in made.into_iter().zip(samples) {
            case.load = summarize(&s.load);
            case.load_to_console = summarize(&s.load_to_console);
            case.start_to_console = summarize(&s.start_to_console);
            case.cold_start_to_console = summarize(&s.cold);
            cases.push(case);
        }
    }
    progress.done();
    let out = settings
        .out
        .clone()
        .unwrap_or_else(|| env.build.join("bench"));
    phase_output::write_phase(&out, "snapshot", &render(&cases, env), &cases)?;
    Ok(cases)
}

fn median(s: Option<Summary>) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{:.2}", s.median))
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / f64::from(1u32 << 20))
}

/// The report as Markdown.
pub fn render(cases: &[Case], env: &Env) -> String {
    let mut text = String::from("## Snapshots: create and restore\n\n");
    let _ = writeln!(
        text,
        "Host: {} ({} CPUs, /dev/kvm: {}). The counting probe (1 vCPU), medians in ms of \
         alternated runs after a warm-up (p90 in the JSON).\n",
        env.host.cpu,
        env.host.cpus,
        env.host.kvm.describe()
    );
    text.push_str(
        "| VMM | guest | load → answered | load → next console line | start → next console \
         line | cold boot: start → console | restore / cold boot |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cases {
        let ratio = c.start_to_console.zip(c.cold_start_to_console).map_or_else(
            || "–".into(),
            |(r, b)| format!("{:.2}x", r.median / b.median),
        );
        let _ = writeln!(
            text,
            "| {} | {} MiB | {} | {} | {} | {} | {ratio} |",
            c.vmm,
            c.mem_mib,
            median(c.load),
            median(c.load_to_console),
            median(c.start_to_console),
            median(c.cold_start_to_console)
        );
    }
    text.push_str(
        "\n| VMM | guest | Full create ms | state file KiB | Full memory file MiB (on disk) | \
         Diff create ms | Diff memory file MiB (on disk) |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cases {
        let _ = writeln!(
            text,
            "| {} | {} MiB | {:.2} | {:.1} | {} ({}) | {} | {} |",
            c.vmm,
            c.mem_mib,
            c.create_full_ms,
            c.state_bytes as f64 / 1024.0,
            mib(c.full_mem_bytes.0),
            mib(c.full_mem_bytes.1),
            c.create_diff_ms
                .map_or_else(|| "–".into(), |ms| format!("{ms:.2}")),
            c.diff_mem_bytes
                .map_or_else(|| "–".into(), |(l, d)| format!("{} ({})", mib(l), mib(d)))
        );
    }
    for c in cases {
        for note in &c.notes {
            let _ = writeln!(text, "\n{} {} MiB: {note}", c.vmm, c.mem_mib);
        }
    }
    text
}
