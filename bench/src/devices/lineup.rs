//! The VMMs of a device benchmark and their command lines, the same for the probe
//! and the Linux guest: spry with a JSON config and QEMU (microvm) with the flags of
//! [`qemu_args`], each given the same disk file (writeback caching on both) or the
//! same kind of tap.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::devices::qemu_args::{self, NetBackend};
use crate::devices::{DeviceArgs, DeviceError, TIMEOUT};
use crate::guest::Guest;
use crate::systems::qemu::{qemu_binary, Qemu};
use crate::systems::vm::{vm_config, vmm_command, write_json, Vmm};

/// The guest's MAC address.
pub(crate) const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0x00, 0x00, 0x00, 0x02];

/// "06:00:00:00:00:02".
pub(crate) fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The benchmark's tap: `sbt` and the last digits of our pid (an interface name has
/// at most 15 characters).
pub(crate) fn tap_name() -> String {
    format!("sbt{}", std::process::id() % 100_000)
}

/// spry's name in tables.
pub(crate) const SPRY: &str = "spry";
/// spry run with `--no-seccomp` (`--systems spry-no-seccomp`), in tables.
pub(crate) const SPRY_NO_SECCOMP: &str = "spry --no-seccomp";

/// Whether the system named `name` in tables is spry (with its filters or without);
/// its main thread, the event loop, is named "spry" either way.
pub(crate) fn is_spry(name: &str) -> bool {
    name == SPRY || name == SPRY_NO_SECCOMP
}

/// Where `name`'s rows go in the tables: spry's first, then spry --no-seccomp's,
/// then the peers' (in the order they ran).
pub(crate) fn table_order(name: &str) -> u8 {
    match name {
        SPRY => 0,
        SPRY_NO_SECCOMP => 1,
        _ => 2,
    }
}

/// What the guest is given besides its root disk (the Linux guest's).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Devices<'a> {
    /// The bench disk and whether it is read-only.
    pub disk: Option<(&'a Path, bool)>,
    /// The tap.
    pub tap: Option<&'a str>,
}

/// The drives and network interfaces spry gets for `devices`, as in QEMU's
/// [`qemu_args::block_args`] and [`qemu_args::net_args`]: `Writeback` is QEMU's
/// `cache=writeback`.
fn spry_devices(devices: Devices<'_>) -> (serde_json::Value, serde_json::Value) {
    let drives = match devices.disk {
        Some((path, read_only)) => serde_json::json!([{
            "drive_id": "bench",
            "path_on_host": path,
            "is_root_device": false,
            "is_read_only": read_only,
            "cache_type": "Writeback",
        }]),
        None => serde_json::json!([]),
    };
    let nets = match devices.tap {
        Some(tap) => serde_json::json!([{
            "iface_id": "eth0",
            "guest_mac": mac_text(GUEST_MAC),
            "host_dev_name": tap,
        }]),
        None => serde_json::json!([]),
    };
    (drives, nets)
}

/// spry's config booting `guest` with `boot_args` and `devices`.
pub(crate) fn spry_config(
    guest: &Guest,
    boot_args: &str,
    devices: Devices<'_>,
) -> serde_json::Value {
    let (drives, nets) = spry_devices(devices);
    vm_config(guest, boot_args, drives, nets)
}

/// QEMU's arguments for `devices` (after its root disk, if the guest has one).
pub(crate) fn qemu_devices(devices: Devices<'_>, net: NetBackend) -> Vec<String> {
    let mut args = qemu_args::common_args();
    if let Some((path, read_only)) = devices.disk {
        args.extend(qemu_args::block_args(path, read_only));
    }
    if let Some(tap) = devices.tap {
        args.extend(qemu_args::net_args(tap, &mac_text(GUEST_MAC), net));
    }
    args
}

/// Which VMM boots the guest.
#[derive(Debug)]
pub(crate) enum Engine {
    /// spry (its binary), with its seccomp filters on (the default) or
    /// `--no-seccomp`.
    Spry {
        /// The binary.
        binary: PathBuf,
        /// Whether its filters are on.
        seccomp: bool,
    },
    /// QEMU with its network backend.
    Qemu {
        /// QEMU booting the guest.
        qemu: Qemu,
        /// How its virtio-net reaches the tap.
        net: NetBackend,
    },
}

