//! virtio-blk and virtio-net through real KVM exits, ioeventfds and irqfds, driven by
//! the probe guest's own drivers: data lands byte-exact in host files and on the tap,
//! and a guest sending malformed requests cannot break spry.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use common::{
    config, probe_args, probe_vmlinux, recv_guest_frame, send_frame, NetNs, Scratch, Spry,
};

const SECTOR: usize = 512;

/// Byte `i` of sector `s` as the probe writes it.
fn pattern(sector: usize, i: usize) -> u8 {
    ((sector * 31 + i * 7 + 0x5a) & 0xff) as u8
}

fn with_devices(base: &str, drives: serde_json::Value, nets: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    v["drives"] = drives;
    v["network-interfaces"] = nets;
    v.to_string()
}

fn probe_config(args: &str) -> String {
    config(&probe_vmlinux(), &probe_args(args), None, 1, 128)
}

/// Standard frame `k` of the probe: broadcast, EtherType 0x88b5, a text payload.
fn probe_frame(k: usize, src: [u8; 6]) -> Vec<u8> {
    let text = format!("spry-probe frame {k} ");
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(text.bytes().cycle().take(64 + k));
    f
}

fn netns_or_skip(test: &str) -> Option<NetNs> {
    match NetNs::new("virtio") {
        Ok(ns) => Some(ns),
        Err(reason) => {
            common::skip(test, &reason);
            None
        }
    }
}

