//! Issue 3's device benchmarks: requests per second and MiB/s through virtio-blk and
//! virtio-net, driven by the probe guest's `blkbench` / `netbench` modes, and the CPU
//! spry spends per request (its user + system time minus a run of the same guest
//! doing 0 requests).
//!
//! The probe writes the boot-timer byte before its first and after its last request,
//! so spry's log carries CLOCK_MONOTONIC stamps of both; the boot itself writes the
//! first one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::child::Measured;
use crate::cleanup;
use crate::clock::{monotonic_us, ms_between};
use crate::guest::{Guest, GuestKind};
use crate::procfs;
use crate::progress::Progress;
use crate::rawsock::{frame, RawSender, RawSocketError, ETH_P_PROBE};
use crate::report::table::{markdown_table, num};
use crate::setup::{Env, SetupError};
use crate::spry_log::parse_boot_timer;
use crate::stats::summarize;
use crate::systems::vm::{vm_config, vmm_command, write_json, Vmm};
use crate::systems::{run_helper, SystemError};

/// Errors of the device benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Setting up failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The guest cannot run this benchmark.
    #[error("the probe at {probe} has no probe.mode={mode} (it printed '{line}'): rebuild build/probe from a tree that has it (resources/probe)")]
    NoMode {
        /// The probe image.
        probe: PathBuf,
        /// The mode.
        mode: &'static str,
        /// What it said.
        line: String,
    },
    /// The guest's benchmark failed.
    #[error("{what}: the probe reported '{line}'")]
    GuestFailed {
        /// Which run.
        what: String,
        /// The failure line.
        line: String,
    },
    /// spry failed.
    #[error("{what}")]
    Run {
        /// Which run.
        what: String,
        /// Why.
        #[source]
        source: SystemError,
    },
    /// The scratch disk could not be made.
    #[error("cannot create the scratch disk {path}")]
    Disk {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Feeding the guest's receive queue failed.
    #[error(transparent)]
    Raw(#[from] RawSocketError),
    /// Linux-guest device benchmarks are not written yet.
    #[error("device benchmarks with the Linux guest are not implemented yet; on this host ({0}) use the probe guest")]
    LinuxNotImplemented(String),
}

/// Which device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Device {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
}

/// One benchmark row: an operation and a request size.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// "read", "write", "tx", "rx".
    pub op: &'static str,
    /// Request (frame) size, bytes.
    pub size: u64,
    /// Requests per run.
    pub requests: u64,
}

/// One run of a case (or of its 0-request baseline).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// First-request stamp to last-request stamp, ms.
    pub elapsed_ms: f64,
    /// spry's user + system CPU of the whole run, µs (wait4).
    pub cpu_us: u64,
    /// CPU per thread when the last request completed, ns (schedstat), by name.
    pub threads: Vec<(String, u64)>,
}

/// A case with its runs and its baseline runs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// What ran.
    pub case: Case,
    /// Runs doing `requests` requests.
    pub runs: Vec<Run>,
    /// The same guest doing 0 requests.
    pub baseline: Vec<Run>,
}

impl CaseResult {
    fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
        summarize(&values.collect::<Vec<_>>()).map(|s| s.median)
    }

    /// Median requests per second.
    pub fn requests_per_s(&self) -> Option<f64> {
        let ms = Self::median(self.runs.iter().map(|r| r.elapsed_ms))?;
        Some(self.case.requests as f64 / (ms / 1000.0).max(1e-9))
    }

    /// Median MiB/s.
    pub fn mib_per_s(&self) -> Option<f64> {
        Some(self.requests_per_s()? * self.case.size as f64 / (1024.0 * 1024.0))
    }

    /// spry's CPU per request beyond the baseline, µs.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        let loaded = Self::median(self.runs.iter().map(|r| r.cpu_us as f64))?;
        let idle = Self::median(self.baseline.iter().map(|r| r.cpu_us as f64))?;
        Some((loaded - idle) / self.case.requests.max(1) as f64)
    }

    /// CPU per request of the threads named `name` beyond the baseline, µs.
    pub fn thread_us_per_request(&self, name: &str) -> Option<f64> {
        let of = |runs: &[Run]| {
            Self::median(runs.iter().filter_map(|r| {
                let ns: u64 = r
                    .threads
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, ns)| ns)
                    .sum();
                (ns > 0).then_some(ns as f64 / 1000.0)
            }))
        };
        Some((of(&self.runs)? - of(&self.baseline)?) / self.case.requests.max(1) as f64)
    }
}

