//! The boot GDT and the `kvm_segment`s that match it.
//!
//! Linux's 64-bit boot protocol wants `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) as 4 GiB
//! flat segments, CS = `__BOOT_CS` and DS/ES/SS = `__BOOT_DS`.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the boot TSS.
pub const BOOT_TSS: u16 = 0x20;

/// Packs a segment descriptor: `flags` holds access byte (bits 0-7) and the
/// granularity/size nibble (bits 12-15), as in the Intel SDM figure 3-8.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT, indexed by selector / 8.
pub const BOOT_GDT: [u64; 5] = [
    0,                             // null
    0,                             // unused, keeps the selectors where Linux wants them
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: code, 64-bit, present, DPL 0
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, 32-bit flat, present, DPL 0
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: busy 64-bit TSS
];

/// Decodes descriptor `entry` of `table` into what `KVM_SET_SREGS` expects.
pub fn kvm_segment_from_gdt(table: &[u64], selector: u16) -> kvm_segment {
    let entry = table[usize::from(selector >> 3)];
    // The casts extract bit fields that are at most 32 bits wide.
    #[allow(clippy::cast_possible_truncation)]
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_gdt_matches_linux_boot_protocol_encodings() {
        // The classic encodings of a flat 64-bit code and a flat data segment.
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[4], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn test_code_segment_is_long_mode_flat_ring0() {
        let cs = kvm_segment_from_gdt(&BOOT_GDT, BOOT_CS);
        assert_eq!((cs.selector, cs.base, cs.limit), (0x10, 0, 0xffff_ffff));
        assert_eq!(
            (cs.type_, cs.present, cs.dpl, cs.s, cs.l, cs.db, cs.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn test_data_segment_is_flat_writable() {
        let ds = kvm_segment_from_gdt(&BOOT_GDT, BOOT_DS);
        assert_eq!((ds.selector, ds.base, ds.limit), (0x18, 0, 0xffff_ffff));
        assert_eq!(
            (ds.type_, ds.present, ds.s, ds.l, ds.db, ds.g),
            (0x3, 1, 1, 0, 1, 1)
        );
    }

    #[test]
    fn test_tss_is_busy_system_segment() {
        let tss = kvm_segment_from_gdt(&BOOT_GDT, BOOT_TSS);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
    }
}
