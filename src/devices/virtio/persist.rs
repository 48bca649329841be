//! Saved state of the virtio layer as plain data: each queue, the interrupt status
//! and the virtio-mmio transport's registers.
//!
//! A snapshot file is untrusted input, so every value is checked against the device
//! it is restored into (queue count and maximum sizes, offered features) and against
//! guest memory (rings of a live queue) before anything is built from it; a refusal
//! names the queue and the value.
//!
//! In-flight requests: spry's devices complete every chain they take off a ring
//! before the event loop turns again (block I/O is synchronous, a received frame is
//! written whole or given back), and a snapshot is taken on that same event loop with
//! the vCPUs paused. So a saved queue never has a chain taken but not completed:
//! `next_avail` and `next_used` agree with the used ring in guest memory, and chains
//! the driver made available but the device had not taken yet are served after the
//! restore, when activation kicks each queue's event.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::{ActivateError, Interrupt};
use crate::vstate::memory::GuestMemory;

/// Errors while restoring virtio state.
#[derive(Debug, thiserror::Error)]
pub enum VirtioStateError {
    /// The state belongs to another kind of device.
    #[error("saved virtio device type {saved}, the device restored into is type {device}")]
    DeviceType {
        /// Type in the state.
        saved: u32,
        /// Type of the device.
        device: u32,
    },
    /// The state has another number of queues than the device.
    #[error("saved state has {saved} queues, the device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue's maximum size differs from the device's.
    #[error("queue {queue}: saved maximum size {saved}, the device's is {device}")]
    QueueMaxSize {
        /// Queue index.
        queue: usize,
        /// Maximum in the state.
        saved: u16,
        /// The device's maximum.
        device: u16,
    },
    /// A queue's size or ring alignment is invalid.
    #[error("queue {queue}: {source} (size {size}, rings at {desc:#x}/{avail:#x}/{used:#x})")]
    Queue {
        /// Queue index.
        queue: usize,
        /// Size in the state.
        size: u16,
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
        /// What virtio-queue refused.
        #[source]
        source: virtio_queue::Error,
    },
    /// A live queue is not ready or its rings are not inside guest memory.
    #[error(
        "queue {queue} of an active device is not usable: ready {ready}, size {size}, rings at \
         {desc:#x}/{avail:#x}/{used:#x} must lie inside guest memory"
    )]
    QueueUnusable {
        /// Queue index.
        queue: usize,
        /// Ready flag in the state.
        ready: bool,
        /// Size in the state.
        size: u16,
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
    },
    /// The driver acknowledged features the device does not offer.
    #[error("acknowledged features {acked:#x} include {extra:#x}, which the device does not offer ({offered:#x})")]
    Features {
        /// Features in the state.
        acked: u64,
        /// The device's offer.
        offered: u64,
        /// Acknowledged but not offered.
        extra: u64,
    },
    /// The state says the device was active without the status an activation needs.
    #[error("saved device is active, but its status {status:#x} lacks FEATURES_OK or DRIVER_OK, or VERSION_1 was not acknowledged")]
    ActiveWithoutDriverOk {
        /// Status in the state.
        status: u32,
    },
    /// The device refused the restored queues.
    #[error("cannot activate the restored device")]
    Activate(#[source] ActivateError),
}

/// One split virtqueue, as the device side sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The device's largest size.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table guest address.
    pub desc_table: u64,
    /// Available ring guest address.
    pub avail_ring: u64,
    /// Used ring guest address.
    pub used_ring: u64,
    /// Next available-ring entry the device takes.
    pub next_avail: u16,
    /// Next used-ring entry the device fills.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx: bool,
}

impl From<&Queue> for QueueState {
    fn from(q: &Queue) -> QueueState {
        let s = q.state();
        QueueState {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl QueueState {
    /// Queue `index` of a device whose maximum for it is `device_max`, checked.
    pub fn to_queue(&self, index: usize, device_max: u16) -> Result<Queue, VirtioStateError> {
        if self.max_size != device_max {
            return Err(VirtioStateError::QueueMaxSize {
                queue: index,
                saved: self.max_size,
                device: device_max,
            });
        }
        let state = virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|source| VirtioStateError::Queue {
            queue: index,
            size: self.size,
            desc: self.desc_table,
            avail: self.avail_ring,
            used: self.used_ring,
            source,
        })
    }

    /// Like [`QueueState::to_queue`], for a queue a device serves: it must be ready
    /// and its rings inside `mem`.
    pub fn to_live_queue(
        &self,
        index: usize,
        device_max: u16,
        mem: &GuestMemory,
    ) -> Result<Queue, VirtioStateError> {
        let queue = self.to_queue(index, device_max)?;
        if !queue.is_valid(mem) {
            return Err(VirtioStateError::QueueUnusable {
                queue: index,
                ready: self.ready,
                size: self.size,
                desc: self.desc_table,
                avail: self.avail_ring,
                used: self.used_ring,
            });
        }
        Ok(queue)
    }
}

/// A device's interrupt status as the driver sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptState {
    /// InterruptStatus bits not acknowledged yet.
    pub status: u32,
    /// The device asked for a reset (DEVICE_NEEDS_RESET).
    pub needs_reset: bool,
    /// ConfigGeneration.
    pub config_generation: u32,
}

impl Interrupt {
    /// The interrupt state, to save.
    pub fn save(&self) -> InterruptState {
        InterruptState {
            status: self.status(),
            needs_reset: self.needs_reset(),
            config_generation: self.config_generation(),
        }
    }

