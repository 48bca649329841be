//! Issue 3's device benchmarks: requests per second and MiB/s through virtio-blk and
//! virtio-net, and the CPU the VMM spends per request (its user + system time minus
//! a run of the same guest doing 0 requests).
//!
//! On PVM hosts the guest is the probe (`blkbench` / `netbench` modes, timed by the
//! probe itself with KVM's kvmclock from its first to its last request, the same
//! clock under every VMM); on hosts with hardware virtualization it is the Linux
//! guest running busybox `dd` and `nc`, timed by console lines around them. QEMU
//! (microvm) is the peer for both.

mod lineup;
mod linux_driver;
mod netns;
mod probe_driver;
pub mod qemu_args;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::guest::{Guest, GuestKind};
use crate::progress::Progress;
use crate::rawsock::RawSocketError;
use crate::report::table::{markdown_table, num, signed};
use crate::setup::{Env, SetupError};
use crate::stats::summarize;
use crate::systems::SystemError;

/// Errors of the device benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The guest cannot run this benchmark.
    #[error(
        "the probe at {probe} has no probe.mode={mode} (it printed '{line}'): rebuild \
         build/probe from a tree that has it (resources/probe)"
    )]
    NoMode {
        /// The probe image.
        probe: PathBuf,
        /// The mode.
        mode: &'static str,
        /// What it said.
        line: String,
    },
    /// The guest's benchmark failed.
    #[error("{what}: the guest reported '{line}'")]
    GuestFailed {
        /// Which run.
        what: String,
        /// The failure line.
        line: String,
    },
    /// The VMM failed.
    #[error("{what}")]
    Run {
        /// Which run.
        what: String,
        /// Why.
        #[source]
        source: SystemError,
    },
    /// A scratch file could not be made.
    #[error("cannot create {path}")]
    Scratch {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Feeding the guest's receive queue failed.
    #[error(transparent)]
    Raw(#[from] RawSocketError),
    /// The host side of the network benchmark failed.
    #[error("host side of the network benchmark: {what}")]
    HostNet {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to run.
    #[error(
        "no system to run: --systems named none of spry, spry-no-seccomp, qemu that can run \
         here ({0})"
    )]
    NoSystem(String),
    /// An operation of the other device.
    #[error("--ops {op}: not an operation of `{device}` (block: read, write; net: tx, rx)")]
    WrongOp {
        /// The operation.
        op: &'static str,
        /// The subcommand ("block", "net").
        device: &'static str,
    },
}

/// Which device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Device {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
}

impl Device {
    /// Its subcommand.
    fn command(self) -> &'static str {
        match self {
            Device::Block => "block",
            Device::Net => "net",
        }
    }
}

/// What a run does: block read or write, net transmit or receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Block: reads of the bench disk.
    Read,
    /// Block: writes to the bench disk.
    Write,
    /// Net: frames (Linux: a TCP stream) from the guest.
    Tx,
    /// Net: frames (Linux: a TCP stream) to the guest.
    Rx,
}

impl Op {
    /// "read", "write", "tx", "rx".
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Tx => "tx",
            Op::Rx => "rx",
        }
    }

    /// The device it exercises.
    pub fn device(self) -> Device {
        match self {
            Op::Read | Op::Write => Device::Block,
            Op::Tx | Op::Rx => Device::Net,
        }
    }
}

/// Fails unless every op in `ops` is one of `device`'s.
pub fn check_ops(ops: &[Op], device: Device) -> Result<(), DeviceError> {
    match ops.iter().find(|op| op.device() != device) {
        Some(op) => Err(DeviceError::WrongOp {
            op: op.name(),
            device: device.command(),
        }),
        None => Ok(()),
    }
}

/// One benchmark row: an operation and a request size.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// "read", "write", "tx", "rx".
    pub op: &'static str,
    /// Request (frame, write) size, bytes.
    pub size: u64,
    /// Requests per run.
    pub requests: u64,
}