/// A VMM under test.
#[derive(Debug)]
pub(crate) struct System {
    /// The name in tables ("spry", "QEMU", "QEMU vhost").
    pub name: String,
    /// How it runs.
    pub engine: Engine,
}

impl System {
    /// The command booting `guest` with `boot_args` and `devices`; spry's config is
    /// written to `config`.
    pub fn command(
        &self,
        guest: &Guest,
        config: &Path,
        boot_args: &str,
        devices: Devices<'_>,
    ) -> Result<Command, DeviceError> {
        match &self.engine {
            Engine::Spry { binary, seccomp } => {
                write_json(config, &spry_config(guest, boot_args, devices)).map_err(|source| {
                    DeviceError::Run {
                        what: "writing the spry config".into(),
                        source,
                    }
                })?;
                let mut cmd = vmm_command(Vmm::Spry, binary, config);
                if !seccomp {
                    cmd.arg("--no-seccomp");
                }
                Ok(cmd)
            }
            Engine::Qemu { qemu, net } => {
                Ok(qemu.command_with(boot_args, &qemu_devices(devices, *net)))
            }
        }
    }
}

/// The systems that run, and the peers that cannot (with the reason).
pub(crate) type Lineup = (Vec<System>, Vec<(String, String)>);

/// spry and, if asked for and able to boot `guest`, QEMU (and, with `vhost`, QEMU
/// with vhost-net where /dev/vhost-net exists); with the peers that cannot run and
/// why.
pub(crate) fn lineup(
    args: &DeviceArgs,
    spry: &Path,
    guest: &Guest,
    vhost: bool,
) -> Result<Lineup, DeviceError> {
    let mut systems = Vec::new();
    let mut peers = Vec::new();
    // spry as users run it, and (`spry-no-seccomp`) without its filters, so that one
    // run shows what seccomp costs per request.
    for (wanted, name, seccomp) in [
        ("spry", SPRY, true),
        ("spry-no-seccomp", SPRY_NO_SECCOMP, false),
    ] {
        if args.wants(wanted) {
            systems.push(System {
                name: name.into(),
                engine: Engine::Spry {
                    binary: spry.to_owned(),
                    seccomp,
                },
            });
        }
    }
    if args.wants("qemu") {
        let qemu = |binary: &PathBuf| {
            Qemu::new(binary.clone(), guest.clone(), TIMEOUT).with_accel(&args.qemu_accel)
        };
        let mut backends = vec![NetBackend::Tap];
        if vhost {
            match qemu_args::vhost_unavailable() {
                Some(why) => peers.push((NetBackend::Vhost.system_name().to_owned(), why)),
                None => backends.push(NetBackend::Vhost),
            }
        }
        match qemu_binary(args.qemu.as_deref(), &args.qemu_accel) {
            Err(why) => peers.push(("QEMU".into(), why)),
            // The boot check (the probe: through PVH, every check passed).
            Ok(binary) => match qemu(&binary).check() {
                Err(reason) => peers.push(("QEMU".into(), reason)),
                Ok(()) => systems.extend(backends.into_iter().map(|net| System {
                    name: net.system_name().to_owned(),
                    engine: Engine::Qemu {
                        qemu: qemu(&binary),
                        net,
                    },
                })),
            },
        }
    }
    if systems.is_empty() {
        return Err(DeviceError::NoSystem(args.systems.join(",")));
    }
    Ok((systems, peers))
}

