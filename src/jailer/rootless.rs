//! `--rootless`: the jail without root. A user namespace that maps only the calling
//! user gives the jailer the capabilities it needs over namespaces it creates
//! itself (a mount namespace, a PID namespace), never over the host's; device nodes
//! cannot be created there, so the host's are bind-mounted into the jail instead,
//! and spry opens them with the caller's own rights (e.g. `/dev/kvm` through the
//! `kvm` group).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::chroot::{self, DeviceNode};
use crate::error::JailError;

/// Enters a new user namespace in which the caller's uid and gid map to
/// themselves and nothing else does. Supplementary groups are kept (the kernel
/// requires `setgroups` to be denied before an unprivileged process may write its
/// gid map), so a `kvm` group still opens `/dev/kvm`.
pub fn enter_user_namespace(uid: u32, gid: u32) -> Result<(), JailError> {
    let failed = |step| move |source| JailError::Process { step, source };
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(failed("unshare a new user namespace")(
            io::Error::last_os_error(),
        ));
    }
    write_proc("/proc/self/setgroups", "deny").map_err(failed("deny setgroups"))?;
    write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1"))
        .map_err(failed("write the uid map"))?;
    write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1"))
        .map_err(failed("write the gid map"))?;
    Ok(())
}

/// One write, as /proc's map files require.
fn write_proc(path: &str, text: &str) -> io::Result<()> {
    std::fs::write(path, text)
}

/// Bind-mounts each host device node onto an empty file at the same path in the
/// jail (after the jail is bind-mounted onto itself, before `pivot_root`). A node
/// the host lacks or the caller cannot mount is skipped with a warning if spry can
/// do without it.
pub fn bind_devices(chroot_dir: &Path, nodes: &[DeviceNode]) -> Result<(), JailError> {
    for node in nodes {
        match bind_device(chroot_dir, node) {
            Err(e) if node.optional => {
                eprintln!("spry-jailer: warning: {}; going on without it", e.line());
            }
            other => other?,
        }
    }
    Ok(())
}

fn bind_device(chroot_dir: &Path, node: &DeviceNode) -> Result<(), JailError> {
    let failed = |source| JailError::Mknod {
        path: node.path,
        source,
    };
    let target: PathBuf = chroot_dir.join(node.path.trim_start_matches('/'));
    if let Some(dir) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
    }
    // The mount point: an empty file, never a link to follow.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(failed)?;
    chroot::mount(Some(Path::new(node.path)), &target, libc::MS_BIND).map_err(failed)
}
