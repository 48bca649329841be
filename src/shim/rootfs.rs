//! The container's root file system as a disk the guest can mount.
//!
//! containerd hands the shim its snapshot as mounts (an overlay of the image's
//! layers, or a plain directory for the native snapshotter). A VM cannot see the
//! host's mounts, so the shim mounts them once, copies the tree into a new ext4
//! image with `mkfs.ext4 -d` (no loop device, no root-only kernel interface
//! beyond the mount itself) and unmounts them again: the image is the
//! container's own writable copy, deleted with the task. The cost grows with
//! the size of the image's files, not with the VM; `tools/bench containerd`
//! measures it.

use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim::protos::types::mount::Mount;

/// Errors building the root disk.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A snapshot mount failed.
    #[error("cannot mount the container's rootfs ({kind} {source_path}) on {target}: {why}")]
    Mount {
        /// The mount's type.
        kind: String,
        /// The mount's source.
        source_path: String,
        /// Where.
        target: PathBuf,
        /// containerd-shim's error.
        why: String,
    },
    /// Walking the tree failed.
    #[error("cannot read the container's rootfs at {path}: {source}")]
    Walk {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Creating the image file failed.
    #[error("cannot create the root disk {path}: {source}")]
    Create {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.ext4 could not be run or failed.
    #[error("mkfs.ext4 -d {tree} {image} failed: {why}")]
    Mkfs {
        /// The tree copied.
        tree: PathBuf,
        /// The image.
        image: PathBuf,
        /// Its exit status and error output.
        why: String,
    },
}

/// How much a tree holds, for sizing its image.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSize {
    /// Bytes in file data, each file rounded up to 4 KiB blocks.
    pub bytes: u64,
    /// Files, directories and links.
    pub inodes: u64,
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Walks `root` without following links.
pub fn measure(root: &Path) -> Result<TreeSize, RootfsError> {
    let mut size = TreeSize::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let walk = |source| RootfsError::Walk {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(walk)? {
            let entry = entry.map_err(walk)?;
            let meta = entry.metadata().map_err(walk)?;
            size.inodes += 1;
            if meta.is_dir() {
                size.bytes += BLOCK;
                pending.push(entry.path());
            } else if meta.is_file() {
                size.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
            }
        }
    }
    Ok(size)
}

/// The image size for a tree: its contents with room for ext4's metadata, plus
/// `slack_mib` of free space, in whole MiB.
pub fn image_bytes(tree: TreeSize, slack_mib: u64) -> u64 {
    // ext4 spends about 256 bytes of inode table per inode (we ask mkfs for
    // twice the tree's count, so the container can create files) and a few
    // percent on bitmaps and group descriptors.
    let inode_tables = tree.inodes.saturating_mul(2).saturating_mul(256);
    let data = tree.bytes.saturating_add(tree.bytes / 16);
    let total = data
        .saturating_add(inode_tables)
        .saturating_add(slack_mib.saturating_mul(MIB))
        .max(16 * MIB);
    total.div_ceil(MIB) * MIB
}

/// Splits a mount's options into mount(2) flags and the file system's own
/// data (`lowerdir=...` and the like), as mount(8) does.
fn mount_flags(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noatime" => (libc::MS_NOATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "defaults" | "async" | "atime" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

fn cstring(text: &str) -> std::ffi::CString {
    // Paths and options come from containerd; one with a NUL byte cannot be
    // mounted and becomes an empty string, which mount(2) then refuses.
    std::ffi::CString::new(text).unwrap_or_default()
}

/// Mounts containerd's snapshot `mounts` on `target` (an existing directory).
/// With no mounts the bundle's rootfs directory already holds the tree.
pub fn mount_snapshot(mounts: &[Mount], target: &Path) -> Result<(), RootfsError> {
    for m in mounts {
        let (flags, data) = mount_flags(&m.options);
        let fail = |why: String| RootfsError::Mount {
            kind: m.type_.clone(),
            source_path: m.source.clone(),
            target: target.into(),
            why,
        };
        let (source, kind, data) = (cstring(&m.source), cstring(&m.type_), cstring(&data));
        let dest = cstring(&target.to_string_lossy());
        // SAFETY: every pointer is a NUL-terminated string that outlives the
        // call; mount(2) reads them and keeps none.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                dest.as_ptr(),
                kind.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(fail(std::io::Error::last_os_error().to_string()));
        }
        // A read-only bind needs a second, remounting call (mount(8) does the
        // same).
        if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
            let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            // SAFETY: as above.
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    dest.as_ptr(),
                    std::ptr::null(),
                    remount,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(fail(std::io::Error::last_os_error().to_string()));
            }
        }
    }
    Ok(())
}

/// Unmounts what [`mount_snapshot`] mounted (lazily, so a stray open file in
/// the tree cannot keep the task from being deleted).
pub fn unmount_snapshot(target: &Path) {
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // Mounts stack; each umount removes the top one, until none is left.
    for _ in 0..16 {
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
    }
}

