//! The virtio-vsock device model (virtio 1.2, 5.10): three queues (receive,
//! transmit, event) over the muxer's Unix sockets.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::packet::{Header, MAX_PKT_DATA};
use crate::devices::virtio::queue::{drain, pending, QueueError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, GuestErrorLog, Interrupt, VirtioDevice, F_VERSION_1,
};
use crate::snapshot::device_writes::device_writes;
use crate::vstate::memory::GuestMemory;

/// virtio device type of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device to driver).
pub const RX: usize = 0;
/// Index of the transmit queue (driver to device).
pub const TX: usize = 1;
/// Index of the event queue (transport resets, sent after a restore).
pub const EVT: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Bytes of a packet header (44, far below `u32::MAX`).
#[allow(clippy::cast_possible_truncation)]
const HEADER_LEN: u32 = PKT_HEADER_SIZE as u32;
/// Packets one pass moves before it yields to the rest of the event loop.
const BUDGET: usize = QUEUE_SIZE as usize;

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    evt: Queue,
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    name: String,
    pub(super) queue_evts: [EventFd; 3],
    /// Fires when the muxer's next connect timeout is due (armed only then).
    pub(super) timer: TimerFd,
    /// The deadline `timer` is armed for.
    pub(super) timer_deadline: Option<std::time::Instant>,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    /// The Unix-socket side.
    pub muxer: Muxer,
    errors: GuestErrorLog,
    /// Restored from a snapshot: the guest hears of the lost connections once
    /// the device is active again.
    reset_pending: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side is `muxer`.
    pub fn new(guest_cid: u64, muxer: Muxer, interrupt: Arc<Interrupt>) -> std::io::Result<Vsock> {
        Ok(Vsock {
            guest_cid,
            name: "virtio-vsock".to_owned(),
            queue_evts: [
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
            ],
            timer: TimerFd::new()?,
            timer_deadline: None,
            interrupt,
            active: None,
            muxer,
            errors: GuestErrorLog::default(),
            reset_pending: false,
        })
    }

    /// The device's state, to save.
    pub fn save(&self) -> super::persist::VsockState {
        super::persist::VsockState {
            guest_cid: self.guest_cid,
            uds_path: self.muxer.uds_path().to_owned(),
        }
    }

    /// The device `state` describes, on a new `muxer`: once its transport is
    /// restored and active, it sends the guest a TRANSPORT_RESET event.
    pub fn restore(
        state: &super::persist::VsockState,
        muxer: Muxer,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Vsock> {
        let mut vsock = Vsock::new(state.guest_cid, muxer, interrupt)?;
        vsock.reset_transport_on_activation();
        Ok(vsock)
    }

    /// Makes the next activation (the transport's restore, or its in-place restore
    /// on a rollback) send the guest TRANSPORT_RESET: its connections are gone.
    pub fn reset_transport_on_activation(&mut self) {
        self.reset_pending = true;
    }

    /// Posts TRANSPORT_RESET in the driver's next event buffer. Without one (a
    /// driver that posts none) the guest is not told, as on Firecracker.
    fn send_transport_reset(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = &a.mem;
        let Some(mut chain) = a.evt.pop_descriptor_chain(mem) else {
            return;
        };
        let head = chain.head_index();
        let len = match chain.next().filter(|d| d.is_write_only() && d.len() >= 4) {
            Some(d) => {
                use vm_memory::Bytes;
                device_writes().mark(d.addr().0, 4);
                match mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()) {
                    Ok(()) => 4,
                    Err(_) => 0,
                }
            }
            None => 0,
        };
        if a.evt.add_used(&a.mem, head, len).is_ok() {
            self.interrupt.signal_used_if_needed(&mut a.evt, &a.mem);
        }
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Eventfds KVM signals on QueueNotify, by queue index.
    pub fn queue_events(&self) -> &[EventFd; 3] {
        &self.queue_evts
    }

    fn fail_queue(&self, e: &QueueError) {
        self.interrupt.fail_queue(&self.errors, &self.name, e);
    }

    /// Serves every packet the driver queued, then delivers what they produced.
    pub fn process_tx(&mut self) {
        if self.interrupt.needs_reset() {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = &a.mem;
        let muxer = &mut self.muxer;
        let errors = &self.errors;
        let name = &self.name;
        let result = drain(&mut a.tx, mem, BUDGET, |mut chain| {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => muxer.handle_tx(&Header::of(&pkt), pkt.data_slice()),
                Err(e) => {
                    errors.report(name, format_args!("transmit chain {head}: {e}"));
                    muxer.counters.malformed += 1;
                }
            }
            0
        });
        match result {
            Ok(drained) => {
                if drained.more {
                    let _ = self.queue_evts[TX].write(1);
                }
                if drained.completed > 0 {
                    self.signal_used(TX);
                }
            }
            Err(e) => {
                self.fail_queue(&e);
                return;
            }
        }
        self.process_rx();
    }

    /// Fills guest receive buffers with whatever the muxer has for the guest.
    pub fn process_rx(&mut self) {
        if self.interrupt.needs_reset() || !self.muxer.has_rx_work() {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = &a.mem;
        let muxer = &mut self.muxer;
        let mut delivered = 0usize;
        let result: Result<(), QueueError> = (|| loop {
            a.rx.disable_notification(mem)?;
            while muxer.has_rx_work() && delivered < BUDGET {
                if pending(&a.rx, mem)? == 0 {
                    break;
                }
                let Some(mut chain) = a.rx.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                // Host-side writes KVM's dirty log never sees: a Diff snapshot
                // must hold them.
                for d in chain.clone().filter(|d| d.is_write_only()) {
                    device_writes().mark(d.addr().0, d.len() as usize);
                }
                let used = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(mut pkt) => match muxer.next_rx(pkt.data_slice()) {
                        Some(h) => {
                            h.write_to(&mut pkt);
                            muxer.counters.rx_packets += 1;
                            HEADER_LEN + h.len
                        }
                        None => {
                            // Nothing after all (the sockets had no data): the
                            // buffer stays the driver's.
                            a.rx.go_to_previous_position();
                            break;
                        }
                    },
                    Err(e) => {
                        self.errors
                            .report(&self.name, format_args!("receive chain {head}: {e}"));
                        muxer.counters.malformed += 1;
                        0
                    }
                };
                a.rx.add_used(mem, head, used)?;
                delivered += 1;
            }
            if delivered >= BUDGET {
                let _ = self.queue_evts[RX].write(1);
                return Ok(());
            }
            // Out of work, or out of buffers: in the latter case wait for the
            // driver's kick, unless buffers came in while we looked.
            if !a.rx.enable_notification(mem)? || !muxer.has_rx_work() {
                return Ok(());
            }
        })();
        if let Err(e) = result {
            self.fail_queue(&e);
            return;
        }
        if delivered > 0 {
            self.signal_used(RX);
        }
    }

    fn signal_used(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX { &mut a.rx } else { &mut a.tx };
        self.interrupt.signal_used_if_needed(queue, &a.mem);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        1 << F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(evt)) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(EVT));
        };
        self.active = Some(Active { mem, rx, tx, evt });
        if std::mem::take(&mut self.reset_pending) {
            self.send_transport_reset();
        }
        // Clients may have connected before the driver was ready.
        let _ = self.queue_evts[RX].write(1);
        let _ = self.queue_evts[TX].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset_all();
    }

    fn guest_errors(&self) -> GuestErrorLog {
        self.errors.clone()
    }

    fn saved_queues(&self) -> Vec<crate::devices::virtio::persist::QueueState> {
        use crate::devices::virtio::persist::QueueState;
        self.active
            .iter()
            .flat_map(|a| {
                [
                    QueueState::from(&a.rx),
                    QueueState::from(&a.tx),
                    QueueState::from(&a.evt),
                ]
            })
            .collect()
    }
}
