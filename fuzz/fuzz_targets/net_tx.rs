//! virtio-net transmit against arbitrary descriptor tables and rings (raw mode) and
//! against well-formed multi-descriptor and indirect chains (chain mode): it must
//! never panic, and frames it sends must come from guest memory only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spry::devices::virtio::net::{Net, NetDeviceConfig};
use spry::devices::virtio::VirtioDevice;
use virtio_queue::{Queue, QueueT};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let built = if mode & 1 == 1 {
        common::chains_from(rest)
    } else {
        common::queue_from(rest)
    };
    let Some((mem, tx)) = built else { return };
    let (ours, theirs) = common::datagram_pair();
    let mut net = Net::new(
        NetDeviceConfig {
            id: "fuzz".into(),
            backend: Box::new(common::Sink(ours)),
            mac: None,
            mtu: None,
        },
        common::interrupt(),
    )
    .expect("net");
    // An unused RX queue: ready but empty.
    let mut rx = Queue::new(common::QUEUE_SIZE).expect("queue");
    rx.set_desc_table_address(Some(0x8000), Some(0));
    rx.set_avail_ring_address(Some(0x9000), Some(0));
    rx.set_used_ring_address(Some(0xa000), Some(0));
    rx.set_ready(true);
    let features = if mode & 2 == 2 { u64::MAX } else { 1 << 32 };
    if net.activate(mem, vec![rx, tx], features).is_ok() {
        net.process_tx();
        net.process_rx();
    }
    let mut buf = vec![0u8; 70_000];
    while theirs.recv(&mut buf).is_ok() {}
});
