//! The virtio-blk device model: feature bits, config space, and serving the request
//! queue from the event loop.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::cow::{CowDisk, CowError, CowState};
use super::request::{self, Completion, Disk, Request, RequestError};
use crate::config::CacheType;
use crate::devices::virtio::iovec::{total_len, write_at, ChainBuffers, Segment, MAX_SEGMENTS};
use crate::devices::virtio::persist::QueueState;
use crate::devices::virtio::queue::{drain_batched, UsedEntries};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, GuestErrorLog, Interrupt, VirtioDevice, F_RING_EVENT_IDX,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_BLOCK,
};
use crate::vstate::memory::GuestMemory;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_BLK_F_SEG_MAX`.
const F_SEG_MAX: u32 = 2;
/// `VIRTIO_BLK_F_RO`.
const F_RO: u32 = 5;
/// `VIRTIO_BLK_F_FLUSH`.
const F_FLUSH: u32 = 9;
/// Requests served per wake-up before other event sources get a turn.
const BUDGET: usize = QUEUE_SIZE as usize;

/// What a block device is built from.
#[derive(Debug)]
pub struct BlockConfig {
    /// `drive_id`, also the GET_ID answer.
    pub id: String,
    /// Backing file path (for logs and `GET /vm/config`).
    pub path: PathBuf,
    /// Backing file, opened read-write unless read-only.
    pub file: File,
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Refuse writes and advertise VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Flush semantics.
    pub cache: CacheType,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
}

/// A virtio-blk device.
pub struct Block {
    pub(super) config: BlockConfig,
    name: String,
    avail_features: u64,
    pub(super) queue_evt: EventFd,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    errors: GuestErrorLog,
    /// Copy-on-write drives: the layer every read and write goes through
    /// (`config.file` is then the base, open read-only). A `RefCell` because
    /// requests borrow the disk shared while a write needs it mutable; only the
    /// event loop thread, holding the device's lock, ever touches it.
    cow: Option<RefCell<CowDisk>>,
    /// Traffic counters.
    pub counters: BlockCounters,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed, any outcome.
    pub requests: u64,
    /// Bytes read from the backing file into the guest.
    pub read_bytes: u64,
    /// Bytes written from the guest to the backing file.
    pub write_bytes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Requests that failed (IOERR or no status).
    pub errors: u64,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A block device raising `interrupt`.
    pub fn new(config: BlockConfig, interrupt: Arc<Interrupt>) -> std::io::Result<Block> {
        let mut avail_features = (1u64 << F_VERSION_1)
            | (1 << F_RING_EVENT_IDX)
            | (1 << F_RING_INDIRECT_DESC)
            | (1 << F_SEG_MAX);
        if config.read_only {
            avail_features |= 1 << F_RO;
        }
        if config.cache == CacheType::Writeback {
            avail_features |= 1 << F_FLUSH;
        }
        Ok(Block {
            name: format!("virtio-blk {}", config.id),
            config,
            avail_features,
            queue_evt: EventFd::new(EFD_NONBLOCK)?,
            interrupt,
            active: None,
            errors: GuestErrorLog::default(),
            cow: None,
            counters: BlockCounters::default(),
        })
    }

    /// Makes this drive copy-on-write over `cow` (whose base is `config.file`'s
    /// image): from now on the guest's writes land in `cow`'s overlay only.
    pub fn set_copy_on_write(&mut self, cow: CowDisk) {
        self.cow = Some(RefCell::new(cow));
    }

    /// Whether the drive is copy-on-write.
    pub fn is_copy_on_write(&self) -> bool {
        self.cow.is_some()
    }

    /// Drops every change the guest made to a copy-on-write drive, so it reads as
    /// its base image again (for an in-place rollback to a snapshot taken before
    /// any change). `Ok(false)` for an ordinary drive, which has no changes kept
    /// apart to drop. The caller pauses the VM first: the guest must not have a
    /// request in flight, and its page cache must be rolled back with it.
    pub fn discard_changes(&mut self) -> Result<bool, CowError> {
        match self.cow.as_mut() {
            Some(cow) => cow.get_mut().discard_changes().map(|()| true),
            None => Ok(false),
        }
    }

    /// Puts a copy-on-write drive back as `saved` describes it: every change
    /// dropped, then the blocks of its frozen overlay (if the snapshot had any)
    /// taken again. For an in-place rollback to the snapshot `saved` came from;
    /// `Ok(false)` for an ordinary drive. Call it with the VM paused, as
    /// `discard_changes`.
    pub fn roll_back_changes(&mut self, saved: &CowState) -> Result<bool, CowError> {
        match self.cow.as_mut() {
            Some(cow) => {
                cow.get_mut().thaw(saved.frozen_overlay.as_deref())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A copy-on-write drive's saved state, its overlay not frozen.
    pub(super) fn save_copy_on_write(&self) -> Option<CowState> {
        self.cow.as_ref().map(|c| c.borrow().save(None))
    }

    /// Freezes a copy-on-write drive's overlay into `path` (see
    /// [`CowDisk::freeze`]) and returns its saved state.
    pub(super) fn freeze_copy_on_write(&self, path: &Path) -> Result<Option<CowState>, CowError> {
        let Some(cow) = &self.cow else {
            return Ok(None);
        };
        let cow = cow.borrow();
        let frozen = cow.freeze(path)?;
        Ok(Some(cow.save(frozen)))
    }

    /// The eventfd KVM signals on QueueNotify for queue 0.
    pub fn queue_event(&self) -> &EventFd {
        &self.queue_evt
    }

    /// Whether the device asked the driver for a reset.
    pub fn interrupt_needs_reset(&self) -> bool {
        self.interrupt.needs_reset()
    }

    /// The drive id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Points the drive at another file (the guest sees a config change).
    /// A copy-on-write drive becomes an ordinary one on `file` (the API refuses
    /// this for copy-on-write drives, whose overlay only makes sense over its base).
    pub fn replace_backing(&mut self, path: PathBuf, file: File, capacity: u64) {
        self.cow = None;
        self.config.path = path;
        self.config.file = file;
        self.config.capacity = capacity;
        self.interrupt.signal_config_change();
    }

    fn config_space(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.config.capacity.to_le_bytes());
        // seg_max: the ring can hold this many data buffers besides header and status.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&request::SECTOR_SIZE.to_le_bytes());
        c
    }

    /// Serves every pending request; called when the queue's ioeventfd fires.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.interrupt.needs_reset() {
            return;
        }
        let disk = Disk {
            file: &self.config.file,
            capacity: self.config.capacity,
            read_only: self.config.read_only,
            cache: self.config.cache,
            id: self.config.id.as_bytes(),
            cow: self.cow.as_ref(),
        };
        let errors = &self.errors;
        let name = &self.name;
        let mem = &active.mem;
        let counters = &mut self.counters;
        let result = drain_batched(&mut active.queue, mem, BUDGET, |chains, used| {
            serve_batch(mem, &disk, chains, used, errors, name, counters);
        });
        match result {
            Ok(drained) => {
                if drained.completed > 0 {
                    self.interrupt.signal_used_if_needed(&mut active.queue, mem);
                }
                if drained.more {
                    // Come back after the other event sources had their turn.
                    let _ = self.queue_evt.write(1);
                }
            }
            Err(e) => self.interrupt.fail_queue(&self.errors, &self.name, &e),
        }
    }
}

/// A chain on its way through a batch.
enum Pending {
    /// Parsed and checked; its work is still to do.
    Ready {
        buffers: ChainBuffers,
        request: Request,
    },
    /// Already answered: its used length.
    Done(u32),
}

/// Serves every chain of one batch, publishing each used entry as its request
/// finishes. Consecutive reads (or writes) of adjacent sectors share one
/// `preadv`/`pwritev`, the way a disk scheduler merges a guest's sequential I/O.
fn serve_batch(
    mem: &GuestMemory,
    disk: &Disk<'_>,
    chains: Vec<DescriptorChain<&GuestMemory>>,
    used: &mut UsedEntries<'_>,
    errors: &GuestErrorLog,
    name: &str,
    counters: &mut BlockCounters,
) {
    let pending: Vec<Pending> = chains
        .into_iter()
        .map(|chain| parse_chain(mem, disk, chain, errors, name, counters))
        .collect();
    let mut i = 0;
    while i < pending.len() {
        let end = mergeable_run(&pending, i);
        let merged = end - i > 1 && run_merged(mem, disk, &pending[i..end]);
        for p in &pending[i..end] {
            used.push(match p {
                Pending::Done(len) => *len,
                Pending::Ready { buffers, request } => {
                    let result = if merged {
                        Ok(request.completion())
                    } else {
                        request.run(mem, disk, buffers)
                    };
                    complete(mem, buffers, request, result, errors, name, counters)
                }
            });
        }
        i = end;
    }
}

/// Merging saves a system call per request, which matters for small requests only;
/// past this size one transfer per request costs the same and completes each sooner.
const MAX_MERGED_BYTES: usize = 256 * 1024;

/// End (exclusive) of the run of requests starting at `start` that one system call
/// can serve: same direction, each starting where the previous ended, within the
/// kernel's iovec limit and `MAX_MERGED_BYTES`. A run of one when nothing merges.
fn mergeable_run(pending: &[Pending], start: usize) -> usize {
    fn transfer(p: &Pending) -> Option<(u64, &[Segment], bool)> {
        match p {
            Pending::Ready { request, .. } => request.transfer(),
            Pending::Done(_) => None,
        }
    }
    let Some((offset, data, write)) = transfer(&pending[start]) else {
        return start + 1;
    };
    let mut next_offset = offset + total_len(data) as u64;
    let mut bytes = total_len(data);
    let mut segments = data.len();
    let mut end = start + 1;
    while let Some((o, d, w)) = pending.get(end).and_then(transfer) {
        let len = total_len(d);
        if w != write
            || o != next_offset
            || segments + d.len() > MAX_SEGMENTS
            || bytes + len > MAX_MERGED_BYTES
        {
            break;
        }
        next_offset += len as u64;
        bytes += len;
        segments += d.len();
        end += 1;
    }
    end
}

/// Runs a mergeable run in one transfer; `false` if it failed (the caller then runs
/// each request alone, so each gets its own status).
fn run_merged(mem: &GuestMemory, disk: &Disk<'_>, run: &[Pending]) -> bool {
    let mut offset = None;
    let mut write = false;
    let mut segments: Vec<Segment> = Vec::new();
    for p in run {
        if let Pending::Ready { request, .. } = p {
            if let Some((o, d, w)) = request.transfer() {
                offset.get_or_insert(o);
                write = w;
                segments.extend_from_slice(d);
            }
        }
    }
    offset.is_some_and(|o| request::transfer_merged(mem, disk, o, &segments, write).is_ok())
}

/// Parses one chain. A malformed chain is answered at once, still with IOERR in its
/// last writable byte when that byte is inside guest memory.
fn parse_chain(
    mem: &GuestMemory,
    disk: &Disk<'_>,
    chain: DescriptorChain<&GuestMemory>,
    errors: &GuestErrorLog,
    name: &str,
    counters: &mut BlockCounters,
) -> Pending {
    counters.requests += 1;
    let fallback = chain.clone();
    let buffers = match ChainBuffers::from_chain(chain, mem) {
        Ok(b) => b,
        Err(e) => {
            counters.errors += 1;
            errors.report(name, format_args!("bad request chain: {e}"));
            return Pending::Done(write_status_to_last_writable(mem, fallback));
        }
    };
    match Request::parse(mem, disk, &buffers) {
        Ok(request) => Pending::Ready { buffers, request },
        Err((e, status_at)) => {
            Pending::Done(fail(mem, &buffers, status_at, &e, errors, name, counters))
        }
    }
}

/// Writes the status byte of a finished request and returns its used length.
fn complete(
    mem: &GuestMemory,
    buffers: &ChainBuffers,
    request: &Request,
    result: Result<Completion, RequestError>,
    errors: &GuestErrorLog,
    name: &str,
    counters: &mut BlockCounters,
) -> u32 {
    match result {
        Ok(Completion {
            status,
            used_len,
            moved,
        }) => {
            match moved {
                request::Moved::Read(n) => counters.read_bytes += n as u64,
                request::Moved::Written(n) => counters.write_bytes += n as u64,
                request::Moved::Flushed => counters.flushes += 1,
                request::Moved::Nothing => {}
            }
            match write_at(mem, &buffers.writable, request.status_at, &[status]) {
                Ok(()) => used_len,
                Err(_) => 0,
            }
        }
        Err(e) => fail(mem, buffers, request.status_at, &e, errors, name, counters),
    }
}

/// Answers a failed request with IOERR (or nothing, without a status byte).
fn fail(
    mem: &GuestMemory,
    buffers: &ChainBuffers,
    status_at: usize,
    e: &RequestError,
    errors: &GuestErrorLog,
    name: &str,
    counters: &mut BlockCounters,
) -> u32 {
    counters.errors += 1;
    report_request_error(errors, name, e);
    if matches!(e, RequestError::NoStatus) {
        return 0;
    }
    match write_at(mem, &buffers.writable, status_at, &[request::status::IOERR]) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

fn report_request_error(errors: &GuestErrorLog, name: &str, e: &RequestError) {
    if e.is_guest_error() {
        errors.report(name, format_args!("bad request: {e}"));
    } else {
        log::error!("{name}: {e}");
    }
}

fn write_status_to_last_writable(mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
    let last = chain.writable().filter(|d| d.len() > 0).last();
    let Some(desc) = last else { return 0 };
    let seg = Segment {
        addr: vm_memory::GuestAddress(desc.addr().0.saturating_add(u64::from(desc.len()) - 1)),
        len: 1,
    };
    crate::snapshot::device_writes::device_writes().mark(seg.addr.0, 1);
    match write_at(mem, &[seg], 0, &[request::status::IOERR]) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        mut queues: Vec<Queue>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        let queue = queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        self.active = Some(Active { mem, queue });
        // Requests the driver queued before DRIVER_OK (none, if it follows the spec)
        // are picked up on the event loop's next turn.
        let _ = self.queue_evt.write(1);
        Ok(())
    }

    fn guest_errors(&self) -> GuestErrorLog {
        self.errors.clone()
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn saved_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .map(|a| QueueState::from(&a.queue))
            .collect()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // Guest data is in the file already (every write completes synchronously); on
        // Writeback drives also make it durable before spry goes.
        if let Some(cow) = &self.cow {
            if self.config.cache == CacheType::Writeback {
                if let Err(e) = cow.borrow().flush() {
                    log::error!("{}: {e}", self.name);
                }
            }
            return;
        }
        if self.config.cache == CacheType::Writeback && !self.config.read_only {
            if let Err(e) = self.config.file.sync_data() {
                log::error!(
                    "{}: cannot sync {}: {e}",
                    self.name,
                    self.config.path.display()
                );
            }
        }
    }
}
