//! spry-jailer on this host, as root: a jailed spry boots the probe guest from a
//! config inside its jail, and is seen from /proc to run as the jailed user, with no
//! capabilities, `no_new_privs`, in its own mount namespace rooted in the jail, in
//! the cgroup, network namespace and PID namespace asked for, held to its cgroup's
//! limits; a rootless jail does the same for a user without root. Bad arguments are
//! refused with one line before anything is created.
//!
//! Every jail lives in the test's scratch directory; every cgroup and network
//! namespace a test creates is removed when it ends.

mod api_support;
mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use api_support::curl;
use common::{config, probe_args, probe_vmlinux, spry_bin, NetNs, Outcome, Running, Scratch, Spry};

/// The user and group the tests jail spry as: unused on this host, and different
/// from each other so a swap would show.
const UID: u32 = 1234;
const GID: u32 = 4321;

/// Where the cgroup hierarchies are found.
const MOUNTINFO: &str = "/proc/self/mountinfo";

fn jailer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spry-jailer"))
}

/// Whether this test can run (the jailer needs root); records the skip if not.
fn running_as_root(test: &str) -> bool {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if !root {
        common::skip(test, "the jailer needs root");
    }
    root
}

/// A jail in a scratch directory: `<base>/spry/<id>/root`, prepared with the probe
/// guest, a config booting it (`/vm.json`) and spry's shared libraries (the test
/// build of spry is dynamically linked; a production spry would be static).
struct Jail {
    scratch: Scratch,
    base: PathBuf,
    id: String,
    exec_file: PathBuf,
}

impl Jail {
    fn new(tag: &str) -> Jail {
        let scratch = Scratch::new();
        let base = scratch.path("jails");
        std::fs::create_dir(&base).expect("create the chroot base");
        Jail {
            scratch,
            base,
            id: format!("{tag}-{}", std::process::id()),
            exec_file: spry_bin(),
        }
    }

    /// `<base>/spry/<id>/root`.
    fn root(&self) -> PathBuf {
        self.base.join("spry").join(&self.id).join("root")
    }

    /// Puts the probe, booted with `probe_extra` on its command line, into the jail.
    fn with_probe(self, probe_extra: &str) -> Jail {
        let probe = std::fs::read(probe_vmlinux()).expect("read the probe");
        self.with_kernel(&probe, &probe_args(probe_extra))
    }

    /// Puts `kernel` and a config booting it (`/vm.json`) into the jail.
    fn with_kernel(self, kernel: &[u8], boot_args: &str) -> Jail {
        let root = self.root();
        std::fs::create_dir_all(&root).expect("create the jail root");
        std::fs::write(root.join("vmlinux"), kernel).expect("write the kernel");
        let vm = config(Path::new("/vmlinux"), boot_args, None, 1, 128);
        std::fs::write(root.join("vm.json"), vm).expect("write vm.json");
        copy_shared_libraries(&spry_bin(), &root);
        self
    }

    /// The jailer confining spry in this jail, with `args` for the jailer and
    /// `spry_args` after `--`.
    fn jailer(&self, args: &[&str], spry_args: &[&str]) -> Spry {
        self.jailer_through(Spry::program(jailer_bin()), args, spry_args)
    }

    /// `launcher` (a command that ends by running the jailer) given the jailer's
    /// arguments.
    fn jailer_through(&self, mut cmd: Spry, args: &[&str], spry_args: &[&str]) -> Spry {
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(&self.exec_file)
            .arg("--uid")
            .arg(UID.to_string())
            .arg("--gid")
            .arg(GID.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.base);
        for a in args {
            cmd.arg(a);
        }
        cmd.arg("--");
        for a in spry_args {
            cmd.arg(a);
        }
        cmd.timeout(Duration::from_secs(30));
        cmd
    }

    /// A jailed spry booting `/vm.json` in console mode (it runs until it reads `q`),
    /// started and past the guest's checks.
    fn start_console(self, args: &[&str], spry_args: &[&str]) -> (Jail, Running) {
        let jail = self.with_probe("probe.mode=console");
        let mut spry_args = spry_args.to_vec();
        spry_args.extend(["--config-file", "/vm.json"]);
        let mut running = jail.jailer(args, &spry_args).start();
        let ready = running.wait_for(|l| l == "probe: console ready", Duration::from_secs(20));
        assert!(ready.is_some(), "the jailed guest never got ready");
        (jail, running)
    }
}

/// Ends a console-mode probe and collects the run.
fn stop_console(mut running: Running) -> Outcome {
    if let Some(stdin) = running.stdin.as_mut() {
        let _ = stdin.write_all(b"q");
    }
    running.finish(Duration::from_secs(20))
}

/// Copies the libraries `ldd` lists for `binary`, and its loader, to the same paths
/// under `root`.
fn copy_shared_libraries(binary: &Path, root: &Path) {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let libraries = text.lines().filter_map(|l| {
        let path = l.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    for lib in libraries {
        let dst = root.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dst.parent().expect("a parent")).expect("create lib dir");
        std::fs::copy(&lib, &dst).expect("copy a shared library");
    }
}

/// One `Key:` line of /proc/<pid>/status, its value trimmed.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The cgroup2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string(MOUNTINFO).expect("read mountinfo");
    let line = info
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .expect("cgroup2 is mounted");
    PathBuf::from(line.split_whitespace().nth(4).expect("a mount point"))
}

