//! Guest memory to a file and back.
//!
//! The memory file is guest RAM laid end to end: region after region, in guest
//! address order, each at the file offset where the previous one ends (so a 4 GiB
//! guest's file holds RAM below the MMIO gap, then RAM from 4 GiB up, with no gap).
//! The state file records each region's guest address, size and file offset.
//!
//! - **Full**: every page; pages that read as zero are left as holes, so the file is
//!   sparse and only as large on disk as the memory the guest used.
//! - **Diff**: only the pages dirtied since the previous snapshot (KVM's dirty log,
//!   which needs `track_dirty_pages`), written at their offsets, holes elsewhere.
//!   [`apply_diff`] copies a Diff's data onto the Full it follows, which then holds
//!   the memory at the Diff's time. A dirtied page is written even when it is all
//!   zero, so that layering overwrites what the base held there.
//!
//! A restore maps the file `MAP_PRIVATE` at the saved layout: nothing is read up
//! front, so a restore costs the same for any memory size; the guest faults pages in
//! from the page cache as it touches them, and restored copies of one snapshot
//! share those pages until one of them writes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::vstate::memory::{self, GuestMemory};

/// Host (and KVM dirty-log) page size on x86_64.
pub const PAGE_SIZE: u64 = PAGE as u64;
const PAGE: usize = 4096;
/// Bytes copied out of guest memory per write: large enough that system calls are
/// few, small enough to stay in cache.
const CHUNK: usize = 1 << 20;

/// Errors while writing or restoring guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Creating, writing, syncing or renaming the memory file failed.
    #[error("cannot write memory file {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// Opening or reading a memory file failed.
    #[error("cannot read memory file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Guest memory could not be read (a layout bug).
    #[error("cannot read guest memory at {0:#x}")]
    GuestRead(u64),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("cannot get the dirty log of memory slot {slot} (was track_dirty_pages on?)")]
    DirtyLog {
        /// Slot number.
        slot: u32,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The dirty bitmaps do not match the memory's regions.
    #[error("dirty bitmap for {bitmaps} regions, guest memory has {regions}")]
    DirtyShape {
        /// Bitmaps given.
        bitmaps: usize,
        /// Regions of memory.
        regions: usize,
    },
    /// The saved layout is not the one spry gives a guest of that size.
    #[error(
        "snapshot memory layout {saved} is not spry's layout for {size_mib} MiB of RAM ({expected})"
    )]
    Layout {
        /// The saved regions.
        saved: String,
        /// Total RAM in the saved layout.
        size_mib: u64,
        /// What spry would build.
        expected: String,
    },
    /// The memory file's size differs from the saved memory's.
    #[error("memory file {path} is {found} bytes, the snapshot's memory is {expected} bytes")]
    FileSize {
        /// The memory file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The size the layout needs.
        expected: u64,
    },
    /// Mapping the memory file failed.
    #[error("cannot map {size_mib} MiB of memory file {path} at offset {offset:#x}")]
    Map {
        /// The memory file.
        path: PathBuf,
        /// File offset.
        offset: u64,
        /// Size.
        size_mib: u64,
        /// What the host said.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The mapped regions do not form guest memory (a layout bug).
    #[error("restored memory regions do not form guest memory")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
    /// Two memory files of different sizes cannot be layered.
    #[error("diff {diff} is {diff_len} bytes, base {base} is {base_len}: not the same memory")]
    DiffSize {
        /// The Diff file.
        diff: PathBuf,
        /// Its size.
        diff_len: u64,
        /// The base.
        base: PathBuf,
        /// Its size.
        base_len: u64,
    },
}

/// One region of guest RAM in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionState {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where its bytes start in the memory file.
    pub file_offset: u64,
}

/// Where guest RAM is, and where the memory file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryState {
    /// Regions in guest address order, end to end in the file.
    pub regions: Vec<RegionState>,
}

impl MemoryState {
    /// The layout of `mem`.
    pub fn of(mem: &GuestMemory) -> MemoryState {
        let mut offset = 0;
        let regions = mem
            .iter()
            .map(|r| {
                let region = RegionState {
                    guest_addr: r.start_addr().0,
                    size: r.len(),
                    file_offset: offset,
                };
                offset += r.len();
                region
            })
            .collect();
        MemoryState { regions }
    }

