//! One container's microVM: a spry process booted from a generated
//! Firecracker-format config, with the container's root disk, a vsock device
//! for the guest agent and, when the container has a network namespace, a tap
//! inside that namespace bridged to its interface.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spry::agent::{client, protocol};

use super::jail::{self, JailError, JailSettings};
use super::network::GuestNetwork;
use super::settings::Settings;

/// The container's disk, in the VM's files.
pub const DISK: &str = "rootfs.ext4";
/// The copy-on-write overlay of a disk from the image cache.
const OVERLAY: &str = "rootfs.cow";
/// The disk of files the spec binds in.
const FILES: &str = "files.ext4";
const KERNEL: &str = "vmlinux";
const INITRAMFS: &str = "initramfs.cpio";

/// Errors starting or reaching a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The config could not be written.
    #[error("cannot write the VM config {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The jail could not be prepared.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// spry could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The spry binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// spry ended before its guest was ready.
    #[error("the VM ended ({status}) before its guest agent answered; its console ended with:\n{console}")]
    Ended {
        /// spry's exit status.
        status: std::process::ExitStatus,
        /// The console's last lines.
        console: String,
    },
    /// The guest's init could not set up the container.
    #[error("the guest could not set up the container; the console ended with:\n{console}")]
    Failed {
        /// The console's last lines.
        console: String,
    },
    /// The guest did not become ready in time.
    #[error(
        "the guest agent did not answer within {seconds} s; the console ended with:\n{console}"
    )]
    Timeout {
        /// The limit.
        seconds: u64,
        /// The console's last lines.
        console: String,
    },
}

/// What a container's VM is made of.
pub struct VmSpec<'a> {
    /// The shim's settings.
    pub settings: &'a Settings,
    /// The directory for the shim's records of the VM (console log).
    pub dir: &'a Path,
    /// The directory spry's files go in (config, kernel, sockets): `dir`, or
    /// the jail's root.
    pub files: &'a Path,
    /// The jail's id, when the VM is jailed.
    pub jail_id: Option<&'a str>,
    /// The container's root disk: in `files`, or an image in the image cache.
    pub disk: &'a Path,
    /// Open the disk copy-on-write (a cached image that containers share),
    /// with the overlay in `files`.
    pub cow: bool,
    /// The disk of files the spec binds in, in `files`.
    pub files_disk: Option<&'a Path>,
    /// Mount the root read-only.
    pub read_only: bool,
    /// The guest's host name.
    pub hostname: &'a str,
    /// vCPUs and MiB for this container.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// The network namespace to run spry in, and its interface for the guest.
    pub network: Option<&'a GuestNetwork>,
}

/// A running VM.
pub struct Vm {
    child: Child,
    vsock: PathBuf,
    console: PathBuf,
    jail: Option<(JailSettings, PathBuf, String)>,
}

/// How spry names one of its files: inside a jail, from the jail's root.
fn spry_path(spec: &VmSpec, name: &str) -> PathBuf {
    match spec.jail_id {
        Some(_) => Path::new("/").join(name),
        None => spec.files.join(name),
    }
}

