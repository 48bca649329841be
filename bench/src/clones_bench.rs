//! Issue 10's clone benchmark: fleets of N clones of one snapshot against N cold
//! boots of the same VM and N idle runc containers, in one run per fleet size:
//! launches per second (first spawn → last instance ready) and Pss/Rss per idle
//! instance. The VM is the probe in `probe.mode=blkclone` with a RAM working set
//! (`probe.touch_mib`) and one copy-on-write drive over a shared base image, as in
//! `tests/clones.rs`; a clone is a fresh spry process given `PUT /snapshot/load`
//! with a copy-on-write `drive_overrides` on its own API socket.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::api_client::{self, ApiClientError};
use crate::child::{ChildError, Measured};
use crate::clock::{monotonic_us, ms_between};
use crate::compare::{density_point, DensityPoint};
use crate::phase_output::{self, PhaseOutputError};
use crate::procfs::{self, MemoryUse, ProcError};
use crate::progress::Progress;
use crate::setup::{Env, SetupError};
use crate::systems::SystemError;

/// Guest RAM of every VM, MiB (the test's size).
const MEM_MIB: u32 = 128;

/// The base image the drives share: 1 MiB.
const BASE_BYTES: usize = 1 << 20;

/// The probe's line once it has touched its working set and idles.
const READY_LINE: &str = "probe: blkclone ready";

/// A boot, a load or a working-set pass this long means something is stuck (a
/// fleet of 100 on 2 CPUs takes seconds).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Time for every VM to settle into its idle loop before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// The aim: an idle clone's Pss under this share of a cold-booted VM's.
pub const AIM_RATIO: f64 = 0.25;

/// Errors of the clone benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ClonesBenchError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A spry process could not be started or its guest did not get ready.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// An API call failed to complete.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// A process's memory could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The runc containers failed.
    #[error("runc: {0}")]
    Runc(String),
    /// spry refused an API call.
    #[error("{call} answered {status}: {body}")]
    Refused {
        /// The call.
        call: String,
        /// Its status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// A thread loading a clone panicked.
    #[error("a clone's loader thread panicked")]
    Panicked,
    /// The results could not be written.
    #[error(transparent)]
    Output(#[from] PhaseOutputError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<SystemError> for ClonesBenchError {
    fn from(e: SystemError) -> Self {
        ClonesBenchError::Runc(e.to_string())
    }
}

/// What every VM does with its working set once launched, before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Use {
    /// Nothing: a clone keeps sharing the snapshot's pages.
    None,
    /// Reads a word of every page (a clone maps the snapshot's pages).
    Read,
    /// Writes a word of every page (a clone copies them).
    Write,
}

impl Use {
    /// The key the probe takes for it.
    fn key(self) -> Option<u8> {
        match self {
            Use::None => None,
            Use::Read => Some(b'!'),
            Use::Write => Some(b'#'),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fleet sizes.
    pub fleets: Vec<usize>,
    /// The working set every VM writes at boot, MiB.
    pub working_set_mib: u32,
    /// What the VMs do with it after launch.
    pub usage: Use,
    /// Leave runc out.
    pub no_runc: bool,
    /// Output directory (default <repo>/build/bench).
    pub out: Option<PathBuf>,
}

/// One fleet's launch rate and idle memory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fleet {
    /// First spawn → last instance ready, ms.
    pub launch_ms: f64,
    /// Instances per second over that time.
    pub launch_per_s: f64,
    /// Mean Pss per idle instance, MiB.
    pub pss_mib: f64,
    /// Mean Rss per idle instance, MiB.
    pub rss_mib: f64,
    /// Mean Pss of guest RAM per VM, MiB (None for containers).
    pub guest_pss_mib: Option<f64>,
    /// Median `PUT /snapshot/load` → answered, ms (clones only).
    pub load_ms: Option<f64>,
}

/// The figures for one fleet size.
#[derive(Debug, Serialize)]
pub struct Point {
    /// Instances per fleet.
    pub n: usize,
    /// N cold-booted VMs.
    pub cold: Fleet,
    /// N clones of one snapshot.
    pub clone: Fleet,
    /// N idle runc containers.
    pub runc: Option<Fleet>,
    /// Clone Pss / cold-boot Pss.
    pub clone_per_cold: f64,
    /// Clone Pss / container Pss.
    pub clone_per_runc: Option<f64>,
    /// Whether the clone/cold ratio is under [`AIM_RATIO`].
    pub aim_met: bool,
}

/// The whole run, as written to clones.json.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Guest RAM per VM, MiB.
    pub mem_mib: u32,
    /// Working set per VM, MiB.
    pub working_set_mib: u32,
    /// What the VMs did with it after launch.
    pub usage: Use,
    /// One entry per fleet size.
    pub points: Vec<Point>,
    /// Why a part is missing.
    pub notes: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut samples: Vec<f64>) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ClonesBenchError> {
    std::fs::write(path, bytes).map_err(|source| ClonesBenchError::File {
        path: path.to_owned(),
        source,
    })
}

