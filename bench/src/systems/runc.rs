//! A runc container: an OCI bundle whose root file system is the guest's busybox tree
//! (unpacked from build/guest/initramfs.cpio) and whose init prints a line and exits
//! or idles reading stdin.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child::Measured;
use crate::cleanup;
use crate::procfs::{self, MemoryUse};
use crate::systems::{
    image_file, run_helper, version_line, ImageFile, Instance, Kind, Sandbox, SystemError, Workload,
};

/// The line the container's init prints once it runs.
pub const RUNNING_LINE: &str = "spry-bench: running";

/// The container's init: signal, then wait for a line on stdin (EOF at once when
/// stdin is /dev/null), then exit.
const INIT_SCRIPT: &str = "#!/bin/sh\necho spry-bench: running\nread -r line\nexit 0\n";

/// Where the init lives inside the bundle's root file system.
const INIT_PATH: &str = "sbin/spry-bench-init";

/// The runc binary: the first `runc` on PATH (or in /usr/sbin, /sbin).
pub fn runc_path() -> PathBuf {
    find_program("runc").unwrap_or_else(|| PathBuf::from("runc"))
}

/// `name` on PATH or in the sbin directories root's PATH usually has.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// runc running the bundle.
#[derive(Debug)]
pub struct Runc {
    runc: PathBuf,
    bundle: PathBuf,
    prefix: String,
    timeout: Duration,
}

/// Builds the OCI bundle in `dir/bundle` from the busybox tree in `cpio`.
pub fn build_bundle(runc: &Path, cpio: &Path, dir: &Path) -> Result<PathBuf, SystemError> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|source| SystemError::Write {
        path: rootfs.clone(),
        source,
    })?;
    let archive = std::fs::File::open(cpio).map_err(|e| SystemError::Command {
        command: format!("open {}", cpio.display()),
        detail: e.to_string(),
    })?;
    let out = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(&rootfs)
        .stdin(archive)
        .output()
        .map_err(|e| SystemError::Command {
            command: "cpio -idm".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SystemError::Command {
            command: format!("cpio -idm < {}", cpio.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let init = rootfs.join(INIT_PATH);
    write_file(&init, INIT_SCRIPT)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| SystemError::Write {
                path: init.clone(),
                source,
            },
        )?;
    }
    let bundle_arg = bundle.to_string_lossy().into_owned();
    let config_path = bundle.join("config.json");
    let _ = std::fs::remove_file(&config_path);
    run_helper(runc, &["spec", "--bundle", &bundle_arg])?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| SystemError::Command {
        command: "runc spec".into(),
        detail: format!("{}: {e}", config_path.display()),
    })?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SystemError::Command {
            command: "runc spec".into(),
            detail: format!("{}: {e}", config_path.display()),
        })?;
    set_workload(&mut spec);
    write_file(&config_path, &spec.to_string())?;
    Ok(bundle)
}

/// Edits `runc spec`'s default config: no terminal, our init, a hostname.
pub fn set_workload(spec: &mut serde_json::Value) {
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["/bin/sh", format!("/{INIT_PATH}")]);
    spec["hostname"] = serde_json::json!("spry-bench");
}

fn write_file(path: &Path, text: &str) -> Result<(), SystemError> {
    std::fs::write(path, text).map_err(|source| SystemError::Write {
        path: path.to_owned(),
        source,
    })
}

impl Runc {
    /// runc with the bundle in `bundle`; container ids start with `prefix`.
    pub fn new(runc: PathBuf, bundle: PathBuf, prefix: String, timeout: Duration) -> Runc {
        Runc {
            runc,
            bundle,
            prefix,
            timeout,
        }
    }

    fn id(&self, tag: usize) -> String {
        format!("{}-{tag}", self.prefix)
    }

    fn args(&self, workload: Workload, id: &str) -> Vec<String> {
        let mut args = vec!["run".to_owned()];
        if workload == Workload::Idle {
            args.push("--detach".into());
        }
        args.extend([
            "--bundle".into(),
            self.bundle.to_string_lossy().into_owned(),
            id.to_owned(),
        ]);
        args
    }

