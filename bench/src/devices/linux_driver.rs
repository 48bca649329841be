//! The Linux guest on hosts with hardware virtualization: busybox `dd` against a
//! second virtio disk, and `dd | nc` / `nc -l` over virtio-net to a TCP peer in a
//! network namespace of our own, through spry and QEMU alike (the same VMM command
//! lines as the probe's, see [`crate::devices::lineup`]). Each run is timed by
//! console lines the guest prints around the work, minus a 0-request run.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::child::Measured;
use crate::clock::ms_between;
use crate::devices::lineup::{lineup, table_order, tap_name, total_steps, Devices, System};
use crate::devices::netns::{guest_ip_arg, NetNs, HOST_IP, PORT};
use crate::devices::{
    alternate, make_disk, size_label, Case, CaseResult, Device, DeviceArgs, DeviceError,
    DeviceReport, Op, Run, DISK_BYTES, TIMEOUT,
};
use crate::guest::Guest;
use crate::procfs;
use crate::progress::Progress;
use crate::setup::Env;
use crate::systems::{check_exit, SystemError};

/// Printed by the guest right before the timed work.
const START: &str = "spry-bench: start";
/// Printed by the guest right after it.
const END: &str = "spry-bench: end";
/// Printed when the work failed.
const FAILED: &str = "spry-bench: FAILED";

/// A VMM under test with what its runs need.
struct Target<'a> {
    system: System,
    guest: &'a Guest,
    dir: &'a Path,
    netns: Option<&'a NetNs>,
}

type Feed<'a> = &'a dyn Fn(&mut Measured) -> Result<u64, DeviceError>;

fn split(cmd: &Command) -> (OsString, Vec<OsString>) {
    (
        cmd.get_program().to_owned(),
        cmd.get_args().map(ToOwned::to_owned).collect(),
    )
}

impl Target<'_> {
    fn command(&self, boot_args: &str, devices: Devices<'_>) -> Result<Command, DeviceError> {
        let config = self.dir.join("linux-device.json");
        let (program, args) = split(
            &self
                .system
                .command(self.guest, &config, boot_args, devices)?,
        );
        let mut cmd = match self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(ns.exec_prefix()).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args);
        Ok(cmd)
    }

    /// Boots the guest running `cmd`, times START to END (or from what `feed`
    /// returns), and takes the VMM's CPU.
    fn run(
        &self,
        what: &str,
        boot_args: &str,
        devices: Devices<'_>,
        feed: Option<Feed<'_>>,
    ) -> Result<Run, DeviceError> {
        let name = &self.system.name;
        let err = |source: SystemError| DeviceError::Run {
            what: format!("{what} on {name}"),
            source,
        };
        let mut process =
            Measured::spawn(self.command(boot_args, devices)?, false).map_err(|e| err(e.into()))?;
        let ((), mut start) = process
            .wait_for(START, TIMEOUT, |l| {
                (l.text.trim_end() == START).then_some(())
            })
            .map_err(|e| err(e.into()))?;
        if let Some(feed) = feed {
            start = feed(&mut process)?;
        }
        let ((), end) = process
            .wait_for(END, TIMEOUT, |l| (l.text.trim_end() == END).then_some(()))
            .map_err(|e| err(e.into()))?;
        let threads = procfs::thread_cpu_ns(process.pid());
        let exit = process.wait_exit(TIMEOUT).map_err(|e| err(e.into()))?;
        if let Some(line) = process.lines.iter().find(|l| l.text.contains(FAILED)) {
            return Err(DeviceError::GuestFailed {
                what: format!("{what} on {name}"),
                line: line.text.clone(),
            });
        }
        check_exit(name, &exit, &process).map_err(err)?;
        Ok(Run {
            elapsed_ms: ms_between(start, end),
            cpu_us: exit.user_us + exit.system_us,
            threads,
            stamp_ms: None,
        })
    }
}

/// The targets that run, and the peers that cannot (with the reason).
type Lineup<'a> = (Vec<Target<'a>>, Vec<(String, String)>);

/// spry and, where it boots the guest, QEMU (its own tap backend: vhost-net is a
/// probe-only peer); with the peers that cannot run.
fn targets<'a>(
    env: &Env,
    args: &DeviceArgs,
    guest: &'a Guest,
    dir: &'a Path,
    netns: Option<&'a NetNs>,
) -> Result<Lineup<'a>, DeviceError> {
    let (systems, peers) = lineup(args, &env.spry, guest, false)?;
    let targets = systems
        .into_iter()
        .map(|system| Target {
            system,
            guest,
            dir,
            netns,
        })
        .collect();
    Ok((targets, peers))
}