    /// Bytes of guest RAM, and of the memory file.
    pub fn size(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.size))
    }

    /// Refuses any layout but the one spry builds for this much RAM (which also
    /// keeps every offset and size page-aligned and the MMIO gap free).
    pub fn check(&self) -> Result<(), MemoryFileError> {
        let size = self.size();
        let expected = MemoryState {
            regions: memory::ram_ranges(size)
                .into_iter()
                .scan(0u64, |offset, (addr, len)| {
                    let r = RegionState {
                        guest_addr: addr.0,
                        size: len,
                        file_offset: *offset,
                    };
                    *offset += len;
                    Some(r)
                })
                .collect(),
        };
        let sane = size > 0 && size % PAGE_SIZE == 0 && usize::try_from(size).is_ok();
        if !sane || *self != expected {
            return Err(MemoryFileError::Layout {
                saved: describe(&self.regions),
                size_mib: size >> 20,
                expected: describe(&expected.regions),
            });
        }
        Ok(())
    }
}

fn describe(regions: &[RegionState]) -> String {
    let parts: Vec<String> = regions
        .iter()
        .map(|r| format!("{:#x}+{:#x}@{:#x}", r.guest_addr, r.size, r.file_offset))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Pages KVM saw written, one bitmap per memory slot (= region, in order); bit `i`
/// of word `w` is page `64 * w + i` of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyPages {
    /// One bitmap per region.
    pub bitmaps: Vec<Vec<u64>>,
}

