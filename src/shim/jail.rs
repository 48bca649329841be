//! Running a container's VM under `spry-jailer`, as Firecracker's users run
//! theirs under its jailer: spry starts in a chroot holding only its own files
//! (kernel, initramfs, the container's disk, its config and sockets), in a new
//! mount namespace, as an unprivileged user with no capabilities, optionally in
//! a cgroup of its own. The shim builds the jail's root before the jailer runs,
//! so the files are in place when spry looks for them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Errors preparing a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A file could not be placed in the jail.
    #[error("cannot place {from} in the jail at {to}: {source}")]
    Place {
        /// The host file.
        from: PathBuf,
        /// Where in the jail.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// ldd could not list spry's libraries.
    #[error("cannot list the shared libraries of {binary}: {why}")]
    Libraries {
        /// The spry binary.
        binary: PathBuf,
        /// Why.
        why: String,
    },
}

/// The `jailer` section of the shim's settings (on by default).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JailSettings {
    /// The jailer; default: `spry-jailer` beside the shim.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// The user every VM runs as; default: one of its own per VM, from
    /// `first_uid` on (Firecracker's advice: no two microVMs share a uid).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The group; default: the same number as the uid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The first uid of the per-VM range.
    #[serde(default = "default_first_uid")]
    pub first_uid: u32,
    /// How many uids the range holds.
    #[serde(default = "default_uids")]
    pub uids: u32,
    /// Where jails are built (`--chroot-base-dir`).
    #[serde(default = "default_chroot_base")]
    pub chroot_base: PathBuf,
    /// cgroup v2 files to set in each VM's own cgroup (`--cgroup`), e.g.
    /// `memory.max=536870912`; none: no cgroup of its own.
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// The cgroup that holds the VMs' cgroups (`--parent-cgroup`).
    #[serde(default)]
    pub parent_cgroup: Option<String>,
    /// Bind-mount spry's binary into each jail instead of copying it
    /// (`--share-exec-file`): a faster start, and the binary's pages (about 2 MiB
    /// resident) shared by every VM instead of each holding its own; off by default,
    /// as Firecracker keeps each jail's binary pages apart.
    #[serde(default)]
    pub share_exec_file: bool,
}

fn default_chroot_base() -> PathBuf {
    PathBuf::from("/srv/jailer")
}
fn default_first_uid() -> u32 {
    100_000
}
fn default_uids() -> u32 {
    65_536
}

impl Default for JailSettings {
    fn default() -> JailSettings {
        JailSettings {
            binary: None,
            uid: None,
            gid: None,
            first_uid: default_first_uid(),
            uids: default_uids(),
            chroot_base: default_chroot_base(),
            cgroups: Vec::new(),
            parent_cgroup: None,
            share_exec_file: false,
        }
    }
}

impl JailSettings {
    /// The uid and gid the VM with jail id `id` runs as: the configured ones,
    /// else a uid of the range picked by the id's hash (two VMs share one only
    /// when their hashes meet in the range: with 65,536 uids and 100 VMs on a
    /// node, about a 7% chance that some pair does).
    pub fn ids(&self, id: &str) -> (u32, u32) {
        let uid = self.uid.unwrap_or_else(|| {
            let hash = fnv(id.as_bytes());
            let offset = u32::try_from(hash % u64::from(self.uids.max(1))).unwrap_or(0);
            self.first_uid.saturating_add(offset)
        });
        (uid, self.gid.unwrap_or(uid))
    }

    /// The jailer to run.
    pub fn jailer_binary(&self) -> PathBuf {
        self.binary
            .clone()
            .unwrap_or_else(|| super::settings::beside_shim("spry-jailer"))
    }
}

/// The jailer's id rule is 1 to 64 ASCII letters, digits or '-'; containerd's
/// ids allow more, and two namespaces may reuse one, so the jail id is the
/// id's safe characters plus a hash of namespace and id.
pub fn jail_id(namespace: &str, id: &str) -> String {
    let key: Vec<u8> = namespace.bytes().chain([0]).chain(id.bytes()).collect();
    let hash = fnv(&key);
    let safe: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!("{safe}-{hash:016x}")
}

/// FNV-1a: stable across runs and builds, unlike std's hasher.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Where a jail's root is: `<chroot_base>/<exec file name>/<id>/root`.
pub fn jail_root(settings: &JailSettings, spry: &Path, id: &str) -> PathBuf {
    let exec_name = spry
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spry".into());
    settings.chroot_base.join(exec_name).join(id).join("root")
}

