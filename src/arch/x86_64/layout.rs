//! Guest-physical memory map of an x86_64 spry guest.
//!
//! Everything the VMM writes before the first instruction lives below 1 MiB, where
//! Linux's boot protocol expects it and where the kernel (loaded at 1 MiB or 16 MiB)
//! cannot overwrite it.

/// GDT: null, null, code (0x10), data (0x18), TSS (0x20).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x530;
/// `struct boot_params`, the "zero page"; its address goes to the guest in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer, just below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_ADDR: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) mapping 0..4 GiB.
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Command-line capacity (including the NUL) when the kernel image states none:
/// Linux's `COMMAND_LINE_SIZE` on x86.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory; 0xa0000..1 MiB is the legacy VGA/BIOS hole.
pub const EBDA_END: u64 = 0xa0000;
/// Start of the ACPI tables: the top 128 KiB below 1 MiB, the BIOS area in which
/// Linux looks for the RSDP when no EFI and no `acpi_rsdp_addr` tell it where. The
/// e820 map leaves `EBDA_END..HIMEM_START` out, so this is never usable RAM.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the ACPI tables' area.
pub const ACPI_END: u64 = HIMEM_START;
/// The RSDP, first in the ACPI area (16-byte aligned, as the scan requires).
pub const RSDP_ADDR: u64 = ACPI_START;
/// Lowest address a kernel may be loaded at.
pub const HIMEM_START: u64 = 0x10_0000;

// The ACPI area lies in the legacy hole: above the MP table's EBDA, below the kernel.
const _: () = assert!(EBDA_END <= ACPI_START && ACPI_START < ACPI_END && ACPI_END <= HIMEM_START);

/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Firecracker-compatible boot timer: the guest writes 123 here once it runs.
pub const BOOT_TIMER_ADDR: u64 = MMIO_GAP_START;
/// Size of the boot timer's MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Where KVM puts the three pages of its real-mode TSS (needed on Intel hosts).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// IOAPIC registers (fixed by the in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers (fixed by the in-kernel irqchip).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Legacy IRQ of the i8042 keyboard controller.
pub const IRQ_I8042: u32 = 1;
/// Legacy IRQ of COM1.
pub const IRQ_COM1: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const IRQ_VIRTIO_FIRST: u32 = 5;
/// Last IRQ the IOAPIC has a pin for.
pub const IRQ_MAX: u32 = 23;
/// Most virtio devices: one IRQ each, `IRQ_VIRTIO_FIRST..=IRQ_MAX`.
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - IRQ_VIRTIO_FIRST + 1) as usize;

/// Upper bound of RAM below the MMIO gap for a guest of `mem_size` bytes.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// RAM a guest of `mem_size` bytes has from `MMIO_GAP_END` (4 GiB) up.
pub fn high_ram_size(mem_size: u64) -> u64 {
    mem_size.saturating_sub(MMIO_GAP_START)
}
