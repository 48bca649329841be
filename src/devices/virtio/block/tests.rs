//! virtio-blk against guest memory and a driver-side queue, without KVM.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request::{kind, status};
use super::*;
use crate::config::CacheType;
use crate::devices::virtio::test_utils::{
    add_chains, counting_interrupt, default_mem, driver_queue, Desc, IrqCounter,
};
use crate::devices::virtio::{Interrupt, VirtioDevice, INT_CONFIG_CHANGE};
use crate::vstate::memory::GuestMemory;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x30_0000;
const STATUS: u64 = 0x40_0000;
/// 64 KiB disk.
const DISK_SECTORS: u64 = 128;

struct Rig {
    mem: GuestMemory,
    file: TempFile,
    block: Block,
    irq: IrqCounter,
    interrupt: Arc<Interrupt>,
}

fn disk_pattern() -> Vec<u8> {
    (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect()
}

fn rig(read_only: bool, cache: CacheType) -> Rig {
    let mem = default_mem();
    let file = TempFile::new().unwrap();
    file.as_file().write_all(&disk_pattern()).unwrap();
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(file.as_path())
        .unwrap();
    let (interrupt, irq) = counting_interrupt();
    let block = Block::new(
        BlockConfig {
            id: "rootfs".into(),
            path: file.as_path().to_owned(),
            file: backing,
            capacity: DISK_SECTORS,
            read_only,
            cache,
        },
        interrupt.clone(),
    )
    .unwrap();
    Rig {
        mem,
        file,
        block,
        irq,
        interrupt,
    }
}

fn header(mem: &GuestMemory, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn status_byte(mem: &GuestMemory) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn file_bytes(r: &Rig) -> Vec<u8> {
    let mut f = std::fs::File::open(r.file.as_path()).unwrap();
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Activates the device on a fresh 16-entry queue, adds `chains`, serves them.
fn serve(r: &mut Rig, chains: &[&[Desc]]) -> (u16, Vec<(u32, u32)>) {
    let (vq, q) = driver_queue(&r.mem, 16);
    r.block.activate(r.mem.clone(), vec![q], 0).unwrap();
    add_chains(&vq, 0, chains);
    r.block.process_queue();
    let used_idx = vq.used().idx().load();
    let elems = (0..used_idx)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect();
    (used_idx, elems)
}

#[test]
fn test_read_scatters_sectors_into_guest_buffers() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 2);
    let (n, used) = serve(
        &mut r,
        &[&[
            Desc::r(HDR, 16),
            Desc::w(DATA, 512),
            Desc::w(DATA2, 512),
            Desc::w(STATUS, 1),
        ]],
    );
    assert_eq!((n, used), (1, vec![(0, 1025)]));
    assert_eq!(status_byte(&r.mem), status::OK);
    let mut got = vec![0u8; 512];
    r.mem.read_slice(&mut got, GuestAddress(DATA2)).unwrap();
    assert_eq!(got, disk_pattern()[3 * 512..4 * 512]);
    assert_eq!(r.irq.count(), 1);
}

#[test]
fn test_write_gathers_guest_buffers_into_the_file() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::OUT, 1);
    r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    r.mem
        .write_slice(&[0xcd; 512], GuestAddress(DATA2))
        .unwrap();
    let (_, used) = serve(
        &mut r,
        &[&[
            Desc::r(HDR, 16),
            Desc::r(DATA, 512),
            Desc::r(DATA2, 512),
            Desc::w(STATUS, 1),
        ]],
    );
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(status_byte(&r.mem), status::OK);
    let bytes = file_bytes(&r);
    assert_eq!(bytes[512..1024], [0xab; 512]);
    assert_eq!(bytes[1024..1536], [0xcd; 512]);
    assert_eq!(bytes[..512], disk_pattern()[..512]);
}

#[test]
fn test_header_and_data_in_one_descriptor() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::OUT, 0);
    r.mem
        .write_slice(&[0x11; 512], GuestAddress(HDR + 16))
        .unwrap();
    serve(&mut r, &[&[Desc::r(HDR, 16 + 512), Desc::w(STATUS, 1)]]);
    assert_eq!(status_byte(&r.mem), status::OK);
    assert_eq!(file_bytes(&r)[..512], [0x11; 512]);
}

#[test]
fn test_flush_on_writeback_drive_succeeds() {
    let mut r = rig(false, CacheType::Writeback);
    header(&r.mem, kind::FLUSH, 0);
    let (_, used) = serve(&mut r, &[&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]]);
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(status_byte(&r.mem), status::OK);
}

