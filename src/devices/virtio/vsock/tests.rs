//! virtio-vsock against guest memory, driver-side queues (`MockSplitQueue`) and
//! real Unix sockets in a scratch directory.
#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::connection::TX_BUF_SIZE;
use super::device::{Vsock, EVT};
use super::muxer::{FdChange, Muxer, CONNECT_TIMEOUT, MAX_CONNECTIONS};
use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::test_utils::{
    add_chains, counting_interrupt, default_mem, driver_queue_at, Desc,
};
use crate::devices::virtio::VirtioDevice;
use crate::vstate::memory::GuestMemory;

const GUEST_CID: u64 = 3;
const RXQ: u64 = 0;
const TXQ: u64 = 0x4000;
const EVTQ: u64 = 0x8000;
const QSIZE: u16 = 64;
/// Guest buffers: transmit headers and payloads from here, receive buffers above.
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x40_0000;
const RX_DATA_LEN: u32 = 4096;
const HDR: u32 = 44;

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory for this test's sockets.
fn scratch_dir() -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("spry-vsock-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn header_bytes(h: &Header) -> Vec<u8> {
    let mut b = Vec::with_capacity(HDR as usize);
    b.extend(h.src_cid.to_le_bytes());
    b.extend(h.dst_cid.to_le_bytes());
    b.extend(h.src_port.to_le_bytes());
    b.extend(h.dst_port.to_le_bytes());
    b.extend(h.len.to_le_bytes());
    b.extend(h.type_.to_le_bytes());
    b.extend(h.op.to_le_bytes());
    b.extend(h.flags.to_le_bytes());
    b.extend(h.buf_alloc.to_le_bytes());
    b.extend(h.fwd_cnt.to_le_bytes());
    b
}

