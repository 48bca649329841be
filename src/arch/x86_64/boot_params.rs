//! The zero page (`struct boot_params`) and its e820 memory map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, GuestAddress};

use super::layout::{
    high_ram_size, low_ram_end, EBDA_END, EBDA_START, HIMEM_START, MMIO_GAP_END, ZERO_PAGE_ADDR,
};
use crate::vstate::memory::GuestMemory;

/// Errors while writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page holds.
    #[error("e820 map needs {0} entries, the zero page holds 128")]
    TooManyE820Entries(usize),
    /// linux-loader could not write the zero page.
    #[error("cannot write the zero page at {ZERO_PAGE_ADDR:#x}: {0}")]
    Write(linux_loader::configurator::Error),
}

/// e820 usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `setup_header.boot_flag` of every bzImage (and of the zero page spry writes).
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.header`: "HdrS".
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id, as other VMMs use.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Linux's default physical alignment (CONFIG_PHYSICAL_ALIGN).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// One e820 entry: start, size, type.
pub type E820Entry = (u64, u64, u32);

/// The memory map of a guest with `mem_size` bytes of RAM laid out by
/// [`crate::vstate::memory::ram_ranges`]: conventional memory, the MP table's EBDA,
/// RAM from 1 MiB to the MMIO gap, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(mem_size);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, EBDA_END - EBDA_START, E820_RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if high_ram_size(mem_size) > 0 {
        map.push((MMIO_GAP_END, high_ram_size(mem_size), E820_RAM));
    }
    map
}

/// `boot_params` as a plain byte image (it is `repr(C, packed)` with only integers).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is a `repr(C, packed)` struct of integers and arrays of
// integers: every bit pattern is valid and it has no padding.
unsafe impl ByteValued for ZeroPage {}

/// Everything that goes into the zero page.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPageContents {
    /// Setup header from a bzImage, or `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Guest-physical address of the command line.
    pub cmdline_addr: u64,
    /// Command-line length excluding the NUL.
    pub cmdline_len: usize,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
}

/// Builds `boot_params` as Linux's 64-bit boot protocol reads it.
pub fn build_boot_params(c: &ZeroPageContents) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = c.setup_header {
        params.hdr = hdr;
    }
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if c.setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    // Both fit: the command line sits below 1 MiB and is at most a few KiB.
    params.hdr.cmd_line_ptr = u32::try_from(c.cmdline_addr).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(c.cmdline_len).unwrap_or(0);
    if let Some((addr, size)) = c.initrd {
        // The initrd is placed below 4 GiB by `loader::initrd_address`.
        params.hdr.ramdisk_image = u32::try_from(addr).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }
    let map = e820_map(c.mem_size);
    let table_len = params.e820_table.len();
    if map.len() > table_len {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    // Bounded by the check above (at most 128 entries).
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    Ok(params)
}

/// Writes `params` to [`ZERO_PAGE_ADDR`].
pub fn write_boot_params(mem: &GuestMemory, params: boot_params) -> Result<(), BootParamsError> {
    let page = BootParams::new(&ZeroPage(params), GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&page, mem).map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn contents(mem_size: u64) -> ZeroPageContents {
        ZeroPageContents {
            setup_header: None,
            mem_size,
            cmdline_addr: 0x20000,
            cmdline_len: 12,
            initrd: None,
        }
    }

    #[test]
    fn test_e820_for_128_mib() {
        assert_eq!(
            e820_map(128 * MIB),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0x10_0000, 128 * MIB - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn test_e820_for_6_gib_skips_the_mmio_gap() {
        assert_eq!(
            e820_map(6 * GIB),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0x10_0000, 3 * GIB - 0x10_0000, E820_RAM),
                (4 * GIB, 3 * GIB, E820_RAM),
            ]
        );
    }

    #[test]
    fn test_boot_params_header_for_elf_kernel() {
        let params = build_boot_params(&contents(128 * MIB)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!({ params.e820_entries }, 3);
    }

    #[test]
    fn test_boot_params_keep_bzimage_header_fields() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let params = build_boot_params(&ZeroPageContents {
            setup_header: Some(hdr),
            ..contents(128 * MIB)
        })
        .unwrap();
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn test_boot_params_carry_initrd() {
        let params = build_boot_params(&ZeroPageContents {
            initrd: Some((0x7f0_0000, 4096)),
            ..contents(128 * MIB)
        })
        .unwrap();
        assert_eq!({ params.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 4096);
    }
}
