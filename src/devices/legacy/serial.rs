//! COM1: vm-superio's 16550A behind the port bus, its interrupt through an irqfd, its
//! output on spry's stdout and its input fed from spry's stdin by the event loop.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as SerialError, SerialEvents};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::BusDevice;
use crate::sync::lock;

/// First port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 register window.
pub const COM1_LEN: u64 = 8;

/// Bytes the UART's receive FIFO holds (vm-superio's, a 16550A's 16 and then some).
pub const FIFO_SIZE: usize = 64;

/// Errors while restoring the serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    /// More unread input than the FIFO holds.
    #[error("saved serial input holds {0} bytes, the receive FIFO holds {FIFO_SIZE}")]
    InputTooLong(usize),
    /// Creating the drained-input eventfd failed.
    #[error("cannot create the serial port's eventfd")]
    EventFd(#[source] io::Error),
    /// Raising the restored interrupt failed.
    #[error("cannot raise the restored serial interrupt")]
    Interrupt(#[source] io::Error),
}

/// The UART as the guest left it: registers and the input it has not read yet
/// (vm-superio's `SerialState`, as plain serde data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read, oldest first.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::SerialState> for SerialState {
    fn from(s: vm_superio::SerialState) -> SerialState {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::SerialState {
    fn from(s: &SerialState) -> vm_superio::SerialState {
        vm_superio::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Raises an interrupt by writing to an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(pub Arc<EventFd>);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the input side when the guest has drained the receive FIFO, so stdin
/// reading (paused while the FIFO was full) can resume.
#[derive(Debug)]
pub struct InputDrained(Arc<EventFd>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("serial: cannot signal drained input: {e}");
        }
    }
}

type Uart = Serial<EventFdTrigger, InputDrained, Box<dyn Write + Send>>;

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Uart,
    reported_error: bool,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `interrupt` and writing to `out`. Returns the device and the
    /// eventfd that fires when the guest empties the receive FIFO.
    pub fn new(
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
    ) -> io::Result<(SerialDevice, EventFd)> {
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let uart = Serial::with_events(
            EventFdTrigger(Arc::new(interrupt)),
            InputDrained(Arc::new(drained.try_clone()?)),
            out,
        );
        Ok((
            SerialDevice {
                uart,
                reported_error: false,
            },
            drained,
        ))
    }

    /// The UART's state, to save.
    pub fn save(&self) -> SerialState {
        SerialState::from(self.uart.state())
    }

    /// A UART in the saved `state`, otherwise as [`SerialDevice::new`]. An
    /// interrupt the state has pending (data ready, or room to transmit, where the
    /// guest enabled those interrupts) is raised again on `interrupt`.
    pub fn restore(
        state: &SerialState,
        interrupt: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<(SerialDevice, EventFd), SerialStateError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialStateError::InputTooLong(state.in_buffer.len()));
        }
        let drained = EventFd::new(EFD_NONBLOCK).map_err(SerialStateError::EventFd)?;
        let events = InputDrained(Arc::new(
            drained.try_clone().map_err(SerialStateError::EventFd)?,
        ));
        let uart = Serial::from_state(
            &vm_superio::SerialState::from(state),
            EventFdTrigger(Arc::new(interrupt)),
            events,
            out,
        )
        // `from_state` fails only on a FIFO too long (checked above) or a failed
        // interrupt.
        .map_err(|e| match e {
            SerialError::Trigger(e) | SerialError::IOError(e) => SerialStateError::Interrupt(e),
            SerialError::FullFifo => SerialStateError::InputTooLong(state.in_buffer.len()),
        })?;
        Ok((
            SerialDevice {
                uart,
                reported_error: false,
            },
            drained,
        ))
    }

    /// Puts this UART back in the saved `state` (a rollback), keeping its interrupt,
    /// its drained event and its output; raises the interrupts the state has
    /// pending, as [`SerialDevice::restore`]. Needs no system call but the
    /// interrupt's write, so it runs under the VMM thread's seccomp filter.
    pub fn restore_in_place(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(SerialStateError::InputTooLong(state.in_buffer.len()));
        }
        let interrupt = self.uart.interrupt_evt().0.clone();
        let drained = self.uart.events().0.clone();
        // A stand-in holds the UART's place while its output moves to the new one.
        let stand_in: Box<dyn Write + Send> = Box::new(io::sink());
        let stand_in = Serial::with_events(
            EventFdTrigger(interrupt.clone()),
            InputDrained(drained.clone()),
            stand_in,
        );
        let out = std::mem::replace(&mut self.uart, stand_in).into_writer();
        self.uart = Serial::from_state(
            &vm_superio::SerialState::from(state),
            EventFdTrigger(interrupt),
            InputDrained(drained),
            out,
        )
        .map_err(|e| match e {
            SerialError::Trigger(e) | SerialError::IOError(e) => SerialStateError::Interrupt(e),
            SerialError::FullFifo => SerialStateError::InputTooLong(state.in_buffer.len()),
        })?;
        Ok(())
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues bytes for the guest to read; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                self.report(&e);
                0
            }
        }
    }

    fn report(&mut self, e: &SerialError<io::Error>) {
        if !self.reported_error {
            log::warn!("serial: {e:?} (further serial errors are not logged)");
            self.reported_error = true;
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // String input (`rep insb`) arrives as several bytes for one register.
        let reg = u8::try_from(offset).unwrap_or(u8::MAX);
        for byte in data.iter_mut() {
            *byte = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let reg = u8::try_from(offset).unwrap_or(u8::MAX);
        for &byte in data {
            if let Err(e) = self.uart.write(reg, byte) {
                self.report(&e);
            }
        }
    }
}

const STDIN_DATA: u32 = 0;
const DRAINED_DATA: u32 = 1;

/// Feeds spry's stdin into the UART from the event loop, pausing while the guest's
/// FIFO is full (bytes wait in the pipe or terminal, not in spry).
pub struct SerialInput {
    device: Arc<Mutex<SerialDevice>>,
    input: RawFd,
    drained: EventFd,
    input_open: bool,
    input_watched: bool,
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialInput")
            .field("input", &self.input)
            .finish()
    }
}

