//! ACPI tables, so kernels that read ACPI but have no MP-table parser (Debian's cloud
//! kernels, for one) find every vCPU, the IOAPIC, COM1 and each virtio-mmio device.
//!
//! The tables describe the same machine as the MP table in [`super::mptable`]:
//! LAPIC ids equal vCPU indices, the IOAPIC's id is the vCPU count, and ISA IRQ `n`
//! is IOAPIC pin `n` for every pin, IRQ 0 included (KVM's default GSI routing, which
//! spry does not change), so the MADT carries no interrupt source override.
//!
//! A hardware-reduced ACPI kernel drops the legacy PIC and with it the fixed ISA IRQ
//! numbers: a device gets an interrupt only through its `_CRS`. So the DSDT lists
//! every device with an interrupt, the i8042 and COM1 included, not just virtio.
//!
//! Guest-physical layout, all inside `ACPI_START..ACPI_END` (0xe0000..1 MiB):
//!
//! ```text
//! 0xe0000  RSDP (36 bytes)
//! then     DSDT, FADT, MADT, XSDT, each 16-byte aligned, in that order
//! ```

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    ACPI_END, ACPI_START, IOAPIC_ADDR, IRQ_COM1, IRQ_I8042, LAPIC_ADDR, RSDP_ADDR,
};
use super::mptable::ioapic_id;
use crate::devices::legacy::i8042::I8042_PORT;
use crate::devices::legacy::serial::{COM1_LEN, COM1_PORT};
use crate::vstate::memory::GuestMemory;

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit between `ACPI_START` and `ACPI_END`.
    #[error(
        "ACPI tables need {size} bytes from {ACPI_START:#x}, the area has {}",
        ACPI_END - ACPI_START
    )]
    TooLarge {
        /// Bytes needed, RSDP included.
        size: u64,
    },
    /// A virtio-mmio window the DSDT's 32-bit memory descriptor cannot express.
    #[error("virtio-mmio window {base:#x}+{size:#x} is not below 4 GiB")]
    WindowAbove4Gib {
        /// Window start.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// More virtio devices than four-character AML names `V000`..`VFFF` can name.
    #[error("{0} virtio devices are more than the DSDT can name")]
    TooManyDevices(usize),
    /// Writing guest memory failed.
    #[error("cannot write the ACPI {table} at {addr:#x}")]
    Write {
        /// Table signature.
        table: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One virtio-mmio device as the DSDT announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Guest-physical start of its register window.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// Its interrupt line: IOAPIC pin, which is also its GSI.
    pub gsi: u32,
}

/// One table and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTable {
    /// Signature, for messages ("RSDP", "DSDT", ...).
    pub signature: &'static str,
    /// Guest-physical address.
    pub addr: u64,
    /// The table's bytes, checksum included.
    pub bytes: Vec<u8>,
}

const OEM_ID: [u8; 6] = *b"SPRY  ";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.3 and later (the one that defines "online capable").
const MADT_REVISION: u8 = 5;
const TABLE_ALIGN: u64 = 16;

/// MADT flag: the machine also has dual 8259 PICs (KVM's irqchip includes them).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_LOCAL_X2APIC_NMI: u8 = 0x0a;
const MADT_ENABLED: u32 = 1;
/// Highest id a (8-bit) Local APIC entry may carry; 0xff means "all processors".
const MAX_XAPIC_ID: u32 = 254;
/// "All processors" in the NMI entries.
const ALL_PROCESSORS_UID8: u8 = 0xff;
const ALL_PROCESSORS_UID32: u32 = u32::MAX;
/// LINT1 is wired to NMI, as in the MP table and the boot LAPIC state.
const NMI_LINT: u8 = 1;
/// MPS INTI flags "conforms to the bus".
const MPS_INTI_CONFORMS: u16 = 0;

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// What spry emulates: ISA-style legacy devices (COM1, the i8042) are there; there is
/// no VGA, no PCI and so no MSI, and no CMOS RTC on ports 0x70/0x71.
const IAPC_BOOT_ARCH: u16 = IAPC_LEGACY_DEVICES
    | IAPC_8042
    | IAPC_VGA_NOT_PRESENT
    | IAPC_MSI_NOT_SUPPORTED
    | IAPC_CMOS_RTC_NOT_PRESENT;