/// Byte `i` of sector `s` as the probe writes it (resources/probe/README.md), so
/// a round on a clone reads `base`.
fn sector_pattern(s: usize) -> impl Iterator<Item = u8> {
    (0..512usize).map(move |i| (s * 31 + i * 7 + 0x5a).to_le_bytes()[0])
}

/// The probe's command line for a VM with a `touch_mib` MiB working set.
fn boot_args(touch_mib: u32) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 pci=off probe.mode=blkclone probe.blk_sectors=3:17 \
         probe.touch_mib={touch_mib}"
    )
}

/// Drive "rootfs" (as a `drive_overrides` entry): a copy-on-write view of `base`
/// in memory.
fn cow_drive(base: &Path) -> serde_json::Value {
    serde_json::json!({
        "drive_id": "rootfs", "path_on_host": base, "copy_on_write": {"overlay_type": "Memory"}
    })
}

/// The cold-boot config: the blkclone probe on a copy-on-write drive over `base`.
fn vm_config(vmlinux: &Path, base: &Path, touch_mib: u32) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {"kernel_image_path": vmlinux, "boot_args": boot_args(touch_mib)},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
        "drives": [{
            "drive_id": "rootfs", "path_on_host": base, "is_root_device": false,
            "copy_on_write": {"overlay_type": "Memory"}
        }],
    })
}

/// spry on `socket`, booting `config` if given; stdin kept for the probe's keys.
fn spawn(spry: &Path, socket: &Path, config: Option<&Path>) -> Result<Measured, ChildError> {
    let mut cmd = Command::new(spry);
    cmd.arg("--api-sock").arg(socket);
    if let Some(config) = config {
        cmd.arg("--config-file").arg(config);
    }
    Measured::spawn(cmd, true)
}

fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(), ClonesBenchError> {
    let (status, answer) = api_client::call(socket, method, path, body)?;
    if status / 100 == 2 {
        Ok(())
    } else {
        Err(ClonesBenchError::Refused {
            call: format!("{method} {path} {body}"),
            status,
            body: answer,
        })
    }
}

/// The running VMs of one fleet and their sockets, killed and removed on drop
/// (also on an error half-way).
struct VmFleet {
    vms: Vec<Measured>,
    sockets: Vec<PathBuf>,
}

impl Drop for VmFleet {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.kill();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl VmFleet {
    fn new() -> VmFleet {
        VmFleet {
            vms: Vec::new(),
            sockets: Vec::new(),
        }
    }

    /// Has every VM read or written its working set, and waits until each did.
    fn use_working_set(&mut self, usage: Use) -> Result<(), ClonesBenchError> {
        let Some(key) = usage.key() else {
            return Ok(());
        };
        for vm in &mut self.vms {
            vm.send(&[key])?;
        }
        for vm in &mut self.vms {
            vm.wait_for("the working-set pass", TIMEOUT, |l| {
                (l.text.starts_with("probe: blkclone read")
                    || l.text.starts_with("probe: blkclone wrote"))
                .then_some(())
            })?;
        }
        Ok(())
    }

