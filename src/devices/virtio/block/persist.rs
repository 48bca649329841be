//! A virtio-blk device's saved state: what the guest was told about the disk.
//!
//! Nothing of a request outlives its turn of the event loop (each one completes,
//! synchronously, before the device looks at the ring again), so the device itself
//! keeps no state across requests; the queue and the transport carry the rest
//! (see [`crate::devices::virtio::persist`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cow::{CowError, CowState};
use super::device::{Block, BlockConfig};
use crate::config::CacheType;
use crate::devices::virtio::Interrupt;

/// Errors while restoring a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockStateError {
    /// The backing file is not the size the guest knows.
    #[error(
        "drive {id}: {path} holds {found} sectors, the snapshot's disk had {saved}; the guest \
         would read past the end or miss data"
    )]
    Capacity {
        /// `drive_id`.
        id: String,
        /// The backing file.
        path: PathBuf,
        /// Sectors in the file now.
        found: u64,
        /// Sectors in the state.
        saved: u64,
    },
    /// Creating the queue eventfd failed.
    #[error("drive {0}: cannot create its queue eventfd")]
    EventFd(String, #[source] std::io::Error),
}

/// What a virtio-blk device needs to come back as the guest last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// `drive_id` (also the GET_ID answer).
    pub id: String,
    /// Backing file when saved; a restore may name another (a clone's own copy).
    pub path: PathBuf,
    /// Size in 512-byte sectors, as the config space told the guest.
    pub capacity: u64,
    /// Read-only (VIRTIO_BLK_F_RO was offered).
    pub read_only: bool,
    /// Flush semantics (VIRTIO_BLK_F_FLUSH was offered for Writeback).
    pub cache: CacheType,
    /// A copy-on-write drive (then `path` is the base image): its overlay, and a
    /// memory overlay's blocks. Absent in snapshots of ordinary drives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_on_write: Option<CowState>,
}

impl Block {
    /// The device's state for a snapshot whose state file is `snapshot_path`: a
    /// copy-on-write drive's overlay is frozen beside it, in
    /// `<snapshot_path>.<drive_id>.cow`.
    pub fn save_for_snapshot(&self, snapshot_path: &Path) -> Result<BlockState, CowError> {
        let mut frozen = snapshot_path.as_os_str().to_owned();
        frozen.push(format!(".{}.cow", self.config.id));
        let copy_on_write = self.freeze_copy_on_write(Path::new(&frozen))?;
        Ok(BlockState {
            copy_on_write,
            ..self.save()
        })
    }

    /// The device's state, to save (a copy-on-write drive's overlay not frozen:
    /// see [`Block::save_for_snapshot`]).
    pub fn save(&self) -> BlockState {
        BlockState {
            id: self.config.id.clone(),
            path: self.config.path.clone(),
            capacity: self.config.capacity,
            read_only: self.config.read_only,
            cache: self.config.cache,
            copy_on_write: self.save_copy_on_write(),
        }
    }