fn parse_header(b: &[u8]) -> Header {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// Whether the device closed its end of `s` (closing with unread bytes resets).
fn closed(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// A guest-to-host packet from guest port `src` to host port `dst`.
fn from_guest(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

struct Rig<'a> {
    mem: &'a GuestMemory,
    dir: PathBuf,
    vsock: Vsock,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    rx_desc: u16,
    tx_desc: u16,
    rx_seen: u16,
    /// Every socket the device asked the event loop to watch.
    watched: Vec<std::os::fd::RawFd>,
}

fn rig(mem: &GuestMemory) -> Rig<'_> {
    let dir = scratch_dir();
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (interrupt, _) = counting_interrupt();
    let mut vsock = Vsock::new(GUEST_CID, Muxer::new(GUEST_CID, uds, listener), interrupt).unwrap();
    let (rx, rxq) = driver_queue_at(mem, RXQ, QSIZE);
    let (tx, txq) = driver_queue_at(mem, TXQ, QSIZE);
    let (_, evtq) = driver_queue_at(mem, EVTQ, QSIZE);
    vsock
        .activate(mem.clone(), vec![rxq, txq, evtq], 0)
        .unwrap();
    Rig {
        mem,
        dir,
        vsock,
        rx,
        tx,
        rx_desc: 0,
        tx_desc: 0,
        rx_seen: 0,
        watched: Vec::new(),
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig<'_> {
    /// The driver sends `h` (its `len` set from `data`) in a header and a payload
    /// descriptor, and kicks.
    fn send(&mut self, h: Header, data: &[u8]) {
        let h = Header {
            len: data.len() as u32,
            ..h
        };
        let at = TX_BUF + u64::from(self.tx_desc) * 0x1_0000;
        self.mem
            .write_slice(&header_bytes(&h), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        let mut descs = vec![Desc::r(at, HDR)];
        if !data.is_empty() {
            descs.push(Desc::r(at + 0x100, data.len() as u32));
        }
        self.send_raw(&descs);
    }

    /// The driver queues `descs` as one transmit chain and kicks.
    fn send_raw(&mut self, descs: &[Desc]) {
        add_chains(&self.tx, self.tx_desc, &[descs]);
        self.tx_desc += descs.len() as u16;
        self.vsock.process_tx();
        self.settle();
    }

    /// The driver posts `n` receive buffers (header + 4 KiB) and kicks.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let at = RX_BUF + u64::from(self.rx_desc) * 0x2000;
            add_chains(
                &self.rx,
                self.rx_desc,
                &[&[Desc::w(at, HDR), Desc::w(at + 0x100, RX_DATA_LEN)]],
            );
            self.rx_desc += 2;
        }
        self.vsock.process_rx();
        self.settle();
    }

    /// Applies fd changes the way the event loop would (closing unwatched sockets).
    fn settle(&mut self) {
        for change in self.vsock.muxer.take_fd_changes() {
            match change {
                FdChange::Watch(fd) => self.watched.push(fd),
                FdChange::Unwatch(stream) => drop(stream),
            }
        }
    }

    /// The event loop reports every socket readable and writable.
    fn sockets_ready(&mut self) {
        self.sockets_event(false);
    }

    /// The event loop reports every socket readable, writable and maybe hung up.
    fn sockets_event(&mut self, hung_up: bool) {
        for fd in self.watched.clone() {
            self.vsock.muxer.handle_fd_event(fd, true, true, hung_up);
        }
        self.vsock.process_rx();
        self.settle();
    }

    /// What the device put in the receive queue since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let used = self.rx.used();
        while self.rx_seen != used.idx().load() {
            let elem = used
                .ring()
                .ref_at(usize::from(self.rx_seen % QSIZE))
                .unwrap()
                .load();
            self.rx_seen += 1;
            let at = RX_BUF + u64::from(elem.id()) * 0x2000;
            let mut hb = [0u8; HDR as usize];
            self.mem.read_slice(&mut hb, GuestAddress(at)).unwrap();
            let h = parse_header(&hb);
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + 0x100))
                .unwrap();
            assert_eq!(elem.len(), HDR + h.len);
            out.push((h, data));
        }
        out
    }

    fn one_received(&mut self) -> Header {
        let got = self.received();
        assert_eq!(got.len(), 1, "{got:?}");
        got[0].0
    }

    /// A listener for guest connections to host port `port`.
    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(self.dir.join(format!("v.sock_{port}"))).unwrap()
    }

    /// A host client that connected and sent `line`, taken by the device.
    fn client(&mut self, line: &[u8]) -> UnixStream {
        let mut c = UnixStream::connect(self.dir.join("v.sock")).unwrap();
        c.write_all(line).unwrap();
        self.vsock.muxer.accept_clients();
        let fds: Vec<_> = self
            .vsock
            .muxer
            .take_fd_changes()
            .into_iter()
            .filter_map(|ch| match ch {
                FdChange::Watch(fd) => Some(fd),
                FdChange::Unwatch(_) => None,
            })
            .collect();
        for &fd in &fds {
            self.vsock.muxer.handle_fd_event(fd, true, true, false);
        }
        self.watched.extend(fds);
        self.vsock.process_rx();
        self.settle();
        c
    }

    /// Establishes a guest connection from guest port 1000 to a listener on host
    /// port 5000; returns the host end.
    fn guest_connection(&mut self) -> UnixStream {
        let listener = self.listen(5000);
        self.post_rx(4);
        self.send(from_guest(op::REQUEST, 1000, 5000), &[]);
        assert_eq!(self.one_received().op, op::RESPONSE);
        let (stream, _) = listener.accept().unwrap();
        stream
    }
}

#[test]
fn test_config_space_is_the_guest_cid() {
    let mem = default_mem();
    let r = rig(&mem);
    let mut cid = [0u8; 8];
    r.vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
}

#[test]
fn test_three_queues_and_device_id_19() {
    let mem = default_mem();
    let r = rig(&mem);
    assert_eq!(r.vsock.device_type(), 19);
    assert_eq!(r.vsock.queue_max_sizes().len(), EVT + 1);
}

#[test]
fn test_request_to_unbound_port_gets_rst() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    r.send(from_guest(op::REQUEST, 1000, 7777), &[]);
    let h = r.one_received();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (op::RST, HOST_CID, GUEST_CID, 7777, 1000)
    );
    assert_eq!(r.vsock.muxer.counters.refused, 1);
}

