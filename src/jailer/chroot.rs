//! The jail: its directory, spry's private copy (or its read-only bind mount), the
//! move into it (a new mount namespace whose root is the jail) and the few device
//! nodes spry needs there.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::JailError;

/// Directories spry may write in: the jail root (its API socket goes there by
/// Firecracker's convention), `/dev`, `/dev/net` and `/run`, owned by the jailed
/// user and closed to everyone else.
const OWNED_DIRS: [&str; 4] = ["/", "/dev", "/dev/net", "/run"];
const OWNED_DIR_MODE: u32 = 0o700;

/// A character device spry needs inside the jail.
#[derive(Debug, Clone, Copy)]
pub struct DeviceNode {
    /// Its path, as spry sees it.
    pub path: &'static str,
    /// Its device number: the host node's, or the well-known one.
    pub rdev: libc::dev_t,
    /// Whether spry can run without it (the jailer then warns and goes on).
    pub optional: bool,
}

impl DeviceNode {
    /// `/dev/kvm`, `/dev/net/tun`, `/dev/urandom` and, where the host has one,
    /// `/dev/userfaultfd`, numbered as on the host. Read before the host's `/dev`
    /// leaves view.
    pub fn from_host() -> Vec<DeviceNode> {
        let known = [
            ("/dev/kvm", 10, 232, false),
            ("/dev/net/tun", 10, 200, false),
            ("/dev/urandom", 1, 9, true),
        ];
        let mut nodes: Vec<DeviceNode> = known
            .iter()
            .map(|&(path, major, minor, optional)| DeviceNode {
                path,
                rdev: host_rdev(path).unwrap_or_else(|| libc::makedev(major, minor)),
                optional,
            })
            .collect();
        // Its minor number is dynamic, so it is offered only if the host has it.
        if let Some(rdev) = host_rdev("/dev/userfaultfd") {
            nodes.push(DeviceNode {
                path: "/dev/userfaultfd",
                rdev,
                optional: true,
            });
        }
        nodes
    }
}

fn host_rdev(path: &str) -> Option<libc::dev_t> {
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type().is_char_device().then(|| meta.rdev())
}

/// Creates `<chroot_dir>`; an existing one is reused, as in Firecracker.
pub fn create_jail_dir(chroot_dir: &Path) -> Result<(), JailError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(chroot_dir)
        .map_err(|source| JailError::CreateDir {
            path: chroot_dir.to_owned(),
            source,
        })
}

/// Copies the exec file into the jail root under its own name. A copy, not a hard
/// link: jailed spry processes then share no pages of their binary (Firecracker's
/// reasoning), and the host's file stays out of reach. `io::copy` between files is
/// `copy_file_range`, which file systems that share extents (XFS, btrfs) turn into
/// a reflink: a file of its own made in no time and no space. Returns the path
/// spry will have inside the jail.
pub fn copy_exec_file(from: &Path, chroot_dir: &Path, name: &str) -> Result<PathBuf, JailError> {
    let mut dst = new_exec_file(from, chroot_dir, name)?;
    let failed = |source| copy_failed(from, chroot_dir, name, source);
    let mut src = File::open(from).map_err(failed)?;
    io::copy(&mut src, &mut dst).map_err(failed)?;
    Ok(PathBuf::from("/").join(name))
}

/// Makes the empty file [`bind_exec_file`] mounts the exec file on (`--share-exec-file`).
/// Returns the path spry will have inside the jail.
pub fn exec_mount_point(from: &Path, chroot_dir: &Path, name: &str) -> Result<PathBuf, JailError> {
    new_exec_file(from, chroot_dir, name)?;
    Ok(PathBuf::from("/").join(name))
}

fn copy_failed(from: &Path, chroot_dir: &Path, name: &str, source: io::Error) -> JailError {
    JailError::CopyExecFile {
        from: from.to_owned(),
        to: chroot_dir.join(name),
        source,
    }
}

/// A new, empty `<chroot_dir>/<name>`, owned by root and not writable by the jailed
/// user.
fn new_exec_file(from: &Path, chroot_dir: &Path, name: &str) -> Result<File, JailError> {
    let failed = |source| copy_failed(from, chroot_dir, name, source);
    let to = chroot_dir.join(name);
    // A file left by an earlier jail of the same id is replaced, never written
    // through: it could be a link to a host file.
    match std::fs::remove_file(&to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o555)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&to)
        .map_err(failed)
}