/// The i8042's command/status port, 4 above its data port.
const I8042_COMMAND_OFFSET: u64 = 4;

/// AML that is already serialized.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// Hands out 16-byte aligned addresses after the RSDP.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .filter(|&end| end <= ACPI_END)
            .ok_or(AcpiError::TooLarge {
                size: (addr - ACPI_START).saturating_add(u64::try_from(len).unwrap_or(u64::MAX)),
            })?;
        self.next = end;
        Ok(addr)
    }
}

/// Builds the tables for `cpus` vCPUs and `devices`, each with its address.
pub fn build_tables(cpus: u8, devices: &[VirtioMmio]) -> Result<Vec<PlacedTable>, AcpiError> {
    let rsdp_len = Rsdp::len();
    let mut placer = Placer {
        next: RSDP_ADDR + u64::try_from(rsdp_len).unwrap_or(u64::MAX),
    };

    let dsdt = build_dsdt(devices)?;
    let dsdt_addr = placer.place(dsdt.len())?;
    let fadt = build_fadt(dsdt_addr);
    let fadt_addr = placer.place(fadt.len())?;
    let madt = build_madt(cpus);
    let madt_addr = placer.place(madt.len())?;
    let mut xsdt = XSDT::new(OEM_ID, *b"SPRYXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let xsdt_addr = placer.place(xsdt.len())?;
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    Ok(vec![
        PlacedTable {
            signature: "RSDP",
            addr: RSDP_ADDR,
            bytes: rsdp,
        },
        PlacedTable {
            signature: "DSDT",
            addr: dsdt_addr,
            bytes: dsdt,
        },
        PlacedTable {
            signature: "FADT",
            addr: fadt_addr,
            bytes: fadt,
        },
        PlacedTable {
            signature: "MADT",
            addr: madt_addr,
            bytes: madt,
        },
        PlacedTable {
            signature: "XSDT",
            addr: xsdt_addr,
            bytes: xsdt,
        },
    ])
}

/// Writes the tables for `cpus` vCPUs and `devices` into guest memory; returns the
/// RSDP's address and the bytes written.
pub fn setup_acpi(
    mem: &GuestMemory,
    cpus: u8,
    devices: &[VirtioMmio],
) -> Result<(u64, usize), AcpiError> {
    let tables = build_tables(cpus, devices)?;
    let mut written = 0;
    for table in &tables {
        mem.write_slice(&table.bytes, GuestAddress(table.addr))
            .map_err(|source| AcpiError::Write {
                table: table.signature,
                addr: table.addr,
                source,
            })?;
        written += table.bytes.len();
    }
    Ok((RSDP_ADDR, written))
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Hardware-reduced FADT: no PM1/GPE blocks, no SCI, no fixed-feature buttons; the
/// DSDT through its 64-bit pointer.
fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SPRYFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    aml_bytes(&fadt.finalize())
}

/// One Local APIC entry for APIC id `id`, or a Local x2APIC entry when the id does not
/// fit an 8-bit entry. The ACPI processor UID equals the APIC id.
fn local_apic_entry(id: u32) -> Vec<u8> {
    match u8::try_from(id) {
        Ok(id8) if id <= MAX_XAPIC_ID => {
            let mut e = vec![MADT_LOCAL_APIC, 8, id8, id8];
            e.extend_from_slice(&MADT_ENABLED.to_le_bytes());
            e
        }
        _ => {
            let mut e = vec![MADT_LOCAL_X2APIC, 16, 0, 0];
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&MADT_ENABLED.to_le_bytes());
            e.extend_from_slice(&id.to_le_bytes());
            e
        }
    }
}

