//! The i8042 keyboard controller, reduced to what Linux uses on a microVM: the reset
//! line (`reboot=k`) and a keyboard that can deliver Ctrl-Alt-Del.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitEvent, ExitReason};

/// First port of the controller (data); the command/status port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// Port window 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;

const KBD_ACK: u8 = 0xfa;
const SELF_TEST_OK: u8 = 0x55;
const BUF_SIZE: usize = 16;

/// Scan code set 2 (what Linux's atkbd reads without translation).
const KEY_CTRL: u16 = 0x0014;
const KEY_ALT: u16 = 0x0011;
const KEY_DEL: u16 = 0xe071;

/// Errors of the keyboard side.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The guest has not read earlier key presses.
    #[error("i8042 keyboard buffer is full")]
    BufferFull,
    /// Raising IRQ 1 failed.
    #[error("cannot raise the keyboard interrupt")]
    Interrupt(#[source] std::io::Error),
    /// A saved output buffer longer than the controller's.
    #[error("saved i8042 output buffer holds {0} bytes, the controller's holds {BUF_SIZE}")]
    StateBuffer(usize),
    /// A saved pending command that takes no data byte.
    #[error("saved i8042 pending command {0:#04x} takes no data byte")]
    StateCommand(u8),
}

/// The controller as the guest left it. Whether a reset was already requested is
/// not kept: a restored VM starts running, and its next reset must stop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Controller configuration byte.
    pub control: u8,
    /// Output port.
    pub outp: u8,
    /// A command waiting for its data byte.
    pub pending_cmd: Option<u8>,
    /// Bytes the guest has not read yet, oldest first.
    pub buf: Vec<u8>,
}

/// The controller.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitEvent>,
    kbd_interrupt: EventFd,
    status: u8,
    control: u8,
    outp: u8,
    pending_cmd: Option<u8>,
    buf: VecDeque<u8>,
    /// The guest pulsed the reset line. Linux writes the reset command again and
    /// again (from every vCPU that gets there) until the machine goes away; only
    /// the first one logs and asks the VM to stop.
    reset_requested: bool,
}

impl I8042 {
    /// A controller whose reset line ends the VM through `exit` and whose keyboard
    /// interrupt is `kbd_interrupt` (an irqfd on IRQ 1).
    pub fn new(exit: Arc<ExitEvent>, kbd_interrupt: EventFd) -> I8042 {
        I8042 {
            exit,
            kbd_interrupt,
            status: SB_KBD_ENABLED | SB_SYSTEM_FLAG,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            pending_cmd: None,
            buf: VecDeque::with_capacity(BUF_SIZE),
            reset_requested: false,
        }
    }

