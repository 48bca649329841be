//! Helpers for integration tests: guest artifacts, configs in temp dirs, and running
//! the `spry` binary in a child process with a deadline.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use spry::host::HostKvm;

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
}

impl Spry {
    pub fn new() -> Spry {
        let mut cmd = Command::new(spry_bin());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Spry {
            cmd,
            stdin: Vec::new(),
            timeout: Duration::from_secs(60),
        }
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

    pub fn spawn(&mut self) -> Child {
        self.cmd.spawn().expect("spawn spry")
    }

    /// Runs to completion (killing spry at the deadline) and collects its output.
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
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait spry") {
                break status;
            }
            if start.elapsed() > self.timeout {
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
        }
    }
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
