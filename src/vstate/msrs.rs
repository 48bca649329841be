//! The vCPU's model-specific registers: which ones KVM can save, reading them in chunks,
//! and writing them back in an order KVM accepts.

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::VcpuFd;

/// The time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// The LAPIC timer's TSC deadline; it counts in the TSC's time, so it is written after it.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// MTRRdefType: spry's boot turns MTRRs on with write-back as the default type.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// MSRs KVM keeps and reads back but leaves out of KVM_GET_MSR_INDEX_LIST: the MTRRs
/// (userspace saves them itself, as QEMU does). Without them a restored guest would run
/// with its memory uncached.
pub const UNLISTED_MSRS: [u32; 28] = [
    MSR_MTRR_DEF_TYPE,
    // Fixed-range MTRRs: 64K_00000, 16K_80000, 16K_A0000, 4K_C0000 to 4K_F8000.
    0x250,
    0x258,
    0x259,
    0x268,
    0x269,
    0x26a,
    0x26b,
    0x26c,
    0x26d,
    0x26e,
    0x26f,
    // Variable-range MTRRs: KVM gives a vCPU 8 base/mask pairs.
    0x200,
    0x201,
    0x202,
    0x203,
    0x204,
    0x205,
    0x206,
    0x207,
    0x208,
    0x209,
    0x20a,
    0x20b,
    0x20c,
    0x20d,
    0x20e,
    0x20f,
];

/// The MSRs to try to save: KVM's list, then each unlisted one it does not name.
pub fn msrs_to_save(listed: &[u32]) -> Vec<u32> {
    let mut all = listed.to_vec();
    all.extend(UNLISTED_MSRS.iter().filter(|index| !listed.contains(index)));
    all
}

/// Errors while reading or writing MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// More MSRs in one call than a `kvm_msrs` can hold.
    #[error("cannot build a kvm_msrs of {0} entries")]
    Build(usize),
    /// KVM_GET_MSRS failed as a whole.
    #[error("KVM_GET_MSRS failed")]
    Get(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS failed as a whole.
    #[error("KVM_SET_MSRS failed")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped at one MSR.
    #[error("KVM refused to set MSR {index:#x} to {data:#x}")]
    Refused {
        /// The MSR's index.
        index: u32,
        /// The value that was refused.
        data: u64,
    },
}

fn entries(indices: &[u32]) -> Vec<kvm_msr_entry> {
    indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect()
}

/// Reads every MSR of `indices` that this vCPU lets KVM_GET_MSRS read, in order.
///
/// KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it read; that
/// one is left out and the read goes on after it, so a list that names MSRs this vCPU's
/// CPUID does not give (KVM_GET_MSR_INDEX_LIST lists every MSR the host could) still
/// yields all the others.
pub fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, MsrError> {
    let mut kept = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let mut msrs =
            Msrs::from_entries(&entries(chunk)).map_err(|_| MsrError::Build(chunk.len()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(MsrError::Get)?;
        kept.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
        // Skip the MSR KVM stopped at, if it stopped early.
        let consumed = if read < chunk.len() {
            read + 1
        } else {
            chunk.len()
        };
        rest = &rest[consumed..];
    }
    Ok(kept)
}

/// `msrs` in the order to write them: the TSC first, the TSC deadline last, the rest as
/// they were read.
pub fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let rank = |entry: &kvm_msr_entry| match entry.index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    };
    let mut ordered = msrs.to_vec();
    // A stable sort keeps the read order within each rank.
    ordered.sort_by_key(rank);
    ordered
}

/// Writes `msrs` in [`restore_order`]; every one must be accepted.
pub fn write_msrs(vcpu: &VcpuFd, msrs: &[kvm_msr_entry]) -> Result<(), MsrError> {
    for chunk in restore_order(msrs).chunks(KVM_MAX_MSR_ENTRIES) {
        let wrapped = Msrs::from_entries(chunk).map_err(|_| MsrError::Build(chunk.len()))?;
        let written = vcpu.set_msrs(&wrapped).map_err(MsrError::Set)?;
        if let Some(refused) = chunk.get(written) {
            return Err(MsrError::Refused {
                index: refused.index,
                data: refused.data,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            ..Default::default()
        }
    }

    #[test]
    fn test_msrs_to_save_adds_mtrrs_once() {
        let listed = [MSR_IA32_TSC, MSR_MTRR_DEF_TYPE];

        let all = msrs_to_save(&listed);

        assert_eq!(&all[..2], &listed);
        assert_eq!(all.len(), 2 + UNLISTED_MSRS.len() - 1);
        assert!(all.contains(&0x20f));
    }

    #[test]
    fn test_restore_order_puts_tsc_first_and_deadline_last() {
        let read = [
            msr(MSR_IA32_TSC_DEADLINE),
            msr(0x174),
            msr(MSR_IA32_TSC),
            msr(0x175),
        ];

        let ordered: Vec<u32> = restore_order(&read).iter().map(|m| m.index).collect();

        assert_eq!(ordered, [MSR_IA32_TSC, 0x174, 0x175, MSR_IA32_TSC_DEADLINE]);
    }
}
