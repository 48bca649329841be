//! The project's Linux guest through spry. It needs hardware virtualization: on PVM
//! hosts these tests are skipped with the reason, except the one that checks spry
//! refuses Linux there with a one-line explanation.

mod common;

use common::{linux_artifact, linux_unavailable, skip, Scratch, Spry};
use spry::host::HostKvm;

const LINUX_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

fn linux_config(
    kernel: &str,
    args: &str,
    initrd: Option<&str>,
    extra: &str,
    vcpus: u8,
    mem_mib: u32,
) -> String {
    let initrd = initrd
        .map(|p| format!(r#", "initrd_path": "{}""#, linux_artifact(p).display()))
        .unwrap_or_default();
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{LINUX_ARGS} {args}"{initrd}}},
            "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": {mem_mib}}}{extra}}}"#,
        linux_artifact(kernel).display()
    )
}

#[test]
fn test_linux_on_pvm_host_is_refused_in_one_line() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_on_pvm_host_is_refused_in_one_line",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "vmlinux",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            1,
            128,
        ),
    )
    .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("cannot boot") && lines[0].contains("PVM"),
        "{out}"
    );
}

#[test]
fn test_linux_bzimage_on_pvm_host_is_refused_too() {
    if HostKvm::detect() != HostKvm::Pvm {
        skip(
            "test_linux_bzimage_on_pvm_host_is_refused_too",
            "only meaningful on PVM hosts",
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config("bzImage", "spry.mode=report", None, "", 1, 128),
    )
    .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("PVM"), "{out}");
}

#[test]
fn test_linux_vmlinux_boots_to_init_reports_and_reboots() {
    if let Some(reason) = linux_unavailable() {
        skip(
            "test_linux_vmlinux_boots_to_init_reports_and_reboots",
            &reason,
        );
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "vmlinux",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            2,
            256,
        ),
    )
    .arg("--log-level")
    .arg("info")
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("spry-guest: report cpus=2 mem_kib="),
        "{out}"
    );
    assert!(out.stderr.contains("Guest-boot-time"), "{out}");
}

#[test]
fn test_linux_bzimage_boots_with_4_vcpus() {
    if let Some(reason) = linux_unavailable() {
        skip("test_linux_bzimage_boots_with_4_vcpus", &reason);
        return;
    }
    let scratch = Scratch::new();
    let out = Spry::with_config(
        &scratch,
        &linux_config(
            "bzImage",
            "spry.mode=report",
            Some("initramfs.cpio"),
            "",
            4,
            512,
        ),
    )
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("spry-guest: report cpus=4"), "{out}");
}

/// The root file system image, copied so the test can write to it.
fn writable_rootfs(scratch: &Scratch) -> std::path::PathBuf {
    let copy = scratch.path("rootfs.ext4");
    std::fs::copy(linux_artifact("rootfs.ext4"), &copy).expect("copy rootfs");
    copy
}

fn drive_json(id: &str, path: &std::path::Path, root: bool, read_only: bool) -> String {
    format!(
        r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}, "is_read_only": {read_only}, "cache_type": "Writeback"}}"#,
        path.display()
    )
}