#[test]
fn test_request_to_bound_port_gets_response_with_credit() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let _listener = r.listen(5000);
    r.post_rx(1);
    r.send(from_guest(op::REQUEST, 1000, 5000), &[]);
    let h = r.one_received();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, 5000, 1000));
    assert_eq!((h.buf_alloc, h.fwd_cnt), (TX_BUF_SIZE, 0));
}

#[test]
fn test_guest_data_reaches_the_host_listener() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    r.send(from_guest(op::RW, 1000, 5000), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    assert_eq!(r.vsock.muxer.counters.tx_bytes, 10);
}

#[test]
fn test_host_data_reaches_the_guest_as_rw() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    host.write_all(b"hello guest").unwrap();
    r.sockets_ready();
    let got = r.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1, b"hello guest");
}

#[test]
fn test_host_client_connect_sends_request_then_ok_on_response() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(2);
    let mut client = r.client(b"CONNECT 52\n");
    let req = r.one_received();
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, 52, GUEST_CID)
    );
    r.send(from_guest(op::RESPONSE, 52, req.src_port), &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, *format!("OK {}\n", req.src_port).as_bytes());
    assert_eq!(r.vsock.muxer.counters.connections, 1);
}

#[test]
fn test_host_client_refused_by_guest_is_closed() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    let mut client = r.client(b"CONNECT 52\n");
    let req = r.one_received();
    r.send(from_guest(op::RST, 52, req.src_port), &[]);
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(r.vsock.muxer.connection_count(), 0);
}

#[test]
fn test_malformed_connect_line_closes_the_client() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut client = r.client(b"HELLO 52\n");
    assert!(closed(&mut client));
    assert_eq!(r.vsock.muxer.counters.refused, 1);
}

#[test]
fn test_over_long_connect_line_closes_the_client() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut client = r.client(&[b'7'; 100]);
    assert!(closed(&mut client));
}

#[test]
fn test_guest_without_credit_gets_no_data_until_credit_update() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let listener = r.listen(5000);
    r.post_rx(8);
    // The guest has 4 bytes of receive buffer.
    let request = Header {
        buf_alloc: 4,
        ..from_guest(op::REQUEST, 1000, 5000)
    };
    r.send(request, &[]);
    r.received();
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"0123456789").unwrap();
    r.sockets_ready();
    let got = r.received();
    assert_eq!(got[0].1, b"0123");
    assert_eq!(got[1].0.op, op::CREDIT_REQUEST);
    assert_eq!(got.len(), 2);
    let update = Header {
        buf_alloc: 4,
        fwd_cnt: 4,
        ..from_guest(op::CREDIT_UPDATE, 1000, 5000)
    };
    r.send(update, &[]);
    let got = r.received();
    assert_eq!(got[0].1, b"4567");
}

#[test]
fn test_credit_request_gets_credit_update() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let _host = r.guest_connection();
    r.send(from_guest(op::CREDIT_REQUEST, 1000, 5000), &[]);
    let h = r.one_received();
    assert_eq!((h.op, h.buf_alloc), (op::CREDIT_UPDATE, TX_BUF_SIZE));
}

#[test]
fn test_guest_overrunning_its_credit_is_reset() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let host = r.guest_connection();
    // Nobody reads the host end, and its socket buffer is as small as it goes.
    nix_set_sndbuf(&r, &host);
    let chunk = vec![7u8; 60 * 1024];
    for _ in 0..8 {
        r.send(from_guest(op::RW, 1000, 5000), &chunk);
    }
    let got = r.received();
    assert!(got.iter().any(|(h, _)| h.op == op::RST), "{got:?}");
    assert_eq!(r.vsock.muxer.connection_count(), 0);
}

/// Shrinks a socket buffer (`SO_SNDBUF` or `SO_RCVBUF`) of `fd` to the minimum.
fn shrink(fd: std::os::fd::RawFd, which: libc::c_int) {
    let size: libc::c_int = 4096;
    // SAFETY: `size` is a valid c_int for the duration of the call.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            which,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0);
}

