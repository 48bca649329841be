//! Leaves nothing behind: every process group, runc container, tap and scratch path
//! the benchmark creates is registered here, removed when it is done with, and all of
//! them are removed when the benchmark ends or is interrupted (Ctrl-C, SIGTERM, SIGHUP).
//!
//! Each resource is created and registered inside [`creating`]. An interrupt's
//! cleanup waits for the creations in flight, so it sees what they registered, and
//! holds off new ones until the process has exited, so nothing is created after it.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

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
    stoppable: BTreeSet<i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    process_groups: BTreeSet::new(),
    containers: BTreeSet::new(),
    taps: BTreeSet::new(),
    netns: BTreeSet::new(),
    paths: BTreeSet::new(),
    stoppable: BTreeSet::new(),
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

/// How long a stoppable process may take to clean up after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How a [`run_stoppable`] program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited (or was killed) with this status.
    Exited(ExitStatus),
    /// It printed nothing for the idle limit and was stopped.
    Silent,
}

/// Runs `cmd` to its end in a process group of its own, passing its output on to
/// ours. An interrupt's cleanup asks it to stop with SIGTERM, so that it can clean
/// up after itself (tools/nested/nested-host stops its QEMU and removes its run
/// directory), and kills its group if it has not ended within 30 s; so does this
/// function when it prints nothing for `idle` (it hangs).
pub fn run_stoppable(mut cmd: Command, idle: Duration) -> std::io::Result<Ended> {
    cmd.process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let set = stop_signals();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sigprocmask, which is async-signal-safe, with a signal set initialized here.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = creating(|| {
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        registry().stoppable.insert(pid);
        Ok::<_, std::io::Error>(child)
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let started = Instant::now();
    let last_output = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The forwarders end when the pipes close; a process the program left behind
    // may keep them open, so nobody waits for them.
    if let Some(out) = child.stdout.take() {
        forward(out, std::io::stdout(), started, last_output.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, std::io::stderr(), started, last_output.clone());
    }
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break Ended::Exited(status);
        }
        let quiet_for = started
            .elapsed()
            .saturating_sub(Duration::from_millis(last_output.load(Ordering::Relaxed)));
        if quiet_for >= idle {
            stop_gently(&BTreeSet::from([pid]));
            let _ = child.wait();
            break Ended::Silent;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    registry().stoppable.remove(&pid);
    Ok(ended)
}

/// Copies `from` to `to` as it comes, noting when (ms after `started`) in `last`.
fn forward(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    started: Instant,
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                return;
            }
            let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            last.store(now, Ordering::Relaxed);
            // Our own output gone is no reason to stop the program.
            let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
        }
    });
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn stop_gently(pids: &BTreeSet<i32>) {
    for &pid in pids.iter().filter(|&&p| p > 0) {
        // SAFETY: kill only sends a signal, to one process (pid > 0).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !pids.iter().all(|&p| ended(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        kill_group(pid);
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

/// Removes a scratch file or directory registered with [`add_path`] and forgets it.
pub fn remove_path(path: &Path) {
    remove(path);
    registry().paths.remove(path);
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
    stop_gently(&taken.stoppable);
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
/// up and exits with 128 + the signal. Children inherit the mask (a blocked signal
/// stays blocked across `exec`): the sandboxes spry-bench starts are stopped with
/// SIGKILL, and [`run_stoppable`] unblocks the three for the program it runs.
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

    /// cleanup_all stops whatever is registered, run_stoppable's program too: the
    /// tests that use either take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[test]
    fn test_registered_scratch_dir_is_removed_by_cleanup() {
        let dir = std::env::temp_dir().join(format!("spry-bench-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let _serial = serial();
        add_path(&dir);
        cleanup_all();
        assert!(!dir.exists());
    }

    #[test]
    fn test_a_stoppable_process_runs_to_its_end() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let _serial = serial();
        let ended = run_stoppable(cmd, Duration::from_secs(30)).unwrap();
        assert!(
            matches!(ended, Ended::Exited(s) if s.code() == Some(3)),
            "{ended:?}"
        );
    }

    #[test]
    fn test_a_stoppable_process_can_take_the_stop_signals() {
        // Block them here, as the interrupt handler does in every thread.
        let set = stop_signals();
        let mut old = stop_signals();
        // SAFETY: both sets are initialized; this changes only this thread's mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "grep '^SigBlk:' /proc/self/status | grep -q '0000000000000000$'",
        ]);
        let _serial = serial();
        let ended = run_stoppable(cmd, Duration::from_secs(30));
        // SAFETY: restores this thread's previous mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        assert!(
            matches!(ended, Ok(Ended::Exited(s)) if s.success()),
            "the child has signals blocked: {ended:?}"
        );
    }

    #[test]
    fn test_a_silent_stoppable_process_is_stopped() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let begun = Instant::now();
        let _serial = serial();
        let ended = run_stoppable(cmd, Duration::from_millis(500)).unwrap();
        assert_eq!(ended, Ended::Silent);
        assert!(begun.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn test_a_stoppable_process_gets_sigterm_and_its_group_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").process_group(0);
        let mut child = cmd.spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let started = Instant::now();
        stop_gently(&BTreeSet::from([pid]));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(ended(pid));
    }

    #[test]
    fn test_creating_nests_without_waiting_on_itself() {
        let inner = creating(|| creating(|| 7));
        assert_eq!(inner, 7);
        // The outermost call ended: this thread's next call takes the gate again.
        assert!(!CREATING.with(Cell::get));
    }
}