/// `spry.cmd=` encoding of the guest init: `+` is a space, `%XX` a byte.
fn guest_cmd(cmd: &str) -> String {
    let mut out = String::new();
    for b in cmd.bytes() {
        match b {
            b' ' => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' | b'=' | b',' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    format!("spry.mode=run spry.cmd={out}")
}

fn debugfs_cat(image: &std::path::Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn test_linux_root_on_virtio_blk_keeps_a_synced_file() {
    if let Some(reason) = linux_unavailable() {
        skip("test_linux_root_on_virtio_blk_keeps_a_synced_file", &reason);
        return;
    }
    let scratch = Scratch::new();
    let rootfs = writable_rootfs(&scratch);
    let drives = format!(
        r#", "drives": [{}]"#,
        drive_json("rootfs", &rootfs, true, false)
    );
    let cmd = guest_cmd("echo spry-was-here > /hello.txt && sync");
    let out = Spry::with_config(
        &scratch,
        &linux_config("vmlinux", &cmd, None, &drives, 2, 256),
    )
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("spry-guest: run exit=0"), "{out}");
    assert_eq!(debugfs_cat(&rootfs, "/hello.txt"), "spry-was-here\n");
}

#[test]
fn test_linux_read_only_second_drive_refuses_writes_and_stays_identical() {
    if let Some(reason) = linux_unavailable() {
        skip(
            "test_linux_read_only_second_drive_refuses_writes_and_stays_identical",
            &reason,
        );
        return;
    }
    let scratch = Scratch::new();
    let rootfs = writable_rootfs(&scratch);
    let data = scratch.path("data.ext4");
    std::fs::copy(linux_artifact("rootfs.ext4"), &data).expect("copy data image");
    let before = sha256(&data);
    let drives = format!(
        r#", "drives": [{}, {}]"#,
        drive_json("rootfs", &rootfs, true, false),
        drive_json("data", &data, false, true)
    );
    let cmd = guest_cmd(
        "cat /sys/block/vdb/ro && mkdir -p /tmp/m && mount -o ro /dev/vdb /tmp/m && ls /tmp/m/sbin/init \
         && if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; then echo WRITE-SUCCEEDED; fi",
    );
    let out = Spry::with_config(
        &scratch,
        &linux_config("vmlinux", &cmd, None, &drives, 1, 256),
    )
    .run();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("spry-guest: run exit=0"), "{out}");
    assert!(!out.stdout.contains("WRITE-SUCCEEDED"), "{out}");
    assert_eq!(sha256(&data), before);
}

#[test]
fn test_linux_network_ping_both_ways_and_64_mib_each_way() {
    use std::io::{Read, Write};
    if let Some(reason) = linux_unavailable() {
        skip(
            "test_linux_network_ping_both_ways_and_64_mib_each_way",
            &reason,
        );
        return;
    }
    let ns = match common::NetNs::new("linuxnet") {
        Ok(ns) => ns,
        Err(reason) => {
            skip(
                "test_linux_network_ping_both_ways_and_64_mib_each_way",
                &reason,
            );
            return;
        }
    };
    ns.add_tap("sprytap0");
    // Link-local addresses inside the test's own namespace.
    ns.ip(&["addr", "add", "169.254.77.1/24", "dev", "sprytap0"]);
    const LEN: usize = 64 << 20;
    let scratch = Scratch::new();
    let rootfs = writable_rootfs(&scratch);
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "{LINUX_ARGS} ip=169.254.77.2::169.254.77.1:255.255.255.0::eth0:off {}"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 512}},
            "drives": [{}],
            "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "sprytap0", "guest_mac": "AA:FC:00:00:00:01"}}]}}"#,
        linux_artifact("vmlinux").display(),
        guest_cmd(
            "ping -c 3 -W 5 169.254.77.1 && head -c 67108864 /dev/urandom > /tmp/out && sha256sum /tmp/out \
             && nc 169.254.77.1 5001 < /tmp/out && nc -l -p 5002 > /tmp/in && sha256sum /tmp/in && sleep 5"
        ),
        drive_json("rootfs", &rootfs, true, false),
    );

    let received = scratch.path("from-guest.bin");
    let sent = scratch.path("to-guest.bin");
    let payload: Vec<u8> = (0..LEN as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&sent, &payload).expect("write payload");
    let listener = ns_listener(&ns, "169.254.77.1:5001");
    let host = {
        let received = received.clone();
        let ns_name = ns.name.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("guest connects");
            let mut buf = vec![0u8; LEN];
            conn.read_exact(&mut buf).expect("64 MiB from the guest");
            std::fs::write(&received, &buf).expect("save");
            drop(conn);
            let mut to_guest = connect_with_retries(&ns_name, "169.254.77.2:5002");
            to_guest.write_all(&payload).expect("64 MiB to the guest");
            drop(to_guest);
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns_name,
                    "ping",
                    "-c",
                    "3",
                    "-W",
                    "5",
                    "169.254.77.2",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
    };
    let out = ns
        .spry(&scratch, &config)
        .timeout(std::time::Duration::from_secs(300))
        .run();
    let host_ping_ok = host.join().expect("host side");
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("spry-guest: run exit=0"), "{out}");
    assert!(host_ping_ok, "host could not ping the guest\n{out}");
    let guest_sums: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("/tmp/out") || l.contains("/tmp/in"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        guest_sums,
        vec![sha256(&received).as_str(), sha256(&sent).as_str()],
        "{out}"
    );
}

/// A TCP listener bound inside `ns`.
fn ns_listener(ns: &common::NetNs, addr: &str) -> std::net::TcpListener {
    in_netns(&ns.name, || {
        std::net::TcpListener::bind(addr).expect("bind in netns")
    })
}

fn connect_with_retries(ns: &str, addr: &str) -> std::net::TcpStream {
    in_netns(ns, || {
        for _ in 0..600 {
            if let Ok(s) = std::net::TcpStream::connect(addr) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("cannot connect to the guest at {addr}");
    })
}

/// Runs `f` on a thread that entered network namespace `ns`; sockets it creates stay
/// in that namespace.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this scoped thread only, with a valid netns fd.
            let entered = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}