/// The results of one device benchmark.
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// Which device.
    pub device: Device,
    /// The guest.
    pub guest: Guest,
    /// Rows.
    pub cases: Vec<CaseResult>,
    /// Peers and why they did not run.
    pub peers: Vec<(String, String)>,
    /// Cases left out, and why.
    pub skipped: Vec<String>,
}

impl DeviceReport {
    /// The table.
    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .cases
            .iter()
            .map(|c| {
                let cell = |v: Option<f64>| v.map_or("–".into(), num);
                vec![
                    c.case.op.to_owned(),
                    size_label(c.case.size),
                    c.case.requests.to_string(),
                    c.runs.len().to_string(),
                    cell(c.requests_per_s()),
                    cell(c.mib_per_s()),
                    cell(c.cpu_us_per_request()),
                    cell(c.thread_us_per_request("spry")),
                    cell(c.thread_us_per_request("spry-vcpu0")),
                ]
            })
            .collect();
        let name = match self.device {
            Device::Block => "virtio-blk",
            Device::Net => "virtio-net",
        };
        let mut out = format!(
            "spry {name} benchmark: {} ({} vCPU, {} MiB), medians of alternated runs\n\n",
            self.guest.label(),
            self.guest.vcpus,
            self.guest.mem_mib
        );
        out.push_str(&markdown_table(
            &[
                "op",
                "size",
                "requests",
                "runs",
                "req/s",
                "MiB/s",
                "spry CPU µs/req",
                "event-loop thread µs/req",
                "vCPU thread µs/req",
            ],
            &rows,
        ));
        out.push_str(
            "\nCPU per request: spry's CPU time of a run minus that of the same guest doing 0 \
             requests, over the requests: the whole process from wait4, and per thread from \
             schedstat at the last request's stamp. The event-loop thread is spry's own device \
             work (queue processing, the host I/O, the interrupt). The vCPU thread runs the guest: \
             on PVM hosts KVM's emulator executes the probe's instructions there, and the probe \
             polls the used ring while it waits, so that column is close to the wall time of the \
             run and is the guest's cost, not spry's.\n",
        );
        for skipped in &self.skipped {
            out.push_str(&format!("\nskipped {skipped}\n"));
        }
        for (peer, reason) in &self.peers {
            out.push_str(&format!("\nnot compared: {peer}: {reason}\n"));
        }
        out
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

/// What to run.
#[derive(Debug, Clone)]
pub struct DeviceArgs {
    /// Request sizes.
    pub sizes: Vec<u64>,
    /// Requests (frames) per run.
    pub requests: u64,
    /// Runs per case (each alternated with a baseline run).
    pub runs: usize,
    /// Block: "read", "write"; net: "tx", "rx".
    pub ops: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(60);
/// The probe's command line for device runs.
const DEVICE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// The guest's MAC address.
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The source MAC of frames the host sends to the guest.
const HOST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Scratch disk size: 64 MiB, enough for 1 MiB requests to wrap 64 times.
const DISK_BYTES: u64 = 64 << 20;
/// Largest frame the probe's receive buffers take (2048 minus the virtio-net header).
const RX_MAX_FRAME: u64 = 1514;

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Feeds a running guest (the receive benchmark) and returns when it started.
type Feed<'a> = &'a dyn Fn(&mut Measured) -> Result<u64, DeviceError>;

/// One spry run of the probe in `mode` with `words` on its command line.
struct ProbeRun<'a> {
    env: &'a Env,
    guest: &'a Guest,
    dir: &'a Path,
    drives: serde_json::Value,
    nets: serde_json::Value,
}

impl ProbeRun<'_> {
    fn run(
        &self,
        what: &str,
        mode: &'static str,
        words: &str,
        marks: usize,
        feed: Option<Feed<'_>>,
    ) -> Result<Run, DeviceError> {
        // Not quiet: the bench modes' own lines ("rx ready", failures) are needed; they
        // are printed outside the timed window.
        let args = format!("{DEVICE_ARGS} probe.mode={mode} {words}");
        let config = self.dir.join(format!("{mode}.json"));
        let err = |source: SystemError| DeviceError::Run {
            what: what.to_owned(),
            source,
        };
        write_json(
            &config,
            &vm_config(self.guest, &args, self.drives.clone(), self.nets.clone()),
        )
        .map_err(err)?;
        let mut process = Measured::spawn(vmm_command(Vmm::Spry, &self.env.spry, &config), false)
            .map_err(|e| err(e.into()))?;
        let mut stamps = Vec::new();
        let mut fed_at = None;
        if let Some(feed) = feed {
            // Wait for the transmit part's end mark, then for the receive-ready line.
            self.wait_marks(&mut process, &mut stamps, marks - 1, mode, what)?;
            fed_at = Some(feed(&mut process)?);
        }
        self.wait_marks(&mut process, &mut stamps, marks, mode, what)?;
        let threads = procfs::thread_cpu_ns(process.pid());
        let exit = process.wait_exit(TIMEOUT).map_err(|e| err(e.into()))?;
        if let Some(line) = process.lines.iter().find(|l| l.text.contains(": FAIL")) {
            return Err(DeviceError::GuestFailed {
                what: what.to_owned(),
                line: line.text.clone(),
            });
        }
        crate::systems::check_exit("spry", &exit, &process).map_err(err)?;
        let end = stamps[marks - 1];
        let start = fed_at.unwrap_or(stamps[marks - 2]);
        Ok(Run {
            elapsed_ms: ms_between(start, end),
            cpu_us: exit.user_us + exit.system_us,
            threads,
        })
    }

