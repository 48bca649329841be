//! Helpers for integration tests: guest artifacts, configs in temp dirs, and running
//! the `spry` binary in a child process with a deadline.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spry::host::HostKvm;

pub mod containerd;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The spry binary under test.
pub fn spry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spry"))
}

/// Builds the probe guest if needed (it takes a second) and returns its directory.
pub fn probe_dir() -> PathBuf {
    let dir = repo().join("build/probe");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = Command::new(repo().join("resources/probe/build.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run resources/probe/build.sh");
        assert!(status.success(), "building the probe guest failed");
    });
    dir
}

/// The probe guest as an ELF vmlinux.
pub fn probe_vmlinux() -> PathBuf {
    probe_dir().join("vmlinux")
}

/// The probe guest as a bzImage.
pub fn probe_bzimage() -> PathBuf {
    probe_dir().join("bzImage")
}

/// A Linux guest artifact from `tools/devtool guest` (build/guest/NAME).
pub fn linux_artifact(name: &str) -> PathBuf {
    let path = repo().join("build/guest").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the Linux guest with `tools/devtool guest` (tools/devtool test does)",
        path.display()
    );
    path
}

/// Records that a test was skipped on this host, and why; `tools/devtool test` lists these.
pub fn skip(test: &str, reason: &str) {
    eprintln!("skipped {test}: {reason}");
    if let Ok(path) = std::env::var("SPRY_SKIPPED_TESTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// `Some(reason)` when this host cannot boot unmodified Linux.
pub fn linux_unavailable() -> Option<String> {
    match HostKvm::detect() {
        HostKvm::Pvm => Some(
            "needs hardware virtualization; /dev/kvm here is PVM, which runs Linux only through KVM's \
             instruction emulator, where it fails"
                .into(),
        ),
        _ => None,
    }
}

/// Whether this process runs inside the nested test host (tools/nested).
pub fn in_nested_host() -> bool {
    std::env::var_os("SPRY_NESTED_HOST").is_some()
}

/// How long a Linux guest in the nested test host may print nothing before its boot
/// counts as stalled for good: its longest quiet stretch in a sound boot is seconds.
pub const NESTED_SILENCE_LIMIT: Duration = Duration::from_secs(150);

/// A test failure the nested test host's emulator caused rather than spry (a guest
/// that stalled for good or triple-faulted at a point no real host shows): the
/// panic payload by which [`retry_emulator_faults`] tells it from a real failure.
#[derive(Debug)]
pub struct EmulatorFault(pub String);

/// Runs test `body`; where it fails on an [`EmulatorFault`] in the nested test host,
/// runs it again from scratch, up to `attempts` runs in all, each retry announced on
/// the process's own stderr (past the harness's capture) so that the run's log and
/// `tools/devtool test`'s summary name it even when the test then passes.
pub fn retry_emulator_faults(attempts: u32, body: impl Fn()) {
    for attempt in 1..=attempts {
        let failure = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) {
            Ok(()) => return,
            Err(failure) => failure,
        };
        let Some(EmulatorFault(fault)) = failure.downcast_ref::<EmulatorFault>() else {
            std::panic::resume_unwind(failure)
        };
        if attempt == attempts || !in_nested_host() {
            panic!("{fault}");
        }
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let _ = writeln!(
            std::io::stderr(),
            "RETRYING {test} (run {} of {attempts}) after {fault}",
            attempt + 1
        );
    }
}

/// Runs `cmd` to its end with `stdin` fed from a thread (so a command that writes
/// before it reads cannot deadlock against us), collecting stdout and stderr.
pub fn output_with_stdin(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().expect("wait for the command");
    let _ = feeder.join();
    out
}

/// A scratch directory removed on drop.
pub struct Scratch(pub vmm_sys_util::tempdir::TempDir);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(
            vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-test-").expect("temp dir"),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.as_path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }
}

/// How a spry run ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// spry was killed because it printed nothing for its silence limit.
    pub fell_silent: bool,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Lines the probe printed (`probe: ...`).
    pub fn probe_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("probe: "))
            .collect()
    }

    /// Asserts the probe's closing line says every check passed and spry exited 0.
    pub fn assert_probe_all_ok(&self) {
        let failed: Vec<_> = self
            .probe_lines()
            .into_iter()
            .filter(|l| l.contains("FAIL"))
            .collect();
        assert!(
            failed.is_empty(),
            "probe checks failed: {failed:#?}\n{self}"
        );
        assert!(
            self.probe_lines()
                .iter()
                .any(|l| l.starts_with("probe: all ") && l.ends_with(" checks ok")),
            "no 'all checks ok' line\n{self}"
        );
        assert_eq!(self.code(), Some(0), "spry did not exit 0\n{self}");
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit: {:?} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A configured spry invocation.
pub struct Spry {
    cmd: Command,
    stdin: Vec<u8>,
    timeout: Duration,
    silence_limit: Option<Duration>,
}

impl Spry {
    pub fn new() -> Spry {
        Spry::program(spry_bin())
    }

    /// Another program run like spry (stdio piped, same deadline), e.g. the jailer.
    pub fn program(path: impl AsRef<std::ffi::OsStr>) -> Spry {
        let mut cmd = Command::new(path);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Spry {
            cmd,
            stdin: Vec::new(),
            timeout: Duration::from_secs(60),
            silence_limit: None,
        }
    }

    /// The command, for settings these helpers do not cover.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// spry booting `config` (JSON text written to a file in `scratch`).
    pub fn with_config(scratch: &Scratch, config: &str) -> Spry {
        let path = scratch.write("vm.json", config.as_bytes());
        let mut s = Spry::new();
        s.arg("--config-file").arg(path);
        s
    }

    pub fn arg(&mut self, a: impl AsRef<std::ffi::OsStr>) -> &mut Spry {
        self.cmd.arg(a);
        self
    }

    pub fn stdin(&mut self, bytes: &[u8]) -> &mut Spry {
        self.stdin = bytes.to_vec();
        self
    }

    pub fn timeout(&mut self, t: Duration) -> &mut Spry {
        self.timeout = t;
        self
    }

    /// Kills spry early when neither its console nor its log printed anything for
    /// `limit` (a guest that stalled for good).
    pub fn silence_limit(&mut self, limit: Duration) -> &mut Spry {
        self.silence_limit = Some(limit);
        self
    }

    pub fn spawn(&mut self) -> Child {
        self.cmd.spawn().expect("spawn spry")
    }

    /// Runs to completion (killing spry at the deadline, or when it fell silent for
    /// its silence limit) and collects its output.
    pub fn run(&mut self) -> Outcome {
        let start = Instant::now();
        let mut child = self.spawn();
        let mut stdin = child.stdin.take().expect("stdin");
        let input = std::mem::take(&mut self.stdin);
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
            // Keep stdin open a little so the guest can read before EOF.
            std::thread::sleep(Duration::from_millis(50));
        });
        // Milliseconds after `start` at which spry last printed anything.
        let last_output = Arc::new(AtomicU64::new(0));
        let out_reader = read_all(child.stdout.take().expect("stdout"), start, &last_output);
        let err_reader = read_all(child.stderr.take().expect("stderr"), start, &last_output);
        let silent_since = || {
            start
                .elapsed()
                .saturating_sub(Duration::from_millis(last_output.load(Ordering::Relaxed)))
        };
        let mut fell_silent = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait spry") {
                break status;
            }
            fell_silent = self
                .silence_limit
                .is_some_and(|limit| silent_since() > limit);
            if fell_silent || start.elapsed() > self.timeout {
                let _ = child.kill();
                break child.wait().expect("wait killed spry");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = start.elapsed();
        let _ = feeder.join();
        Outcome {
            status,
            stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
            elapsed,
            fell_silent,
        }
    }
}

