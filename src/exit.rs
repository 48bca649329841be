//! How a sandbox ends: the exit event vCPUs and devices kick, the reason they record,
//! and the process exit code each reason maps to.

use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset line, `reboot=k`).
    GuestReset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
    },
    /// KVM could not emulate an instruction, or hit another internal error.
    EmulationFailure {
        /// Which vCPU.
        vcpu: u8,
        /// KVM's description (suberror, RIP).
        detail: String,
    },
    /// On a host where KVM emulates every guest instruction (PVM), the guest executed
    /// an instruction KVM's emulator cannot run.
    UnemulatedInstruction {
        /// Which vCPU.
        vcpu: u8,
        /// Where, if KVM's registers could be read.
        rip: Option<u64>,
        /// The bytes KVM's emulator fetched from RIP on (up to 15: the instruction
        /// and whatever follows it), if it reported them.
        bytes: Vec<u8>,
    },
    /// Running a vCPU failed on the VMM side.
    VcpuError {
        /// Which vCPU.
        vcpu: u8,
        /// What failed.
        detail: String,
    },
    /// The page-fault handler of `Uffd` guest memory ended: the pages it had not
    /// served yet can never be read.
    PageFaultHandlerGone {
        /// The handler's socket (`backend_path`).
        socket: String,
    },
    /// A signal asked spry to stop.
    Signal(i32),
    /// The VMM was asked to stop (API).
    Stopped,
}

impl ExitReason {
    /// The process exit code: 0 for a guest-requested reset or a requested stop,
    /// 3 for a triple fault, 4 for emulation and vCPU failures, 128+n for signal n.
    ///
    /// The other codes spry exits with: 1 when spry itself fails and 2 for a config
    /// or command line the user must fix ([`crate::Error::exit_code`]), and 148
    /// ([`crate::seccomp::EXIT_BAD_SYSCALL`], Firecracker's code for the same) when a
    /// thread made a system call its seccomp filter forbids: the SIGSYS handler exits
    /// at once, without an `ExitReason`.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::GuestReset | ExitReason::Stopped => 0,
            ExitReason::TripleFault { .. } => 3,
            ExitReason::EmulationFailure { .. }
            | ExitReason::UnemulatedInstruction { .. }
            | ExitReason::VcpuError { .. }
            | ExitReason::PageFaultHandlerGone { .. } => 4,
            ExitReason::Signal(n) => u8::try_from(128 + n).unwrap_or(u8::MAX),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset the machine"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM shutdown)")
            }
            ExitReason::EmulationFailure { vcpu, detail } => {
                write!(f, "vCPU {vcpu}: KVM emulation failure: {detail}")
            }
            ExitReason::UnemulatedInstruction { vcpu, rip, bytes } => {
                write!(
                    f,
                    "vCPU {vcpu}: this host is PVM (no VT-x/AMD-V), where KVM emulates every \
                     guest instruction, and the guest executed an instruction KVM's emulator \
                     cannot run"
                )?;
                if let Some(rip) = rip {
                    write!(f, " at RIP {rip:#x}")?;
                }
                if !bytes.is_empty() {
                    write!(f, " (bytes from there: {})", hex_bytes(bytes))?;
                }
                Ok(())
            }
            ExitReason::VcpuError { vcpu, detail } => write!(f, "vCPU {vcpu} failed: {detail}"),
            ExitReason::PageFaultHandlerGone { socket } => write!(
                f,
                "the page-fault handler on {socket} ended: guest memory it had not served \
                 cannot be read, so the VM was stopped"
            ),
            ExitReason::Signal(n) => write!(f, "stopped by signal {n}"),
            ExitReason::Stopped => write!(f, "stopped on request"),
        }
    }
}

