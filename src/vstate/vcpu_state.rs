//! A vCPU's whole KVM-visible state as plain data: saved from one vCPU, restored into
//! another (of a fresh VM, before it first runs).

use std::fmt;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::vstate::msrs::{self, MsrError};

/// One piece of vCPU state, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuPiece {
    /// KVM_{GET,SET}_REGS.
    Regs,
    /// KVM_{GET,SET}_SREGS.
    Sregs,
    /// KVM_{GET,SET}_FPU.
    Fpu,
    /// KVM_{GET,SET}_XSAVE.
    Xsave,
    /// KVM_{GET,SET}_XCRS.
    Xcrs,
    /// KVM_{GET,SET}_DEBUGREGS.
    DebugRegs,
    /// KVM_{GET,SET}_VCPU_EVENTS.
    VcpuEvents,
    /// KVM_{GET,SET}_MP_STATE.
    MpState,
    /// KVM_{GET,SET}_LAPIC.
    Lapic,
    /// KVM_{GET,SET}_CPUID2.
    Cpuid,
    /// KVM_{GET,SET}_TSC_KHZ.
    TscKhz,
}

impl fmt::Display for VcpuPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VcpuPiece::Regs => "general registers",
            VcpuPiece::Sregs => "special registers",
            VcpuPiece::Fpu => "FPU registers",
            VcpuPiece::Xsave => "XSAVE area",
            VcpuPiece::Xcrs => "extended control registers",
            VcpuPiece::DebugRegs => "debug registers",
            VcpuPiece::VcpuEvents => "pending events",
            VcpuPiece::MpState => "MP state",
            VcpuPiece::Lapic => "local APIC",
            VcpuPiece::Cpuid => "CPUID",
            VcpuPiece::TscKhz => "TSC frequency",
        })
    }
}

/// Errors while saving or restoring a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// KVM_GET_MSR_INDEX_LIST failed.
    #[error("cannot list the MSRs KVM saves")]
    MsrIndexList(#[source] kvm_ioctls::Error),
    /// A KVM_GET_* ioctl failed.
    #[error("cannot save the vCPU's {0}")]
    Save(VcpuPiece, #[source] kvm_ioctls::Error),
    /// A KVM_SET_* ioctl failed.
    #[error("cannot restore the vCPU's {0}")]
    Restore(VcpuPiece, #[source] kvm_ioctls::Error),
    /// Saving or restoring the MSRs failed.
    #[error("cannot save or restore the vCPU's MSRs")]
    Msrs(#[source] MsrError),
    /// A vCPU that has run was given a CPUID other than its own; KVM allows no
    /// change after KVM_RUN.
    #[error("the saved CPUID differs from this vCPU's, which cannot change once it has run: {0}")]
    CpuidChanged(String),
    /// The saved CPUID has more leaves than KVM takes.
    #[error("the saved CPUID has {0} leaves, KVM takes at most {KVM_MAX_CPUID_ENTRIES}")]
    CpuidTooLong(usize),
    /// The state holds an XSAVE area and this host's KVM has no KVM_CAP_XSAVE.
    #[error("the state holds an XSAVE area, this host's KVM has no XSAVE")]
    XsaveMissing,
    /// The saved XSAVE area is not KVM_GET_XSAVE's 1024 words.
    #[error("the saved XSAVE area has {0} words, KVM_SET_XSAVE takes 1024")]
    XsaveSize(usize),
    /// The state holds XCRs and this host's KVM has no KVM_CAP_XCRS.
    #[error("the state holds XCRs, this host's KVM has no KVM_CAP_XCRS")]
    XcrsMissing,
    /// The saved TSC frequency differs from this vCPU's and KVM cannot scale the TSC.
    #[error(
        "the state's TSC runs at {saved} kHz, this vCPU's at {host} kHz, and KVM cannot scale it"
    )]
    TscFrequency {
        /// kHz in the state.
        saved: u32,
        /// kHz of the vCPU restored into.
        host: u32,
    },
}

/// What this host's KVM offers for saving vCPU state; probed once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuStateSupport {
    /// KVM_CAP_XSAVE: the FPU/SSE/AVX state is one XSAVE area.
    pub xsave: bool,
    /// KVM_CAP_XCRS: XCR0 can be read and written.
    pub xcrs: bool,
    /// KVM_CAP_GET_TSC_KHZ: a vCPU's TSC frequency can be read.
    pub get_tsc_khz: bool,
    /// KVM_CAP_TSC_CONTROL: a vCPU's TSC frequency can be set (scaled).
    pub tsc_control: bool,
    /// Every MSR KVM may save: KVM_GET_MSR_INDEX_LIST and the MTRRs it leaves out (each
    /// vCPU keeps those it can read).
    pub msr_indices: Vec<u32>,
}