/// Whether the v2 hierarchy offers `controller` (listed in its `cgroup.controllers`).
fn v2_offers(controller: &str) -> bool {
    std::fs::read_to_string(cgroup2_root().join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

/// Every cgroup v1 hierarchy: (mount point, its controllers).
fn cgroup1_hierarchies() -> Vec<(PathBuf, Vec<String>)> {
    let info = std::fs::read_to_string(MOUNTINFO).expect("read mountinfo");
    info.lines()
        .filter_map(|l| {
            let (fields, rest) = l.split_once(" - ")?;
            let rest: Vec<&str> = rest.split_whitespace().collect();
            (rest.first() == Some(&"cgroup")).then(|| {
                let mount = PathBuf::from(fields.split_whitespace().nth(4).unwrap_or("/"));
                let controllers = rest.get(2).unwrap_or(&"").split(',').map(str::to_owned);
                (mount, controllers.collect())
            })
        })
        .collect()
}

/// The v1 hierarchy holding `controller`, if one is mounted.
fn cgroup1_hierarchy(controller: &str) -> Option<PathBuf> {
    cgroup1_hierarchies()
        .into_iter()
        .find(|(_, controllers)| controllers.iter().any(|c| c == controller))
        .map(|(mount, _)| mount)
}

/// A parent cgroup of the test's own, in whichever hierarchies the jailer uses; on
/// drop, the processes in the cgroups below it are killed and all are removed.
struct TestCgroup {
    parent: String,
}

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        TestCgroup {
            parent: format!("spry-jailer-test-{tag}-{}", std::process::id()),
        }
    }

    /// The parent in the v2 hierarchy.
    fn dir(&self) -> PathBuf {
        cgroup2_root().join(&self.parent)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let roots = std::iter::once(cgroup2_root())
            .chain(cgroup1_hierarchies().into_iter().map(|(mount, _)| mount));
        for parent in roots.map(|root| root.join(&self.parent)) {
            let Ok(children) = std::fs::read_dir(&parent) else {
                continue;
            };
            let children: Vec<PathBuf> = children
                .filter_map(Result::ok)
                .map(|c| c.path())
                .filter(|p| p.is_dir())
                .collect();
            // Below first, then the parent (which a test may have had spry join).
            for dir in children.iter().chain([&parent]) {
                kill_cgroup(dir);
                let deadline = Instant::now() + Duration::from_secs(5);
                while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// Kills what is left in a cgroup: `cgroup.kill` in v2, each task in v1.
fn kill_cgroup(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap_or_default();
    for pid in tasks.lines().filter_map(|t| t.parse::<i32>().ok()) {
        // SAFETY: kill takes integers; the task is in the test's own cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Waits until `path` exists (a file another process writes), up to `timeout`.
fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- booting jailed ----

#[test]
fn test_jailed_spry_boots_the_probe_from_a_config_inside_the_jail() {
    if !running_as_root("test_jailed_spry_boots_the_probe_from_a_config_inside_the_jail") {
        return;
    }
    let jail = Jail::new("boot").with_probe("");

    let out = jail.jailer(&[], &["--config-file", "/vm.json"]).run();

    out.assert_probe_all_ok();
}

/// An XFS file system with reflinks in a loop-mounted image; unmounted on drop.
struct XfsMount {
    dir: PathBuf,
}

impl XfsMount {
    /// Makes and mounts one under `scratch`, or says why it cannot.
    fn new(scratch: &Scratch) -> Result<XfsMount, String> {
        let image = scratch.path("xfs.img");
        let dir = scratch.path("xfs");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(300 << 20).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| {
            cmd.output()
                .map_err(|e| format!("{cmd:?}: {e}"))
                .and_then(|o| {
                    o.status
                        .success()
                        .then_some(())
                        .ok_or_else(|| format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr)))
                })
        };
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir))?;
        Ok(XfsMount { dir })
    }

    /// Free bytes on it.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: an all-zero statvfs is a valid value for statvfs to overwrite.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` writable; both outlive the call.
        let ret = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(ret, 0, "statvfs");
        st.f_bavail * st.f_frsize
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// On a file system that shares extents, the jailer's copy of the binary is a
/// reflink (`copy_file_range` makes one): a file of its own (no page shared with
/// other jails) that takes no space and no time to make.
#[test]
fn test_exec_file_is_reflinked_where_the_file_system_can() {
    let test = "test_exec_file_is_reflinked_where_the_file_system_can";
    if !running_as_root(test) {
        return;
    }
    let mut jail = Jail::new("reflink");
    let xfs = match XfsMount::new(&jail.scratch) {
        Ok(xfs) => xfs,
        Err(why) => {
            common::skip(test, &format!("no XFS with reflinks here: {why}"));
            return;
        }
    };
    let exec_file = xfs.dir.join("spry");
    std::fs::copy(spry_bin(), &exec_file).expect("copy spry onto XFS");
    let size = std::fs::metadata(&exec_file).expect("stat").len();
    jail.base = xfs.dir.join("jails");
    std::fs::create_dir(&jail.base).expect("create the chroot base");
    jail.exec_file = exec_file.clone();
    let jail = jail.with_probe("");
    let before = xfs.free();

    let out = jail.jailer(&[], &["--config-file", "/vm.json"]).run();

    let used = before.saturating_sub(xfs.free());
    let copy = jail.root().join("spry");
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        std::fs::read(&copy).expect("read the jail's copy"),
        std::fs::read(&exec_file).expect("read the exec file")
    );
    let (src, dst) = (
        std::fs::metadata(&exec_file).expect("stat"),
        std::fs::metadata(&copy).expect("stat"),
    );
    assert_ne!(
        src.ino(),
        dst.ino(),
        "the jail's binary is a link, not a file of its own"
    );
    assert!(
        used < size / 4,
        "the copy took {used} bytes of {size}: not a reflink"
    );
}

#[test]
fn test_jail_layout_and_device_nodes_belong_to_the_jailed_user() {
    if !running_as_root("test_jail_layout_and_device_nodes_belong_to_the_jailed_user") {
        return;
    }
    let jail = Jail::new("layout").with_probe("");

    let out = jail.jailer(&[], &["--config-file", "/vm.json"]).run();

    out.assert_probe_all_ok();
    let root = jail.root();
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p);
    // The jail root and the directories spry writes in: the jailed user's alone.
    for dir in ["", "dev", "dev/net", "run"] {
        let m = meta(dir);
        assert!(m.is_dir(), "{dir}");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (UID, GID, 0o700),
            "{dir}"
        );
    }
    // spry's private copy: root's, not writable by the jailed user.
    let exec = meta("spry");
    assert!(exec.is_file());
    assert_eq!(
        exec.len(),
        std::fs::metadata(spry_bin()).expect("spry").len()
    );
    assert_eq!((exec.uid(), exec.permissions().mode() & 0o777), (0, 0o555));
    // Character devices with the host's numbers (major, minor), owner-only.
    let device = |p: &str| {
        let m = meta(p);
        assert!(m.file_type().is_char_device(), "{p}");
        let rdev = m.rdev();
        (
            libc::major(rdev),
            libc::minor(rdev),
            m.uid(),
            m.gid(),
            m.mode() & 0o777,
        )
    };
    assert_eq!(device("dev/kvm"), (10, 232, UID, GID, 0o600));
    assert_eq!(device("dev/net/tun"), (10, 200, UID, GID, 0o600));
    assert_eq!(device("dev/urandom"), (1, 9, UID, GID, 0o600));
    // The pid file names the process that became spry.
    let pid: u32 = std::fs::read_to_string(root.join("spry.pid"))
        .expect("spry.pid")
        .parse()
        .expect("a pid");
    assert!(pid > 1);
}

#[test]
fn test_jailed_spry_runs_as_the_given_user_with_no_capabilities_and_no_new_privs() {
    if !running_as_root(
        "test_jailed_spry_runs_as_the_given_user_with_no_capabilities_and_no_new_privs",
    ) {
        return;
    }
    let (_jail, running) = Jail::new("privs").start_console(&[], &[]);
    let pid = running.pid();

    let ids = |key| status_field(pid, key);
    let fields = [
        ids("Uid"),
        ids("Gid"),
        ids("Groups"),
        ids("CapInh"),
        ids("CapPrm"),
        ids("CapEff"),
        ids("CapBnd"),
        ids("CapAmb"),
        ids("NoNewPrivs"),
        ids("Seccomp"),
    ];
    let out = stop_console(running);

    let no_caps = "0000000000000000".to_owned();
    assert_eq!(
        fields,
        [
            format!("{UID}\t{UID}\t{UID}\t{UID}"),
            format!("{GID}\t{GID}\t{GID}\t{GID}"),
            String::new(),
            no_caps.clone(),
            no_caps.clone(),
            no_caps.clone(),
            no_caps.clone(),
            no_caps,
            "1".to_owned(),
            // spry's own seccomp filter is on, jailed or not.
            "2".to_owned(),
        ]
    );
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_jailed_spry_sees_only_the_jail_in_its_own_mount_namespace() {
    if !running_as_root("test_jailed_spry_sees_only_the_jail_in_its_own_mount_namespace") {
        return;
    }
    let (jail, running) = Jail::new("mntns").start_console(&[], &["--api-sock", "/run/api.sock"]);
    let pid = running.pid();

    let ns = |p: &str| std::fs::read_link(p).expect("read a namespace link");
    let spry_mnt_ns = ns(&format!("/proc/{pid}/ns/mnt"));
    let own_mnt_ns = ns("/proc/self/ns/mnt");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("list a directory")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        names.sort();
        names
    };
    let spry_sees = listing(Path::new(&format!("/proc/{pid}/root")));
    let jail_holds = listing(&jail.root());
    let sees_etc = Path::new(&format!("/proc/{pid}/root/etc")).exists();
    let sees_proc = Path::new(&format!("/proc/{pid}/root/proc")).exists();
    let socket = std::fs::symlink_metadata(jail.root().join("run/api.sock"));
    let out = stop_console(running);

    assert_ne!(spry_mnt_ns, own_mnt_ns);
    // One mount: the jail, at "/". Nothing of the host is mounted.
    let mounts: Vec<Vec<&str>> = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(mounts.len(), 1, "{mountinfo}");
    assert_eq!(mounts[0][4], "/", "{mountinfo}");
    assert!(
        mounts[0][3].ends_with(&format!("/spry/{}/root", jail.id)),
        "{mountinfo}"
    );
    // Its "/" is the jail: the same entries (spry, vm.json, dev, run, ...).
    assert_eq!(spry_sees, jail_holds);
    assert!(!sees_etc && !sees_proc);
    // spry's API socket, created at /run/api.sock, is in the jail.
    assert!(socket.expect("the API socket").file_type().is_socket());
    assert_eq!(out.code(), Some(0), "{out}");
}

