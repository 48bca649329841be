//! vCPUs: set up for the 64-bit entry, then one thread each running KVM_RUN as an
//! explicit state machine (running, paused, exited) driven by events from the VMM.
//!
//! A vCPU thread only runs the guest and dispatches port/MMIO exits to the buses. It
//! never blocks on I/O and never exits the process: it records why the VM must stop
//! in the [`ExitEvent`] and returns.

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::cpuid::{filter_cpuid, Topology};
use crate::arch::x86_64::regs;
use crate::devices::bus::DeviceBuses;
use crate::exit::{hex_bytes, ExitEvent, ExitReason};
use crate::host::HostKvm;
use crate::metrics::VcpuExitCounters;
use crate::seccomp::{Filter, ThreadKind};
use crate::vstate::vcpu_state::{VcpuState as SavedVcpu, VcpuStateError, VcpuStateSupport};

/// Errors while creating, configuring or driving a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {index}")]
    Create {
        /// vCPU index.
        index: u8,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM_SET_* call failed during configuration.
    #[error("cannot set {what} of vCPU {index}")]
    Configure {
        /// Which state.
        what: &'static str,
        /// vCPU index.
        index: u8,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {index}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        /// vCPU index.
        index: u8,
        /// How many KVM took.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// Building boot state failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the VMM asks of a vCPU thread.
#[derive(Debug, Clone, PartialEq)]
pub enum VcpuEvent {
    /// Stop running guest code until `Resume`.
    Pause,
    /// Run guest code again.
    Resume,
    /// Leave the thread.
    Finish,
    /// Save the vCPU's whole state (paused vCPUs only): KVM wants a vCPU's ioctls
    /// from the thread that runs it.
    SaveState(Arc<VcpuStateSupport>),
    /// Load a saved state (paused vCPUs only; a rollback), on the same terms.
    RestoreState(Arc<SavedVcpu>, Arc<VcpuStateSupport>),
}

/// What a vCPU thread answers to `Pause`, `Resume` and `SaveState`.
#[derive(Debug, Clone, PartialEq)]
pub enum VcpuResponse {
    /// The vCPU is paused.
    Paused,
    /// The vCPU is running.
    Resumed,
    /// The vCPU's state, or why it could not be saved.
    Saved(Box<Result<SavedVcpu, String>>),
    /// The saved state is loaded, or why it could not be.
    Restored(Result<(), String>),
}

/// Signal used to kick a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|flag| {
        let ptr = flag.get();
        if !ptr.is_null() {
            // `Vcpu::run_thread` sets the pointer and clears it before its VcpuFd goes.
            // SAFETY: `ptr` is `immediate_exit` in this thread's live, mapped `kvm_run`;
            // a byte store cannot tear.
            unsafe { ptr.write_volatile(1) };
        }
    });
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal);
    });
    result
}