impl VcpuStateSupport {
    /// Asks `kvm` what it can save.
    pub fn probe(kvm: &Kvm) -> Result<VcpuStateSupport, VcpuStateError> {
        let listed = kvm
            .get_msr_index_list()
            .map_err(VcpuStateError::MsrIndexList)?;
        let msr_indices = msrs::msrs_to_save(listed.as_slice());
        Ok(VcpuStateSupport {
            xsave: kvm.check_extension(Cap::Xsave),
            xcrs: kvm.check_extension(Cap::Xcrs),
            get_tsc_khz: kvm.check_extension(Cap::GetTscKhz),
            tsc_control: kvm.check_extension(Cap::TscControl),
            msr_indices,
        })
    }
}

/// The legacy FPU/SSE registers (KVM_GET_FPU), for hosts without XSAVE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuRegs {
    /// x87 registers ST0-ST7 (80 bits each, padded to 16 bytes).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Last x87 opcode.
    pub last_opcode: u16,
    /// Last x87 instruction pointer.
    pub last_ip: u64,
    /// Last x87 data pointer.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuRegs {
    fn from(fpu: &kvm_fpu) -> FpuRegs {
        FpuRegs {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
        }
    }
}

impl From<&FpuRegs> for kvm_fpu {
    fn from(regs: &FpuRegs) -> kvm_fpu {
        kvm_fpu {
            fpr: regs.fpr,
            fcw: regs.fcw,
            fsw: regs.fsw,
            ftwx: regs.ftwx,
            last_opcode: regs.last_opcode,
            last_ip: regs.last_ip,
            last_dp: regs.last_dp,
            xmm: regs.xmm,
            mxcsr: regs.mxcsr,
            ..Default::default()
        }
    }
}

/// The floating-point and vector state, in the richest form the host offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FpuState {
    /// The legacy 4 KiB XSAVE area (x87, SSE, AVX and whatever else XCR0 enables), as
    /// KVM_GET_XSAVE's 1024 words.
    Xsave(Vec<u32>),
    /// x87 and SSE only, where KVM has no XSAVE.
    Legacy(Box<FpuRegs>),
}

/// Everything KVM exposes of one x86_64 vCPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was given; restored first, as it decides which MSRs exist.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87, SSE, AVX.
    pub fpu: FpuState,
    /// XCR0 and friends, where KVM has KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    /// DR0-DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST, and every MTRR, this vCPU lets KVM read; TSC
    /// and kvmclock included.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMM and interrupt shadow.
    pub vcpu_events: kvm_vcpu_events,
    /// The TSC frequency the guest saw, where KVM tells it.
    pub tsc_khz: Option<u32>,
}

/// Two TSC frequencies closer than this many parts per million count as the same (as
/// the kernel does when it calibrates).
const TSC_TOLERANCE_PPM: u64 = 250;

/// Whether a TSC of `host` kHz can stand in for one of `saved` kHz without scaling.
pub fn tsc_within_tolerance(saved: u32, host: u32) -> bool {
    u64::from(saved.abs_diff(host)) * 1_000_000 <= u64::from(saved) * TSC_TOLERANCE_PPM
}

