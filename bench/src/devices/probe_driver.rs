//! The probe guest's `blkbench` and `netbench` modes under spry and QEMU (microvm,
//! the same vmlinux through its PVH entry, QEMU's virtio-mmio devices in their
//! modern form). The probe times its requests itself with kvmclock and prints the
//! time on the line it always prints after them; spry's boot-timer stamps of the same
//! requests are kept as a check of that clock.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child::Measured;
use crate::cleanup;
use crate::clock::ms_between;
use crate::devices::lineup::{
    lineup, table_order, tap_name, total_steps, Devices, Engine, System, GUEST_MAC,
};
use crate::devices::qemu_args::NetBackend;
use crate::devices::{
    alternate, make_disk, size_label, Case, Device, DeviceArgs, DeviceError, DeviceReport, Op, Run,
    TIMEOUT,
};
use crate::guest::Guest;
use crate::procfs;
use crate::progress::Progress;
use crate::rawsock::{frame, RawSender, ETH_P_PROBE};
use crate::setup::Env;
use crate::spry_log::parse_boot_timer;
use crate::systems::{check_exit, run_helper, SystemError};

/// The probe's command line for device runs: not quiet, since the bench modes' own
/// lines ("rx ready", failures) are needed; they are printed outside the timed part.
const DEVICE_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// The source MAC of frames the host sends to the guest.
const HOST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Largest frame the probe's receive buffers take (2048 minus the virtio-net header).
const RX_MAX_FRAME: u64 = 1514;
/// The lines the probe prints after its timed part (also with probe.quiet=1).
const BLK_DONE: &str = "probe: blkbench done ";
const TX_DONE: &str = "probe: netbench done ";
const RX_DONE: &str = "probe: netbench rx done ";

/// The probe's line after its timed part: `<prefix><count> ... [in <ns> ns (kvmclock...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Done {
    /// Requests (frames) done.
    count: u64,
    /// kvmclock from the first request to the last (rx: the first frame to the last);
    /// `None` from a probe without kvmclock.
    ns: Option<u64>,
}

fn parse_done(text: &str, prefix: &str) -> Option<Done> {
    let rest = text.strip_prefix(prefix)?;
    let count = rest.split_whitespace().next()?.parse().ok()?;
    let ns = rest
        .split_once(" in ")
        .and_then(|(_, t)| t.split_once(" ns"))
        .and_then(|(n, _)| n.parse().ok());
    Some(Done { count, ns })
}

/// The requests' time from the probe's clock, ms. The receive side is timed from the
/// first frame to the last, `count - 1` intervals, so it is scaled to `count`.
fn clock_ms(done: Done, rx: bool) -> Option<f64> {
    let ms = done.ns? as f64 / 1e6;
    Some(if rx && done.count > 1 {
        ms * done.count as f64 / (done.count - 1) as f64
    } else {
        ms
    })
}

/// Feeds a running guest (the receive benchmark).
type Feed<'a> = &'a dyn Fn(&mut Measured) -> Result<(), DeviceError>;

/// Runs of the probe in one case.
struct ProbeRun<'a> {
    guest: &'a Guest,
    dir: &'a Path,
    devices: Devices<'a>,
}

