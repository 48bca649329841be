//! One virtio-blk request: parsed from a descriptor chain's buffers and executed
//! straight between the backing file and guest memory (`preadv`/`pwritev`).

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsRawFd;

use super::cow::{CowDisk, CowError};
use crate::config::CacheType;
use crate::devices::virtio::iovec::{
    host_iovecs, read_prefix, sub_segments, total_len, write_at, ChainBuffers, ChainError, Segment,
};
use crate::vstate::memory::GuestMemory;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u32 = 512;
/// Bytes of a request header: type, reserved, sector.
pub const HEADER_LEN: usize = 16;
/// Length of a GET_ID answer.
pub const ID_LEN: usize = 20;

/// Request types (virtio 1.2, 5.2.6).
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// Device identifier.
    pub const GET_ID: u32 = 8;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Failure.
    pub const IOERR: u8 = 1;
    /// Request type not supported.
    pub const UNSUPP: u8 = 2;
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// No device-writable byte for the status.
    #[error("no device-writable status byte")]
    NoStatus,
    /// Data length is not whole sectors.
    #[error("data length {0} is not a multiple of 512")]
    PartialSector(usize),
    /// The request reaches past the end of the disk.
    #[error("sectors {sector}..+{sectors} reach past the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sector count.
        sectors: u64,
        /// Disk size.
        capacity: u64,
    },
    /// A write to a read-only drive.
    #[error("write to a read-only drive")]
    ReadOnly,
    /// The host file I/O failed.
    #[error("host I/O failed: {0}")]
    Io(#[source] std::io::Error),
    /// Fewer bytes moved than asked.
    #[error("short host I/O: {done} of {wanted} bytes")]
    Short {
        /// Bytes moved.
        done: usize,
        /// Bytes asked.
        wanted: usize,
    },
    /// A device-readable data buffer where the device must write.
    #[error("read request with device-readable data buffers")]
    ReadableData,
    /// The copy-on-write layer failed (base image or overlay I/O).
    #[error("copy-on-write disk")]
    Cow(#[source] CowError),
}

impl RequestError {
    /// Whether this is the guest's fault (malformed request) rather than the host's.
    pub fn is_guest_error(&self) -> bool {
        !matches!(
            self,
            RequestError::Io(_) | RequestError::Short { .. } | RequestError::Cow(_)
        )
    }
}

/// The disk a request runs against.
#[derive(Debug)]
pub struct Disk<'a> {
    /// Backing file.
    pub file: &'a File,
    /// Size in sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Flush semantics.
    pub cache: CacheType,
    /// GET_ID answer (the drive id).
    pub id: &'a [u8],
    /// Copy-on-write drives: reads and writes go through this layer instead of
    /// `file` (which is then the base image, open read-only).
    pub cow: Option<&'a RefCell<CowDisk>>,
}

/// Payload a request moved, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Bytes read from the disk.
    Read(usize),
    /// Bytes written to the disk.
    Written(usize),
    /// A flush.
    Flushed,
    /// No payload.
    Nothing,
}

/// A finished request: the status byte and how many bytes the device wrote into
/// the chain's writable buffers (data plus status), the used length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Status byte.
    pub status: u8,
    /// Used length.
    pub used_len: u32,
    /// Payload moved.
    pub moved: Moved,
}

fn check_range(disk: &Disk<'_>, sector: u64, len: usize) -> Result<u64, RequestError> {
    let sector_size = u64::from(SECTOR_SIZE);
    if len as u64 % sector_size != 0 {
        return Err(RequestError::PartialSector(len));
    }
    let sectors = len as u64 / sector_size;
    match sector.checked_add(sectors) {
        Some(end) if end <= disk.capacity => Ok(sector * sector_size),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: disk.capacity,
        }),
    }
}

/// Runs `preadv`/`pwritev` until every byte moved, advancing past partial transfers.
fn transfer_all(
    file: &File,
    mut iovecs: Vec<libc::iovec>,
    mut offset: u64,
    write: bool,
) -> Result<(), RequestError> {
    let wanted: usize = iovecs.iter().map(|v| v.iov_len).sum();
    let mut done = 0usize;
    let mut first = 0usize;
    while done < wanted {
        let iov = &iovecs[first..];
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        let off =
            libc::off_t::try_from(offset).map_err(|_| RequestError::Short { done, wanted })?;
        // `host_iovecs` checked every iovec against guest memory.
        // SAFETY: each iovec lies in guest memory kept mapped by the caller's
        // `GuestMemory`; the kernel touches at most `iov_len` bytes of each.
        let n = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, off)
            } else {
                libc::preadv(file.as_raw_fd(), iov.as_ptr(), count, off)
            }
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RequestError::Io(err));
        }
        let mut n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(RequestError::Short { done, wanted });
        }
        done += n;
        offset += n as u64;
        while n > 0 && first < iovecs.len() {
            let v = &mut iovecs[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same iovec buffer by fewer than its length.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the disk at `offset` into `data`.
    Read {
        /// Byte offset in the backing file.
        offset: u64,
        /// Guest buffers, in order.
        data: Vec<Segment>,
    },
    /// Write `data` to the disk at `offset`.
    Write {
        /// Byte offset in the backing file.
        offset: u64,
        /// Guest buffers, in order.
        data: Vec<Segment>,
    },
    /// Make earlier writes durable.
    Flush,
    /// Return the drive id.
    GetId,
    /// A type spry does not implement.
    Unsupported,
}

/// A checked request: what to do, and where its status byte goes (an offset into
/// the chain's writable buffers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// Offset of the status byte in the writable buffers.
    pub status_at: usize,
}