/// Makes the device's writes to `host` stall after a few KiB, as they do when the
/// host program does not read: the host end's receive buffer and the send buffer
/// of every device socket shrunk.
fn nix_set_sndbuf(r: &Rig<'_>, host: &UnixStream) {
    shrink(std::os::fd::AsRawFd::as_raw_fd(host), libc::SO_RCVBUF);
    for &fd in &r.watched {
        shrink(fd, libc::SO_SNDBUF);
    }
}

#[test]
fn test_slow_host_reader_stalls_only_its_own_connection() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let slow = r.guest_connection();
    nix_set_sndbuf(&r, &slow);
    let fast_listener = r.listen(6000);
    r.send(from_guest(op::REQUEST, 2000, 6000), &[]);
    r.received();
    let (mut fast, _) = fast_listener.accept().unwrap();
    // Within its credit the slow connection's data is buffered by spry.
    let chunk = vec![1u8; 32 * 1024];
    for _ in 0..3 {
        r.send(from_guest(op::RW, 1000, 5000), &chunk);
    }
    assert!(r.vsock.muxer.buffered_bytes() > 0);
    r.send(from_guest(op::RW, 2000, 6000), b"still flowing");
    let mut buf = [0u8; 13];
    fast.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still flowing");
    assert_eq!(r.vsock.muxer.connection_count(), 2);
}

#[test]
fn test_shutdown_both_ways_is_answered_with_rst() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    let shutdown = Header {
        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        ..from_guest(op::SHUTDOWN, 1000, 5000)
    };
    r.send(shutdown, &[]);
    assert_eq!(r.one_received().op, op::RST);
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn test_host_close_sends_shutdown() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let host = r.guest_connection();
    drop(host);
    r.sockets_ready();
    let h = r.one_received();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
}

#[test]
fn test_data_for_unknown_connection_gets_rst() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    r.send(from_guest(op::RW, 1000, 5000), b"x");
    assert_eq!(r.one_received().op, op::RST);
}

#[test]
fn test_wrong_socket_type_gets_rst_and_is_counted() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    let seqpacket = Header {
        type_: 2,
        ..from_guest(op::REQUEST, 1000, 5000)
    };
    r.send(seqpacket, &[]);
    assert_eq!(r.one_received().op, op::RST);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
}

#[test]
fn test_wrong_source_cid_is_dropped_and_counted() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    let spoofed = Header {
        src_cid: 42,
        ..from_guest(op::REQUEST, 1000, 5000)
    };
    r.send(spoofed, &[]);
    assert!(r.received().is_empty());
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
}

#[test]
fn test_short_header_descriptor_is_dropped_and_device_keeps_serving() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(1);
    r.send_raw(&[Desc::r(TX_BUF, 20)]);
    r.send(from_guest(op::REQUEST, 1000, 7777), &[]);
    assert_eq!(r.one_received().op, op::RST);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
    assert_eq!(r.tx.used().idx().load(), 2);
}

#[test]
fn test_device_writable_transmit_buffer_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.send_raw(&[Desc::w(TX_BUF, HDR)]);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
    assert_eq!(r.tx.used().idx().load(), 1);
}

#[test]
fn test_payload_outside_guest_memory_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let h = Header {
        len: 16,
        ..from_guest(op::RW, 1000, 5000)
    };
    mem.write_slice(&header_bytes(&h), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[Desc::r(TX_BUF, HDR), Desc::r(0xffff_0000, 16)]);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
}

#[test]
fn test_length_beyond_the_payload_descriptor_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let h = Header {
        len: 4096,
        ..from_guest(op::RW, 1000, 5000)
    };
    mem.write_slice(&header_bytes(&h), GuestAddress(TX_BUF))
        .unwrap();
    r.send_raw(&[Desc::r(TX_BUF, HDR), Desc::r(TX_BUF + 0x100, 16)]);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
}