#[test]
fn test_get_id_returns_drive_id() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::GET_ID, 0);
    let (_, used) = serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 20), Desc::w(STATUS, 1)]],
    );
    assert_eq!(used, vec![(0, 21)]);
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..7], b"rootfs\0");
}

#[test]
fn test_unknown_request_type_is_unsupported() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, 0x7777, 0);
    serve(&mut r, &[&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]]);
    assert_eq!(status_byte(&r.mem), status::UNSUPP);
}

#[test]
fn test_read_past_end_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, DISK_SECTORS - 1);
    let (_, used) = serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 1024), Desc::w(STATUS, 1)]],
    );
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_sector_overflow_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, u64::MAX);
    serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_write_to_read_only_drive_returns_ioerr_and_keeps_file() {
    let mut r = rig(true, CacheType::Unsafe);
    header(&r.mem, kind::OUT, 0);
    r.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::r(DATA, 512), Desc::w(STATUS, 1)]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
    assert_eq!(file_bytes(&r), disk_pattern());
}

#[test]
fn test_read_only_drive_advertises_ro() {
    let r = rig(true, CacheType::Unsafe);
    assert_ne!(r.block.avail_features() & (1 << 5), 0);
}

#[test]
fn test_partial_sector_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 100), Desc::w(STATUS, 1)]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_data_outside_guest_memory_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    let (_, used) = serve(
        &mut r,
        &[&[
            Desc::r(HDR, 16),
            Desc::w(0x7fff_0000, 512),
            Desc::w(STATUS, 1),
        ]],
    );
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_huge_length_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    serve(
        &mut r,
        &[&[
            Desc::r(HDR, 16),
            Desc::w(DATA, 0xffff_fe00),
            Desc::w(STATUS, 1),
        ]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_readable_data_buffer_on_read_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    r.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::r(DATA, 512), Desc::w(STATUS, 1)]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
    let mut data = [0u8; 512];
    r.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, [0x55; 512]);
}

#[test]
fn test_readable_status_descriptor_gets_no_status() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::FLUSH, 0);
    r.mem.write_obj(0x77u8, GuestAddress(STATUS)).unwrap();
    let (_, used) = serve(&mut r, &[&[Desc::r(HDR, 16), Desc::r(STATUS, 1)]]);
    assert_eq!(used, vec![(0, 0)]);
    assert_eq!(status_byte(&r.mem), 0x77);
}

#[test]
fn test_header_shorter_than_16_bytes_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    serve(&mut r, &[&[Desc::r(HDR, 8), Desc::w(STATUS, 1)]]);
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_readable_after_writable_returns_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    serve(
        &mut r,
        &[&[
            Desc::r(HDR, 16),
            Desc::w(DATA, 512),
            Desc::r(DATA2, 512),
            Desc::w(STATUS, 1),
        ]],
    );
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

/// Writes raw descriptors at table index 0.. and makes index 0 available.
fn raw_chain(r: &mut Rig, descs: &[(u64, u32, u16, u16)]) -> u16 {
    let (vq, q) = driver_queue(&r.mem, 16);
    r.block.activate(r.mem.clone(), vec![q], 0).unwrap();
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        vq.desc_table()
            .store(
                i as u16,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    r.block.process_queue();
    vq.used().idx().load()
}

#[test]
fn test_looping_chain_completes_with_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let used = raw_chain(&mut r, &[(HDR, 16, next, 1), (STATUS, 1, next | write, 0)]);
    assert_eq!(used, 1);
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_next_index_outside_table_completes_with_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let used = raw_chain(
        &mut r,
        &[(HDR, 16, next, 1), (STATUS, 1, next | write, 500)],
    );
    assert_eq!(used, 1);
    assert_eq!(status_byte(&r.mem), status::IOERR);
}

#[test]
fn test_avail_index_far_ahead_needs_reset_and_serves_nothing() {
    let mut r = rig(false, CacheType::Unsafe);
    let (vq, q) = driver_queue(&r.mem, 16);
    r.block.activate(r.mem.clone(), vec![q], 0).unwrap();
    vq.avail().idx().store(40_000);
    r.block.process_queue();
    assert_eq!(vq.used().idx().load(), 0);
    assert!(r.block_needs_reset());
    // A broken queue stays quiet until the driver resets the device.
    r.block.process_queue();
    assert_eq!(vq.used().idx().load(), 0);
}

