//! The KVM objects every VM needs whatever it will run: the checked `/dev/kvm`, an
//! empty VM and what KVM can save of a vCPU. An API-driven spry makes them while it
//! waits for its first request, so `InstanceStart` and `PUT /snapshot/load` find
//! them ready instead of spending their first ~0.45 ms in these ioctls (our PVM host).
//!
//! Only the empty VM is made ahead: guest memory must be registered before the
//! irqchip exists (a memory slot added after it costs milliseconds), and memory is
//! not known until the request says what to boot or restore.

use std::sync::Arc;

use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::vcpu_state::{VcpuStateError, VcpuStateSupport};
use crate::vstate::vm::{Vm, VmError};

/// Errors while preparing KVM.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// `/dev/kvm` could not be opened or checked.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// What KVM can save of a vCPU could not be asked.
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
}

/// A checked KVM handle and an empty VM (no memory, no irqchip yet).
#[derive(Debug)]
pub struct PreparedKvm {
    /// The checked `/dev/kvm`.
    pub kvm: KvmContext,
    /// The VM, still empty.
    pub vm: Vm,
    /// What KVM can save of a vCPU (for snapshots).
    pub vcpu_support: Arc<VcpuStateSupport>,
}

impl PreparedKvm {
    /// Opens KVM and creates an empty VM.
    pub fn new() -> Result<PreparedKvm, PrepareError> {
        let kvm = KvmContext::new()?;
        let vm = Vm::new(&kvm.kvm)?;
        let vcpu_support = Arc::new(VcpuStateSupport::probe(&kvm.kvm)?);
        Ok(PreparedKvm {
            kvm,
            vm,
            vcpu_support,
        })
    }

    /// `prepared` if there is one, else made now.
    pub fn or_new(prepared: Option<PreparedKvm>) -> Result<PreparedKvm, PrepareError> {
        match prepared {
            Some(ready) => Ok(ready),
            None => PreparedKvm::new(),
        }
    }
}