/// One run of a case (or of its 0-request baseline).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Start mark to end mark, ms.
    pub elapsed_ms: f64,
    /// The VMM's user + system CPU of the whole run, µs (wait4).
    pub cpu_us: u64,
    /// CPU per thread at the end of the timed part, ns (schedstat), by thread name.
    pub threads: Vec<(String, u64)>,
    /// spry only: the same requests timed by spry's boot-timer stamps, ms (a check
    /// of the guest's clock against the host's).
    pub stamp_ms: Option<f64>,
}

/// A case on one system, with its runs and its baseline runs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// "spry" or "QEMU".
    pub system: String,
    /// What ran.
    pub case: Case,
    /// Runs doing `requests` requests.
    pub runs: Vec<Run>,
    /// The same guest doing 0 requests.
    pub baseline: Vec<Run>,
    /// Whether the baseline's elapsed time is subtracted (Linux: the marks enclose a
    /// program start).
    pub subtract_baseline_time: bool,
}

impl CaseResult {
    fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
        summarize(&values.collect::<Vec<_>>()).map(|s| s.median)
    }

    /// Median time of the requests themselves, ms.
    fn request_ms(&self) -> Option<f64> {
        let ms = Self::median(self.runs.iter().map(|r| r.elapsed_ms))?;
        if !self.subtract_baseline_time {
            return Some(ms);
        }
        let idle = Self::median(self.baseline.iter().map(|r| r.elapsed_ms))?;
        Some(ms - idle).filter(|&d| d > 0.0)
    }

    /// Median requests per second.
    pub fn requests_per_s(&self) -> Option<f64> {
        let ms = self.request_ms()?;
        Some(self.case.requests as f64 / (ms / 1000.0).max(1e-9))
    }

    /// Median MiB/s.
    pub fn mib_per_s(&self) -> Option<f64> {
        Some(self.requests_per_s()? * self.case.size as f64 / (1024.0 * 1024.0))
    }

    /// The VMM's CPU per request beyond the baseline, µs.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let loaded = Self::median(self.runs.iter().map(|r| r.cpu_us as f64))?;
        let idle = Self::median(self.baseline.iter().map(|r| r.cpu_us as f64))?;
        Some((loaded - idle) / self.case.requests.max(1) as f64)
    }

    /// CPU per request of the threads named `name` beyond the baseline, µs.
    pub fn thread_us_per_request(&self, name: &str) -> Option<f64> {
        self.threads_us_per_request(|n| n == name)
    }

    /// CPU per request of every thread but the vCPUs beyond the baseline, µs: the
    /// VMM's device work (spry's event loop; QEMU's main loop, its I/O workers and
    /// its RCU thread; a vhost worker), without the guest, which runs in the vCPU
    /// threads.
    pub fn io_threads_us_per_request(&self) -> Option<f64> {
        self.threads_us_per_request(|n| !qemu_args::is_vcpu_thread(n))
    }

    fn threads_us_per_request(&self, wanted: impl Fn(&str) -> bool) -> Option<f64> {
        let of = |runs: &[Run]| {
            Self::median(runs.iter().filter_map(|r| {
                let ns: u64 = r
                    .threads
                    .iter()
                    .filter(|(n, _)| wanted(n))
                    .map(|(_, ns)| ns)
                    .sum();
                (ns > 0).then_some(ns as f64 / 1000.0)
            }))
        };
        Some((of(&self.runs)? - of(&self.baseline)?) / self.case.requests.max(1) as f64)
    }

    /// Median of (guest clock - boot-timer window) / boot-timer window over the runs
    /// that have both, in percent.
    pub fn clock_vs_stamps_percent(&self) -> Option<f64> {
        Self::median(self.runs.iter().filter_map(|r| {
            let stamp = r.stamp_ms.filter(|&s| s > 0.0)?;
            Some((r.elapsed_ms - stamp) / stamp * 100.0)
        }))
    }
}

