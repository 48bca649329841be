//! KVM state: the KVM handle, the VM, guest memory and vCPUs.

pub mod kvm;
pub mod memory;
pub mod msrs;
pub mod prepared;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
