//! The last step before exec: become `uid:gid` with no supplementary groups, no
//! capability in any set (bounding and ambient included, so even `--uid 0` execs
//! spry without one) and `no_new_privs`, so nothing spry execs can gain any back.

use std::io;

use crate::error::JailError;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capget/capset's header (`struct __user_cap_header_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One 32-bit half of the capability sets (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops everything; then checks that no capability is left. `keep_groups` leaves
/// the supplementary groups alone, as a rootless jail must (its user namespace
/// denies `setgroups`, and a `kvm` group may be what opens `/dev/kvm`).
pub fn drop_to(uid: u32, gid: u32, keep_groups: bool) -> Result<(), JailError> {
    let failed = |step| {
        move |source| JailError::DropPrivileges {
            step,
            uid,
            gid,
            source,
        }
    };
    // While still root: the bounding set caps what any later exec can grant, and
    // changing it needs CAP_SETPCAP.
    drop_bounding_set().map_err(failed("prctl(PR_CAPBSET_DROP)"))?;
    // SAFETY: prctl with integer arguments only.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(cleared).map_err(failed("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    if !keep_groups {
        // SAFETY: a zero-length list: setgroups reads no memory.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(failed("setgroups"))?;
    }
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(failed("setresgid"))?;
    // Leaving uid 0 clears the permitted and effective sets by itself; capset below
    // also covers `--uid 0`, the inheritable set, and a rootless jail's user
    // namespace (whose maker holds every capability there without ever being uid 0).
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map_err(failed("setresuid"))?;
    set_no_capabilities().map_err(failed("capset"))?;
    // SAFETY: prctl with integer arguments only.
    let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(nnp).map_err(failed("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    if has_capabilities().map_err(failed("capget"))? {
        return Err(failed("checking that no capability is left")(
            io::Error::from(io::ErrorKind::PermissionDenied),
        ));
    }
    Ok(())
}

/// Drops every capability the kernel knows from the bounding set; the first
/// number it calls invalid ends the list.
fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                return Ok(());
            }
            return Err(err);
        }
    }
    Ok(())
}

fn set_no_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and the two data halves that version
    // implies; both live on the stack for the whole call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn has_capabilities() -> io::Result<bool> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes the two data halves a version-3 header implies into
    // `data`, which has room for exactly two.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(data
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