/// `--share-exec-file`: spry runs the host's binary itself (same inode, its pages
/// shared with every other spry), mounted read-only, nosuid and nodev in the jail's
/// mount namespace alone; the host sees only the empty file it is mounted on.
#[test]
fn test_shared_exec_file_is_the_host_binary_mounted_read_only_in_the_jail_alone() {
    let test = "test_shared_exec_file_is_the_host_binary_mounted_read_only_in_the_jail_alone";
    if !running_as_root(test) {
        return;
    }
    let (jail, running) = Jail::new("shared").start_console(&["--share-exec-file"], &[]);
    let pid = running.pid();

    let runs = std::fs::metadata(format!("/proc/{pid}/exe")).expect("stat spry's binary");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let host_mounts = std::fs::read_to_string(MOUNTINFO).expect("the host's mountinfo");
    let write_through = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/root/spry"))
        .is_ok();
    let out = stop_console(running);

    let host = std::fs::metadata(&jail.exec_file).expect("stat the exec file");
    assert_eq!((runs.dev(), runs.ino()), (host.dev(), host.ino()));
    let exec_mount = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|m| m[4] == "/spry")
        .unwrap_or_else(|| panic!("no mount at /spry: {mountinfo}"));
    let options: Vec<&str> = exec_mount[5].split(',').collect();
    for option in ["ro", "nosuid", "nodev"] {
        assert!(options.contains(&option), "{mountinfo}");
    }
    // Not writable even by root, through the jail's own view of it.
    assert!(!write_through);
    let in_jail = jail.root().join("spry");
    assert_eq!(std::fs::metadata(&in_jail).expect("stat").len(), 0);
    assert!(
        !host_mounts.contains(&format!("/spry/{}/root/spry", jail.id)),
        "{host_mounts}"
    );
    assert_eq!(out.code(), Some(0), "{out}");
}