impl DirtyPages {
    /// Fetches and clears KVM's dirty log of every slot of `mem`, which `vm` has as
    /// slots 0, 1, ... in region order (see `Vm::register_memory`).
    pub fn take(vm: &VmFd, mem: &GuestMemory) -> Result<DirtyPages, MemoryFileError> {
        let bitmaps = (0u32..)
            .zip(mem.iter())
            .map(|(slot, region)| {
                let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
                vm.get_dirty_log(slot, len)
                    .map_err(|source| MemoryFileError::DirtyLog { slot, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DirtyPages { bitmaps })
    }

    /// Adds the pages of `len` bytes at guest address `addr` (parts outside guest
    /// RAM are ignored).
    pub fn add_range(&mut self, mem: &GuestMemory, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = addr.saturating_add(len - 1) / PAGE_SIZE;
        for page in addr / PAGE_SIZE..=last {
            self.add_page(mem, page);
        }
    }

    /// Adds guest page number `page` (guest address / [`PAGE_SIZE`]).
    pub fn add_page(&mut self, mem: &GuestMemory, page: u64) {
        let addr = page.saturating_mul(PAGE_SIZE);
        let found = mem
            .iter()
            .zip(&mut self.bitmaps)
            .find(|(r, _)| addr >= r.start_addr().0 && addr - r.start_addr().0 < r.len());
        let Some((region, bitmap)) = found else {
            return;
        };
        let index = (addr - region.start_addr().0) / PAGE_SIZE;
        let Ok(word) = usize::try_from(index / 64) else {
            return;
        };
        if let Some(w) = bitmap.get_mut(word) {
            *w |= 1 << (index % 64);
        }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.bitmaps
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// What a memory file write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Pages written as data.
    pub pages_written: u64,
    /// Size of the file (its apparent size: all of guest RAM).
    pub file_size: u64,
}

/// Writes every page of `mem` to a new memory file at `path` (zero pages as holes).
/// Pages of anonymous memory the host never populated are zero without being read:
/// a guest that touched little of its RAM is saved in the time its pages take.
pub fn write_full(mem: &GuestMemory, path: &Path) -> Result<WriteStats, MemoryFileError> {
    write_full_with(mem, path, true)
}

/// As [`write_full`], but reads every page, present or not: for anonymous memory
/// whose missing pages are not zero but still with a userfaultfd handler (a `Uffd`
/// load), where reading a page has the handler serve it.
pub fn write_full_reading_every_page(
    mem: &GuestMemory,
    path: &Path,
) -> Result<WriteStats, MemoryFileError> {
    write_full_with(mem, path, false)
}

fn write_full_with(
    mem: &GuestMemory,
    path: &Path,
    missing_is_zero: bool,
) -> Result<WriteStats, MemoryFileError> {
    write_atomically(mem, path, |mem, file, stats| {
        for (region, state) in mem.iter().zip(MemoryState::of(mem).regions) {
            let pages = region.len() / PAGE_SIZE;
            let populated = if missing_is_zero && region.file_offset().is_none() {
                mem.get_host_address(region.start_addr())
                    .ok()
                    .and_then(|host| populated_pages(host as u64, pages))
            } else {
                None
            };
            let runs = match populated {
                Some(bitmap) => dirty_runs(&bitmap, pages),
                None => std::iter::once(0..pages).collect(),
            };
            for run in runs {
                write_pages(mem, (file, path), &state, run, true, stats)?;
            }
        }
        Ok(())
    })
}

/// Which of `pages` pages of anonymous memory from host address `host` hold data:
/// present in RAM or in swap (`/proc/self/pagemap` bits 63 and 62); the others were
/// never written and read as zero. `None` if the kernel does not tell.
fn populated_pages(host: u64, pages: u64) -> Option<Vec<u64>> {
    use std::io::Read;
    const PRESENT_OR_SWAPPED: u64 = (1 << 63) | (1 << 62);
    let mut pagemap = File::open("/proc/self/pagemap").ok()?;
    pagemap.seek(SeekFrom::Start(host / PAGE_SIZE * 8)).ok()?;
    let mut bitmap = vec![0u64; usize::try_from(pages.div_ceil(64)).ok()?];
    // 8192 entries (64 KiB, 128 bitmap words) per read.
    let mut entries = vec![0u8; 64 * 1024];
    for (c, words) in bitmap.chunks_mut(128).enumerate() {
        let left = pages - c as u64 * 8192;
        let n = usize::try_from(left.min(8192)).ok()?;
        pagemap.read_exact(&mut entries[..n * 8]).ok()?;
        for (i, entry) in entries[..n * 8].chunks_exact(8).enumerate() {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry);
            if u64::from_ne_bytes(raw) & PRESENT_OR_SWAPPED != 0 {
                words[i / 64] |= 1 << (i % 64);
            }
        }
    }
    Some(bitmap)
}

/// Writes the pages of `mem` that `dirty` names to a new memory file at `path`,
/// holes elsewhere.
pub fn write_diff(
    mem: &GuestMemory,
    dirty: &DirtyPages,
    path: &Path,
) -> Result<WriteStats, MemoryFileError> {
    let regions = MemoryState::of(mem).regions;
    if dirty.bitmaps.len() != regions.len() {
        return Err(MemoryFileError::DirtyShape {
            bitmaps: dirty.bitmaps.len(),
            regions: regions.len(),
        });
    }
    write_atomically(mem, path, |mem, file, stats| {
        for (state, bitmap) in regions.iter().zip(&dirty.bitmaps) {
            let pages = state.size / PAGE_SIZE;
            for run in dirty_runs(bitmap, pages) {
                write_pages(mem, (file, path), state, run, false, stats)?;
            }
        }
        Ok(())
    })
}

/// Runs of consecutive set bits among the first `pages` bits of `bitmap`.
fn dirty_runs(bitmap: &[u64], pages: u64) -> Vec<std::ops::Range<u64>> {
    let is_set = |p: u64| {
        usize::try_from(p / 64)
            .ok()
            .and_then(|w| bitmap.get(w))
            .is_some_and(|word| word & (1 << (p % 64)) != 0)
    };
    let mut runs = Vec::new();
    let mut start = None;
    for page in 0..pages {
        match (is_set(page), start) {
            (true, None) => start = Some(page),
            (false, Some(s)) => {
                runs.push(s..page);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push(s..pages);
    }
    runs
}

/// Creates `path`'s temporary sibling, lets `fill` write it, sizes it to all of
/// guest RAM, syncs it and renames it over `path`: a failure leaves no memory file
/// behind that could pass for a whole one.
fn write_atomically<F>(
    mem: &GuestMemory,
    path: &Path,
    fill: F,
) -> Result<WriteStats, MemoryFileError>
where
    F: FnOnce(&GuestMemory, &File, &mut WriteStats) -> Result<(), MemoryFileError>,
{
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = PathBuf::from(tmp_name);
    let werr = |e| MemoryFileError::Write(path.to_owned(), e);
    let mut stats = WriteStats {
        file_size: MemoryState::of(mem).size(),
        ..WriteStats::default()
    };
    let result = File::create(&tmp).map_err(werr).and_then(|file| {
        fill(mem, &file, &mut stats)?;
        file.set_len(stats.file_size).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    });
    if result.is_err() {
        // Best effort: the temporary file may not exist.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| stats)
}

/// Writes pages `pages` of the region `state` describes; with `skip_zero`, pages
/// that read as zero are left out (holes).
fn write_pages(
    mem: &GuestMemory,
    (file, path): (&File, &Path),
    state: &RegionState,
    pages: std::ops::Range<u64>,
    skip_zero: bool,
    stats: &mut WriteStats,
) -> Result<(), MemoryFileError> {
    let mut buf = vec![0u8; CHUNK];
    let chunk_pages = CHUNK as u64 / PAGE_SIZE;
    let mut page = pages.start;
    while page < pages.end {
        let n = chunk_pages.min(pages.end - page);
        let len = usize::try_from(n * PAGE_SIZE).unwrap_or(CHUNK);
        let addr = state.guest_addr + page * PAGE_SIZE;
        mem.read_slice(&mut buf[..len], GuestAddress(addr))
            .map_err(|_| MemoryFileError::GuestRead(addr))?;
        let offset = state.file_offset + page * PAGE_SIZE;
        write_chunk(file, &buf[..len], offset, skip_zero, stats)
            .map_err(|e| MemoryFileError::Write(path.to_owned(), e))?;
        page += n;
    }
    Ok(())
}

/// Writes `bytes` at `offset`, as runs of pages, leaving zero pages out if asked.
fn write_chunk(
    file: &File,
    bytes: &[u8],
    offset: u64,
    skip_zero: bool,
    stats: &mut WriteStats,
) -> std::io::Result<()> {
    let page = PAGE;
    let keep = |p: &[u8]| !skip_zero || p.iter().any(|&b| b != 0);
    let mut i = 0;
    while i < bytes.len() {
        if !keep(&bytes[i..i + page]) {
            i += page;
            continue;
        }
        let start = i;
        while i < bytes.len() && keep(&bytes[i..i + page]) {
            i += page;
        }
        file.write_all_at(&bytes[start..i], offset + start as u64)?;
        stats.pages_written += ((i - start) / page) as u64;
    }
    Ok(())
}

/// Guest memory in the saved layout, each region a private copy-on-write mapping
/// of the memory file at `path`: nothing is read now, and the guest's writes never
/// reach the file.
pub fn restore(path: &Path, state: &MemoryState) -> Result<GuestMemory, MemoryFileError> {
    state.check()?;
    let rerr = |e| MemoryFileError::Read(path.to_owned(), e);
    let mut file = File::open(path).map_err(rerr)?;
    let found = file.seek(SeekFrom::End(0)).map_err(rerr)?;
    if found != state.size() {
        return Err(MemoryFileError::FileSize {
            path: path.to_owned(),
            found,
            expected: state.size(),
        });
    }
    let file = Arc::new(file);
    let regions = state
        .regions
        .iter()
        .map(|r| {
            let map_err = |source| MemoryFileError::Map {
                path: path.to_owned(),
                offset: r.file_offset,
                size_mib: r.size >> 20,
                source,
            };
            // Both fit: `check` bounds the total by usize.
            let size = usize::try_from(r.size).unwrap_or(usize::MAX);
            let offset = FileOffset::from_arc(file.clone(), r.file_offset);
            let mapping = memory::map_file_private_aligned(offset, size).map_err(map_err)?;
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or(
                MemoryFileError::Layout {
                    saved: describe(&state.regions),
                    size_mib: state.size() >> 20,
                    expected: String::from("regions inside the guest address space"),
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryFileError::Regions)
}

/// Copies every data extent of the Diff memory file `diff` onto the memory file
/// `base` (in place), so that `base` holds the memory at the Diff's time.
pub fn apply_diff(base: &Path, diff: &Path) -> Result<u64, MemoryFileError> {
    let rerr = |e| MemoryFileError::Read(diff.to_owned(), e);
    let werr = |e| MemoryFileError::Write(base.to_owned(), e);
    let d = File::open(diff).map_err(rerr)?;
    let b = OpenOptions::new().write(true).open(base).map_err(werr)?;
    let diff_len = d.metadata().map_err(rerr)?.len();
    let base_len = b.metadata().map_err(werr)?.len();
    if diff_len != base_len {
        return Err(MemoryFileError::DiffSize {
            diff: diff.to_owned(),
            diff_len,
            base: base.to_owned(),
            base_len,
        });
    }
    let mut copied = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while let Some((start, end)) = next_data(&d, pos, diff_len).map_err(rerr)? {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
            d.read_exact_at(&mut buf[..n], at).map_err(rerr)?;
            b.write_all_at(&buf[..n], at).map_err(werr)?;
            at += n as u64;
            copied += n as u64;
        }
        pos = end;
    }
    b.sync_all().map_err(werr)?;
    Ok(copied)
}

/// The next data extent of `file` at or after `pos`: `(start, end)`, or `None` past
/// the last one (SEEK_DATA / SEEK_HOLE).
fn next_data(file: &File, pos: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    if pos >= len {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let off = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
    // SAFETY: lseek only moves this process's offset of an fd it owns.
    let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `pos`.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let as_u64 = |v: libc::off_t| u64::try_from(v).map_err(std::io::Error::other);
    Ok(Some((as_u64(start)?, as_u64(end)?.min(len))))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn guest(size: u64) -> GuestMemory {
        memory::create_guest_memory(size).unwrap()
    }

    fn read_u64(mem: &GuestMemory, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn dirty(pages: &[u64], region_pages: u64) -> DirtyPages {
        let mut bitmap = vec![0u64; usize::try_from(region_pages.div_ceil(64)).unwrap()];
        for &p in pages {
            bitmap[usize::try_from(p / 64).unwrap()] |= 1 << (p % 64);
        }
        DirtyPages {
            bitmaps: vec![bitmap],
        }
    }

    #[test]
    fn test_full_file_restores_the_same_memory() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = guest(8 * MIB);
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0xfeedu64, GuestAddress(8 * MIB - 8)).unwrap();

        let stats = write_full(&mem, &path).unwrap();
        let back = restore(&path, &MemoryState::of(&mem)).unwrap();

        assert_eq!(read_u64(&back, 0x1000), 0x1122_3344_5566_7788);
        assert_eq!(read_u64(&back, 8 * MIB - 8), 0xfeed);
        assert_eq!(read_u64(&back, 0x10_0000), 0);
        assert_eq!(stats.pages_written, 2);
        assert_eq!(stats.file_size, 8 * MIB);
    }

    #[test]
    fn test_unpopulated_anonymous_pages_are_not_read() {
        let mem = guest(64 * MIB);
        mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
        mem.write_obj(1u8, GuestAddress(40 * MIB)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;

        let bitmap = populated_pages(host, 64 * MIB / PAGE_SIZE).unwrap();

        let populated: Vec<u64> = dirty_runs(&bitmap, 64 * MIB / PAGE_SIZE)
            .into_iter()
            .flatten()
            .collect();
        // The kernel may back a write with a whole transparent huge page.
        assert!(populated.contains(&3) && populated.contains(&(40 * MIB / PAGE_SIZE)));
        assert!(populated.len() <= 2 * 512, "{} pages", populated.len());
    }

    #[test]
    fn test_full_file_is_sparse_where_memory_is_zero() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = guest(64 * MIB);
        mem.write_obj(1u8, GuestAddress(0)).unwrap();

        write_full(&mem, &path).unwrap();

        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        // st_blocks counts 512-byte units actually allocated.
        assert!(meta.blocks() * 512 < MIB, "{} blocks", meta.blocks());
    }

    #[test]
    fn test_restored_memory_is_a_private_copy() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = guest(4 * MIB);
        mem.write_obj(7u64, GuestAddress(0x3000)).unwrap();
        write_full(&mem, &path).unwrap();

        let back = restore(&path, &MemoryState::of(&mem)).unwrap();
        back.write_obj(9u64, GuestAddress(0x3000)).unwrap();
        let again = restore(&path, &MemoryState::of(&mem)).unwrap();

        assert_eq!(read_u64(&again, 0x3000), 7);
    }

    #[test]
    fn test_diff_layered_on_full_gives_the_later_memory() {
        let dir = TempDir::new().unwrap();
        let (full, diff) = (dir.as_path().join("full"), dir.as_path().join("diff"));
        let mem = guest(4 * MIB);
        mem.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(2u64, GuestAddress(0x5000)).unwrap();
        write_full(&mem, &full).unwrap();
        // Page 1 changes, page 5 is zeroed: both dirty; page 9 is new.
        mem.write_obj(11u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0u64, GuestAddress(0x5000)).unwrap();
        mem.write_obj(99u64, GuestAddress(0x9000)).unwrap();

        let stats = write_diff(&mem, &dirty(&[1, 5, 9], 1024), &diff).unwrap();
        let copied = apply_diff(&full, &diff).unwrap();
        let back = restore(&full, &MemoryState::of(&mem)).unwrap();

        assert_eq!(stats.pages_written, 3);
        assert_eq!(copied, 3 * PAGE_SIZE);
        assert_eq!(read_u64(&back, 0x1000), 11);
        assert_eq!(read_u64(&back, 0x5000), 0);
        assert_eq!(read_u64(&back, 0x9000), 99);
    }

    #[test]
    fn test_diff_with_bitmaps_of_another_shape_is_refused() {
        let dir = TempDir::new().unwrap();
        let mem = guest(4 * MIB);
        let two = DirtyPages {
            bitmaps: vec![vec![1], vec![1]],
        };

        let err = write_diff(&mem, &two, &dir.as_path().join("diff")).unwrap_err();

        assert!(matches!(
            err,
            MemoryFileError::DirtyShape {
                bitmaps: 2,
                regions: 1
            }
        ));
    }

    #[test]
    fn test_memory_file_of_the_wrong_size_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = guest(4 * MIB);
        write_full(&mem, &path).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2 * MIB)
            .unwrap();

        let err = restore(&path, &MemoryState::of(&mem)).unwrap_err();

        assert_eq!(
            err.to_string(),
            format!(
                "memory file {} is 2097152 bytes, the snapshot's memory is 4194304 bytes",
                path.display()
            )
        );
    }

    #[test]
    fn test_layout_other_than_spry_s_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = guest(4 * MIB);
        write_full(&mem, &path).unwrap();
        let mut state = MemoryState::of(&mem);
        state.regions[0].guest_addr = 0xd000_0000;

        let err = restore(&path, &state).unwrap_err();

        assert!(matches!(err, MemoryFileError::Layout { .. }));
        assert!(err.to_string().contains("0xd0000000+0x400000@0x0"));
    }

    #[test]
    fn test_layout_with_unaligned_size_is_refused() {
        let state = MemoryState {
            regions: vec![RegionState {
                guest_addr: 0,
                size: 4097,
                file_offset: 0,
            }],
        };

        assert!(matches!(state.check(), Err(MemoryFileError::Layout { .. })));
    }

    #[test]
    fn test_layout_above_the_gap_is_laid_end_to_end() {
        const GIB: u64 = 1 << 30;
        let mem = guest(5 * GIB);

        let state = MemoryState::of(&mem);

        assert_eq!(
            state.regions,
            vec![
                RegionState {
                    guest_addr: 0,
                    size: 3 * GIB,
                    file_offset: 0
                },
                RegionState {
                    guest_addr: 4 * GIB,
                    size: 2 * GIB,
                    file_offset: 3 * GIB
                },
            ]
        );
        assert!(state.check().is_ok());
    }

    #[test]
    fn test_added_ranges_set_their_pages_in_the_right_region() {
        const GIB: u64 = 1 << 30;
        let mem = guest(5 * GIB);
        let mut pages = DirtyPages {
            // One bit per 4 KiB page, 64 to a word: 3 GiB below the gap, 2 above.
            bitmaps: vec![vec![0; 12288], vec![0; 8192]],
        };

        pages.add_range(&mem, 0x1ff8, 16);
        pages.add_range(&mem, 4 * GIB + 0x3000, 1);
        pages.add_range(&mem, 3 * GIB, 4096);

        assert_eq!(pages.bitmaps[0][0], 0b110);
        assert_eq!(pages.bitmaps[1][0], 0b1000);
        assert_eq!(pages.count(), 3);
    }

    #[test]
    fn test_dirty_runs_join_neighbouring_pages() {
        let bitmap = dirty(&[0, 1, 2, 63, 64, 100], 128).bitmaps.remove(0);

        assert_eq!(dirty_runs(&bitmap, 128), vec![0..3, 63..65, 100..101]);
    }

    #[test]
    fn test_apply_diff_of_another_size_is_refused() {
        let dir = TempDir::new().unwrap();
        let (base, diff) = (dir.as_path().join("base"), dir.as_path().join("diff"));
        File::create(&base).unwrap().set_len(4 * MIB).unwrap();
        File::create(&diff).unwrap().set_len(2 * MIB).unwrap();

        assert!(matches!(
            apply_diff(&base, &diff),
            Err(MemoryFileError::DiffSize { .. })
        ));
    }
}
