//! Process plumbing: inherited descriptors, forks, daemonizing, the pid file and
//! the final exec.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::JailError;

/// Closes every descriptor above stderr: whatever the caller left open (a socket,
/// a host file) must not reach the jail.
pub fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: close_range takes only integers; descriptors 0-2 stay open, and nothing
    // in this process uses a higher one yet (std opens none at start-up).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret != 0 {
        return Err(JailError::CloseFds(io::Error::last_os_error()));
    }
    Ok(())
}

/// `fork`: `None` in the child, `Some(child pid)` in the parent.
pub fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: the jailer is single-threaded, so the child inherits no lock held by
    // another thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Ends this process at once: a parent that has handed over to its child has
/// nothing to flush or clean up.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit takes an integer and never returns.
    unsafe { libc::_exit(code) }
}

/// Detaches from the caller: fork (the parent exits 0), `setsid`, fork again so the
/// process is no session leader and can never gain a controlling terminal, then
/// stdin, stdout and stderr on `dev_null` (opened before entering the jail).
pub fn daemonize(dev_null: File) -> Result<(), JailError> {
    let failed = |step| move |source| JailError::Process { step, source };
    if fork().map_err(failed("fork to daemonize"))?.is_some() {
        exit_now(0);
    }
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } == -1 {
        return Err(failed("start a new session")(io::Error::last_os_error()));
    }
    if fork().map_err(failed("fork to daemonize"))?.is_some() {
        exit_now(0);
    }
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 takes two descriptors; `dev_null` is open for the whole call.
        if unsafe { libc::dup2(dev_null.as_raw_fd(), fd) } == -1 {
            return Err(failed("redirect stdio to /dev/null")(
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Writes `pid` to `path`: where callers find spry's pid, which differs from the
/// jailer's once it daemonizes or starts a PID namespace.
pub fn write_pid_file(path: &Path, pid: libc::pid_t) -> Result<(), JailError> {
    std::fs::write(path, pid.to_string()).map_err(|source| JailError::PidFile {
        path: path.to_owned(),
        source,
    })
}

/// Execs spry with an empty environment (nothing of the caller's leaks in), as
/// `<path> --id <id> <spry args>`. Returns only on failure.
pub fn exec_spry(path: &Path, id: &str, spry_args: &[OsString]) -> JailError {
    let source = Command::new(path)
        .env_clear()
        .arg("--id")
        .arg(id)
        .args(spry_args)
        .exec();
    JailError::Exec {
        path: PathBuf::from(path),
        source,
    }
}
