//! Lays fuzzer bytes out as a guest's split queue: a 16-entry descriptor table, an
//! available ring, and a data area the descriptors may (or may not) point into.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use spry::devices::virtio::{Interrupt, InterruptLine};
use spry::vstate::memory::GuestMemory;

pub const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const DATA: u64 = 0x10000;
pub const MEM_SIZE: usize = 1 << 20;

#[derive(Debug)]
struct NoIrq;

impl InterruptLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(Box::new(NoIrq)))
}

/// Guest memory and a ready queue built from `data`, or `None` if `data` is too short.
pub fn queue_from(data: &[u8]) -> Option<(GuestMemory, Queue)> {
    let table_len = usize::from(QUEUE_SIZE) * 16;
    let avail_len = 4 + usize::from(QUEUE_SIZE) * 2;
    if data.len() < table_len + avail_len + 1 {
        return None;
    }
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    mem.write_slice(&data[..table_len], GuestAddress(DESC_TABLE)).ok()?;
    mem.write_slice(&data[table_len..table_len + avail_len], GuestAddress(AVAIL_RING)).ok()?;
    let rest = &data[table_len + avail_len..];
    let n = rest.len().min(MEM_SIZE - DATA as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA)).ok()?;
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(rest[0] & 1 == 1);
    q.set_ready(true);
    Some((mem, q))
}