/// Reads `pipe` to its end on a thread, noting in `last_output` (milliseconds after
/// `start`) when bytes last arrived.
fn read_all(
    mut pipe: impl Read + Send + 'static,
    start: Instant,
    last_output: &Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<u8>> {
    let last_output = Arc::clone(last_output);
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            all.extend_from_slice(&chunk[..n]);
            let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            last_output.fetch_max(now, Ordering::Relaxed);
        }
        all
    })
}

/// A Firecracker-style config for `kernel`.
pub fn config(
    kernel: &Path,
    boot_args: &str,
    initrd: Option<&Path>,
    vcpus: u8,
    mem_mib: u32,
) -> String {
    let mut boot = serde_json::json!({
        "kernel_image_path": kernel,
        "boot_args": boot_args,
    });
    if let Some(initrd) = initrd {
        boot["initrd_path"] = serde_json::json!(initrd);
    }
    serde_json::json!({
        "boot-source": boot,
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib},
    })
    .to_string()
}

/// The probe's self-describing initrd: magic, total length, byte sum of the payload.
pub fn probe_initrd(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
    let total = u32::try_from(24 + payload_len).expect("initrd fits u32");
    let sum = payload
        .iter()
        .fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
    let mut v = b"SPRYPROBEINITRD\0".to_vec();
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&sum.to_le_bytes());
    v.extend_from_slice(&payload);
    v
}

/// Boot arguments for the probe in checks mode with the given expectations.
pub fn probe_args(extra: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 pci=off {extra}")
}