fn saved<T>(piece: VcpuPiece, result: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuStateError> {
    result.map_err(|e| VcpuStateError::Save(piece, e))
}

/// The first leaf in which two CPUIDs differ, ignoring the bits KVM updates from
/// the vCPU's registers (leaf 1 ECX OSXSAVE and EDX APIC, leaf 7 ECX OSPKE, the
/// XSAVE area sizes of leaf 0xD): `None` if they are the same model.
fn cpuid_difference(saved: &[kvm_cpuid_entry2], current: &[kvm_cpuid_entry2]) -> Option<String> {
    const OSXSAVE: u32 = 1 << 27;
    const APIC: u32 = 1 << 9;
    const OSPKE: u32 = 1 << 4;
    let model = |e: &kvm_cpuid_entry2| {
        let (mut ebx, mut ecx, mut edx) = (e.ebx, e.ecx, e.edx);
        match (e.function, e.index) {
            (1, _) => {
                ecx &= !OSXSAVE;
                edx &= !APIC;
            }
            (7, 0) => ecx &= !OSPKE,
            (0xd, 0 | 1) => ebx = 0,
            _ => {}
        }
        (e.function, e.index, e.flags, e.eax, ebx, ecx, edx)
    };
    if saved.len() != current.len() {
        return Some(format!(
            "{} leaves saved, {} in the vCPU",
            saved.len(),
            current.len()
        ));
    }
    saved.iter().zip(current).find_map(|(s, c)| {
        (model(s) != model(c)).then(|| {
            format!(
                "leaf {:#x}.{}: saved {:08x} {:08x} {:08x} {:08x}, the vCPU's {:08x} {:08x} {:08x} {:08x}",
                s.function, s.index, s.eax, s.ebx, s.ecx, s.edx, c.eax, c.ebx, c.ecx, c.edx
            )
        })
    })
}

fn restored<T>(
    piece: VcpuPiece,
    result: Result<T, kvm_ioctls::Error>,
) -> Result<T, VcpuStateError> {
    result.map_err(|e| VcpuStateError::Restore(piece, e))
}

impl VcpuState {
    /// Saves `vcpu`'s state. The vCPU must not be running (its thread is paused, out of
    /// KVM_RUN).
    pub fn save(vcpu: &VcpuFd, support: &VcpuStateSupport) -> Result<VcpuState, VcpuStateError> {
        // KVM_GET_MP_STATE first: it makes the LAPIC accept pending INIT/SIPI, which can
        // change the registers and the LAPIC read below.
        let mp_state = saved(VcpuPiece::MpState, vcpu.get_mp_state())?;
        let regs = saved(VcpuPiece::Regs, vcpu.get_regs())?;
        let sregs = saved(VcpuPiece::Sregs, vcpu.get_sregs())?;
        let fpu = if support.xsave {
            FpuState::Xsave(saved(VcpuPiece::Xsave, vcpu.get_xsave())?.region.to_vec())
        } else {
            FpuState::Legacy(Box::new(FpuRegs::from(&saved(
                VcpuPiece::Fpu,
                vcpu.get_fpu(),
            )?)))
        };
        let xcrs = if support.xcrs {
            Some(saved(VcpuPiece::Xcrs, vcpu.get_xcrs())?)
        } else {
            None
        };
        let debug_regs = saved(VcpuPiece::DebugRegs, vcpu.get_debug_regs())?;
        let lapic = saved(VcpuPiece::Lapic, vcpu.get_lapic())?;
        let tsc_khz = if support.get_tsc_khz {
            Some(saved(VcpuPiece::TscKhz, vcpu.get_tsc_khz())?)
        } else {
            None
        };
        let cpuid = saved(VcpuPiece::Cpuid, vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?
            .as_slice()
            .to_vec();
        let msrs = msrs::read_msrs(vcpu, &support.msr_indices).map_err(VcpuStateError::Msrs)?;
        // Events last: reading the MSRs above must not leave an event behind unseen.
        let vcpu_events = saved(VcpuPiece::VcpuEvents, vcpu.get_vcpu_events())?;
        Ok(VcpuState {
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Restores this state into `vcpu`, a vCPU that has not run yet.
    ///
    /// The order matters to KVM: CPUID before anything (it decides which MSRs and XSAVE
    /// features exist); the TSC frequency before the TSC MSR; special registers (EFER,
    /// APIC base) before the LAPIC; the LAPIC before the MSRs (the TSC deadline lives in
    /// the LAPIC timer); the events last, as setting the LAPIC or MP state would drop an
    /// interrupt they re-inject.
    pub fn restore(&self, vcpu: &VcpuFd, support: &VcpuStateSupport) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|_| VcpuStateError::CpuidTooLong(self.cpuid.len()))?;
        restored(VcpuPiece::Cpuid, vcpu.set_cpuid2(&cpuid))?;
        self.restore_after_cpuid(vcpu, support)
    }

    /// Restores this state into `vcpu`, a vCPU of the same VM that has run (a
    /// rollback). Its CPUID cannot change once it has run, so it is checked, not set:
    /// the snapshot was taken of this vCPU or loaded into it, so it matches except
    /// for the bits KVM keeps in step with the registers (OSXSAVE with CR4, the
    /// XSAVE sizes with XCR0, ...), which the registers restored below bring back.
    pub fn restore_in_place(
        &self,
        vcpu: &VcpuFd,
        support: &VcpuStateSupport,
    ) -> Result<(), VcpuStateError> {
        let current = saved(VcpuPiece::Cpuid, vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?;
        if let Some(difference) = cpuid_difference(&self.cpuid, current.as_slice()) {
            return Err(VcpuStateError::CpuidChanged(difference));
        }
        self.restore_after_cpuid(vcpu, support)
    }

    /// Everything but the CPUID, in KVM's order (see [`VcpuState::restore`]).
    fn restore_after_cpuid(
        &self,
        vcpu: &VcpuFd,
        support: &VcpuStateSupport,
    ) -> Result<(), VcpuStateError> {
        self.restore_tsc_khz(vcpu, support)?;
        restored(VcpuPiece::MpState, vcpu.set_mp_state(self.mp_state))?;
        restored(VcpuPiece::Regs, vcpu.set_regs(&self.regs))?;
        restored(VcpuPiece::Sregs, vcpu.set_sregs(&self.sregs))?;
        match &self.fpu {
            FpuState::Xsave(words) => {
                if !support.xsave {
                    return Err(VcpuStateError::XsaveMissing);
                }
                let mut xsave = kvm_xsave::default();
                if words.len() != xsave.region.len() {
                    return Err(VcpuStateError::XsaveSize(words.len()));
                }
                xsave.region.copy_from_slice(words);
                // SAFETY: `xsave` is a whole `kvm_xsave` (its 4 KiB region); KVM_SET_XSAVE
                // reads only that region, as no KVM_CAP_XSAVE2 size was enabled on this VM.
                restored(VcpuPiece::Xsave, unsafe { vcpu.set_xsave(&xsave) })?;
            }
            FpuState::Legacy(fpu) => {
                restored(VcpuPiece::Fpu, vcpu.set_fpu(&kvm_fpu::from(fpu.as_ref())))?
            }
        }
        if let Some(xcrs) = &self.xcrs {
            if !support.xcrs {
                return Err(VcpuStateError::XcrsMissing);
            }
            restored(VcpuPiece::Xcrs, vcpu.set_xcrs(xcrs))?;
        }
        restored(VcpuPiece::DebugRegs, vcpu.set_debug_regs(&self.debug_regs))?;
        restored(VcpuPiece::Lapic, vcpu.set_lapic(&self.lapic))?;
        msrs::write_msrs(vcpu, &self.msrs).map_err(VcpuStateError::Msrs)?;
        restored(
            VcpuPiece::VcpuEvents,
            vcpu.set_vcpu_events(&self.vcpu_events),
        )?;
        Ok(())
    }

    /// Gives the vCPU the saved TSC frequency, scaling it where KVM can and must.
    fn restore_tsc_khz(
        &self,
        vcpu: &VcpuFd,
        support: &VcpuStateSupport,
    ) -> Result<(), VcpuStateError> {
        let Some(saved_khz) = self.tsc_khz else {
            return Ok(());
        };
        if !support.get_tsc_khz {
            return Ok(());
        }
        let host_khz = restored(VcpuPiece::TscKhz, vcpu.get_tsc_khz())?;
        if tsc_within_tolerance(saved_khz, host_khz) {
            return Ok(());
        }
        if !support.tsc_control {
            return Err(VcpuStateError::TscFrequency {
                saved: saved_khz,
                host: host_khz,
            });
        }
        restored(VcpuPiece::TscKhz, vcpu.set_tsc_khz(saved_khz))
    }

    /// The saved value of MSR `index`, if it was saved.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn test_cpuid_differing_only_in_register_driven_bits_is_the_same_model() {
        let saved = [leaf(1, 0, 0, 1 << 27, 1 << 9), leaf(0xd, 0, 0x340, 0, 0)];
        let now = [leaf(1, 0, 0, 0, 0), leaf(0xd, 0, 0x240, 0, 0)];
        assert_eq!(cpuid_difference(&saved, &now), None);
    }

    #[test]
    fn test_cpuid_with_another_feature_or_leaf_count_is_named() {
        let saved = [leaf(7, 0, 1 << 5, 0, 0)];
        let now = [leaf(7, 0, 0, 0, 0)];
        let named = cpuid_difference(&saved, &now).expect("a difference");
        assert!(named.starts_with("leaf 0x7.0"), "{named}");
        let fewer = cpuid_difference(&saved, &[]).expect("a difference");
        assert_eq!(fewer, "1 leaves saved, 0 in the vCPU");
    }

    fn sample_state() -> VcpuState {
        let mut xsave = vec![0u32; 1024];
        xsave[0] = 0x037f; // FCW after FNINIT
        VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ebx: 0x756e_6547, // "Genu"
                ..Default::default()
            }],
            mp_state: kvm_mp_state { mp_state: 0 },
            regs: kvm_regs {
                rip: 0x10_0000,
                rsi: 0x7000,
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr0: 0x8000_0011,
                efer: 0x500,
                ..Default::default()
            },
            fpu: FpuState::Xsave(xsave),
            xcrs: Some(kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            }),
            debug_regs: kvm_debugregs {
                dr7: 0x400,
                ..Default::default()
            },
            lapic: kvm_lapic_state::default(),
            msrs: vec![kvm_msr_entry {
                index: msrs::MSR_IA32_TSC,
                data: 123_456,
                ..Default::default()
            }],
            vcpu_events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_500_000),
        }
    }

    #[test]
    fn test_vcpu_state_json_round_trip_is_equal() {
        let state = sample_state();

        let json = serde_json::to_vec(&state).unwrap();
        let back: VcpuState = serde_json::from_slice(&json).unwrap();

        assert_eq!(back, state);
    }

    #[test]
    fn test_legacy_fpu_converts_both_ways() {
        let regs = FpuRegs {
            fpr: [[1; 16]; 8],
            fcw: 0x37f,
            fsw: 0,
            ftwx: 0xff,
            last_opcode: 7,
            last_ip: 0x1000,
            last_dp: 0x2000,
            xmm: [[2; 16]; 16],
            mxcsr: 0x1f80,
        };

        let back = FpuRegs::from(&kvm_fpu::from(&regs));

        assert_eq!(back, regs);
    }

    #[test]
    fn test_msr_finds_saved_value() {
        let state = sample_state();

        assert_eq!(state.msr(msrs::MSR_IA32_TSC), Some(123_456));
        assert_eq!(state.msr(0xc000_0080), None);
    }

    #[test]
    fn test_tsc_within_250_ppm_needs_no_scaling() {
        // 2.5 GHz: 250 ppm is 625 kHz.
        assert!(tsc_within_tolerance(2_500_000, 2_500_625));
        assert!(!tsc_within_tolerance(2_500_000, 2_500_626));
    }

    #[test]
    fn test_piece_names_read_as_words() {
        let err = VcpuStateError::Save(VcpuPiece::Lapic, kvm_ioctls::Error::new(libc::EINVAL));

        assert_eq!(err.to_string(), "cannot save the vCPU's local APIC");
    }
}