/// Runs `case` on every target, alternated (see [`alternate`]).
fn measure(
    targets: &[Target<'_>],
    case: &Case,
    runs: usize,
    progress: &mut Progress,
    run: &dyn Fn(&Target<'_>, u64) -> Result<Run, DeviceError>,
) -> Result<Vec<CaseResult>, DeviceError> {
    let names: Vec<String> = targets.iter().map(|t| t.system.name.clone()).collect();
    alternate(&names, case, runs, true, progress, &|i, n| {
        run(&targets[i], n)
    })
}

/// The bench disk is the virtio disk of DISK_BYTES (the root file system is smaller).
fn find_disk() -> String {
    format!(
        "B=; for d in /sys/block/vd*; do [ \"$(cat $d/size)\" = {} ] && B=/dev/${{d##*/}}; done; \
         [ -n \"$B\" ] || echo {FAILED}: no bench disk",
        DISK_BYTES / 512
    )
}

/// The guest's block command: `n` direct dd requests of `size` bytes.
pub fn block_command(op: Op, size: u64, n: u64) -> String {
    let io = if op == Op::Write {
        "if=/dev/zero of=$B oflag=direct"
    } else {
        "if=$B of=/dev/null iflag=direct"
    };
    format!(
        "{}; echo {START}; dd {io} bs={size} count={n} || echo {FAILED}: dd; echo {END}",
        find_disk()
    )
}

/// Runs the block benchmark with the Linux guest.
pub fn block(env: &Env, args: &DeviceArgs, guest: Guest) -> Result<DeviceReport, DeviceError> {
    let dir = env.scratch_dir("linux-block")?;
    let disk = dir.join("disk.img");
    make_disk(&disk)?;
    let (targets, peers) = targets(env, args, &guest, &dir, None)?;
    let mut progress = Progress::new("block", total_steps(args, targets.len()));
    let mut cases = Vec::new();
    for &op in &args.ops {
        for &size in &args.sizes {
            // Every request to a new place on the disk.
            let requests = args.requests.min(DISK_BYTES / size.max(1)).max(1);
            let case = Case {
                op: op.name(),
                size,
                requests,
            };
            let devices = Devices {
                disk: Some((&disk, op == Op::Read)),
                tap: None,
            };
            let run = |target: &Target<'_>, n: u64| {
                let boot_args = Guest::linux_run_args(&block_command(op, size, n), "");
                target.run(
                    &format!("dd {} {}", op.name(), size_label(size)),
                    &boot_args,
                    devices,
                    None,
                )
            };
            cases.extend(measure(&targets, &case, args.runs, &mut progress, &run)?);
        }
    }
    progress.done();
    cases.sort_by_key(|c| table_order(&c.system));
    Ok(DeviceReport {
        device: Device::Block,
        guest,
        cases,
        peers,
        skipped: Vec::new(),
    })
}

/// The guest's sending command: `n` writes of `size` bytes into a TCP connection.
pub fn tx_command(size: u64, n: u64) -> String {
    format!(
        "echo {START}; dd if=/dev/zero bs={size} count={n} 2>/dev/null | nc {HOST_IP} {PORT} \
         || echo {FAILED}: nc; echo {END}"
    )
}

/// The guest's receiving command: one TCP connection read to its end.
pub fn rx_command() -> String {
    format!("echo {START}; nc -l -p {PORT} >/dev/null || echo {FAILED}: nc; echo {END}")
}

/// Runs the net benchmark with the Linux guest.
pub fn net(env: &Env, args: &DeviceArgs, guest: Guest) -> Result<DeviceReport, DeviceError> {
    let dir = env.scratch_dir("linux-net")?;
    let id = std::process::id();
    let netns = NetNs::create(&format!("sbns{id}"), &tap_name())?;
    let (targets, peers) = targets(env, args, &guest, &dir, Some(&netns))?;
    let mut progress = Progress::new("net", total_steps(args, targets.len()));
    let devices = Devices {
        disk: None,
        tap: Some(&netns.tap),
    };
    let mut cases = Vec::new();
    for &op in &args.ops {
        let rx = op == Op::Rx;
        let op = op.name();
        for &size in &args.sizes {
            let case = Case {
                op,
                size,
                requests: args.requests,
            };
            let what = format!("nc {op} {}", size_label(size));
            let run = |target: &Target<'_>, n: u64| -> Result<Run, DeviceError> {
                if rx {
                    let boot_args = Guest::linux_run_args(&rx_command(), &guest_ip_arg());
                    let feed = |_: &mut Measured| netns.source(n, size, TIMEOUT);
                    return target.run(&what, &boot_args, devices, Some(&feed));
                }
                let boot_args = Guest::linux_run_args(&tx_command(size, n), &guest_ip_arg());
                let sink = netns.sink(TIMEOUT);
                let result = target.run(&what, &boot_args, devices, None);
                let received = sink.join().unwrap_or(Ok(0));
                let run = result?;
                match received {
                    Ok(bytes) if bytes == n * size => Ok(run),
                    Ok(bytes) => Err(DeviceError::GuestFailed {
                        what: format!("{what} on {}", target.system.name),
                        line: format!("the host received {bytes} of {} bytes", n * size),
                    }),
                    Err(e) => Err(e),
                }
            };
            cases.extend(measure(&targets, &case, args.runs, &mut progress, &run)?);
        }
    }
    progress.done();
    cases.sort_by_key(|c| table_order(&c.system));
    Ok(DeviceReport {
        device: Device::Net,
        guest,
        cases,
        peers,
        skipped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_block_command_reads_the_bench_disk_directly() {
        let cmd = block_command(Op::Read, 4096, 10);
        assert!(cmd.contains("= 131072 ]"), "{cmd}");
        assert!(
            cmd.contains("dd if=$B of=/dev/null iflag=direct bs=4096 count=10"),
            "{cmd}"
        );
        assert!(cmd.ends_with("echo spry-bench: end"), "{cmd}");
    }

    #[test]
    fn test_tx_command_pipes_dd_into_nc() {
        assert!(tx_command(65536, 3)
            .contains("dd if=/dev/zero bs=65536 count=3 2>/dev/null | nc 10.213.0.1 5201"));
    }
}
