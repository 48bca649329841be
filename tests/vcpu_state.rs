//! A vCPU's state and the VM's irqchip, PIT and clock saved on real KVM, carried
//! through a snapshot file's bytes, and restored into a fresh VM: the registers, MSRs
//! and chips come back, and the guest goes on counting where it stopped.

mod common;

use std::path::Path;

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use spry::arch::x86_64::cpuid_compat::missing_features;
use spry::snapshot::format;
use spry::vstate::msrs::{read_msrs, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, MSR_MTRR_DEF_TYPE};
use spry::vstate::vcpu_state::{VcpuState, VcpuStateSupport};
use spry::vstate::vm_state::{ClockRestore, VmState};

/// Guest RAM of the test VMs.
const MEM_SIZE: usize = 0x10000;
/// Where the guest's code sits; the vCPU starts there in real mode.
const CODE_ADDR: usize = 0x1000;
/// The port the guest reports its count on.
const COUNT_PORT: u16 = 0x10;
/// Real-mode code: `inc ax; out 0x10, al; jmp short -5` (back to `inc ax`).
const COUNTER: [u8; 5] = [0x40, 0xe6, 0x10, 0xeb, 0xfb];
/// MSR_IA32_SYSENTER_CS and MSR_IA32_SYSENTER_ESP: plain read/write MSRs KVM always keeps.
const SYSENTER_CS: u32 = 0x174;
const SYSENTER_ESP: u32 = 0x175;
/// MTRRs enabled (bit 11), write-back (6) as the default type, as spry boots vCPUs.
const MTRR_ON_WRITEBACK: u64 = (1 << 11) | 6;
/// An address above spry's guest memory, as spry's own builder uses for the TSS.
const TSS_ADDR: usize = 0xfffb_d000;

/// A VM with 64 KiB of RAM holding the counter, an in-kernel irqchip (so a LAPIC), a
/// PIT and one vCPU that has not run.
struct TestVm {
    vm: VmFd,
    vcpu: VcpuFd,
    mem: *mut libc::c_void,
}

impl TestVm {
    fn new(kvm: &Kvm) -> TestVm {
        let vm = kvm.create_vm().unwrap();
        // SAFETY: an anonymous private mapping at an address the kernel picks; the result
        // is checked against MAP_FAILED below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        // SAFETY: `mem` is a fresh MEM_SIZE-byte writable mapping and COUNTER fits at
        // CODE_ADDR within it; nothing else refers to it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                COUNTER.as_ptr(),
                mem.cast::<u8>().add(CODE_ADDR),
                COUNTER.len(),
            )
        };
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem as u64,
            flags: 0,
        };
        // SAFETY: `mem` is a valid MEM_SIZE-byte mapping that lives as long as the VM
        // (unmapped in Drop, after the VM fd is closed), and it is this VM's only region.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        vm.set_tss_address(TSS_ADDR).unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        TestVm { vm, vcpu, mem }
    }

    /// Gives the vCPU KVM's CPUID and points it at the counter in real mode, with
    /// register and MSR values that stand out.
    fn start_counter(&self, kvm: &Kvm) {
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        self.vcpu.set_cpuid2(&cpuid).unwrap();
        let mut sregs = self.vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        self.vcpu.set_sregs(&sregs).unwrap();
        let mut regs = self.vcpu.get_regs().unwrap();
        regs.rip = CODE_ADDR as u64;
        regs.rax = 0;
        regs.rbx = 0x1234_5678_9abc_def0;
        regs.r15 = 0x0f0f_0f0f_0f0f_0f0f;
        regs.rflags = 0x2;
        self.vcpu.set_regs(&regs).unwrap();
        let msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: SYSENTER_CS,
                data: 0x10,
                ..Default::default()
            },
            kvm_msr_entry {
                index: SYSENTER_ESP,
                data: 0xdead_b000,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_MTRR_DEF_TYPE,
                data: MTRR_ON_WRITEBACK,
                ..Default::default()
            },
        ])
        .unwrap();
        assert_eq!(self.vcpu.set_msrs(&msrs).unwrap(), 3);
    }

    /// Runs the vCPU to its next count, and returns it.
    fn next_count(&mut self) -> u8 {
        match self.vcpu.run().unwrap() {
            VcpuExit::IoOut(COUNT_PORT, data) => data[0],
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        // SAFETY: `mem` is the MEM_SIZE-byte mapping made in `new`; KVM keeps no use of
        // it once the VM is gone, and a failed unmap only leaks it.
        unsafe { libc::munmap(self.mem, MEM_SIZE) };
    }
}

