//! virtio-net transmit against arbitrary descriptor tables and rings: it must never
//! panic, and frames it sends must come from guest memory only.
#![no_main]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use spry::devices::virtio::net::tap::TapError;
use spry::devices::virtio::net::{Net, NetBackend, NetDeviceConfig};
use spry::devices::virtio::VirtioDevice;
use virtio_queue::{Queue, QueueT};

#[path = "common.rs"]
mod common;

struct Sink(UnixDatagram);

impl AsRawFd for Sink {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Sink {
    fn supported_offloads(&self) -> libc_uint {
        0
    }
    fn set_offloads(&self, _flags: libc_uint) -> Result<(), TapError> {
        Ok(())
    }
    fn name(&self) -> &str {
        "fuzz"
    }
}

#[allow(non_camel_case_types)]
type libc_uint = std::os::raw::c_uint;

fuzz_target!(|data: &[u8]| {
    let Some((mem, tx)) = common::queue_from(data) else { return };
    let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    theirs.set_nonblocking(true).expect("nonblocking");
    let mut net = Net::new(
        NetDeviceConfig {
            id: "fuzz".into(),
            backend: Box::new(Sink(ours)),
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
    if net.activate(mem, vec![rx, tx], 1 << 32).is_ok() {
        net.process_tx();
        net.process_rx();
    }
    let mut buf = vec![0u8; 70_000];
    while theirs.recv(&mut buf).is_ok() {}
});