/// Runs `case` on each of `systems`: a warm-up each, then `runs` rounds of (0-request
/// baseline, loaded run), alternated between the systems. `run(i, n)` runs system
/// `i` with `n` requests.
pub(crate) fn alternate(
    systems: &[String],
    case: &Case,
    runs: usize,
    subtract_baseline_time: bool,
    progress: &mut Progress,
    run: &dyn Fn(usize, u64) -> Result<Run, DeviceError>,
) -> Result<Vec<CaseResult>, DeviceError> {
    let what = format!("{} {}", case.op, size_label(case.size));
    let mut results: Vec<CaseResult> = systems
        .iter()
        .map(|system| CaseResult {
            system: system.clone(),
            case: case.clone(),
            runs: Vec::new(),
            baseline: Vec::new(),
            subtract_baseline_time,
        })
        .collect();
    for (i, system) in systems.iter().enumerate() {
        progress.step(&format!("{system} {what}"), true);
        run(i, case.requests)?;
    }
    for _ in 0..runs {
        for (i, result) in results.iter_mut().enumerate() {
            progress.step(&format!("{} {what} baseline", result.system), false);
            result.baseline.push(run(i, 0)?);
            progress.step(&format!("{} {what}", result.system), false);
            result.runs.push(run(i, case.requests)?);
        }
    }
    Ok(results)
}

/// The results of one device benchmark.
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// Which device.
    pub device: Device,
    /// The guest.
    pub guest: Guest,
    /// Rows, spry's first, then the peers'.
    pub cases: Vec<CaseResult>,
    /// Peers that did not run, and why.
    pub peers: Vec<(String, String)>,
    /// Cases left out, and why.
    pub skipped: Vec<String>,
}

/// spry's value over the peer's as "1.30x" (`None` if either is missing).
pub fn ratio(spry: Option<f64>, peer: Option<f64>) -> Option<String> {
    let (a, b) = (spry?, peer?);
    (a > 0.0 && b > 0.0).then(|| format!("{:.2}x", a / b))
}

impl DeviceReport {
    /// The table, ratios against peers, and notes.
    pub fn render(&self) -> String {
        let cell = |v: Option<f64>| v.map_or("–".into(), num);
        let rows: Vec<Vec<String>> = self
            .cases
            .iter()
            .map(|c| {
                let event_loop = lineup::is_spry(&c.system)
                    .then(|| c.thread_us_per_request("spry"))
                    .flatten();
                vec![
                    c.system.clone(),
                    c.case.op.to_owned(),
                    size_label(c.case.size),
                    c.case.requests.to_string(),
                    c.runs.len().to_string(),
                    cell(c.requests_per_s()),
                    cell(c.mib_per_s()),
                    cell(c.cpu_us_per_request()),
                    cell(c.io_threads_us_per_request()),
                    cell(event_loop),
                ]
            })
            .collect();
        let name = match self.device {
            Device::Block => "virtio-blk",
            Device::Net => "virtio-net",
        };
        let mut out = format!(
            "{name} benchmark: {} ({} vCPU, {} MiB), medians of alternated runs\n\n",
            self.guest.label(),
            self.guest.vcpus,
            self.guest.mem_mib
        );
        out.push_str(&markdown_table(
            &[
                "system",
                "op",
                "size",
                "requests",
                "runs",
                "req/s",
                "MiB/s",
                "VMM CPU µs/req",
                "non-vCPU threads µs/req",
                "spry event loop µs/req",
            ],
            &rows,
        ));
        let ratios = self.ratio_rows();
        if !ratios.is_empty() {
            out.push_str(
                "\nspry / peer (rates above 1x: spry is faster; CPU below 1x: spry is \
                 cheaper):\n\n",
            );
            out.push_str(&markdown_table(
                &[
                    "peer",
                    "op",
                    "size",
                    "req/s",
                    "MiB/s",
                    "VMM CPU/req",
                    "non-vCPU CPU/req",
                ],
                &ratios,
            ));
        }
        let seccomp = self.seccomp_rows();
        if !seccomp.is_empty() {
            out.push_str(
                "\nWhat seccomp adds per request (spry against spry --no-seccomp, same run; \
                 differences of medians, µs):\n\n",
            );
            out.push_str(&markdown_table(
                &[
                    "op",
                    "size",
                    "req/s ratio",
                    "VMM CPU µs/req",
                    "--no-seccomp",
                    "seccomp adds",
                    "non-vCPU adds",
                    "event loop adds",
                ],
                &seccomp,
            ));
        }
        out.push_str(match self.guest.kind {
            GuestKind::Probe => {
                "\nTimed by the probe itself with kvmclock (KVM's paravirtual clock, which KVM and \
                 not the VMM keeps), from its first request to the completion of its last (rx: \
                 from the first frame to the last, scaled by n/(n-1)); the same clock under \
                 every VMM. CPU per request: the VMM's CPU time of a run (wait4: all its \
                 threads, including its exit) minus that of the same guest doing 0 requests, \
                 over the requests. It includes the emulated guest: on PVM hosts KVM's \
                 instruction emulator runs the probe, which polls the used ring, in the VMM's \
                 vCPU thread. The non-vCPU column leaves the vCPU threads out (schedstat at the \
                 end of the timed part, same baseline): the VMM's own device work, spry's event \
                 loop against QEMU's main loop and I/O workers.\n"
            }
            GuestKind::Linux => {
                "\nTimed by console lines the guest prints around busybox dd (block) or dd | nc \
                 (net), minus the same run with 0 requests (the program start); the same for \
                 every VMM. CPU per request: the VMM's CPU time of a run minus that of the \
                 0-request run, over the requests (wait4; it includes the guest's own CPU, which \
                 runs in the VMM's vCPU threads).\n"
            }
        });
        let checks: Vec<String> = self
            .cases
            .iter()
            .filter_map(|c| {
                let d = c.clock_vs_stamps_percent()?;
                Some(format!(
                    "{} {} {d:+.2}%",
                    c.case.op,
                    size_label(c.case.size)
                ))
            })
            .collect();
        if !checks.is_empty() {
            out.push_str(&format!(
                "\nspry's boot-timer stamps (host CLOCK_MONOTONIC at the probe's MMIO writes just \
                 outside the timed part) against the guest's clock, median difference: {}.\n",
                checks.join(", ")
            ));
        }
        for skipped in &self.skipped {
            out.push_str(&format!("\nskipped {skipped}\n"));
        }
        for (peer, reason) in &self.peers {
            out.push_str(&format!("\nnot compared: {peer}: {reason}\n"));
        }
        out
    }

