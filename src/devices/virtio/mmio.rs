//! The virtio-mmio transport (virtio 1.2, 4.2; "modern", version 2 registers).
//!
//! Runs on vCPU threads. Queue configuration lives here until the driver sets
//! DRIVER_OK; then the queues move into the device, which serves them from the event
//! loop. Queue notifications never reach this code on the fast path: each queue's
//! QueueNotify write is an ioeventfd in KVM.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

use super::persist::{QueueState, TransportState, VirtioStateError};
use super::{
    status, ActivateError, GuestErrorLog, Interrupt, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use crate::sync::lock;
use crate::vstate::memory::GuestMemory;

/// "virt".
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// "SPRY".
pub const VENDOR_ID: u32 = 0x5952_5053;

/// Register offsets.
pub mod reg {
    /// MagicValue.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (available ring).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// QueueDeviceLow (used ring).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// The transport of one virtio device.
pub struct MmioTransport {
    name: String,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemory,
    device_type: u32,
    avail_features: u64,
    queue_max_sizes: Vec<u16>,
    features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    queues: Vec<Queue>,
    status: u32,
    activated: bool,
    errors: GuestErrorLog,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("name", &self.name)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    // Devices declare power-of-two sizes; should one not, the queue fails validation
    // at activation (the device then asks for a reset) instead of panicking here.
    max_sizes
        .iter()
        .map(|&max| Queue::new(max).unwrap_or_default())
        .collect()
}

impl MmioTransport {
    /// The transport for `device`, named `name` in logs.
    pub fn new(
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMemory,
    ) -> MmioTransport {
        let (device_type, avail_features, queue_max_sizes, errors) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
                d.guest_errors(),
            )
        };
        MmioTransport {
            name,
            device,
            interrupt,
            mem,
            device_type,
            avail_features,
            queues: fresh_queues(&queue_max_sizes),
            queue_max_sizes,
            features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            activated: false,
            errors,
        }
    }

    /// The transport's registers and every queue, to save. Call it with the vCPUs
    /// paused, from the event loop (see [`super::persist`]).
    pub fn save(&self) -> TransportState {
        let queues = if self.activated {
            self.device().saved_queues()
        } else {
            self.queues.iter().map(QueueState::from).collect()
        };
        TransportState {
            device_type: self.device_type,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            status: self.status,
            activated: self.activated,
            queues,
            interrupt: self.interrupt.save(),
        }
    }

    /// The transport for `device` (a fresh one, not activated) in the saved `state`:
    /// every value is checked against the device and `mem` first; an active device
    /// gets its queues back through `activate`, which also makes it look at them
    /// again (chains the driver queued before the snapshot are served then).
    pub fn restore(
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMemory,
        state: &TransportState,
    ) -> Result<MmioTransport, VirtioStateError> {
        let mut t = MmioTransport::new(name, device, interrupt, mem);
        t.load_state(state)?;
        Ok(t)
    }

    /// Puts this transport and its device back in the saved `state` (a rollback):
    /// the device is reset as if the driver had written 0 to the status register
    /// (it drops its queues and whatever it held for the guest), then the state is
    /// checked and loaded as [`MmioTransport::restore`] does. On an error the device
    /// is left reset; the driver sees it as needing a reset.
    pub fn restore_in_place(&mut self, state: &TransportState) -> Result<(), VirtioStateError> {
        self.reset();
        self.load_state(state)
    }

    /// Checks `state` against the device and guest memory and loads it into this
    /// transport, which is fresh or reset.
    fn load_state(&mut self, state: &TransportState) -> Result<(), VirtioStateError> {
        let t = self;
        if state.device_type != t.device_type {
            return Err(VirtioStateError::DeviceType {
                saved: state.device_type,
                device: t.device_type,
            });
        }
        if state.queues.len() != t.queue_max_sizes.len() {
            return Err(VirtioStateError::QueueCount {
                saved: state.queues.len(),
                device: t.queue_max_sizes.len(),
            });
        }
        let extra = state.acked_features & !t.avail_features;
        if extra != 0 {
            return Err(VirtioStateError::Features {
                acked: state.acked_features,
                offered: t.avail_features,
                extra,
            });
        }
        let pairs = state.queues.iter().zip(&t.queue_max_sizes).enumerate();
        if state.activated {
            let ready = status::FEATURES_OK | status::DRIVER_OK;
            if state.status & ready != ready || state.acked_features & (1 << F_VERSION_1) == 0 {
                return Err(VirtioStateError::ActiveWithoutDriverOk {
                    status: state.status,
                });
            }
            let event_idx = state.acked_features & (1 << F_RING_EVENT_IDX) != 0;
            let mut queues = pairs
                .map(|(i, (q, &max))| q.to_live_queue(i, max, &t.mem))
                .collect::<Result<Vec<_>, _>>()?;
            for q in &mut queues {
                q.set_event_idx(event_idx);
            }
            let mem = t.mem.clone();
            t.device()
                .activate(mem, queues, state.acked_features)
                .map_err(VirtioStateError::Activate)?;
        } else {
            t.queues = pairs
                .map(|(i, (q, &max))| q.to_queue(i, max))
                .collect::<Result<Vec<_>, _>>()?;
        }
        t.features_select = state.features_select;
        t.driver_features_select = state.driver_features_select;
        t.acked_features = state.acked_features;
        t.queue_select = state.queue_select;
        t.status = state.status;
        t.activated = state.activated;
        t.interrupt.restore(&state.interrupt);
        Ok(())
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let i = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(i)
    }

    /// Queue setup is only allowed between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & status::DRIVER_OK == 0
            && !self.activated
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_setup_allowed() {
            self.errors.report(
                &self.name,
                format_args!("queue configured outside FEATURES_OK..DRIVER_OK"),
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.queues = fresh_queues(&self.queue_max_sizes);
        self.interrupt.reset();
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1 << F_RING_EVENT_IDX) != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::InvalidQueue(i));
            }
            q.set_event_idx(event_idx);
        }
        let queues = std::mem::replace(&mut self.queues, fresh_queues(&self.queue_max_sizes));
        let mem = self.mem.clone();
        let acked = self.acked_features;
        self.device().activate(mem, queues, acked)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value & !status::DEVICE_NEEDS_RESET;
        let newly = value & !self.status;
        if newly & status::FEATURES_OK != 0 {
            let valid = self.acked_features & !self.avail_features == 0
                && self.acked_features & (1 << F_VERSION_1) != 0;
            if !valid {
                // The driver reads Status back and sees the features were refused.
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value;
        if newly & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 && !self.activated {
            match self.activate() {
                Ok(()) => self.activated = true,
                Err(e) => {
                    self.errors
                        .report(&self.name, format_args!("cannot activate: {e}"));
                    self.interrupt.signal_needs_reset();
                }
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.features_select {
                0 => (self.avail_features & 0xffff_ffff) as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => {
                let max = usize::try_from(self.queue_select)
                    .ok()
                    .and_then(|i| self.queue_max_sizes.get(i).copied());
                u32::from(max.unwrap_or(0))
            }
            reg::QUEUE_READY => {
                let activated = self.activated;
                u32::from(
                    self.selected_queue()
                        .is_some_and(|q| activated || q.ready()),
                )
            }
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let reset = if self.interrupt.needs_reset() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                self.status | reset
            }
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                self.errors.report(
                    &self.name,
                    format_args!("read of unknown register {offset:#x}"),
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => {
                if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
                    self.errors.report(
                        &self.name,
                        format_args!("features written outside DRIVER..FEATURES_OK"),
                    );
                    return;
                }
                let value = u64::from(value);
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | value,
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (value << 32),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => {
                let size = u16::try_from(value).unwrap_or(0);
                self.with_queue(|q| q.set_size(size));
            }
            reg::QUEUE_READY => self.with_queue(|q| q.set_ready(value == 1)),
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            reg::QUEUE_DESC_HIGH => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_AVAIL_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_AVAIL_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_USED_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            reg::QUEUE_USED_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            // Valid queue indices are ioeventfds and never exit; anything else is noise.
            reg::QUEUE_NOTIFY => {}
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            _ => {
                self.errors.report(
                    &self.name,
                    format_args!("write of unknown register {offset:#x}"),
                );
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device().read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            self.errors.report(
                &self.name,
                format_args!("{}-byte register read at {offset:#x}", data.len()),
            );
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            let config_offset = offset - reg::CONFIG;
            if !self.device().write_config(config_offset, data) {
                self.errors.report(
                    &self.name,
                    format_args!("write to read-only config space at {config_offset:#x}"),
                );
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => {
                self.write_register(offset, u32::from_le_bytes(bytes));
            }
            _ => self.errors.report(
                &self.name,
                format_args!("{}-byte register write at {offset:#x}", data.len()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{counting_interrupt, default_mem};
    use crate::devices::virtio::{read_config_bytes, F_VERSION_1};

    #[derive(Default, Debug)]
    struct Dummy {
        activations: usize,
        resets: usize,
        queue_count: usize,
        config: [u8; 8],
        live: Vec<Queue>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            (1 << F_VERSION_1) | (1 << F_RING_EVENT_IDX) | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data);
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            queues: Vec<Queue>,
            _acked: u64,
        ) -> Result<(), ActivateError> {
            self.activations += 1;
            self.queue_count = queues.len();
            self.live = queues;
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.live.clear();
        }
        fn guest_errors(&self) -> GuestErrorLog {
            GuestErrorLog::default()
        }
        fn saved_queues(&self) -> Vec<QueueState> {
            self.live.iter().map(QueueState::from).collect()
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dummy = Arc::new(Mutex::new(Dummy {
            config: *b"spryconf",
            ..Default::default()
        }));
        let (interrupt, _) = counting_interrupt();
        let t = MmioTransport::new("test".into(), dummy.clone(), interrupt, default_mem());
        (t, dummy)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Drives a device the way Linux's virtio_mmio driver does, up to DRIVER_OK.
    fn bring_up(t: &mut MmioTransport, features_hi: u32) {
        write(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(t, reg::DRIVER_FEATURES_SEL, 1);
        write(t, reg::DRIVER_FEATURES, features_hi);
        write(t, reg::DRIVER_FEATURES_SEL, 0);
        write(t, reg::DRIVER_FEATURES, 0);
        write(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for (i, base) in [(0u32, 0x10_0000u32), (1, 0x20_0000)] {
            write(t, reg::QUEUE_SEL, i);
            write(t, reg::QUEUE_NUM, 16);
            write(t, reg::QUEUE_DESC_LOW, base);
            write(t, reg::QUEUE_AVAIL_LOW, base + 0x1000);
            write(t, reg::QUEUE_USED_LOW, base + 0x2000);
            write(t, reg::QUEUE_READY, 1);
        }
        let s = read(t, reg::STATUS);
        write(t, reg::STATUS, s | status::DRIVER_OK);
    }

    #[test]
    fn test_identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(read(&mut t, reg::VERSION), 2);
        assert_eq!(read(&mut t, reg::DEVICE_ID), 42);
        write(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, reg::DEVICE_FEATURES), 1);
    }

    #[test]
    fn test_full_bring_up_activates_with_all_queues() {
        let (mut t, dummy) = transport();
        bring_up(&mut t, 1);
        assert_eq!(
            read(&mut t, reg::STATUS) & status::DRIVER_OK,
            status::DRIVER_OK
        );
        let d = dummy.lock().unwrap();
        assert_eq!((d.activations, d.queue_count), (1, 2));
    }

    #[test]
    fn test_features_without_version_1_are_refused() {
        let (mut t, dummy) = transport();
        bring_up(&mut t, 0);
        assert_eq!(read(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        assert_eq!(dummy.lock().unwrap().activations, 0);
    }

    #[test]
    fn test_reset_and_reactivation() {
        let (mut t, dummy) = transport();
        bring_up(&mut t, 1);
        write(&mut t, reg::STATUS, 0);
        assert_eq!(read(&mut t, reg::STATUS), 0);
        bring_up(&mut t, 1);
        let d = dummy.lock().unwrap();
        assert_eq!((d.activations, d.resets), (2, 1));
    }

    #[test]
    fn test_queue_outside_memory_needs_reset() {
        let (mut t, dummy) = transport();
        write(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        write(&mut t, reg::DRIVER_FEATURES, 1);
        write(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for i in 0..2 {
            write(&mut t, reg::QUEUE_SEL, i);
            write(&mut t, reg::QUEUE_NUM, 16);
            write(&mut t, reg::QUEUE_DESC_LOW, 0xf000_0000);
            write(&mut t, reg::QUEUE_READY, 1);
        }
        write(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(dummy.lock().unwrap().activations, 0);
        assert_ne!(read(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn test_queue_setup_after_driver_ok_is_ignored() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        write(&mut t, reg::QUEUE_SEL, 0);
        write(&mut t, reg::QUEUE_NUM, 8);
        assert_eq!(read(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn test_config_space_reads_any_width() {
        let (mut t, _) = transport();
        let mut b = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(&b, b"co");
    }

    #[test]
    fn test_odd_width_register_access_is_harmless() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1]);
        assert_eq!(read(&mut t, reg::STATUS), 0);
    }

    #[test]
    fn test_interrupt_ack_clears_status_bits() {
        let (mut t, _) = transport();
        t.interrupt.signal_used_queue();
        assert_eq!(read(&mut t, reg::INTERRUPT_STATUS), 1);
        write(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, reg::INTERRUPT_STATUS), 0);
    }

    fn restored(
        state: &TransportState,
    ) -> Result<(MmioTransport, Arc<Mutex<Dummy>>), VirtioStateError> {
        let dummy = Arc::new(Mutex::new(Dummy::default()));
        let (interrupt, _) = counting_interrupt();
        let t = MmioTransport::restore(
            "test".into(),
            dummy.clone(),
            interrupt,
            default_mem(),
            state,
        )?;
        Ok((t, dummy))
    }

    #[test]
    fn test_active_transport_restores_into_an_active_device() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        t.interrupt.signal_used_queue();
        let saved = t.save();

        let (mut back, dummy) = restored(&saved).unwrap();

        assert_eq!(back.save(), saved);
        assert_eq!(saved.queues[1].desc_table, 0x20_0000);
        let d = dummy.lock().unwrap();
        assert_eq!((d.activations, d.queue_count), (1, 2));
        drop(d);
        assert_eq!(read(&mut back, reg::INTERRUPT_STATUS), 1);
        assert_eq!(
            read(&mut back, reg::STATUS) & status::DRIVER_OK,
            status::DRIVER_OK
        );
    }

    #[test]
    fn test_transport_saved_mid_setup_finishes_setup_after_restore() {
        let (mut t, _) = transport();
        write(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        write(&mut t, reg::DRIVER_FEATURES, 1);
        write(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        write(&mut t, reg::QUEUE_SEL, 0);
        write(&mut t, reg::QUEUE_NUM, 8);
        write(&mut t, reg::QUEUE_DESC_LOW, 0x10_0000);
        write(&mut t, reg::QUEUE_AVAIL_LOW, 0x10_1000);
        write(&mut t, reg::QUEUE_USED_LOW, 0x10_2000);
        write(&mut t, reg::QUEUE_READY, 1);
        let saved = t.save();

        let (mut back, dummy) = restored(&saved).unwrap();
        write(&mut back, reg::QUEUE_SEL, 1);
        write(&mut back, reg::QUEUE_DESC_LOW, 0x20_0000);
        write(&mut back, reg::QUEUE_AVAIL_LOW, 0x20_1000);
        write(&mut back, reg::QUEUE_USED_LOW, 0x20_2000);
        write(&mut back, reg::QUEUE_READY, 1);
        let s = read(&mut back, reg::STATUS);
        write(&mut back, reg::STATUS, s | status::DRIVER_OK);

        assert_eq!(dummy.lock().unwrap().activations, 1);
        let live = back.save();
        assert_eq!(
            (live.queues[0].size, live.queues[0].desc_table),
            (8, 0x10_0000)
        );
    }

    #[test]
    fn test_restore_into_another_device_type_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        let mut saved = t.save();
        saved.device_type = 2;

        let err = restored(&saved).unwrap_err();

        assert_eq!(
            err.to_string(),
            "saved virtio device type 2, the device restored into is type 42"
        );
    }

    #[test]
    fn test_restore_with_features_the_device_lacks_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        let mut saved = t.save();
        saved.acked_features |= 1 << 40;

        let err = restored(&saved).unwrap_err();

        assert!(matches!(
            err,
            VirtioStateError::Features { extra, .. } if extra == 1 << 40
        ));
    }

    #[test]
    fn test_restore_of_active_queue_outside_memory_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        let mut saved = t.save();
        saved.queues[1].avail_ring = 0xffff_f000;

        let err = restored(&saved).unwrap_err();

        assert!(matches!(
            err,
            VirtioStateError::QueueUnusable { queue: 1, .. }
        ));
    }

    #[test]
    fn test_restore_with_a_missing_queue_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        let mut saved = t.save();
        saved.queues.pop();

        assert!(matches!(
            restored(&saved),
            Err(VirtioStateError::QueueCount {
                saved: 1,
                device: 2
            })
        ));
    }

    #[test]
    fn test_active_state_without_driver_ok_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 1);
        let mut saved = t.save();
        saved.status &= !status::DRIVER_OK;

        assert!(matches!(
            restored(&saved),
            Err(VirtioStateError::ActiveWithoutDriverOk { .. })
        ));
    }
}
