//! The host side of the device in Firecracker's hybrid form: every connection is a
//! Unix stream socket.
//!
//! - Host clients connect to `uds_path` and write `CONNECT <port>\n`; spry asks the
//!   guest (REQUEST), and on its RESPONSE writes `OK <host port>\n` back and bridges
//!   the stream; on a RST it closes the client's socket.
//! - A guest connecting to host port P is connected to the listener at
//!   `<uds_path>_P`; a port nobody listens on gets a RST.
//!
//! Everything a guest or client can make spry hold is bounded: connections (live
//! and waiting for their `CONNECT` line) by [`MAX_CONNECTIONS`], each one's buffer
//! by its credit, resets waiting for a receive buffer by [`MAX_QUEUED_RESETS`].

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::connection::{Connection, RxOutcome, State};
use super::packet::{op, Header, HOST_CID, TYPE_STREAM};
use super::unix::{accept_nonblocking, connect_nonblocking};

/// Connections, live or waiting for their `CONNECT` line, one device holds at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Resets for unknown connections waiting for a receive buffer; more are dropped
/// (the guest learns of those connections' end by its own timeout).
pub const MAX_QUEUED_RESETS: usize = 256;
/// How long a host client may take to write its `CONNECT` line, and the guest to
/// answer the REQUEST that follows (Firecracker's 2 s): a client that stays silent
/// or a guest that never answers gives its connection slot back.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients taken off the listener per wake-up: a client connecting in a loop
/// cannot keep the event loop to itself (the listener is level-triggered, so the
/// rest wait for the next round).
const ACCEPT_BUDGET: usize = 32;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First host port handed to host-initiated connections; guest-initiated ones use
/// the port the guest named, which Linux keeps below this in practice.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets put in the guest's receive queue.
    pub rx_packets: u64,
    /// Stream bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Stream bytes the guest sent.
    pub tx_bytes: u64,
    /// Malformed packets or chains, dropped (or answered with a reset).
    pub malformed: u64,
    /// Connections established, either way.
    pub connections: u64,
    /// Connections refused: unbound ports, the connection limit, bad `CONNECT` lines.
    pub refused: u64,
    /// Established connections reset.
    pub resets: u64,
}

/// A change to the set of fds the event loop watches for the muxer.
#[derive(Debug)]
pub enum FdChange {
    /// Start watching this fd (readable and writable, edge-triggered).
    Watch(RawFd),
    /// Stop watching this stream's fd, then close it (closing first would leave
    /// the event loop's bookkeeping pointing at a reused fd number).
    Unwatch(UnixStream),
}

/// A host client that has not finished its `CONNECT` line.
#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

type ConnKey = (u32, u32);

/// The Unix-socket side of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    clients: HashMap<RawFd, PendingClient>,
    resets: VecDeque<Header>,
    rx_queue: VecDeque<ConnKey>,
    next_local_port: u32,
    changes: Vec<FdChange>,
    /// Counters for metrics.
    pub counters: VsockCounters,
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?;
    port.trim_end_matches('\r').parse().ok()
}

