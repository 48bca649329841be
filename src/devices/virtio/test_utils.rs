//! Guest memory, driver-side queues and interrupt counters for device unit tests,
//! built on virtio-queue's `MockSplitQueue`: no KVM involved.
#![allow(clippy::cast_possible_truncation)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::iovec::{ChainBuffers, ChainError};
use super::{Interrupt, InterruptLine};
use crate::vstate::memory::GuestMemory;

/// 16 MiB of guest memory; queues live at 0, buffers from 0x1000 up (keep test
/// buffers above the queue structures, which `MockSplitQueue` puts at 0..0x4000 for
/// 256 entries).
pub fn default_mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// A descriptor for tests.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Desc {
    /// Device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: false,
        }
    }
    /// Device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: true,
        }
    }
    fn raw(&self) -> RawDescriptor {
        let flags = if self.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        RawDescriptor::from(SplitDescriptor::new(self.addr, self.len, flags, 0))
    }
}

/// Builds `descs` as one chain in a fresh queue and splits it.
pub fn chain(mem: &GuestMemory, descs: &[Desc]) -> Result<ChainBuffers, ChainError> {
    let vq = MockSplitQueue::new(mem, 16);
    let raw: Vec<_> = descs.iter().map(Desc::raw).collect();
    let chain = vq.build_desc_chain(&raw).unwrap();
    ChainBuffers::from_chain(chain, mem)
}

/// Counts interrupts instead of raising them.
#[derive(Debug, Default, Clone)]
pub struct IrqCounter(pub Arc<AtomicUsize>);

impl IrqCounter {
    /// How many times the line was pulsed.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl InterruptLine for IrqCounter {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Interrupt state whose line is a counter.
pub fn counting_interrupt() -> (Arc<Interrupt>, IrqCounter) {
    let counter = IrqCounter::default();
    (Arc::new(Interrupt::new(Box::new(counter.clone()))), counter)
}

/// A driver-side queue of `size` entries at guest address 0, plus the device-side
/// `Queue` pointing at it, ready for use.
pub fn driver_queue(mem: &GuestMemory, size: u16) -> (MockSplitQueue<'_, GuestMemory>, Queue) {
    let vq = MockSplitQueue::new(mem, size);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_ready(true);
    (vq, q)
}

/// Like [`driver_queue`], with the queue structures at `base`.
pub fn driver_queue_at(
    mem: &GuestMemory,
    base: u64,
    size: u16,
) -> (MockSplitQueue<'_, GuestMemory>, Queue) {
    let vq = MockSplitQueue::create(mem, GuestAddress(base), size);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_ready(true);
    (vq, q)
}

/// Puts chains (lists of descriptors) at descriptor-table offset `first` onwards and
/// makes them available.
pub fn add_chains(vq: &MockSplitQueue<'_, GuestMemory>, first: u16, chains: &[&[Desc]]) {
    let mut offset = first;
    for descs in chains {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                } | if i + 1 < descs.len() {
                    virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                let next = if i + 1 < descs.len() {
                    offset + i as u16 + 1
                } else {
                    0
                };
                RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
            })
            .collect();
        vq.add_desc_chains(&raw, offset).unwrap();
        offset += descs.len() as u16;
    }
}

/// Drives `transport` the way Linux's virtio_mmio driver does up to DRIVER_OK,
/// acknowledging `features` and giving it `queues` (driver-side, in queue order, each
/// of `size` entries).
pub fn bring_up_transport(
    transport: &mut super::mmio::MmioTransport,
    features: u64,
    size: u16,
    queues: &[&MockSplitQueue<'_, GuestMemory>],
) {
    use super::mmio::reg;
    use super::status;
    use crate::devices::bus::BusDevice;
    let mut write = |offset: u64, value: u32| transport.write(offset, &value.to_le_bytes());
    write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write(reg::DRIVER_FEATURES_SEL, 1);
    write(reg::DRIVER_FEATURES, (features >> 32) as u32);
    write(reg::DRIVER_FEATURES_SEL, 0);
    write(reg::DRIVER_FEATURES, features as u32);
    let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write(reg::STATUS, features_ok);
    for (i, vq) in (0u32..).zip(queues) {
        write(reg::QUEUE_SEL, i);
        write(reg::QUEUE_NUM, u32::from(size));
        write(reg::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
        write(reg::QUEUE_AVAIL_LOW, vq.avail_addr().0 as u32);
        write(reg::QUEUE_USED_LOW, vq.used_addr().0 as u32);
        write(reg::QUEUE_READY, 1);
    }
    write(reg::STATUS, features_ok | status::DRIVER_OK);
}
