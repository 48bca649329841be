//! virtio-vsock through real KVM exits, ioeventfds and irqfds, driven by the probe
//! guest's own driver (`probe.mode=vsock`): a host client's `CONNECT` round trip,
//! a guest connection to `<uds_path>_P`, a reset for a port nobody listens on, a
//! flood of silent clients; and the device's API and config-file surface.

#![allow(clippy::cast_possible_truncation)]

mod api_support;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use api_support::SpryApi;
use common::{config, probe_args, probe_vmlinux, Outcome, Scratch, Spry};

const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The guest port the probe listens on in these tests.
const GUEST_PORT: u32 = 52;

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

/// Runs the probe with `args` to its end.
fn run_probe(scratch: &Scratch, args: &str) -> Outcome {
    let text = vsock_config(args, &scratch.path("v.sock"));
    Spry::with_config(scratch, &text).run()
}

/// Echoes everything one client of `listener` sends until it closes; returns the
/// byte count.
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

/// What a host client got back for `sent` through `CONNECT <port>`: the `OK`
/// line, the echo, and whatever came after the echo before the end of the stream.
struct RoundTrip {
    ok_line: String,
    echo: Vec<u8>,
    after: Vec<u8>,
}

fn round_trip(uds: &Path, port: u32, sent: &[u8]) -> RoundTrip {
    let mut client = UnixStream::connect(uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A client spry refuses (too many) finds its socket closed: no line.
    let _ = client.write_all(format!("CONNECT {port}\n").as_bytes());
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut ok_line = String::new();
    let _ = reader.read_line(&mut ok_line);
    let mut echo = vec![0u8; sent.len()];
    if ok_line.starts_with("OK ") {
        client.write_all(sent).unwrap();
        reader.read_exact(&mut echo).unwrap();
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut after = Vec::new();
    let _ = reader.read_to_end(&mut after);
    RoundTrip {
        ok_line,
        echo,
        after,
    }
}

/// Starts the probe listening on [`GUEST_PORT`] and waits until it says so.
fn listening_probe(scratch: &Scratch) -> common::Running {
    let text = vsock_config(
        &format!("probe.vsock_listen={GUEST_PORT}"),
        &scratch.path("v.sock"),
    );
    let mut running = Spry::with_config(scratch, &text).start();
    let line = running.wait_for(|l| l.contains("vsock: listening on port"), BOOT_TIMEOUT);
    assert!(line.is_some(), "the probe never listened");
    running
}

#[test]
fn test_host_client_connect_round_trip_is_byte_exact() {
    let scratch = Scratch::new();
    let running = listening_probe(&scratch);
    let sent: Vec<u8> = (0..20000).map(pattern).collect();

    let trip = round_trip(&scratch.path("v.sock"), GUEST_PORT, &sent);

    let out = running.finish(Duration::from_secs(60));
    assert!(trip.ok_line.starts_with("OK "), "{:?}\n{out}", trip.ok_line);
    assert!(
        trip.echo == sent,
        "the echo differs from what was sent\n{out}"
    );
    assert!(
        trip.after.is_empty(),
        "{} bytes after the echo",
        trip.after.len()
    );
    out.assert_probe_all_ok();
    let line = format!(
        "probe: vsock-listen: ok port {GUEST_PORT}: 20000 bytes echoed, fnv {:#x}",
        fnv(&sent)
    );
    assert!(out.stdout.contains(&line), "{line}\n{out}");
    assert!(
        !scratch.path("v.sock").exists(),
        "spry left its socket behind"
    );
}

#[test]
fn test_guest_connection_reaches_the_uds_path_port_listener() {
    let scratch = Scratch::new();
    let echo = echo_once(UnixListener::bind(scratch.path("v.sock_7000")).unwrap());

    let out = run_probe(&scratch, "probe.vsock_connect=7000 probe.vsock_bytes=30000");

    out.assert_probe_all_ok();
    let sent: Vec<u8> = (0..30000).map(pattern).collect();
    let line = format!(
        "probe: vsock-connect: ok port 7000: 30000 bytes echoed back, fnv {:#x}",
        fnv(&sent)
    );
    assert!(out.stdout.contains(&line), "{line}\n{out}");
    assert_eq!(echo.join().unwrap(), 30000);
}

#[test]
fn test_guest_connection_to_an_unbound_port_is_reset() {
    let scratch = Scratch::new();

    let out = run_probe(&scratch, "probe.vsock_refused=7001");

    out.assert_probe_all_ok();
    assert!(
        out.stdout
            .contains("probe: vsock-refused: ok port 7001: reset"),
        "{out}"
    );
}

#[test]
fn test_guest_cid_comes_from_the_config() {
    let scratch = Scratch::new();

    let out = run_probe(&scratch, "");

    out.assert_probe_all_ok();
    assert!(out.stdout.contains("probe: vsock: ok cid 3"), "{out}");
}

#[test]
fn test_flood_of_silent_clients_is_bounded_and_the_slots_come_back() {
    let scratch = Scratch::new();
    let running = listening_probe(&scratch);
    let uds = scratch.path("v.sock");
    // More clients than spry holds (128), none of which ever sends its line.
    let silent: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&uds).unwrap())
        .collect();
    // spry closes the ones past its limit at once, the rest after 2 s; until
    // then a new client is refused too.
    let start = Instant::now();
    let sent: Vec<u8> = (0..1000).map(pattern).collect();

    let trip = loop {
        let trip = round_trip(&uds, GUEST_PORT, &sent);
        if trip.ok_line.starts_with("OK ") || start.elapsed() > Duration::from_secs(20) {
            break trip;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    let out = running.finish(Duration::from_secs(60));
    assert!(trip.ok_line.starts_with("OK "), "{:?}\n{out}", trip.ok_line);
    assert!(trip.echo == sent, "{out}");
    out.assert_probe_all_ok();
    let closed = silent
        .into_iter()
        .filter(|mut s| {
            let mut b = [0u8; 1];
            s.set_nonblocking(true).unwrap();
            matches!(s.read(&mut b), Ok(0))
        })
        .count();
    assert_eq!(closed, 200, "silent clients still open");
    // Not before the 2 s timeout, and not much later.
    assert!(
        start.elapsed() > Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn test_malformed_packets_are_counted_and_the_device_keeps_serving() {
    let scratch = Scratch::new();
    let metrics = scratch.path("metrics.json");
    let mut v: serde_json::Value = serde_json::from_str(&vsock_config(
        &format!("probe.vsock_hostile=1 probe.vsock_listen={GUEST_PORT}"),
        &scratch.path("v.sock"),
    ))
    .unwrap();
    v["metrics"] = serde_json::json!({"metrics_path": metrics});
    let config_file = scratch.write("vm.json", v.to_string().as_bytes());
    let mut spry = SpryApi::start(
        &scratch.path("api.sock"),
        &["--config-file", config_file.to_str().unwrap()],
    );
    spry.wait_for_line(BOOT_TIMEOUT, |l| l.contains("vsock: listening on port"));

    let flush = spry.call("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let sent: Vec<u8> = (0..4000).map(pattern).collect();
    let trip = round_trip(&scratch.path("v.sock"), GUEST_PORT, &sent);

    assert_eq!(flush.status, 204);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // The probe's seven malformed chains and headers (see its README).
    assert_eq!(line["vsock"]["malformed"], 7, "{line}");
    assert!(trip.echo == sent, "the device stopped serving");
    assert_eq!(spry.wait_exit(Duration::from_secs(60)), Some(0));
    let lines = spry.lines();
    assert!(
        lines.iter().any(|l| l
            == "probe: vsock-hostile: ok 7 malformed packets completed, RST for the wrong type"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("probe: all ") && l.ends_with(" checks ok")),
        "{lines:#?}"
    );
}

#[test]
fn test_put_vsock_before_boot_shows_in_vm_config() {
    let scratch = Scratch::new();
    let spry = SpryApi::start(&scratch.path("api.sock"), &[]);
    let uds = scratch.path("v.sock");
    let body = serde_json::json!({"guest_cid": 7, "uds_path": uds}).to_string();

    let put = spry.call("PUT", "/vsock", &body);
    let config = spry.call("GET", "/vm/config", "").json();

    assert_eq!(put.status, 204, "{put:?}");
    assert_eq!(config["vsock"]["guest_cid"], 7);
    assert_eq!(config["vsock"]["uds_path"], uds.to_str().unwrap());
}

#[test]
fn test_put_vsock_with_a_reserved_cid_is_refused() {
    let scratch = Scratch::new();
    let spry = SpryApi::start(&scratch.path("api.sock"), &[]);

    let message = spry
        .call(
            "PUT",
            "/vsock",
            r#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#,
        )
        .fault();

    assert_eq!(
        message,
        "vsock.guest_cid: 2 is not a guest context id (3 to 4294967294)"
    );
}

#[test]
fn test_put_vsock_after_boot_is_refused() {
    let scratch = Scratch::new();
    let config = common::config(
        &probe_vmlinux(),
        &probe_args("probe.mode=console"),
        None,
        1,
        128,
    );
    let config_file = scratch.write("vm.json", config.as_bytes());
    let spry = SpryApi::start(
        &scratch.path("api.sock"),
        &["--config-file", config_file.to_str().unwrap()],
    );
    spry.wait_for_line(BOOT_TIMEOUT, |l| l == "probe: console ready");
    let body = serde_json::json!({"guest_cid": 3, "uds_path": scratch.path("v.sock")}).to_string();

    let message = spry.call("PUT", "/vsock", &body).fault();

    assert_eq!(
        message,
        "The requested operation is not supported after starting the microVM."
    );
}

#[test]
fn test_config_with_an_existing_uds_path_is_refused() {
    let scratch = Scratch::new();
    let uds = scratch.write("v.sock", b"");
    let text = vsock_config("", &uds);

    let out = Spry::with_config(&scratch, &text).run();

    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("vsock.uds_path:"), "{out}");
    assert!(out.stderr.contains("already exists"), "{out}");
}
