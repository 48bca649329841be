//! virtio-net against guest memory, driver-side queues and a datagram socket pair
//! standing in for the tap (same frame boundaries, same non-blocking reads).
#![allow(clippy::cast_possible_truncation)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::device::{feature, Net, NetBackend, NetDeviceConfig};
use super::tap::{TapError, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{
    add_chains, counting_interrupt, default_mem, driver_queue_at, Desc, IrqCounter,
};
use crate::devices::virtio::{VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1};
use crate::vstate::memory::GuestMemory;

struct SocketBackend(UnixDatagram);

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for SocketBackend {
    fn supported_offloads(&self) -> libc::c_uint {
        0
    }
    fn set_offloads(&self, _flags: libc::c_uint) -> Result<(), TapError> {
        Ok(())
    }
    fn name(&self) -> &str {
        "socketpair"
    }
}

const RXQ: u64 = 0;
const TXQ: u64 = 0x8000;
const BUF: u64 = 0x10_0000;

struct Rig<'a> {
    mem: &'a GuestMemory,
    net: Net,
    host: UnixDatagram,
    irq: IrqCounter,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
}

fn rig(mem: &GuestMemory, acked: u64) -> Rig<'_> {
    let (device_side, host) = UnixDatagram::pair().unwrap();
    device_side.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let (interrupt, irq) = counting_interrupt();
    let mut net = Net::new(
        NetDeviceConfig {
            id: "eth0".into(),
            backend: Box::new(SocketBackend(device_side)),
            mac: Some([0xaa, 0xfc, 0, 0, 0, 1]),
            mtu: None,
        },
        interrupt,
    )
    .unwrap();
    let (rx, rxq) = driver_queue_at(mem, RXQ, 16);
    let (tx, txq) = driver_queue_at(mem, TXQ, 16);
    net.activate(mem.clone(), vec![rxq, txq], acked | (1 << F_VERSION_1))
        .unwrap();
    Rig {
        mem,
        net,
        host,
        irq,
        rx,
        tx,
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    f
}

fn used(vq: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
    (0..vq.used().idx().load())
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn host_recv(host: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    host.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn test_transmitted_frame_reaches_the_host_byte_exact() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    let f = frame(100, 7);
    r.mem.write_slice(&f[..40], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&f[40..], GuestAddress(BUF + 0x1000))
        .unwrap();
    add_chains(
        &r.tx,
        0,
        &[&[
            Desc::r(BUF, 40),
            Desc::r(BUF + 0x1000, (f.len() - 40) as u32),
        ]],
    );
    r.net.process_tx();
    assert_eq!(host_recv(&r.host), Some(f));
    assert_eq!(used(&r.tx), vec![(0, 0)]);
    assert_eq!(r.net.counters.tx_frames, 1);
}

#[test]
fn test_received_frame_lands_in_guest_buffer_with_one_buffer() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    let f = frame(64, 1);
    r.host.send(&f).unwrap();
    add_chains(&r.rx, 0, &[&[Desc::w(BUF, 2048)]]);
    r.net.process_rx();
    assert_eq!(used(&r.rx), vec![(0, f.len() as u32)]);
    let mut got = vec![0u8; f.len()];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(r.irq.count(), 1);
}

