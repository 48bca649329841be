//! Port-I/O and MMIO address maps: which device answers a guest access.
//!
//! Built once before the vCPUs start and shared read-only between them; each device
//! sits behind its own mutex so vCPUs touching different devices never contend.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through guest port I/O or MMIO.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` into the device's window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` into the device's window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new window overlaps an existing one.
    #[error("bus window {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// New window start.
        base: u64,
        /// New window length.
        len: u64,
        /// Start of the window it overlaps.
        other: u64,
    },
    /// Zero-length or wrapping window.
    #[error("invalid bus window {base:#x}+{len:#x}")]
    InvalidWindow {
        /// Window start.
        base: u64,
        /// Window length.
        len: u64,
    },
}

/// An address map from windows to devices.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows: Vec<_> = self.devices.iter().map(|(b, (l, _))| (*b, *l)).collect();
        f.debug_struct("Bus").field("windows", &windows).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Places `device` at `base..base + len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidWindow { base, len })?;
        if let Some((&other, _)) = self
            .devices
            .range(..end)
            .next_back()
            .filter(|(&b, &(l, _))| b + l > base)
        {
            return Err(BusError::Overlap { base, len, other });
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device whose window holds all of `addr..addr + size`, and the offset of
    /// `addr` into that window.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let size = u64::try_from(size).ok()?;
        (offset.checked_add(size)? <= *len).then_some((offset, device))
    }

    /// Forwards a guest read; `false` when no device answers at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a guest write; `false` when no device answers at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// The two buses a vCPU dispatches its exits to.
#[derive(Debug, Default)]
pub struct DeviceBuses {
    /// x86 port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O in the MMIO gap.
    pub mmio: Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0xff));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn shared() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        (dev.clone(), dev)
    }

    #[test]
    fn test_access_reaches_device_with_offset() {
        let (dev, shared) = shared();
        let mut bus = Bus::new();
        bus.insert(shared, 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fd, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((5, vec![7])));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
    }

    #[test]
    fn test_access_outside_every_window_is_unhandled() {
        let (_, shared) = shared();
        let mut bus = Bus::new();
        bus.insert(shared, 0x3f8, 8).unwrap();
        assert!(!bus.write(0x400, &[1]));
        assert!(!bus.write(0x3f7, &[1]));
    }

    #[test]
    fn test_access_crossing_the_window_end_is_unhandled() {
        let (_, shared) = shared();
        let mut bus = Bus::new();
        bus.insert(shared, 0x1000, 0x10).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x100e, &mut data));
    }

    #[test]
    fn test_overlapping_windows_are_refused() {
        let mut bus = Bus::new();
        bus.insert(shared().1, 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(shared().1, 0x10f0, 0x100),
            Err(BusError::Overlap {
                base: 0x10f0,
                len: 0x100,
                other: 0x1000
            })
        );
        assert!(bus.insert(shared().1, 0xf80, 0x100).is_err());
        assert!(bus.insert(shared().1, 0x1100, 0x100).is_ok());
    }

    #[test]
    fn test_zero_length_and_wrapping_windows_are_refused() {
        let mut bus = Bus::new();
        assert!(bus.insert(shared().1, 0x1000, 0).is_err());
        assert!(bus.insert(shared().1, u64::MAX, 2).is_err());
    }
}
