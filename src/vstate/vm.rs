//! The KVM VM: guest memory slots, the in-kernel irqchip and PIT, irqfds.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::KVM_TSS_ADDR;
use crate::vstate::memory::GuestMemory;

/// Errors while setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// A memory slot was refused.
    #[error("cannot register guest memory slot {slot} ({size_mib} MiB at {guest_addr:#x})")]
    MemorySlot {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        guest_addr: u64,
        /// Size.
        size_mib: u64,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host address of a region could not be resolved.
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    /// Setting the TSS address failed.
    #[error("cannot set the TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// The thread creating the PIT panicked.
    #[error("the thread creating the PIT panicked")]
    PitThread,
    /// KVM_IRQFD failed.
    #[error("cannot register an irqfd for GSI {gsi}")]
    Irqfd {
        /// The interrupt line.
        gsi: u32,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates an empty VM.
    pub fn new(kvm: &Kvm) -> Result<Vm, VmError> {
        Ok(Vm {
            fd: kvm.create_vm().map_err(VmError::Create)?,
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot. Call this before
    /// [`Vm::setup_irqchip`]: slot changes after the irqchip exists cost milliseconds.
    pub fn register_memory(
        &self,
        mem: &GuestMemory,
        track_dirty_pages: bool,
    ) -> Result<(), VmError> {
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let guest_addr = region.start_addr().0;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::HostAddress(guest_addr))?;
            let memory_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: guest_addr,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags,
            };
            // The Vmm owns both `mem` and the VM and drops the VM first.
            // SAFETY: `host..host + len` is a live mapping owned by `mem`, kept for the
            // VM's lifetime; GuestMemoryMmap regions never overlap, so slots never alias.
            unsafe { self.fd.set_user_memory_region(memory_region) }.map_err(|source| {
                VmError::MemorySlot {
                    slot,
                    guest_addr,
                    size_mib: region.len() >> 20,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Creates the in-kernel LAPICs/IOAPIC/PIC.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        let tss = usize::try_from(KVM_TSS_ADDR).unwrap_or(usize::MAX);
        self.fd.set_tss_address(tss).map_err(VmError::Tss)?;
        self.fd.create_irq_chip().map_err(VmError::Irqchip)
    }

    /// Creates the in-kernel PIT (after [`Vm::setup_irqchip`]). Holding the VM's lock,
    /// the kernel waits for kthreadd to create the PIT's worker thread and for the
    /// grace periods of two I/O bus registrations (0.1 to 4 ms on the development
    /// host), so the builder does this on a thread of its own while it loads the
    /// kernel and sets up the devices.
    pub fn create_pit(&self) -> Result<(), VmError> {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::Pit)
    }

    /// Makes writes to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }
}
