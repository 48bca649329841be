//! CPUID as the guest sees it: KVM's supported list, with the topology made to match
//! the VM (APIC ids, core and thread counts) and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// What the topology leaves must describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's index, which is also its APIC id.
    pub vcpu_id: u8,
    /// vCPUs in the VM (one package).
    pub vcpu_count: u8,
    /// Two hardware threads per core.
    pub smt: bool,
    /// KVM can emulate the TSC-deadline timer.
    pub tsc_deadline: bool,
}

impl Topology {
    fn threads_per_core(&self) -> u32 {
        if self.smt && self.vcpu_count > 1 {
            2
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => {
            Vendor::Intel
        }
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` things (`ceil(log2(n))`).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// AMD's topology leaf: extended APIC id, threads per core, core id.
const AMD_TOPOLOGY_LEAF: u32 = 0x8000_001e;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE: u32 = 8;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites `cpuid` (KVM's supported list) for one vCPU of `topo`.
pub fn filter_cpuid(cpuid: &mut CpuId, topo: Topology) {
    let vendor = vendor(cpuid.as_slice());
    if vendor == Vendor::Amd {
        add_amd_topology_leaf(cpuid);
    }
    let apic_id = u32::from(topo.vcpu_id);
    let count = u32::from(topo.vcpu_count);
    let threads = topo.threads_per_core();
    let cores = (count / threads).max(1);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (apic_id << 24) | (count << 16) | (CLFLUSH_LINE << 8) | (e.ebx & 0xff);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count } else { threads };
                e.eax &= !((0x3f << 26) | (0xfff << 14));
                e.eax |= ((cores - 1) << 26) | ((sharing - 1) << 14);
            }
            0xb | 0x1f => {
                (e.eax, e.ebx, e.ecx) = match e.index {
                    0 => (id_bits(threads), threads, (LEVEL_TYPE_SMT << 8)),
                    1 => (id_bits(count), count, (LEVEL_TYPE_CORE << 8) | 1),
                    i => (0, 0, i & 0xff),
                };
                e.edx = apic_id;
            }
            0x8000_0000 if vendor == Vendor::Amd => {
                e.eax = e.eax.max(AMD_TOPOLOGY_LEAF);
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                // Linux reads an AMD CPU's threads per core only from leaf
                // 0x8000_001e, and only when TOPOEXT says the leaf is there.
                e.ecx |= EXT1_ECX_TOPOEXT;
                if count > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            AMD_TOPOLOGY_LEAF if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = ((threads - 1) << 8) | (apic_id / threads);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// AMD CPUs without TOPOEXT (older ones, and emulated ones such as QEMU TCG's) give
/// KVM no leaf 0x8000_001e to report, and then a guest cannot be told that its
/// vCPUs are threads of shared cores. The leaf only describes; KVM emulates nothing
/// behind it, so spry adds it (filled in by `filter_cpuid`) where it is missing.
fn add_amd_topology_leaf(cpuid: &mut CpuId) {
    if cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == AMD_TOPOLOGY_LEAF)
    {
        return;
    }
    let leaf = kvm_cpuid_entry2 {
        function: AMD_TOPOLOGY_LEAF,
        ..Default::default()
    };
    // A full list (KVM's limit of entries) keeps the topology it had.
    let _ = cpuid.push(leaf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn cpuid_of(vendor: Vendor) -> CpuId {
        let (ebx, edx, ecx) = match vendor {
            Vendor::Intel => (0x756e_6547, 0x4965_6e69, 0x6c65_746e),
            _ => (0x6874_7541, 0x6974_6e65, 0x444d_4163),
        };
        let mut leaf0 = entry(0, 0);
        (leaf0.ebx, leaf0.edx, leaf0.ecx) = (ebx, edx, ecx);
        let mut cache_l1 = entry(4, 0);
        cache_l1.eax = 1 << 5;
        let mut cache_l3 = entry(4, 3);
        cache_l3.eax = 3 << 5;
        CpuId::from_entries(&[
            leaf0,
            entry(1, 0),
            cache_l1,
            cache_l3,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn topo(vcpu_id: u8, vcpu_count: u8, smt: bool) -> Topology {
        Topology {
            vcpu_id,
            vcpu_count,
            smt,
            tsc_deadline: true,
        }
    }

    #[test]
    fn test_leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = cpuid_of(Vendor::Intel);
        filter_cpuid(&mut cpuid, topo(3, 4, false));
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn test_single_vcpu_has_no_htt() {
        let mut cpuid = cpuid_of(Vendor::Intel);
        filter_cpuid(&mut cpuid, topo(0, 1, false));
        assert_eq!(find(&cpuid, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn test_leaf_b_describes_cores_without_smt() {
        let mut cpuid = cpuid_of(Vendor::Intel);
        filter_cpuid(&mut cpuid, topo(2, 4, false));
        let smt = find(&cpuid, 0xb, 0);
        let core = find(&cpuid, 0xb, 1);
        let end = find(&cpuid, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 2));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn test_leaf_b_with_smt_has_two_threads_per_core() {
        let mut cpuid = cpuid_of(Vendor::Intel);
        filter_cpuid(&mut cpuid, topo(1, 4, true));
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx), (1, 2));
    }

    #[test]
    fn test_intel_cache_leaf_counts_cores_and_sharing() {
        let mut cpuid = cpuid_of(Vendor::Intel);
        filter_cpuid(&mut cpuid, topo(0, 4, false));
        let l1 = find(&cpuid, 4, 0);
        let l3 = find(&cpuid, 4, 3);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (3, 0));
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (3, 3));
    }

    #[test]
    fn test_amd_core_count_and_extended_apic_id() {
        let mut cpuid = cpuid_of(Vendor::Amd);
        filter_cpuid(&mut cpuid, topo(5, 8, false));
        assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx & 0xff, 7);
        assert_eq!((find(&cpuid, 0x8000_0008, 0).ecx >> 12) & 0xf, 3);
        assert_eq!(find(&cpuid, 0x8000_001e, 0).eax, 5);
    }

    #[test]
    fn test_amd_without_topology_leaf_gets_one_with_two_threads_per_core() {
        let mut cpuid = CpuId::from_entries(&[
            find(&cpuid_of(Vendor::Amd), 0, 0),
            entry(0x8000_0000, 0),
            entry(0x8000_0001, 0),
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, topo(3, 4, true));
        let topology = find(&cpuid, AMD_TOPOLOGY_LEAF, 0);
        assert_eq!(
            (
                topology.eax,
                (topology.ebx >> 8) & 0xff,
                topology.ebx & 0xff
            ),
            (3, 1, 1)
        );
        assert_ne!(find(&cpuid, 0x8000_0001, 0).ecx & EXT1_ECX_TOPOEXT, 0);
        assert_eq!(find(&cpuid, 0x8000_0000, 0).eax, AMD_TOPOLOGY_LEAF);
    }

    #[test]
    fn test_intel_gets_no_amd_topology_leaf() {
        let mut cpuid = CpuId::from_entries(&[find(&cpuid_of(Vendor::Intel), 0, 0)]).unwrap();
        filter_cpuid(&mut cpuid, topo(0, 2, true));
        assert_eq!(cpuid.as_slice().len(), 1);
    }

    #[test]
    fn test_id_bits() {
        assert_eq!(
            (id_bits(1), id_bits(2), id_bits(3), id_bits(32)),
            (0, 1, 2, 5)
        );
    }
}