/// A configured vCPU, not yet running.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    buses: Arc<DeviceBuses>,
    exit: Arc<ExitEvent>,
    counters: Arc<VcpuExitCounters>,
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`.
    pub fn new(
        vm: &VmFd,
        index: u8,
        buses: Arc<DeviceBuses>,
        exit: Arc<ExitEvent>,
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu {
            index,
            fd,
            buses,
            exit,
            counters: Arc::default(),
        })
    }

    fn set<T>(&self, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Configure {
            what,
            index: self.index,
            source,
        })
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; registers for the 64-bit entry at
    /// `entry` on the boot vCPU only (the others wait for INIT/SIPI from the guest).
    pub fn configure(
        &self,
        supported: &CpuId,
        topology: Topology,
        entry: Option<u64>,
    ) -> Result<(), VcpuError> {
        let mut cpuid = supported.clone();
        filter_cpuid(&mut cpuid, topology);
        self.set("CPUID", self.fd.set_cpuid2(&cpuid))?;

        let msrs = regs::boot_msrs()?;
        let set = self.set("MSRs", self.fd.set_msrs(&msrs))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                index: self.index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.set("FPU", self.fd.set_fpu(&regs::boot_fpu()))?;
        let lapic = self.set("LAPIC", self.fd.get_lapic())?;
        self.set("LAPIC", self.fd.set_lapic(&regs::boot_lapic(lapic)))?;

        if let Some(entry) = entry {
            let sregs = self.set("special registers", self.fd.get_sregs())?;
            self.set(
                "special registers",
                self.fd.set_sregs(&regs::boot_sregs(sregs)),
            )?;
            self.set("registers", self.fd.set_regs(&regs::boot_regs(entry)))?;
        }
        Ok(())
    }

    /// The CPUID this host gives a vCPU: `supported` set on this vCPU (which has
    /// not run) and read back, with what KVM adds on its own.
    pub fn host_cpuid(&self, supported: &CpuId) -> Result<Vec<kvm_cpuid_entry2>, VcpuError> {
        self.set("CPUID", self.fd.set_cpuid2(supported))?;
        let cpuid = self.set("CPUID", self.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?;
        Ok(cpuid.as_slice().to_vec())
    }

    /// Gives this vCPU, which has not run, a saved state.
    pub fn restore_state(
        &self,
        state: &SavedVcpu,
        support: &VcpuStateSupport,
    ) -> Result<(), VcpuStateError> {
        state.restore(&self.fd, support)
    }

    /// Starts the vCPU thread, running guest code at once unless `paused`; the
    /// thread installs `seccomp` (when filters are on) before its first `KVM_RUN`.
    pub fn start(self, seccomp: Option<Filter>, paused: bool) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let (event_tx, event_rx) = channel();
        let (response_tx, response_rx) = channel();
        let counters = self.counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("spry-vcpu{index}"))
            .spawn(move || self.run_thread(seccomp, paused, event_rx, response_tx))
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            events: event_tx,
            responses: response_rx,
            counters,
        })
    }

    fn run_thread(
        mut self,
        seccomp: Option<Filter>,
        paused: bool,
        events: Receiver<VcpuEvent>,
        responses: Sender<VcpuResponse>,
    ) {
        if let Some(filter) = &seccomp {
            let label = format!("vCPU {}", self.index);
            if let Err(e) = crate::seccomp::apply(filter, ThreadKind::Vcpu, &label) {
                self.exit.request(ExitReason::VcpuError {
                    vcpu: self.index,
                    detail: crate::error_line(&e),
                });
                return;
            }
        }
        let flag: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|f| f.set(flag));
        if self.index == 0 {
            // The VMM's own share of boot time ends here.
            log::info!(
                "vCPU 0 entering the guest {} us after spry started",
                crate::clock::since_start().as_micros()
            );
        }
        let mut state = if paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        loop {
            state = match state {
                VcpuState::Running => self.running(&events, &responses),
                VcpuState::Paused => self.paused(&events, &responses),
                VcpuState::Exited => break,
            };
        }
        IMMEDIATE_EXIT.with(|f| f.set(std::ptr::null_mut()));
        log::debug!("vCPU {} thread done", self.index);
    }

    /// Applies pending events; `Some(next)` when the vCPU must leave `Running`.
    fn check_events(
        &self,
        events: &Receiver<VcpuEvent>,
        responses: &Sender<VcpuResponse>,
    ) -> Option<VcpuState> {
        loop {
            match events.try_recv() {
                Ok(VcpuEvent::Pause) => {
                    self.tell_guest_paused();
                    let _ = responses.send(VcpuResponse::Paused);
                    return Some(VcpuState::Paused);
                }
                Ok(VcpuEvent::Resume) => {
                    let _ = responses.send(VcpuResponse::Resumed);
                }
                Ok(VcpuEvent::SaveState(_)) => {
                    let refused = Err(format!("vCPU {} is running, not paused", self.index));
                    let _ = responses.send(VcpuResponse::Saved(Box::new(refused)));
                }
                Ok(VcpuEvent::RestoreState(..)) => {
                    let refused = Err(format!("vCPU {} is running, not paused", self.index));
                    let _ = responses.send(VcpuResponse::Restored(refused));
                }
                Ok(VcpuEvent::Finish) | Err(TryRecvError::Disconnected) => {
                    return Some(VcpuState::Exited)
                }
                Err(TryRecvError::Empty) => return None,
            }
        }
    }

    /// Sets kvmclock's "guest stopped" flag so the guest's soft-lockup watchdog does
    /// not mistake the pause for a hang. Guests without kvmclock make KVM answer
    /// EINVAL, and hosts without it ENOTTY; both are fine.
    fn tell_guest_paused(&self) {
        if let Err(e) = self.fd.kvmclock_ctrl() {
            log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.index);
        }
    }

    fn running(
        &mut self,
        events: &Receiver<VcpuEvent>,
        responses: &Sender<VcpuResponse>,
    ) -> VcpuState {
        // An event sent before this thread published its immediate-exit flag had its
        // kick lost; look before entering the guest.
        if let Some(next) = self.check_events(events, responses) {
            return next;
        }
        loop {
            match self.run_once() {
                Emulation::Continue => {}
                Emulation::Interrupted => {
                    self.fd.set_kvm_immediate_exit(0);
                    if let Some(next) = self.check_events(events, responses) {
                        return next;
                    }
                }
                Emulation::Stop(reason) => {
                    log::info!("{reason}");
                    self.exit.request(reason);
                    return VcpuState::Exited;
                }
                Emulation::Stopped => return VcpuState::Exited,
            }
        }
    }

    fn paused(
        &mut self,
        events: &Receiver<VcpuEvent>,
        responses: &Sender<VcpuResponse>,
    ) -> VcpuState {
        loop {
            match events.recv() {
                Ok(VcpuEvent::Resume) => {
                    let _ = responses.send(VcpuResponse::Resumed);
                    return VcpuState::Running;
                }
                Ok(VcpuEvent::Pause) => {
                    let _ = responses.send(VcpuResponse::Paused);
                }
                Ok(VcpuEvent::SaveState(support)) => {
                    let saved = SavedVcpu::save(&self.fd, &support)
                        .map_err(|e| format!("vCPU {}: {}", self.index, crate::error_line(&e)));
                    let _ = responses.send(VcpuResponse::Saved(Box::new(saved)));
                }
                Ok(VcpuEvent::RestoreState(state, support)) => {
                    let restored = state
                        .restore_in_place(&self.fd, &support)
                        .map_err(|e| format!("vCPU {}: {}", self.index, crate::error_line(&e)));
                    let _ = responses.send(VcpuResponse::Restored(restored));
                }
                Ok(VcpuEvent::Finish) | Err(_) => return VcpuState::Exited,
            }
        }
    }

    /// One KVM_RUN and the handling of its exit.
    fn run_once(&mut self) -> Emulation {
        let index = self.index;
        let counters = &self.counters;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Emulation::Interrupted
            }
            Err(e) => {
                VcpuExitCounters::count(&counters.failures);
                return Emulation::Stop(ExitReason::VcpuError {
                    vcpu: index,
                    detail: format!("KVM_RUN failed: {e}"),
                });
            }
        };
        let buses = &self.buses;
        match exit {
            VcpuExit::IoIn(port, data) => {
                VcpuExitCounters::count(&counters.io_in);
                if !buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    log::trace!("vCPU {index}: unhandled port read {port:#x}");
                }
                Emulation::Continue
            }
            VcpuExit::IoOut(port, data) => {
                VcpuExitCounters::count(&counters.io_out);
                if !buses.pio.write(u64::from(port), data) {
                    log::trace!("vCPU {index}: unhandled port write {port:#x} {data:x?}");
                }
                self.after_write()
            }
            VcpuExit::MmioRead(addr, data) => {
                VcpuExitCounters::count(&counters.mmio_read);
                if !buses.mmio.read(addr, data) {
                    data.fill(0xff);
                    log::debug!("vCPU {index}: unhandled MMIO read at {addr:#x}");
                }
                Emulation::Continue
            }
            VcpuExit::MmioWrite(addr, data) => {
                VcpuExitCounters::count(&counters.mmio_write);
                if !buses.mmio.write(addr, data) {
                    log::debug!("vCPU {index}: unhandled MMIO write at {addr:#x}");
                }
                self.after_write()
            }
            VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Emulation::Continue,
            VcpuExit::Shutdown => Emulation::Stop(ExitReason::TripleFault { vcpu: index }),
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_RESET => Emulation::Stop(ExitReason::GuestReset),
                KVM_SYSTEM_EVENT_SHUTDOWN => Emulation::Stop(ExitReason::GuestReset),
                KVM_SYSTEM_EVENT_CRASH => Emulation::Stop(ExitReason::EmulationFailure {
                    vcpu: index,
                    detail: "guest crash system event".into(),
                }),
                other => Emulation::Stop(ExitReason::VcpuError {
                    vcpu: index,
                    detail: format!("unexpected system event {other}"),
                }),
            },
            VcpuExit::InternalError => {
                VcpuExitCounters::count(&counters.failures);
                Emulation::Stop(self.internal_error())
            }
            VcpuExit::FailEntry(reason, cpu) => {
                VcpuExitCounters::count(&counters.failures);
                Emulation::Stop(fail_entry(index, HostKvm::detect(), reason, cpu))
            }
            other => {
                VcpuExitCounters::count(&counters.failures);
                Emulation::Stop(ExitReason::VcpuError {
                    vcpu: index,
                    detail: format!("unexpected KVM exit {other:?}"),
                })
            }
        }
    }

    /// After a device write: stop if the device asked the VM to stop.
    fn after_write(&self) -> Emulation {
        if self.exit.is_requested() {
            Emulation::Stopped
        } else {
            Emulation::Continue
        }
    }

    /// Why KVM_EXIT_INTERNAL_ERROR stopped the vCPU, with the RIP and, for an
    /// emulation failure, the instruction bytes KVM reports (Linux 5.14 and later).
    fn internal_error(&mut self) -> ExitReason {
        // `emulation_failure` is KVM_EXIT_INTERNAL_ERROR's layout, which extends
        // `internal` (suberror, ndata, then data[0] = flags, data[1..3] = the instruction
        // bytes); it is only trusted below as far as `ndata` says.
        // SAFETY: every member of the exit union is plain integers, valid for any bit
        // pattern.
        let failure = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.emulation_failure };
        let has_bytes = failure.suberror == KVM_INTERNAL_ERROR_EMULATION
            && failure.ndata >= 3
            && failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let bytes = if has_bytes {
            // SAFETY: the union has one member, a struct of plain bytes.
            let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
            let len = usize::from(insn.insn_size).min(insn.insn_bytes.len());
            insn.insn_bytes[..len].to_vec()
        } else {
            Vec::new()
        };
        let rip = self.fd.get_regs().ok().map(|r| r.rip);
        internal_error(self.index, HostKvm::detect(), failure.suberror, rip, bytes)
    }
}

/// The exit reason for KVM_EXIT_INTERNAL_ERROR `suberror` on `host`. Where KVM
/// emulates every instruction (PVM), an emulation failure means the guest used an
/// instruction outside the emulator's set, and the line says so.
fn internal_error(
    vcpu: u8,
    host: HostKvm,
    suberror: u32,
    rip: Option<u64>,
    bytes: Vec<u8>,
) -> ExitReason {
    if suberror == KVM_INTERNAL_ERROR_EMULATION && host == HostKvm::Pvm {
        return ExitReason::UnemulatedInstruction { vcpu, rip, bytes };
    }
    let what = match suberror {
        1 => "instruction emulation failed",
        2 => "simultaneous exceptions",
        3 => "delivery event failed",
        _ => "internal error",
    };
    let mut detail = format!("{what} (suberror {suberror})");
    if let Some(rip) = rip {
        detail.push_str(&format!(" at RIP {rip:#x}"));
    }
    if !bytes.is_empty() {
        detail.push_str(&format!(" (bytes from there: {})", hex_bytes(&bytes)));
    }
    if host == HostKvm::Pvm {
        detail.push_str("; this host is PVM, where KVM emulates every guest instruction");
    }
    ExitReason::EmulationFailure { vcpu, detail }
}

/// The exit reason for KVM_EXIT_FAIL_ENTRY on `host`.
fn fail_entry(vcpu: u8, host: HostKvm, reason: u64, cpu: u32) -> ExitReason {
    let mut detail = format!("KVM entry failed: hardware reason {reason:#x} on host CPU {cpu}");
    if host == HostKvm::Pvm {
        detail.push_str("; this host is PVM, where KVM emulates every guest instruction");
    }
    ExitReason::VcpuError { vcpu, detail }
}

enum Emulation {
    Continue,
    Interrupted,
    Stop(ExitReason),
    /// A device this vCPU wrote to recorded why the VM stops (the i8042's reset):
    /// the thread ends at once rather than re-enter the guest and wait for a kick.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuState {
    Running,
    Paused,
    Exited,
}

/// The VMM's side of a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    thread: Option<JoinHandle<()>>,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
    counters: Arc<VcpuExitCounters>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU's exit counters.
    pub fn exit_counters(&self) -> &VcpuExitCounters {
        &self.counters
    }

    /// Sends `event` and kicks the thread out of KVM_RUN so it sees it.
    pub fn send(&self, event: VcpuEvent) {
        if self.events.send(event).is_ok() {
            self.kick();
        }
    }

    /// Waits up to `timeout` for the thread's answer to Pause or Resume.
    pub fn response(&self, timeout: Duration) -> Option<VcpuResponse> {
        self.responses.recv_timeout(timeout).ok()
    }

    fn kick(&self) {
        if let Some(thread) = &self.thread {
            if !thread.is_finished() {
                if let Err(e) = thread.kill(kick_signal()) {
                    log::warn!("cannot kick vCPU {}: {e}", self.index);
                }
            }
        }
    }

    /// Asks the thread to finish and waits for it.
    pub fn finish(&mut self) {
        self.send(VcpuEvent::Finish);
        self.join();
    }

    /// Waits until `deadline` for the thread, once it was asked to finish; false if
    /// it is still running then.
    pub fn join_until(&mut self, deadline: Instant) -> bool {
        if self.thread.is_none() {
            return true;
        }
        // The thread owns the responses' only sender: the channel disconnects when it
        // ends (a futex wait, which every seccomp filter allows, unlike a sleep).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(left) {
                // A late answer to an earlier request.
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
        self.join();
        true
    }

    /// Gives up on a thread that does not finish (one waiting in the kernel on guest
    /// memory nobody serves, where a kick cannot reach): it is detached and ends with
    /// the process, and dropping this handle no longer waits for it.
    pub fn abandon(&mut self) {
        self.thread = None;
    }

    /// Waits for the thread, once it was asked to finish.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("vCPU {} thread panicked", self.index);
            }
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_emulation_failure_on_pvm_names_the_host_rip_and_bytes() {
        let reason = internal_error(
            0,
            HostKvm::Pvm,
            KVM_INTERNAL_ERROR_EMULATION,
            Some(0x100_0000),
            vec![0x0f, 0xc7, 0xf0],
        );
        assert_eq!(
            reason,
            ExitReason::UnemulatedInstruction {
                vcpu: 0,
                rip: Some(0x100_0000),
                bytes: vec![0x0f, 0xc7, 0xf0],
            }
        );
    }

    #[test]
    fn test_emulation_failure_with_hardware_virtualization_stays_generic() {
        let reason = internal_error(
            1,
            HostKvm::Hardware,
            KVM_INTERNAL_ERROR_EMULATION,
            Some(0x2000),
            vec![0x90],
        );
        assert_eq!(
            reason,
            ExitReason::EmulationFailure {
                vcpu: 1,
                detail:
                    "instruction emulation failed (suberror 1) at RIP 0x2000 (bytes from there: 90)"
                        .into(),
            }
        );
    }

    #[test]
    fn test_other_internal_error_on_pvm_mentions_the_host() {
        let ExitReason::EmulationFailure { detail, .. } =
            internal_error(0, HostKvm::Pvm, 3, None, Vec::new())
        else {
            panic!("not an emulation failure");
        };
        assert!(detail.starts_with("delivery event failed (suberror 3); this host is PVM"));
    }

    #[test]
    fn test_failed_entry_on_pvm_mentions_the_host() {
        let reason = fail_entry(0, HostKvm::Pvm, 0x21, 1);
        assert_eq!(
            reason.to_string(),
            "vCPU 0 failed: KVM entry failed: hardware reason 0x21 on host CPU 1; this host is \
             PVM, where KVM emulates every guest instruction"
        );
        assert_eq!(reason.exit_code(), 4);
    }
}
