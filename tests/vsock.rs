//! virtio-vsock through real KVM exits, ioeventfds and irqfds, driven by the probe
//! guest's own driver: a host client's `CONNECT` round trip, a guest connection to
//! `<uds_path>_P`, and a reset for a port nobody listens on.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{config, probe_args, probe_vmlinux, Scratch, Spry};

/// The probe's data pattern: byte `i` of a stream.
fn pattern(i: usize) -> u8 {
    ((i * 7 + 0x5a) & 0xff) as u8
}

/// FNV-1a, as the probe reports what it received.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn vsock_config(args: &str, uds: &Path) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&config(
        &probe_vmlinux(),
        &probe_args(&format!("probe.mode=vsock {args}")),
        None,
        1,
        128,
    ))
    .unwrap();
    v["vsock"] = serde_json::json!({"guest_cid": 3, "uds_path": uds});
    v.to_string()
}

/// Echoes everything one client of `listener` sends until it closes.
fn echo_once(listener: UnixListener) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return 0;
        };
        let mut buf = [0u8; 8192];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => {
                    total += n;
                    if s.write_all(&buf[..n]).is_err() {
                        return total;
                    }
                }
            }
        }
    })
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "spry never created {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn test_host_connect_round_trip_and_guest_connect_and_reset() {
    let scratch = Scratch::new();
    let uds = scratch.path("v.sock");
    let echo = echo_once(UnixListener::bind(scratch.path("v.sock_7000")).unwrap());
    let text = vsock_config(
        "probe.vsock_listen=52 probe.vsock_connect=7000 probe.vsock_refused=7001 probe.vsock_bytes=10000",
        &uds,
    );
    let mut spry = Spry::with_config(&scratch, &text);
    spry.arg("--log-level").arg("info");
    let mut running = spry.start();
    let listening = running.wait_for(
        |l| l.contains("vsock: listening on port 52"),
        Duration::from_secs(30),
    );
    assert!(listening.is_some(), "the probe never listened");
    wait_for_socket(&uds);

    let mut client = UnixStream::connect(&uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let sent: Vec<u8> = (0..20000).map(pattern).collect();
    client.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    reader.read_exact(&mut back).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();

    let out = running.finish(Duration::from_secs(60));
    assert!(back == sent, "the echo differs from what was sent\n{out}");
    assert!(
        rest.is_empty(),
        "{} bytes after the echo\n{out}",
        rest.len()
    );
    assert_eq!(echo.join().unwrap(), 10000, "{out}");
    out.assert_probe_all_ok();
    let listen_line = format!(
        "probe: vsock-listen: ok port 52: 20000 bytes echoed, fnv {:#x}",
        fnv(&sent)
    );
    assert!(out.stdout.contains(&listen_line), "{listen_line}\n{out}");
    let pattern_10k: Vec<u8> = (0..10000).map(pattern).collect();
    let connect_line = format!(
        "probe: vsock-connect: ok port 7000: 10000 bytes echoed back, fnv {:#x}",
        fnv(&pattern_10k)
    );
    assert!(out.stdout.contains(&connect_line), "{connect_line}\n{out}");
    assert!(
        out.stdout
            .contains("probe: vsock-refused: ok port 7001: reset"),
        "{out}"
    );
    assert!(!uds.exists(), "spry left {} behind", uds.display());
}
