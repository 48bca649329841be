//! The network device on the event loop: both queues' ioeventfds and the backend fd.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Net;

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const BACKEND: u32 = 2;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data(&self.rx_evt, RX_QUEUE, EventSet::IN),
            Events::with_data(&self.tx_evt, TX_QUEUE, EventSet::IN),
            // Edge-triggered: frames wait in the tap while the guest has no buffers,
            // without waking the loop again and again.
            Events::with_data_raw(
                self.backend_fd(),
                BACKEND,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
        ];
        for e in events {
            if let Err(err) = ops.add(e) {
                log::error!(
                    "virtio-net {}: cannot watch an event source: {err:?}",
                    self.id()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            RX_QUEUE => {
                let _ = self.rx_evt.read();
                self.process_rx();
            }
            TX_QUEUE => {
                let _ = self.tx_evt.read();
                self.process_tx();
            }
            BACKEND => {
                self.backend_readable = true;
                self.process_rx();
            }
            _ => {}
        }
    }
}
