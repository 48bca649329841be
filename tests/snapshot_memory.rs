//! Guest memory saved on real KVM: a Full memory file, then a Diff of only the pages
//! KVM's dirty log names, layered on the Full; the result, mapped copy-on-write into
//! a fresh VM with the vCPU's state, runs on from where the guest stopped. Also how
//! long mapping a memory file takes for small and large guests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use spry::snapshot::memory::{self, DirtyPages, MemoryState, PAGE_SIZE};
use spry::vstate::memory::{create_guest_memory, GuestMemory};
use spry::vstate::vcpu_state::{VcpuState, VcpuStateSupport};
use spry::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

const MIB: u64 = 1 << 20;
/// Guest RAM of the test VMs.
const MEM_SIZE: u64 = 16 * MIB;
/// Where the guest's code sits; the vCPU starts there in real mode.
const CODE_ADDR: u64 = 0x1000;
/// Where the guest keeps its count in memory.
const COUNT_ADDR: u64 = 0x2000;
/// The port the guest reports its count on.
const COUNT_PORT: u16 = 0x10;
/// Real-mode code: `inc ax; mov [0x2000], ax; out 0x10, al; jmp short -8` (back to
/// `inc ax`): the count goes to memory, then to the port.
const COUNTER: [u8; 8] = [0x40, 0xa3, 0x00, 0x20, 0xe6, 0x10, 0xeb, 0xf8];

/// A VM of spry's own making (memory, dirty tracking, irqchip) with one vCPU.
struct TestVm {
    vm: Vm,
    vcpu: VcpuFd,
}

impl TestVm {
    fn new(mem: &GuestMemory) -> TestVm {
        let kvm = Kvm::new().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        vm.register_memory(mem, true).unwrap();
        vm.setup_irqchip().unwrap();
        let vcpu = vm.fd().create_vcpu(0).unwrap();
        TestVm { vm, vcpu }
    }

    /// Points the vCPU at the counter in real mode.
    fn start_counter(&self, kvm: &Kvm) {
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        self.vcpu.set_cpuid2(&cpuid).unwrap();
        let mut sregs = self.vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.base = 0;
        sregs.ds.selector = 0;
        self.vcpu.set_sregs(&sregs).unwrap();
        let mut regs = self.vcpu.get_regs().unwrap();
        regs.rip = CODE_ADDR;
        regs.rax = 0;
        regs.rflags = 0x2;
        self.vcpu.set_regs(&regs).unwrap();
    }

    /// Runs the vCPU to its next count, and returns it.
    fn next_count(&mut self) -> u8 {
        match self.vcpu.run().unwrap() {
            VcpuExit::IoOut(COUNT_PORT, data) => data[0],
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn have_kvm(test: &str) -> bool {
    let present = Path::new("/dev/kvm").exists();
    if !present {
        common::skip(test, "no /dev/kvm");
    }
    present
}

fn count_in_memory(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(COUNT_ADDR)).unwrap()
}

fn all_of(mem: &GuestMemory) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(MEM_SIZE).unwrap()];
    mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    bytes
}

#[test]
fn test_full_then_diff_restores_a_guest_that_counts_on() {
    const TEST: &str = "snapshot_memory::test_full_then_diff_restores_a_guest_that_counts_on";
    if !have_kvm(TEST) {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let support = VcpuStateSupport::probe(&kvm).unwrap();
    let dir = TempDir::new().unwrap();
    let (full, diff) = (
        dir.as_path().join("mem.full"),
        dir.as_path().join("mem.diff"),
    );
    let mem = create_guest_memory(MEM_SIZE).unwrap();
    mem.write_slice(&COUNTER, GuestAddress(CODE_ADDR)).unwrap();
    let mut source = TestVm::new(&mem);
    source.start_counter(&kvm);
    let counts = [source.next_count(), source.next_count()];
    assert_eq!(counts, [1, 2]);

    // Full: the dirty log restarts from here.
    let _ = DirtyPages::take(source.vm.fd(), &mem).unwrap();
    memory::write_full(&mem, &full).unwrap();
    let more = [
        source.next_count(),
        source.next_count(),
        source.next_count(),
    ];
    assert_eq!(more, [3, 4, 5]);
    let dirty = DirtyPages::take(source.vm.fd(), &mem).unwrap();
    let diff_stats = memory::write_diff(&mem, &dirty, &diff).unwrap();
    let vcpu_state = VcpuState::save(&source.vcpu, &support).unwrap();
    memory::apply_diff(&full, &diff).unwrap();
    let restored = memory::restore(&full, &MemoryState::of(&mem)).unwrap();
    let mut target = TestVm::new(&restored);
    vcpu_state.restore(&target.vcpu, &support).unwrap();

    eprintln!(
        "{} pages dirty after the Full, {} written to the Diff",
        dirty.count(),
        diff_stats.pages_written
    );
    assert_eq!(dirty.count(), 1, "only the count's page changed");
    assert_eq!(diff_stats.pages_written, 1);
    assert_eq!(count_in_memory(&restored), 5);
    assert!(all_of(&restored) == all_of(&mem), "restored memory differs");
    assert_eq!(target.next_count(), 6);
    assert_eq!(count_in_memory(&restored), 6);
    assert_eq!(count_in_memory(&mem), 5, "the source's memory is its own");
}

/// Time to map a `size`-byte memory file as guest memory, best of three.
fn restore_time(dir: &Path, size: u64) -> Duration {
    let path = dir.join(format!("mem-{}", size >> 20));
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let state = MemoryState::of(&create_guest_memory(size).unwrap());
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let mem = memory::restore(&path, &state).unwrap();
            let took = started.elapsed();
            drop(mem);
            took
        })
        .min()
        .unwrap()
}

#[test]
fn test_restore_time_does_not_grow_with_memory() {
    let dir = TempDir::new().unwrap();

    let small = restore_time(dir.as_path(), 128 * MIB);
    let large = restore_time(dir.as_path(), 4096 * MIB);

    eprintln!("mapping a memory file: 128 MiB {small:?}, 4 GiB {large:?}");
    // Mapping is lazy: 32 times the memory must not cost anything like 32 times the
    // time; a few milliseconds of noise on a loaded host are allowed.
    assert!(
        large < small * 4 + Duration::from_millis(5),
        "128 MiB {small:?}, 4 GiB {large:?}"
    );
    assert_eq!(PAGE_SIZE, 4096);
}
