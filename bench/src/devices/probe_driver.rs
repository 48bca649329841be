//! The probe guest's `blkbench` and `netbench` modes through spry: the probe writes
//! the boot-timer byte before its first and after its last request, so spry's log
//! carries CLOCK_MONOTONIC stamps of both (the boot itself writes the first one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::child::Measured;
use crate::cleanup;
use crate::clock::{monotonic_us, ms_between};
use crate::devices::{
    make_disk, size_label, Case, CaseResult, Device, DeviceArgs, DeviceError, DeviceReport, Run,
    TIMEOUT,
};
use crate::guest::Guest;
use crate::procfs;
use crate::progress::Progress;
use crate::rawsock::{frame, RawSender, ETH_P_PROBE};
use crate::setup::Env;
use crate::spry_log::parse_boot_timer;
use crate::systems::vm::{vm_config, vmm_command, write_json, Vmm};
use crate::systems::{run_helper, SystemError};

/// The probe's command line for device runs: not quiet, since the bench modes' own
/// lines ("rx ready", failures) are needed; they are printed outside the timed window.
const DEVICE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// The guest's MAC address.
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The source MAC of frames the host sends to the guest.
const HOST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Largest frame the probe's receive buffers take (2048 minus the virtio-net header).
const RX_MAX_FRAME: u64 = 1514;
/// Why QEMU is not a peer here.
const QEMU_REASON: &str = "QEMU boots the probe guest (through its PVH entry, see `spry-bench \
    compare`), but the probe's virtio driver only drives spry's virtio-mmio devices (version \
    2, VendorID \"SPRY\"); QEMU's microvm offers legacy version-1 devices of vendor \"QEMU\" \
    (the probe reports `virtio-mmio: FAIL 0xfeb00e00: magic 0x74726976 version 1 vendor \
    0x554d4551`), so the block and network benchmarks run spry alone on PVM hosts";

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

/// Runs the block benchmark.
pub fn block(env: &Env, args: &DeviceArgs, guest: Guest) -> Result<DeviceReport, DeviceError> {
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
                system: "spry".into(),
                subtract_baseline_time: false,
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
        peers: vec![("QEMU".into(), QEMU_REASON.to_owned())],
        guest,
        cases,
        skipped: Vec::new(),
    })
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
pub fn net(env: &Env, args: &DeviceArgs, guest: Guest) -> Result<DeviceReport, DeviceError> {
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
                skipped.push(format!(
                    "rx {}: frames larger than the probe's {RX_MAX_FRAME}-byte receive buffers \
                     and the tap's MTU",
                    size_label(size)
                ));
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
                system: "spry".into(),
                subtract_baseline_time: false,
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
    let peers = vec![("QEMU".to_owned(), QEMU_REASON.to_owned())];
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