    /// Collects boot-timer stamps until there are `count`.
    fn wait_marks(
        &self,
        process: &mut Measured,
        stamps: &mut Vec<u64>,
        count: usize,
        mode: &'static str,
        what: &str,
    ) -> Result<(), DeviceError> {
        while stamps.len() < count {
            let seen = stamps.len();
            let mut index = 0;
            let found = process.wait_for("a boot-timer stamp", TIMEOUT, |l| {
                let stamp = parse_boot_timer(&l.text)?.monotonic_us?;
                index += 1;
                (index > seen).then_some(stamp)
            });
            match found {
                Ok((stamp, _)) => stamps.push(stamp),
                Err(e) => {
                    return Err(self.explain(process, mode, what, e.into()));
                }
            }
        }
        Ok(())
    }

    fn explain(
        &self,
        process: &Measured,
        mode: &'static str,
        what: &str,
        source: SystemError,
    ) -> DeviceError {
        let lines = &process.lines;
        if let Some(l) = lines
            .iter()
            .find(|l| l.text.starts_with("probe: mode: FAIL"))
        {
            return DeviceError::NoMode {
                probe: self.guest.vmlinux.clone(),
                mode,
                line: l.text.clone(),
            };
        }
        if let Some(l) = lines.iter().find(|l| l.text.contains(": FAIL")) {
            return DeviceError::GuestFailed {
                what: what.to_owned(),
                line: l.text.clone(),
            };
        }
        DeviceError::Run {
            what: what.to_owned(),
            source,
        }
    }
}

fn make_disk(path: &Path) -> Result<(), DeviceError> {
    let err = |source| DeviceError::Disk {
        path: path.to_owned(),
        source,
    };
    // Non-zero data, so reads copy real pages from the page cache.
    let chunk: Vec<u8> = (0..=250u8).cycle().take(1 << 20).collect();
    let copies = usize::try_from(DISK_BYTES >> 20).unwrap_or(1);
    std::fs::write(path, chunk.repeat(copies)).map_err(err)
}

/// Parses "4096,64K,1M" style sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64K, 1M)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        other => return Err(format!("'{text}': unknown unit '{other}' (use K or M)")),
    };
    Ok(value * factor)
}