    /// Per case run by both spry and spry --no-seccomp: req/s of one over the other,
    /// CPU per request of both and what the filters add (all threads, non-vCPU
    /// threads, the event loop).
    fn seccomp_rows(&self) -> Vec<Vec<String>> {
        let dash = || "–".to_owned();
        let diff = |on: Option<f64>, off: Option<f64>| on.zip(off).map(|(a, b)| signed(a - b));
        self.cases
            .iter()
            .filter(|c| c.system == lineup::SPRY)
            .filter_map(|on| {
                let off = self.cases.iter().find(|c| {
                    c.system == lineup::SPRY_NO_SECCOMP
                        && c.case.op == on.case.op
                        && c.case.size == on.case.size
                })?;
                let event_loop = |c: &CaseResult| c.thread_us_per_request("spry");
                Some(vec![
                    on.case.op.to_owned(),
                    size_label(on.case.size),
                    ratio(on.requests_per_s(), off.requests_per_s()).unwrap_or_else(dash),
                    on.cpu_us_per_request().map_or_else(dash, num),
                    off.cpu_us_per_request().map_or_else(dash, num),
                    diff(on.cpu_us_per_request(), off.cpu_us_per_request()).unwrap_or_else(dash),
                    diff(
                        on.io_threads_us_per_request(),
                        off.io_threads_us_per_request(),
                    )
                    .unwrap_or_else(dash),
                    diff(event_loop(on), event_loop(off)).unwrap_or_else(dash),
                ])
            })
            .collect()
    }

    /// spry over each peer, per case: req/s, MiB/s, CPU per request, non-vCPU CPU
    /// per request.
    fn ratio_rows(&self) -> Vec<Vec<String>> {
        let dash = || "–".to_owned();
        self.cases
            .iter()
            .filter(|c| c.system != "spry")
            .filter_map(|peer| {
                let spry = self.cases.iter().find(|c| {
                    c.system == "spry" && c.case.op == peer.case.op && c.case.size == peer.case.size
                })?;
                Some(vec![
                    peer.system.clone(),
                    peer.case.op.to_owned(),
                    size_label(peer.case.size),
                    ratio(spry.requests_per_s(), peer.requests_per_s()).unwrap_or_else(dash),
                    ratio(spry.mib_per_s(), peer.mib_per_s()).unwrap_or_else(dash),
                    ratio(spry.cpu_us_per_request(), peer.cpu_us_per_request())
                        .unwrap_or_else(dash),
                    ratio(
                        spry.io_threads_us_per_request(),
                        peer.io_threads_us_per_request(),
                    )
                    .unwrap_or_else(dash),
                ])
            })
            .collect()
    }
}

