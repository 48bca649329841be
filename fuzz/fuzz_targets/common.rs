//! Lays fuzzer bytes out as a guest's split queue, two ways: raw (a 16-entry
//! descriptor table, an available ring and a data area taken byte for byte, so
//! every field may be garbage) and as chains (well-formed multi-descriptor chains
//! whose lengths, flags and addresses come from the input, so the fuzzer reaches
//! the request handling behind the ring checks).

#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use spry::devices::virtio::net::tap::TapError;
use spry::devices::virtio::net::NetBackend;
use spry::devices::virtio::{Interrupt, InterruptLine};
use spry::vstate::memory::GuestMemory;

pub const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x2000;
const USED_RING: u64 = 0x3000;
const DATA: u64 = 0x10000;
pub const MEM_SIZE: usize = 1 << 20;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

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

pub fn memory() -> Option<GuestMemory> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()
}

fn ready_queue(event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Some(q)
}

/// Guest memory and a ready queue built from `data` byte for byte, or `None` if
/// `data` is too short.
pub fn queue_from(data: &[u8]) -> Option<(GuestMemory, Queue)> {
    let table_len = usize::from(QUEUE_SIZE) * 16;
    let avail_len = 4 + usize::from(QUEUE_SIZE) * 2;
    if data.len() < table_len + avail_len + 1 {
        return None;
    }
    let mem = memory()?;
    mem.write_slice(&data[..table_len], GuestAddress(DESC_TABLE))
        .ok()?;
    mem.write_slice(
        &data[table_len..table_len + avail_len],
        GuestAddress(AVAIL_RING),
    )
    .ok()?;
    let rest = &data[table_len + avail_len..];
    let n = rest.len().min(MEM_SIZE - DATA as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA)).ok()?;
    let q = ready_queue(rest[0] & 1 == 1)?;
    Some((mem, q))
}

/// A little cursor over the input.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
}

/// Guest memory and a ready queue holding well-formed descriptor chains described by
/// `data`: per chain a count byte (1-4 descriptors, bit 7: an indirect table), per
/// descriptor a flags byte, a length and an offset into the data area (or, with flag
/// bit 7, an address at the edge of or past guest memory). What the input leaves over
/// fills the data area, where the chains' buffers (request headers, frames) lie.
pub fn chains_from(data: &[u8]) -> Option<(GuestMemory, Queue)> {
    let mut c = Cursor(data);
    let event_idx = c.u8()? & 1 == 1;
    let chains = 1 + c.u8()? % 8;
    let mem = memory()?;
    let mut next_desc = 0u16;
    let mut heads = Vec::new();
    // Indirect tables go after the data the chains point at.
    let mut indirect_at = DATA + 0x8000;
    for _ in 0..chains {
        if next_desc >= QUEUE_SIZE {
            break;
        }
        let count_byte = c.u8()?;
        let count = 1 + u16::from(count_byte & 3);
        let indirect = count_byte & 0x80 != 0;
        let mut descs = Vec::new();
        for _ in 0..count {
            let flags = c.u8()?;
            let len = u32::from(c.u16()?);
            let offset = u64::from(c.u16()?);
            let addr = if flags & 0x80 != 0 {
                // Straddling or past the end of guest memory.
                (MEM_SIZE as u64 - 64).wrapping_add(offset)
            } else {
                DATA + offset
            };
            let write = if flags & 1 != 0 {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            };
            descs.push((addr, len, write));
        }
        let head = next_desc;
        if indirect {
            let table = indirect_at;
            indirect_at += 16 * u64::from(count);
            for (i, &(addr, len, write)) in descs.iter().enumerate() {
                let last = i + 1 == descs.len();
                let flags = write | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                let next = if last { 0 } else { i as u16 + 1 };
                write_desc(
                    &mem,
                    GuestAddress(table + 16 * i as u64),
                    addr,
                    len,
                    flags,
                    next,
                )?;
            }
            let len = 16 * u32::from(count);
            write_desc(&mem, desc_addr(head), table, len, VIRTQ_DESC_F_INDIRECT, 0)?;
            next_desc += 1;
        } else {
            for (i, &(addr, len, write)) in descs.iter().enumerate() {
                if next_desc >= QUEUE_SIZE {
                    break;
                }
                let last = i + 1 == descs.len() || next_desc + 1 >= QUEUE_SIZE;
                let flags = write | if last { 0 } else { VIRTQ_DESC_F_NEXT };
                let next = if last { 0 } else { next_desc + 1 };
                write_desc(&mem, desc_addr(next_desc), addr, len, flags, next)?;
                next_desc += 1;
            }
        }
        heads.push(head);
    }
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).ok()?;
    mem.write_obj(heads.len() as u16, GuestAddress(AVAIL_RING + 2))
        .ok()?;
    for (i, head) in heads.iter().enumerate() {
        mem.write_obj(*head, GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
            .ok()?;
    }
    let n = c.0.len().min(0x8000);
    mem.write_slice(&c.0[..n], GuestAddress(DATA)).ok()?;
    let q = ready_queue(event_idx)?;
    Some((mem, q))
}

fn desc_addr(index: u16) -> GuestAddress {
    GuestAddress(DESC_TABLE + 16 * u64::from(index))
}

fn write_desc(
    mem: &GuestMemory,
    at: GuestAddress,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Option<()> {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, at).ok()
}

/// A net backend on one end of a datagram socket pair: each datagram is a frame.
pub struct Sink(pub UnixDatagram);

impl AsRawFd for Sink {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for Sink {
    fn supported_offloads(&self) -> std::os::raw::c_uint {
        0
    }
    fn set_offloads(&self, _flags: std::os::raw::c_uint) -> Result<(), TapError> {
        Ok(())
    }
    fn name(&self) -> &str {
        "fuzz"
    }
}

/// A connected, non-blocking datagram pair: (the backend's end, the host's end).
pub fn datagram_pair() -> (UnixDatagram, UnixDatagram) {
    let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    theirs.set_nonblocking(true).expect("nonblocking");
    (ours, theirs)
}