#[test]
fn test_read_only_receive_buffer_is_returned_empty() {
    let mem = default_mem();
    let mut r = rig(&mem);
    add_chains(
        &r.rx,
        0,
        &[&[Desc::r(RX_BUF, HDR), Desc::r(RX_BUF + 0x100, 64)]],
    );
    r.send(from_guest(op::REQUEST, 1000, 7777), &[]);
    r.vsock.process_rx();
    let elem = r.rx.used().ring().ref_at(0).unwrap().load();
    assert_eq!(elem.len(), 0);
    assert_eq!(r.vsock.muxer.counters.malformed, 1);
}

#[test]
fn test_requests_beyond_the_connection_limit_are_refused() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let _listener = r.listen(5000);
    let mut clients = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        clients.push(r.client(b"CONNECT 9"));
    }
    r.post_rx(1);
    r.send(from_guest(op::REQUEST, 1000, 5000), &[]);
    assert_eq!(r.one_received().op, op::RST);
    assert_eq!(r.vsock.muxer.connection_count(), MAX_CONNECTIONS);
}

#[test]
fn test_clients_beyond_the_connection_limit_are_closed() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut clients = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        clients.push(r.client(b"CONNECT 9"));
    }
    let mut extra = r.client(b"CONNECT 9\n");
    assert!(closed(&mut extra));
    assert_eq!(r.vsock.muxer.connection_count(), MAX_CONNECTIONS);
}

#[test]
fn test_device_reset_closes_every_connection() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    r.vsock.reset();
    r.settle();
    let mut buf = [0u8; 1];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn test_nothing_waiting_means_no_deadline() {
    let mem = default_mem();
    let r = rig(&mem);
    assert_eq!(r.vsock.muxer.next_deadline(), None);
}

#[test]
fn test_silent_client_is_closed_after_the_connect_timeout() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut client = r.client(b"CONNECT");
    let deadline = r.vsock.muxer.next_deadline().unwrap();
    r.vsock.muxer.expire(deadline);
    r.settle();
    assert!(closed(&mut client));
    assert_eq!(r.vsock.muxer.connection_count(), 0);
}

#[test]
fn test_client_is_kept_before_the_connect_timeout() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let _client = r.client(b"CONNECT");
    let deadline = r.vsock.muxer.next_deadline().unwrap();
    r.vsock.muxer.expire(deadline - CONNECT_TIMEOUT / 2);
    assert_eq!(r.vsock.muxer.connection_count(), 1);
}

#[test]
fn test_unanswered_request_closes_the_client_and_resets_the_guest() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(2);
    let mut client = r.client(b"CONNECT 52\n");
    let req = r.one_received();
    let deadline = r.vsock.muxer.next_deadline().unwrap();
    r.vsock.muxer.expire(deadline);
    r.vsock.process_rx();
    r.settle();
    let rst = r.one_received();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (op::RST, req.src_port, 52)
    );
    assert!(closed(&mut client));
}

#[test]
fn test_guest_reset_after_data_delivers_what_the_socket_takes() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    r.send(from_guest(op::RW, 1000, 5000), b"last words");
    r.send(from_guest(op::RST, 1000, 5000), &[]);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn test_guest_data_to_a_closed_host_socket_resets_the_connection() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let host = r.guest_connection();
    drop(host);
    r.send(from_guest(op::RW, 1000, 5000), b"nobody listens");
    let got = r.received();
    assert!(got.iter().any(|(h, _)| h.op == op::RST), "{got:?}");
    assert_eq!(r.vsock.muxer.counters.resets, 1);
}

#[test]
fn test_buffered_data_drains_to_a_slow_reader_and_the_guest_hears_of_it() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    nix_set_sndbuf(&r, &host);
    host.set_nonblocking(true).unwrap();
    let chunk = vec![5u8; 32 * 1024];
    for _ in 0..3 {
        r.send(from_guest(op::RW, 1000, 5000), &chunk);
    }
    let buffered = r.vsock.muxer.buffered_bytes();
    let mut total = 0;
    let mut buf = vec![0u8; 8192];
    for _ in 0..1000 {
        match host.read(&mut buf) {
            Ok(n) => total += n,
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
        // The device's end became writable again.
        r.sockets_ready();
        if total == 3 * chunk.len() {
            break;
        }
    }
    assert_eq!(total, 3 * chunk.len());
    assert!(
        buffered > 0,
        "nothing was buffered: the test proves nothing"
    );
    assert_eq!(r.vsock.muxer.buffered_bytes(), 0);
    let updates: Vec<Header> = r
        .received()
        .into_iter()
        .map(|(h, _)| h)
        .filter(|h| h.op == op::CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty());
    assert!(updates.iter().all(|h| h.buf_alloc == TX_BUF_SIZE));
    assert!(updates.last().unwrap().fwd_cnt >= TX_BUF_SIZE / 2);
}

