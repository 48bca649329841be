//! virtio devices over the virtio-mmio transport.
//!
//! A device is split in two halves that share one mutex: the transport registers a
//! vCPU reaches through the MMIO bus ([`mmio::MmioTransport`]), and the queue work
//! the event loop does when an ioeventfd or a backend fd fires. Interrupt status lives
//! outside that mutex ([`Interrupt`]) so a vCPU acknowledging an interrupt never waits
//! behind disk or network I/O.

pub mod block;
pub mod iovec;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};

use crate::vstate::memory::GuestMemory;

/// virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
/// virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;

/// `VIRTIO_F_RING_INDIRECT_DESC`.
pub const F_RING_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_F_RING_EVENT_IDX`.
pub const F_RING_EVENT_IDX: u32 = 29;
/// `VIRTIO_F_VERSION_1`: the modern interface; spry offers nothing else.
pub const F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive it.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Raises a device's interrupt line: an irqfd in production, a counter in tests.
pub trait InterruptLine: Send + Sync + std::fmt::Debug {
    /// Pulses the line.
    fn trigger(&self) -> std::io::Result<()>;
}

impl InterruptLine for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.write(1)
    }
}

/// Interrupt state shared by the transport (vCPU side) and the device (event loop).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    line: Box<dyn InterruptLine>,
}

impl Interrupt {
    /// Interrupt state raising `line`.
    pub fn new(line: Box<dyn InterruptLine>) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            line,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::error!("virtio: cannot raise an interrupt: {e}");
        }
    }

    /// Tells the driver a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver `queue` has new used entries, unless it asked (through
    /// `VIRTIO_F_EVENT_IDX`) not to hear about them yet.
    pub fn signal_used_if_needed(&self, queue: &mut Queue, mem: &GuestMemory) {
        if queue.needs_notification(mem).unwrap_or(true) {
            self.signal_used_queue();
        }
    }

    /// A queue of `device` is broken: log it (once) and ask the driver for a reset.
    /// The device serves nothing until the reset, which [`Interrupt::needs_reset`]
    /// tells it.
    pub fn fail_queue(&self, errors: &GuestErrorLog, device: &str, why: &dyn std::fmt::Display) {
        errors.report(
            device,
            format_args!("queue broken: {why}; device needs reset"),
        );
        self.signal_needs_reset();
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG_CHANGE);
    }

    /// Marks the device as needing a reset and tells the driver.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// Pending interrupt bits (InterruptStatus).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears acknowledged bits (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// ConfigGeneration.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Back to the power-on state after a device reset.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver gave a queue that does not fit guest memory.
    #[error("queue {0} is not valid (size, alignment or rings outside guest memory)")]
    InvalidQueue(usize),
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The backend refused the negotiated features.
    #[error("cannot apply the negotiated features: {0}")]
    Features(String),
}

/// What a virtio device model offers its transport.
pub trait VirtioDevice: Send {
    /// virtio device type.
    fn device_type(&self) -> u32;
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space; `false` where it is read-only
    /// (all of it, for spry's devices).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }
    /// Starts serving `queues` with the features the driver acknowledged.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// Stops serving and drops the queues (the driver reset the device).
    fn reset(&mut self);
    /// The device's once-only log of guest errors, shared with its transport.
    fn guest_errors(&self) -> GuestErrorLog;
    /// The queues the device serves, as saved state in queue order; empty while it
    /// is not activated. Snapshots call it with the vCPUs paused, between two turns
    /// of the event loop, so no chain is half served (see [`persist`]).
    fn saved_queues(&self) -> Vec<persist::QueueState>;
}

/// Reads `data.len()` bytes at `offset` of a config space image, zero-filling past
/// its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Logs a guest-caused device error once per device, then stays quiet: a guest must
/// not be able to flood spry's log. Clones share the "already logged" state, so the
/// transport and the device model count as one device.
#[derive(Debug, Default, Clone)]
pub struct GuestErrorLog {
    logged: std::sync::Arc<AtomicBool>,
}

impl GuestErrorLog {
    /// Logs `message` for `device` if nothing was logged yet.
    pub fn report(&self, device: &str, message: std::fmt::Arguments<'_>) {
        if !self.logged.swap(true, Ordering::Relaxed) {
            log::warn!("{device}: {message} (further guest errors on this device are not logged)");
        }
    }
}
