//! Leaves nothing behind: every process group, runc container, tap and scratch path
//! the benchmark creates is registered here, removed when it is done with, and all of
//! them are removed when the benchmark ends or is interrupted (Ctrl-C, SIGTERM, SIGHUP).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Errors installing the interrupt handling.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Blocking the stop signals failed.
    #[error("cannot block SIGINT/SIGTERM/SIGHUP (errno {0})")]
    Mask(i32),
    /// The signal-waiting thread could not start.
    #[error("cannot start the signal thread")]
    Thread(#[source] std::io::Error),
}

#[derive(Debug, Default)]
struct Registry {
    process_groups: BTreeSet<i32>,
    containers: BTreeSet<String>,
    taps: BTreeSet<String>,
    netns: BTreeSet<String>,
    paths: BTreeSet<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    process_groups: BTreeSet::new(),
    containers: BTreeSet::new(),
    taps: BTreeSet::new(),
    netns: BTreeSet::new(),
    paths: BTreeSet::new(),
});

/// Set once cleanup has started: whatever registers after that is removed at once.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A process group (a child spawned as its own group leader) to kill on cleanup.
pub fn add_process_group(pgid: i32) {
    registry().process_groups.insert(pgid);
    if stopping() {
        kill_group(pgid);
    }
}

/// The group's leader was reaped: forget it.
pub fn remove_process_group(pgid: i32) {
    registry().process_groups.remove(&pgid);
}

/// Kills process group `pgid` with SIGKILL.
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill only sends a signal; a negative pid names the process group,
        // and `pgid > 0` so this never becomes kill(-1) (every process).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// A runc container to `runc delete -f` on cleanup.
pub fn add_container(id: &str) {
    registry().containers.insert(id.to_owned());
}

/// Deletes a runc container (force) and forgets it.
pub fn delete_container(runc: &Path, id: &str) {
    let _ = Command::new(runc)
        .args(["delete", "-f", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    registry().containers.remove(id);
}

/// A container that is gone already: forget it.
pub fn forget_container(id: &str) {
    registry().containers.remove(id);
}

/// A persistent tap device to delete on cleanup.
pub fn add_tap(name: &str) {
    registry().taps.insert(name.to_owned());
}

/// Deletes a tap device and forgets it.
pub fn delete_tap(name: &str) {
    quiet_command("ip", &["link", "del", "dev", name]);
    registry().taps.remove(name);
}

/// A network namespace to delete on cleanup.
pub fn add_netns(name: &str) {
    registry().netns.insert(name.to_owned());
}

/// Deletes a network namespace and forgets it.
pub fn delete_netns(name: &str) {
    quiet_command("ip", &["netns", "del", name]);
    registry().netns.remove(name);
}

fn quiet_command(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A scratch file or directory to remove on cleanup.
pub fn add_path(path: &Path) {
    registry().paths.insert(path.to_owned());
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes everything still registered: kills process groups, deletes containers and
/// taps, removes scratch paths.
pub fn cleanup_all() {
    cleanup_registered();
}

/// Like [`cleanup_all`], and from now on kills whatever registers.
pub fn stop_everything() {
    STOPPING.store(true, Ordering::SeqCst);
    cleanup_registered();
}

fn cleanup_registered() {
    let taken = std::mem::take(&mut *registry());
    for pgid in &taken.process_groups {
        kill_group(*pgid);
    }
    let runc = crate::systems::runc::runc_path();
    for id in &taken.containers {
        let _ = Command::new(&runc)
            .args(["delete", "-f", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for tap in &taken.taps {
        quiet_command("ip", &["link", "del", "dev", tap]);
    }
    for netns in &taken.netns {
        quiet_command("ip", &["netns", "del", netns]);
    }
    for path in taken.paths.iter().rev() {
        remove(path);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call before any other thread
/// starts, so all inherit the mask) and starts a thread that waits for them, cleans
/// up and exits with 128 + the signal. Children get an empty mask from
/// `std::process::Command`, so they are unaffected.
pub fn install_interrupt_handler() -> Result<(), CleanupError> {
    let set = stop_signals();
    // SAFETY: `set` is an initialized signal set; pthread_sigmask only changes this
    // thread's mask and the old mask is not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(CleanupError::Mask(ret));
    }
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialized and `signal` is a valid place for the result;
            // sigwait only waits for one of the blocked signals in `set`.
            let ret = unsafe { libc::sigwait(&set, &mut signal) };
            if ret == 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "\nspry-bench: interrupted (signal {signal}): cleaning up"
                );
                stop_everything();
                std::process::exit(128 + signal);
            }
        })
        .map_err(CleanupError::Thread)?;
    Ok(())
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value for sigemptyset to initialize.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; these calls only edit it.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Runs [`cleanup_all`] when dropped, for the normal end of a benchmark.
#[derive(Debug)]
pub struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_registered_scratch_dir_is_removed_by_cleanup() {
        let dir = std::env::temp_dir().join(format!("spry-bench-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        add_path(&dir);
        cleanup_all();
        assert!(!dir.exists());
    }
}
