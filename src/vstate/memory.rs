//! Guest RAM: layout around the 32-bit MMIO gap and the anonymous mapping behind it.

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

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
}

/// The RAM ranges of a guest with `mem_size` bytes: everything below the MMIO gap
/// first, the remainder from 4 GiB up.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    let mut ranges = vec![(GuestAddress(0), low_ram_end(mem_size))];
    if high_ram_size(mem_size) > 0 {
        ranges.push((GuestAddress(MMIO_GAP_END), high_ram_size(mem_size)));
    }
    ranges
}

/// Maps guest RAM. The mapping is anonymous, private and unreserved: nothing is
/// touched here, so a page costs the host only once the guest uses it. Each region
/// starts on a 2 MiB host boundary where the host allows it (see
/// [`map_huge_aligned`]).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    let regions = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            let size = usize::try_from(len).map_err(|_| MemoryError::TooLarge(mem_size))?;
            let mapping = map_huge_aligned(size).map_err(|source| MemoryError::Map {
                size_mib: len >> 20,
                source,
            })?;
            GuestRegionMmap::new(mapping, start).ok_or(MemoryError::Layout {
                start: start.0,
                len,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Overlap)
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
    let hole = AlignedHole::reserve(size);
    let mapping = MmapRegion::build(
        Some(offset),
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )?;
    if hole.is_some() && mapping.as_ptr() as usize % HUGE_PAGE != 0 {
        log::debug!("restored guest RAM of {size:#x} bytes mapped off a 2 MiB boundary");
    }
    Ok(mapping)
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