impl ProbeRun<'_> {
    fn command(
        &self,
        system: &System,
        boot_args: &str,
        mode: &str,
    ) -> Result<Command, DeviceError> {
        let config = self.dir.join(format!("{mode}.json"));
        system.command(self.guest, &config, boot_args, self.devices)
    }

    /// One boot of the probe in `mode` with `words`, timed by its `done` line.
    fn run(
        &self,
        system: &System,
        what: &str,
        mode: &'static str,
        words: &str,
        done: &'static str,
        feed: Option<Feed<'_>>,
    ) -> Result<Run, DeviceError> {
        let boot_args = format!("{DEVICE_ARGS} probe.mode={mode} {words}");
        let what = format!("{what} on {}", system.name);
        let err = |source: SystemError| DeviceError::Run {
            what: what.clone(),
            source,
        };
        let mut process = Measured::spawn(self.command(system, &boot_args, mode)?, false)
            .map_err(|e| err(e.into()))?;
        let rx = feed.is_some();
        if let Some(feed) = feed {
            feed(&mut process)?;
        }
        let finished = process.wait_for(done, TIMEOUT, |l| parse_done(&l.text, done));
        let finished = match finished {
            Ok((finished, _)) => finished,
            Err(e) => return Err(self.explain(&process, mode, &what, e.into())),
        };
        // Right after the timed part: the thread split of the CPU (the process total
        // comes from wait4 below).
        let mut threads = procfs::thread_cpu_ns(process.pid());
        if let Engine::Qemu {
            net: NetBackend::Vhost,
            ..
        } = system.engine
        {
            // A kernel thread outside QEMU's thread group on kernels before 6.4.
            let ns = procfs::vhost_kthread_ns(process.pid());
            if ns > 0 {
                threads.push(("vhost kernel thread".into(), ns));
            }
        }
        let exit = process.wait_exit(TIMEOUT).map_err(|e| err(e.into()))?;
        if let Some(line) = process.lines.iter().find(|l| l.text.contains(": FAIL")) {
            return Err(DeviceError::GuestFailed {
                what,
                line: line.text.clone(),
            });
        }
        check_exit(&system.name, &exit, &process).map_err(err)?;
        // spry's stamps: boot, first request, last request (rx: then the last frame).
        let stamps: Vec<u64> = process
            .lines
            .iter()
            .filter_map(|l| parse_boot_timer(&l.text)?.monotonic_us)
            .collect();
        let stamp_ms = (!rx && stamps.len() >= 3).then(|| ms_between(stamps[1], stamps[2]));
        let elapsed_ms =
            clock_ms(finished, rx)
                .or(stamp_ms)
                .ok_or_else(|| DeviceError::GuestFailed {
                    what: what.clone(),
                    line: format!(
                    "the probe printed no kvmclock time (no KVM_FEATURE_CLOCKSOURCE2 in CPUID?) \
                     and {} logs no boot-timer stamps",
                    system.name
                ),
                })?;
        let vhost_us = threads
            .iter()
            .filter(|(n, _)| n == "vhost kernel thread")
            .map(|(_, ns)| ns / 1000)
            .sum::<u64>();
        Ok(Run {
            elapsed_ms,
            cpu_us: exit.user_us + exit.system_us + vhost_us,
            threads,
            stamp_ms,
        })
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
    let (systems, peers) = lineup(args, &env.spry, &guest, false)?;
    let names: Vec<String> = systems.iter().map(|s| s.name.clone()).collect();
    let mut cases = Vec::new();
    let mut progress = Progress::new("block", total_steps(args, systems.len()));
    for &op in &args.ops {
        let probe = ProbeRun {
            guest: &guest,
            dir: &dir,
            devices: Devices {
                disk: Some((&disk, op == Op::Read)),
                tap: None,
            },
        };
        let op = op.name();
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
            let run = |i: usize, n: u64| {
                probe.run(&systems[i], &what, "blkbench", &words(n), BLK_DONE, None)
            };
            cases.extend(alternate(
                &names,
                &case,
                args.runs,
                false,
                &mut progress,
                &run,
            )?);
        }
    }
    progress.done();
    cases.sort_by_key(|c| table_order(&c.system));
    Ok(DeviceReport {
        device: Device::Block,
        peers,
        guest,
        cases,
        skipped: Vec::new(),
    })
}

/// A persistent tap, up, deleted on drop (and on interrupt).
struct TapGuard(String);