    /// The device `state` describes, on `file` (opened from `path`, read-only if the
    /// state says so) of `capacity` sectors, which must be the saved size. Its queue
    /// comes back through the transport's restore.
    pub fn restore(
        state: &BlockState,
        path: PathBuf,
        file: File,
        capacity: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<Block, BlockStateError> {
        if capacity != state.capacity {
            return Err(BlockStateError::Capacity {
                id: state.id.clone(),
                path,
                found: capacity,
                saved: state.capacity,
            });
        }
        let config = BlockConfig {
            id: state.id.clone(),
            path,
            file,
            capacity,
            read_only: state.read_only,
            cache: state.cache,
        };
        Block::new(config, interrupt).map_err(|e| BlockStateError::EventFd(state.id.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::Mutex;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::persist::TransportState;
    use crate::devices::virtio::test_utils::{
        add_chains, bring_up_transport, counting_interrupt, default_mem, Desc,
    };
    use crate::devices::virtio::{F_VERSION_1, INT_USED_RING};
    use crate::vstate::memory::GuestMemory;

    /// 8 sectors, sector n filled with byte n.
    const SECTORS: u64 = 8;
    const QUEUE: u64 = 0x1_0000;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    /// VIRTIO_BLK_T_IN.
    const READ: u32 = 0;

    fn disk() -> TempFile {
        let file = TempFile::new().unwrap();
        for sector in 0..SECTORS {
            file.as_file()
                .write_all(&[u8::try_from(sector).unwrap(); 512])
                .unwrap();
        }
        file
    }

    fn open(file: &TempFile) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(file.as_path())
            .unwrap()
    }

    fn state(file: &TempFile) -> BlockState {
        BlockState {
            id: "rootfs".into(),
            path: file.as_path().to_owned(),
            capacity: SECTORS,
            read_only: false,
            cache: CacheType::Unsafe,
            copy_on_write: None,
        }
    }

    /// Queues a read of `sector` into DATA, as chain `head` (three descriptors).
    fn queue_read(mem: &GuestMemory, vq: &MockSplitQueue<'_, GuestMemory>, head: u16, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&READ.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        add_chains(
            vq,
            head,
            &[&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]],
        );
    }

    fn data(mem: &GuestMemory) -> u8 {
        mem.read_obj(GuestAddress(DATA)).unwrap()
    }

    /// A block device behind its transport, both restored from saved states.
    fn restore_pair(
        mem: &GuestMemory,
        file: &TempFile,
        block: &BlockState,
        transport: &TransportState,
    ) -> (Arc<Mutex<Block>>, MmioTransport) {
        let (interrupt, _) = counting_interrupt();
        let dev = Block::restore(
            block,
            file.as_path().to_owned(),
            open(file),
            SECTORS,
            interrupt.clone(),
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let t = MmioTransport::restore(
            "virtio-blk rootfs".into(),
            dev.clone(),
            interrupt,
            mem.clone(),
            transport,
        )
        .unwrap();
        (dev, t)
    }

    #[test]
    fn test_restored_block_serves_the_next_request_at_the_saved_ring_index() {
        let mem = default_mem();
        let file = disk();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
        let (interrupt, _) = counting_interrupt();
        let dev = Block::restore(
            &state(&file),
            file.as_path().to_owned(),
            open(&file),
            SECTORS,
            interrupt.clone(),
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut t = MmioTransport::new("blk".into(), dev.clone(), interrupt, mem.clone());
        bring_up_transport(&mut t, 1 << F_VERSION_1, 16, &[&vq]);
        queue_read(&mem, &vq, 0, 5);
        dev.lock().unwrap().process_queue();
        assert_eq!((vq.used().idx().load(), data(&mem)), (1, 5));
        let saved_block = dev.lock().unwrap().save();
        let saved_transport = t.save();
        let json = serde_json::to_string(&(&saved_block, &saved_transport)).unwrap();
        let (block_state, transport_state): (BlockState, TransportState) =
            serde_json::from_str(&json).unwrap();
        // Queued after the snapshot was taken, as the guest goes on in the memory the
        // restored VM shares.
        queue_read(&mem, &vq, 3, 6);

        let (back, back_t) = restore_pair(&mem, &file, &block_state, &transport_state);
        back.lock().unwrap().process_queue();

        assert_eq!(vq.used().idx().load(), 2);
        let used = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!((used.id(), used.len()), (3, 513));
        assert_eq!(data(&mem), 6);
        assert_eq!(back_t.save().queues[0].next_avail, 2);
        assert_eq!(transport_state.interrupt.status, INT_USED_RING);
    }

    #[test]
    fn test_request_queued_before_the_snapshot_is_served_after_restore() {
        let mem = default_mem();
        let file = disk();
        let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
        let (interrupt, _) = counting_interrupt();
        let dev = Block::restore(
            &state(&file),
            file.as_path().to_owned(),
            open(&file),
            SECTORS,
            interrupt.clone(),
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut t = MmioTransport::new("blk".into(), dev.clone(), interrupt, mem.clone());
        bring_up_transport(&mut t, 1 << F_VERSION_1, 16, &[&vq]);
        // Made available and kicked, but the event loop never got to it.
        queue_read(&mem, &vq, 0, 7);
        let saved_block = dev.lock().unwrap().save();
        let saved_transport = t.save();

        let (back, _) = restore_pair(&mem, &file, &saved_block, &saved_transport);
        let kicked = back.lock().unwrap().queue_event().read().unwrap();
        back.lock().unwrap().process_queue();

        assert_eq!(kicked, 1);
        assert_eq!((vq.used().idx().load(), data(&mem)), (1, 7));
    }

    #[test]
    fn test_restore_onto_a_file_of_another_size_is_refused() {
        let file = disk();
        let (interrupt, _) = counting_interrupt();

        let err = Block::restore(
            &state(&file),
            file.as_path().to_owned(),
            open(&file),
            SECTORS - 1,
            interrupt,
        )
        .unwrap_err();

        assert!(matches!(
            err,
            BlockStateError::Capacity {
                found: 7,
                saved: 8,
                ..
            }
        ));
    }
}