/// Progress steps of a benchmark: per case and system a warm-up and `runs` rounds
/// of (baseline, loaded run).
pub(crate) fn total_steps(args: &DeviceArgs, systems: usize) -> usize {
    args.ops.len() * args.sizes.len() * systems * (2 * args.runs + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn qemu_system(guest: &Guest) -> System {
        System {
            name: "QEMU".into(),
            engine: Engine::Qemu {
                qemu: Qemu::new("qemu".into(), guest.clone(), TIMEOUT),
                net: NetBackend::Tap,
            },
        }
    }

    #[test]
    fn test_spry_bench_drive_is_writeback_as_qemus_cache_writeback() {
        let guest = Guest::linux(Path::new("/b"), 128);
        let devices = Devices {
            disk: Some((Path::new("/tmp/d.img"), true)),
            tap: None,
        };
        let config = spry_config(&guest, "quiet", devices);
        // drives[0] is the Linux guest's root disk; the bench disk follows.
        let bench = &config["drives"][1];
        assert_eq!(bench["path_on_host"], "/tmp/d.img");
        assert_eq!(bench["cache_type"], "Writeback");
        assert_eq!(bench["is_read_only"], true);
        assert_eq!(config["network-interfaces"], serde_json::json!([]));
    }

    #[test]
    fn test_spry_gets_the_tap_with_the_guest_mac() {
        let guest = Guest::probe(Path::new("/b"), 128, String::new());
        let devices = Devices {
            disk: None,
            tap: Some("sbt7"),
        };
        let config = spry_config(&guest, "console=ttyS0", devices);
        assert_eq!(config["drives"], serde_json::json!([]));
        assert_eq!(config["network-interfaces"][0]["host_dev_name"], "sbt7");
        assert_eq!(
            config["network-interfaces"][0]["guest_mac"],
            "06:00:00:00:00:02"
        );
    }

    #[test]
    fn test_linux_guest_under_qemu_gets_the_device_flags_of_the_probe() {
        let guest = Guest::linux(Path::new("/b"), 128);
        let devices = Devices {
            disk: Some((Path::new("/tmp/d.img"), false)),
            tap: None,
        };
        let cmd = qemu_system(&guest)
            .command(&guest, Path::new("/nonexistent"), "quiet", devices)
            .unwrap();
        let args = args_of(&cmd);
        let at = |v: &str| args.iter().position(|a| a == v);
        let root = args.iter().position(|a| a.starts_with("id=root,")).unwrap();
        let modern = at("virtio-mmio.force-legacy=false").unwrap();
        let drive = at("id=d0,file=/tmp/d.img,format=raw,if=none,cache=writeback").unwrap();
        assert!(root < modern && modern < drive, "{args:?}");
        assert!(at("spry-bench,debug-threads=on").is_some(), "{args:?}");
        assert!(at("virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0").is_some());
        assert_eq!(
            args.last().map(String::as_str),
            Some("quiet root=/dev/vda ro")
        );
    }

    #[test]
    fn test_qemu_tap_without_vhost_for_the_tap_backend() {
        let args = qemu_devices(
            Devices {
                disk: None,
                tap: Some("sbt9"),
            },
            NetBackend::Tap,
        );
        assert!(args.contains(&"tap,id=n0,ifname=sbt9,script=no,downscript=no,vhost=off".into()));
        assert!(!args.iter().any(|a| a == "-drive"), "{args:?}");
    }

    #[test]
    fn test_spry_without_seccomp_gets_the_switch_and_its_own_name() {
        let guest = Guest::probe(Path::new("/b"), 128, String::new());
        let dir = std::env::temp_dir().join(format!("bench-lineup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = DeviceArgs {
            sizes: vec![4096],
            requests: 1,
            runs: 1,
            ops: vec![crate::devices::Op::Read],
            guest: crate::devices::GuestChoice::Probe,
            systems: vec!["spry".into(), "spry-no-seccomp".into()],
            qemu_accel: "kvm".into(),
            qemu: None,
            qemu_vhost: false,
        };

        let (systems, _) = lineup(&args, Path::new("/x/spry"), &guest, false).unwrap();
        let cmds: Vec<Vec<String>> = systems
            .iter()
            .map(|s| {
                let config = dir.join(format!("{}.json", s.name.len()));
                args_of(
                    &s.command(&guest, &config, "quiet", Devices::default())
                        .unwrap(),
                )
            })
            .collect();

        let names: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["spry", "spry --no-seccomp"]);
        assert!(
            !cmds[0].contains(&"--no-seccomp".to_owned()),
            "{:?}",
            cmds[0]
        );
        assert_eq!(cmds[1].last().map(String::as_str), Some("--no-seccomp"));
        assert!(systems.iter().all(|s| is_spry(&s.name)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_rows_of_spry_without_seccomp_follow_sprys() {
        let mut names = ["QEMU", "spry --no-seccomp", "QEMU vhost", "spry"];
        names.sort_by_key(|n| table_order(n));
        assert_eq!(names, ["spry", "spry --no-seccomp", "QEMU", "QEMU vhost"]);
    }

    #[test]
    fn test_mac_text() {
        assert_eq!(mac_text(GUEST_MAC), "06:00:00:00:00:02");
    }

    #[test]
    fn test_tap_name_fits_an_interface_name() {
        let name = tap_name();
        assert!(name.starts_with("sbt") && name.len() <= 15, "{name}");
    }
}