#[test]
fn test_mergeable_frame_spans_several_buffers() {
    let mem = default_mem();
    let mut r = rig(&mem, 1 << feature::MRG_RXBUF);
    let f = frame(1500, 3);
    r.host.send(&f).unwrap();
    add_chains(
        &r.rx,
        0,
        &[
            &[Desc::w(BUF, 1024)],
            &[Desc::w(BUF + 0x1000, 1024)],
            &[Desc::w(BUF + 0x2000, 1024)],
        ],
    );
    r.net.process_rx();
    assert_eq!(used(&r.rx), vec![(0, 1024), (1, (f.len() - 1024) as u32)]);
    let mut hdr = [0u8; 12];
    r.mem.read_slice(&mut hdr, GuestAddress(BUF)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2);
    let mut tail = vec![0u8; f.len() - 1024];
    r.mem
        .read_slice(&mut tail, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(tail, f[1024..]);
    // The unused third buffer serves the next frame, once enough room for a
    // worst-case frame (1530 bytes) is available again.
    let f2 = frame(10, 9);
    r.host.send(&f2).unwrap();
    r.net.process_rx();
    assert_eq!(used(&r.rx).len(), 2);
    add_chains(&r.rx, 3, &[&[Desc::w(BUF + 0x3000, 1024)]]);
    r.net.process_rx();
    assert_eq!(used(&r.rx)[2], (2, f2.len() as u32));
    assert_eq!(used(&r.rx).len(), 3);
}

#[test]
fn test_too_few_mergeable_buffers_ask_to_hear_of_the_next_one() {
    let mem = default_mem();
    let (rx, mut rxq) = driver_queue_at(&mem, RXQ, 16);
    let (_tx, mut txq) = driver_queue_at(&mem, TXQ, 16);
    rxq.set_event_idx(true);
    txq.set_event_idx(true);
    let (device_side, host) = UnixDatagram::pair().unwrap();
    device_side.set_nonblocking(true).unwrap();
    let (interrupt, _irq) = counting_interrupt();
    let mut net = Net::new(
        NetDeviceConfig {
            id: "eth0".into(),
            backend: Box::new(SocketBackend(device_side)),
            mac: None,
            mtu: None,
        },
        interrupt,
    )
    .unwrap();
    let acked = (1 << feature::MRG_RXBUF) | (1 << F_RING_EVENT_IDX) | (1 << F_VERSION_1);
    net.activate(mem.clone(), vec![rxq, txq], acked).unwrap();
    host.send(&frame(10, 1)).unwrap();
    // Two buffers of 512 bytes: less than a worst-case frame, so none is used yet.
    add_chains(
        &rx,
        0,
        &[&[Desc::w(BUF, 512)], &[Desc::w(BUF + 0x1000, 512)]],
    );
    net.process_rx();
    assert!(used(&rx).is_empty());
    // The driver kicks when its avail index passes avail_event: that must be the
    // index of the next buffer it adds (2), not of one it already published (0).
    // avail_event sits after the used ring's flags, index and 16 entries of 8 bytes.
    let avail_event: u16 = mem
        .read_obj(GuestAddress(rx.used_addr().0 + 4 + 16 * 8))
        .unwrap();
    assert_eq!(avail_event, 2);
}

#[test]
fn test_frames_wait_in_the_backend_until_buffers_come() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    let f = frame(50, 5);
    r.host.send(&f).unwrap();
    r.net.process_rx();
    assert!(used(&r.rx).is_empty());
    add_chains(&r.rx, 0, &[&[Desc::w(BUF, 2048)]]);
    r.net.process_rx();
    assert_eq!(used(&r.rx), vec![(0, f.len() as u32)]);
}

#[test]
fn test_many_frames_keep_their_order() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    for seed in 0..8u8 {
        r.host.send(&frame(60, seed)).unwrap();
    }
    let chains: Vec<Vec<Desc>> = (0..8u64)
        .map(|i| vec![Desc::w(BUF + i * 0x1000, 2048)])
        .collect();
    let refs: Vec<&[Desc]> = chains.iter().map(|c| c.as_slice()).collect();
    add_chains(&r.rx, 0, &refs);
    r.net.process_rx();
    for seed in 0..8u8 {
        let mut got = vec![0u8; 72];
        r.mem
            .read_slice(&mut got, GuestAddress(BUF + u64::from(seed) * 0x1000))
            .unwrap();
        assert_eq!(
            got[VNET_HDR_LEN..],
            frame(60, seed)[VNET_HDR_LEN..],
            "frame {seed}"
        );
    }
    assert_eq!(r.irq.count(), 1);
}

#[test]
fn test_transmit_chain_with_writable_buffer_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    add_chains(
        &r.tx,
        0,
        &[&[Desc::r(BUF, 100), Desc::w(BUF + 0x1000, 100)]],
    );
    r.net.process_tx();
    assert_eq!(host_recv(&r.host), None);
    assert_eq!(used(&r.tx), vec![(0, 0)]);
    assert_eq!(r.net.counters.tx_dropped, 1);
}

#[test]
fn test_transmit_shorter_than_header_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    add_chains(&r.tx, 0, &[&[Desc::r(BUF, 4)]]);
    r.net.process_tx();
    assert_eq!(host_recv(&r.host), None);
    assert_eq!(r.net.counters.tx_dropped, 1);
}

#[test]
fn test_transmit_outside_memory_is_dropped() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    add_chains(&r.tx, 0, &[&[Desc::r(0xdead_0000, 100)]]);
    r.net.process_tx();
    assert_eq!(host_recv(&r.host), None);
    assert_eq!(used(&r.tx), vec![(0, 0)]);
}

#[test]
fn test_readable_receive_buffer_is_returned_empty() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    r.host.send(&frame(20, 0)).unwrap();
    add_chains(
        &r.rx,
        0,
        &[&[Desc::r(BUF, 2048)], &[Desc::w(BUF + 0x1000, 2048)]],
    );
    r.net.process_rx();
    assert_eq!(used(&r.rx), vec![(0, 0), (1, 32)]);
}