/// `bytes` as space-separated hex pairs, the way disassemblers list instruction bytes.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one place that says the VM must stop: the first reason recorded wins, and the
/// event loop wakes on the event fd.
#[derive(Debug)]
pub struct ExitEvent {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    /// Set once a reason is recorded: what a vCPU checks after each device write.
    requested: AtomicBool,
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
/// Written by the stop-signal handler; never closed, so the handler cannot write to a
/// recycled fd.
static SIGNAL_EVENT: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_stop_signal(signum: libc::c_int) {
    let _ = SIGNALLED.compare_exchange(0, signum, Ordering::SeqCst, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer and
        // `fd` belongs to SIGNAL_EVENT, which is never closed.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP stop the VM cleanly: the signal is recorded and
/// [`signal_event`] fires, which the exit subscriber watches.
pub fn catch_stop_signals() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if SIGNAL_EVENT.get().is_some() {
        return Ok(());
    }
    // Should two threads race here, the first event set wins and the other is dropped.
    let _ = SIGNAL_EVENT.set(EventFd::new(EFD_NONBLOCK)?);
    let evt = SIGNAL_EVENT
        .get()
        .ok_or_else(|| std::io::Error::other("the stop-signal event was not kept"))?;
    SIGNAL_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    for signum in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only does async-signal-safe work (atomics and write(2));
        // `act` is zeroed, then filled with valid values.
        let ret = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(signum, &act, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The stop signal caught so far, if any (the VMM checks this before a VM exists).
pub fn caught_signal() -> Option<i32> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

/// The event stop signals fire, once [`catch_stop_signals`] ran.
pub fn signal_event() -> Option<&'static EventFd> {
    SIGNAL_EVENT.get()
}

impl ExitEvent {
    /// A fresh exit event.
    pub fn new() -> std::io::Result<ExitEvent> {
        Ok(ExitEvent {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
        })
    }

    /// Records `reason` (unless one is recorded already) and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.requested.store(true, Ordering::Release);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal the exit event: {e}");
        }
    }

    /// The recorded reason, if the VM must stop.
    pub fn reason(&self) -> Option<ExitReason> {
        let slot = lock(&self.reason);
        slot.clone()
            .or_else(|| caught_signal().map(ExitReason::Signal))
    }

    /// Whether a reason was recorded (a stop signal is not counted: the event loop
    /// sees those). One atomic load, cheap enough for every vCPU exit.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The event fd the event loop waits on.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_first_reason_wins() {
        let exit = ExitEvent::new().unwrap();
        exit.request(ExitReason::GuestReset);
        exit.request(ExitReason::TripleFault { vcpu: 1 });
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
        assert_eq!(exit.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn test_is_requested_only_once_a_reason_is_recorded() {
        let exit = ExitEvent::new().unwrap();
        assert!(!exit.is_requested());
        exit.request(ExitReason::GuestReset);
        assert!(exit.is_requested());
    }

    #[test]
    fn test_exit_codes() {
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.exit_code(), 3);
        assert_eq!(
            ExitReason::EmulationFailure {
                vcpu: 0,
                detail: String::new()
            }
            .exit_code(),
            4
        );
        assert_eq!(
            ExitReason::UnemulatedInstruction {
                vcpu: 0,
                rip: None,
                bytes: Vec::new()
            }
            .exit_code(),
            4
        );
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
    }

    #[test]
    fn test_unemulated_instruction_is_one_line_naming_pvm_rip_and_bytes() {
        let reason = ExitReason::UnemulatedInstruction {
            vcpu: 1,
            rip: Some(0x100_0000),
            bytes: vec![0x0f, 0xc7, 0xf0],
        };
        assert_eq!(
            reason.to_string(),
            "vCPU 1: this host is PVM (no VT-x/AMD-V), where KVM emulates every guest \
             instruction, and the guest executed an instruction KVM's emulator cannot run at \
             RIP 0x1000000 (bytes from there: 0f c7 f0)"
        );
    }

    #[test]
    fn test_unemulated_instruction_without_rip_or_bytes_says_so_plainly() {
        let reason = ExitReason::UnemulatedInstruction {
            vcpu: 0,
            rip: None,
            bytes: Vec::new(),
        };
        assert!(reason.to_string().ends_with("KVM's emulator cannot run"));
    }
}
