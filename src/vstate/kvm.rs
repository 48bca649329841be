//! `/dev/kvm`: open it, check the API version and the capabilities spry relies on.

use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Errors while opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm is missing or not accessible.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("KVM API version {0}, spry needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A needed capability is missing.
    #[error("KVM lacks the {0} capability spry needs")]
    MissingCapability(&'static str),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot get KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Capabilities the boot path, the irqchip and the virtio devices rely on.
const REQUIRED_CAPS: [(Cap, &str); 9] = [
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Ioeventfd, "IOEVENTFD"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::Pit2, "PIT2"),
    (Cap::PitState2, "PIT_STATE2"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "EXT_CPUID"),
];

/// An open, checked KVM.
#[derive(Debug)]
pub struct KvmContext {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
    /// CPUID leaves KVM can give a guest.
    pub supported_cpuid: CpuId,
    /// KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Most vCPUs KVM allows in one VM.
    pub max_vcpus: usize,
}

impl KvmContext {
    /// Opens and checks `/dev/kvm`.
    pub fn new() -> Result<KvmContext, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if u32::try_from(version).ok() != Some(KVM_API_VERSION) {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some((_, name)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(KvmError::MissingCapability(name));
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        Ok(KvmContext {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            max_vcpus: kvm.get_max_vcpus(),
            supported_cpuid,
            kvm,
        })
    }
}