/// Bind-mounts the host's exec file onto its mount point in the jail, read-only,
/// without setuid or device files. Call in the jail's own mount namespace (after
/// [`isolate_mounts`]): the mount is then the jail's alone and goes with it.
pub fn bind_exec_file(from: &Path, chroot_dir: &Path, name: &str) -> Result<(), JailError> {
    let step = |name| jail_step(chroot_dir, name);
    let to = chroot_dir.join(name);
    mount(Some(from), &to, libc::MS_BIND).map_err(step("bind-mounting the exec file"))?;
    let read_only =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount(None, &to, read_only).map_err(step("making the exec file's mount read-only"))
}

/// `mount(2)` of `source` (none for a remount) on `target`, with no file system
/// type or data: the bind mounts and remounts a jail is made of.
pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let c_path = |path: &Path| {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// A jail step's error.
fn jail_step<'a>(chroot_dir: &'a Path, step: &'static str) -> impl Fn(io::Error) -> JailError + 'a {
    move |source| JailError::Jail {
        step,
        path: chroot_dir.to_owned(),
        source,
    }
}

/// Gives this process a mount namespace of its own in which nothing propagates to
/// or from the host, with the jail bind-mounted onto itself (`pivot_root` needs a
/// mount point).
pub fn isolate_mounts(chroot_dir: &Path) -> Result<(), JailError> {
    let step = |name| jail_step(chroot_dir, name);
    let dir = CString::new(chroot_dir.as_os_str().as_bytes())
        .map_err(|_| step("path to C string")(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: unshare takes only flags.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(step("unshare(CLONE_NEWNS)"))?;
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map_err(step("making / private"))?;
    // SAFETY: as above; `dir` is a NUL-terminated copy of the jail path.
    check(unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map_err(step("bind-mounting the jail onto itself"))?;
    Ok(())
}

/// Moves this process into the jail (after [`isolate_mounts`]): `pivot_root` into
/// it and the old root detached, so no path leads out of the jail any more.
pub fn pivot_into(chroot_dir: &Path) -> Result<(), JailError> {
    let step = |name| jail_step(chroot_dir, name);
    std::env::set_current_dir(chroot_dir).map_err(step("chdir into the jail"))?;
    let old_root = c"old_root";
    // SAFETY: `old_root` is a NUL-terminated literal.
    let made = check(unsafe { libc::mkdir(old_root.as_ptr(), 0o700) });
    match made {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(step("mkdir old_root")(e));
        }
        _ => {}
    }
    // SAFETY: pivot_root reads two NUL-terminated paths; "." is the jail (the cwd).
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old_root.as_ptr()) })
        .map_err(step("pivot_root"))?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    // SAFETY: `old_root` is a NUL-terminated literal.
    check(unsafe { libc::umount2(old_root.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("unmounting the old root"))?;
    // SAFETY: as above.
    check(unsafe { libc::rmdir(old_root.as_ptr()) }).map_err(step("rmdir old_root"))?;
    Ok(())
}

/// Inside the jail: the directories spry writes in and the device nodes, all owned
/// by `uid:gid`.
pub fn populate(uid: u32, gid: u32, nodes: &[DeviceNode]) -> Result<(), JailError> {
    for dir in OWNED_DIRS {
        let failed = |source| JailError::CreateDir {
            path: dir.into(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(OWNED_DIR_MODE)
            .create(dir)
            .map_err(failed)?;
        // The root (and a directory left by an earlier jail) existed before; the mode
        // is set here for all alike.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(OWNED_DIR_MODE))
            .map_err(failed)?;
        chown(dir, uid, gid)?;
    }
    for node in nodes {
        match make_node(node, uid, gid) {
            Err(e) if node.optional => {
                eprintln!("spry-jailer: warning: {}; going on without it", e.line());
            }
            other => other?,
        }
    }
    Ok(())
}

/// `mknod` a character device readable and writable by its owner only, then hand
/// it to `uid:gid`.
fn make_node(node: &DeviceNode, uid: u32, gid: u32) -> Result<(), JailError> {
    let failed = |source| JailError::Mknod {
        path: node.path,
        source,
    };
    let path = CString::new(node.path).map_err(|_| failed(io::ErrorKind::InvalidInput.into()))?;
    // A node left by an earlier jail of the same id is replaced.
    match std::fs::remove_file(node.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, node.rdev) })
        .map_err(failed)?;
    chown(node.path, uid, gid)
}

fn chown(path: &str, uid: u32, gid: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| JailError::Chown {
        path: path.into(),
        uid,
        gid,
        source,
    })
}

/// A libc return value: -1 means errno says why.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_long(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