/// MADT: one enabled Local APIC per vCPU (APIC id = vCPU index, the BSP first), the
/// IOAPIC with GSI base 0, and LINT1 as NMI on every processor.
fn build_madt(cpus: u8) -> Vec<u8> {
    build_madt_for_ids(0..u32::from(cpus), ioapic_id(cpus))
}

fn build_madt_for_ids(ids: impl Iterator<Item = u32>, ioapic: u8) -> Vec<u8> {
    // Header (36) + local interrupt controller address (4) + flags (4).
    let mut madt = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        *b"SPRYAPIC",
        OEM_REVISION,
    );
    // The LAPIC and IOAPIC sit below 4 GiB.
    madt.write_u32(36, u32::try_from(LAPIC_ADDR).unwrap_or(0));
    madt.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    let mut any_x2apic = false;
    for id in ids {
        let entry = local_apic_entry(id);
        any_x2apic |= entry[0] == MADT_LOCAL_X2APIC;
        entries.extend_from_slice(&entry);
    }
    entries.extend_from_slice(&[MADT_IO_APIC, 12, ioapic, 0]);
    entries.extend_from_slice(&u32::try_from(IOAPIC_ADDR).unwrap_or(0).to_le_bytes());
    entries.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS_UID8]);
    entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    entries.push(NMI_LINT);
    if any_x2apic {
        entries.extend_from_slice(&[MADT_LOCAL_X2APIC_NMI, 12]);
        entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
        entries.extend_from_slice(&ALL_PROCESSORS_UID32.to_le_bytes());
        entries.extend_from_slice(&[NMI_LINT, 0, 0, 0]);
    }
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}

/// DSDT: `\_SB_.PS2K` (PNP0303), `\_SB_.COM1` (PNP0501) and one `\_SB_.Vnnn` (`LNRO0005`, the id Linux's
/// virtio_mmio driver matches) per virtio-mmio device, in attach order so the first
/// block device is still `vda`.
fn build_dsdt(devices: &[VirtioMmio]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    i8042_aml(&mut body);
    com1_aml(&mut body);
    for (index, device) in devices.iter().enumerate() {
        virtio_aml(index, device, &mut body)?;
    }
    let body = RawAml(body);
    let scope = aml::Scope::new("\\_SB_".into(), vec![&body]);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"SPRYDSDT",
        OEM_REVISION,
    );
    dsdt.append_slice(&aml_bytes(&scope));
    Ok(dsdt.as_slice().to_vec())
}

/// The i8042's keyboard port: data port 0x60 and command port 0x64, one byte each (as
/// Linux's i8042 driver wants them), ISA IRQ 1, edge, active high, exclusive. No AUX
/// (mouse) device: spry emulates none.
fn i8042_aml(sink: &mut Vec<u8>) {
    // 0x60 and 0x64 fit 16-bit port fields.
    let data = u16::try_from(I8042_PORT).unwrap_or(0);
    let command = u16::try_from(I8042_PORT + I8042_COMMAND_OFFSET).unwrap_or(0);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303"));
    let data = aml::IO::new(data, data, 1, 1);
    let command = aml::IO::new(command, command, 1, 1);
    let irq = aml::Interrupt::new(true, true, false, false, IRQ_I8042);
    let crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&data, &command, &irq]),
    );
    aml::Device::new("PS2K".into(), vec![&hid, &crs]).to_aml_bytes(sink);
}

/// COM1: 8 ports at 0x3f8, ISA IRQ 4, edge, active high, exclusive.
fn com1_aml(sink: &mut Vec<u8>) {
    // COM1's port window is 8 bytes at 0x3f8: both fit their AML fields.
    let port = u16::try_from(COM1_PORT).unwrap_or(0);
    let len = u8::try_from(COM1_LEN).unwrap_or(0);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ONE);
    let io = aml::IO::new(port, port, 1, len);
    let irq = aml::Interrupt::new(true, true, false, false, IRQ_COM1);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq]));
    aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// One virtio-mmio device: its 4K window and its GSI, edge, active high, exclusive