/// The files a spec binds in (CRI's /etc/hosts and the like), as a small
/// ext4 disk with each at its path in the container: the guest's init binds
/// them over those paths (`spry.files_disk`). Built from a directory of the
/// shim's own, so nothing is ever written into the container's tree on the
/// host. Destinations with `..` are left out and returned.
pub fn files_disk(
    files: &[(PathBuf, PathBuf)],
    dir: &Path,
) -> Result<(Option<PathBuf>, Vec<PathBuf>), RootfsError> {
    let mut skipped = Vec::new();
    if files.is_empty() {
        return Ok((None, skipped));
    }
    let tree = dir.join("files");
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Create { path, source }
    };
    for (source, destination) in files {
        let mut at = tree.clone();
        let mut fine = true;
        for part in destination.components() {
            match part {
                std::path::Component::Normal(name) => at.push(name),
                std::path::Component::RootDir => {}
                _ => fine = false,
            }
        }
        if !fine || at == tree {
            skipped.push(destination.clone());
            continue;
        }
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(create(parent))?;
        }
        std::fs::copy(source, &at).map_err(create(&at))?;
    }
    let image = dir.join("files.ext4");
    let made = make_image(&tree, &image, 1);
    let _ = std::fs::remove_dir_all(&tree);
    made?;
    Ok((Some(image), skipped))
}

/// The image layers under a fresh container's snapshot: containerd's overlay
/// snapshotter hands one overlay mount whose `lowerdir`s are the image's
/// committed (immutable) layers and whose `upperdir` is the container's own,
/// still empty. `None` for anything else (another snapshotter, or a container
/// that has written to its layer already), which is then copied whole.
pub fn image_layers(mounts: &[Mount]) -> Option<Vec<PathBuf>> {
    let [m] = mounts else {
        return None;
    };
    if m.type_ != "overlay" {
        return None;
    }
    let option = |key: &str| m.options.iter().find_map(|o| o.strip_prefix(key));
    if let Some(upper) = option("upperdir=") {
        if std::fs::read_dir(upper).ok()?.next().is_some() {
            return None;
        }
    }
    let layers: Vec<PathBuf> = option("lowerdir=")?.split(':').map(PathBuf::from).collect();
    layers.iter().all(|l| l.is_absolute()).then_some(layers)
}

/// The cache key of an image: its layers and how it is built.
fn layers_key(layers: &[PathBuf], slack_mib: u64) -> u64 {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let format = format!("spry-image-v1 slack={slack_mib}");
    let bytes = layers
        .iter()
        .flat_map(|l| l.as_os_str().as_encoded_bytes().iter().chain(&[0]))
        .chain(format.as_bytes());
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// An ext4 image of `layers` merged, in `cache`: built on first use (and
/// `true` returned), then shared read-only by every container of that image,
/// each writing to a copy-on-write overlay of its own. The image is built
/// under a temporary name and renamed, so a concurrent build or a crash never
/// leaves a half image under the real one.
pub fn cached_image(
    cache: &Path,
    layers: &[PathBuf],
    slack_mib: u64,
) -> Result<(PathBuf, bool), RootfsError> {
    let key = layers_key(layers, slack_mib);
    let image = cache.join(format!("{key:016x}.ext4"));
    if image.is_file() {
        return Ok((image, false));
    }
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Create { path, source }
    };
    std::fs::create_dir_all(cache).map_err(create(cache))?;
    let unique = format!("{key:016x}.{}", std::process::id());
    let tree = cache.join(format!("{unique}.mnt"));
    std::fs::create_dir_all(&tree).map_err(create(&tree))?;
    // One layer is a directory to bind; more are an overlay without an upper
    // layer, which the kernel mounts read-only.
    let lower = layers
        .iter()
        .map(|l| l.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let mount = match layers {
        [one] => Mount {
            type_: "bind".into(),
            source: one.to_string_lossy().into_owned(),
            options: vec!["rbind".into(), "ro".into()],
            ..Default::default()
        },
        _ => Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={lower}")],
            ..Default::default()
        },
    };
    let tmp = cache.join(format!("{unique}.ext4.tmp"));
    let built = mount_snapshot(std::slice::from_ref(&mount), &tree)
        .and_then(|()| make_image(&tree, &tmp, slack_mib));
    unmount_snapshot(&tree);
    let _ = std::fs::remove_dir(&tree);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &image).map_err(create(&image))?;
    Ok((image, true))
}

