//! Joining the network namespace the caller prepared, and starting spry as init
//! of a PID namespace of its own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::JailError;
use crate::process;

/// Joins the network namespace whose handle is at `path` (e.g. one `ip netns add`
/// made): spry's taps and sockets then live there.
pub fn join_netns(path: &Path) -> Result<(), JailError> {
    let failed = |source| JailError::JoinNetns {
        path: path.to_owned(),
        source,
    };
    let handle = File::open(path).map_err(failed)?;
    // SAFETY: setns takes a descriptor this function owns for the whole call, and a flag.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Forks into a new PID namespace. Returns in the child, which is pid 1 there and
/// goes on to exec spry; the parent writes the child's host pid to `pid_file` and
/// exits 0, as Firecracker's jailer does.
pub fn enter_new_pid_ns(pid_file: &Path, daemonized: bool) -> Result<(), JailError> {
    let failed = |step| move |source| JailError::Process { step, source };
    // A session leader's exit sends SIGHUP to its session's foreground group, which
    // spry would be in; so unless daemonizing already left the session, the child
    // starts its own.
    // SAFETY: getsid and getpid take no pointers.
    let session_leader = !daemonized && unsafe { libc::getsid(0) == libc::getpid() };
    // SAFETY: unshare takes only flags; it affects this process's future children.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(failed("unshare a new PID namespace")(
            std::io::Error::last_os_error(),
        ));
    }
    let child = process::fork().map_err(failed("fork into the new PID namespace"))?;
    match child {
        None => {
            // SAFETY: setsid takes no arguments.
            if session_leader && unsafe { libc::setsid() } == -1 {
                return Err(failed("start a session for spry")(
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
        Some(pid) => {
            process::write_pid_file(pid_file, pid)?;
            process::exit_now(0)
        }
    }
}
