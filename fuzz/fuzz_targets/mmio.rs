//! The virtio-mmio register interface as a guest driver (or a hostile guest) sees it:
//! a sequence of register reads and writes of any size at any offset, writes into
//! guest memory (rings and buffers) and queue kicks, against a transport with a real
//! block or net device behind it. Nothing may panic or hang, whatever the order.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use spry::config::CacheType;
use spry::devices::bus::BusDevice;
use spry::devices::virtio::block::{Block, BlockConfig};
use spry::devices::virtio::mmio::{reg, MmioTransport};
use spry::devices::virtio::net::{Net, NetDeviceConfig};
use spry::devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

#[path = "common.rs"]
mod common;

/// Registers the fuzzer picks by index, so most accesses hit one.
const REGS: [u64; 24] = [
    reg::MAGIC,
    reg::VERSION,
    reg::DEVICE_ID,
    reg::VENDOR_ID,
    reg::DEVICE_FEATURES,
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM_MAX,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_STATUS,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_AVAIL_LOW,
    reg::QUEUE_AVAIL_HIGH,
    reg::QUEUE_USED_LOW,
    reg::QUEUE_USED_HIGH,
    reg::CONFIG_GENERATION,
    reg::CONFIG,
];

enum Dev {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>, std::os::unix::net::UnixDatagram),
}

impl Dev {
    fn kick(&self) {
        match self {
            Dev::Block(b) => b.lock().expect("block").process_queue(),
            Dev::Net(n, theirs) => {
                let _ = theirs.send(&[0x5a; 80]);
                let mut n = n.lock().expect("net");
                n.process_tx();
                n.process_rx();
                let mut buf = [0u8; 2048];
                while theirs.recv(&mut buf).is_ok() {}
            }
        }
    }
}

fn disk() -> &'static TempFile {
    static DISK: OnceLock<TempFile> = OnceLock::new();
    DISK.get_or_init(|| {
        let disk = TempFile::new().expect("temp file");
        disk.as_file().write_all(&[0u8; 64 * 512]).expect("disk");
        disk
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, ops)) = data.split_first() else {
        return;
    };
    let Some(mem) = common::memory() else { return };
    let interrupt = common::interrupt();
    let (dev, shared): (Dev, Arc<Mutex<dyn VirtioDevice>>) = if which & 1 == 0 {
        let disk = disk();
        let block = Block::new(
            BlockConfig {
                id: "fuzz".into(),
                path: disk.as_path().to_owned(),
                file: disk.as_file().try_clone().expect("clone"),
                capacity: 64,
                read_only: which & 2 == 2,
                cache: CacheType::Unsafe,
            },
            interrupt.clone(),
        )
        .expect("block");
        let block = Arc::new(Mutex::new(block));
        (Dev::Block(block.clone()), block)
    } else {
        let (ours, theirs) = common::datagram_pair();
        let net = Net::new(
            NetDeviceConfig {
                id: "fuzz".into(),
                backend: Box::new(common::Sink(ours)),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: None,
            },
            interrupt.clone(),
        )
        .expect("net");
        let net = Arc::new(Mutex::new(net));
        (Dev::Net(net.clone(), theirs), net)
    };
    let mut transport = MmioTransport::new("fuzz".into(), shared, interrupt, mem.clone());

    // Each operation: kind, offset selector, then a 4-byte value.
    for op in ops.chunks_exact(6) {
        let [kind, sel, v0, v1, v2, v3] = [op[0], op[1], op[2], op[3], op[4], op[5]];
        let value = [v0, v1, v2, v3, v0, v1, v2, v3];
        let len = [4, 4, 4, 1, 2, 8, 3, 0][usize::from(kind >> 2 & 7)];
        let offset = if kind & 0x20 != 0 {
            // Anywhere in the 4 KiB window, aligned or not.
            u64::from(sel) | u64::from(kind & 0xc0) << 2
        } else {
            REGS[usize::from(sel) % REGS.len()]
        };
        match kind & 3 {
            0 => {
                let mut buf = [0u8; 8];
                transport.read(offset, &mut buf[..len]);
            }
            1 => transport.write(offset, &value[..len]),
            2 => {
                // Guest memory: rings and buffers below 256 KiB.
                let addr = (u64::from(sel) << 10) | (u64::from(v0) << 2);
                let _ = mem.write_slice(&[v1, v2, v3, v0], GuestAddress(addr));
            }
            _ => dev.kick(),
        }
    }
    dev.kick();
});