    /// Mean memory per VM once they settled.
    fn memory(&self) -> Result<(MemoryUse, usize), ClonesBenchError> {
        std::thread::sleep(SETTLE);
        let mut total = MemoryUse::default();
        for vm in &self.vms {
            total.add(procfs::memory_use(
                vm.pid(),
                Some(u64::from(MEM_MIB) << 10),
            )?);
        }
        Ok((total, self.vms.len()))
    }
}

/// Launch rate and mean idle memory of a fleet launched from `first_spawn` until
/// `last_ready` (µs).
fn figures(
    (total, n): (MemoryUse, usize),
    first_spawn: u64,
    last_ready: u64,
    load_ms: Option<f64>,
) -> Fleet {
    let launch_ms = ms_between(first_spawn, last_ready);
    let per = |kib: u64| mib(kib) / n.max(1) as f64;
    Fleet {
        launch_ms,
        launch_per_s: n as f64 / (launch_ms / 1000.0).max(1e-6),
        pss_mib: per(total.pss_kib),
        rss_mib: per(total.rss_kib),
        guest_pss_mib: Some(per(total.guest_pss_kib)),
        load_ms,
    }
}

/// What every fleet needs: spry, the probe, the shared base and the snapshot.
struct Shared {
    spry: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    base: PathBuf,
    state: PathBuf,
    memory: PathBuf,
}

/// N cold boots: every process spawned, then each waited for until it idles.
fn cold_fleet(
    shared: &Shared,
    n: usize,
    usage: Use,
    progress: &mut Progress,
) -> Result<Fleet, ClonesBenchError> {
    progress.step(&format!("{n} cold boots"), false);
    let mut fleet = VmFleet::new();
    let first_spawn = monotonic_us();
    for i in 0..n {
        let socket = shared.dir.join(format!("cold{n}_{i}.sock"));
        fleet.sockets.push(socket.clone());
        fleet
            .vms
            .push(spawn(&shared.spry, &socket, Some(&shared.config))?);
    }
    let mut last_ready = first_spawn;
    for vm in &mut fleet.vms {
        let ((), at) = vm.wait_for(READY_LINE, TIMEOUT, |l| {
            (l.text == READY_LINE).then_some(())
        })?;
        last_ready = last_ready.max(at);
    }
    fleet.use_working_set(usage)?;
    Ok(figures(fleet.memory()?, first_spawn, last_ready, None))
}

/// N clones: every process spawned, then each loaded (and resumed) from its own
/// thread once its socket is up; ready when the load is answered.
fn clone_fleet(
    shared: &Shared,
    n: usize,
    usage: Use,
    progress: &mut Progress,
) -> Result<Fleet, ClonesBenchError> {
    progress.step(&format!("{n} clones"), false);
    let mut fleet = VmFleet::new();
    let first_spawn = monotonic_us();
    for i in 0..n {
        let socket = shared.dir.join(format!("clone{n}_{i}.sock"));
        fleet.sockets.push(socket.clone());
        fleet.vms.push(spawn(&shared.spry, &socket, None)?);
    }
    let body = serde_json::json!({
        "snapshot_path": shared.state,
        "mem_backend": {"backend_type": "File", "backend_path": shared.memory},
        "resume_vm": true,
        "drive_overrides": [cow_drive(&shared.base)],
    })
    .to_string();
    let loads: Vec<Result<(u64, u64), ClonesBenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = fleet
            .sockets
            .iter()
            .map(|socket| {
                let body = &body;
                scope.spawn(move || {
                    api_client::wait_for_socket(socket, TIMEOUT)?;
                    let asked = monotonic_us();
                    call(socket, "PUT", "/snapshot/load", body)?;
                    Ok((asked, monotonic_us()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(ClonesBenchError::Panicked)))
            .collect()
    });
    let mut last_ready = first_spawn;
    let mut load_ms = Vec::with_capacity(n);
    for load in loads {
        let (asked, answered) = load?;
        last_ready = last_ready.max(answered);
        load_ms.push(ms_between(asked, answered));
    }
    fleet.use_working_set(usage)?;
    Ok(figures(
        fleet.memory()?,
        first_spawn,
        last_ready,
        median(load_ms),
    ))
}

fn runc_fleet(point: DensityPoint) -> Fleet {
    Fleet {
        launch_ms: point.launch_ms,
        launch_per_s: point.launch_per_s,
        pss_mib: point.pss_per_instance_mib,
        rss_mib: point.rss_per_instance_mib,
        guest_pss_mib: None,
        load_ms: None,
    }
}

/// Boots the golden VM, lets it idle and snapshots it (paused) into `shared`.
fn golden_snapshot(shared: &Shared) -> Result<(), ClonesBenchError> {
    let socket = shared.dir.join("golden.sock");
    let mut fleet = VmFleet::new();
    fleet.sockets.push(socket.clone());
    fleet
        .vms
        .push(spawn(&shared.spry, &socket, Some(&shared.config))?);
    for vm in &mut fleet.vms {
        vm.wait_for(READY_LINE, TIMEOUT, |l| {
            (l.text == READY_LINE).then_some(())
        })?;
    }
    call(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    let body = serde_json::json!({
        "snapshot_path": shared.state, "mem_file_path": shared.memory, "snapshot_type": "Full"
    });
    call(&socket, "PUT", "/snapshot/create", &body.to_string())
}

/// Runs the benchmark and writes clones.md and clones.json.
pub fn run(env: &Env, settings: &Settings) -> Result<Report, ClonesBenchError> {
    env.ensure_probe()?;
    let dir = env.scratch_dir("clones")?;
    let base = dir.join("base.img");
    let bytes: Vec<u8> = (0..BASE_BYTES / 512).flat_map(sector_pattern).collect();
    write(&base, &bytes)?;
    let config = dir.join("vm.json");
    let vmlinux = env.build.join("probe/vmlinux");
    let text = vm_config(&vmlinux, &base, settings.working_set_mib).to_string();
    write(&config, text.as_bytes())?;
    let shared = Shared {
        spry: env.spry.clone(),
        state: dir.join("golden.snap"),
        memory: dir.join("golden.mem"),
        dir,
        config,
        base,
    };
    let mut notes = Vec::new();
    let runc = if settings.no_runc {
        None
    } else {
        match crate::compare::runc(env, &shared.dir) {
            Ok(runc) => Some(runc),
            Err(e) => {
                notes.push(format!("no runc containers: {e}"));
                None
            }
        }
    };
    let per_fleet = 2 + usize::from(runc.is_some());
    let mut progress = Progress::new("clones", 1 + settings.fleets.len() * per_fleet);
    progress.step("golden VM and its snapshot", false);
    golden_snapshot(&shared)?;
    let mut points = Vec::new();
    for &n in &settings.fleets {
        let cold = cold_fleet(&shared, n, settings.usage, &mut progress)?;
        let clone = clone_fleet(&shared, n, settings.usage, &mut progress)?;
        let runc = match &runc {
            Some(runc) => {
                progress.step(&format!("{n} runc containers"), false);
                Some(runc_fleet(density_point(runc, n)?))
            }
            None => None,
        };
        points.push(point(n, cold, clone, runc));
    }
    progress.done();
    let report = Report {
        mem_mib: MEM_MIB,
        working_set_mib: settings.working_set_mib,
        usage: settings.usage,
        points,
        notes,
    };
    let out = settings
        .out
        .clone()
        .unwrap_or_else(|| env.build.join("bench"));
    phase_output::write_phase(&out, "clones", &render(&report, env), &report)?;
    Ok(report)
}

/// One fleet size's figures with their ratios.
fn point(n: usize, cold: Fleet, clone: Fleet, runc: Option<Fleet>) -> Point {
    let clone_per_cold = clone.pss_mib / cold.pss_mib.max(1e-9);
    Point {
        n,
        cold,
        clone,
        runc,
        clone_per_cold,
        clone_per_runc: runc.map(|r| clone.pss_mib / r.pss_mib.max(1e-9)),
        aim_met: clone_per_cold < AIM_RATIO,
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown.
pub fn render(report: &Report, env: &Env) -> String {
    let mut text = String::from("## Clones of one snapshot\n\n");
    let _ = writeln!(
        text,
        "Host: {} ({} CPUs, /dev/kvm: {}). The blkclone probe (1 vCPU, {} MiB, a {} MiB \
         working set written at boot, used after launch: {}) on a copy-on-write drive over \
         one base; clones loaded from one Full snapshot of such a VM (File backend); runc: \
         the compare phase's idle container. Launch: first spawn → last instance ready \
         (cold: `{READY_LINE}`; clone: load answered; runc: its init's line). Pss and Rss \
         per idle instance after they settle.\n",
        env.host.cpu,
        env.host.cpus,
        env.host.kvm.describe(),
        report.mem_mib,
        report.working_set_mib,
        serde_json::to_value(report.usage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    text.push_str(&table(&report.points));
    for note in &report.notes {
        let _ = writeln!(text, "\n{note}");
    }
    text
}

/// The figures table and the ratio table.
fn table(points: &[Point]) -> String {
    let mut text = String::from(
        "| N | kind | launches/s | launch ms | Pss MiB per idle instance | Rss MiB | guest RAM Pss MiB | median load ms |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let rows = [
            ("cold boot", Some(p.cold)),
            ("clone", Some(p.clone)),
            ("runc", p.runc),
        ];
        for (kind, fleet) in rows {
            let Some(f) = fleet else { continue };
            let _ = writeln!(
                text,
                "| {} | {kind} | {:.1} | {:.0} | {:.2} | {:.2} | {} | {} |",
                p.n,
                f.launch_per_s,
                f.launch_ms,
                f.pss_mib,
                f.rss_mib,
                opt(f.guest_pss_mib, 2),
                opt(f.load_ms, 2)
            );
        }
    }
    text.push_str(
        "\n| N | clone/cold Pss | clone/runc Pss | clone/cold launches/s | aim: clone < 1/4 of a cold boot |\n\
         |---:|---:|---:|---:|---|\n",
    );
    for p in points {
        let _ = writeln!(
            text,
            "| {} | {:.3}x | {} | {:.2}x | {} |",
            p.n,
            p.clone_per_cold,
            p.clone_per_runc
                .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
            p.clone.launch_per_s / p.cold.launch_per_s.max(1e-9),
            if p.aim_met { "met" } else { "missed" }
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(per_s: f64, pss: f64) -> Fleet {
        Fleet {
            launch_ms: 1000.0,
            launch_per_s: per_s,
            pss_mib: pss,
            rss_mib: pss * 2.0,
            guest_pss_mib: None,
            load_ms: None,
        }
    }

    #[test]
    fn test_clone_at_a_tenth_of_a_cold_boot_meets_the_aim() {
        let p = point(
            10,
            fleet(50.0, 40.0),
            fleet(200.0, 4.0),
            Some(fleet(70.0, 2.0)),
        );

        assert!((p.clone_per_cold - 0.1).abs() < 1e-9);
        assert_eq!(p.clone_per_runc, Some(2.0));
        assert!(p.aim_met);
    }

    #[test]
    fn test_clone_at_a_quarter_misses_the_aim() {
        let p = point(10, fleet(50.0, 40.0), fleet(200.0, 10.0), None);

        assert!(!p.aim_met);
        assert_eq!(p.clone_per_runc, None);
    }

    #[test]
    fn test_table_has_a_row_per_kind_and_the_verdict() {
        let p = point(
            50,
            fleet(50.0, 40.0),
            fleet(200.0, 4.0),
            Some(fleet(70.0, 2.0)),
        );

        let text = table(&[p]);

        assert!(
            text.contains("| 50 | cold boot | 50.0 | 1000 | 40.00 | 80.00 | – | – |"),
            "{text}"
        );
        assert!(text.contains("| 50 | runc | 70.0 |"), "{text}");
        assert!(
            text.contains("| 50 | 0.100x | 2.00x | 4.00x | met |"),
            "{text}"
        );
    }

    #[test]
    fn test_launch_rate_is_fleet_over_first_spawn_to_last_ready() {
        let memory = MemoryUse {
            pss_kib: 10 * 1024,
            rss_kib: 20 * 1024,
            ..MemoryUse::default()
        };

        let f = figures((memory, 10), 1_000_000, 1_500_000, None);

        assert!((f.launch_per_s - 20.0).abs() < 1e-9);
        assert!((f.pss_mib - 1.0).abs() < 1e-9);
        assert!((f.rss_mib - 2.0).abs() < 1e-9);
    }

    #[test]
    fn test_base_image_sectors_hold_the_probe_pattern() {
        let sector: Vec<u8> = sector_pattern(3).collect();

        assert_eq!(sector[0], 0xb7); // (3 * 31 + 0x5a) & 0xff
        assert_eq!(sector[1], 0xbe); // + 7
    }
}