#[test]
fn test_blk_written_sectors_land_in_the_host_file_exactly() {
    let scratch = Scratch::new();
    let root = scratch.write("root.img", &vec![0u8; 1 << 20]);
    let data: Vec<u8> = (0..64 * SECTOR).map(|i| (i % 253) as u8).collect();
    let data_path = scratch.write("data.img", &data);
    let text = with_devices(
        &probe_config("probe.mode=blk probe.blk_sectors=3:40"),
        serde_json::json!([
            {"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false, "cache_type": "Writeback"},
            {"drive_id": "data", "path_on_host": data_path, "is_root_device": false, "is_read_only": true},
        ]),
        serde_json::json!([]),
    );
    let out = Spry::with_config(&scratch, &text).run();
    out.assert_probe_all_ok();
    assert!(
        out.stdout
            .contains("probe: blk0: capacity 2048 id 'rootfs'"),
        "{out}"
    );
    assert!(out.stdout.contains("probe: blk0: flush: ok"), "{out}");
    assert!(
        out.stdout
            .contains("probe: blk0: write+read 40 sectors: ok"),
        "{out}"
    );
    assert!(
        out.stdout.contains("probe: blk0: read past end: ok ioerr"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("probe: blk0: unsupported request: ok unsupp"),
        "{out}"
    );

    let disk = std::fs::read(&root).unwrap();
    let expected: Vec<u8> = (0..2048)
        .flat_map(|s| {
            (0..SECTOR).map(move |i| {
                if (3..43).contains(&s) {
                    pattern(s, i)
                } else {
                    0
                }
            })
        })
        .collect();
    assert!(
        disk == expected,
        "host file differs from the sectors the guest wrote"
    );
}

#[test]
fn test_blk_read_only_drive_refuses_the_write_and_stays_byte_identical() {
    let scratch = Scratch::new();
    let data: Vec<u8> = (0..64 * SECTOR).map(|i| (i % 251) as u8).collect();
    let data_path = scratch.write("ro.img", &data);
    let text = with_devices(
        &probe_config("probe.mode=blk"),
        serde_json::json!([{"drive_id": "ro", "path_on_host": data_path, "is_root_device": false, "is_read_only": true}]),
        serde_json::json!([]),
    );
    let out = Spry::with_config(&scratch, &text).run();
    out.assert_probe_all_ok();
    assert!(
        out.stdout
            .contains("probe: blk0: read-only write refused: ok"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("probe: blk0: read sector 0: ok 000102030405060708090a0b0c0d0e0f"),
        "{out}"
    );
    assert!(
        std::fs::read(&data_path).unwrap() == data,
        "read-only drive changed"
    );
}

#[test]
fn test_net_frames_cross_the_tap_byte_exact_both_ways_in_order() {
    let Some(ns) = netns_or_skip("test_net_frames_cross_the_tap_byte_exact_both_ways_in_order")
    else {
        return;
    };
    ns.add_tap("sprytap0");
    let sock = ns.packet_socket("sprytap0");
    let mac = [0xaa, 0xfc, 0, 0, 0, 1];
    let scratch = Scratch::new();
    let text = with_devices(
        &probe_config("probe.mode=net probe.net_tx=8 probe.net_rx=8"),
        serde_json::json!([]),
        serde_json::json!([{"iface_id": "eth0", "host_dev_name": "sprytap0", "guest_mac": "AA:FC:00:00:00:01"}]),
    );
    let mut spry = ns.spry(&scratch, &text).start();

    let from_guest: Vec<_> = (0..8)
        .map(|_| recv_guest_frame(&sock, 0x88b5, Duration::from_secs(20)))
        .collect();
    let ready = spry.wait_for(
        |l| l.contains("rx ready for 8 frames"),
        Duration::from_secs(20),
    );
    let sent: Vec<Vec<u8>> = (0..8usize)
        .map(|k| {
            let mut f = mac.to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5]);
            f.extend((0..100 + k).map(|i| (i * 13 + k) as u8));
            f
        })
        .collect();
    for f in &sent {
        send_frame(&sock, f);
    }
    let echoes: Vec<_> = (0..8)
        .map(|_| recv_guest_frame(&sock, 0x88b6, Duration::from_secs(20)))
        .collect();
    let out = spry.finish(Duration::from_secs(30));

    assert!(ready.is_some(), "{out}");
    out.assert_probe_all_ok();
    for (k, frame) in from_guest.iter().enumerate() {
        assert_eq!(
            frame.as_deref(),
            Some(probe_frame(k, mac).as_slice()),
            "guest frame {k}\n{out}"
        );
    }
    for (k, echo) in echoes.iter().enumerate() {
        let mut expected = sent[k].clone();
        expected[12..14].copy_from_slice(&[0x88, 0xb6]);
        assert_eq!(
            echo.as_deref(),
            Some(expected.as_slice()),
            "echo of host frame {k}\n{out}"
        );
    }
}

#[test]
fn test_hostile_guest_gets_errors_and_spry_keeps_serving() {
    let Some(ns) = netns_or_skip("test_hostile_guest_gets_errors_and_spry_keeps_serving") else {
        return;
    };
    ns.add_tap("sprytap0");
    let sock = ns.packet_socket("sprytap0");
    let scratch = Scratch::new();
    let d0 = scratch.write("d0.img", &vec![0u8; 1 << 20]);
    let d1 = scratch.write("d1.img", &vec![0u8; 1 << 20]);
    let text = with_devices(
        &probe_config("probe.mode=hostile"),
        serde_json::json!([
            {"drive_id": "bad", "path_on_host": d0, "is_root_device": true, "is_read_only": false},
            {"drive_id": "good", "path_on_host": d1, "is_root_device": false, "is_read_only": false},
        ]),
        serde_json::json!([{"iface_id": "eth0", "host_dev_name": "sprytap0"}]),
    );
    let run = ns
        .spry(&scratch, &text)
        .arg("--log-level")
        .arg("warn")
        .start();
    let frame = recv_guest_frame(&sock, 0x88b5, Duration::from_secs(30));
    let out = run.finish(Duration::from_secs(60));

    out.assert_probe_all_ok();
    for case in [
        "hostile blk0 data in mmio gap",
        "hostile blk0 data at 64 GiB",
        "hostile blk0 descriptor loop",
        "hostile blk0 next index out of range",
        "hostile blk0 readable data on IN",
        "hostile blk0 huge length",
        "hostile blk0 zero-length status",
        "hostile blk0 loop in indirect table",
        "hostile blk0 indirect table in mmio gap",
        "hostile blk0 avail index +1000: ok needs-reset",
        "hostile blk1 write+read",
        "hostile blk0 reset: ok",
        "hostile blk0 reinit write+read",
        "hostile blk0 descriptor table in mmio gap: ok needs-reset",
        "hostile net0 tx device-writable descriptor",
        "hostile net0 tx shorter than the header",
        "hostile net0 tx buffer in mmio gap",
        "hostile net0 normal tx",
    ] {
        let line = out.probe_lines().into_iter().find(|l| l.contains(case));
        assert!(
            line.is_some_and(|l| l.contains(": ok")),
            "'{case}' missing or failed\n{out}"
        );
    }
    // Only the well-formed frame reached the host.
    assert_eq!(
        frame.as_deref(),
        Some(probe_frame(0, [2, 0, 0, 0, 0, 1]).as_slice()),
        "{out}"
    );
    assert_eq!(
        recv_guest_frame(&sock, 0x88b5, Duration::from_millis(200)),
        None
    );
    // Each misbehaving device is reported, once, and nothing else reaches the log.
    assert!(!out.stderr.contains("ERROR"), "{out}");
    assert_eq!(out.stderr.matches("virtio-blk bad:").count(), 1, "{out}");
    assert_eq!(out.stderr.matches("virtio-net eth0:").count(), 1, "{out}");
}
