//! One stream connection between a guest port and a host Unix socket: its state,
//! both directions' credit (virtio 1.2, 5.10.6.3) and the bounded buffer of guest
//! data the host side has not taken yet.
//!
//! Credit keeps every buffer bounded. The guest may send at most `buf_alloc` bytes
//! beyond what spry has forwarded (`fwd_cnt`), so `tx_buf` never holds more than
//! [`TX_BUF_SIZE`] bytes from a guest that keeps the rules (one that breaks them is
//! reset). Towards the guest spry reads from the socket only as much as the guest's
//! credit allows, straight into its buffers: a guest that stops reading leaves the
//! data in the host socket, whose writer then blocks on its own.

use std::collections::VecDeque;
use std::io::Write;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Guest data one connection buffers for a slow host reader, and so the
/// `buf_alloc` spry advertises.
pub const TX_BUF_SIZE: u32 = 128 * 1024;
/// Forwarded bytes the guest has not heard about that make spry send a
/// `CREDIT_UPDATE` unasked: half the buffer, so a guest waiting for credit always
/// hears of it once the buffer drains.
pub const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 2;

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The guest sent more than the credit spry gave it.
    #[error("the guest sent {len} bytes with {free} bytes of credit left")]
    CreditOverrun {
        /// Payload length.
        len: u32,
        /// Credit the guest had.
        free: u32,
    },
    /// The host side of the stream failed.
    #[error("the host socket failed")]
    Host(#[source] std::io::Error),
    /// Guest memory could not be read or written.
    #[error("guest buffer access failed: {0}")]
    GuestMemory(String),
}

fn volatile_io(e: VolatileMemoryError) -> Result<usize, std::io::Error> {
    match e {
        VolatileMemoryError::IOError(e) => Err(e),
        other => Err(std::io::Error::other(other.to_string())),
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host client asked for it; the guest has not answered the REQUEST yet.
    Connecting,
    /// Data flows.
    Established,
}

/// What a connection has to tell the guest that is not data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    rst: bool,
}