/// An API client that names host files outside the jail, in every way it can
/// (absolute host paths, `..` past the jail's root, symlinks planted in the jail
/// pointing out of it), for every path the API opens or creates: kernel, drive,
/// logger, metrics, vsock socket, snapshot files. Each request is refused or lands
/// in the jail; nothing outside is read, created or changed, and the sandbox boots
/// and runs afterwards.
#[test]
fn test_jailed_spry_cannot_reach_files_outside_its_jail_through_the_api() {
    if !running_as_root("test_jailed_spry_cannot_reach_files_outside_its_jail_through_the_api") {
        return;
    }
    let jail = Jail::new("escape").with_probe("probe.mode=console");
    let outside = jail.scratch.path("outside");
    std::fs::create_dir(&outside).expect("create the outside directory");
    let secret = outside.join("secret");
    std::fs::write(&secret, b"not for the guest\n").expect("write the secret");
    std::fs::copy(probe_vmlinux(), outside.join("vmlinux")).expect("copy the kernel out");
    let host_path = |name: &str| outside.join(name).to_string_lossy().into_owned();
    // `..` past "/" stays at "/": in the jail these name jail paths that do not exist.
    let climb = |name: &str| format!("{}{}", "../".repeat(32), host_path(name));
    std::os::unix::fs::symlink(&outside, jail.root().join("out")).expect("plant a symlink");
    std::os::unix::fs::symlink(outside.join("vmlinux"), jail.root().join("kernel-link"))
        .expect("plant a symlink");
    let before = listing(&outside);

    let mut running = jail.jailer(&[], &["--api-sock", "/run/api.sock"]).start();
    let socket = jail.root().join("run/api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the jailed API socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let put = |path: &str, body: String| curl(&socket, "PUT", path, &body);
    let refused = |what: &str, (status, answer): (u16, String)| {
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(!answer.contains("not for the guest"), "{what}: {answer}");
        // Not a permission error: in the jail these paths do not exist at all.
        assert!(
            answer.contains("No such file or directory"),
            "{what}: {answer}"
        );
    };

    let args = probe_args("probe.mode=console");
    for kernel in [
        host_path("vmlinux"),
        climb("vmlinux"),
        "/kernel-link".into(),
    ] {
        let body = format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "{args}"}}"#);
        refused(&format!("kernel {kernel}"), put("/boot-source", body));
    }
    for drive in [host_path("secret"), climb("secret"), "/out/secret".into()] {
        let body = format!(
            r#"{{"drive_id": "d", "path_on_host": "{drive}", "is_root_device": false,
                "is_read_only": true}}"#
        );
        refused(&format!("drive {drive}"), put("/drives/d", body));
    }
    for log in [host_path("log"), climb("log"), "/out/log".into()] {
        refused(
            &format!("log {log}"),
            put("/logger", format!(r#"{{"log_path": "{log}"}}"#)),
        );
    }
    for metrics in [host_path("metrics"), "/out/metrics".into()] {
        let body = format!(r#"{{"metrics_path": "{metrics}"}}"#);
        refused(&format!("metrics {metrics}"), put("/metrics", body));
    }

    // The sandbox still boots from what the jail holds.
    let body = format!(r#"{{"kernel_image_path": "/vmlinux", "boot_args": "{args}"}}"#);
    let (status, answer) = put("/boot-source", body);
    assert_eq!(status, 204, "{answer}");
    let (status, answer) = put("/actions", r#"{"action_type": "InstanceStart"}"#.into());
    assert_eq!(status, 204, "{answer}");
    let ready = running.wait_for(|l| l == "probe: console ready", Duration::from_secs(20));
    assert!(ready.is_some(), "the jailed guest never got ready");

    let (status, answer) = curl(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{answer}");
    for (snap, mem) in [
        (host_path("snap"), host_path("mem")),
        (climb("snap"), climb("mem")),
        ("/out/snap".into(), "/out/mem".into()),
    ] {
        let body = format!(r#"{{"snapshot_path": "{snap}", "mem_file_path": "{mem}"}}"#);
        refused(&format!("snapshot {snap}"), put("/snapshot/create", body));
    }
    let (status, answer) = curl(&socket, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(status, 204, "{answer}");
    let out = stop_console(running);

    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        listing(&outside),
        before,
        "something was created outside the jail"
    );
    assert_eq!(
        std::fs::read(&secret).expect("read the secret"),
        b"not for the guest\n"
    );
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("list a directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn test_inherited_descriptors_do_not_reach_spry() {
    if !running_as_root("test_inherited_descriptors_do_not_reach_spry") {
        return;
    }
    /// A descriptor number far above any spry opens itself.
    const LEAKED_FD: i32 = 900;
    let jail = Jail::new("fds").with_probe("probe.mode=console");
    let host_file = std::fs::File::open("/etc/hostname").expect("open a host file");
    let mut jailer = jail.jailer(&[], &["--config-file", "/vm.json"]);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&host_file);
    // SAFETY: dup2 in the forked child before exec: it duplicates an open descriptor
    // without the close-on-exec flag, as a careless caller would leak it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(jailer.command(), move || {
            if libc::dup2(raw, LEAKED_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut running = jailer.start();
    let ready = running.wait_for(|l| l == "probe: console ready", Duration::from_secs(20));
    assert!(ready.is_some(), "the jailed guest never got ready");

    let leaked = Path::new(&format!("/proc/{}/fd/{LEAKED_FD}", running.pid())).exists();
    let out = stop_console(running);

    assert!(!leaked, "descriptor {LEAKED_FD} reached spry");
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_resource_limits_bound_spry() {
    if !running_as_root("test_resource_limits_bound_spry") {
        return;
    }
    let limits = [
        "--resource-limit",
        "no-file=1000",
        "--resource-limit",
        "fsize=1048576",
    ];
    let (_jail, running) = Jail::new("rlimit").start_console(&limits, &[]);

    let text = std::fs::read_to_string(format!("/proc/{}/limits", running.pid())).expect("limits");
    let out = stop_console(running);

    let limit = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).expect(name);
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max open files"), "1000 1000");
    assert_eq!(limit("Max file size"), "1048576 1048576");
    assert_eq!(out.code(), Some(0), "{out}");
}

// ---- cgroups ----

#[test]
fn test_cgroup_files_are_written_and_spry_runs_in_the_cgroup() {
    if !running_as_root("test_cgroup_files_are_written_and_spry_runs_in_the_cgroup") {
        return;
    }
    let cgroup = TestCgroup::new("files");
    // Core cgroup files, which every v2 hierarchy has whatever controllers it offers.
    let args = [
        "--cgroup-version",
        "2",
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        "cgroup.max.descendants=3",
        "--cgroup",
        "cgroup.max.depth=2",
    ];
    let (jail, running) = Jail::new("cgfiles").start_console(&args, &[]);
    let dir = cgroup.dir().join(&jail.id);

    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid()));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let values = [read("cgroup.max.descendants"), read("cgroup.max.depth")];
    let out = stop_console(running);

    let expected = format!("0::/{}/{}", cgroup.parent, jail.id);
    assert!(
        membership.expect("cgroup").lines().any(|l| l == expected),
        "spry is not in {expected}"
    );
    assert_eq!(values, ["3\n", "2\n"]);
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_v2_without_cgroup_files_joins_an_existing_parent_cgroup() {
    let test = "test_v2_without_cgroup_files_joins_an_existing_parent_cgroup";
    if !running_as_root(test) {
        return;
    }
    // A cgroup the caller prepared; the jailer moves spry into it and creates none.
    let cgroup = TestCgroup::new("join");
    std::fs::create_dir(cgroup.dir()).expect("create the parent cgroup");
    let args = ["--cgroup-version", "2", "--parent-cgroup", &cgroup.parent];
    let (jail, running) = Jail::new("join").start_console(&args, &[]);

    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid()));
    let created_below = cgroup.dir().join(&jail.id).exists();
    let out = stop_console(running);

    let expected = format!("0::/{}", cgroup.parent);
    assert!(
        membership.expect("cgroup").lines().any(|l| l == expected),
        "spry is not in {expected}"
    );
    assert!(!created_below);
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_cpu_memory_and_pids_limits_are_applied() {
    let test = "test_cpu_memory_and_pids_limits_are_applied";
    if !running_as_root(test) {
        return;
    }
    let offered =
        std::fs::read_to_string(cgroup2_root().join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    if !missing.is_empty() {
        common::skip(
            test,
            &format!(
                "the cgroup v2 hierarchy at {} offers {:?}, not {missing:?} (they are bound to \
                 cgroup v1 hierarchies on this host)",
                cgroup2_root().display(),
                offered.trim()
            ),
        );
        return;
    }
    let cgroup = TestCgroup::new("limits");
    let args = [
        "--cgroup-version",
        "2",
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        "cpu.max=50000 100000",
        "--cgroup",
        "memory.max=268435456",
        "--cgroup",
        "pids.max=64",
    ];
    let (jail, running) = Jail::new("cglimits").start_console(&args, &[]);
    let dir = cgroup.dir().join(&jail.id);

    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid()));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let values = [read("cpu.max"), read("memory.max"), read("pids.max")];
    let out = stop_console(running);

    let expected = format!("0::/{}/{}", cgroup.parent, jail.id);
    assert!(membership.expect("cgroup").lines().any(|l| l == expected));
    assert_eq!(values, ["50000 100000\n", "268435456\n", "64\n"]);
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_cgroup_v1_pids_and_cpu_limits_are_applied() {
    let test = "test_cgroup_v1_pids_and_cpu_limits_are_applied";
    if !running_as_root(test) {
        return;
    }
    let (Some(cpu), Some(pids)) = (cgroup1_hierarchy("cpu"), cgroup1_hierarchy("pids")) else {
        common::skip(
            test,
            "no cgroup v1 hierarchy with the cpu and pids controllers",
        );
        return;
    };
    let cgroup = TestCgroup::new("v1");
    let args = [
        "--cgroup-version",
        "1",
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        "cpu.cfs_quota_us=50000",
        "--cgroup",
        "pids.max=64",
    ];
    let (jail, running) = Jail::new("cgv1").start_console(&args, &[]);
    let below = Path::new(&cgroup.parent).join(&jail.id);

    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid()));
    let quota = std::fs::read_to_string(cpu.join(&below).join("cpu.cfs_quota_us"));
    let pids_max = std::fs::read_to_string(pids.join(&below).join("pids.max"));
    let out = stop_console(running);

    let membership = membership.expect("cgroup");
    for controller in ["cpu", "pids"] {
        let line = format!(":{controller}:/{}", below.display());
        assert!(
            membership.lines().any(|l| l.ends_with(&line)),
            "spry is not in {line}: {membership}"
        );
    }
    assert_eq!(quota.expect("cpu.cfs_quota_us"), "50000\n");
    assert_eq!(pids_max.expect("pids.max"), "64\n");
    assert_eq!(out.code(), Some(0), "{out}");
}

/// A guest that says "spin" on COM1 and then spins forever: `mov $0x3f8, %dx`,
/// `mov $c, %al; out %al, (%dx)` for each byte, then `jmp .`.
const SPIN: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b's', 0xee, 0xb0, b'p', 0xee, 0xb0, b'i', 0xee, 0xb0, b'n', 0xee,
    0xb0, b'\n', 0xee, 0xeb, 0xfe,
];

/// CPU time (user + system) process `pid` has used, all threads.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // After "(comm)", utime and stime are the 12th and 13th fields, in clock ticks.
    // SAFETY: sysconf takes an integer.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("ticks");
    Duration::from_millis((fields[11] + fields[12]) * 1000 / hz)
}

#[test]
fn test_spinning_guest_stays_within_its_cpu_quota() {
    let test = "test_spinning_guest_stays_within_its_cpu_quota";
    if !running_as_root(test) {
        return;
    }
    // A fifth of one CPU: 20 ms in every 100 ms, through whichever hierarchy has
    // the cpu controller here.
    let (version, setting, cpu_root) = if v2_offers("cpu") {
        ("2", "cpu.max=20000 100000", cgroup2_root())
    } else if let Some(mount) = cgroup1_hierarchy("cpu") {
        ("1", "cpu.cfs_quota_us=20000", mount)
    } else {
        common::skip(test, "no cgroup hierarchy offers the cpu controller");
        return;
    };
    let cgroup = TestCgroup::new("spin");
    let jail = Jail::new("spin").with_kernel(&common::tiny_kernel(SPIN), "console=ttyS0");
    let args = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        setting,
    ];
    let mut running = jail.jailer(&args, &["--config-file", "/vm.json"]).start();
    let spinning = running.wait_for(|l| l == "spin", Duration::from_secs(20));
    assert!(spinning.is_some(), "the guest never started spinning");
    let pid = running.pid();

    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (used, wall) = (cpu_time(pid) - cpu_before, wall_before.elapsed());
    let cpu_stat = std::fs::read_to_string(
        cpu_root
            .join(&cgroup.parent)
            .join(&jail.id)
            .join("cpu.stat"),
    )
    .expect("cpu.stat");
    let _ = running.finish(Duration::from_millis(10));

    let share = used.as_secs_f64() / wall.as_secs_f64();
    eprintln!("spinning guest under {setting}: {share:.3} of a CPU, {cpu_stat:?}");
    // It uses its quota (so it does spin) and no more (CFS enforces the quota per
    // period, with a little slack for the clock-tick accounting).
    assert!((0.1..0.3).contains(&share), "spry used {share:.2} of a CPU");
    let throttled: u64 = cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.parse().ok())
        .expect("nr_throttled in cpu.stat");
    assert!(throttled > 0, "{cpu_stat}");
}