impl Rig {
    /// NEEDS_RESET is set and the driver was told (config-change interrupt).
    fn block_needs_reset(&self) -> bool {
        self.irq.count() > 0 && self.block.interrupt_needs_reset()
    }
}

#[test]
fn test_batch_of_requests_raises_one_interrupt() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::FLUSH, 0);
    let chain: &[Desc] = &[Desc::r(HDR, 16), Desc::w(STATUS, 1)];
    let (n, _) = serve(&mut r, &[chain, chain, chain]);
    assert_eq!(n, 3);
    assert_eq!(r.irq.count(), 1);
    assert_eq!(r.block.counters.requests, 3);
    assert_eq!(r.block.counters.flushes, 3);
}

#[test]
fn test_reset_stops_service_and_reactivation_resumes() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::FLUSH, 0);
    serve(&mut r, &[&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]]);
    r.block.reset();
    r.block.process_queue();
    let (n, _) = serve(&mut r, &[&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]]);
    assert_eq!(n, 1);
}

#[test]
fn test_zero_length_status_descriptor_completes_with_nothing_written() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::IN, 0);
    r.mem.write_slice(&[0x33; 512], GuestAddress(DATA)).unwrap();
    let (_, used) = serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 0)]],
    );
    // The last writable byte is the data buffer's last byte: it gets the status.
    assert_eq!(used, vec![(0, 1)]);
    let mut last = [0u8; 1];
    r.mem
        .read_slice(&mut last, GuestAddress(DATA + 511))
        .unwrap();
    assert_eq!(last, [status::IOERR]);
}

#[test]
fn test_request_with_no_writable_byte_completes_with_used_zero() {
    let mut r = rig(false, CacheType::Unsafe);
    header(&r.mem, kind::FLUSH, 0);
    let (_, used) = serve(&mut r, &[&[Desc::r(HDR, 16), Desc::w(STATUS, 0)]]);
    assert_eq!(used, vec![(0, 0)]);
}

/// Writes a request header for chain `n` at its own address (HDR + n * 0x100).
fn header_at(mem: &GuestMemory, n: u64, kind: u32, sector: u64) -> u64 {
    let at = HDR + n * 0x100;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
    at
}

/// Status byte of chain `n` (STATUS + n).
fn status_of(mem: &GuestMemory, n: u64) -> u8 {
    mem.read_obj(GuestAddress(STATUS + n)).unwrap()
}

#[test]
fn test_adjacent_writes_in_one_batch_all_land() {
    let mut r = rig(false, CacheType::Unsafe);
    let chains: Vec<Vec<Desc>> = (0..3u64)
        .map(|n| {
            let hdr = header_at(&r.mem, n, kind::OUT, 10 + n);
            let data = DATA + n * 0x1000;
            r.mem
                .write_slice(&[0x10 + n as u8; 512], GuestAddress(data))
                .unwrap();
            vec![Desc::r(hdr, 16), Desc::r(data, 512), Desc::w(STATUS + n, 1)]
        })
        .collect();
    let refs: Vec<&[Desc]> = chains.iter().map(Vec::as_slice).collect();
    let (_, used) = serve(&mut r, &refs);
    assert_eq!(used, vec![(0, 1), (3, 1), (6, 1)]);
    assert_eq!(
        (0..3).map(|n| status_of(&r.mem, n)).collect::<Vec<_>>(),
        vec![status::OK; 3]
    );
    let bytes = file_bytes(&r);
    for n in 0..3usize {
        assert_eq!(
            bytes[(10 + n) * 512..(11 + n) * 512],
            [0x10 + n as u8; 512],
            "sector {}",
            10 + n
        );
    }
    assert_eq!(
        bytes[13 * 512..14 * 512],
        disk_pattern()[13 * 512..14 * 512]
    );
    assert_eq!(r.block.counters.write_bytes, 3 * 512);
}

#[test]
fn test_adjacent_reads_in_one_batch_fill_each_buffer() {
    let mut r = rig(false, CacheType::Unsafe);
    let chains: Vec<Vec<Desc>> = (0..4u64)
        .map(|n| {
            let hdr = header_at(&r.mem, n, kind::IN, 20 + 2 * n);
            vec![
                Desc::r(hdr, 16),
                Desc::w(DATA + n * 0x1000, 1024),
                Desc::w(STATUS + n, 1),
            ]
        })
        .collect();
    let refs: Vec<&[Desc]> = chains.iter().map(Vec::as_slice).collect();
    let (_, used) = serve(&mut r, &refs);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![1025; 4]);
    for n in 0..4u64 {
        let mut got = vec![0u8; 1024];
        r.mem
            .read_slice(&mut got, GuestAddress(DATA + n * 0x1000))
            .unwrap();
        let start = (20 + 2 * n as usize) * 512;
        assert_eq!(got, disk_pattern()[start..start + 1024], "chain {n}");
        assert_eq!(status_of(&r.mem, n), status::OK);
    }
}

