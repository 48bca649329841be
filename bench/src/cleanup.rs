//! Leaves nothing behind: every process group, runc container, tap and scratch path
//! the benchmark creates is registered here, removed when it is done with, and all of
//! them are removed when the benchmark ends or is interrupted (Ctrl-C, SIGTERM, SIGHUP).
//!
//! Each resource is created and registered inside [`creating`]. An interrupt's
//! cleanup waits for the creations in flight, so it sees what they registered, and
//! holds off new ones until the process has exited, so nothing is created after it.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

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

/// Shared by [`creating`]; the interrupt's cleanup takes it exclusively and keeps it
/// until the process exits.
static GATE: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this thread is inside [`creating`] (which may nest: a container's
    /// registration encloses the spawn of `runc run`).
    static CREATING: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`CREATING`] when the outermost [`creating`] ends, even by a panic.
struct Outermost;

impl Drop for Outermost {
    fn drop(&mut self) {
        CREATING.with(|c| c.set(false));
    }
}

/// Runs `create`, which creates resources and registers them here, so that an
/// interrupt's cleanup comes either after it (and removes what it registered) or
/// before it (and `create` never runs: this waits until the process has exited).
pub fn creating<T>(create: impl FnOnce() -> T) -> T {
    if CREATING.with(Cell::get) {
        return create();
    }
    // A second shared lock in this thread could wait behind the cleanup's exclusive
    // one while this thread holds the first: hence the nesting check above.
    let _shared = GATE.read().unwrap_or_else(PoisonError::into_inner);
    CREATING.with(|c| c.set(true));
    let _outermost = Outermost;
    create()
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A process group (a child spawned as its own group leader) to kill on cleanup
/// (register inside [`creating`], with the spawn).
pub fn add_process_group(pgid: i32) {
    registry().process_groups.insert(pgid);
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

/// A runc container to `runc delete -f` on cleanup (register inside [`creating`],
/// before `runc` creates it).
pub fn add_container(id: &str) {
    registry().containers.insert(id.to_owned());
}

/// Deletes a runc container (force) and forgets it.
pub fn delete_container(runc: &Path, id: &str) {
    runc_delete(runc, id);
    registry().containers.remove(id);
}

fn runc_delete(runc: &Path, id: &str) {
    quiet_command(runc, &["delete", "-f", id]);
}

/// A container that is gone already: forget it.
pub fn forget_container(id: &str) {
    registry().containers.remove(id);
}

/// A persistent tap device to delete on cleanup (register inside [`creating`],
/// before creating it).
pub fn add_tap(name: &str) {
    registry().taps.insert(name.to_owned());
}

/// Deletes a tap device and forgets it.
pub fn delete_tap(name: &str) {
    quiet_command("ip", &["link", "del", "dev", name]);
    registry().taps.remove(name);
}

/// A network namespace to delete on cleanup (register inside [`creating`], before
/// creating it).
pub fn add_netns(name: &str) {
    registry().netns.insert(name.to_owned());
}

/// Deletes a network namespace and forgets it.
pub fn delete_netns(name: &str) {
    quiet_command("ip", &["netns", "del", name]);
    registry().netns.remove(name);
}

fn quiet_command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A scratch file or directory to remove on cleanup (register inside [`creating`],
/// before creating it).
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
/// taps, removes scratch paths. During an interrupt's cleanup this waits for it
/// (which ends the process with 128 + the signal).
pub fn cleanup_all() {
    creating(remove_registered);
}

/// The interrupt's cleanup: waits for creations in flight, removes everything and
/// exits with `code`, keeping new creations waiting until then.
fn stop_and_exit(code: i32) -> ! {
    let _exclusive = GATE.write().unwrap_or_else(PoisonError::into_inner);
    remove_registered();
    std::process::exit(code)
}

fn remove_registered() {
    let taken = std::mem::take(&mut *registry());
    for pgid in &taken.process_groups {
        kill_group(*pgid);
    }
    let runc = crate::systems::runc::runc_path();
    for id in &taken.containers {
        runc_delete(&runc, id);
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
                stop_and_exit(128 + signal);
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

    #[test]
    fn test_creating_nests_without_waiting_on_itself() {
        let inner = creating(|| creating(|| 7));
        assert_eq!(inner, 7);
        // The outermost call ended: this thread's next call takes the gate again.
        assert!(!CREATING.with(Cell::get));
    }
}