impl Drop for Muxer {
    /// The socket file goes with the device, so the same config boots again.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Muxer {
    /// The host side for guest `guest_cid`, taking clients on `listener` (bound to
    /// `uds_path`, non-blocking).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Muxer {
        Muxer {
            guest_cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            clients: HashMap::new(),
            resets: VecDeque::new(),
            rx_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            changes: Vec::new(),
            counters: VsockCounters::default(),
        }
    }

    /// The Unix socket host clients connect to.
    pub fn uds_path(&self) -> &std::path::Path {
        &self.uds_path
    }

    /// The listener's fd, for the event loop.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Fd changes since the last call, for the event loop to apply in order.
    pub fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    /// Guest bytes all connections hold for their host sockets.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    /// Live connections plus clients still writing their `CONNECT` line.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.clients.len()
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.scheduled && c.has_rx_work() {
                c.scheduled = true;
                self.rx_queue.push_back(key);
            }
        }
    }

    fn queue_reset(&mut self, to: &Header) {
        self.push_reset(to.reset_reply());
    }

    fn push_reset(&mut self, rst: Header) {
        if self.resets.len() < MAX_QUEUED_RESETS {
            self.resets.push_back(rst);
        }
    }

    /// When the oldest client or unanswered REQUEST times out, if any waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().map(|c| c.since);
        let connecting = self.conns.values().filter_map(|c| c.connecting_since);
        clients.chain(connecting).min().map(|t| t + CONNECT_TIMEOUT)
    }

    /// Closes clients that did not finish their `CONNECT` line in time, and host
    /// connections the guest did not answer (the guest gets a RST for those, so a
    /// late RESPONSE finds nothing).
    pub fn expire(&mut self, now: Instant) {
        let late = |since: Instant| now.saturating_duration_since(since) >= CONNECT_TIMEOUT;
        let silent: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| late(c.since))
            .map(|(&fd, _)| fd)
            .collect();
        for fd in silent {
            if let Some(client) = self.clients.remove(&fd) {
                self.counters.refused += 1;
                self.changes.push(FdChange::Unwatch(client.stream));
            }
        }
        let unanswered: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connecting_since.is_some_and(late))
            .map(|(&k, _)| k)
            .collect();
        for key in unanswered {
            if let Some(conn) = self.conns.get(&key) {
                let rst = conn.reset_header();
                self.counters.refused += 1;
                self.remove(key);
                self.push_reset(rst);
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.schedule(key);
    }

    /// Forgets a connection and closes its socket (after the event loop unwatched it).
    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
            self.changes.push(FdChange::Unwatch(conn.stream));
        }
    }

    /// Resets an established connection: RST to the guest, then it is dropped.
    fn reset(&mut self, key: ConnKey, why: &dyn std::fmt::Display) {
        if let Some(c) = self.conns.get_mut(&key) {
            log::debug!("vsock: resetting {}:{}: {why}", c.local_port, c.peer_port);
            c.reset();
            self.counters.resets += 1;
            self.schedule(key);
        }
    }

    /// Whether anything waits for a guest receive buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.rx_queue.is_empty()
    }

    /// Fills one guest receive packet: `header` is written by the caller from the
    /// returned value, `data` is the packet's payload buffer. `None` when nothing
    /// is waiting.
    pub fn next_rx<B: BitmapSlice>(
        &mut self,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Option<Header> {
        if let Some(h) = self.resets.pop_front() {
            return Some(h);
        }
        while let Some(key) = self.rx_queue.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.scheduled = false;
            let resetting = conn.resetting();
            match conn.next_rx(data) {
                Ok(RxOutcome::Packet(h)) => {
                    if resetting {
                        self.remove(key);
                    } else {
                        self.counters.rx_bytes += u64::from(h.len);
                        self.schedule(key);
                    }
                    return Some(h);
                }
                Ok(RxOutcome::Nothing) => {}
                Err(e) => self.reset(key, &e),
            }
        }
        None
    }

    /// Acts on one packet from the guest's transmit queue. `data` is its payload.
    pub fn handle_tx<B: BitmapSlice>(&mut self, h: &Header, data: Option<&VolatileSlice<'_, B>>) {
        self.counters.tx_packets += 1;
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            // Not addressed host-to-guest: a driver that gets CIDs wrong learns
            // nothing from a reply that would carry them wrong again.
            self.counters.malformed += 1;
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.counters.malformed += 1;
            if h.op != op::RST {
                self.queue_reset(h);
            }
            return;
        }
        let key = (h.dst_port, h.src_port);
        if !self.conns.contains_key(&key) {
            self.handle_unknown(h);
            return;
        }
        let result = self.handle_known(key, h, data);
        if let Err(e) = result {
            self.reset(key, &e);
        }
        self.schedule(key);
    }

    fn handle_unknown(&mut self, h: &Header) {
        match h.op {
            op::REQUEST => self.connect_to_host(h),
            op::RST => {}
            _ => {
                self.counters.refused += 1;
                self.queue_reset(h);
            }
        }
    }

    fn handle_known<B: BitmapSlice>(
        &mut self,
        key: ConnKey,
        h: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<(), super::connection::ConnectionError> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Ok(());
        };
        if h.op == op::RST {
            // What the host socket takes now still reaches it; the rest is lost
            // with the connection, as the guest asked.
            let _ = conn.flush();
            self.remove(key);
            return Ok(());
        }
        conn.update_peer_credit(h);
        match (h.op, conn.state) {
            (op::RESPONSE, State::Connecting) => {
                conn.accept()?;
                self.counters.connections += 1;
            }
            (op::RW, State::Established) => {
                if let Some(data) = data {
                    conn.send_to_host(data)?;
                    self.counters.tx_bytes += data.len() as u64;
                }
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, State::Established) => conn.request_credit_update(),
            (op::SHUTDOWN, State::Established) => {
                if conn.peer_shutdown(h.flags)? {
                    conn.reset();
                }
            }
            _ => {
                // A REQUEST for a live connection, data before the handshake, an
                // unknown operation: the connection cannot continue.
                self.counters.malformed += 1;
                conn.reset();
                self.counters.resets += 1;
            }
        }
        Ok(())
    }

    fn connect_to_host(&mut self, h: &Header) {
        if self.connection_count() >= MAX_CONNECTIONS {
            self.counters.refused += 1;
            self.queue_reset(h);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                self.insert(Connection::guest_initiated(stream, h, self.guest_cid));
                self.changes.push(FdChange::Watch(fd));
                self.counters.connections += 1;
            }
            Err(e) => {
                log::debug!(
                    "vsock: guest port {} to host port {}: {}: {e}",
                    h.src_port,
                    h.dst_port,
                    Path::new(&path).display()
                );
                self.counters.refused += 1;
                self.queue_reset(h);
            }
        }
    }

    /// Takes waiting clients off the listener (up to a budget per call).
    pub fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let stream = match accept_nonblocking(&self.listener) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECONNABORTED, EMFILE and the like: this client is lost, the
                    // listener still works.
                    log::warn!(
                        "vsock: cannot accept a client on {}: {e}",
                        self.uds_path.display()
                    );
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                self.counters.refused += 1;
                continue;
            }
            let fd = stream.as_raw_fd();
            self.clients.insert(
                fd,
                PendingClient {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
            self.changes.push(FdChange::Watch(fd));
        }
    }

    /// The event loop saw activity on `fd`, a client or a connection socket.
    pub fn handle_fd_event(&mut self, fd: RawFd, readable: bool, writable: bool, hung_up: bool) {
        if self.clients.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if readable {
            conn.readable = true;
        }
        conn.host_gone |= hung_up;
        if writable {
            match conn.flush() {
                Ok(()) if conn.finished() => conn.reset(),
                Ok(()) => {}
                Err(e) => {
                    self.reset(key, &e);
                    return;
                }
            }
        }
        self.schedule(key);
    }

    /// Reads a client's `CONNECT` line one byte at a time, so no stream byte after
    /// the newline is taken from the socket before the guest accepted.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match client.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line"),
                Ok(_) if byte[0] == b'\n' => {
                    break parse_connect(&client.line).ok_or("sent a malformed CONNECT line")
                }
                Ok(_) if client.line.len() >= MAX_CONNECT_LINE => {
                    break Err("sent an over-long CONNECT line")
                }
                Ok(_) => client.line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break Err("failed before its CONNECT line"),
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(port) => {
                let local_port = self.allocate_local_port();
                self.insert(Connection::host_initiated(
                    client.stream,
                    local_port,
                    port,
                    self.guest_cid,
                ));
            }
            Err(why) => {
                log::debug!("vsock: a client on {} {why}", self.uds_path.display());
                self.counters.refused += 1;
                self.changes.push(FdChange::Unwatch(client.stream));
            }
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return port;
            }
        }
    }

    /// Drops every connection (the driver reset the device): their sockets close.
    pub fn reset_all(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        for (_, client) in self.clients.drain() {
            self.changes.push(FdChange::Unwatch(client.stream));
        }
        self.resets.clear();
        self.rx_queue.clear();
    }
}