impl TapGuard {
    fn create(name: &str) -> Result<TapGuard, DeviceError> {
        let ip = PathBuf::from("ip");
        let run = |args: &[&str]| {
            run_helper(&ip, args)
                .map(|_| ())
                .map_err(|source| DeviceError::Run {
                    what: format!("creating tap {name}"),
                    source,
                })
        };
        cleanup::creating(|| {
            cleanup::add_tap(name);
            run(&["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])?;
            run(&["link", "set", "dev", name, "up"])?;
            Ok(TapGuard(name.to_owned()))
        })
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
    let tap = TapGuard::create(&tap_name())?;
    let (systems, peers) = lineup(args, &env.spry, &guest, args.qemu_vhost)?;
    let names: Vec<String> = systems.iter().map(|s| s.name.clone()).collect();
    let probe = ProbeRun {
        guest: &guest,
        dir: &dir,
        devices: Devices {
            disk: None,
            tap: Some(&tap.0),
        },
    };
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    let mut progress = Progress::new("net", total_steps(args, systems.len()));
    for &op in &args.ops {
        let rx = op == Op::Rx;
        let op = op.name();
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
                move |p: &mut Measured| -> Result<(), DeviceError> {
                    let ready = "probe: netbench rx ready";
                    p.wait_for(ready, TIMEOUT, |l| l.text.starts_with(ready).then_some(()))
                        .map_err(|e| DeviceError::Run {
                            what: "netbench rx".into(),
                            source: e.into(),
                        })?;
                    if let Some(sender) = sender {
                        send_paced(sender, tap, count, size)?;
                    }
                    Ok(())
                }
            };
            let notes = RefCell::new(Vec::new());
            let run = |i: usize, count: u64| -> Result<Run, DeviceError> {
                let system = &systems[i];
                if rx && count > 0 {
                    let f = feed(count);
                    return probe.run(system, &what, "netbench", &words(count), RX_DONE, Some(&f));
                }
                let before = tap.counter("rx_packets");
                let run = probe.run(system, &what, "netbench", &words(count), TX_DONE, None)?;
                let delivered = tap.counter("rx_packets").saturating_sub(before);
                if delivered < count {
                    notes.borrow_mut().push(format!(
                        "{what} on {}: the host saw {delivered} of {count} frames on {}",
                        system.name, tap.0
                    ));
                }
                Ok(run)
            };
            let case = Case {
                op,
                size,
                requests: n,
            };
            cases.extend(alternate(
                &names,
                &case,
                args.runs,
                false,
                &mut progress,
                &run,
            )?);
            for note in notes.take() {
                progress.note(&note);
            }
        }
    }
    progress.done();
    cases.sort_by_key(|c| table_order(&c.system));
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
    use crate::systems::qemu::Qemu;

    #[test]
    fn test_done_lines_with_and_without_the_guest_clock() {
        assert_eq!(
            parse_done(
                "probe: blkbench done 2000 requests 4096 bytes in 86333424 ns (kvmclock)",
                BLK_DONE
            ),
            Some(Done {
                count: 2000,
                ns: Some(86_333_424)
            })
        );
        assert_eq!(
            parse_done("probe: netbench done 0 frames 64 bytes", TX_DONE),
            Some(Done { count: 0, ns: None })
        );
        let rx = parse_done(
            "probe: netbench rx done 1000 frames 64000 bytes in 9990000 ns (kvmclock, frame 1 to \
             1000)",
            RX_DONE,
        );
        assert_eq!(
            rx,
            Some(Done {
                count: 1000,
                ns: Some(9_990_000)
            })
        );
        assert_eq!(
            parse_done("probe: netbench rx done 5 frames", TX_DONE),
            None
        );
        assert_eq!(parse_done("probe: blkbench done x", BLK_DONE), None);
    }

    #[test]
    fn test_receive_time_is_scaled_from_intervals_to_frames() {
        let done = Done {
            count: 1000,
            ns: Some(9_990_000),
        };
        // 999 intervals in 9.99 ms: 10 µs each, 10 ms for 1000 frames.
        assert!((clock_ms(done, true).unwrap() - 10.0).abs() < 1e-9);
        assert!((clock_ms(done, false).unwrap() - 9.99).abs() < 1e-9);
        assert_eq!(clock_ms(Done { count: 3, ns: None }, false), None);
    }

    fn args_of(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn test_qemu_gets_the_same_disk_and_tap_as_modern_virtio_mmio_devices() {
        let guest = Guest::probe(Path::new("/b"), 128, String::new());
        let qemu = System {
            name: "QEMU".into(),
            engine: Engine::Qemu {
                qemu: Qemu::new("qemu".into(), guest.clone(), TIMEOUT),
                net: NetBackend::Tap,
            },
        };
        let disk = Path::new("/tmp/d.img");
        let probe = ProbeRun {
            guest: &guest,
            dir: Path::new("/nonexistent"),
            devices: Devices {
                disk: Some((disk, false)),
                tap: Some("sbt7"),
            },
        };
        let cmd = probe
            .command(&qemu, "console=ttyS0 probe.mode=blkbench", "blkbench")
            .unwrap();
        let args = args_of(&cmd);
        let at = |v: &str| args.iter().position(|a| a == v);
        let modern = at("virtio-mmio.force-legacy=false").unwrap();
        let drive = at("id=d0,file=/tmp/d.img,format=raw,if=none,cache=writeback").unwrap();
        let netdev = at("tap,id=n0,ifname=sbt7,script=no,downscript=no,vhost=off").unwrap();
        let append = at("-append").unwrap();
        assert!(
            modern < drive && drive < netdev && netdev < append,
            "{args:?}"
        );
        assert!(args.contains(
            &"virtio-net-device,netdev=n0,mac=06:00:00:00:00:02,bus=virtio-mmio-bus.0".to_owned()
        ));
        assert_eq!(args[append + 1], "console=ttyS0 probe.mode=blkbench");
        assert_eq!(cmd.get_program(), "qemu");
    }
}
