//! Rolling a VM that was loaded from a snapshot back to that snapshot, in place
//! (`PUT /snapshot/rollback`, spry's own route): no new process, no new mapping.
//!
//! Guest memory of a load is a private mapping (of the memory file, or anonymous
//! memory a `Uffd` handler fills), so `madvise(MADV_DONTNEED)` drops exactly the
//! pages the guest dirtied since: a `File` mapping falls back to the file's pages,
//! and `Uffd` pages become missing again for the handler to serve anew. The cost
//! follows the pages dirtied, not the size of guest RAM. Then the VM state, each
//! vCPU's (on its own thread) and each device's come back from the state file the
//! load read, which spry keeps ([`Restored`]).

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::MemoryFileError;
use super::vm::VmSnapshot;
use crate::devices::legacy::i8042::I8042Error;
use crate::devices::legacy::serial::SerialStateError;
use crate::devices::virtio::persist::VirtioStateError;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm_state::{ClockRestore, VmStateError};

/// Why a rollback failed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The VM was booted: there is no snapshot it came from.
    #[error("no snapshot to roll back to: this VM was booted, not loaded from a snapshot")]
    NoSnapshot,
    /// An earlier rollback failed part way.
    #[error(
        "an earlier rollback failed part way: the VM's state is inconsistent and it cannot \
         run again; stop it"
    )]
    Inconsistent,
    /// The vCPUs did not pause.
    #[error("cannot pause the VM for the rollback: {0}")]
    Pause(String),
    /// The live VM does not have the snapshot's shape (a bug: it was built from it).
    #[error("the snapshot holds {saved} {what}, the VM has {live}")]
    Shape {
        /// Which part.
        what: &'static str,
        /// In the snapshot.
        saved: usize,
        /// In the VM.
        live: usize,
    },
    /// Dropping the dirtied pages failed.
    #[error(
        "cannot drop the pages dirtied at host address {addr:#x} ({size_mib} MiB of guest memory)"
    )]
    Discard {
        /// Host address of the region.
        addr: u64,
        /// Its size.
        size_mib: u64,
        /// What madvise said.
        #[source]
        source: io::Error,
    },
    /// Restarting the dirty log failed.
    #[error("cannot restart dirty page tracking")]
    DirtyLog(#[source] MemoryFileError),
    /// The irqchip, PIT or clock could not be loaded.
    #[error("cannot load the VM's in-kernel state")]
    VmState(#[source] VmStateError),
    /// A vCPU could not load its state.
    #[error("cannot load a vCPU's state: {0}")]
    Vcpu(String),
    /// A vCPU did not answer in time.
    #[error("vCPU {0} did not load its state in time")]
    VcpuNoAnswer(u8),
    /// A copy-on-write drive could not drop its changes.
    #[error("cannot roll back drive {id:?}")]
    Drive {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: crate::devices::virtio::block::cow::CowError,
    },
    /// COM1 could not be loaded.
    #[error("cannot load COM1's state")]
    Serial(#[source] SerialStateError),
    /// The i8042 could not be loaded.
    #[error("cannot load the i8042's state")]
    I8042(#[source] I8042Error),
    /// A virtio device could not be loaded.
    #[error("cannot load the state of virtio device {name}")]
    Virtio {
        /// The device (drive or interface id, or "vsock").
        name: String,
        /// What failed.
        #[source]
        source: VirtioStateError,
    },
    /// The vCPUs did not resume.
    #[error("rolled back, but cannot resume the VM: {0}")]
    Resume(String),
}

/// What a rollback goes back to: the state file a load read, and how that load
/// brought the clock back (the rollback does the same).
#[derive(Debug, Clone)]
pub struct Restored {
    /// The snapshot.
    pub snapshot: VmSnapshot,
    /// `Realtime` if the load had `clock_realtime`.
    pub clock: ClockRestore,
}

/// Drops every page of `mem` the guest (or a device) wrote since the load: the
/// mapping is private, so the pages read as the snapshot's again.
pub fn discard_memory_changes(mem: &GuestMemory) -> Result<(), RollbackError> {
    for region in mem.iter() {
        let addr = region.as_ptr();
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        let err = |source| RollbackError::Discard {
            addr: addr as u64,
            size_mib: region.len() >> 20,
            source,
        };
        // MADV_DONTNEED only drops the private pages: the contents go back to the
        // file's, or to missing for a userfaultfd.
        // SAFETY: `addr..addr + len` is one whole private mapping owned by `mem`, which
        // stays mapped; the paused vCPUs and this thread hold no reference into it.
        let ret = unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) };
        if ret != 0 {
            return Err(err(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Checks that the live VM has `saved` of `what`.
pub fn same_count(what: &'static str, saved: usize, live: usize) -> Result<(), RollbackError> {
    if saved != live {
        return Err(RollbackError::Shape { what, saved, live });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::snapshot::memory::{self, MemoryState};
    use crate::vstate;

    #[test]
    fn test_discarded_file_backed_memory_reads_as_the_file_again() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("mem");
        let mem = vstate::memory::create_guest_memory(4 << 20).unwrap();
        mem.write_obj(7u64, GuestAddress(0x3000)).unwrap();
        memory::write_full(&mem, &path).unwrap();
        let back = memory::restore(&path, &MemoryState::of(&mem)).unwrap();
        back.write_obj(9u64, GuestAddress(0x3000)).unwrap();
        back.write_obj(5u64, GuestAddress(0x20_0000)).unwrap();

        discard_memory_changes(&back).unwrap();

        assert_eq!(back.read_obj::<u64>(GuestAddress(0x3000)).unwrap(), 7);
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 0);
        assert_eq!(
            File::open(&path).unwrap().metadata().unwrap().len(),
            4 << 20
        );
    }

    #[test]
    fn test_other_count_is_a_shape_error() {
        let err = same_count("vCPUs", 2, 1).unwrap_err();

        assert_eq!(err.to_string(), "the snapshot holds 2 vCPUs, the VM has 1");
    }
}