/// "4 KiB", "1 MiB", "1514 B".
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Which guest the device benchmarks boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestChoice {
    /// The probe on PVM hosts, Linux elsewhere.
    Auto,
    /// The probe guest.
    Probe,
    /// The Linux guest.
    Linux,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DeviceArgs {
    /// Request sizes.
    pub sizes: Vec<u64>,
    /// Requests (frames) per run.
    pub requests: u64,
    /// Runs per case (each alternated with a baseline run).
    pub runs: usize,
    /// Block: read, write; net: tx, rx.
    pub ops: Vec<Op>,
    /// Which guest.
    pub guest: GuestChoice,
    /// Which systems ("spry", "qemu").
    pub systems: Vec<String>,
    /// QEMU's accelerator (kvm; tcg only to check the harness where KVM cannot run it).
    pub qemu_accel: String,
    /// The QEMU binary (default: `find_qemu`).
    pub qemu: Option<PathBuf>,
    /// Net with the probe: QEMU with vhost-net as a further peer.
    pub qemu_vhost: bool,
}

impl DeviceArgs {
    pub(crate) fn wants(&self, system: &str) -> bool {
        self.systems.iter().any(|s| s.eq_ignore_ascii_case(system))
    }
}

pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);
/// Scratch disk size: 64 MiB, enough for 1 MiB requests to wrap 64 times.
pub(crate) const DISK_BYTES: u64 = 64 << 20;

pub(crate) fn make_disk(path: &Path) -> Result<(), DeviceError> {
    // Non-zero data, so reads copy real pages from the page cache.
    let chunk: Vec<u8> = (0..=250u8).cycle().take(1 << 20).collect();
    let copies = usize::try_from(DISK_BYTES >> 20).unwrap_or(1);
    std::fs::write(path, chunk.repeat(copies)).map_err(|source| DeviceError::Scratch {
        path: path.to_owned(),
        source,
    })
}

/// Parses "4096", "64K", "1M" style sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64K, 1M)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        other => return Err(format!("'{text}': unknown unit '{other}' (use K or M)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn guest(env: &Env, args: &DeviceArgs) -> Result<Guest, DeviceError> {
    let guest = match args.guest {
        GuestChoice::Auto => Guest::for_host(env.host.kvm, &env.build, 128),
        GuestChoice::Probe => Guest::probe(&env.build, 128, "chosen with --guest probe".into()),
        GuestChoice::Linux => Guest::linux(&env.build, 128),
    };
    match guest.kind {
        GuestKind::Probe => env.ensure_probe()?,
        GuestKind::Linux => env.ensure_guest()?,
    }
    Ok(guest)
}

/// Runs the block benchmark.
pub fn block(env: &Env, args: &DeviceArgs) -> Result<DeviceReport, DeviceError> {
    check_ops(&args.ops, Device::Block)?;
    let guest = guest(env, args)?;
    match guest.kind {
        GuestKind::Probe => probe_driver::block(env, args, guest),
        GuestKind::Linux => linux_driver::block(env, args, guest),
    }
}