/// `/dev/kvm`, or `None` with `test` reported skipped.
fn open_kvm(test: &str) -> Option<Kvm> {
    if !Path::new("/dev/kvm").exists() {
        common::skip(test, "no /dev/kvm");
        return None;
    }
    Some(Kvm::new().unwrap())
}

/// Why a vCPU or VM state cannot be saved or restored on this host, when the cause is
/// an ioctl KVM does not offer here. EINVAL is not among them: the pieces that need a
/// capability are probed first, so an EINVAL is state KVM refused, a failure.
fn unsupported(err: &dyn std::error::Error) -> Option<String> {
    let source = std::error::Error::source(err)?;
    let errno = source.downcast_ref::<kvm_ioctls::Error>()?.errno();
    [libc::ENOTTY, libc::ENXIO, libc::EOPNOTSUPP]
        .contains(&errno)
        .then(|| format!("{err} (errno {errno}): not supported by this host's KVM"))
}

/// The value of a save or restore; `None` with `test` reported skipped where this
/// host's KVM lacks the ioctl; any other failure fails the test.
fn or_skip<T, E: std::error::Error>(test: &str, step: &str, result: Result<T, E>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => match unsupported(&e) {
            Some(why) => {
                common::skip(test, &format!("{step}: {why}"));
                None
            }
            None => panic!("{step}: {e}"),
        },
    }
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn test_vcpu_state_round_trips_into_a_fresh_vm() {
    const TEST: &str = "vcpu_state::test_vcpu_state_round_trips_into_a_fresh_vm";
    let Some(kvm) = open_kvm(TEST) else { return };
    let support = VcpuStateSupport::probe(&kvm).unwrap();
    eprintln!(
        "host: xsave {} xcrs {} get_tsc_khz {} tsc_control {}, {} MSRs to try",
        support.xsave,
        support.xcrs,
        support.get_tsc_khz,
        support.tsc_control,
        support.msr_indices.len()
    );
    let mut source = TestVm::new(&kvm);
    source.start_counter(&kvm);
    let counts = [
        source.next_count(),
        source.next_count(),
        source.next_count(),
    ];
    assert_eq!(counts, [1, 2, 3]);

    let Some(saved) = or_skip(TEST, "save", VcpuState::save(&source.vcpu, &support)) else {
        return;
    };
    eprintln!(
        "saved {} of {} MSRs tried, {} CPUID leaves, TSC {:?} kHz",
        saved.msrs.len(),
        support.msr_indices.len(),
        saved.cpuid.len(),
        saved.tsc_khz
    );
    let indices: Vec<String> = saved
        .msrs
        .iter()
        .map(|m| format!("{:#x}", m.index))
        .collect();
    eprintln!("saved MSRs: {}", indices.join(" "));
    let bytes = format::encode(&saved).unwrap();
    let loaded: VcpuState = format::decode(&bytes).unwrap();
    let mut target = TestVm::new(&kvm);
    let restored = loaded.restore(&target.vcpu, &support);
    let Some(()) = or_skip(TEST, "restore", restored) else {
        return;
    };
    let again = VcpuState::save(&target.vcpu, &support).unwrap();

    assert_eq!(loaded, saved);
    assert_eq!(json(&again.regs), json(&saved.regs));
    assert_eq!(json(&again.sregs), json(&saved.sregs));
    assert_eq!(again.fpu, saved.fpu);
    assert_eq!(json(&again.xcrs), json(&saved.xcrs));
    assert_eq!(json(&again.debug_regs), json(&saved.debug_regs));
    assert_eq!(json(&again.mp_state), json(&saved.mp_state));
    assert_eq!(json(&again.vcpu_events), json(&saved.vcpu_events));
    assert_eq!(json(&again.lapic), json(&saved.lapic));
    assert_eq!(json(&again.cpuid), json(&saved.cpuid));
    assert_eq!(again.tsc_khz, saved.tsc_khz);
    // What this host gives a vCPU, read back from one: PVM's KVM_GET_CPUID2 shows far
    // more leaf 1 ECX bits (SSE3, SSSE3, SSE4, AVX, XSAVE...) than its
    // KVM_GET_SUPPORTED_CPUID reported and the vCPU was given.
    let probe = TestVm::new(&kvm);
    probe.start_counter(&kvm);
    let host_cpuid = probe.vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
    assert_eq!(missing_features(&saved.cpuid, host_cpuid.as_slice()), None);
    assert_eq!(saved.msr(SYSENTER_CS), Some(0x10));
    assert_eq!(again.msr(SYSENTER_CS), Some(0x10));
    assert_eq!(again.msr(SYSENTER_ESP), Some(0xdead_b000));
    assert_eq!(again.msr(MSR_MTRR_DEF_TYPE), Some(MTRR_ON_WRITEBACK));
    let saved_tsc = saved.msr(MSR_IA32_TSC).unwrap();
    assert!(again.msr(MSR_IA32_TSC).unwrap() >= saved_tsc);
    let differing: Vec<String> = saved
        .msrs
        .iter()
        .filter(|m| m.index != MSR_IA32_TSC && m.index != MSR_IA32_TSC_DEADLINE)
        .filter(|m| again.msr(m.index) != Some(m.data))
        .map(|m| format!("{:#x}: {:#x} -> {:?}", m.index, m.data, again.msr(m.index)))
        .collect();
    assert!(differing.is_empty(), "MSRs not kept: {differing:?}");
    // The restored guest counts on from where the saved one stopped.
    assert_eq!(target.next_count(), 4);
}