fn qemu_reason(guest: &Guest) -> String {
    match guest.kind {
        GuestKind::Probe => "QEMU's microvm cannot boot the probe guest here (no PVH note for the ELF; its firmware enters a bzImage through the 16-bit setup entry, which the probe does not implement); see `spry-bench compare` for the exact failure".into(),
        GuestKind::Linux => "not implemented yet for the Linux guest".into(),
    }
}

/// Runs the block benchmark.
pub fn block(env: &Env, args: &DeviceArgs) -> Result<DeviceReport, DeviceError> {
    let guest = probe_guest(env)?;
    let dir = env.scratch_dir("block")?;
    let disk = dir.join("disk.img");
    make_disk(&disk)?;
    let mut cases = Vec::new();
    let total = args.ops.len() * args.sizes.len() * (args.runs * 2 + 1);
    let mut progress = Progress::new("block", total);
    for op in &args.ops {
        let op: &'static str = if op == "write" { "write" } else { "read" };
        let probe = ProbeRun {
            env,
            guest: &guest,
            dir: &dir,
            drives: serde_json::json!([{
                "drive_id": "bench",
                "path_on_host": disk,
                "is_root_device": false,
                "is_read_only": op == "read",
            }]),
            nets: serde_json::json!([]),
        };
        for &size in &args.sizes {
            let case = Case {
                op,
                size,
                requests: args.requests,
            };
            let words = |n: u64| {
                format!("probe.bench_op={op} probe.bench_size={size} probe.bench_reqs={n}")
            };
            let what = format!("blkbench {op} {}", size_label(size));
            let mut result = CaseResult {
                case,
                runs: Vec::new(),
                baseline: Vec::new(),
            };
            progress.step(&what, true);
            probe.run(&what, "blkbench", &words(args.requests), 3, None)?;
            for _ in 0..args.runs {
                progress.step(&format!("{what} baseline"), false);
                result
                    .baseline
                    .push(probe.run(&what, "blkbench", &words(0), 3, None)?);
                progress.step(&what, false);
                result
                    .runs
                    .push(probe.run(&what, "blkbench", &words(args.requests), 3, None)?);
            }
            cases.push(result);
        }
    }
    progress.done();
    Ok(DeviceReport {
        device: Device::Block,
        peers: vec![("QEMU".into(), qemu_reason(&guest))],
        guest,
        cases,
        skipped: Vec::new(),
    })
}

fn probe_guest(env: &Env) -> Result<Guest, DeviceError> {
    env.ensure_probe()?;
    let guest = Guest::for_host(env.host.kvm, &env.build, 128);
    if guest.kind == GuestKind::Linux {
        return Err(DeviceError::LinuxNotImplemented(
            env.host.kvm.describe().into(),
        ));
    }
    Ok(guest)
}

/// A persistent tap, up, deleted on drop (and on interrupt).
struct TapGuard(String);

impl TapGuard {
    fn create(name: &str) -> Result<TapGuard, DeviceError> {
        cleanup::add_tap(name);
        let ip = PathBuf::from("ip");
        let run = |args: &[&str]| {
            run_helper(&ip, args)
                .map(|_| ())
                .map_err(|source| DeviceError::Run {
                    what: format!("creating tap {name}"),
                    source,
                })
        };
        run(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])?;
        run(&["link", "set", "dev", name, "up"])?;
        Ok(TapGuard(name.to_owned()))
    }

    fn counter(&self, name: &str) -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{name}", self.0))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        cleanup::delete_tap(&self.0);
    }
}

