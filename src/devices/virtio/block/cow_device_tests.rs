//! A copy-on-write virtio-blk device against guest memory and a driver-side queue:
//! the guest's reads and writes go through the overlay, malformed requests still
//! end IOERR, and the base image is never written.
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::cow::{open_base, CowDisk};
use super::request::{kind, status};
use super::*;
use crate::config::CacheType;
use crate::devices::virtio::test_utils::{
    add_chains, counting_interrupt, default_mem, driver_queue, Desc,
};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::vstate::memory::GuestMemory;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x40_0000;
/// 1 MiB disk: longer than one bounce buffer (256 KiB) of the copy-on-write path.
const SECTORS: u64 = 2048;

struct Rig {
    mem: GuestMemory,
    base: TempFile,
    block: Block,
    _interrupt: Arc<Interrupt>,
}

fn pattern() -> Vec<u8> {
    (0..SECTORS * 512).map(|i| (i % 253) as u8).collect()
}

fn rig() -> Rig {
    let base = TempFile::new().unwrap();
    base.as_file().write_all(&pattern()).unwrap();
    let (interrupt, _) = counting_interrupt();
    let mut block = Block::new(
        BlockConfig {
            id: "rootfs".into(),
            path: base.as_path().to_owned(),
            file: open_base(base.as_path()).unwrap(),
            capacity: SECTORS,
            read_only: false,
            cache: CacheType::Writeback,
        },
        interrupt.clone(),
    )
    .unwrap();
    let layer = CowDisk::in_memory(
        open_base(base.as_path()).unwrap(),
        base.as_path().to_owned(),
        SECTORS * 512,
    );
    block.set_copy_on_write(layer);
    Rig {
        mem: default_mem(),
        base,
        block,
        _interrupt: interrupt,
    }
}

fn request(r: &mut Rig, kind: u32, sector: u64, data: &[Desc]) -> u8 {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    r.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut chain = vec![Desc::r(HDR, 16)];
    chain.extend_from_slice(data);
    chain.push(Desc::w(STATUS, 1));
    let (vq, q) = driver_queue(&r.mem, 16);
    r.block.activate(r.mem.clone(), vec![q], 0).unwrap();
    add_chains(&vq, 0, &[&chain]);
    r.block.process_queue();
    r.mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn read_sectors(r: &mut Rig, sector: u64, count: u32) -> (u8, Vec<u8>) {
    let st = request(r, kind::IN, sector, &[Desc::w(DATA, 512 * count)]);
    let mut got = vec![0u8; 512 * count as usize];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    (st, got)
}

#[test]
fn test_guest_write_is_read_back_and_the_base_is_unchanged() {
    let mut r = rig();
    r.mem.write_slice(&[0x5e; 512], GuestAddress(DATA)).unwrap();

    let wrote = request(&mut r, kind::OUT, 3, &[Desc::r(DATA, 512)]);
    let flushed = request(&mut r, kind::FLUSH, 0, &[]);
    let (read, got) = read_sectors(&mut r, 0, 16);

    assert_eq!((wrote, flushed, read), (status::OK, status::OK, status::OK));
    let mut want = pattern()[..16 * 512].to_vec();
    want[3 * 512..4 * 512].fill(0x5e);
    assert!(got == want);
    assert!(std::fs::read(r.base.as_path()).unwrap() == pattern());
}

#[test]
fn test_write_past_the_end_is_ioerr_and_writes_nothing() {
    let mut r = rig();
    r.mem
        .write_slice(&[0x77; 1024], GuestAddress(DATA))
        .unwrap();

    let st = request(&mut r, kind::OUT, SECTORS - 1, &[Desc::r(DATA, 1024)]);
    let huge = request(&mut r, kind::OUT, u64::MAX, &[Desc::r(DATA, 512)]);

    assert_eq!((st, huge), (status::IOERR, status::IOERR));
    let (_, last) = read_sectors(&mut r, SECTORS - 1, 1);
    assert!(last == pattern()[(SECTORS as usize - 1) * 512..]);
    assert!(std::fs::read(r.base.as_path()).unwrap() == pattern());
}

#[test]
fn test_discard_changes_drops_what_the_guest_wrote() {
    let mut r = rig();
    r.mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    request(&mut r, kind::OUT, 9, &[Desc::r(DATA, 512)]);

    let discarded = r.block.discard_changes().unwrap();

    let (_, got) = read_sectors(&mut r, 9, 1);
    assert!(discarded);
    assert!(got == pattern()[9 * 512..10 * 512]);
}

#[test]
fn test_snapshot_state_freezes_the_overlay_beside_the_state_file() {
    let mut r = rig();
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let snapshot = dir.as_path().join("vm.snap");
    r.mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    request(&mut r, kind::OUT, 9, &[Desc::r(DATA, 512)]);

    let state = r.block.save_for_snapshot(&snapshot).unwrap();

    let cow = state.copy_on_write.unwrap();
    let frozen = dir.as_path().join("vm.snap.rootfs.cow");
    assert_eq!(cow.frozen_overlay, Some(frozen.clone()));
    assert!(frozen.exists());
}

#[test]
fn test_request_longer_than_the_bounce_buffer_moves_every_byte() {
    let mut r = rig();
    // 600 KiB from sector 1: three pieces, none aligned to a 4 KiB block.
    let len: u32 = 600 * 1024;
    let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();

    let wrote = request(&mut r, kind::OUT, 1, &[Desc::r(DATA, len)]);
    r.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(DATA))
        .unwrap();
    let (read, got) = read_sectors(&mut r, 1, len / 512);

    assert_eq!((wrote, read), (status::OK, status::OK));
    assert!(got == data);
    assert!(std::fs::read(r.base.as_path()).unwrap() == pattern());
}

#[test]
fn test_roll_back_changes_returns_to_the_saved_overlay() {
    let mut r = rig();
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    r.mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    request(&mut r, kind::OUT, 9, &[Desc::r(DATA, 512)]);
    let saved = r.block.save_for_snapshot(&dir.as_path().join("vm.snap"));
    let saved = saved.unwrap().copy_on_write.unwrap();
    r.mem.write_slice(&[0x99; 512], GuestAddress(DATA)).unwrap();
    request(&mut r, kind::OUT, 9, &[Desc::r(DATA, 512)]);
    request(&mut r, kind::OUT, 100, &[Desc::r(DATA, 512)]);

    let rolled = r.block.roll_back_changes(&saved).unwrap();

    let (_, nine) = read_sectors(&mut r, 9, 1);
    let (_, hundred) = read_sectors(&mut r, 100, 1);
    assert!(rolled);
    assert_eq!(nine, vec![0x42; 512]);
    assert!(hundred == pattern()[100 * 512..101 * 512]);
}