#[test]
fn test_out_of_range_request_in_a_run_fails_alone() {
    let mut r = rig(false, CacheType::Unsafe);
    let sectors = [0u64, 1, DISK_SECTORS, 2];
    let chains: Vec<Vec<Desc>> = (0..4u64)
        .map(|n| {
            let hdr = header_at(&r.mem, n, kind::IN, sectors[n as usize]);
            vec![
                Desc::r(hdr, 16),
                Desc::w(DATA + n * 0x1000, 512),
                Desc::w(STATUS + n, 1),
            ]
        })
        .collect();
    let refs: Vec<&[Desc]> = chains.iter().map(Vec::as_slice).collect();
    serve(&mut r, &refs);
    let statuses: Vec<u8> = (0..4).map(|n| status_of(&r.mem, n)).collect();
    assert_eq!(
        statuses,
        vec![status::OK, status::OK, status::IOERR, status::OK]
    );
}

#[test]
fn test_writes_around_a_flush_keep_their_order_and_data() {
    let mut r = rig(false, CacheType::Writeback);
    let h0 = header_at(&r.mem, 0, kind::OUT, 5);
    let h1 = header_at(&r.mem, 1, kind::FLUSH, 0);
    let h2 = header_at(&r.mem, 2, kind::OUT, 5);
    r.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    r.mem
        .write_slice(&[0xbb; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    serve(
        &mut r,
        &[
            &[Desc::r(h0, 16), Desc::r(DATA, 512), Desc::w(STATUS, 1)],
            &[Desc::r(h1, 16), Desc::w(STATUS + 1, 1)],
            &[
                Desc::r(h2, 16),
                Desc::r(DATA + 0x1000, 512),
                Desc::w(STATUS + 2, 1),
            ],
        ],
    );
    assert_eq!(
        (0..3).map(|n| status_of(&r.mem, n)).collect::<Vec<_>>(),
        vec![status::OK; 3]
    );
    assert_eq!(file_bytes(&r)[5 * 512..6 * 512], [0xbb; 512]);
}

#[test]
fn test_failed_merged_write_gives_each_request_its_own_ioerr() {
    let mut r = rig(false, CacheType::Unsafe);
    // A backing file the host cannot write: every pwritev fails (EBADF).
    r.block.replace_backing(
        r.file.as_path().to_owned(),
        std::fs::File::open(r.file.as_path()).unwrap(),
        DISK_SECTORS,
    );
    let chains: Vec<Vec<Desc>> = (0..3u64)
        .map(|n| {
            let hdr = header_at(&r.mem, n, kind::OUT, n);
            vec![
                Desc::r(hdr, 16),
                Desc::r(DATA + n * 0x1000, 512),
                Desc::w(STATUS + n, 1),
            ]
        })
        .collect();
    let refs: Vec<&[Desc]> = chains.iter().map(Vec::as_slice).collect();
    serve(&mut r, &refs);
    assert_eq!(
        (0..3).map(|n| status_of(&r.mem, n)).collect::<Vec<_>>(),
        vec![status::IOERR; 3]
    );
    assert_eq!(file_bytes(&r), disk_pattern());
    assert_eq!(r.block.counters.errors, 3);
}

#[test]
fn test_replaced_backing_shows_its_capacity_and_raises_a_config_change() {
    let mut r = rig(false, CacheType::Unsafe);
    let bigger = TempFile::new().unwrap();
    bigger.as_file().write_all(&[0x5a; 256 * 512]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(bigger.as_path())
        .unwrap();

    r.block
        .replace_backing(bigger.as_path().to_owned(), file, 256);

    let mut capacity = [0u8; 8];
    r.block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 256);
    assert_eq!(r.irq.count(), 1);
    assert_ne!(r.interrupt.status() & INT_CONFIG_CHANGE, 0);
    header(&r.mem, kind::IN, 200);
    serve(
        &mut r,
        &[&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]],
    );
    assert_eq!(status_byte(&r.mem), status::OK);
    let mut got = [0u8; 512];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0x5a; 512]);
}
