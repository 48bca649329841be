//! spry under `spry-jailer` in root mode, as Firecracker's jailer runs Firecracker:
//! every start gets a fresh id and so a fresh jail, `<base>/spry/<id>/root`, holding
//! the guest kernel, the config and, for a dynamically linked spry, its shared
//! libraries. The jailer copies spry's binary into the jail itself, on every start:
//! that copy is part of what the jail costs, and is timed with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cleanup;
use crate::guest::Guest;
use crate::procfs::MemoryUse;
use crate::systems::vm::{command_text, start_vmm, vm_config, vmm_command, write_json, Vmm};
use crate::systems::{ImageFile, Instance, Kind, Sandbox, SystemError, Workload};

/// The user and group spry runs as in the jail: unused on the benchmark hosts, and
/// different from each other (as in tests/jailer.rs).
pub const JAIL_UID: u32 = 1234;
/// See [`JAIL_UID`].
pub const JAIL_GID: u32 = 4321;

/// Where spry finds its kernel and config inside the jail.
const JAILED_KERNEL: &str = "/vmlinux";
const JAILED_ROOTFS: &str = "/rootfs.ext4";
const JAILED_CONFIG: &str = "/vm.json";

/// The paths of the shared libraries (and the loader) in `ldd`'s output; none for a
/// statically linked binary ("statically linked", "not a dynamic executable").
pub fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/.../libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
            // (0x...)"; the vDSO ("linux-vdso.so.1 (0x...)") has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The `spry-jailer` next to `spry`, if there is one.
pub fn jailer_next_to(spry: &Path) -> Option<PathBuf> {
    Some(spry.with_file_name("spry-jailer")).filter(|p| p.is_file())
}

/// A file that goes into every jail: where it is kept, and its path in the jail.
#[derive(Debug)]
struct JailFile {
    kept: PathBuf,
    inside: PathBuf,
}

/// spry confined by spry-jailer, booting the benchmark guest.
#[derive(Debug)]
pub struct JailedSpry {
    jailer: PathBuf,
    spry: PathBuf,
    guest: Guest,
    /// `--chroot-base-dir`.
    base: PathBuf,
    /// Kernel, root file system and libraries, kept once and hard-linked into each
    /// jail (the jailer chowns only the jail's directories, never these files).
    common: Vec<JailFile>,
    run_config: PathBuf,
    idle_config: PathBuf,
    timeout: Duration,
    /// Makes every jail id fresh.
    started: AtomicUsize,
    /// `--share-exec-file`: spry's binary bind-mounted rather than copied.
    share_exec_file: bool,
}

