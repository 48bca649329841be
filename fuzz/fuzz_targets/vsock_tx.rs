//! virtio-vsock transmit (and the receive work it causes) against arbitrary
//! descriptor tables and rings: it must never panic, whatever headers, lengths and
//! buffers the guest makes up.
#![no_main]

use std::os::unix::net::UnixListener;

use libfuzzer_sys::fuzz_target;
use spry::devices::virtio::vsock::{Muxer, Vsock};
use spry::devices::virtio::VirtioDevice;
use virtio_queue::{Queue, QueueT};

#[path = "common.rs"]
mod common;

/// A ready queue of its own, empty, at `base` (receive and event queues).
fn spare_queue(base: u32) -> Queue {
    let mut q = Queue::new(common::QUEUE_SIZE).expect("queue");
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x400), Some(0));
    q.set_used_ring_address(Some(base + 0x800), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let Some((mem, tx)) = common::queue_from(data) else {
        return;
    };
    let path = std::env::temp_dir().join(format!("spry-fuzz-vsock-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    // The guest's CID is 3; guest connections go to `<path>_<port>`, which do not
    // exist, so every REQUEST is answered with a reset.
    let muxer = Muxer::new(3, path, listener);
    let mut vsock = Vsock::new(3, muxer, common::interrupt()).expect("vsock");
    if vsock
        .activate(
            mem,
            vec![spare_queue(0x8000), tx, spare_queue(0xc000)],
            1 << 32,
        )
        .is_ok()
    {
        vsock.process_tx();
        vsock.process_rx();
    }
});