/// A network namespace of the test's own, with tap devices in it; removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates a namespace, or says why it cannot (not root, no `ip`).
    pub fn new(tag: &str) -> Result<NetNs, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return Err("needs root to create network namespaces and tap devices".into());
        }
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("spry-{tag}-{}-{n}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        if !status.success() {
            return Err(format!("`ip netns add {name}` failed"));
        }
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// Runs `ip ARGS` inside the namespace and asserts it worked.
    pub fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args)
            .status()
            .expect("run ip");
        assert!(status.success(), "ip {args:?} failed in {}", self.name);
    }

    /// Adds an up tap device called `tap`.
    pub fn add_tap(&self, tap: &str) {
        self.ip(&["tuntap", "add", tap, "mode", "tap"]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// A spry invocation that runs inside this namespace.
    pub fn spry(&self, scratch: &Scratch, config: &str) -> Spry {
        let path = scratch.write("vm.json", config.as_bytes());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(spry_bin())
            .arg("--config-file")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Spry {
            cmd,
            stdin: Vec::new(),
            timeout: Duration::from_secs(60),
            silence_limit: None,
        }
    }

    /// A raw AF_PACKET socket bound to `ifname` inside the namespace: sees every frame
    /// the guest sends on the tap, and sends frames the guest receives.
    pub fn packet_socket(&self, ifname: &str) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let path = format!("/var/run/netns/{}", self.name);
        let ifname = std::ffi::CString::new(ifname).expect("ifname");
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this scoped thread only, with a valid netns fd; the
                // thread ends right after creating the socket.
                let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(entered, 0, "setns");
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2) call.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
                assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
                // SAFETY: `fd` is a fresh socket we own.
                let sock = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: if_nametoindex reads a NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
                assert!(index > 0, "no interface {ifname:?}");
                // SAFETY: sockaddr_ll is plain data.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = i32::try_from(index).expect("ifindex");
                // SAFETY: `addr` is a valid sockaddr_ll of the given size.
                let ret = unsafe {
                    libc::bind(
                        sock.as_raw_fd(),
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
                sock
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Receives one frame from a packet socket, waiting up to `timeout`.
pub fn recv_frame(sock: &std::os::fd::OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
        return None;
    }
    let mut buf = vec![0u8; 70_000];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// Sends one frame on a packet socket.
pub fn send_frame(sock: &std::os::fd::OwnedFd, frame: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: `frame` is a valid buffer of its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(frame.len()),
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// A minimal emulator-safe ELF kernel: `code` at physical 0x1000000, entered there,
/// with spry's emulator-safe note so it boots on PVM hosts too.
pub fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x100_0000;
    let mut note = Vec::new();
    note.extend_from_slice(&5u32.to_le_bytes());
    note.extend_from_slice(&13u32.to_le_bytes());
    note.extend_from_slice(&1u32.to_le_bytes());
    note.extend_from_slice(b"spry\0\0\0\0");
    note.extend_from_slice(b"emulator-safe\0\0\0");
    let phoff = 64u64;
    let note_off = phoff + 2 * 56;
    let code_off = (note_off + note.len() as u64).next_multiple_of(16);
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // x86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes()); // entry
    elf.extend_from_slice(&phoff.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    let phdr = |kind: u32, flags: u32, off: u64, addr: u64, size: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&off.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&16u64.to_le_bytes());
        p
    };
    elf.extend(phdr(1, 5, code_off, BASE, code.len() as u64));
    elf.extend(phdr(4, 4, note_off, 0, note.len() as u64));
    elf.extend_from_slice(&note);
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(code);
    elf
}

/// A spry that is still running, with its console readable line by line.
pub struct Running {
    child: Child,
    start: Instant,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
    stderr_reader: Option<std::thread::JoinHandle<Vec<u8>>>,
    pub stdin: Option<std::process::ChildStdin>,
}

impl Spry {
    /// Starts spry and returns at once.
    pub fn start(&mut self) -> Running {
        let start = Instant::now();
        let mut child = self.spawn();
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            s
        });
        Running {
            stdin: child.stdin.take(),
            child,
            start,
            lines,
            seen: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
        }
    }
}

impl Running {
    /// Waits until the console shows a line for which `want` holds; returns it.
    pub fn wait_for(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = want(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for spry to exit (killing it at the deadline) and collects everything.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait spry") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait killed spry");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(r) = self.stdout_reader.take() {
            let _ = r.join();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let stderr = self
            .stderr_reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        let mut stdout = self.seen.join("\n");
        stdout.push('\n');
        Outcome {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: self.start.elapsed(),
            fell_silent: false,
        }
    }
}

/// Receives the next frame arriving from the guest (not frames the host sent
/// itself) whose EtherType is `ethertype`, within `timeout`.
pub fn recv_guest_frame(
    sock: &std::os::fd::OwnedFd,
    ethertype: u16,
    timeout: Duration,
) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 70_000];
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the sizes given.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::addr_of_mut!(from).cast(),
                &mut from_len,
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if !outgoing && n >= 14 && u16::from_be_bytes([buf[12], buf[13]]) == ethertype {
            return Some(buf[..n].to_vec());
        }
    }
}

/// The sha256 of the file at `path`, in hex (`sha256sum`).
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
