//! virtio-net receive: frames of fuzzer-chosen sizes from the backend into receive
//! buffers the fuzzer lays out (raw rings, or well-formed multi-descriptor and
//! indirect chains, with or without mergeable buffers): it must never panic, write
//! outside the buffers' guest memory or lose the order of used entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spry::devices::virtio::net::{Net, NetDeviceConfig};
use spry::devices::virtio::VirtioDevice;
use virtio_queue::{Queue, QueueT};

#[path = "common.rs"]
mod common;

/// virtio-net's VIRTIO_NET_F_MRG_RXBUF.
const MRG_RXBUF: u64 = 1 << 15;

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, frames, size_lo, size_hi], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let built = if mode & 1 == 1 {
        common::chains_from(rest)
    } else {
        common::queue_from(rest)
    };
    let Some((mem, rx)) = built else { return };
    let (ours, theirs) = common::datagram_pair();
    // 1-4 frames waiting on the backend, of sizes 0..=65535 (a datagram carries them
    // whole, as a tap would a frame with its virtio header).
    let size = usize::from(u16::from_le_bytes([size_lo, size_hi]));
    for i in 0..=(frames % 4) {
        let len = size.wrapping_mul(usize::from(i) + 1) % 65_536;
        let frame: Vec<u8> = (0..len).map(|b| (b as u8) ^ i).collect();
        if theirs.send(&frame).is_err() {
            break;
        }
    }
    let mut net = Net::new(
        NetDeviceConfig {
            id: "fuzz".into(),
            backend: Box::new(common::Sink(ours)),
            mac: None,
            mtu: if mode & 4 == 4 {
                Some(u16::from(frames) * 64)
            } else {
                None
            },
        },
        common::interrupt(),
    )
    .expect("net");
    // An unused TX queue: ready but empty.
    let mut tx = Queue::new(common::QUEUE_SIZE).expect("queue");
    tx.set_desc_table_address(Some(0x8000), Some(0));
    tx.set_avail_ring_address(Some(0x9000), Some(0));
    tx.set_used_ring_address(Some(0xa000), Some(0));
    tx.set_ready(true);
    let features = (1 << 32) | if mode & 2 == 2 { MRG_RXBUF } else { 0 };
    if net.activate(mem, vec![rx, tx], features).is_ok() {
        net.process_rx();
        net.process_rx();
    }
});