/// Hard-links `from` to `to` (same file system: the scratch directory), else copies.
fn place(from: &Path, to: &Path) -> Result<(), SystemError> {
    let write = |source| SystemError::Write {
        path: to.to_owned(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(write)
}

/// `path` (absolute, as seen in the jail) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

impl JailedSpry {
    /// Keeps what every jail needs in `dir` (kernel, root file system, spry's shared
    /// libraries from `ldd`, the run-to-exit and idle configs with paths as seen in
    /// the jail) and makes the chroot base `dir/jails`.
    pub fn new(
        jailer: PathBuf,
        spry: PathBuf,
        guest: Guest,
        dir: &Path,
        timeout: Duration,
    ) -> Result<JailedSpry, SystemError> {
        let kept = dir.join("jail-files");
        let base = dir.join("jails");
        for d in [&kept, &base] {
            std::fs::create_dir_all(d).map_err(|source| SystemError::Write {
                path: d.clone(),
                source,
            })?;
        }
        let mut host_files = vec![(guest.vmlinux.clone(), PathBuf::from(JAILED_KERNEL))];
        if let Some(rootfs) = &guest.rootfs {
            host_files.push((rootfs.clone(), PathBuf::from(JAILED_ROOTFS)));
        }
        host_files.extend(shared_libraries(&spry)?.into_iter().map(|l| (l.clone(), l)));
        let mut common = Vec::with_capacity(host_files.len());
        for (host, inside) in host_files {
            let copy = under(&kept, &inside);
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SystemError::Write {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            std::fs::copy(&host, &copy).map_err(|source| SystemError::Write {
                path: copy.clone(),
                source,
            })?;
            common.push(JailFile { kept: copy, inside });
        }
        let jailed_guest = Guest {
            vmlinux: JAILED_KERNEL.into(),
            rootfs: guest.rootfs.as_ref().map(|_| JAILED_ROOTFS.into()),
            ..guest.clone()
        };
        let none = serde_json::json!([]);
        let run_config = kept.join("run.json");
        let idle_config = kept.join("idle.json");
        for (path, workload) in [
            (&run_config, Workload::RunToExit),
            (&idle_config, Workload::Idle),
        ] {
            let args = jailed_guest.boot_args(workload);
            write_json(
                path,
                &vm_config(&jailed_guest, &args, none.clone(), none.clone()),
            )?;
        }
        Ok(JailedSpry {
            jailer,
            spry,
            guest,
            base,
            common,
            run_config,
            idle_config,
            timeout,
            started: AtomicUsize::new(0),
            share_exec_file: false,
        })
    }

    /// The name of spry's binary, which names the jail's directory.
    fn exec_name(&self) -> String {
        self.spry
            .file_name()
            .map_or_else(|| "spry".into(), |n| n.to_string_lossy().into_owned())
    }

    /// The same jails, with spry's binary bind-mounted into each (`--share-exec-file`)
    /// rather than copied.
    pub fn sharing_exec_file(mut self) -> JailedSpry {
        self.share_exec_file = true;
        self
    }

    /// The jailer's command for jail `id`; spry gets the arguments it gets unjailed,
    /// with the config as seen in the jail.
    fn command(&self, id: &str) -> Command {
        let mut cmd = Command::new(&self.jailer);
        cmd.arg("--id")
            .arg(id)
            .arg("--exec-file")
            .arg(&self.spry)
            .arg("--uid")
            .arg(JAIL_UID.to_string())
            .arg("--gid")
            .arg(JAIL_GID.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.base);
        if self.share_exec_file {
            cmd.arg("--share-exec-file");
        }
        cmd.arg("--");
        let spry = vmm_command(Vmm::Spry, &self.spry, Path::new(JAILED_CONFIG));
        cmd.args(spry.get_args());
        cmd
    }

    /// Creates `<base>/spry/<id>/root` with what spry needs for `workload`; the
    /// returned directory (`<base>/spry/<id>`) is registered for cleanup.
    fn prepare(&self, id: &str, workload: Workload) -> Result<PathBuf, SystemError> {
        let jail = self.base.join(self.exec_name()).join(id);
        let root = jail.join("root");
        cleanup::creating(|| {
            cleanup::add_path(&jail);
            let config = match workload {
                Workload::RunToExit => &self.run_config,
                Workload::Idle | Workload::IdleAttached => &self.idle_config,
            };
            place(config, &under(&root, Path::new(JAILED_CONFIG)))?;
            for file in &self.common {
                place(&file.kept, &under(&root, &file.inside))?;
            }
            Ok(jail)
        })
    }
}

/// The libraries `ldd` lists for `binary` (none if it is static).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, SystemError> {
    // ldd fails for a static binary; its output then names no library.
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SystemError::Command {
            command: format!("ldd {}", binary.display()),
            detail: e.to_string(),
        })?;
    Ok(ldd_paths(&String::from_utf8_lossy(&out.stdout)))
}

impl Sandbox for JailedSpry {
    fn name(&self) -> &str {
        if self.share_exec_file {
            "spry jailed, shared binary"
        } else {
            "spry jailed"
        }
    }

    fn phrase(&self) -> String {
        if self.share_exec_file {
            "spry under spry-jailer --share-exec-file".into()
        } else {
            "spry under spry-jailer".into()
        }
    }

    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn version(&self) -> String {
        super::version_line(&self.spry)
    }

    fn command_line(&self, _workload: Workload) -> String {
        command_text(&self.command("<fresh id>"))
    }

    fn start(&self, workload: Workload, _tag: usize) -> Result<Instance, SystemError> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        // 1-64 letters, digits and '-' (the jailer's rule); unique across runs too.
        let id = format!("bench-{}-{n}", std::process::id());
        let jail = self.prepare(&id, workload)?;
        let mut instance = start_vmm(self.command(&id), &self.guest, workload, self.timeout)?;
        instance.jail = Some(jail);
        Ok(instance)
    }

    fn console_line(&self) -> Option<&'static str> {
        Some(self.guest.running_line())
    }

    fn request_stop(&self, instance: &mut Instance) -> Result<(), SystemError> {
        Ok(instance.process.send(self.guest.stop_input())?)
    }

    fn memory(&self, instance: &Instance) -> Result<MemoryUse, SystemError> {
        super::vm_memory(instance, self.guest.mem_mib)
    }

    fn image(&self) -> Vec<ImageFile> {
        super::guest_image(&self.guest)
    }

    fn finish(&self, instance: &mut Instance) {
        // The jailed spry has exited: its mount namespace, and with it the jail's
        // bind mount, went with it; the directory is only files now.
        if let Some(jail) = instance.jail.take() {
            cleanup::remove_path(&jail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ldd_paths_lists_libraries_and_the_loader_but_not_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd4b3f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0d1c000000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d1be00000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0d1c2a0000)\n";

        let paths = ldd_paths(out);

        assert_eq!(
            paths,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn test_ldd_paths_of_a_static_binary_is_empty() {
        assert!(ldd_paths("\tstatically linked\n").is_empty());
        assert!(ldd_paths("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn test_jailer_gets_a_fresh_id_and_spry_its_usual_arguments() {
        let dir = std::env::temp_dir().join(format!("bench-jailed-{}", std::process::id()));
        let guest = Guest::probe(&dir, 128, String::new());
        std::fs::create_dir_all(dir.join("probe")).unwrap();
        std::fs::write(&guest.vmlinux, b"kernel").unwrap();
        let jailed = JailedSpry::new(
            "/j/spry-jailer".into(),
            "/bin/true".into(),
            guest,
            &dir,
            Duration::from_secs(1),
        )
        .unwrap();

        let line = command_text(&jailed.command("bench-7"));

        let base = dir.join("jails");
        assert_eq!(
            line,
            format!(
                "/j/spry-jailer --id bench-7 --exec-file /bin/true --uid 1234 --gid 4321 \
                 --chroot-base-dir {} -- --config-file /vm.json --log-level info",
                base.display()
            )
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&jailed.run_config).unwrap()).unwrap();
        assert_eq!(config["boot-source"]["kernel_image_path"], "/vmlinux");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
