//! The virtio-net device model: frames move between guest buffers and the tap with
//! `readv`/`writev` on the descriptor chains' guest memory, no copy in between.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{Tap, TapError, VNET_HDR_LEN};
use crate::devices::virtio::iovec::{
    host_iovecs, total_len, write_at, ChainBuffers, Segment, MAX_SEGMENTS,
};
use crate::devices::virtio::persist::QueueState;
use crate::devices::virtio::queue::{drain, pending, QueueError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, GuestErrorLog, Interrupt, VirtioDevice, F_RING_EVENT_IDX,
    F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_NET,
};
use crate::vstate::memory::GuestMemory;

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX: usize = 0;
/// Index of the transmit queue.
pub const TX: usize = 1;
/// Largest frame (Ethernet header plus a 64 KiB GSO payload).
pub const MAX_FRAME: usize = 65550;
const BUDGET: usize = QUEUE_SIZE as usize;

/// virtio-net feature bits (virtio 1.2, 5.1.3).
pub mod feature {
    /// Device handles partial checksums from the driver.
    pub const CSUM: u32 = 0;
    /// Driver handles partial checksums.
    pub const GUEST_CSUM: u32 = 1;
    /// Config space carries the MTU.
    pub const MTU: u32 = 3;
    /// Config space carries the MAC.
    pub const MAC: u32 = 5;
    /// Driver takes TSOv4 frames.
    pub const GUEST_TSO4: u32 = 7;
    /// Driver takes TSOv6 frames.
    pub const GUEST_TSO6: u32 = 8;
    /// Driver takes TSO frames with ECN.
    pub const GUEST_ECN: u32 = 9;
    /// Device takes TSOv4 frames.
    pub const HOST_TSO4: u32 = 11;
    /// Device takes TSOv6 frames.
    pub const HOST_TSO6: u32 = 12;
    /// Device takes TSO frames with ECN.
    pub const HOST_ECN: u32 = 13;
    /// Received frames may span several buffers.
    pub const MRG_RXBUF: u32 = 15;
}

/// The host side of a virtio-net device: a tap in production, a datagram socket in
/// tests. Both keep frame boundaries and are non-blocking.
pub trait NetBackend: AsRawFd + Send {
    /// TUN_F_* offloads the backend accepts.
    fn supported_offloads(&self) -> libc::c_uint;
    /// Tells the backend which offloads the guest can receive.
    fn set_offloads(&self, flags: libc::c_uint) -> Result<(), TapError>;
    /// Name for logs.
    fn name(&self) -> &str;
}

impl NetBackend for Tap {
    fn supported_offloads(&self) -> libc::c_uint {
        self.supported_offloads
    }
    fn set_offloads(&self, flags: libc::c_uint) -> Result<(), TapError> {
        Tap::set_offloads(self, flags)
    }
    fn name(&self) -> &str {
        Tap::name(self)
    }
}

/// What a network device is built from.
pub struct NetDeviceConfig {
    /// `iface_id`.
    pub id: String,
    /// The host side.
    pub backend: Box<dyn NetBackend>,
    /// MAC the guest sees, if configured.
    pub mac: Option<[u8; 6]>,
    /// MTU the device advertises, if configured.
    pub mtu: Option<u16>,
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    acked_features: u64,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (including vnet headers).
    pub rx_bytes: u64,
    /// Frames sent by the guest.
    pub tx_frames: u64,
    /// Bytes sent by the guest (including vnet headers).
    pub tx_bytes: u64,
    /// Guest frames the host refused, or malformed chains.
    pub tx_dropped: u64,
}