    /// Takes over `state`. Pending bits pulse the line again: the pulse that
    /// announced them went to the old VM's interrupt controller, and a driver reads
    /// InterruptStatus on every interrupt, so a repeated one costs nothing.
    pub fn restore(&self, state: &InterruptState) {
        use std::sync::atomic::Ordering;
        self.status.store(state.status, Ordering::SeqCst);
        self.needs_reset.store(state.needs_reset, Ordering::SeqCst);
        self.config_generation
            .store(state.config_generation, Ordering::SeqCst);
        if state.status != 0 {
            if let Err(e) = self.line.trigger() {
                log::error!("virtio: cannot raise a restored interrupt: {e}");
            }
        }
    }
}

/// The virtio-mmio transport's registers and queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// DeviceID of the device behind it.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// Device status.
    pub status: u32,
    /// The device serves its queues (DRIVER_OK was accepted).
    pub activated: bool,
    /// Every queue: the device's while activated, else the transport's.
    pub queues: Vec<QueueState>,
    /// Interrupt status and config generation.
    pub interrupt: InterruptState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{counting_interrupt, default_mem};

    fn live_state() -> QueueState {
        QueueState {
            max_size: 256,
            size: 16,
            ready: true,
            desc_table: 0x1_0000,
            avail_ring: 0x2_0000,
            used_ring: 0x3_0000,
            next_avail: 7,
            next_used: 5,
            event_idx: true,
        }
    }

    #[test]
    fn test_queue_state_round_trips_through_a_queue() {
        let q = live_state().to_live_queue(0, 256, &default_mem()).unwrap();

        assert_eq!(QueueState::from(&q), live_state());
    }

    #[test]
    fn test_queue_of_other_max_size_is_refused() {
        let err = live_state().to_queue(1, 128).unwrap_err();

        assert_eq!(
            err.to_string(),
            "queue 1: saved maximum size 256, the device's is 128"
        );
    }

    #[test]
    fn test_queue_size_not_a_power_of_two_is_refused() {
        let state = QueueState {
            size: 12,
            ..live_state()
        };

        let err = state.to_queue(0, 256).unwrap_err();

        assert!(matches!(err, VirtioStateError::Queue { size: 12, .. }));
    }

    #[test]
    fn test_queue_size_above_max_is_refused() {
        let state = QueueState {
            size: 512,
            ..live_state()
        };

        assert!(state.to_queue(0, 256).is_err());
    }

    #[test]
    fn test_misaligned_descriptor_table_is_refused() {
        let state = QueueState {
            desc_table: 0x1_0008,
            ..live_state()
        };

        assert!(matches!(
            state.to_queue(0, 256),
            Err(VirtioStateError::Queue { .. })
        ));
    }

    #[test]
    fn test_live_queue_outside_guest_memory_is_refused() {
        // default_mem() is 16 MiB.
        let state = QueueState {
            used_ring: 0x100_0000,
            ..live_state()
        };

        let err = state.to_live_queue(0, 256, &default_mem()).unwrap_err();

        assert!(matches!(err, VirtioStateError::QueueUnusable { .. }));
        assert!(err.to_string().contains("0x1000000"));
    }

    #[test]
    fn test_live_queue_not_ready_is_refused() {
        let state = QueueState {
            ready: false,
            ..live_state()
        };

        assert!(matches!(
            state.to_live_queue(0, 256, &default_mem()),
            Err(VirtioStateError::QueueUnusable { ready: false, .. })
        ));
    }

    #[test]
    fn test_restored_pending_interrupt_pulses_the_line() {
        let (interrupt, irq) = counting_interrupt();
        let state = InterruptState {
            status: 1,
            needs_reset: false,
            config_generation: 3,
        };

        interrupt.restore(&state);

        assert_eq!(interrupt.save(), state);
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn test_restored_quiet_interrupt_stays_quiet() {
        let (interrupt, irq) = counting_interrupt();

        interrupt.restore(&InterruptState::default());

        assert_eq!(irq.count(), 0);
    }
}
