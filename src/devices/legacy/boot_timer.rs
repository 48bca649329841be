//! Firecracker's boot timer: the guest writes the magic byte once it is up, and spry
//! logs how long that took from its own start.

use crate::clock;
use crate::devices::bus::BusDevice;

/// The byte a guest writes to mark "booted".
pub const MAGIC_VALUE: u8 = 123;

/// The boot timer device.
#[derive(Debug, Default)]
pub struct BootTimer {
    writes: u32,
}

impl BootTimer {
    /// How many times the guest signalled so far.
    pub fn signals(&self) -> u32 {
        self.writes
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [MAGIC_VALUE] {
            return;
        }
        self.writes += 1;
        let wall = clock::since_start();
        let cpu = clock::process_cpu_time();
        let mono = clock::monotonic_now();
        // The monotonic stamp lets a parent process compute the time from its own
        // fork/exec, which includes the exec and dynamic loading this clock misses.
        log::info!(
            "Guest-boot-time = {} us {} ms, {} CPU us {} CPU ms (monotonic {} us)",
            wall.as_micros(),
            wall.as_millis(),
            cpu.as_micros(),
            cpu.as_millis(),
            mono.as_micros()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_the_magic_byte_at_offset_zero_counts() {
        let mut timer = BootTimer::default();
        timer.write(0, &[1]);
        timer.write(4, &[MAGIC_VALUE]);
        timer.write(0, &[MAGIC_VALUE, 0]);
        assert_eq!(timer.signals(), 0);
        timer.write(0, &[MAGIC_VALUE]);
        assert_eq!(timer.signals(), 1);
    }
}
