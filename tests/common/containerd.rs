//! A private containerd for tests that run containers through a containerd runtime
//! v2 shim (runc's `io.containerd.runc.v2`, spry's `io.containerd.spry.v2`): each
//! [`Containerd`] is its own daemon on its own socket, root and state directory
//! (tools/containerd/containerd-env), with a busybox image built on this machine
//! (tools/containerd/oci-image) imported, since no registry is reachable. Dropping it
//! kills its tasks and shims and removes the directory.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{in_nested_host, repo, skip};

/// The image every [`Containerd`] has imported.
pub const IMAGE: &str = "localhost/spry-busybox:latest";

/// containerd's runtime name for runc.
pub const RUNC: &str = "io.containerd.runc.v2";

/// How long one `ctr` command may take before the harness kills it: a container
/// starts in a fraction of a second here, but everything is emulated in the
/// nested test host.
fn ctr_timeout() -> Duration {
    if in_nested_host() {
        Duration::from_secs(900)
    } else {
        Duration::from_secs(120)
    }
}

fn tool(name: &str) -> PathBuf {
    repo().join("tools/containerd").join(name)
}

fn in_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // containerd-env adds the sbin directories too (runc is in /usr/sbin).
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file())
}

/// `Some(reason)` when this host cannot run a private containerd: not root, or
/// containerd and ctr not installed (`tools/devtool setup` installs them).
pub fn containerd_unavailable() -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("containerd and its shims need root".into());
    }
    ["containerd", "ctr", "busybox"]
        .into_iter()
        .find(|p| !in_path(p))
        .map(|p| {
            format!("`{p}` is not installed (tools/devtool setup installs containerd and busybox-static)")
        })
}

/// The OCI archive of [`IMAGE`], built once per test process (oci-image caches it
/// across processes by content).
fn image_archive() -> Result<PathBuf, String> {
    static ARCHIVE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spry-busybox-oci.tar");
            let done = Command::new(tool("oci-image"))
                .arg(&out)
                .arg(IMAGE)
                .output()
                .map_err(|e| format!("cannot run tools/containerd/oci-image: {e}"))?;
            if !done.status.success() {
                return Err(format!(
                    "tools/containerd/oci-image failed: {}",
                    String::from_utf8_lossy(&done.stderr)
                ));
            }
            Ok(out)
        })
        .clone()
}

/// What runs before a command's stdin is written (e.g. waiting for its task).
type BeforeStdin = Box<dyn FnOnce() + Send>;

