//! Register state for the 64-bit entry of Linux's boot protocol, the boot page tables,
//! and the MSR, FPU and LAPIC state KVM does not set up for us.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{kvm_segment_from_gdt, BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_TSS};
use super::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDE_ADDR, PDPTE_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};
use crate::vstate::memory::GuestMemory;

/// Errors while writing boot tables into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables failed.
    #[error("cannot write the boot {what} at {addr:#x}")]
    Write {
        /// Which table.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The MSR list could not be built.
    #[error("cannot build the boot MSR list")]
    Msrs(#[source] vmm_sys_util::fam::Error),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_WP: u64 = 1 << 16;
const X86_CR0_AM: u64 = 1 << 18;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CR0 at entry: protected mode with paging, FPU exceptions native; the value Linux
/// itself runs with.
pub const BOOT_CR0: u64 =
    X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_AM | X86_CR0_PG;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_2MIB_PAGE: u64 = 1 << 7;
/// Page directories in the identity map; each maps 1 GiB.
pub const IDENTITY_MAP_GIB: u64 = 4;

/// The boot identity map of 0..4 GiB with 2 MiB pages: one PML4 entry, four PDPT
/// entries, four page directories. Linux needs the kernel, zero page and command line
/// mapped; the probe guest also reaches the initrd and the MMIO gap through it.
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    let pml4 = (PDPTE_ADDR | PTE_PRESENT | PTE_WRITABLE)
        .to_le_bytes()
        .to_vec();
    let pdpt: Vec<u8> = (0..IDENTITY_MAP_GIB)
        .flat_map(|i| ((PDE_ADDR + i * 0x1000) | PTE_PRESENT | PTE_WRITABLE).to_le_bytes())
        .collect();
    let pd: Vec<u8> = (0..IDENTITY_MAP_GIB * 512)
        .flat_map(|i| ((i << 21) | PTE_PRESENT | PTE_WRITABLE | PDE_2MIB_PAGE).to_le_bytes())
        .collect();
    vec![(PML4_ADDR, pml4), (PDPTE_ADDR, pdpt), (PDE_ADDR, pd)]
}

/// Writes the GDT, an empty IDT and the identity-mapping page tables.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    let mut tables = vec![(GDT_ADDR, gdt), (IDT_ADDR, vec![0u8; 8])];
    tables.extend(page_tables());
    let what = |addr| match addr {
        GDT_ADDR => "GDT",
        IDT_ADDR => "IDT",
        _ => "page tables",
    };
    for (addr, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| RegsError::Write {
                what: what(addr),
                addr,
                source,
            })?;
    }
    Ok(())
}

/// Special registers for the 64-bit entry, starting from what KVM reported.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment_from_gdt(&BOOT_GDT, BOOT_CS);
    let data = kvm_segment_from_gdt(&BOOT_GDT, BOOT_DS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(&BOOT_GDT, BOOT_TSS);
    sregs.gdt.base = GDT_ADDR;
    // Five 8-byte descriptors.
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr0 = BOOT_CR0;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers for the 64-bit entry: RSI points at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// x87 and SSE control words at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// MSRs every vCPU starts with: syscall MSRs cleared, fast strings on, and write-back
/// as the default memory type (otherwise the guest runs uncached).
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ])
    .map_err(RegsError::Msrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let r = &lapic.regs[offset..offset + 4];
    // `regs` is c_char (i8); reinterpret the bytes.
    #[allow(clippy::cast_sign_loss)]
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        #[allow(clippy::cast_possible_wrap)]
        {
            lapic.regs[offset + i] = *b as _;
        }
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 wired to the PIC (ExtINT) and LINT1 to NMI, as the MP table says.
pub fn boot_lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT0,
        set_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT1,
        set_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    lapic
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_u64(mem: &GuestMemory, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn test_page_tables_identity_map_first_and_last_2mib_below_4g() {
        let mem = mem();
        write_boot_tables(&mem).unwrap();
        assert_eq!(read_u64(&mem, PML4_ADDR), 0xa003);
        assert_eq!(read_u64(&mem, PDPTE_ADDR), 0xb003);
        assert_eq!(read_u64(&mem, PDPTE_ADDR + 3 * 8), 0xe003);
        assert_eq!(read_u64(&mem, PDE_ADDR), 0x83);
        // The last 2 MiB page below 4 GiB (holds the LAPIC at 0xfee00000).
        assert_eq!(read_u64(&mem, PDE_ADDR + 2047 * 8), 0xffe0_0083);
    }

    #[test]
    fn test_gdt_is_written_where_sregs_point() {
        let mem = mem();
        write_boot_tables(&mem).unwrap();
        let sregs = boot_sregs(kvm_sregs::default());
        assert_eq!(sregs.gdt.base, 0x500);
        assert_eq!(
            read_u64(&mem, sregs.gdt.base + u64::from(BOOT_CS)),
            BOOT_GDT[2]
        );
        assert_eq!(
            read_u64(&mem, sregs.gdt.base + u64::from(BOOT_DS)),
            BOOT_GDT[3]
        );
    }

    #[test]
    fn test_sregs_enter_long_mode_with_paging() {
        let sregs = boot_sregs(kvm_sregs::default());
        assert_eq!(sregs.cr0, 0x8005_0033);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
        assert_eq!(
            (sregs.ds.selector, sregs.ss.selector, sregs.es.selector),
            (0x18, 0x18, 0x18)
        );
    }

    #[test]
    fn test_regs_pass_zero_page_in_rsi_with_interrupts_off() {
        let regs = boot_regs(0x100_0000);
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, 0x7000);
        assert_eq!(regs.rflags, 0x2);
        assert_eq!(regs.rsp, 0x8ff0);
    }

    #[test]
    fn test_lapic_lint0_extint_lint1_nmi() {
        let lapic = boot_lapic(kvm_lapic_state::default());
        assert_eq!((lapic_reg(&lapic, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn test_boot_msrs_enable_writeback_mtrrs() {
        let msrs = boot_msrs().unwrap();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}
