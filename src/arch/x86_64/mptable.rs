//! Intel MultiProcessor Specification 1.4 tables, so the guest finds every vCPU, the
//! IOAPIC and how ISA interrupts are wired without ACPI.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_END, EBDA_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR};
use crate::vstate::memory::GuestMemory;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The table does not fit in the EBDA.
    #[error("MP table for {cpus} vCPUs needs {size} bytes, the EBDA has {}", EBDA_END - EBDA_START)]
    TooLarge {
        /// vCPU count.
        cpus: u8,
        /// Bytes needed.
        size: usize,
    },
    /// Writing guest memory failed.
    #[error("cannot write the MP table at {EBDA_START:#x}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const MPC_SPEC_1_4: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Family 6 stepping 0, with the FPU and APIC feature bits.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The IOAPIC's id: the first APIC id after the vCPUs'.
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// Builds the floating pointer plus configuration table for `cpus` vCPUs, to be
/// placed at `base`.
pub fn build_mptable(cpus: u8, base: u64) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id(cpus), IOAPIC_VERSION, 1]);
    // The IOAPIC sits below 4 GiB.
    entries.extend_from_slice(&u32::try_from(IOAPIC_ADDR).unwrap_or(0).to_le_bytes());
    for irq in 0..=IRQ_MAX {
        // IRQ numbers stop at 23.
        let irq = u8::try_from(irq).unwrap_or(u8::MAX);
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            MP_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id(cpus),
            irq,
        ]);
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    // Processors, the bus, the IOAPIC, one interrupt source per pin, two local ones.
    let pins = u16::try_from(IRQ_MAX + 1).unwrap_or(u16::MAX);
    let entry_count = u16::from(cpus) + 1 + 1 + pins + 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOATING_LEN as u64;
    let table_len = HEADER_LEN + entries.len();

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    // At most a few KiB: 20 bytes per vCPU plus a fixed part.
    header.extend_from_slice(&u16::try_from(table_len).unwrap_or(u16::MAX).to_le_bytes());
    header.push(MPC_SPEC_1_4);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"SPRY    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&u32::try_from(LAPIC_ADDR).unwrap_or(0).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&u32::try_from(table_addr).unwrap_or(0).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(MPC_SPEC_1_4);
    floating.push(0); // checksum, filled below
    floating.extend_from_slice(&[0; 5]); // no default configuration, no IMCR
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    floating
}

/// Writes the MP table for `cpus` vCPUs into the EBDA.
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = build_mptable(cpus, EBDA_START);
    let room = usize::try_from(EBDA_END - EBDA_START).unwrap_or(0);
    if bytes.len() > room {
        return Err(MptableError::TooLarge {
            cpus,
            size: bytes.len(),
        });
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn test_floating_pointer_checksums_and_points_at_table() {
        let t = build_mptable(1, EBDA_START);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + 16);
    }

    #[test]
    fn test_config_table_checksums() {
        let t = build_mptable(4, EBDA_START);
        let len = usize::from(u16::from_le_bytes([t[20], t[21]]));
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(sum(&t[16..16 + len]), 0);
        assert_eq!(16 + len, t.len());
    }

    #[test]
    fn test_one_enabled_processor_entry_per_vcpu_and_bsp_first() {
        let t = build_mptable(4, EBDA_START);
        let cpus: Vec<_> = t[60..60 + 4 * 20]
            .chunks(20)
            .map(|e| (e[0], e[1], e[3]))
            .collect();
        assert_eq!(cpus, vec![(0, 0, 3), (0, 1, 1), (0, 2, 1), (0, 3, 1)]);
    }

    #[test]
    fn test_entry_count_matches_entries() {
        let t = build_mptable(2, EBDA_START);
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        // 2 processors, 1 bus, 1 IOAPIC, 24 interrupt sources, 2 local interrupts.
        assert_eq!(count, 30);
    }

    #[test]
    fn test_32_vcpus_fit_in_the_ebda() {
        let t = build_mptable(32, EBDA_START);
        assert!(t.len() <= usize::try_from(EBDA_END - EBDA_START).unwrap());
    }

    #[test]
    fn test_ioapic_entry_has_address_and_id_after_cpus() {
        let t = build_mptable(2, EBDA_START);
        let ioapic = &t[60 + 2 * 20 + 8..60 + 2 * 20 + 16];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], 2);
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }
}