/// A virtio-net device.
pub struct Net {
    id: String,
    name: String,
    pub(super) backend: Box<dyn NetBackend>,
    pub(super) mac: Option<[u8; 6]>,
    pub(super) mtu: Option<u16>,
    avail_features: u64,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    /// The backend may have frames (edge-triggered: cleared only on EAGAIN).
    pub(super) backend_readable: bool,
    /// Receiving cannot progress until the guest acts (no buffers, or no active
    /// queue): the event loop then stops watching the backend, which would otherwise
    /// wake it for every frame that queues up.
    pub(super) rx_stalled: bool,
    /// Whether the event loop watches the backend fd right now.
    pub(super) backend_watched: bool,
    errors: GuestErrorLog,
    /// Traffic counters.
    pub counters: NetCounters,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn offload_features(offloads: libc::c_uint) -> u64 {
    let mut f = 0u64;
    if offloads & libc::TUN_F_CSUM != 0 {
        f |= (1 << feature::CSUM) | (1 << feature::GUEST_CSUM);
        if offloads & libc::TUN_F_TSO4 != 0 {
            f |= (1 << feature::GUEST_TSO4) | (1 << feature::HOST_TSO4);
        }
        if offloads & libc::TUN_F_TSO6 != 0 {
            f |= (1 << feature::GUEST_TSO6) | (1 << feature::HOST_TSO6);
        }
        if offloads & libc::TUN_F_TSO_ECN != 0
            && offloads & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        {
            f |= (1 << feature::GUEST_ECN) | (1 << feature::HOST_ECN);
        }
    }
    f
}

/// TUN_F_* flags for the receive offloads the driver acknowledged.
fn guest_offloads(acked: u64) -> libc::c_uint {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(feature::GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(feature::GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(feature::GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(feature::GUEST_ECN) {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

fn readv(fd: RawFd, iovecs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = libc::c_int::try_from(iovecs.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: the iovecs point into guest memory checked by `host_iovecs`, kept mapped
    // by the device's `GuestMemory`; the kernel writes at most `iov_len` to each.
    let n = unsafe { libc::readv(fd, iovecs.as_ptr(), count) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

fn writev(fd: RawFd, iovecs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = libc::c_int::try_from(iovecs.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: as in `readv`; the kernel only reads the buffers.
    let n = unsafe { libc::writev(fd, iovecs.as_ptr(), count) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Why a receive pass stopped.
enum RxStop {
    /// The backend has no more frames.
    BackendEmpty,
    /// Not enough guest buffers (this many were available); wait for the driver to
    /// add some.
    NoBuffers(u16),
    /// The budget ran out; come back later.
    Budget,
}

impl Net {
    /// A network device raising `interrupt`.
    pub fn new(config: NetDeviceConfig, interrupt: Arc<Interrupt>) -> std::io::Result<Net> {
        let mut avail_features = (1u64 << F_VERSION_1)
            | (1 << F_RING_EVENT_IDX)
            | (1 << F_RING_INDIRECT_DESC)
            | (1 << feature::MRG_RXBUF)
            | offload_features(config.backend.supported_offloads());
        if config.mac.is_some() {
            avail_features |= 1 << feature::MAC;
        }
        if config.mtu.is_some() {
            avail_features |= 1 << feature::MTU;
        }
        Ok(Net {
            name: format!("virtio-net {}", config.id),
            id: config.id,
            backend: config.backend,
            mac: config.mac,
            mtu: config.mtu,
            avail_features,
            rx_evt: EventFd::new(EFD_NONBLOCK)?,
            tx_evt: EventFd::new(EFD_NONBLOCK)?,
            interrupt,
            active: None,
            backend_readable: true,
            rx_stalled: false,
            backend_watched: false,
            errors: GuestErrorLog::default(),
            counters: NetCounters::default(),
        })
    }

    /// The interface id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Eventfds KVM signals on QueueNotify, by queue index.
    pub fn queue_events(&self) -> [&EventFd; 2] {
        [&self.rx_evt, &self.tx_evt]
    }

    /// The backend fd the event loop watches (edge-triggered).
    pub fn backend_fd(&self) -> RawFd {
        self.backend.as_raw_fd()
    }

    fn config_space(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        if let Some(mac) = self.mac {
            c[0..6].copy_from_slice(&mac);
        }
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(1500).to_le_bytes());
        c
    }

    fn fail_queue(&self, e: &QueueError) {
        self.interrupt.fail_queue(&self.errors, &self.name, e);
    }

    /// Buffer space one received frame may need.
    fn rx_frame_capacity(&self, acked: u64) -> usize {
        let gso = acked & ((1 << feature::GUEST_TSO4) | (1 << feature::GUEST_TSO6)) != 0;
        if gso {
            VNET_HDR_LEN + MAX_FRAME
        } else {
            // Ethernet header, a VLAN tag and the MTU.
            VNET_HDR_LEN + 14 + 4 + usize::from(self.mtu.unwrap_or(1500))
        }
    }

    /// Moves frames from the backend into guest receive buffers while both have some.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_ref() else {
            self.rx_stalled = true;
            return;
        };
        if self.interrupt.needs_reset() {
            self.rx_stalled = true;
            return;
        }
        if !self.backend_readable {
            self.rx_stalled = false;
            return;
        }
        let acked = active.acked_features;
        let needed = self.rx_frame_capacity(acked);
        let mergeable = acked & (1 << feature::MRG_RXBUF) != 0;
        let mut delivered = 0usize;
        let result = loop {
            match self.receive_frames(needed, mergeable, &mut delivered) {
                Ok(RxStop::NoBuffers(seen)) => {
                    // Ask for a notification when buffers come; retry only if more came
                    // in the meantime (the ones we saw were not enough). With event
                    // indices the driver kicks only when its avail index passes the
                    // one we name, so name the index past the `seen` buffers we gave
                    // back, not the first of them: those are already published, and a
                    // request at them would never be answered.
                    let Some(a) = self.active.as_mut() else {
                        break Ok(());
                    };
                    let start = a.rx.next_avail();
                    a.rx.set_next_avail(start.wrapping_add(seen));
                    let enabled = a.rx.enable_notification(&a.mem);
                    a.rx.set_next_avail(start);
                    if let Err(e) = enabled {
                        break Err(e.into());
                    }
                    match pending(&a.rx, &a.mem) {
                        Ok(now) if now > seen => continue,
                        Ok(_) => {
                            self.rx_stalled = true;
                            break Ok(());
                        }
                        Err(e) => break Err(e),
                    }
                }
                Ok(RxStop::BackendEmpty) => {
                    self.rx_stalled = false;
                    break Ok(());
                }
                Ok(RxStop::Budget) => {
                    self.rx_stalled = false;
                    let _ = self.rx_evt.write(1);
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            self.rx_stalled = true;
            self.fail_queue(&e);
            return;
        }
        if delivered > 0 {
            self.signal_if_needed(RX);
        }
    }

    fn signal_if_needed(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX { &mut a.rx } else { &mut a.tx };
        self.interrupt.signal_used_if_needed(queue, &a.mem);
    }

    fn receive_frames(
        &mut self,
        needed: usize,
        mergeable: bool,
        delivered: &mut usize,
    ) -> Result<RxStop, QueueError> {
        let fd = self.backend.as_raw_fd();
        let Some(a) = self.active.as_mut() else {
            return Ok(RxStop::BackendEmpty);
        };
        a.rx.disable_notification(&a.mem)?;
        loop {
            if *delivered == BUDGET {
                return Ok(RxStop::Budget);
            }
            // Where this frame's chains begin: rewinds go back here, never before a
            // chain already completed.
            let mut start = a.rx.next_avail();
            let mut chains: Vec<(u16, Vec<Segment>)> = Vec::new();
            let mut capacity = 0usize;
            let mut segments = 0usize;
            // A chain that cannot join this frame stops the gathering; more buffers
            // will not get past it, so the frame then takes what was gathered.
            let mut blocked = false;
            while pending(&a.rx, &a.mem)? > 0 {
                // `iter`, unlike `pop_descriptor_chain`, reports a ring it refuses
                // (one at guest address 0): with chains pending, a silent `None`
                // would have `process_rx` retry forever.
                let Some(chain) = a.rx.iter(&a.mem)?.next() else {
                    break;
                };
                let head = chain.head_index();
                match ChainBuffers::from_chain(chain, &a.mem) {
                    Ok(b)
                        if b.readable.is_empty()
                            && !b.writable.is_empty()
                            && segments + b.writable.len() <= MAX_SEGMENTS =>
                    {
                        capacity += total_len(&b.writable);
                        segments += b.writable.len();
                        chains.push((head, b.writable));
                    }
                    Ok(_) | Err(_) => {
                        if !chains.is_empty() {
                            // Keep the order of used entries: give this chain back and
                            // fill the frame with what we have.
                            a.rx.go_to_previous_position();
                            blocked = true;
                            break;
                        }
                        self.errors.report(
                            &self.name,
                            format_args!("receive chain {head} is not a device-writable buffer"),
                        );
                        a.rx.add_used(&a.mem, head, 0)?;
                        start = a.rx.next_avail();
                        continue;
                    }
                }
                if !mergeable || capacity >= needed {
                    break;
                }
            }
            if chains.is_empty() {
                return Ok(RxStop::NoBuffers(0));
            }
            let ring_exhausted = chains.len() >= usize::from(a.rx.size());
            if mergeable && capacity < needed && !ring_exhausted && !blocked {
                a.rx.set_next_avail(start);
                // Bounded by the queue size, which is a u16.
                return Ok(RxStop::NoBuffers(
                    u16::try_from(chains.len()).unwrap_or(u16::MAX),
                ));
            }
            let all: Vec<Segment> = chains.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            let iovecs = host_iovecs(&a.mem, &all)?;
            let n = match readv(fd, &iovecs) {
                Ok(n) => n,
                Err(e) => {
                    a.rx.set_next_avail(start);
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        log::error!("{}: reading {} failed: {e}", self.name, self.backend.name());
                    }
                    self.backend_readable = false;
                    return Ok(RxStop::BackendEmpty);
                }
            };
            // How much of the frame each chain holds: every chain up to the one
            // holding the last byte (at least one, even for an empty read).
            let mut left = n;
            let mut lengths = Vec::with_capacity(chains.len());
            for (_, segs) in &chains {
                if left == 0 && !lengths.is_empty() {
                    break;
                }
                let len = total_len(segs).min(left);
                left -= len;
                lengths.push(len);
            }
            // Bounded by the queue size, a u16.
            let used_chains = u16::try_from(lengths.len()).unwrap_or(u16::MAX);
            // num_buffers (offset 10 of the header) must be in guest memory before the
            // used entries publish the frame; the tap leaves those bytes alone.
            let _ = write_at(&a.mem, &chains[0].1, 10, &used_chains.to_le_bytes());
            for ((head, _), len) in chains.iter().zip(lengths) {
                a.rx.add_used(&a.mem, *head, u32::try_from(len).unwrap_or(u32::MAX))?;
            }
            // Unused chains go back to the driver's side of the ring.
            a.rx.set_next_avail((Wrapping(start) + Wrapping(used_chains)).0);
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += n as u64;
            *delivered += 1;
        }
    }

    /// Sends every frame the driver queued.
    pub fn process_tx(&mut self) {
        let fd = self.backend.as_raw_fd();
        if self.interrupt.needs_reset() {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = &a.mem;
        let errors = &self.errors;
        let counters = &mut self.counters;
        let name = &self.name;
        let backend_name = self.backend.name();
        let result = drain(&mut a.tx, mem, BUDGET, |chain| {
            let head = chain.head_index();
            let frame = match ChainBuffers::from_chain(chain, mem) {
                Ok(b) if b.writable.is_empty() => b.readable,
                Ok(_) => {
                    errors.report(
                        name,
                        format_args!("transmit chain {head} has device-writable buffers"),
                    );
                    counters.tx_dropped += 1;
                    return 0;
                }
                Err(e) => {
                    errors.report(name, format_args!("transmit chain {head}: {e}"));
                    counters.tx_dropped += 1;
                    return 0;
                }
            };
            let len = total_len(&frame);
            if !(VNET_HDR_LEN..=VNET_HDR_LEN + MAX_FRAME).contains(&len) {
                errors.report(name, format_args!("transmit frame of {len} bytes"));
                counters.tx_dropped += 1;
                return 0;
            }
            let sent = host_iovecs(mem, &frame)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|iov| writev(fd, &iov));
            match sent {
                Ok(_) => {
                    counters.tx_frames += 1;
                    counters.tx_bytes += len as u64;
                }
                Err(e) => {
                    counters.tx_dropped += 1;
                    log::debug!("{name}: {backend_name} refused a frame: {e}");
                }
            }
            0
        });
        match result {
            Ok(drained) => {
                if drained.more {
                    let _ = self.tx_evt.write(1);
                }
                if drained.completed > 0 {
                    self.signal_if_needed(TX);
                }
            }
            Err(e) => self.fail_queue(&e),
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(TX));
        };
        self.backend
            .set_offloads(guest_offloads(acked_features))
            .map_err(|e| ActivateError::Features(e.to_string()))?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            acked_features,
        });
        // Frames may have queued in the backend before the driver was ready.
        self.backend_readable = true;
        let _ = self.rx_evt.write(1);
        let _ = self.tx_evt.write(1);
        Ok(())
    }

    fn guest_errors(&self) -> GuestErrorLog {
        self.errors.clone()
    }

    fn reset(&mut self) {
        self.active = None;
        if let Err(e) = self.backend.set_offloads(0) {
            log::warn!("{}: {e}", self.name);
        }
    }

    fn saved_queues(&self) -> Vec<QueueState> {
        self.active
            .iter()
            .flat_map(|a| [QueueState::from(&a.rx), QueueState::from(&a.tx)])
            .collect()
    }
}
