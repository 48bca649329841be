//! Guest RAM: layout around the 32-bit MMIO gap and the anonymous mapping behind it.

use vm_memory::{GuestAddress, GuestMemoryMmap};

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
        source: vm_memory::mmap::FromRangesError,
    },
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
/// touched here, so a page costs the host only once the guest uses it.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (start, len))
                .map_err(|_| MemoryError::TooLarge(mem_size))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: mem_size >> 20,
        source,
    })
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
    fn test_guest_of_exactly_gap_size_has_no_high_range() {
        assert_eq!(ram_ranges(3 * GIB), vec![(GuestAddress(0), 3 * GIB)]);
    }
}
