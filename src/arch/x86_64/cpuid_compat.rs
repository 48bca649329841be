//! Whether a saved vCPU's CPUID asks for features this host's vCPUs cannot have: a
//! snapshot from a richer CPU is refused before any vCPU runs.

use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl Reg {
    fn of(self, entry: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => entry.eax,
            Reg::Ebx => entry.ebx,
            Reg::Ecx => entry.ecx,
            Reg::Edx => entry.edx,
        }
    }
}

/// A register of feature flags, and the bits of it that follow the guest's own control
/// registers (KVM updates them at run time) rather than the CPU.
struct FeatureReg {
    function: u32,
    index: u32,
    reg: Reg,
    dynamic: u32,
}

const fn feature(function: u32, index: u32, reg: Reg, dynamic: u32) -> FeatureReg {
    FeatureReg {
        function,
        index,
        reg,
        dynamic,
    }
}

/// Leaf 1 ECX: OSXSAVE mirrors CR4.OSXSAVE.
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// Leaf 1 EDX: APIC mirrors the APIC base MSR's enable bit.
const LEAF1_EDX_APIC: u32 = 1 << 9;
/// Leaf 7 ECX: OSPKE mirrors CR4.PKE.
const LEAF7_ECX_OSPKE: u32 = 1 << 4;

/// The registers whose set bits each name a CPU feature.
const FEATURE_REGS: [FeatureReg; 11] = [
    feature(0x1, 0, Reg::Ecx, LEAF1_ECX_OSXSAVE),
    feature(0x1, 0, Reg::Edx, LEAF1_EDX_APIC),
    feature(0x7, 0, Reg::Ebx, 0),
    feature(0x7, 0, Reg::Ecx, LEAF7_ECX_OSPKE),
    feature(0x7, 0, Reg::Edx, 0),
    feature(0x7, 1, Reg::Eax, 0),
    // XSAVE: the state components XCR0 may enable, and the XSAVE instructions.
    feature(0xd, 0, Reg::Eax, 0),
    feature(0xd, 0, Reg::Edx, 0),
    feature(0xd, 1, Reg::Eax, 0),
    feature(0x8000_0001, 0, Reg::Ecx, 0),
    feature(0x8000_0001, 0, Reg::Edx, 0),
];

/// Feature bits the snapshot's CPU had and this host's lacks: the first register found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFeatures {
    /// CPUID leaf.
    pub function: u32,
    /// CPUID subleaf.
    pub index: u32,
    /// The register.
    pub reg: Reg,
    /// The bits set in the snapshot and clear on this host.
    pub bits: u32,
}

impl fmt::Display for MissingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the snapshot's CPU has features this host lacks: CPUID {:#x}.{} {:?} bits {:#010x}",
            self.function, self.index, self.reg, self.bits
        )
    }
}

/// Leaf `function`, subleaf `index`; a leaf without subleaves matches any `index` (its
/// `index` field means nothing and KVM may leave anything there).
fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

/// The first feature register in which `saved` sets bits `host` does not. `host` is the
/// CPUID a vCPU of this host has: KVM's supported list after `filter_cpuid` (so bits
/// spry itself sets count as present), set and read back with KVM_GET_CPUID2, as KVM
/// may add bits (PVM's adds SSE3 to AVX and XSAVE in leaf 1, which its
/// KVM_GET_SUPPORTED_CPUID does not report).
pub fn missing_features(
    saved: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Option<MissingFeatures> {
    FEATURE_REGS.iter().find_map(|feature| {
        let wanted = feature
            .reg
            .of(find(saved, feature.function, feature.index)?)
            & !feature.dynamic;
        let offered = find(host, feature.function, feature.index).map_or(0, |e| feature.reg.of(e));
        let bits = wanted & !offered;
        (bits != 0).then_some(MissingFeatures {
            function: feature.function,
            index: feature.index,
            reg: feature.reg,
            bits,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ebx,
            ecx,
            ..Default::default()
        }
    }

    #[test]
    fn test_same_cpuid_lacks_nothing() {
        let cpuid = [leaf(0x1, 0, 0, 0x8000_0001), leaf(0x7, 0, 0x20, 0)];

        assert_eq!(missing_features(&cpuid, &cpuid), None);
    }

    #[test]
    fn test_fewer_features_saved_lacks_nothing() {
        let saved = [leaf(0x7, 0, 0x20, 0)];
        let host = [leaf(0x7, 0, 0x28, 0)];

        assert_eq!(missing_features(&saved, &host), None);
    }

    #[test]
    fn test_avx2_missing_on_host_is_named() {
        // Leaf 7 EBX bit 5 is AVX2.
        let saved = [leaf(0x7, 0, 0x20 | 0x8, 0)];
        let host = [leaf(0x7, 0, 0x8, 0)];

        let missing = missing_features(&saved, &host).unwrap();

        assert_eq!(
            missing.to_string(),
            "the snapshot's CPU has features this host lacks: CPUID 0x7.0 Ebx bits 0x00000020"
        );
    }

    #[test]
    fn test_leaf_absent_on_host_lacks_all_its_bits() {
        let saved = [leaf(0x7, 1, 0, 0), leaf(0x7, 0, 0, 0x10 | 0x2)];

        let missing = missing_features(&saved, &[]).unwrap();

        // OSPKE (bit 4) follows CR4, so only bit 1 counts.
        assert_eq!(
            (missing.function, missing.reg, missing.bits),
            (0x7, Reg::Ecx, 0x2)
        );
    }

    #[test]
    fn test_leaf_without_subleaves_matches_any_index() {
        let saved = [kvm_cpuid_entry2 {
            function: 0x1,
            index: 7,
            ecx: 0x1,
            ..Default::default()
        }];
        let host = [kvm_cpuid_entry2 {
            function: 0x1,
            ecx: 0x1,
            ..Default::default()
        }];

        assert_eq!(missing_features(&saved, &host), None);
    }

    #[test]
    fn test_osxsave_follows_cr4_and_is_not_a_feature() {
        let saved = [leaf(0x1, 0, 0, LEAF1_ECX_OSXSAVE)];
        let host = [leaf(0x1, 0, 0, 0)];

        assert_eq!(missing_features(&saved, &host), None);
    }
}