#[test]
fn test_msr_kvm_cannot_read_is_left_out() {
    const TEST: &str = "vcpu_state::test_msr_kvm_cannot_read_is_left_out";
    let Some(kvm) = open_kvm(TEST) else { return };
    let vm = TestVm::new(&kvm);
    vm.start_counter(&kvm);
    // No MSR lives at 0xdead_0000, so KVM_GET_MSRS stops there.
    let tried = [SYSENTER_CS, 0xdead_0000, SYSENTER_ESP];

    let read = read_msrs(&vm.vcpu, &tried).unwrap();

    let got: Vec<(u32, u64)> = read.iter().map(|m| (m.index, m.data)).collect();
    assert_eq!(got, [(SYSENTER_CS, 0x10), (SYSENTER_ESP, 0xdead_b000)]);
}

/// The PIT's channels less the time each count was loaded, which KVM_SET_PIT2 sets to
/// the time of the restore.
fn pit_counts(pit: &kvm_pit_state2) -> serde_json::Value {
    let mut pit = *pit;
    for channel in &mut pit.channels {
        channel.count_load_time = 0;
    }
    json(&pit)
}

#[test]
fn test_vm_state_round_trips_into_a_fresh_vm() {
    const TEST: &str = "vcpu_state::test_vm_state_round_trips_into_a_fresh_vm";
    let Some(kvm) = open_kvm(TEST) else { return };
    let source = TestVm::new(&kvm);
    let mut ioapic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    source.vm.get_irqchip(&mut ioapic).unwrap();
    // Route IRQ 4 (the serial port) to vector 0x24, unmasked, fixed delivery, to APIC 0.
    // SAFETY: KVM filled the `ioapic` member of the union (chip_id is KVM_IRQCHIP_IOAPIC),
    // and a redirection entry is a plain u64 for which every bit pattern is valid.
    unsafe { ioapic.chip.ioapic.redirtbl[4].bits = 0x24 };
    source.vm.set_irqchip(&ioapic).unwrap();
    let mut pit = source.vm.get_pit2().unwrap();
    // Channel 0 in mode 2 (rate generator) at 100 Hz: 1193182 / 100.
    pit.channels[0].mode = 2;
    pit.channels[0].count = 11932;
    source.vm.set_pit2(&pit).unwrap();

    let Some(saved) = or_skip(TEST, "save", VmState::save(&source.vm)) else {
        return;
    };
    let loaded: VmState = format::decode(&format::encode(&saved).unwrap()).unwrap();
    let target = TestVm::new(&kvm);
    let restored = loaded.restore(&target.vm, ClockRestore::Continue);
    let Some(()) = or_skip(TEST, "restore", restored) else {
        return;
    };
    let again = VmState::save(&target.vm).unwrap();

    assert_eq!(json(&again.pic_master), json(&saved.pic_master));
    assert_eq!(json(&again.pic_slave), json(&saved.pic_slave));
    assert_eq!(json(&again.ioapic), json(&saved.ioapic));
    assert_eq!(json(&saved.ioapic), json(&ioapic));
    assert_eq!(pit_counts(&again.pit), pit_counts(&saved.pit));
    assert_eq!(
        (saved.pit.channels[0].mode, saved.pit.channels[0].count),
        (2, 11932)
    );
    // The guest's clock goes on from the saved value: never backwards, and not by more
    // than the second this test could take.
    assert!(again.clock.clock >= saved.clock.clock);
    let advanced = again.clock.clock - saved.clock.clock;
    assert!(advanced < 1_000_000_000, "clock advanced {advanced} ns");
}