impl SerialInput {
    /// Input from `input` (normally stdin) into `device`.
    pub fn new(device: Arc<Mutex<SerialDevice>>, input: RawFd, drained: EventFd) -> SerialInput {
        SerialInput {
            device,
            input,
            drained,
            input_open: true,
            input_watched: false,
        }
    }

    fn watch_input(&mut self, ops: &mut EventOps) {
        if self.input_open && !self.input_watched {
            match ops.add(Events::with_data_raw(self.input, STDIN_DATA, EventSet::IN)) {
                Ok(()) => self.input_watched = true,
                // Regular files and /dev/null cannot be polled: no console input.
                Err(e) => {
                    log::debug!("serial: stdin cannot be polled ({e:?}); console input disabled");
                    self.input_open = false;
                }
            }
        }
    }

    fn unwatch_input(&mut self, ops: &mut EventOps) {
        if self.input_watched {
            let _ = ops.remove(Events::with_data_raw(self.input, STDIN_DATA, EventSet::IN));
            self.input_watched = false;
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut device = lock(&self.device);
        let room = device.input_capacity();
        if room == 0 {
            drop(device);
            self.unwatch_input(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let len = room.min(buf.len());
        // SAFETY: `self.input` is an open fd for the process lifetime (stdin) and `buf`
        // has room for `len` bytes.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), len) };
        match n {
            0 => {
                drop(device);
                self.input_open = false;
                self.unwatch_input(ops);
            }
            n if n > 0 => {
                let n = usize::try_from(n).unwrap_or(0);
                device.enqueue_input(&buf[..n]);
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::WouldBlock
                    && err.kind() != io::ErrorKind::Interrupted
                {
                    log::warn!("serial: reading stdin failed: {err}; console input disabled");
                    drop(device);
                    self.input_open = false;
                    self.unwatch_input(ops);
                }
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.drained, DRAINED_DATA, EventSet::IN)) {
            log::warn!("serial: cannot watch the drained event: {e:?}");
        }
        self.watch_input(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_DATA => {
                if events.event_set().contains(EventSet::IN) {
                    self.read_input(ops);
                } else {
                    // Hang-up or error without data: the input is gone.
                    self.input_open = false;
                    self.unwatch_input(ops);
                }
            }
            DRAINED_DATA => {
                let _ = self.drained.read();
                self.watch_input(ops);
            }
            other => log::warn!("serial: unexpected event {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct SharedOut(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCRATCH: u64 = 7;

    #[test]
    fn test_guest_output_reaches_the_writer() {
        let out = SharedOut::default();
        let (mut dev, _) =
            SerialDevice::new(EventFd::new(0).unwrap(), Box::new(out.clone())).unwrap();
        dev.write(THR, b"hi\n");
        assert_eq!(*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn test_enabling_thre_interrupt_fires_the_irqfd() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let (mut dev, _) =
            SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink())).unwrap();
        dev.write(IER, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn test_input_is_readable_and_drain_is_signalled() {
        let (mut dev, drained) =
            SerialDevice::new(EventFd::new(0).unwrap(), Box::new(io::sink())).unwrap();
        assert_eq!(dev.enqueue_input(b"a"), 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut byte = [0u8];
        dev.read(THR, &mut byte);
        assert_eq!(byte, *b"a");
        assert_eq!(drained.read().unwrap(), 1);
    }

    #[test]
    fn test_full_fifo_takes_no_more_input() {
        let (mut dev, _) =
            SerialDevice::new(EventFd::new(0).unwrap(), Box::new(io::sink())).unwrap();
        let room = dev.input_capacity();
        assert_eq!(dev.enqueue_input(&vec![b'x'; room + 10]), room);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }

    #[test]
    fn test_restored_uart_keeps_registers_and_unread_input() {
        let (mut dev, _) =
            SerialDevice::new(EventFd::new(0).unwrap(), Box::new(io::sink())).unwrap();
        dev.write(LCR, &[0x03]);
        dev.write(SCRATCH, &[0x5a]);
        dev.enqueue_input(b"ab");
        let saved = dev.save();
        let json = serde_json::to_string(&saved).unwrap();

        let state: SerialState = serde_json::from_str(&json).unwrap();
        let (mut back, _) =
            SerialDevice::restore(&state, EventFd::new(0).unwrap(), Box::new(io::sink())).unwrap();

        assert_eq!(back.save(), saved);
        let mut bytes = [0u8; 2];
        back.read(THR, &mut bytes);
        assert_eq!(&bytes, b"ab");
        let mut scratch = [0u8];
        back.read(SCRATCH, &mut scratch);
        assert_eq!(scratch, [0x5a]);
    }

    #[test]
    fn test_restored_uart_with_data_ready_interrupt_raises_it() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let (mut dev, _) =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(io::sink())).unwrap();
        // Received-data interrupt on (IER bit 0), then a byte arrives.
        dev.write(IER, &[0x01]);
        dev.enqueue_input(b"x");
        let saved = dev.save();

        let _ =
            SerialDevice::restore(&saved, irq.try_clone().unwrap(), Box::new(io::sink())).unwrap();

        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn test_restore_with_input_past_the_fifo_is_refused() {
        let (dev, _) = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(io::sink())).unwrap();
        let mut state = dev.save();
        state.in_buffer = vec![b'x'; FIFO_SIZE + 1];

        let err = SerialDevice::restore(&state, EventFd::new(0).unwrap(), Box::new(io::sink()))
            .err()
            .unwrap();

        assert_eq!(
            err.to_string(),
            "saved serial input holds 65 bytes, the receive FIFO holds 64"
        );
    }
}