impl Vm {
    /// Writes the config and starts spry; does not wait for the guest.
    pub fn spawn(spec: &VmSpec) -> Result<Vm, VmError> {
        let vsock = spec.files.join("vsock.sock");
        let console = spec.dir.join("console.log");
        let config = spec.files.join("vm.json");
        let write = |source| VmError::Config {
            path: config.clone(),
            source,
        };
        let binary = spec.settings.spry_binary();
        let jail = match (spec.jail_id, &spec.settings.jailer) {
            (Some(id), Some(settings)) => {
                jail::place(&spec.settings.kernel, &spec.files.join(KERNEL))?;
                jail::place(&spec.settings.initramfs, &spec.files.join(INITRAMFS))?;
                jail::place_libraries(&binary, spec.files)?;
                if spec.disk.parent() == Some(spec.files) {
                    // Built in the jail for this VM alone: the jailed user
                    // opens it read-write.
                    let (uid, gid) = settings.ids(id);
                    std::os::unix::fs::chown(spec.disk, Some(uid), Some(gid)).map_err(write)?;
                } else {
                    // A cached image, shared: linked in, opened read-only by
                    // spry (the overlay takes the writes), never chowned.
                    jail::place(spec.disk, &spec.files.join(DISK))?;
                }
                Some((settings.clone(), spec.files.to_path_buf(), id.to_string()))
            }
            _ => None,
        };
        std::fs::write(&config, vm_config(spec).to_string()).map_err(write)?;
        let log = File::create(&console).map_err(write)?;
        let log2 = log.try_clone().map_err(write)?;
        let config_arg = spry_path(spec, "vm.json");
        let spry_args = [
            "--config-file",
            &*config_arg.to_string_lossy(),
            "--log-level",
            &spec.settings.log_level,
        ];
        let mut cmd = match &jail {
            Some((settings, _, id)) => jail::command(
                settings,
                &binary,
                id,
                spec.network.map(|n| n.netns.as_path()),
                &spry_args,
            ),
            None => {
                let mut cmd = Command::new(&binary);
                cmd.args(spry_args);
                cmd
            }
        };
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        if let (Some(net), None) = (spec.network, &jail) {
            let netns = File::open(&net.netns).map_err(|source| VmError::Spawn {
                binary: binary.clone(),
                source,
            })?;
            // SAFETY: the closure runs in the forked child before exec, calling
            // only setns(2) (async-signal-safe) on a descriptor the parent holds.
            unsafe {
                cmd.pre_exec(move || {
                    use std::os::fd::AsRawFd;
                    if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|source| VmError::Spawn { binary, source })?;
        Ok(Vm {
            child,
            vsock,
            console,
            jail,
        })
    }

    /// The spry process's pid on the host.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The vsock device's Unix socket, where the agent is reached.
    pub fn vsock(&self) -> &Path {
        &self.vsock
    }

    /// Waits until the guest agent answers on its port, or the VM ends, or
    /// `timeout` passes.
    ///
    /// It watches the console for the agent's listening line (or init's line
    /// saying the container failed) before it connects: each connection tried
    /// before the agent listens costs the booting guest a reset to answer, and
    /// with many VMs starting at once, probing every few milliseconds slows
    /// every boot.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        let mut console = ConsoleWatch::default();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(VmError::Ended {
                    status,
                    console: self.console_tail(),
                });
            }
            console.read_more(&self.console);
            if console.saw(CONTAINER_FAILED) {
                return Err(VmError::Failed {
                    console: self.console_tail(),
                });
            }
            if console.saw(AGENT_LISTENING) {
                if let Ok(stream) = client::connect(&self.vsock, protocol::DEFAULT_PORT) {
                    drop::<UnixStream>(stream);
                    return Ok(());
                }
            }
            if start.elapsed() >= timeout {
                return Err(VmError::Timeout {
                    seconds: timeout.as_secs(),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether spry is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the VM: SIGTERM (spry stops its vCPUs and exits), then SIGKILL
    /// if it has not ended within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which cannot have been reused
        // while the child is unreaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the VM and removes its jail.
    pub fn destroy(mut self, grace: Duration) {
        self.stop(grace);
    }

    /// The last lines spry and the guest printed, for error messages.
    pub fn console_tail(&self) -> String {
        tail(&self.console, 2048)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
        if let Some((settings, root, id)) = self.jail.take() {
            jail::remove(&settings, &root, &id);
        }
    }
}

/// The agent's line once it listens (resources/guest/spry-agent.c).
const AGENT_LISTENING: &str = "spry-agent: listening on vsock port";
/// init's line when the container could not be set up (resources/guest/init).
const CONTAINER_FAILED: &str = "spry-guest: container failed";

/// What the console has printed so far, read as it grows.
#[derive(Default)]
struct ConsoleWatch {
    offset: u64,
    text: String,
}

impl ConsoleWatch {
    fn read_more(&mut self, path: &Path) {
        let Ok(mut f) = File::open(path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut more = Vec::new();
        if let Ok(n) = f.read_to_end(&mut more) {
            self.offset += n as u64;
            self.text.push_str(&String::from_utf8_lossy(&more));
        }
    }

    fn saw(&self, line: &str) -> bool {
        self.text.contains(line)
    }
}

/// The last `bytes` of a file, from a line start.
fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = Vec::new();
    let _ = f.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let text = if len > bytes {
        text.split_once('\n').map_or(&*text, |(_, rest)| rest)
    } else {
        &text
    };
    text.trim_end().to_string()
}

/// The VM's Firecracker-format config.
fn vm_config(spec: &VmSpec) -> serde_json::Value {
    let mut args = format!(
        "console=ttyS0 reboot=k panic=1 quiet spry.mode=container spry.container_disk=/dev/vda spry.hostname={}",
        spec.hostname
    );
    if let Some(net) = spec.network {
        args.push_str(&net.boot_args());
    }
    if spec.files_disk.is_some() {
        // The second drive.
        args.push_str(" spry.files_disk=/dev/vdb");
    }
    if !spec.settings.extra_boot_args.is_empty() {
        args.push(' ');
        args.push_str(&spec.settings.extra_boot_args);
    }
    let mut config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": match spec.jail_id {
                Some(_) => spry_path(spec, KERNEL),
                None => spec.settings.kernel.clone(),
            },
            "initrd_path": match spec.jail_id {
                Some(_) => spry_path(spec, INITRAMFS),
                None => spec.settings.initramfs.clone(),
            },
            "boot_args": args,
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": match spec.jail_id {
                Some(_) => spry_path(spec, DISK),
                None => spec.disk.to_path_buf(),
            },
            "is_root_device": false,
            "is_read_only": spec.read_only,
        }],
        "machine-config": {
            "vcpu_count": spec.vcpus,
            "mem_size_mib": spec.mem_mib,
        },
        "vsock": {
            "guest_cid": 3,
            "uds_path": spry_path(spec, "vsock.sock"),
        },
    });
    if spec.cow && !spec.read_only {
        config["drives"][0]["copy_on_write"] = serde_json::json!({
            "overlay_type": "File",
            "overlay_path": spry_path(spec, OVERLAY),
        });
    }
    if spec.files_disk.is_some() {
        if let Some(drives) = config["drives"].as_array_mut() {
            drives.push(serde_json::json!({
                "drive_id": "files",
                "path_on_host": spry_path(spec, FILES),
                "is_root_device": false,
                "is_read_only": true,
            }));
        }
    }
    if let Some(net) = spec.network {
        config["network-interfaces"] = serde_json::json!([{
            "iface_id": "eth0",
            "host_dev_name": net.tap,
            "guest_mac": net.mac,
        }]);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_boots_the_container_mode_with_the_disk_and_vsock() {
        let settings = Settings {
            spry: None,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            vcpus: 1,
            mem_mib: 256,
            disk_slack_mib: 1,
            boot_timeout_s: 5,
            extra_boot_args: "loglevel=4".into(),
            log_level: "warn".into(),
            jailer: None,
            image_cache: None,
            run_dir: "/run/spry-shim".into(),
        };
        let spec = VmSpec {
            settings: &settings,
            dir: Path::new("/d"),
            files: Path::new("/d"),
            jail_id: None,
            disk: Path::new("/d/rootfs.ext4"),
            cow: false,
            files_disk: None,
            read_only: true,
            hostname: "box",
            vcpus: 2,
            mem_mib: 512,
            network: None,
        };
        let c = vm_config(&spec);
        let args = c["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains("spry.mode=container"), "{args}");
        assert!(args.contains("spry.hostname=box"), "{args}");
        assert!(args.ends_with(" loglevel=4"), "{args}");
        assert_eq!(c["drives"][0]["is_read_only"], true);
        assert_eq!(c["machine-config"]["vcpu_count"], 2);
        assert_eq!(c["vsock"]["uds_path"], "/d/vsock.sock");
        assert!(c.get("network-interfaces").is_none());
        assert_eq!(c["drives"][0]["path_on_host"], "/d/rootfs.ext4");
        let jailed = VmSpec {
            jail_id: Some("j"),
            ..spec
        };
        let c = vm_config(&jailed);
        assert_eq!(c["boot-source"]["kernel_image_path"], "/vmlinux");
        assert_eq!(c["drives"][0]["path_on_host"], "/rootfs.ext4");
        assert_eq!(c["vsock"]["uds_path"], "/vsock.sock");
        // A cached image: shared read-only, the writes in an overlay; the
        // spec's files on a second, read-only drive.
        let cached = VmSpec {
            disk: Path::new("/cache/0123.ext4"),
            cow: true,
            read_only: false,
            files_disk: Some(Path::new("/d/files.ext4")),
            jail_id: None,
            ..jailed
        };
        let c = vm_config(&cached);
        assert_eq!(c["drives"][0]["path_on_host"], "/cache/0123.ext4");
        assert_eq!(c["drives"][0]["copy_on_write"]["overlay_type"], "File");
        assert_eq!(
            c["drives"][0]["copy_on_write"]["overlay_path"],
            "/d/rootfs.cow"
        );
        assert_eq!(c["drives"][1]["path_on_host"], "/d/files.ext4");
        assert_eq!(c["drives"][1]["is_read_only"], true);
        let args = c["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains(" spry.files_disk=/dev/vdb"), "{args}");
    }

    #[test]
    fn the_console_is_watched_as_it_grows() {
        let path = std::env::temp_dir().join(format!("spry-shim-watch-{}", std::process::id()));
        std::fs::write(&path, "booting\nspry-agent: listen").unwrap();
        let mut watch = ConsoleWatch::default();
        watch.read_more(&path);
        assert!(!watch.saw(AGENT_LISTENING));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"ing on vsock port 52\n").unwrap();
        watch.read_more(&path);
        assert!(watch.saw(AGENT_LISTENING));
        assert!(!watch.saw(CONTAINER_FAILED));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tail_starts_at_a_line() {
        let path = std::env::temp_dir().join(format!("spry-shim-tail-{}", std::process::id()));
        std::fs::write(&path, "aaaa\nbbbb\ncccc\n").unwrap();
        assert_eq!(tail(&path, 7), "cccc");
        assert_eq!(tail(&path, 100), "aaaa\nbbbb\ncccc");
        std::fs::remove_file(&path).unwrap();
    }
}