/// What a connection put into a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// A packet with this header (its payload, if any, is already in the buffer).
    Packet(Header),
    /// Nothing to send now.
    Nothing,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    guest_cid: u64,
    /// Where it is.
    pub state: State,
    pending: Pending,
    /// Guest's receive buffer size and consumed count, from its latest packet.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes handed to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data (and the `OK` line) the host socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Leading bytes of `tx_buf` that are spry's own (the `OK` line), not guest
    /// data: they neither use the guest's credit nor count as forwarded.
    preamble: usize,
    /// The socket may have data (edge-triggered: cleared on EAGAIN).
    pub readable: bool,
    /// The host closed its sending side; spry told the guest so.
    host_eof: bool,
    /// The host closed the socket altogether (it will not read either).
    pub host_gone: bool,
    /// The guest will send no more: shut the socket's write side once `tx_buf` drains.
    peer_done_sending: bool,
    /// The guest will not receive any more.
    peer_done_receiving: bool,
    /// A CREDIT_REQUEST is outstanding.
    asked_credit: bool,
    /// Queued for the receive path.
    pub scheduled: bool,
    /// When a host client's REQUEST was queued, until the guest answers.
    pub connecting_since: Option<std::time::Instant>,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Connection {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: State::Connecting,
            pending: Pending::default(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            preamble: 0,
            readable: true,
            host_eof: false,
            host_gone: false,
            peer_done_sending: false,
            peer_done_receiving: false,
            asked_credit: false,
            scheduled: false,
            connecting_since: None,
        }
    }

    /// A host client's connection to guest port `peer_port`: a REQUEST to send.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
    ) -> Connection {
        let mut c = Connection::new(stream, local_port, peer_port, guest_cid);
        c.pending.request = true;
        c.connecting_since = Some(std::time::Instant::now());
        c
    }

    /// The guest's connection to host port `local_port`, already connected to its
    /// listener: a RESPONSE to send.
    pub fn guest_initiated(stream: UnixStream, request: &Header, guest_cid: u64) -> Connection {
        let mut c = Connection::new(stream, request.dst_port, request.src_port, guest_cid);
        c.state = State::Established;
        c.pending.response = true;
        c.update_peer_credit(request);
        c
    }

    /// Takes the guest's view of its receive buffer from any packet it sent.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.asked_credit = false;
    }

    /// Bytes the guest can take now. A guest that shrank its buffer below what is
    /// in flight has none.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest answered our REQUEST: tell the host client which port it got.
    pub fn accept(&mut self) -> Result<(), ConnectionError> {
        self.state = State::Established;
        self.connecting_since = None;
        let line = format!("OK {}\n", self.local_port);
        self.tx_buf.extend(line.as_bytes());
        self.preamble += line.len();
        self.flush()
    }

    /// The guest asked for our credit.
    pub fn request_credit_update(&mut self) {
        self.pending.credit_update = true;
    }

    /// The guest shut down one or both directions. Returns whether the connection
    /// is finished (both directions shut and nothing left to forward).
    pub fn peer_shutdown(&mut self, flags: u32) -> Result<bool, ConnectionError> {
        self.peer_done_receiving |= flags & SHUTDOWN_RCV != 0;
        self.peer_done_sending |= flags & SHUTDOWN_SEND != 0;
        self.flush()?;
        Ok(self.finished())
    }

    /// Both directions are shut and everything the guest sent reached the host.
    pub fn finished(&self) -> bool {
        self.peer_done_receiving && self.peer_done_sending && self.tx_buf.is_empty()
    }

    /// Guest data for the host socket: written now if the socket takes it, else
    /// buffered within the credit the guest was given.
    pub fn send_to_host<B: BitmapSlice>(
        &mut self,
        data: &VolatileSlice<'_, B>,
    ) -> Result<(), ConnectionError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let buffered = u32::try_from(self.buffered()).unwrap_or(u32::MAX);
        let free = TX_BUF_SIZE.saturating_sub(buffered);
        if len > free || self.peer_done_sending {
            return Err(ConnectionError::CreditOverrun { len, free });
        }
        let mut written = 0usize;
        if self.tx_buf.is_empty() {
            written = match self.stream.write_volatile(data).or_else(volatile_io) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(ConnectionError::Host(e)),
            };
            self.forwarded(written);
        }
        if written < data.len() {
            let rest = data
                .offset(written)
                .map_err(|e| ConnectionError::GuestMemory(e.to_string()))?;
            let mut copy = vec![0u8; rest.len()];
            rest.copy_to(&mut copy[..]);
            self.tx_buf.extend(copy);
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        // `n` is at most one packet or the buffer, both far below 4 GiB.
        self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(u32::MAX));
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered guest data to the host socket as far as it takes it; shuts
    /// the socket's write side once the guest is done sending and all is written.
    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let own = n.min(self.preamble);
                    self.preamble -= own;
                    self.forwarded(n - own);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnectionError::Host(e)),
            }
        }
        if self.tx_buf.is_empty() && self.peer_done_sending {
            // Tells the host reader it reached the end; errors mean it already left.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Guest bytes waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() - self.preamble
    }

    /// Marks the connection for a reset to the guest.
    pub fn reset(&mut self) {
        self.pending.rst = true;
    }

    /// Whether the connection should be dropped once its RST went out.
    pub fn resetting(&self) -> bool {
        self.pending.rst
    }

    /// Whether the receive path has anything for this connection.
    pub fn has_rx_work(&self) -> bool {
        let p = self.pending;
        p.request || p.response || p.credit_update || p.credit_request || p.rst || self.can_read()
    }

    fn can_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.peer_done_receiving
    }

    /// The reset that tells the guest this connection is gone.
    pub fn reset_header(&self) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }

    /// A header from the host side of this connection, carrying our credit.
    fn header(&mut self, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest: a control packet if one is due, else data
    /// read from the host socket into `data` (the receive buffer's payload part)
    /// within the guest's credit.
    pub fn next_rx<B: BitmapSlice>(
        &mut self,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<RxOutcome, ConnectionError> {
        let p = &mut self.pending;
        let control = if std::mem::take(&mut p.rst) {
            // Nothing else goes out after a reset.
            self.pending = Pending::default();
            Some(op::RST)
        } else if std::mem::take(&mut p.request) {
            Some(op::REQUEST)
        } else if std::mem::take(&mut p.response) {
            Some(op::RESPONSE)
        } else if std::mem::take(&mut p.credit_request) {
            Some(op::CREDIT_REQUEST)
        } else if std::mem::take(&mut p.credit_update) {
            Some(op::CREDIT_UPDATE)
        } else {
            None
        };
        if let Some(op) = control {
            return Ok(RxOutcome::Packet(self.header(op)));
        }
        if !self.can_read() {
            return Ok(RxOutcome::Nothing);
        }
        let credit = self.peer_credit();
        if credit == 0 {
            if !self.asked_credit {
                self.asked_credit = true;
                return Ok(RxOutcome::Packet(self.header(op::CREDIT_REQUEST)));
            }
            return Ok(RxOutcome::Nothing);
        }
        let Some(data) = data else {
            return Ok(RxOutcome::Nothing);
        };
        let room = data.len().min(credit as usize);
        let mut window = data
            .subslice(0, room)
            .map_err(|e| ConnectionError::GuestMemory(e.to_string()))?;
        match self.stream.read_volatile(&mut window).or_else(volatile_io) {
            Ok(0) => {
                // The host will send no more. A host that shut down just its
                // writing side still reads (a command's input ended, its output
                // has not), so the guest may go on sending; only a host that
                // closed the socket (a hang-up) will not receive either.
                self.host_eof = true;
                let mut h = self.header(op::SHUTDOWN);
                h.flags = SHUTDOWN_SEND;
                if self.host_gone {
                    h.flags |= SHUTDOWN_RCV;
                }
                Ok(RxOutcome::Packet(h))
            }
            Ok(n) => {
                // At most `room`, which is at most the credit, a u32.
                let n32 = u32::try_from(n).unwrap_or(u32::MAX);
                self.rx_cnt += Wrapping(n32);
                let mut h = self.header(op::RW);
                h.len = n32;
                Ok(RxOutcome::Packet(h))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.readable = false;
                Ok(RxOutcome::Nothing)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(RxOutcome::Nothing),
            Err(e) => Err(ConnectionError::Host(e)),
        }
    }
}
