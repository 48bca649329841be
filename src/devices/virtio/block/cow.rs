//! Copy-on-write drives: a read-only base image shared by many VMs, and per VM an
//! overlay holding the blocks that VM wrote, in memory or in a sparse file.
//!
//! The disk is cut into [`BLOCK_SIZE`] blocks (the last one may be shorter: disks
//! are whole 512-byte sectors). A bitmap says which blocks the overlay holds. A
//! read takes each block from the overlay if written, else from the base; a write
//! that covers a block whole goes straight to the overlay, one that covers part of
//! a block not yet in the overlay first copies that block from the base (guests
//! write 512-byte sectors, the overlay tracks 4 KiB). The base is opened
//! `O_RDONLY` and never written.
//!
//! A file overlay describes itself, so it outlives the process (and a snapshot
//! only names it): bytes `0..size` hold written blocks at their disk offsets
//! (never-written ranges stay holes); at `meta = size` rounded up to a block, a
//! header (magic, block size, disk size); at `meta + BLOCK_SIZE` the bitmap as
//! little-endian `u64` words. A block's data is written before its bit, so a crash
//! loses at most the write in progress.
//!
//! A snapshot freezes the overlay (either kind) into a file of that same format
//! beside the state file, holding the blocks written so far; a load (or an
//! in-place rollback) drops the overlay's changes and takes the frozen blocks, so
//! the disk comes back exactly as the snapshot's guest memory knows it, whatever
//! was written after.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{CopyOnWrite, OverlayType};

/// Granularity of the overlay: a page, the unit guests' file systems write.
pub const BLOCK_SIZE: u64 = 4096;
/// First bytes of a file overlay's header.
const MAGIC: &[u8; 8] = b"SPRYCOW1";
/// Bytes of the header that carry meaning: magic, block size, disk size.
const HEADER_LEN: usize = 24;

/// Errors of a copy-on-write disk.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// Reading the base image failed.
    #[error("cannot read base image {path} at {offset:#x}+{len:#x}")]
    BaseRead {
        /// The base image.
        path: PathBuf,
        /// Disk offset.
        offset: u64,
        /// Bytes asked.
        len: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Opening or creating the overlay file failed.
    #[error("cannot open overlay file {path}")]
    OverlayOpen {
        /// The overlay.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the overlay file failed.
    #[error("overlay file {path}: cannot {what} at {offset:#x}")]
    OverlayIo {
        /// The overlay.
        path: PathBuf,
        /// "read", "write", "sync", "truncate".
        what: &'static str,
        /// File offset.
        offset: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An existing overlay file is not one of ours, or belongs to a disk of
    /// another size.
    #[error("overlay file {path} {why}; give an empty or new file")]
    OverlayFormat {
        /// The overlay.
        path: PathBuf,
        /// What does not match.
        why: String,
    },
    /// Another open overlay (in this or another process) holds the file's lock:
    /// two VMs writing one overlay would corrupt each other's disk.
    #[error("overlay file {0} is in use by another drive (it is locked)")]
    OverlayInUse(PathBuf),
    /// The overlay file is the base image itself: writes would land in the base.
    #[error("overlay file {0} is the base image itself")]
    OverlayIsBase(PathBuf),
    /// A range that reaches past the end of the disk.
    #[error("{offset:#x}+{len:#x} reaches past the disk's {size} bytes")]
    OutOfRange {
        /// Disk offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Disk size.
        size: u64,
    },
    /// A memory overlay lost a block its bitmap says it holds (a bug of ours).
    #[error("overlay block {0} is marked written but missing from memory")]
    MissingBlock(u64),
}

/// What a snapshot keeps of a copy-on-write disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CowState {
    /// The overlay kind and file.
    pub copy_on_write: CopyOnWrite,
    /// The blocks written when the snapshot was taken, frozen in a file of the
    /// overlay format beside the state file; absent when none were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_overlay: Option<PathBuf>,
}

enum Overlay {
    /// Written blocks by index, each `block_len` bytes.
    Memory(HashMap<u64, Box<[u8]>>),
    /// The file and where its bitmap starts.
    File {
        file: File,
        path: PathBuf,
        bitmap_at: u64,
    },
}

/// A disk of `size` bytes: a read-only base plus an overlay of written blocks.
pub struct CowDisk {
    base: File,
    base_path: PathBuf,
    size: u64,
    /// Bit `b` set: block `b` is in the overlay.
    written: Vec<u64>,
    overlay: Overlay,
}

impl std::fmt::Debug for CowDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowDisk")
            .field("base", &self.base_path)
            .field("size", &self.size)
            .field("written_blocks", &self.written_blocks())
            .finish_non_exhaustive()
    }
}

fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

fn words_of(size: u64) -> usize {
    usize::try_from(blocks_of(size).div_ceil(64)).unwrap_or(usize::MAX)
}

/// Opens the base image read-only, the only way a copy-on-write disk opens it.
pub fn open_base(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

impl CowDisk {
    /// A disk over `base` (`size` bytes, opened read-only) keeping changes in memory.
    pub fn in_memory(base: File, base_path: PathBuf, size: u64) -> CowDisk {
        CowDisk {
            base,
            base_path,
            size,
            written: vec![0; words_of(size)],
            overlay: Overlay::Memory(HashMap::new()),
        }
    }

    /// A disk over `base` keeping changes in the overlay file at `path`: created
    /// if missing, initialised if empty, reused with its changes if it is an
    /// overlay of a disk of `size` bytes, refused otherwise.
    pub fn with_file(
        base: File,
        base_path: PathBuf,
        size: u64,
        path: &Path,
    ) -> Result<CowDisk, CowError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| CowError::OverlayOpen {
                path: path.to_owned(),
                source,
            })?;
        if same_file(&base, &file) {
            return Err(CowError::OverlayIsBase(path.to_owned()));
        }
        lock_exclusive(&file).map_err(|source| match source.kind() {
            std::io::ErrorKind::WouldBlock => CowError::OverlayInUse(path.to_owned()),
            _ => CowError::OverlayOpen {
                path: path.to_owned(),
                source,
            },
        })?;
        let meta = blocks_of(size) * BLOCK_SIZE;
        let mut disk = CowDisk {
            base,
            base_path,
            size,
            written: vec![0; words_of(size)],
            overlay: Overlay::File {
                file,
                path: path.to_owned(),
                bitmap_at: meta + BLOCK_SIZE,
            },
        };
        let len = disk.overlay_file_len()?;
        if len == 0 {
            disk.init_overlay_file()?;
        } else {
            disk.load_overlay_file(len)?;
        }
        Ok(disk)
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The base image's path.
    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// How many blocks the overlay holds.
    pub fn written_blocks(&self) -> u64 {
        self.written.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn is_written(&self, block: u64) -> bool {
        let Ok(word) = usize::try_from(block / 64) else {
            return false;
        };
        self.written
            .get(word)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn block_len(&self, block: u64) -> usize {
        let start = block * BLOCK_SIZE;
        // At most BLOCK_SIZE.
        usize::try_from((self.size - start).min(BLOCK_SIZE)).unwrap_or(0)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), CowError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(CowError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Reads `buf.len()` bytes of the disk at `offset`: each block from the overlay
    /// if written, else from the base. Runs of blocks from one source are read in
    /// one call.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), CowError> {
        self.check_range(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let written = self.is_written(at / BLOCK_SIZE);
            // Extend the run while the next blocks come from the same source.
            let mut end = (at / BLOCK_SIZE + 1) * BLOCK_SIZE;
            let stop = offset + buf.len() as u64;
            while end < stop && self.is_written(end / BLOCK_SIZE) == written {
                end += BLOCK_SIZE;
            }
            let n = usize::try_from(end.min(stop) - at).unwrap_or(0);
            let part = &mut buf[done..done + n];
            if written {
                self.read_overlay(part, at)?;
            } else {
                self.read_base(part, at)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` to the disk at `offset`, into the overlay only.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), CowError> {
        self.check_range(offset, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let block = at / BLOCK_SIZE;
            let in_block = usize::try_from(at - block * BLOCK_SIZE).unwrap_or(0);
            let block_len = self.block_len(block);
            let n = (block_len - in_block).min(data.len() - done);
            let part = &data[done..done + n];
            if self.is_written(block) {
                self.write_overlay(part, at)?;
            } else if n == block_len {
                self.write_overlay(part, at)?;
                self.mark_written(block)?;
            } else {
                // Part of a block the overlay lacks: the rest comes from the base.
                let start = block * BLOCK_SIZE;
                let mut whole = vec![0u8; block_len];
                self.read_base(&mut whole, start)?;
                whole[in_block..in_block + n].copy_from_slice(part);
                self.write_overlay(&whole, start)?;
                self.mark_written(block)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Makes the overlay durable (a memory overlay has nothing to sync).
    pub fn flush(&self) -> Result<(), CowError> {
        match &self.overlay {
            Overlay::Memory(_) => Ok(()),
            Overlay::File { file, path, .. } => {
                file.sync_data().map_err(|source| CowError::OverlayIo {
                    path: path.clone(),
                    what: "sync",
                    offset: 0,
                    source,
                })
            }
        }
    }

    /// Drops every change: the disk reads as the base again. A memory overlay
    /// frees its blocks; a file overlay is truncated (its blocks go back to the
    /// file system) and re-initialised. For an in-place rollback to a snapshot
    /// whose disk had no changes yet.
    pub fn discard_changes(&mut self) -> Result<(), CowError> {
        self.written.iter_mut().for_each(|w| *w = 0);
        match &mut self.overlay {
            Overlay::Memory(blocks) => {
                *blocks = HashMap::new();
                Ok(())
            }
            Overlay::File { file, path, .. } => {
                file.set_len(0).map_err(|source| CowError::OverlayIo {
                    path: path.clone(),
                    what: "truncate",
                    offset: 0,
                    source,
                })?;
                self.init_overlay_file()
            }
        }
    }

    /// What a snapshot keeps: the overlay kind and the frozen overlay file
    /// ([`CowDisk::freeze`]'s answer).
    pub fn save(&self, frozen_overlay: Option<PathBuf>) -> CowState {
        let copy_on_write = match &self.overlay {
            Overlay::Memory(_) => CopyOnWrite {
                overlay_type: OverlayType::Memory,
                overlay_path: None,
            },
            Overlay::File { path, .. } => CopyOnWrite {
                overlay_type: OverlayType::File,
                overlay_path: Some(path.clone()),
            },
        };
        CowState {
            copy_on_write,
            frozen_overlay,
        }
    }

    /// Writes the blocks written so far, with header and bitmap, to a new file at
    /// `path` (through `path.partial`, synced and renamed, so a failure leaves no
    /// file that passes for a frozen overlay). `None`, and no file, when no block
    /// was written (an older file at `path` is removed).
    pub fn freeze(&self, path: &Path) -> Result<Option<PathBuf>, CowError> {
        if self.written_blocks() == 0 {
            // Best effort: a stale file is ignored anyway, as the state names none.
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let io = |what: &'static str, offset: u64| {
            let partial = partial.clone();
            move |source| CowError::OverlayIo {
                path: partial,
                what,
                offset,
                source,
            }
        };
        let file = File::create(&partial).map_err(|source| CowError::OverlayOpen {
            path: partial.clone(),
            source,
        })?;
        let written = (|| {
            let bitmap_at = blocks_of(self.size) * BLOCK_SIZE + BLOCK_SIZE;
            let total = bitmap_at + self.written.len() as u64 * 8;
            file.set_len(total).map_err(io("truncate", total))?;
            let mut block = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap_or(4096)];
            for index in (0..blocks_of(self.size)).filter(|b| self.is_written(*b)) {
                let data = &mut block[..self.block_len(index)];
                let at = index * BLOCK_SIZE;
                self.read_overlay(data, at)?;
                file.write_all_at(data, at).map_err(io("write", at))?;
            }
            let header_at = bitmap_at - BLOCK_SIZE;
            file.write_all_at(&self.header(), header_at)
                .map_err(io("write", header_at))?;
            let bitmap: Vec<u8> = self.written.iter().flat_map(|w| w.to_le_bytes()).collect();
            file.write_all_at(&bitmap, bitmap_at)
                .map_err(io("write", bitmap_at))?;
            file.sync_all().map_err(io("sync", 0))?;
            std::fs::rename(&partial, path).map_err(io("rename", 0))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written.map(|()| Some(path.to_owned()))
    }

    /// Drops every change, then takes the blocks of the frozen overlay at
    /// `frozen` (or none): the disk becomes the one [`CowDisk::freeze`] saw.
    pub fn thaw(&mut self, frozen: Option<&Path>) -> Result<(), CowError> {
        // Read the frozen file whole first: a refused one leaves the disk as it was.
        let blocks = match frozen {
            Some(path) => self.read_frozen(path)?,
            None => Vec::new(),
        };
        self.discard_changes()?;
        for (index, data) in blocks {
            self.write_at(&data, index * BLOCK_SIZE)?;
        }
        Ok(())
    }

    /// The written blocks of the frozen overlay at `path`, checked against this
    /// disk's size.
    fn read_frozen(&self, path: &Path) -> Result<Vec<(u64, Vec<u8>)>, CowError> {
        let file = File::open(path).map_err(|source| CowError::OverlayOpen {
            path: path.to_owned(),
            source,
        })?;
        let io = |what: &'static str, offset: u64| {
            move |source| CowError::OverlayIo {
                path: path.to_owned(),
                what,
                offset,
                source,
            }
        };
        let bitmap_at = blocks_of(self.size) * BLOCK_SIZE + BLOCK_SIZE;
        let mut header = [0u8; HEADER_LEN];
        let header_at = bitmap_at - BLOCK_SIZE;
        file.read_exact_at(&mut header, header_at)
            .map_err(io("read", header_at))?;
        if header != self.header() {
            return Err(CowError::OverlayFormat {
                path: path.to_owned(),
                why: format!(
                    "has no spry overlay header for a {}-byte disk at {header_at:#x}",
                    self.size
                ),
            });
        }
        let mut bitmap = vec![0u8; self.written.len() * 8];
        file.read_exact_at(&mut bitmap, bitmap_at)
            .map_err(io("read", bitmap_at))?;
        let mut blocks = Vec::new();
        for index in 0..blocks_of(self.size) {
            let byte = usize::try_from(index / 8).unwrap_or(usize::MAX);
            if bitmap
                .get(byte)
                .is_some_and(|b| b & (1 << (index % 8)) != 0)
            {
                let mut data = vec![0u8; self.block_len(index)];
                let at = index * BLOCK_SIZE;
                file.read_exact_at(&mut data, at).map_err(io("read", at))?;
                blocks.push((index, data));
            }
        }
        Ok(blocks)
    }

    fn read_base(&self, buf: &mut [u8], offset: u64) -> Result<(), CowError> {
        self.base
            .read_exact_at(buf, offset)
            .map_err(|source| CowError::BaseRead {
                path: self.base_path.clone(),
                offset,
                len: buf.len(),
                source,
            })
    }

    /// Reads overlay bytes at disk `offset`; every block touched is written.
    fn read_overlay(&self, buf: &mut [u8], offset: u64) -> Result<(), CowError> {
        match &self.overlay {
            Overlay::Memory(blocks) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let block = at / BLOCK_SIZE;
                    let in_block = usize::try_from(at - block * BLOCK_SIZE).unwrap_or(0);
                    let data = blocks.get(&block).ok_or(CowError::MissingBlock(block))?;
                    let n = (data.len() - in_block).min(buf.len() - done);
                    buf[done..done + n].copy_from_slice(&data[in_block..in_block + n]);
                    done += n;
                }
                Ok(())
            }
            Overlay::File { file, path, .. } => {
                file.read_exact_at(buf, offset)
                    .map_err(|source| CowError::OverlayIo {
                        path: path.clone(),
                        what: "read",
                        offset,
                        source,
                    })
            }
        }
    }

    /// Writes `data` at disk `offset` into the overlay; `data` stays within one
    /// block, and is the whole block unless the block is already written.
    fn write_overlay(&mut self, data: &[u8], offset: u64) -> Result<(), CowError> {
        let block = offset / BLOCK_SIZE;
        let block_len = self.block_len(block);
        match &mut self.overlay {
            Overlay::Memory(blocks) => {
                let in_block = usize::try_from(offset - block * BLOCK_SIZE).unwrap_or(0);
                let stored = blocks
                    .entry(block)
                    .or_insert_with(|| vec![0u8; block_len].into_boxed_slice());
                stored[in_block..in_block + data.len()].copy_from_slice(data);
                Ok(())
            }
            Overlay::File { file, path, .. } => {
                file.write_all_at(data, offset)
                    .map_err(|source| CowError::OverlayIo {
                        path: path.clone(),
                        what: "write",
                        offset,
                        source,
                    })
            }
        }
    }

    /// Sets block `block`'s bit, and a file overlay's copy of its bitmap word.
    fn mark_written(&mut self, block: u64) -> Result<(), CowError> {
        let word = usize::try_from(block / 64).unwrap_or(usize::MAX);
        let Some(w) = self.written.get_mut(word) else {
            return Err(CowError::OutOfRange {
                offset: block * BLOCK_SIZE,
                len: 0,
                size: self.size,
            });
        };
        *w |= 1 << (block % 64);
        let value = *w;
        if let Overlay::File {
            file,
            path,
            bitmap_at,
        } = &self.overlay
        {
            let at = *bitmap_at + word as u64 * 8;
            file.write_all_at(&value.to_le_bytes(), at)
                .map_err(|source| CowError::OverlayIo {
                    path: path.clone(),
                    what: "write",
                    offset: at,
                    source,
                })?;
        }
        Ok(())
    }

    fn overlay_file_len(&self) -> Result<u64, CowError> {
        match &self.overlay {
            Overlay::Memory(_) => Ok(0),
            Overlay::File { file, path, .. } => {
                file.metadata()
                    .map(|m| m.len())
                    .map_err(|source| CowError::OverlayOpen {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Writes the header and sizes the (sparse) file to hold the empty bitmap.
    fn init_overlay_file(&self) -> Result<(), CowError> {
        let Overlay::File {
            file,
            path,
            bitmap_at,
        } = &self.overlay
        else {
            return Ok(());
        };
        let io = |what, offset| {
            move |source| CowError::OverlayIo {
                path: path.clone(),
                what,
                offset,
                source,
            }
        };
        let header_at = *bitmap_at - BLOCK_SIZE;
        let total = *bitmap_at + self.written.len() as u64 * 8;
        file.set_len(total).map_err(io("truncate", total))?;
        file.write_all_at(&self.header(), header_at)
            .map_err(io("write", header_at))
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        h[16..24].copy_from_slice(&self.size.to_le_bytes());
        h
    }

    /// Checks an existing overlay file's header and reads its bitmap.
    fn load_overlay_file(&mut self, len: u64) -> Result<(), CowError> {
        let Overlay::File {
            file,
            path,
            bitmap_at,
        } = &self.overlay
        else {
            return Ok(());
        };
        let format = |why: String| CowError::OverlayFormat {
            path: path.clone(),
            why,
        };
        let bitmap_len = self.written.len() as u64 * 8;
        if len < *bitmap_at + bitmap_len {
            return Err(format(format!(
                "is {len} bytes, too short for an overlay of a {}-byte disk",
                self.size
            )));
        }
        let mut found = [0u8; HEADER_LEN];
        let header_at = *bitmap_at - BLOCK_SIZE;
        file.read_exact_at(&mut found, header_at)
            .map_err(|source| CowError::OverlayIo {
                path: path.clone(),
                what: "read",
                offset: header_at,
                source,
            })?;
        if found != self.header() {
            return Err(format(format!(
                "has no spry overlay header for a {}-byte disk at {header_at:#x}",
                self.size
            )));
        }
        let mut bytes = vec![0u8; self.written.len() * 8];
        file.read_exact_at(&mut bytes, *bitmap_at)
            .map_err(|source| CowError::OverlayIo {
                path: path.clone(),
                what: "read",
                offset: *bitmap_at,
                source,
            })?;
        for (w, chunk) in self.written.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *w = u64::from_le_bytes(word);
        }
        Ok(())
    }
}

/// Takes `file`'s exclusive advisory lock without waiting; it lasts as long as
/// the open file (every clone of its descriptor included).
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) takes an open descriptor (`file` keeps it open for the
    // call) and flags; it touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether two open files are one (same device and inode, whatever the paths).
fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