#[test]
fn test_frames_after_a_bad_receive_chain_each_get_their_own_buffer() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    r.host.send(&frame(20, 0)).unwrap();
    r.host.send(&frame(20, 1)).unwrap();
    add_chains(
        &r.rx,
        0,
        &[
            &[Desc::r(BUF, 2048)],
            &[Desc::w(BUF + 0x1000, 2048)],
            &[Desc::w(BUF + 0x2000, 2048)],
        ],
    );
    r.net.process_rx();
    assert_eq!(used(&r.rx), vec![(0, 0), (1, 32), (2, 32)]);
}

#[test]
fn test_avail_index_far_ahead_breaks_the_queue() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    r.tx.avail().idx().store(5000);
    r.net.process_tx();
    assert!(used(&r.tx).is_empty());
    assert!(r.irq.count() > 0);
}

#[test]
fn test_reset_drops_queues() {
    let mem = default_mem();
    let mut r = rig(&mem, 0);
    r.net.reset();
    add_chains(&r.tx, 0, &[&[Desc::r(BUF, 100)]]);
    r.net.process_tx();
    assert!(used(&r.tx).is_empty());
}

#[test]
fn test_frames_waiting_for_buffers_do_not_wake_the_event_loop() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::{Arc, Mutex};

    let mem = default_mem();
    let r = rig(&mem, 0);
    let (host, rx) = (r.host, r.rx);
    let net = Arc::new(Mutex::new(r.net));
    let mut event_loop: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    event_loop.add_subscriber(net.clone());
    // Activation kicked the RX queue: the loop looks once, finds no buffers.
    host.send(&frame(30, 1)).unwrap();
    while event_loop.run_with_timeout(20).unwrap() > 0 {}
    assert!(!net.lock().unwrap().backend_watched);

    for seed in 2..6 {
        host.send(&frame(30, seed)).unwrap();
    }
    assert_eq!(
        event_loop.run_with_timeout(20).unwrap(),
        0,
        "a queued frame woke the loop"
    );

    add_chains(
        &rx,
        0,
        &[&[Desc::w(BUF, 2048)], &[Desc::w(BUF + 0x1000, 2048)]],
    );
    net.lock().unwrap().rx_evt.write(1).unwrap();
    while event_loop.run_with_timeout(20).unwrap() > 0 {}
    assert_eq!(used(&rx).len(), 2);
    let mut got = vec![0u8; 42];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got[VNET_HDR_LEN..], frame(30, 1)[VNET_HDR_LEN..]);
}

// ---- found by the fuzzers (fuzz/README.md) ----

#[test]
fn test_mergeable_frame_stopped_by_a_bad_chain_takes_the_buffers_before_it() {
    // Found by net_rx: a frame too big for the good buffers before a readable chain
    // had process_rx wait for more buffers that could never get past that chain, and
    // retry forever on the event loop thread.
    let mem = default_mem();
    let mut r = rig(&mem, 1 << feature::MRG_RXBUF);
    r.host.send(&frame(1500, 0)).unwrap();
    add_chains(
        &r.rx,
        0,
        &[&[Desc::w(BUF, 512)], &[Desc::r(BUF + 0x1000, 512)]],
    );

    r.net.process_rx();

    assert_eq!(used(&r.rx), vec![(0, 512), (1, 0)]);
}

#[test]
fn test_receive_ring_at_guest_address_zero_breaks_the_queue() {
    // Found by mmio: virtio-queue refuses an available ring at guest address 0, and
    // process_rx took its silent `None` for "no chain yet" while the index said one
    // was pending, retrying forever on the event loop thread.
    let mem = default_mem();
    let (device_side, host) = UnixDatagram::pair().unwrap();
    device_side.set_nonblocking(true).unwrap();
    let (interrupt, _irq) = counting_interrupt();
    let mut net = Net::new(
        NetDeviceConfig {
            id: "eth0".into(),
            backend: Box::new(SocketBackend(device_side)),
            mac: None,
            mtu: None,
        },
        interrupt.clone(),
    )
    .unwrap();
    let mut rxq = virtio_queue::Queue::new(16).unwrap();
    rxq.set_desc_table_address(Some(0x1000), Some(0));
    rxq.set_avail_ring_address(Some(0), Some(0));
    rxq.set_used_ring_address(Some(0x2000), Some(0));
    rxq.set_ready(true);
    let (_tx, txq) = driver_queue_at(&mem, TXQ, 16);
    net.activate(mem.clone(), vec![rxq, txq], 1 << F_VERSION_1)
        .unwrap();
    // One chain pending: the available index (offset 2 of the ring) is 1.
    mem.write_obj(1u16, GuestAddress(2)).unwrap();
    host.send(&frame(20, 0)).unwrap();

    net.process_rx();

    assert!(interrupt.needs_reset());
}