impl Request {
    /// Parses the request in `buffers` and checks it against `disk` (layout, range,
    /// read-only). On error, the status byte's offset comes with it when known.
    pub fn parse(
        mem: &GuestMemory,
        disk: &Disk<'_>,
        buffers: &ChainBuffers,
    ) -> Result<Request, (RequestError, usize)> {
        let writable_len = total_len(&buffers.writable);
        let status_at = writable_len
            .checked_sub(1)
            .ok_or((RequestError::NoStatus, 0))?;
        let fail = |e: RequestError| (e, status_at);

        let mut header = [0u8; HEADER_LEN];
        read_prefix(mem, &buffers.readable, &mut header).map_err(|e| fail(e.into()))?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let readable_data = total_len(&buffers.readable) - HEADER_LEN;
        let op = match kind {
            kind::IN => {
                if readable_data != 0 {
                    return Err(fail(RequestError::ReadableData));
                }
                let offset = check_range(disk, sector, status_at).map_err(fail)?;
                let data =
                    sub_segments(&buffers.writable, 0, status_at).map_err(|e| fail(e.into()))?;
                Op::Read { offset, data }
            }
            kind::OUT => {
                if disk.read_only {
                    return Err(fail(RequestError::ReadOnly));
                }
                let offset = check_range(disk, sector, readable_data).map_err(fail)?;
                let data = sub_segments(&buffers.readable, HEADER_LEN, readable_data)
                    .map_err(|e| fail(e.into()))?;
                Op::Write { offset, data }
            }
            kind::FLUSH => Op::Flush,
            kind::GET_ID => Op::GetId,
            _ => Op::Unsupported,
        };
        Ok(Request { op, status_at })
    }

    /// The file range and buffers of a read or write: (offset, buffers, is a write).
    pub fn transfer(&self) -> Option<(u64, &[Segment], bool)> {
        match &self.op {
            Op::Read { offset, data } => Some((*offset, data, false)),
            Op::Write { offset, data } => Some((*offset, data, true)),
            _ => None,
        }
    }

    /// The completion of this request once its work succeeded.
    pub fn completion(&self) -> Completion {
        let ok = |data: usize, moved: Moved| Completion {
            status: status::OK,
            used_len: u32::try_from(data + 1).unwrap_or(u32::MAX),
            moved,
        };
        match &self.op {
            Op::Read { data, .. } => ok(total_len(data), Moved::Read(total_len(data))),
            Op::Write { data, .. } => ok(0, Moved::Written(total_len(data))),
            Op::Flush => ok(0, Moved::Flushed),
            Op::GetId => ok(self.status_at.min(ID_LEN), Moved::Nothing),
            Op::Unsupported => Completion {
                status: status::UNSUPP,
                used_len: 1,
                moved: Moved::Nothing,
            },
        }
    }

    /// Does the request's work on its own.
    pub fn run(
        &self,
        mem: &GuestMemory,
        disk: &Disk<'_>,
        buffers: &ChainBuffers,
    ) -> Result<Completion, RequestError> {
        match &self.op {
            Op::Read { .. } | Op::Write { .. } => {
                if let Some((offset, data, write)) = self.transfer() {
                    transfer_merged(mem, disk, offset, data, write)?;
                }
            }
            Op::Flush => {
                if disk.cache == CacheType::Writeback {
                    match disk.cow {
                        Some(cow) => cow.borrow().flush().map_err(RequestError::Cow)?,
                        None => disk.file.sync_data().map_err(RequestError::Io)?,
                    }
                }
            }
            Op::GetId => {
                let mut id = [0u8; ID_LEN];
                let n = disk.id.len().min(ID_LEN);
                id[..n].copy_from_slice(&disk.id[..n]);
                let room = self.status_at.min(ID_LEN);
                write_at(mem, &buffers.writable, 0, &id[..room])?;
            }
            Op::Unsupported => {}
        }
        Ok(self.completion())
    }
}

/// Moves the payload of several requests that cover one contiguous file range in
/// one direction with a single `preadv`/`pwritev`.
pub fn transfer_merged(
    mem: &GuestMemory,
    disk: &Disk<'_>,
    offset: u64,
    segments: &[Segment],
    write: bool,
) -> Result<(), RequestError> {
    if let Some(cow) = disk.cow {
        return transfer_cow(mem, cow, offset, segments, write);
    }
    transfer_all(disk.file, host_iovecs(mem, segments)?, offset, write)
}

/// Largest bounce buffer of a copy-on-write transfer. A request may be as long as
/// the disk (its buffers may even repeat one guest page), so the transfer moves in
/// pieces: a guest never makes spry allocate more than this.
const COW_CHUNK: usize = 256 * 1024;

/// A copy-on-write transfer goes through a bounce buffer: the layer splits it
/// per 4 KiB block between base and overlay, which no single `preadv` can do.
/// `check_range` bounded `offset` and the length by the disk's size before this.
fn transfer_cow(
    mem: &GuestMemory,
    cow: &RefCell<CowDisk>,
    offset: u64,
    segments: &[Segment],
    write: bool,
) -> Result<(), RequestError> {
    let total = total_len(segments);
    let mut buf = vec![0u8; total.min(COW_CHUNK)];
    let mut done = 0usize;
    while done < total {
        let n = (total - done).min(COW_CHUNK);
        let piece = sub_segments(segments, done, n)?;
        let at = offset + done as u64;
        if write {
            read_prefix(mem, &piece, &mut buf[..n])?;
            cow.borrow_mut()
                .write_at(&buf[..n], at)
                .map_err(RequestError::Cow)?;
        } else {
            cow.borrow()
                .read_at(&mut buf[..n], at)
                .map_err(RequestError::Cow)?;
            write_at(mem, &piece, 0, &buf[..n])?;
        }
        done += n;
    }
    Ok(())
}
