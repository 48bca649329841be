//! Guest pages spry's own devices may have written, for Diff snapshots.
//!
//! KVM's dirty log sees only what the guest's vCPUs write. spry's devices write
//! guest memory from the host side (disk reads land straight in guest buffers,
//! received frames, status bytes, used rings), which KVM never sees; a Diff
//! without those pages would give the guest back stale data. So, while dirty
//! pages are tracked, every device-writable buffer a device accepts from the guest
//! is recorded here (whether or not the device ends up writing all of it: a page
//! too many costs a page of file, a page missed corrupts the guest), and the used
//! rings are added when the Diff is taken (see `Vmm::create_snapshot`).
//!
//! One VM per process, so one record per process; it is off unless the VM tracks
//! dirty pages, and then costs a lock per accepted chain.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::memory::PAGE_SIZE;

/// Pages written by the host side of devices since the record was last taken.
#[derive(Debug, Default)]
pub struct DeviceWrites {
    enabled: AtomicBool,
    pages: Mutex<BTreeSet<u64>>,
}

static PROCESS: DeviceWrites = DeviceWrites::new();

/// This process's record.
pub fn device_writes() -> &'static DeviceWrites {
    &PROCESS
}

impl DeviceWrites {
    /// An empty record, off.
    pub const fn new() -> DeviceWrites {
        DeviceWrites {
            enabled: AtomicBool::new(false),
            pages: Mutex::new(BTreeSet::new()),
        }
    }

    /// Starts recording (the VM tracks dirty pages).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Records that `len` bytes from guest address `addr` may be written.
    pub fn mark(&self, addr: u64, len: usize) {
        if !self.enabled.load(Ordering::Acquire) || len == 0 {
            return;
        }
        let first = addr / PAGE_SIZE;
        let last = addr.saturating_add(len as u64 - 1) / PAGE_SIZE;
        let mut pages = crate::sync::lock(&self.pages);
        pages.extend(first..=last);
    }

    /// The guest page numbers recorded so far, and a fresh start.
    pub fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *crate::sync::lock(&self.pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_nothing_is_recorded_until_enabled() {
        let writes = DeviceWrites::new();

        writes.mark(0x1000, 8);

        assert!(writes.take().is_empty());
    }

    #[test]
    fn test_a_buffer_across_pages_marks_each_page() {
        let writes = DeviceWrites::new();
        writes.enable();

        writes.mark(0x1ff0, 0x20);
        writes.mark(0x5000, 0x1000);

        assert_eq!(writes.take().into_iter().collect::<Vec<_>>(), [1, 2, 5]);
        assert!(writes.take().is_empty());
    }
}