/// A loop device over a file of `mib` MiB in `scratch`, detached on drop.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn new(scratch: &Scratch, name: &str, mib: u64) -> Result<LoopDevice, String> {
        let file = scratch.path(name);
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let device = LoopDevice {
            path: String::from_utf8_lossy(&out.stdout).trim().into(),
        };
        // No readahead: each guest read is one read of the device, never a window
        // of megabytes that a throttle would hold past the probe's 1 s wait.
        let ra = Command::new("blockdev")
            .args(["--setra", "0"])
            .arg(&device.path)
            .status()
            .map_err(|e| format!("blockdev: {e}"))?;
        if !ra.success() {
            return Err(format!(
                "blockdev --setra 0 {}: {ra}",
                device.path.display()
            ));
        }
        Ok(device)
    }

    /// Its device number.
    fn rdev(&self) -> u64 {
        std::fs::metadata(&self.path)
            .expect("stat the loop device")
            .rdev()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Boots the blkbench probe in a fresh jail, reading `disk`'s 8 MiB once as fast as
/// it can (128 requests of 64 KiB, one at a time: spry merges adjacent queued reads
/// into one `preadv`, which under a throttle would complete seconds later, past the
/// probe's 1 s wait for a completion); `jail_args` go to the jailer. Returns the
/// guest's own measure of the reads (kvmclock), and the run.
fn jailed_disk_read(tag: &str, disk: &LoopDevice, jail_args: &[&str]) -> (Duration, Outcome) {
    let jail = Jail::new(tag).with_probe(
        "probe.mode=blkbench probe.bench_op=read probe.bench_size=65536 probe.bench_reqs=128 \
         probe.bench_depth=1",
    );
    // The drive is the host's block device itself: a node in the jail, the jailed
    // user's, as a deployment's tooling would make it.
    let node = jail.root().join("disk");
    let c_node = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c_node` is NUL-terminated and outlives the call.
    let made = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFBLK | 0o600, disk.rdev()) };
    assert_eq!(made, 0, "mknod {}", node.display());
    std::os::unix::fs::chown(&node, Some(UID), Some(GID)).expect("chown the disk node");
    let vm = std::fs::read_to_string(jail.root().join("vm.json")).expect("vm.json");
    let mut vm: serde_json::Value = serde_json::from_str(&vm).expect("vm.json is JSON");
    vm["drives"] = serde_json::json!([{
        "drive_id": "disk",
        "path_on_host": "/disk",
        "is_root_device": false,
        "is_read_only": true,
    }]);
    std::fs::write(jail.root().join("vm.json"), vm.to_string()).expect("write vm.json");

    let out = jail.jailer(jail_args, &["--config-file", "/vm.json"]).run();

    let lines = out.probe_lines();
    let done = lines
        .iter()
        .find_map(|l| l.strip_prefix("probe: blkbench done 128 requests 65536 bytes in "))
        .unwrap_or_else(|| panic!("no blkbench result: {out}"));
    let ns: u64 = done
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time on {done:?}"));
    (Duration::from_nanos(ns), out)
}

/// A guest that reads its drive as fast as it can is held to the cgroup's read
/// bandwidth (v2 `io.max`, else v1 `blkio.throttle.read_bps_device`): 8 MiB at
/// 2 MiB/s takes seconds, where the same reads unlimited take a fraction of one.
/// Each run reads a fresh loop device, so nothing comes from the page cache.
#[test]
fn test_io_limit_holds_a_guest_reading_its_drive_to_the_cgroup_s_bandwidth() {
    let test = "test_io_limit_holds_a_guest_reading_its_drive_to_the_cgroup_s_bandwidth";
    if !running_as_root(test) {
        return;
    }
    const BPS: u64 = 2 << 20;
    let version = if v2_offers("io") {
        "2"
    } else if cgroup1_hierarchy("blkio").is_some() {
        "1"
    } else {
        common::skip(test, "no cgroup hierarchy offers the io (blkio) controller");
        return;
    };
    let scratch = Scratch::new();
    let (free, limited) = match (
        LoopDevice::new(&scratch, "free.img", 8),
        LoopDevice::new(&scratch, "limited.img", 8),
    ) {
        (Ok(free), Ok(limited)) => (free, limited),
        (Err(why), _) | (_, Err(why)) => {
            common::skip(test, &format!("no loop device: {why}"));
            return;
        }
    };
    let rdev = limited.rdev();
    let device = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let setting = if version == "2" {
        format!("io.max={device} rbps={BPS}")
    } else {
        format!("blkio.throttle.read_bps_device={device} {BPS}")
    };
    let cgroup = TestCgroup::new("io");

    let (unlimited, out_free) = jailed_disk_read("io-free", &free, &[]);
    let args = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        &setting,
    ];
    let (held, out_limited) = jailed_disk_read("io-limited", &limited, &args);

    eprintln!("8 MiB read by the guest: {unlimited:?} unlimited, {held:?} under {setting}");
    assert_eq!(out_free.code(), Some(0), "{out_free}");
    assert_eq!(out_limited.code(), Some(0), "{out_limited}");
    // 4 s at the limit; the throttle lets the first slice through at once.
    assert!(
        held >= Duration::from_millis(2500),
        "{held:?} under {setting}"
    );
    assert!(
        unlimited * 4 < held,
        "{unlimited:?} unlimited, {held:?} limited"
    );
}

/// A guest that says "touch", writes a byte to every 4 KiB page from 32 MiB to
/// 112 MiB of its RAM (80 MiB), then says "done" and spins: `mov $0x3f8, %dx`,
/// the bytes out, `mov $0x2000000, %edi`; loop: `movb $1, (%rdi)`,
/// `add $0x1000, %edi`, `cmp $0x7000000, %edi`, `jb loop`; the bytes out, `jmp .`.
const TOUCH: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b't', 0xee, 0xb0, b'o', 0xee, 0xb0, b'u', 0xee, 0xb0, b'c', 0xee,
    0xb0, b'h', 0xee, 0xb0, b'\n', 0xee, 0xbf, 0x00, 0x00, 0x00, 0x02, 0xc6, 0x07, 0x01, 0x81,
    0xc7, 0x00, 0x10, 0x00, 0x00, 0x81, 0xff, 0x00, 0x00, 0x00, 0x07, 0x72, 0xef, 0xb0, b'd', 0xee,
    0xb0, b'o', 0xee, 0xb0, b'n', 0xee, 0xb0, b'e', 0xee, 0xb0, b'\n', 0xee, 0xeb, 0xfe,
];

#[test]
fn test_guest_touching_more_ram_than_its_memory_limit_is_stopped_at_the_limit() {
    let test = "test_guest_touching_more_ram_than_its_memory_limit_is_stopped_at_the_limit";
    if !running_as_root(test) {
        return;
    }
    // 32 MiB for spry and everything its guest touches, through whichever
    // hierarchy has the memory controller here (v1 without swap accounting: the
    // limit then bounds RAM; swap is off on our hosts).
    const LIMIT: u64 = 32 << 20;
    let (version, settings, memory_root) = if v2_offers("memory") {
        let settings = vec![
            format!("memory.max={LIMIT}"),
            "memory.swap.max=0".to_owned(),
        ];
        ("2", settings, cgroup2_root())
    } else if let Some(mount) = cgroup1_hierarchy("memory") {
        ("1", vec![format!("memory.limit_in_bytes={LIMIT}")], mount)
    } else {
        common::skip(test, "no cgroup hierarchy offers the memory controller");
        return;
    };
    let cgroup = TestCgroup::new("mem");
    let jail = Jail::new("mem").with_kernel(&common::tiny_kernel(TOUCH), "console=ttyS0");
    let mut args = vec![
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &cgroup.parent,
    ];
    for setting in &settings {
        args.extend(["--cgroup", setting.as_str()]);
    }
    let mut running = jail.jailer(&args, &["--config-file", "/vm.json"]).start();
    let touching = running.wait_for(|l| l == "touch", Duration::from_secs(20));
    assert!(
        touching.is_some(),
        "the guest never started touching its memory"
    );
    let done = running.wait_for(|l| l == "done", Duration::from_secs(20));
    let dir = memory_root.join(&cgroup.parent).join(&jail.id);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (events, peak) = if version == "2" {
        (read("memory.events"), read("memory.peak"))
    } else {
        (read("memory.failcnt"), read("memory.max_usage_in_bytes"))
    };
    let out = running.finish(Duration::from_secs(10));
    eprintln!("memory-hungry guest under {settings:?}: {out}\nevents {events:?}, peak {peak:?}");

    assert!(
        done.is_none(),
        "the guest touched 80 MiB under a 32 MiB limit: {out}"
    );
    // The cgroup's OOM killer ended spry (SIGKILL), or KVM's failed fault ended it
    // with an error: either way it did not run on past its box.
    assert_ne!(out.code(), Some(0), "{out}");
    let peak: u64 = peak.trim().parse().unwrap_or(0);
    assert!(peak <= LIMIT, "peak {peak} over the limit {LIMIT}");
    let limit_hit = if version == "2" {
        events
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| matches!(k, "max" | "oom" | "oom_kill") && v.trim() != "0")
    } else {
        events.trim().parse::<u64>().unwrap_or(0) > 0
    };
    assert!(limit_hit, "{events}");
}

#[test]
fn test_pids_limit_stops_spry_at_the_thread_over_it() {
    let test = "test_pids_limit_stops_spry_at_the_thread_over_it";
    if !running_as_root(test) {
        return;
    }
    let (version, pids_root) = if v2_offers("pids") {
        ("2", cgroup2_root())
    } else if let Some(mount) = cgroup1_hierarchy("pids") {
        ("1", mount)
    } else {
        common::skip(test, "no cgroup hierarchy offers the pids controller");
        return;
    };
    let cgroup = TestCgroup::new("pids");
    let jail = Jail::new("pids").with_probe("");
    let mut vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jail.root().join("vm.json")).expect("vm.json"))
            .expect("JSON");
    vm["machine-config"]["vcpu_count"] = 2.into();
    std::fs::write(jail.root().join("vm.json"), vm.to_string()).expect("write vm.json");
    // Two tasks: spry's main thread and vCPU 0's; vCPU 1's is one too many.
    let args = [
        "--cgroup-version",
        version,
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        "pids.max=2",
    ];

    let out = jail.jailer(&args, &["--config-file", "/vm.json"]).run();

    let events = std::fs::read_to_string(
        pids_root
            .join(&cgroup.parent)
            .join(&jail.id)
            .join("pids.events"),
    )
    .expect("pids.events");
    assert_eq!(out.code(), Some(1), "{out}");
    // Usually vCPU 1's thread is refused; KVM's own worker thread in spry's thread
    // group (kvm-nx-lpage-recovery) counts too and can take a slot first.
    let refused = out
        .stderr
        .lines()
        .find(|l| l.contains("cannot start the thread of vCPU"));
    assert!(
        refused.is_some_and(|l| l.ends_with("Resource temporarily unavailable (os error 11)")),
        "{out}"
    );
    let hits: u32 = events
        .strip_prefix("max ")
        .and_then(|n| n.trim().parse().ok())
        .expect("pids.events");
    assert!(hits >= 1, "{events}");
}

#[test]
fn test_cgroup_file_of_an_unavailable_controller_is_refused_naming_it() {
    if !running_as_root("test_cgroup_file_of_an_unavailable_controller_is_refused_naming_it") {
        return;
    }
    let cgroup = TestCgroup::new("nosuch");
    let jail = Jail::new("nosuch");

    let out = jail
        .jailer(
            &[
                "--cgroup-version",
                "2",
                "--parent-cgroup",
                &cgroup.parent,
                "--cgroup",
                "nosuch.max=1",
            ],
            &[],
        )
        .run();

    assert_eq!(out.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with(
            "spry-jailer: cgroup controller \"nosuch\" (for --cgroup nosuch.max) is not available"
        ),
        "{out}"
    );
    assert!(!cgroup.dir().exists(), "a cgroup was created");
}

// ---- namespaces ----

#[test]
fn test_jailed_spry_joins_the_given_network_namespace() {
    if !running_as_root("test_jailed_spry_joins_the_given_network_namespace") {
        return;
    }
    let netns = NetNs::new("jail").expect("a network namespace");
    let handle = format!("/var/run/netns/{}", netns.name);
    let (_jail, running) = Jail::new("netns").start_console(&["--netns", &handle], &[]);

    let spry_ns = std::fs::metadata(format!("/proc/{}/ns/net", running.pid())).expect("ns");
    let out = stop_console(running);

    let wanted = std::fs::metadata(&handle).expect("the namespace handle");
    assert_eq!((spry_ns.dev(), spry_ns.ino()), (wanted.dev(), wanted.ino()));
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_jailed_spry_serves_a_tap_of_its_network_namespace() {
    if !running_as_root("test_jailed_spry_serves_a_tap_of_its_network_namespace") {
        return;
    }
    let netns = NetNs::new("jailnet").expect("a network namespace");
    netns.add_tap("sprytap0");
    let sock = netns.packet_socket("sprytap0");
    let handle = format!("/var/run/netns/{}", netns.name);
    let jail = Jail::new("tap").with_probe("probe.mode=net probe.net_tx=2 probe.net_rx=0");
    let mut vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jail.root().join("vm.json")).expect("vm.json"))
            .expect("JSON");
    vm["network-interfaces"] =
        serde_json::json!([{"iface_id": "eth0", "host_dev_name": "sprytap0"}]);
    std::fs::write(jail.root().join("vm.json"), vm.to_string()).expect("write vm.json");

    let running = jail
        .jailer(&["--netns", &handle], &["--config-file", "/vm.json"])
        .start();
    // The probe's frames carry EtherType 0x88b5.
    let frame = common::recv_guest_frame(&sock, 0x88b5, Duration::from_secs(20));
    let out = running.finish(Duration::from_secs(30));

    out.assert_probe_all_ok();
    assert!(frame.is_some(), "no frame from the guest on the tap\n{out}");
}

#[test]
fn test_jailed_spry_writes_a_drive_the_jailed_user_owns() {
    if !running_as_root("test_jailed_spry_writes_a_drive_the_jailed_user_owns") {
        return;
    }
    let jail = Jail::new("drive").with_probe("probe.mode=blk probe.blk_sectors=3:40");
    let disk = jail.root().join("root.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write the drive");
    std::os::unix::fs::chown(&disk, Some(UID), Some(GID)).expect("give the drive to the user");
    let mut vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jail.root().join("vm.json")).expect("vm.json"))
            .expect("JSON");
    vm["drives"] = serde_json::json!([{"drive_id": "rootfs", "path_on_host": "/root.img",
        "is_root_device": true, "is_read_only": false}]);
    std::fs::write(jail.root().join("vm.json"), vm.to_string()).expect("write vm.json");

    let out = jail.jailer(&[], &["--config-file", "/vm.json"]).run();

    out.assert_probe_all_ok();
    assert!(
        out.stdout
            .contains("probe: blk0: write+read 40 sectors: ok"),
        "{out}"
    );
    // The guest's writes reached the file in the jail.
    let written = std::fs::read(&disk).expect("read the drive");
    assert!(written.iter().any(|&b| b != 0), "nothing was written");
}

#[test]
fn test_new_pid_ns_makes_spry_init_of_its_namespace_and_names_it_in_the_pid_file() {
    if !running_as_root(
        "test_new_pid_ns_makes_spry_init_of_its_namespace_and_names_it_in_the_pid_file",
    ) {
        return;
    }
    let (jail, running) = Jail::new("pidns").start_console(&["--new-pid-ns"], &[]);

    let pid: u32 = wait_for_file(&jail.root().join("spry.pid"), Duration::from_secs(5))
        .parse()
        .expect("a pid");
    let ns_pids = status_field(pid, "NSpid");
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    let out = stop_console(running);

    // Host pid, then pid 1 in the new namespace.
    assert_eq!(ns_pids, format!("{pid}\t1"));
    assert_eq!(name.trim(), "spry");
    // The jailer itself exited 0 once spry was started, as Firecracker's does.
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.probe_lines().contains(&"probe: console bye"), "{out}");
}

#[test]
fn test_daemonize_detaches_spry_from_the_caller() {
    if !running_as_root("test_daemonize_detaches_spry_from_the_caller") {
        return;
    }
    let jail = Jail::new("daemon").with_probe("probe.mode=count probe.count_ms=1000");
    let started = Instant::now();

    let out = jail
        .jailer(&["--daemonize"], &["--config-file", "/vm.json"])
        .run();
    let pid: u32 = wait_for_file(&jail.root().join("spry.pid"), Duration::from_secs(5))
        .parse()
        .expect("a pid");
    // Wait for the exec: the daemon is spry once it runs as the jailed user.
    while status_field(pid, "Uid").split('\t').next() != Some(&UID.to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "spry never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stdio: Vec<PathBuf> = (0..3)
        .map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link"))
        .collect();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    // SAFETY: kill takes integers; `pid` is the daemon this test started.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGKILL) };

    // The jailer returned at once, leaving spry running with nothing of the caller's.
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert_eq!(name.trim(), "spry");
    assert_eq!(stdio, vec![PathBuf::from("/dev/null"); 3]);
    // In a session of its own (fields after "(comm)": state ppid pgrp session).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // SAFETY: getsid(0) takes no pointers.
    let own_session = unsafe { libc::getsid(0) };
    assert_ne!(fields[3], own_session.to_string());
}

// ---- rootless ----

/// The jailer run as `UID:GID`, not root, as a member of the `kvm` group would run
/// it: in a mount namespace of the test's own, `/dev/kvm` is a node that user may
/// open (this host's `/dev/kvm` is root's alone). The jail is the user's.
fn rootless_jailer(jail: &Jail, args: &[&str], spry_args: &[&str]) -> Spry {
    use std::os::unix::fs::chown;
    // The user must reach the jail: through the scratch directory, into its own tree.
    std::fs::set_permissions(
        jail.scratch.path(""),
        std::fs::Permissions::from_mode(0o711),
    )
    .expect("open the scratch directory to the user");
    chown_tree(&jail.base);
    let kvm = jail.scratch.path("kvm");
    let kvm_c = std::ffi::CString::new(kvm.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mknod reads a NUL-terminated path that outlives the call.
    let made = unsafe {
        libc::mknod(
            kvm_c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(10, 232),
        )
    };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    chown(&kvm, Some(UID), Some(GID)).expect("give the kvm node to the user");
    let mut launcher = Spry::program("unshare");
    launcher
        .arg("--mount")
        .arg("--propagation")
        .arg("private")
        .arg("--");
    launcher.arg("sh").arg("-c").arg(
        "kvm=\"$1\"; shift; mount --bind \"$kvm\" /dev/kvm && \
         exec setpriv --reuid \"$UID_\" --regid \"$GID_\" --clear-groups \"$@\"",
    );
    launcher
        .arg("sh")
        .arg(&kvm)
        .arg(jailer_bin())
        .arg("--rootless");
    launcher
        .command()
        .env("UID_", UID.to_string())
        .env("GID_", GID.to_string());
    jail.jailer_through(launcher, args, spry_args)
}

/// Hands `dir` and everything below it to `UID:GID`.
fn chown_tree(dir: &Path) {
    std::os::unix::fs::lchown(dir, Some(UID), Some(GID)).expect("chown");
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).expect("list") {
            chown_tree(&entry.expect("an entry").path());
        }
    }
}

/// Whether util-linux's `unshare` and `setpriv` are here; records the skip if not.
fn have_util_linux(test: &str) -> bool {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = have("unshare") && have("setpriv");
    if !ok {
        common::skip(test, "needs util-linux's unshare and setpriv");
    }
    ok
}

#[test]
fn test_rootless_jail_boots_the_probe_as_the_user_in_its_own_user_namespace() {
    let test = "test_rootless_jail_boots_the_probe_as_the_user_in_its_own_user_namespace";
    if !running_as_root(test) || !have_util_linux(test) {
        return;
    }
    let jail = Jail::new("rootless").with_probe("probe.mode=console");
    let mut running = rootless_jailer(
        &jail,
        &[],
        &["--config-file", "/vm.json", "--api-sock", "/run/api.sock"],
    )
    .start();
    let ready = running.wait_for(|l| l == "probe: console ready", Duration::from_secs(20));
    assert!(ready.is_some(), "the jailed guest never got ready");
    let pid = running.pid();

    let fields = [
        "Uid",
        "Gid",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ]
    .map(|key| status_field(pid, key));
    let ns = |p: String| std::fs::read_link(p).expect("read a namespace link");
    let user_ns_differs = ns(format!("/proc/{pid}/ns/user")) != ns("/proc/self/ns/user".into());
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("uid_map");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let socket = std::fs::symlink_metadata(jail.root().join("run/api.sock"));
    let out = stop_console(running);

    let no_caps = "0000000000000000".to_owned();
    assert_eq!(
        fields,
        [
            format!("{UID}\t{UID}\t{UID}\t{UID}"),
            format!("{GID}\t{GID}\t{GID}\t{GID}"),
            no_caps.clone(),
            no_caps.clone(),
            no_caps.clone(),
            no_caps,
            "1".to_owned(),
            "2".to_owned(),
        ]
    );
    assert!(user_ns_differs);
    // Only the user itself is mapped.
    let map: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(map, [UID.to_string(), UID.to_string(), "1".to_owned()]);
    // The jail at "/" and the host's device nodes bound into it; nothing else.
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    points.sort_unstable();
    assert_eq!(points[0], "/", "{mountinfo}");
    assert!(
        points[1..].iter().all(|p| p.starts_with("/dev/")),
        "{mountinfo}"
    );
    assert!(points.contains(&"/dev/kvm"), "{mountinfo}");
    assert!(socket.expect("the API socket").file_type().is_socket());
    assert_eq!(out.code(), Some(0), "{out}");
}

/// `--share-exec-file` works without root too: the bind mount is made in the jail's
/// mount namespace, which its user namespace owns.
#[test]
fn test_rootless_jail_with_a_shared_exec_file_runs_the_host_binary() {
    let test = "test_rootless_jail_with_a_shared_exec_file_runs_the_host_binary";
    if !running_as_root(test) || !have_util_linux(test) {
        return;
    }
    let jail = Jail::new("rootless-shared").with_probe("probe.mode=console");
    let mut running = rootless_jailer(
        &jail,
        &["--share-exec-file"],
        &["--config-file", "/vm.json"],
    )
    .start();
    let ready = running.wait_for(|l| l == "probe: console ready", Duration::from_secs(20));
    assert!(ready.is_some(), "the jailed guest never got ready");
    let runs = std::fs::metadata(format!("/proc/{}/exe", running.pid())).expect("stat spry");
    let out = stop_console(running);

    let host = std::fs::metadata(&jail.exec_file).expect("stat the exec file");
    assert_eq!((runs.dev(), runs.ino()), (host.dev(), host.ino()));
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn test_rootless_with_another_users_ids_is_refused() {
    let test = "test_rootless_with_another_users_ids_is_refused";
    if !running_as_root(test) || !have_util_linux(test) {
        return;
    }
    let jail = Jail::new("rootlessids");
    let mut launcher = Spry::program("setpriv");
    launcher
        .arg("--reuid")
        .arg((UID + 1).to_string())
        .arg("--regid")
        .arg(GID.to_string())
        .arg("--clear-groups")
        .arg(jailer_bin())
        .arg("--rootless");

    let out = jail.jailer_through(launcher, &[], &[]).run();

    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [format!(
            "spry-jailer: --rootless runs spry as the calling user: use --uid {} --gid {GID}",
            UID + 1
        )]
    );
}

#[test]
fn test_jail_without_root_or_rootless_is_refused() {
    let test = "test_jail_without_root_or_rootless_is_refused";
    if !running_as_root(test) || !have_util_linux(test) {
        return;
    }
    let jail = Jail::new("notroot");
    let mut launcher = Spry::program("setpriv");
    launcher
        .arg("--reuid")
        .arg(UID.to_string())
        .arg("--regid")
        .arg(GID.to_string())
        .arg("--clear-groups")
        .arg(jailer_bin());

    let out = jail.jailer_through(launcher, &[], &[]).run();

    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            "spry-jailer: spry-jailer needs root to build a jail (or --rootless, to build one as \
          this user)"
        ]
    );
}

// ---- refusals: one line, exit 1, nothing created ----

/// Runs the jailer with `args` and asserts it refused with exactly `line` before
/// creating the jail.
fn assert_refused(jail: &Jail, args: &[&str], line: &str) {
    let out = jail.jailer(args, &[]).run();
    assert_ne!(out.code(), Some(0), "{out}");
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [line], "{out}");
    assert!(
        !jail.base.join("spry").exists(),
        "the jail was created: {out}"
    );
}

#[test]
fn test_id_with_a_slash_is_refused() {
    let mut jail = Jail::new("badid");
    jail.id = "a/../b".into();

    assert_refused(
        &jail,
        &[],
        "spry-jailer: invalid --id \"a/../b\": use 1 to 64 ASCII letters, digits or '-'",
    );
}

#[test]
fn test_id_of_65_characters_is_refused() {
    let mut jail = Jail::new("longid");
    jail.id = "x".repeat(65);

    assert_refused(
        &jail,
        &[],
        &format!(
            "spry-jailer: invalid --id \"{}\": use 1 to 64 ASCII letters, digits or '-'",
            jail.id
        ),
    );
}

#[test]
fn test_missing_exec_file_is_refused() {
    let mut jail = Jail::new("noexec");
    jail.exec_file = jail.scratch.path("no-such-spry");

    assert_refused(
        &jail,
        &[],
        &format!(
            "spry-jailer: cannot use --exec-file {}: No such file or directory (os error 2)",
            jail.exec_file.display()
        ),
    );
}

#[test]
fn test_chroot_base_that_is_a_file_is_refused() {
    let mut jail = Jail::new("basefile");
    jail.base = jail.scratch.write("not-a-dir", b"");

    assert_refused(
        &jail,
        &[],
        &format!(
            "spry-jailer: --chroot-base-dir {} is not a directory",
            jail.base.display()
        ),
    );
}

#[test]
fn test_parent_cgroup_leaving_the_hierarchy_is_refused() {
    let jail = Jail::new("cgparent");

    assert_refused(
        &jail,
        &[
            "--parent-cgroup",
            "../escape",
            "--cgroup",
            "cgroup.max.depth=1",
        ],
        "spry-jailer: invalid --parent-cgroup \"../escape\": use a relative path without '.' or \
         '..'",
    );
}

#[test]
fn test_cgroup_setting_with_a_path_is_refused() {
    let jail = Jail::new("cgfile");

    assert_refused(
        &jail,
        &["--cgroup", "../../memory.max=1"],
        "spry-jailer: invalid --cgroup \"../../memory.max=1\": use <controller>.<file>=<value>, \
         e.g. memory.max=256M",
    );
}

#[test]
fn test_missing_netns_is_refused() {
    let jail = Jail::new("nonetns");

    assert_refused(
        &jail,
        &["--netns", "/var/run/netns/spry-no-such-namespace"],
        "spry-jailer: cannot use --netns /var/run/netns/spry-no-such-namespace: No such file or \
         directory (os error 2)",
    );
}

#[test]
fn test_unknown_resource_limit_is_refused() {
    let jail = Jail::new("badlimit");

    assert_refused(
        &jail,
        &["--resource-limit", "nproc=10"],
        "spry-jailer: invalid --resource-limit \"nproc=10\": use fsize=<bytes> or no-file=<count>",
    );
}

#[test]
fn test_unknown_cgroup_version_is_refused() {
    let jail = Jail::new("cgv3");

    assert_refused(
        &jail,
        &["--cgroup-version", "3"],
        "spry-jailer: invalid --cgroup-version \"3\": use 1 or 2",
    );
}
