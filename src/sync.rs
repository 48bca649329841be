//! Locking that outlives a panicked holder.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the data as it is if a thread panicked while holding it: spry's
/// shared state (devices, counters, the exit reason) stays usable, and the VM can
/// still be stopped in order.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
