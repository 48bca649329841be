//! A vCPU's state saved on real KVM, carried through a snapshot file's bytes, and
//! restored into a vCPU of a fresh VM: the registers and MSRs come back, and the guest
//! goes on counting where it stopped.

mod common;

use std::path::Path;

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use spry::snapshot::format;
use spry::vstate::msrs::{MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE};
use spry::vstate::vcpu_state::{VcpuState, VcpuStateError, VcpuStateSupport};

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
/// An address above spry's guest memory, as spry's own builder uses for the TSS.
const TSS_ADDR: usize = 0xfffb_d000;

/// A VM with 64 KiB of RAM holding the counter, an in-kernel irqchip (so a LAPIC) and
/// one vCPU that has not run.
struct TestVm {
    _vm: VmFd,
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
        let vcpu = vm.create_vcpu(0).unwrap();
        TestVm { _vm: vm, vcpu, mem }
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
        ])
        .unwrap();
        assert_eq!(self.vcpu.set_msrs(&msrs).unwrap(), 2);
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

/// Why a vCPU state cannot be saved or restored on this host, when the cause is an
/// ioctl KVM does not offer here.
fn unsupported(err: &VcpuStateError) -> Option<String> {
    let source = std::error::Error::source(err)?;
    let errno = source.downcast_ref::<kvm_ioctls::Error>()?.errno();
    [libc::EINVAL, libc::ENOTTY, libc::ENXIO, libc::EOPNOTSUPP]
        .contains(&errno)
        .then(|| format!("{err} (errno {errno}): not supported by this host's KVM"))
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn test_vcpu_state_round_trips_into_a_fresh_vm() {
    const TEST: &str = "vcpu_state::test_vcpu_state_round_trips_into_a_fresh_vm";
    if !Path::new("/dev/kvm").exists() {
        common::skip(TEST, "no /dev/kvm");
        return;
    }
    let kvm = Kvm::new().unwrap();
    let support = VcpuStateSupport::probe(&kvm).unwrap();
    eprintln!(
        "host: xsave {} xcrs {} get_tsc_khz {} tsc_control {}, {} MSRs listed",
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

    let saved = match VcpuState::save(&source.vcpu, &support) {
        Ok(state) => state,
        Err(e) => match unsupported(&e) {
            Some(why) => return common::skip(TEST, &why),
            None => panic!("save: {e}"),
        },
    };
    eprintln!(
        "saved {} of {} listed MSRs, {} CPUID leaves, TSC {:?} kHz",
        saved.msrs.len(),
        support.msr_indices.len(),
        saved.cpuid.len(),
        saved.tsc_khz
    );
    let bytes = format::encode(&saved).unwrap();
    let loaded: VcpuState = format::decode(&bytes).unwrap();
    let mut target = TestVm::new(&kvm);
    if let Err(e) = loaded.restore(&target.vcpu, &support) {
        match unsupported(&e) {
            Some(why) => return common::skip(TEST, &why),
            None => panic!("restore: {e}"),
        }
    }
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
    assert_eq!(saved.msr(SYSENTER_CS), Some(0x10));
    assert_eq!(again.msr(SYSENTER_CS), Some(0x10));
    assert_eq!(again.msr(SYSENTER_ESP), Some(0xdead_b000));
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