    /// The pid (in our namespace) of a running container's init.
    fn init_pid(&self, id: &str) -> Result<i32, SystemError> {
        let state = run_helper(&self.runc, &["state", id])?;
        let value: serde_json::Value =
            serde_json::from_str(&state).map_err(|e| SystemError::Command {
                command: format!("runc state {id}"),
                detail: e.to_string(),
            })?;
        value["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| SystemError::Command {
                command: format!("runc state {id}"),
                detail: format!("no pid in {state}"),
            })
    }
}

impl Sandbox for Runc {
    fn name(&self) -> &str {
        "runc"
    }

    fn phrase(&self) -> String {
        "a runc container".into()
    }

    fn kind(&self) -> Kind {
        Kind::Container
    }

    fn version(&self) -> String {
        version_line(&self.runc)
    }

    fn command_line(&self, workload: Workload) -> String {
        format!(
            "{} {}",
            self.runc.display(),
            self.args(workload, &self.id(0)).join(" ")
        )
    }

    fn start(&self, workload: Workload, tag: usize) -> Result<Instance, SystemError> {
        let id = self.id(tag);
        let mut cmd = Command::new(&self.runc);
        cmd.args(self.args(workload, &id));
        let mut process = cleanup::creating(|| {
            cleanup::add_container(&id);
            Measured::spawn(cmd, workload != Workload::RunToExit)
        })?;
        let ((), running_us) = process.wait_for(RUNNING_LINE, self.timeout, |l| {
            (l.text == RUNNING_LINE).then_some(())
        })?;
        Ok(Instance {
            process,
            running_us,
            vcpu_entry_us: None,
            main_us: None,
            container: Some(id),
            jail: None,
        })
    }

    fn request_stop(&self, instance: &mut Instance) -> Result<(), SystemError> {
        match (&instance.container, instance.process.exit_status()) {
            // Detached: runc has exited; delete the container (kills its init).
            (Some(id), Some(_)) => cleanup::delete_container(&self.runc, id),
            // Attached: EOF on stdin ends the init, and runc with it.
            _ => instance.process.close_stdin(),
        }
        Ok(())
    }

    fn memory(&self, instance: &Instance) -> Result<MemoryUse, SystemError> {
        let id = instance.container.as_deref().unwrap_or_default();
        let mut total = MemoryUse::default();
        for pid in procfs::process_tree(self.init_pid(id)?) {
            total.add(procfs::memory_use(pid, None)?);
        }
        Ok(total)
    }

    fn image(&self) -> Vec<ImageFile> {
        vec![image_file(
            "OCI bundle (rootfs + config.json)",
            self.bundle.clone(),
        )]
    }

    fn finish(&self, instance: &mut Instance) {
        if let Some(id) = instance.container.take() {
            if instance
                .process
                .exit_status()
                .is_some_and(|e| e.status.success())
            {
                // `runc run` deleted it on its way out; a detached one was deleted.
                cleanup::forget_container(&id);
            } else {
                cleanup::delete_container(&self.runc, &id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spec_runs_our_init_without_a_terminal() {
        let mut spec = serde_json::json!({"process": {"terminal": true, "args": ["sh"]}});
        set_workload(&mut spec);
        assert_eq!(spec["process"]["terminal"], false);
        assert_eq!(spec["process"]["args"][1], "/sbin/spry-bench-init");
    }

    #[test]
    fn test_detached_only_for_idle() {
        let r = Runc::new(
            "runc".into(),
            "/b".into(),
            "p".into(),
            Duration::from_secs(1),
        );
        assert_eq!(r.args(Workload::Idle, "p-1")[1], "--detach");
        assert_eq!(
            r.args(Workload::RunToExit, "p-1"),
            ["run", "--bundle", "/b", "p-1"]
        );
    }
}