/// Copies `tree` into a new sparse ext4 image at `image`, owned as it is in the
/// tree (mkfs.ext4 -d keeps modes, owners, links and device nodes).
pub fn make_image(tree: &Path, image: &Path, slack_mib: u64) -> Result<u64, RootfsError> {
    let size = measure(tree)?;
    let bytes = image_bytes(size, slack_mib);
    let create = |source| RootfsError::Create {
        path: image.into(),
        source,
    };
    let file = std::fs::File::create(image).map_err(create)?;
    file.set_len(bytes).map_err(create)?;
    drop(file);
    let inodes = size.inodes.saturating_mul(2).max(4096);
    let out = Command::new("mkfs.ext4")
        // No journal: the image lives and dies with one VM, so crash
        // consistency across boots buys nothing, and the journal costs MiBs
        // of zeroes to write.
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-E"])
        .arg("lazy_itable_init=1,nodiscard")
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(tree)
        .arg(image)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .map_err(|e| RootfsError::Mkfs {
            tree: tree.into(),
            image: image.into(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RootfsError::Mkfs {
            tree: tree.into(),
            image: image.into(),
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            mount_flags(&opts(&[
                "index=off",
                "lowerdir=/a:/b",
                "upperdir=/u",
                "workdir=/w"
            ])),
            (
                0,
                "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w".to_string()
            )
        );
        assert_eq!(
            mount_flags(&opts(&["rbind", "ro"])),
            (
                libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY,
                String::new()
            )
        );
        assert_eq!(mount_flags(&opts(&["ro", "rw"])).0, 0);
    }

    #[test]
    fn files_disk_holds_each_file_at_its_path_and_refuses_dot_dot() {
        let dir = std::env::temp_dir().join(format!("spry-shim-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "10.0.0.2 box\n").unwrap();
        let files = [
            (hosts.clone(), PathBuf::from("/etc/hosts")),
            (hosts.clone(), PathBuf::from("/etc/../escape")),
        ];
        let (image, skipped) = files_disk(&files, &dir).unwrap();
        let image = image.unwrap();
        assert_eq!(skipped, [PathBuf::from("/etc/../escape")]);
        assert!(!dir.join("files").exists(), "the staging tree is removed");
        let cat = Command::new("debugfs")
            .args(["-R", "cat /etc/hosts"])
            .arg(&image)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "10.0.0.2 box\n");
        assert_eq!(files_disk(&[], &dir).unwrap(), (None, vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn overlay(options: &[&str]) -> Mount {
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_fresh_overlay_snapshot_is_served_from_the_image_cache() {
        let dir = std::env::temp_dir().join(format!("spry-shim-layers-{}", std::process::id()));
        let upper = dir.join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let upper_opt = format!("upperdir={}", upper.display());
        let fresh = overlay(&["index=off", "lowerdir=/l/2:/l/1", &upper_opt, "workdir=/w"]);
        assert_eq!(
            image_layers(std::slice::from_ref(&fresh)),
            Some(vec![PathBuf::from("/l/2"), PathBuf::from("/l/1")])
        );
        std::fs::write(upper.join("changed"), b"x").unwrap();
        assert_eq!(image_layers(&[fresh]), None, "the container wrote already");
        let bind = Mount {
            type_: "bind".into(),
            source: "/s".into(),
            ..Default::default()
        };
        assert_eq!(image_layers(&[bind]), None);
        assert_eq!(image_layers(&[]), None);
        assert_ne!(
            layers_key(&[PathBuf::from("/a")], 64),
            layers_key(&[PathBuf::from("/a")], 65)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cached_image_is_built_once_from_its_layer() {
        let dir = std::env::temp_dir().join(format!("spry-shim-cache-{}", std::process::id()));
        let layer = dir.join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/os"), b"busybox\n").unwrap();
        let cache = dir.join("cache");
        // Mounting needs root; the rest of the suite runs as root.
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return;
        }
        let (image, built) = cached_image(&cache, std::slice::from_ref(&layer), 1).unwrap();
        assert!(built);
        let (again, built) = cached_image(&cache, std::slice::from_ref(&layer), 1).unwrap();
        assert_eq!((again.as_path(), built), (image.as_path(), false));
        let names: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary left: {names:?}");
        let cat = Command::new("debugfs")
            .args(["-R", "cat /etc/os"])
            .arg(&image)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "busybox\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_size_leaves_room_for_metadata_and_slack() {
        let tree = TreeSize {
            bytes: 10 * MIB,
            inodes: 1000,
        };
        let bytes = image_bytes(tree, 64);
        assert_eq!(bytes % MIB, 0);
        assert!(bytes >= 74 * MIB + 500_000, "{bytes}");
        assert!(bytes <= 80 * MIB, "{bytes}");
        assert_eq!(image_bytes(TreeSize::default(), 0), 16 * MIB);
    }

    #[test]
    fn a_tree_becomes_an_image_with_its_files() {
        let dir = std::env::temp_dir().join(format!("spry-shim-rootfs-{}", std::process::id()));
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"box\n").unwrap();
        std::os::unix::fs::symlink("hostname", tree.join("etc/link")).unwrap();
        let size = measure(&tree).unwrap();
        assert_eq!(size.inodes, 3);
        let image = dir.join("root.ext4");
        if Command::new("/usr/sbin/mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
            && Command::new("/sbin/mkfs.ext4").arg("-V").output().is_err()
        {
            eprintln!("mkfs.ext4 missing: skipping the image half");
            return;
        }
        let bytes = make_image(&tree, &image, 1).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), bytes);
        let cat = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&image)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "box\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