/// Runs the net benchmark.
pub fn net(env: &Env, args: &DeviceArgs) -> Result<DeviceReport, DeviceError> {
    let guest = probe_guest(env)?;
    let dir = env.scratch_dir("net")?;
    let tap = TapGuard::create(&format!("sbt{}", std::process::id() % 100_000))?;
    let probe = ProbeRun {
        env,
        guest: &guest,
        dir: &dir,
        drives: serde_json::json!([]),
        nets: serde_json::json!([{
            "iface_id": "eth0",
            "guest_mac": mac_text(GUEST_MAC),
            "host_dev_name": tap.0,
        }]),
    };
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    let mut progress = Progress::new(
        "net",
        args.ops.len() * args.sizes.len() * (args.runs * 2 + 1),
    );
    for op in &args.ops {
        let rx = op == "rx";
        let op: &'static str = if rx { "rx" } else { "tx" };
        for &size in &args.sizes {
            if rx && size > RX_MAX_FRAME {
                skipped.push(format!("rx {}: frames larger than the probe's {RX_MAX_FRAME}-byte receive buffers and the tap's MTU", size_label(size)));
                continue;
            }
            let what = format!("netbench {op} {}", size_label(size));
            let n = args.requests;
            let words = |count: u64| {
                if rx {
                    format!("probe.bench_size={size} probe.bench_frames=0 probe.bench_rx={count}")
                } else {
                    format!("probe.bench_size={size} probe.bench_frames={count}")
                }
            };
            let sender = if rx {
                Some(RawSender::open(&tap.0)?)
            } else {
                None
            };
            let feed = |count: u64| {
                let sender = sender.as_ref();
                let tap = &tap;
                move |p: &mut Measured| -> Result<u64, DeviceError> {
                    let ready = "probe: netbench rx ready";
                    p.wait_for(ready, TIMEOUT, |l| l.text.starts_with(ready).then_some(()))
                        .map_err(|e| DeviceError::Run {
                            what: "netbench rx".into(),
                            source: e.into(),
                        })?;
                    let started = monotonic_us();
                    if let Some(sender) = sender {
                        send_paced(sender, tap, count, size)?;
                    }
                    Ok(started)
                }
            };
            let run_one = |count: u64| -> Result<Run, DeviceError> {
                if rx && count > 0 {
                    let f = feed(count);
                    probe.run(&what, "netbench", &words(count), 4, Some(&f))
                } else {
                    probe.run(&what, "netbench", &words(count), 3, None)
                }
            };
            let mut result = CaseResult {
                case: Case {
                    op,
                    size,
                    requests: n,
                },
                runs: Vec::new(),
                baseline: Vec::new(),
            };
            progress.step(&what, true);
            run_one(n)?;
            for _ in 0..args.runs {
                progress.step(&format!("{what} baseline"), false);
                result.baseline.push(run_one(0)?);
                progress.step(&what, false);
                let before = tap.counter("rx_packets");
                result.runs.push(run_one(n)?);
                let delivered = tap.counter("rx_packets").saturating_sub(before);
                if !rx && delivered < n {
                    progress.note(&format!(
                        "{what}: the host saw {delivered} of {n} frames on {}",
                        tap.0
                    ));
                }
            }
            cases.push(result);
        }
    }
    progress.done();
    let peers = vec![("QEMU".to_owned(), qemu_reason(&guest))];
    Ok(DeviceReport {
        device: Device::Net,
        guest,
        cases,
        peers,
        skipped,
    })
}

/// Sends `count` frames to the guest, keeping at most 256 in the tap's queue.
fn send_paced(
    sender: &RawSender,
    tap: &TapGuard,
    count: u64,
    size: u64,
) -> Result<(), DeviceError> {
    let f = frame(
        GUEST_MAC,
        HOST_MAC,
        ETH_P_PROBE,
        usize::try_from(size).unwrap_or(1514),
    );
    let base = tap.counter("tx_packets");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut sent = 0;
    while sent < count {
        let taken = tap.counter("tx_packets").saturating_sub(base);
        if sent - taken.min(sent) < 256 {
            sender.send(&f)?;
            sent += 1;
        } else if std::time::Instant::now() > deadline {
            break;
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(elapsed_ms: f64, cpu_us: u64, loop_ns: u64) -> Run {
        Run {
            elapsed_ms,
            cpu_us,
            threads: vec![("spry".into(), loop_ns), ("spry-vcpu0".into(), 1)],
        }
    }

    #[test]
    fn test_rates_and_cpu_per_request_from_medians() {
        let result = CaseResult {
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
}
