//! Guest RAM: layout around the 32-bit MMIO gap and the mapping behind it: anonymous,
//! or a shared unnamed file on a tmpfs that a snapshot can link (a live fork).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::x86_64::layout::{high_ram_size, low_ram_end, MMIO_GAP_END};

/// Guest memory as the VMM sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the anonymous mapping.
    #[error("cannot map {size_mib} MiB of guest memory")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// What the host said.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A region overflowed the guest physical address space.
    #[error("guest RAM at {start:#x} with {len:#x} bytes overflows the guest address space")]
    Layout {
        /// Guest physical start of the region.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// The regions overlap (a layout bug).
    #[error("guest RAM regions overlap")]
    Overlap(#[source] vm_memory::GuestRegionCollectionError),
    /// The size does not fit in this host's address space.
    #[error("guest memory size {0} bytes does not fit in the host address space")]
    TooLarge(u64),
    /// The memory file could not be made in `memory_file_dir`.
    #[error("machine-config memory_file_dir {}: cannot make guest RAM's file there", .dir.display())]
    File {
        /// The directory.
        dir: PathBuf,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// `memory_file_dir` is not on a tmpfs.
    #[error(
        "machine-config memory_file_dir {}: not a tmpfs (file system magic {magic:#x}); guest RAM \
         there would be written back to disk",
        .dir.display()
    )]
    NotTmpfs {
        /// The directory.
        dir: PathBuf,
        /// Its file system's magic number.
        magic: i64,
    },
}

/// `statfs`'s magic number of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The RAM ranges of a guest with `mem_size` bytes: everything below the MMIO gap
/// first, the remainder from 4 GiB up.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let mut ranges = vec![(GuestAddress(0), low_ram_end(mem_size))];
    if high_ram_size(mem_size) > 0 {
        ranges.push((GuestAddress(MMIO_GAP_END), high_ram_size(mem_size)));
    }
    ranges
}

/// Maps guest RAM in an unnamed file (`O_TMPFILE`) in `dir`, which must be on a
/// tmpfs, shared: the file holds the guest's memory, regions end to end as in a
/// snapshot's memory file, so a Full snapshot on the same file system can link it
/// instead of writing memory (see `Vmm::create_snapshot`). Nothing is touched here;
/// the file is sparse until the guest writes.
pub fn create_guest_memory_in_file(mem_size: u64, dir: &Path) -> Result<GuestMemory, MemoryError> {
    let file_err = |source| MemoryError::File {
        dir: dir.to_owned(),
        source,
    };
    // Checked on the directory first: some file systems refuse O_TMPFILE outright.
    let magic = File::open(dir)
        .and_then(|d| fs_magic(&d))
        .map_err(file_err)?;
    if magic != TMPFS_MAGIC {
        return Err(MemoryError::NotTmpfs {
            dir: dir.to_owned(),
            magic,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(file_err)?;
    file.set_len(mem_size).map_err(file_err)?;
    let file = Arc::new(file);
    map_regions(mem_size, |offset, size| {
        let at = FileOffset::from_arc(file.clone(), offset);
        map_file_aligned(at, size, libc::MAP_SHARED)
    })
}

/// Guest RAM of `mem_size` bytes laid out by [`ram_ranges`], each region mapped by
/// `map(offset, size)`, where `offset` is where it starts in a memory file laid out
/// end to end.
fn map_regions(
    mem_size: u64,
    mut map: impl FnMut(u64, usize) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError>,
) -> Result<GuestMemory, MemoryError> {
    let mut offset = 0u64;
    let regions = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            let size = usize::try_from(len).map_err(|_| MemoryError::TooLarge(mem_size))?;
            let mapping = map(offset, size).map_err(|source| MemoryError::Map {
                size_mib: len >> 20,
                source,
            })?;
            offset += len;
            GuestRegionMmap::new(mapping, start).ok_or(MemoryError::Layout {
                start: start.0,
                len,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Overlap)
}

/// The `statfs` magic number of the file system holding `file`.
fn fs_magic(file: &File) -> std::io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call and `st` is writable.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type)
}

/// Maps guest RAM. The mapping is anonymous, private and unreserved: nothing is
/// touched here, so a page costs the host only once the guest uses it. Each region
/// starts on a 2 MiB host boundary where the host allows it (see
/// [`map_huge_aligned`]).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    map_regions(mem_size, |_, size| map_huge_aligned(size))
}

/// The size of a huge page, and of a nested (EPT/NPT) large page.
pub const HUGE_PAGE: usize = 2 << 20;

/// An anonymous private mapping of `size` bytes, owned (unmapped on drop) by
/// vm-memory, placed on a 2 MiB boundary when the host's allocator allows.
///
/// KVM maps guest memory with 2 MiB pages in the nested (EPT/NPT) tables only where
/// a 2 MiB-aligned guest range sits on a 2 MiB-aligned host huge page; guest RAM
/// off that boundary costs one nested page fault per 4 KiB page the guest touches
/// (about 6,000 extra VM exits in a Linux boot, measured with `tools/bench exits`).
/// vm-memory maps at an address of the kernel's choosing, so this reserves an
/// aligned hole of exactly `size` bytes with guard mappings around it before the
/// mapping is made: the kernel's top-down allocator then puts it in the hole. If
/// another thread takes the hole first the mapping lands elsewhere, unaligned but
/// otherwise the same, so alignment is never a condition of correctness.
pub fn map_huge_aligned(size: usize) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let hole = AlignedHole::reserve(size);
    let mapping = MmapRegion::new(size)?;
    if hole.is_some() && mapping.as_ptr() as usize % HUGE_PAGE != 0 {
        log::debug!("guest RAM of {size:#x} bytes mapped off a 2 MiB boundary");
    }
    Ok(mapping)
}