/// Runs the net benchmark.
pub fn net(env: &Env, args: &DeviceArgs) -> Result<DeviceReport, DeviceError> {
    check_ops(&args.ops, Device::Net)?;
    let guest = guest(env, args)?;
    match guest.kind {
        GuestKind::Probe => probe_driver::net(env, args, guest),
        GuestKind::Linux => linux_driver::net(env, args, guest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(elapsed_ms: f64, cpu_us: u64, loop_ns: u64) -> Run {
        Run {
            elapsed_ms,
            cpu_us,
            threads: vec![("spry".into(), loop_ns), ("spry-vcpu0".into(), 1)],
            stamp_ms: None,
        }
    }

    #[test]
    fn test_rates_and_cpu_per_request_from_medians() {
        let result = CaseResult {
            system: "spry".into(),
            subtract_baseline_time: false,
            case: Case {
                op: "read",
                size: 4096,
                requests: 1000,
            },
            runs: vec![
                run(100.0, 30_000, 9_000_000),
                run(50.0, 20_000, 5_000_000),
                run(200.0, 40_000, 7_000_000),
            ],
            baseline: vec![run(1.0, 10_000, 2_000_000)],
        };
        // Median 100 ms for 1000 requests.
        assert_eq!(result.requests_per_s(), Some(10_000.0));
        assert!((result.mib_per_s().unwrap() - 39.0625).abs() < 1e-9);
        // (30 000 - 10 000) µs over 1000 requests.
        assert_eq!(result.cpu_us_per_request(), Some(20.0));
        // (7 ms - 2 ms) over 1000 requests.
        assert_eq!(result.thread_us_per_request("spry"), Some(5.0));
    }

    fn case_on(system: &str, cpu_us: u64, loop_ns: u64) -> CaseResult {
        CaseResult {
            system: system.into(),
            subtract_baseline_time: false,
            case: Case {
                op: "read",
                size: 4096,
                requests: 1000,
            },
            runs: vec![run(100.0, cpu_us, loop_ns)],
            baseline: vec![run(1.0, 10_000, 2_000_000)],
        }
    }

    #[test]
    fn test_report_shows_what_seccomp_adds_per_request() {
        let report = DeviceReport {
            device: Device::Block,
            guest: Guest::probe(Path::new("/b"), 128, String::new()),
            // 30 µs and 5 µs of event loop per request with filters, 28 and 4.5 without.
            cases: vec![
                case_on(lineup::SPRY, 40_000, 7_000_000),
                case_on(lineup::SPRY_NO_SECCOMP, 38_000, 6_500_000),
            ],
            peers: Vec::new(),
            skipped: Vec::new(),
        };

        let text = report.render();

        let row = text
            .lines()
            .find(|l| l.starts_with("| read ") && l.contains("+2.00"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains("| 1.00x "), "{row}");
        assert!(row.contains("+0.50"), "{row}");
        // spry --no-seccomp's own row has the event loop column too.
        assert!(
            text.lines()
                .any(|l| l.starts_with("| spry --no-seccomp ") && l.contains("4.50")),
            "{text}"
        );
    }

    #[test]
    fn test_size_labels() {
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(1514), "1514 B");
    }

    #[test]
    fn test_parse_sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3G").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn test_parse_size_refuses_an_overflowing_size() {
        // 2^64 / 2^20 = 2^44 MiB is one past the largest u64 byte count.
        assert_eq!(
            parse_size("17592186044416M"),
            Err("'17592186044416M' is too large".to_owned())
        );
        assert_eq!(
            parse_size("17592186044415M"),
            Ok(u64::MAX - ((1 << 20) - 1))
        );
    }

    #[test]
    fn test_ops_of_the_other_device_are_refused() {
        assert!(check_ops(&[Op::Read, Op::Write], Device::Block).is_ok());
        let err = check_ops(&[Op::Tx, Op::Read], Device::Block).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--ops tx: not an operation of `block` (block: read, write; net: tx, rx)"
        );
        assert!(check_ops(&[Op::Write], Device::Net).is_err());
    }

    #[test]
    fn test_linux_runs_subtract_the_baseline_time() {
        let result = CaseResult {
            system: "QEMU".into(),
            subtract_baseline_time: true,
            case: Case {
                op: "read",
                size: 4096,
                requests: 100,
            },
            runs: vec![run(12.0, 0, 0)],
            baseline: vec![run(2.0, 0, 0)],
        };
        // (12 - 2) ms for 100 requests.
        assert_eq!(result.requests_per_s(), Some(10_000.0));
    }

    #[test]
    fn test_ratio_needs_both_values() {
        assert_eq!(ratio(Some(3.0), Some(2.0)).as_deref(), Some("1.50x"));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
