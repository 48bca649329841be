//! The VM-wide state KVM keeps in the kernel: the in-kernel irqchip (both PICs and the
//! IOAPIC), the PIT and the KVM clock, as plain data.

use std::fmt;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// One piece of VM state, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPiece {
    /// The master 8259 PIC.
    PicMaster,
    /// The slave 8259 PIC.
    PicSlave,
    /// The IOAPIC.
    Ioapic,
    /// The 8254 PIT (KVM_{GET,SET}_PIT2).
    Pit,
    /// The KVM clock (KVM_{GET,SET}_CLOCK).
    Clock,
}

impl fmt::Display for VmPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmPiece::PicMaster => "master PIC",
            VmPiece::PicSlave => "slave PIC",
            VmPiece::Ioapic => "IOAPIC",
            VmPiece::Pit => "PIT",
            VmPiece::Clock => "KVM clock",
        })
    }
}

/// Errors while saving or restoring the VM's in-kernel state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    /// A KVM_GET_* ioctl failed.
    #[error("cannot save the VM's {0}")]
    Save(VmPiece, #[source] kvm_ioctls::Error),
    /// A KVM_SET_* ioctl failed.
    #[error("cannot restore the VM's {0}")]
    Restore(VmPiece, #[source] kvm_ioctls::Error),
}

/// How the KVM clock comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockRestore {
    /// Where it stopped: the guest sees no time pass while it was saved.
    Continue,
    /// Advanced by the host's real time since the save, where the saved clock carries
    /// KVM's realtime pairing (Firecracker's `clock_realtime`); else as `Continue`.
    Realtime,
}

/// The VM's irqchip, PIT and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master PIC (IRQs 0-7).
    pub pic_master: kvm_irqchip,
    /// The slave PIC (IRQs 8-15).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC's registers and redirection table.
    pub ioapic: kvm_irqchip,
    /// The PIT's three channels.
    pub pit: kvm_pit_state2,
    /// The KVM clock, in guest nanoseconds, with KVM's host pairing.
    pub clock: kvm_clock_data,
}

fn get_chip(vm: &VmFd, chip_id: u32, piece: VmPiece) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| VmStateError::Save(piece, e))?;
    Ok(chip)
}

impl VmState {
    /// Saves the VM's in-kernel state. Every vCPU must be paused, out of KVM_RUN.
    pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
        let pit = vm
            .get_pit2()
            .map_err(|e| VmStateError::Save(VmPiece::Pit, e))?;
        let clock = vm
            .get_clock()
            .map_err(|e| VmStateError::Save(VmPiece::Clock, e))?;
        Ok(VmState {
            pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER, VmPiece::PicMaster)?,
            pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, VmPiece::PicSlave)?,
            ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC, VmPiece::Ioapic)?,
            pit,
            clock,
        })
    }

    /// Restores this state into `vm`, which has its irqchip and PIT created and no vCPU
    /// run yet.
    pub fn restore(&self, vm: &VmFd, clock_restore: ClockRestore) -> Result<(), VmStateError> {
        let restored = |piece: VmPiece| move |e| VmStateError::Restore(piece, e);
        vm.set_pit2(&self.pit).map_err(restored(VmPiece::Pit))?;
        vm.set_clock(&self.clock_to_set(clock_restore))
            .map_err(restored(VmPiece::Clock))?;
        vm.set_irqchip(&self.pic_master)
            .map_err(restored(VmPiece::PicMaster))?;
        vm.set_irqchip(&self.pic_slave)
            .map_err(restored(VmPiece::PicSlave))?;
        vm.set_irqchip(&self.ioapic)
            .map_err(restored(VmPiece::Ioapic))?;
        Ok(())
    }

    /// The clock to hand KVM_SET_CLOCK: KVM takes only KVM_CLOCK_REALTIME as a flag, and
    /// with it adds the real time passed since `realtime`.
    fn clock_to_set(&self, clock_restore: ClockRestore) -> kvm_clock_data {
        let realtime =
            clock_restore == ClockRestore::Realtime && self.clock.flags & KVM_CLOCK_REALTIME != 0;
        kvm_clock_data {
            clock: self.clock.clock,
            flags: if realtime { KVM_CLOCK_REALTIME } else { 0 },
            realtime: if realtime { self.clock.realtime } else { 0 },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::KVM_CLOCK_TSC_STABLE;

    use super::*;

    fn state_with_clock(flags: u32) -> VmState {
        VmState {
            pic_master: kvm_irqchip::default(),
            pic_slave: kvm_irqchip::default(),
            ioapic: kvm_irqchip::default(),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 5_000_000_000,
                flags,
                realtime: 1_700_000_000_000_000_000,
                host_tsc: 42,
                ..Default::default()
            },
        }
    }

    #[test]
    fn test_continue_sets_the_saved_clock_without_flags() {
        let state = state_with_clock(KVM_CLOCK_REALTIME | KVM_CLOCK_TSC_STABLE);

        let clock = state.clock_to_set(ClockRestore::Continue);

        assert_eq!(
            (clock.clock, clock.flags, clock.realtime),
            (5_000_000_000, 0, 0)
        );
    }

    #[test]
    fn test_realtime_keeps_the_realtime_pairing() {
        let state = state_with_clock(KVM_CLOCK_REALTIME | KVM_CLOCK_TSC_STABLE);

        let clock = state.clock_to_set(ClockRestore::Realtime);

        assert_eq!(clock.flags, KVM_CLOCK_REALTIME);
        assert_eq!(clock.realtime, 1_700_000_000_000_000_000);
    }

    #[test]
    fn test_realtime_without_pairing_continues() {
        let state = state_with_clock(KVM_CLOCK_TSC_STABLE);

        let clock = state.clock_to_set(ClockRestore::Realtime);

        assert_eq!((clock.flags, clock.realtime), (0, 0));
    }

    #[test]
    fn test_vm_state_json_round_trip() {
        let state = state_with_clock(KVM_CLOCK_TSC_STABLE);

        let json = serde_json::to_string(&state).unwrap();
        let back: VmState = serde_json::from_str(&json).unwrap();

        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