/// (spry raises it through an irqfd, a pulse).
fn virtio_aml(index: usize, device: &VirtioMmio, sink: &mut Vec<u8>) -> Result<(), AcpiError> {
    let window_error = || AcpiError::WindowAbove4Gib {
        base: device.base,
        size: device.size,
    };
    if device
        .base
        .checked_add(device.size)
        .is_none_or(|end| end > 1 << 32)
    {
        return Err(window_error());
    }
    let base = u32::try_from(device.base).map_err(|_| window_error())?;
    let size = u32::try_from(device.size).map_err(|_| window_error())?;
    if index > 0xfff {
        return Err(AcpiError::TooManyDevices(index + 1));
    }
    // Always four characters: 'V' and three hex digits, checked above.
    let name = format!("V{index:03X}");
    let uid = u32::try_from(index).map_err(|_| AcpiError::TooManyDevices(index + 1))?;
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    // DMA is cache coherent.
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let mem = aml::Memory32Fixed::new(true, base, size);
    let irq = aml::Interrupt::new(true, true, false, false, device.gsi);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem, &irq]));
    aml::Device::new(name.as_str().into(), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::boot_params::{e820_map, E820_RAM};
    use crate::arch::x86_64::layout::{
        CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_END, EBDA_START, HIMEM_START, PDE_ADDR, ZERO_PAGE_ADDR,
    };

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    fn devices(n: u32) -> Vec<VirtioMmio> {
        (0..n)
            .map(|i| VirtioMmio {
                base: 0xd000_0000 + u64::from(i) * 0x1000,
                size: 0x1000,
                gsi: 5 + i,
            })
            .collect()
    }

    fn table<'a>(tables: &'a [PlacedTable], signature: &str) -> &'a PlacedTable {
        tables.iter().find(|t| t.signature == signature).unwrap()
    }

    /// MADT entries after the 44-byte header, as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = usize::from(madt[at + 1]);
            entries.push((madt[at], madt[at..at + len].to_vec()));
            at += len;
        }
        entries
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn test_every_table_checksums_to_zero() {
        let tables = build_tables(4, &devices(3)).unwrap();
        for t in &tables {
            assert_eq!(sum(&t.bytes), 0, "{}", t.signature);
        }
    }

    #[test]
    fn test_sdt_lengths_match_their_bytes() {
        let tables = build_tables(4, &devices(3)).unwrap();
        for t in tables.iter().filter(|t| t.signature != "RSDP") {
            assert_eq!(
                u32_at(&t.bytes, 4) as usize,
                t.bytes.len(),
                "{}",
                t.signature
            );
        }
    }

    #[test]
    fn test_rsdp_is_revision_2_and_points_at_xsdt() {
        let tables = build_tables(1, &[]).unwrap();
        let rsdp = table(&tables, "RSDP");
        assert_eq!(rsdp.addr, 0xe0000);
        assert_eq!(&rsdp.bytes[0..8], b"RSD PTR ");
        assert_eq!(rsdp.bytes[15], 2); // revision
        assert_eq!(sum(&rsdp.bytes[0..20]), 0); // ACPI 1.0 checksum
        assert_eq!(u32_at(&rsdp.bytes, 20), 36); // length
        assert_eq!(u64_at(&rsdp.bytes, 24), table(&tables, "XSDT").addr);
    }

    #[test]
    fn test_xsdt_lists_fadt_and_madt() {
        let tables = build_tables(1, &[]).unwrap();
        let xsdt = &table(&tables, "XSDT").bytes;
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        assert_eq!(u64_at(xsdt, 36), table(&tables, "FADT").addr);
        assert_eq!(u64_at(xsdt, 44), table(&tables, "MADT").addr);
    }

    #[test]
    fn test_fadt_is_hardware_reduced_and_points_at_dsdt() {
        let tables = build_tables(1, &[]).unwrap();
        let fadt = &table(&tables, "FADT").bytes;
        assert_eq!(&fadt[0..4], b"FACP");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        // No legacy PM blocks: PM1a event/control and the PM timer are zero.
        assert_eq!(u32_at(fadt, 56), 0);
        assert_eq!(u32_at(fadt, 64), 0);
        assert_eq!(u32_at(fadt, 76), 0);
        assert_eq!(u32_at(fadt, 40), 0); // 32-bit DSDT pointer unused
        assert_eq!(u64_at(fadt, 140), table(&tables, "DSDT").addr); // X_DSDT
    }

    #[test]
    fn test_fadt_boot_arch_has_i8042_and_no_vga_or_cmos() {
        let tables = build_tables(1, &[]).unwrap();
        let fadt = &table(&tables, "FADT").bytes;
        let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(iapc, 0b10_1111);
    }

    #[test]
    fn test_madt_has_one_enabled_lapic_per_vcpu_and_the_ioapic() {
        let tables = build_tables(4, &[]).unwrap();
        let madt = &table(&tables, "MADT").bytes;
        assert_eq!(&madt[0..4], b"APIC");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000);
        let entries = madt_entries(madt);
        let lapics: Vec<_> = entries
            .iter()
            .filter(|(t, _)| *t == MADT_LOCAL_APIC)
            .map(|(_, e)| (e[2], e[3], u32_at(e, 4)))
            .collect();
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        let ioapic = &entries.iter().find(|(t, _)| *t == MADT_IO_APIC).unwrap().1;
        assert_eq!(ioapic[2], 4); // id after the vCPUs', as in the MP table
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0); // GSI base
    }

    #[test]
    fn test_madt_has_no_interrupt_source_override() {
        // ISA IRQ n is pin n, IRQ 0 included, as the MP table says.
        let tables = build_tables(2, &[]).unwrap();
        let madt = &table(&tables, "MADT").bytes;
        assert!(madt_entries(madt).iter().all(|(t, _)| *t != 2));
    }

    #[test]
    fn test_madt_for_32_vcpus_has_32_lapics() {
        let tables = build_tables(32, &[]).unwrap();
        let madt = &table(&tables, "MADT").bytes;
        let lapics = madt_entries(madt)
            .iter()
            .filter(|(t, _)| *t == MADT_LOCAL_APIC)
            .count();
        assert_eq!(lapics, 32);
    }

    #[test]
    fn test_apic_ids_above_254_get_x2apic_entries() {
        let madt = build_madt_for_ids([0, 254, 255, 300].into_iter(), 0);
        let entries = madt_entries(&madt);
        let kinds: Vec<_> = entries.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            kinds,
            vec![
                MADT_LOCAL_APIC,
                MADT_LOCAL_APIC,
                MADT_LOCAL_X2APIC,
                MADT_LOCAL_X2APIC,
                MADT_IO_APIC,
                MADT_LOCAL_APIC_NMI,
                MADT_LOCAL_X2APIC_NMI,
            ]
        );
        assert_eq!(u32_at(&entries[3].1, 4), 300); // x2APIC id
        assert_eq!(u32_at(&entries[3].1, 8), 1); // enabled
        assert_eq!(sum(&madt), 0);
    }

    #[test]
    fn test_dsdt_names_lnro0005_once_per_device() {
        let tables = build_tables(1, &devices(3)).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(count(dsdt, b"LNRO0005\0"), 3);
    }

    #[test]
    fn test_dsdt_without_devices_has_no_virtio_entry() {
        let tables = build_tables(1, &[]).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        assert_eq!(count(dsdt, b"LNRO0005"), 0);
        assert_eq!(count(dsdt, b"COM1"), 1);
    }

    #[test]
    fn test_dsdt_carries_each_window_and_gsi() {
        let tables = build_tables(1, &devices(2)).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        // Memory32Fixed: tag 0x86, length 9, read-write, base, size.
        let mut window = vec![0x86, 9, 0, 1];
        window.extend_from_slice(&0xd000_1000u32.to_le_bytes());
        window.extend_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(count(dsdt, &window), 1);
        // Extended interrupt: tag 0x89, length 6, consumer + edge (active high,
        // exclusive), one interrupt, GSI 6.
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&6u32.to_le_bytes());
        assert_eq!(count(dsdt, &irq), 1);
    }

    #[test]
    fn test_dsdt_com1_has_ports_and_irq_4() {
        let tables = build_tables(1, &[]).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        // IO descriptor: decode16, 0x3f8..0x3f8, alignment 1, 8 ports.
        assert_eq!(count(dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&4u32.to_le_bytes());
        assert_eq!(count(dsdt, &irq), 1);
    }

    #[test]
    fn test_dsdt_i8042_has_one_byte_ports_60_and_64_and_irq_1() {
        let tables = build_tables(1, &[]).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        assert_eq!(count(dsdt, b"PS2K"), 1);
        assert_eq!(count(dsdt, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]), 1);
        assert_eq!(count(dsdt, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]), 1);
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(count(dsdt, &irq), 1);
    }

    #[test]
    fn test_window_above_4_gib_is_refused() {
        let device = VirtioMmio {
            base: 1 << 32,
            size: 0x1000,
            gsi: 5,
        };
        assert!(matches!(
            build_tables(1, &[device]),
            Err(AcpiError::WindowAbove4Gib { .. })
        ));
    }

    #[test]
    fn test_tables_stay_inside_the_acpi_area_without_overlap() {
        let tables = build_tables(32, &devices(19)).unwrap();
        let mut ranges: Vec<_> = tables
            .iter()
            .map(|t| (t.addr, t.addr + t.bytes.len() as u64))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        assert!(ranges
            .iter()
            .all(|&(s, e)| s >= ACPI_START && e <= ACPI_END));
        assert!(tables.iter().all(|t| t.addr % 16 == 0));
    }

    #[test]
    fn test_acpi_area_misses_zero_page_cmdline_mptable_and_kernel() {
        let cmdline_end = CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64;
        for (start, end) in [
            (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + 0x1000),
            (PDE_ADDR, PDE_ADDR + 4 * 0x1000),
            (CMDLINE_ADDR, cmdline_end),
            (EBDA_START, EBDA_END),
            (HIMEM_START, u64::MAX),
        ] {
            assert!(
                end <= ACPI_START || start >= ACPI_END,
                "{start:#x}..{end:#x}"
            );
        }
    }

    #[test]
    fn test_e820_gives_no_ram_in_the_acpi_area() {
        for mem_size in [16 * MIB, 128 * MIB, 6 * GIB] {
            for (start, size, kind) in e820_map(mem_size) {
                let overlaps = start < ACPI_END && start + size > ACPI_START;
                assert!(
                    kind != E820_RAM || !overlaps,
                    "{start:#x}+{size:#x} for {mem_size}"
                );
            }
        }
    }

    #[test]
    fn test_setup_acpi_writes_rsdp_where_linux_scans() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap(); // 2 MiB
        let (rsdp, written) = setup_acpi(&mem, 2, &devices(1)).unwrap();
        assert_eq!(rsdp, 0xe0000);
        let mut signature = [0u8; 8];
        mem.read_slice(&mut signature, GuestAddress(0xe0000))
            .unwrap();
        assert_eq!(&signature, b"RSD PTR ");
        let mut xsdt_ptr = [0u8; 8];
        mem.read_slice(&mut xsdt_ptr, GuestAddress(0xe0000 + 24))
            .unwrap();
        let mut xsdt_sig = [0u8; 4];
        mem.read_slice(&mut xsdt_sig, GuestAddress(u64::from_le_bytes(xsdt_ptr)))
            .unwrap();
        assert_eq!(&xsdt_sig, b"XSDT");
        assert!(written > 36);
    }

    #[test]
    fn test_setup_acpi_without_memory_at_the_acpi_area_fails() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            setup_acpi(&mem, 1, &[]),
            Err(AcpiError::Write { .. })
        ));
    }
}