    /// The controller's state, to save.
    pub fn save(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            pending_cmd: self.pending_cmd,
            buf: self.buf.iter().copied().collect(),
        }
    }

    /// A controller in the saved `state`, otherwise as [`I8042::new`]. Bytes still
    /// to read raise IRQ 1 again (if the guest enabled it): the interrupt that
    /// announced them went to the old VM.
    pub fn restore(
        state: &I8042State,
        exit: Arc<ExitEvent>,
        kbd_interrupt: EventFd,
    ) -> Result<I8042, I8042Error> {
        let mut dev = I8042::new(exit, kbd_interrupt);
        dev.restore_in_place(state)?;
        Ok(dev)
    }

    /// Puts this controller back in the saved `state` (a rollback), as
    /// [`I8042::restore`] builds one.
    pub fn restore_in_place(&mut self, state: &I8042State) -> Result<(), I8042Error> {
        if state.buf.len() > BUF_SIZE {
            return Err(I8042Error::StateBuffer(state.buf.len()));
        }
        if let Some(cmd) = state.pending_cmd {
            if cmd != CMD_WRITE_CTR && cmd != CMD_WRITE_OUTP {
                return Err(I8042Error::StateCommand(cmd));
            }
        }
        self.status = state.status;
        self.control = state.control;
        self.outp = state.outp;
        self.pending_cmd = state.pending_cmd;
        self.buf.clear();
        self.buf.extend(&state.buf);
        if !self.buf.is_empty() {
            self.interrupt()?;
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) -> Result<(), I8042Error> {
        if self.buf.len() >= BUF_SIZE {
            return Err(I8042Error::BufferFull);
        }
        self.buf.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        Ok(())
    }

    fn interrupt(&self) -> Result<(), I8042Error> {
        if self.control & CB_KBD_INT != 0 {
            self.kbd_interrupt.write(1).map_err(I8042Error::Interrupt)?;
        }
        Ok(())
    }

    fn press(&mut self, key: u16) -> Result<(), I8042Error> {
        let [prefix, code] = key.to_be_bytes();
        let room = BUF_SIZE - self.buf.len();
        if room < usize::from(prefix != 0) + 1 {
            return Err(I8042Error::BufferFull);
        }
        if prefix != 0 {
            self.push(prefix)?;
        }
        self.push(code)?;
        self.interrupt()
    }

    /// Presses Ctrl-Alt-Del on the keyboard (Firecracker's `SendCtrlAltDel`).
    pub fn ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        self.press(KEY_CTRL)?;
        self.press(KEY_ALT)?;
        self.press(KEY_DEL)
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        let reply = match cmd {
            CMD_READ_CTR => Some(self.control),
            CMD_READ_OUTP => Some(self.outp),
            CMD_SELF_TEST => Some(SELF_TEST_OK),
            CMD_KBD_TEST => Some(0),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => {
                self.pending_cmd = Some(cmd);
                None
            }
            CMD_RESET_CPU => {
                self.reset();
                None
            }
            _ => None,
        };
        if let Some(byte) = reply {
            // Replies go to a buffer the guest drains; drop on overflow like hardware.
            let _ = self.push(byte);
        }
    }

    /// Pulls the reset line: the first time, the VM is asked to stop; later pulses
    /// (the guest retrying until it is gone) change nothing.
    fn reset(&mut self) {
        if std::mem::replace(&mut self.reset_requested, true) {
            log::trace!("i8042: reset again while the VM stops");
            return;
        }
        log::info!("guest reset the machine through the i8042");
        self.exit.request(ExitReason::GuestReset);
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            _ => {
                // A command for the keyboard itself: acknowledge it.
                if self.push(KBD_ACK).is_ok() {
                    if let Err(e) = self.interrupt() {
                        log::warn!("i8042: {e}");
                    }
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            OFS_STATUS => self.status,
            OFS_DATA => {
                let byte = self.buf.pop_front().unwrap_or(0);
                if self.buf.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else if let Err(e) = self.interrupt() {
                    // Linux's i8042 driver takes one byte per interrupt, and irqfd
                    // merges interrupts raised back to back: one per byte, as the
                    // guest reads, is the only way all of them arrive.
                    log::warn!("i8042: {e}");
                }
                byte
            }
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            OFS_STATUS => self.command(value),
            OFS_DATA => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (I8042, Arc<ExitEvent>, EventFd) {
        let exit = Arc::new(ExitEvent::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (
            I8042::new(exit.clone(), irq.try_clone().unwrap()),
            exit,
            irq,
        )
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn test_reset_command_requests_guest_reset() {
        let (mut dev, exit, _) = device();
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn test_repeated_reset_commands_stop_the_vm_once() {
        let (mut dev, exit, _) = device();
        for _ in 0..5 {
            dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        }
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn test_reset_commands_from_several_vcpus_stop_the_vm_once() {
        let (dev, exit, _) = device();
        let dev = Arc::new(std::sync::Mutex::new(dev));
        let vcpus: Vec<_> = (0..4)
            .map(|_| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        crate::sync::lock(&dev).write(OFS_STATUS, &[CMD_RESET_CPU]);
                    }
                })
            })
            .collect();
        for vcpu in vcpus {
            vcpu.join().unwrap();
        }
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn test_control_register_round_trips() {
        let (mut dev, _, _) = device();
        dev.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        dev.write(OFS_DATA, &[0x45]);
        dev.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(
            read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL,
            SB_OUT_DATA_AVAIL
        );
        assert_eq!(read(&mut dev, OFS_DATA), 0x45);
        assert_eq!(read(&mut dev, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn test_reading_a_byte_with_more_queued_raises_irq1_again() {
        let (mut dev, _exit, irq) = device();
        dev.ctrl_alt_del().unwrap();
        irq.read().unwrap();
        let mut byte = [0u8];
        dev.read(OFS_DATA, &mut byte);
        assert_eq!(irq.read().unwrap(), 1);
        dev.read(OFS_DATA, &mut byte);
        dev.read(OFS_DATA, &mut byte);
        assert_eq!(irq.read().unwrap(), 2);
        dev.read(OFS_DATA, &mut byte);
        assert_eq!(byte, [0x71]);
        assert!(irq.read().is_err(), "no interrupt once the buffer is empty");
    }

    #[test]
    fn test_ctrl_alt_del_queues_set2_codes_and_raises_irq1() {
        let (mut dev, exit, irq) = device();
        dev.ctrl_alt_del().unwrap();
        assert_eq!(irq.read().unwrap(), 3);
        let codes: Vec<u8> = (0..4).map(|_| read(&mut dev, OFS_DATA)).collect();
        assert_eq!(codes, vec![0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn test_keyboard_command_is_acknowledged() {
        let (mut dev, _, _) = device();
        dev.write(OFS_DATA, &[0xf4]);
        assert_eq!(read(&mut dev, OFS_DATA), KBD_ACK);
    }

    #[test]
    fn test_full_buffer_refuses_more_keys() {
        let (mut dev, _, _) = device();
        for _ in 0..4 {
            let _ = dev.ctrl_alt_del();
        }
        assert!(matches!(dev.ctrl_alt_del(), Err(I8042Error::BufferFull)));
    }

    #[test]
    fn test_restored_controller_keeps_unread_keys_and_registers() {
        let (mut dev, _, _) = device();
        dev.write(OFS_STATUS, &[CMD_WRITE_OUTP]);
        dev.ctrl_alt_del().unwrap();
        let _ = read(&mut dev, OFS_DATA);
        let saved = dev.save();
        let (_, exit, irq) = device();

        let state: I8042State =
            serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
        let mut back = I8042::restore(&state, exit, irq.try_clone().unwrap()).unwrap();

        assert_eq!(back.save(), saved);
        assert_eq!(irq.read().unwrap(), 1);
        let codes: Vec<u8> = (0..3).map(|_| read(&mut back, OFS_DATA)).collect();
        assert_eq!(codes, vec![0x11, 0xe0, 0x71]);
        back.write(OFS_DATA, &[0x07]);
        assert_eq!(back.save().outp, 0x07);
    }

    #[test]
    fn test_restored_controller_still_resets_the_vm() {
        let (mut dev, _, _) = device();
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        let saved = dev.save();
        let (_, exit, irq) = device();

        let mut back = I8042::restore(&saved, exit.clone(), irq).unwrap();
        back.write(OFS_STATUS, &[CMD_RESET_CPU]);

        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn test_restore_with_an_overlong_buffer_is_refused() {
        let (dev, exit, irq) = device();
        let mut state = dev.save();
        state.buf = vec![0; BUF_SIZE + 1];

        let err = I8042::restore(&state, exit, irq).unwrap_err();

        assert_eq!(
            err.to_string(),
            "saved i8042 output buffer holds 17 bytes, the controller's holds 16"
        );
    }

    #[test]
    fn test_restore_with_a_foreign_pending_command_is_refused() {
        let (dev, exit, irq) = device();
        let mut state = dev.save();
        state.pending_cmd = Some(CMD_RESET_CPU);

        assert!(matches!(
            I8042::restore(&state, exit, irq),
            Err(I8042Error::StateCommand(0xfe))
        ));
    }
}