/// A private (copy-on-write) mapping of `size` bytes of the file at `offset`,
/// placed on a 2 MiB boundary when the host allows, as [`map_huge_aligned`]. Reads
/// fault pages in from the page cache; writes make private copies, never reaching
/// the file.
pub fn map_file_private_aligned(
    offset: vm_memory::FileOffset,
    size: usize,
) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    map_file_aligned(offset, size, libc::MAP_PRIVATE)
}

/// `size` bytes of the file at `offset`, mapped `MAP_PRIVATE` or `MAP_SHARED`
/// (`sharing`), on a 2 MiB boundary when the host allows.
fn map_file_aligned(
    offset: vm_memory::FileOffset,
    size: usize,
    sharing: i32,
) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let hole = AlignedHole::reserve(size);
    let mapping = MmapRegion::build(
        Some(offset),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        sharing | libc::MAP_NORESERVE,
    )?;
    if hole.is_some() && mapping.as_ptr() as usize % HUGE_PAGE != 0 {
        log::debug!("file-backed guest RAM of {size:#x} bytes mapped off a 2 MiB boundary");
    }
    Ok(mapping)
}

/// The file behind guest RAM, if it is file-backed.
pub fn backing_file(mem: &GuestMemory) -> Option<Arc<File>> {
    mem.iter()
        .next()
        .and_then(|r| r.file_offset())
        .map(|at| at.arc().clone())
}

/// Gives the unnamed (`O_TMPFILE`) file a name: `to`, which must not exist and be
/// on the same file system. Named through `/proc/self/fd`, as `linkat(2)` allows
/// without privilege; fails where `/proc` is not mounted (a jail).
pub fn link_file(file: &File, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns every region of `mem`, a shared mapping of its memory file, into a private
/// copy-on-write mapping of the same file at the same address: from here on the
/// guest's writes stay in this process and the file keeps what it holds now. KVM's
/// memory slots keep their host addresses; the kernel drops KVM's mappings of the
/// old pages (MMU notifiers) and the guest faults in the new ones. Call with every
/// vCPU paused and no device serving. Returns the memory file.
pub fn make_private(mem: &GuestMemory) -> std::io::Result<Arc<File>> {
    use std::os::fd::AsRawFd;
    let mut file = None;
    for region in mem.iter() {
        let Some(at) = region.file_offset() else {
            return Err(std::io::Error::other("guest RAM is not file-backed"));
        };
        let len = usize::try_from(region.len()).map_err(std::io::Error::other)?;
        let offset = libc::off_t::try_from(at.start()).map_err(std::io::Error::other)?;
        let host = region.as_ptr();
        // MAP_FIXED replaces exactly the region's own mapping (same address and
        // length, owned by `mem`, which unmaps that range on drop).
        // SAFETY: the new mapping of the same file shows the same bytes; nothing else
        // is touched.
        let mapped = unsafe {
            libc::mmap(
                host.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                at.file().as_raw_fd(),
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        file = Some(at.arc().clone());
    }
    file.ok_or_else(|| std::io::Error::other("guest RAM has no regions"))
}

/// Guard mappings on both sides of a free, 2 MiB-aligned hole of a given size; the
/// guards go when this is dropped.
struct AlignedHole {
    guards: [(usize, usize); 2],
}

impl AlignedHole {
    fn reserve(size: usize) -> Option<AlignedHole> {
        let span = size.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh inaccessible anonymous mapping at an address the kernel
        // picks; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let hole = AlignedHole {
            guards: [
                (base, start - base),
                (start + size, base + span - (start + size)),
            ],
        };
        // SAFETY: [start, start + size) lies inside the reservation made above, which
        // nothing else references.
        let freed = unsafe { libc::munmap(start as *mut libc::c_void, size) };
        (freed == 0).then_some(hole)
    }
}

impl Drop for AlignedHole {
    fn drop(&mut self) {
        for (addr, len) in self.guards {
            if len > 0 {
                // SAFETY: each guard is a part of the reservation this value made and
                // owns; nothing else was ever mapped there.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn test_small_guest_has_one_range_from_zero() {
        assert_eq!(ram_ranges(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
    }

    #[test]
    fn test_guest_above_gap_gets_ram_above_4g() {
        assert_eq!(
            ram_ranges(6 * GIB),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 3 * GIB)]
        );
    }

    #[test]
    fn test_guest_ram_regions_start_on_2_mib_host_boundaries() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        // Other test threads map memory concurrently and may take a hole first, so
        // alignment is asked of most attempts, not of every one.
        let aligned = (0..8)
            .filter(|_| {
                let mem = create_guest_memory(5 * GIB).unwrap();
                let all_aligned = mem
                    .iter()
                    .all(|r| r.as_ptr() as usize % HUGE_PAGE == 0 && r.len() >= MIB);
                all_aligned
            })
            .count();
        assert!(aligned >= 6, "{aligned} of 8 aligned");
    }

    #[test]
    fn test_guest_memory_is_readable_and_writable_everywhere() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(5 * GIB).unwrap();
        for addr in [0, 3 * GIB - 8, 4 * GIB, 6 * GIB - 8] {
            mem.write_obj(addr ^ 0x5a5a, GuestAddress(addr)).unwrap();
            assert_eq!(
                mem.read_obj::<u64>(GuestAddress(addr)).unwrap(),
                addr ^ 0x5a5a
            );
        }
        assert!(mem.read_obj::<u64>(GuestAddress(3 * GIB)).is_err());
    }

    #[test]
    fn test_guest_of_exactly_gap_size_has_no_high_range() {
        assert_eq!(ram_ranges(3 * GIB), vec![(GuestAddress(0), 3 * GIB)]);
    }
}