/// Puts `from` into the jail at `to`: a hard link where both are on one file
/// system (no copy, and the kernel and initramfs are only read), else a copy.
pub fn place(from: &Path, to: &Path) -> Result<(), JailError> {
    let fail = |source| JailError::Place {
        from: from.into(),
        to: to.into(),
        source,
    };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let _ = std::fs::remove_file(to);
    // link(2) would link a symbolic link itself (the loader's /lib64 path is
    // one on Debian), whose target the jail lacks: link what it names.
    let from = std::fs::canonicalize(from).map_err(fail)?;
    if std::fs::hard_link(&from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(&from, to).map(drop).map_err(fail)
}

/// Places the shared libraries a dynamically linked spry needs at the same
/// paths inside the jail (nothing for a static one).
pub fn place_libraries(spry: &Path, root: &Path) -> Result<(), JailError> {
    let fail = |why: String| JailError::Libraries {
        binary: spry.into(),
        why,
    };
    let out = Command::new("ldd")
        .arg(spry)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd fails, saying so, on a static binary.
        let said = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if said.contains("not a dynamic executable") || said.contains("statically linked") {
            return Ok(());
        }
        return Err(fail(said.trim().to_string()));
    }
    for lib in libraries(&text) {
        let inside = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        place(&lib, &inside)?;
    }
    Ok(())
}

/// The absolute paths in ldd's output (`name => /path (addr)` or
/// `/path (addr)`).
fn libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The jailer's command line for one VM; spry's own arguments follow `--`.
pub fn command(
    settings: &JailSettings,
    spry: &Path,
    id: &str,
    netns: Option<&Path>,
    spry_args: &[&str],
) -> Command {
    let (uid, gid) = settings.ids(id);
    let mut cmd = Command::new(settings.jailer_binary());
    cmd.arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(spry)
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(gid.to_string())
        .arg("--chroot-base-dir")
        .arg(&settings.chroot_base)
        .args(["--cgroup-version", "2"]);
    if let Some(parent) = &settings.parent_cgroup {
        cmd.arg("--parent-cgroup").arg(parent);
    }
    for setting in &settings.cgroups {
        cmd.arg("--cgroup").arg(setting);
    }
    if settings.share_exec_file {
        cmd.arg("--share-exec-file");
    }
    if let Some(netns) = netns {
        cmd.arg("--netns").arg(netns);
    }
    cmd.arg("--").args(spry_args);
    cmd
}

/// Removes the jail's directory (`<chroot_base>/<exec>/<id>`) and the VM's
/// cgroup, once spry has ended.
pub fn remove(settings: &JailSettings, root: &Path, id: &str) {
    if let Some(jail_dir) = root.parent() {
        if let Err(e) = std::fs::remove_dir_all(jail_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove the jail {}: {e}", jail_dir.display());
            }
        }
    }
    if !settings.cgroups.is_empty() {
        let parent = settings.parent_cgroup.as_deref().unwrap_or("spry");
        let dir = Path::new("/sys/fs/cgroup").join(parent).join(id);
        if let Err(e) = std::fs::remove_dir(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove the cgroup {}: {e}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_safe_and_distinct_per_namespace() {
        let a = jail_id("default", "my_container.1");
        assert!(a.starts_with("mycontainer1-"), "{a}");
        assert!(a.len() <= 64);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(a, jail_id("k8s.io", "my_container.1"));
        assert_eq!(a, jail_id("default", "my_container.1"));
        assert!(jail_id("ns", &"x".repeat(200)).len() <= 64);
    }

    #[test]
    fn each_vm_gets_a_uid_of_the_range_unless_one_is_configured() {
        let range = JailSettings::default();
        let (a, b) = (range.ids("vm-a"), range.ids("vm-b"));
        assert_ne!(a, b);
        for (uid, gid) in [a, b] {
            assert!((100_000..165_536).contains(&uid), "{uid}");
            assert_eq!(uid, gid);
        }
        assert_eq!(range.ids("vm-a"), a, "stable");
        let fixed = JailSettings {
            uid: Some(7),
            gid: Some(8),
            ..JailSettings::default()
        };
        assert_eq!(fixed.ids("vm-a"), (7, 8));
    }

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ff)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn the_command_line_is_firecrackers() {
        let settings = JailSettings {
            binary: Some("/j".into()),
            uid: Some(1000),
            gid: Some(1000),
            cgroups: vec!["memory.max=1000000".into()],
            ..JailSettings::default()
        };
        let cmd = command(
            &settings,
            Path::new("/bin/spry"),
            "id1",
            Some(Path::new("/n")),
            &["--config-file", "/vm.json"],
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--id id1 --exec-file /bin/spry --uid 1000 --gid 1000 --chroot-base-dir /srv/jailer \
             --cgroup-version 2 --cgroup memory.max=1000000 --netns /n -- --config-file /vm.json"
        );
    }

    #[test]
    fn shared_exec_file_is_asked_of_the_jailer() {
        let settings: JailSettings =
            serde_json::from_str(r#"{"share_exec_file": true}"#).expect("settings");
        let cmd = command(&settings, Path::new("/bin/spry"), "id1", None, &[]);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert!(args.iter().any(|a| a == "--share-exec-file"), "{args:?}");
        assert!(!JailSettings::default().share_exec_file);
    }
}