/// Runs `cmd` to its end or until `timeout` (then kills it and says so on the
/// returned stderr), feeding it `stdin` (if any) from a thread once `before_stdin`
/// returns, so that neither side can block the other.
fn output_within(
    cmd: &mut Command,
    stdin: Option<(Vec<u8>, BeforeStdin)>,
    timeout: Duration,
) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let feeder = stdin.map(|(bytes, before)| {
        let mut input = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            before();
            let _ = input.write_all(&bytes);
        })
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (status, timed_out) = wait_within(&mut child, timeout);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!("\n[harness: killed {cmd:?} after {timeout:?}]\n").as_bytes(),
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for `child` up to `timeout`, killing it then; says whether it had to.
fn wait_within(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return (status, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (child.wait().expect("wait for a killed child"), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the daemon on `dir` (`shim_dir` first in its PATH); returns the
/// snapshotter and namespace `containerd-env start` printed (`key=value` lines).
fn start_daemon(dir: &Path, shim_dir: Option<&Path>) -> Result<(String, String), String> {
    let mut cmd = Command::new(tool("containerd-env"));
    if let Some(shim_dir) = shim_dir {
        cmd.env("SPRY_SHIM_DIR", shim_dir);
    }
    let out = cmd
        .arg("start")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run tools/containerd/containerd-env: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "containerd-env start {} failed: {stdout}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("containerd-env start printed no {key}=: {stdout}"))
    };
    Ok((value("snapshotter")?, value("namespace")?))
}

/// A test's own containerd, stopped (with every task and shim it started) and its
/// directory removed on drop.
pub struct Containerd {
    dir: PathBuf,
    shim_dir: Option<PathBuf>,
    snapshotter: String,
    namespace: String,
    /// Seconds the last start took (the daemon answering), for reports.
    pub started_in: Duration,
    /// Seconds the image import took.
    pub imported_in: Duration,
}

impl Containerd {
    /// Starts a containerd in a new directory under `$TMPDIR` and imports [`IMAGE`].
    pub fn start() -> Result<Containerd, String> {
        Containerd::start_with_shims(None)
    }

    /// [`Containerd::start`] with `shim_dir` first in containerd's PATH, where it
    /// looks for `containerd-shim-<name>-v2` (e.g. the directory of
    /// `env!("CARGO_BIN_EXE_containerd-shim-spry-v2")`).
    pub fn start_with_shims(shim_dir: Option<&Path>) -> Result<Containerd, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let archive = image_archive()?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: containerd's sockets live in it and a socket path has 108 bytes.
        let dir = std::env::temp_dir().join(format!("spry-ctrd-{}-{n}", std::process::id()));
        let t = Instant::now();
        let (snapshotter, namespace) = start_daemon(&dir, shim_dir)?;
        let started_in = t.elapsed();
        let mut ctrd = Containerd {
            dir,
            shim_dir: shim_dir.map(Path::to_path_buf),
            snapshotter,
            namespace,
            started_in,
            imported_in: Duration::ZERO,
        };
        let t = Instant::now();
        let archive = archive.to_string_lossy().into_owned();
        let out = ctrd.ctr(&["image", "import", &archive]);
        if !out.status.success() {
            return Err(format!(
                "ctr image import {archive} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        ctrd.imported_in = t.elapsed();
        Ok(ctrd)
    }

    /// [`Containerd::start`], or `None` after recording why `test` is skipped when
    /// this host cannot run containerd (see [`containerd_unavailable`]). A
    /// containerd that is installed but fails to start is a test failure.
    pub fn start_or_skip(test: &str) -> Option<Containerd> {
        Containerd::start_or_skip_with_shims(test, None)
    }

    /// [`Containerd::start_or_skip`] with [`Containerd::start_with_shims`].
    pub fn start_or_skip_with_shims(test: &str, shim_dir: Option<&Path>) -> Option<Containerd> {
        if let Some(reason) = containerd_unavailable() {
            skip(test, &reason);
            return None;
        }
        match Containerd::start_with_shims(shim_dir) {
            Ok(c) => Some(c),
            Err(e) => panic!("{e}"),
        }
    }

    /// The directory holding its config, sockets, root, state and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its gRPC socket (`ctr --address`).
    pub fn address(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The containerd namespace its containers live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `overlayfs` or `native`.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The daemon's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn target(&self) -> Target {
        Target {
            address: self.address(),
            namespace: self.namespace.clone(),
            snapshotter: self.snapshotter.clone(),
        }
    }

    /// `ctr` pointed at this containerd, its namespace and snapshotter.
    pub fn ctr_command(&self) -> Command {
        self.target().command()
    }

    /// Runs `ctr ARGS...` to its end (no stdin).
    pub fn ctr(&self, args: &[&str]) -> Output {
        output_within(self.ctr_command().args(args), None, ctr_timeout())
    }

    /// Runs `ctr ARGS...` with `stdin` written to it at once and then closed.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        output_within(
            self.ctr_command().args(args),
            Some((stdin.to_vec(), Box::new(|| {}))),
            ctr_timeout(),
        )
    }

    fn run_args<'a>(runtime: &'a str, id: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--rm", "--runtime", runtime, IMAGE, id];
        v.extend_from_slice(args);
        v
    }

    /// `ctr run --rm --runtime RUNTIME IMAGE ID ARGS...`: the container's output, and
    /// its exit code as ctr's.
    pub fn run(&self, runtime: &str, id: &str, args: &[&str]) -> Output {
        self.ctr(&Self::run_args(runtime, id, args))
    }

    /// [`Containerd::run`] with `stdin` piped into the container. The bytes go in
    /// only once the task runs: ctr 1.6 passes the end of its stdin on to the task
    /// only if it comes after the task was created (earlier, its stdin closer is
    /// not yet set and the task never sees EOF).
    pub fn run_with_stdin(&self, runtime: &str, id: &str, args: &[&str], stdin: &[u8]) -> Output {
        let target = self.target();
        let id_owned = id.to_owned();
        output_within(
            self.ctr_command().args(Self::run_args(runtime, id, args)),
            Some((
                stdin.to_vec(),
                Box::new(move || {
                    target.wait_status(&id_owned, "RUNNING", ctr_timeout());
                }),
            )),
            ctr_timeout(),
        )
    }

    /// Starts `ctr run --rm --runtime RUNTIME IMAGE ID ARGS...` and returns at once;
    /// the child's exit status is the task's exit code once it ends.
    pub fn spawn_run(&self, runtime: &str, id: &str, args: &[&str]) -> Child {
        self.ctr_command()
            .args(Self::run_args(runtime, id, args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr run")
    }

    /// `ctr run -d --runtime RUNTIME IMAGE ID ARGS...`: creates the container and
    /// starts its task, detached from ctr; [`Containerd::delete_task`] collects it.
    pub fn run_detached(&self, runtime: &str, id: &str, args: &[&str]) -> Output {
        let mut v = vec!["run", "-d", "--runtime", runtime, IMAGE, id];
        v.extend_from_slice(args);
        self.ctr(&v)
    }

    /// The task's status as `ctr task ls` shows it (RUNNING, STOPPED, ...), if
    /// there is such a task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.target().task_status(id)
    }

    /// Waits up to `timeout` for the task's status to be `status`; says whether it
    /// came.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> bool {
        self.target().wait_status(id, status, timeout)
    }

    /// Deletes a stopped task and returns its exit code. ctr 1.6 has no `task wait`,
    /// and `task delete` exits 0 whatever the code: it tells a non-zero one only in
    /// a warning on stderr (`task ID exit with non-zero exit code N`).
    pub fn delete_task(&self, id: &str) -> Result<i32, String> {
        let out = self.ctr(&["task", "delete", id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("ctr task delete {id} failed: {stderr}"));
        }
        let marker = "exit with non-zero exit code ";
        match stderr.find(marker) {
            None => Ok(0),
            Some(at) => {
                let digits: String = stderr[at + marker.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits
                    .parse()
                    .map_err(|_| format!("no exit code in ctr's warning: {stderr}"))
            }
        }
    }

    /// Stops the containerd process only (tasks and shims keep running) and starts
    /// it again on the same directory, as an upgrade or crash of the daemon would.
    pub fn restart(&mut self) -> Result<(), String> {
        let out = Command::new(tool("containerd-env"))
            .arg("stop-daemon")
            .arg(&self.dir)
            .output()
            .map_err(|e| format!("cannot run tools/containerd/containerd-env: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "containerd-env stop-daemon failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let t = Instant::now();
        let (snapshotter, namespace) = start_daemon(&self.dir, self.shim_dir.as_deref())?;
        self.started_in = t.elapsed();
        assert_eq!(
            (snapshotter.as_str(), namespace.as_str()),
            (self.snapshotter.as_str(), self.namespace.as_str()),
            "a restarted containerd must keep its snapshotter and namespace"
        );
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(tool("containerd-env"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// What a `ctr` command needs to reach one containerd; owned, so a thread can keep
/// one (the stdin feeder of [`Containerd::run_with_stdin`]).
struct Target {
    address: PathBuf,
    namespace: String,
    snapshotter: String,
}

impl Target {
    fn command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        // ctr chooses the snapshotter on the client side; the daemon has no default.
        cmd.env("CONTAINERD_SNAPSHOTTER", &self.snapshotter)
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let out = output_within(self.command().args(["task", "ls"]), None, ctr_timeout());
        // TASK PID STATUS, one line each after the header.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(id)).then(|| cols.nth(1).unwrap_or_default().to_owned())
            })
    }

    fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.task_status(id).as_deref() == Some(status) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
