//! Snapshots: the saved state of a paused VM, in files.

pub mod device_writes;
pub mod format;
pub mod memory;
pub mod rollback;
pub mod uffd;
pub mod vm;
