//! A virtio-net device's saved state: its identity and what the guest was told.
//!
//! Frames do not survive a snapshot: one the device was receiving is either in the
//! guest's buffers (and the used ring) or still in the tap, which a restore does not
//! carry over, as a real network drops frames. The rings, indices and negotiated
//! offloads come back through the transport's restore, and activation sets the new
//! tap's offloads to match.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::device::{Net, NetBackend, NetDeviceConfig};
use crate::devices::virtio::Interrupt;

/// Errors while restoring a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetStateError {
    /// Creating a queue eventfd failed.
    #[error("network interface {0}: cannot create its queue eventfds")]
    EventFd(String, #[source] std::io::Error),
}

/// What a virtio-net device needs to come back as the guest last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// `iface_id`.
    pub id: String,
    /// The tap it was attached to; a restore may name another
    /// (`network_overrides`).
    pub host_dev_name: String,
    /// The MAC in the config space, if one was configured.
    pub mac: Option<[u8; 6]>,
    /// The MTU in the config space, if one was configured.
    pub mtu: Option<u16>,
}

impl Net {
    /// The device's state, to save.
    pub fn save(&self) -> NetState {
        NetState {
            id: self.id().to_owned(),
            host_dev_name: self.backend.name().to_owned(),
            mac: self.mac,
            mtu: self.mtu,
        }
    }

    /// The device `state` describes, on `backend` (the tap it names, or its
    /// override). Whether the backend still offers the offloads the guest
    /// negotiated is checked by the transport's restore.
    pub fn restore(
        state: &NetState,
        backend: Box<dyn NetBackend>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Net, NetStateError> {
        let config = NetDeviceConfig {
            id: state.id.clone(),
            backend,
            mac: state.mac,
            mtu: state.mtu,
        };
        Net::new(config, interrupt).map_err(|e| NetStateError::EventFd(state.id.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)]

    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::net::device::feature;
    use crate::devices::virtio::net::tap::{TapError, VNET_HDR_LEN};
    use crate::devices::virtio::persist::{TransportState, VirtioStateError};
    use crate::devices::virtio::test_utils::{
        add_chains, bring_up_transport, counting_interrupt, default_mem, Desc,
    };
    use crate::devices::virtio::{VirtioDevice, F_VERSION_1};
    use crate::vstate::memory::GuestMemory;

    const RXQ: u64 = 0x1_0000;
    const TXQ: u64 = 0x2_0000;
    const BUF: u64 = 0x10_0000;

    /// A datagram socket standing in for a tap, offering `offloads`.
    struct Socket(UnixDatagram, libc::c_uint);

    impl AsRawFd for Socket {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl NetBackend for Socket {
        fn supported_offloads(&self) -> libc::c_uint {
            self.1
        }
        fn set_offloads(&self, _flags: libc::c_uint) -> Result<(), TapError> {
            Ok(())
        }
        fn name(&self) -> &str {
            "tap0"
        }
    }

    /// A backend with `offloads`, and the host end of it.
    fn backend(offloads: libc::c_uint) -> (Box<dyn NetBackend>, UnixDatagram) {
        let (device_side, host) = UnixDatagram::pair().unwrap();
        device_side.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        (Box::new(Socket(device_side, offloads)), host)
    }

    fn state() -> NetState {
        NetState {
            id: "eth0".into(),
            host_dev_name: "tap0".into(),
            mac: Some([0xaa, 0xfc, 0, 0, 0, 1]),
            mtu: None,
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
        f
    }

    fn restore_pair(
        mem: &GuestMemory,
        net: &NetState,
        transport: &TransportState,
        backend: Box<dyn NetBackend>,
    ) -> Result<(Arc<Mutex<Net>>, MmioTransport), VirtioStateError> {
        let (interrupt, _) = counting_interrupt();
        let dev = Arc::new(Mutex::new(
            Net::restore(net, backend, interrupt.clone()).unwrap(),
        ));
        let t =
            MmioTransport::restore("net".into(), dev.clone(), interrupt, mem.clone(), transport)?;
        Ok((dev, t))
    }

    /// A device brought up on `acked` features with 16-entry queues at RXQ and TXQ,
    /// and the host end of its backend.
    fn live(
        mem: &GuestMemory,
        offloads: libc::c_uint,
        acked: u64,
    ) -> (Arc<Mutex<Net>>, MmioTransport, UnixDatagram) {
        let (interrupt, _) = counting_interrupt();
        let (b, host) = backend(offloads);
        let dev = Arc::new(Mutex::new(
            Net::restore(&state(), b, interrupt.clone()).unwrap(),
        ));
        let mut t = MmioTransport::new("net".into(), dev.clone(), interrupt, mem.clone());
        let rx = MockSplitQueue::create(mem, GuestAddress(RXQ), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(TXQ), 16);
        bring_up_transport(&mut t, acked | (1 << F_VERSION_1), 16, &[&rx, &tx]);
        (dev, t, host)
    }

    #[test]
    fn test_restored_net_keeps_rings_and_works_on_a_new_backend() {
        let mem = default_mem();
        let rx = MockSplitQueue::create(&mem, GuestAddress(RXQ), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(TXQ), 16);
        let (dev, t, host) = live(&mem, 0, 0);
        add_chains(
            &rx,
            0,
            &[&[Desc::w(BUF, 2048)], &[Desc::w(BUF + 0x1000, 2048)]],
        );
        host.send(&frame(60, 1)).unwrap();
        dev.lock().unwrap().process_rx();
        assert_eq!(rx.used().idx().load(), 1);
        let saved_net = dev.lock().unwrap().save();
        let json = serde_json::to_string(&(saved_net, t.save())).unwrap();
        let (net_state, transport_state): (NetState, TransportState) =
            serde_json::from_str(&json).unwrap();
        let (new_backend, new_host) = backend(0);

        let (back, _) = restore_pair(&mem, &net_state, &transport_state, new_backend).unwrap();
        new_host.send(&frame(70, 2)).unwrap();
        back.lock().unwrap().process_rx();
        let out = frame(80, 3);
        mem.write_slice(&out, GuestAddress(BUF + 0x4000)).unwrap();
        add_chains(&tx, 0, &[&[Desc::r(BUF + 0x4000, out.len() as u32)]]);
        back.lock().unwrap().process_tx();

        let second = rx.used().ring().ref_at(1).unwrap().load();
        assert_eq!((second.id(), second.len()), (1, frame(70, 2).len() as u32));
        let mut got = vec![0u8; out.len()];
        assert_eq!(new_host.recv(&mut got).unwrap(), out.len());
        assert_eq!(got, out);
        assert_eq!(net_state, state());
    }

    #[test]
    fn test_restore_on_a_backend_without_the_negotiated_offloads_is_refused() {
        let mem = default_mem();
        let acked = (1 << feature::CSUM) | (1 << feature::GUEST_CSUM);
        let (dev, t, _host) = live(&mem, libc::TUN_F_CSUM, acked);
        let saved_net = dev.lock().unwrap().save();
        let saved_transport = t.save();
        let (plain, _) = backend(0);

        let err = restore_pair(&mem, &saved_net, &saved_transport, plain).unwrap_err();

        assert!(matches!(err, VirtioStateError::Features { extra: 3, .. }));
    }

    #[test]
    fn test_inactive_device_saves_no_queues() {
        let (interrupt, _) = counting_interrupt();
        let (b, _host) = backend(0);

        let net = Net::restore(&state(), b, interrupt).unwrap();

        assert!(net.saved_queues().is_empty());
    }
}