#[test]
fn test_host_half_close_still_takes_guest_data() {
    let mem = default_mem();
    let mut r = rig(&mem);
    let mut host = r.guest_connection();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    r.sockets_ready();
    let h = r.one_received();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    r.send(from_guest(op::RW, 1000, 5000), b"output after input ended");
    let mut buf = [0u8; 24];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"output after input ended");
}

#[test]
fn test_guest_may_fill_exactly_its_credit_while_the_host_reads_nothing() {
    let mem = default_mem();
    let mut r = rig(&mem);
    r.post_rx(2);
    let client = r.client(b"CONNECT 52\n");
    let req = r.one_received();
    // The client reads nothing, not even its OK line, and the device can write
    // only a few KiB to it.
    nix_set_sndbuf(&r, &client);
    r.send(from_guest(op::RESPONSE, 52, req.src_port), &[]);
    let chunk = vec![9u8; 32 * 1024];
    for _ in 0..4 {
        r.send(from_guest(op::RW, 52, req.src_port), &chunk);
    }
    assert!(r.vsock.muxer.buffered_bytes() > 0);
    assert!(r.received().iter().all(|(h, _)| h.op != op::RST));
    assert_eq!(r.vsock.muxer.connection_count(), 1);
    // One byte more than the 128 KiB of credit is an overrun.
    let buffered = r.vsock.muxer.buffered_bytes();
    let written = 4 * chunk.len() - buffered;
    let one_too_many = vec![9u8; written + 1];
    r.send(from_guest(op::RW, 52, req.src_port), &one_too_many);
    assert!(r.received().iter().any(|(h, _)| h.op == op::RST));
}

#[test]
fn test_restored_device_sends_the_driver_a_transport_reset_event() {
    let mem = default_mem();
    let dir = scratch_dir();
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let (interrupt, irqs) = counting_interrupt();
    let before = Vsock::new(
        GUEST_CID,
        Muxer::new(GUEST_CID, uds.clone(), listener),
        interrupt,
    )
    .unwrap();
    let state = before.save();
    assert_eq!(
        (state.guest_cid, state.uds_path.as_path()),
        (GUEST_CID, uds.as_path())
    );
    drop(before);

    let listener = UnixListener::bind(&uds).unwrap();
    let (interrupt, _) = counting_interrupt();
    let muxer = Muxer::new(state.guest_cid, state.uds_path.clone(), listener);
    let mut vsock = Vsock::restore(&state, muxer, interrupt.clone()).unwrap();
    let (_, rxq) = driver_queue_at(&mem, RXQ, QSIZE);
    let (_, txq) = driver_queue_at(&mem, TXQ, QSIZE);
    let (evt, evtq) = driver_queue_at(&mem, EVTQ, QSIZE);
    // The driver's event buffer, filled with a pattern the event must overwrite.
    mem.write_obj(0xffff_ffffu32, GuestAddress(RX_BUF)).unwrap();
    add_chains(&evt, 0, &[&[Desc::w(RX_BUF, 8)]]);
    vsock
        .activate(mem.clone(), vec![rxq, txq, evtq], 0)
        .unwrap();

    assert_eq!(evt.used().idx().load(), 1, "no event was posted");
    let event: u32 = mem.read_obj(GuestAddress(RX_BUF)).unwrap();
    assert_eq!(event, 0, "not VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(vsock.saved_queues().len(), 3);
    drop(irqs);
    let _ = std::fs::remove_dir_all(&dir);
}
