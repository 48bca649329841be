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
        ];
        for e in events {
            if let Err(err) = ops.add(e) {
                log::error!(
                    "virtio-net {}: cannot watch an event source: {err:?}",
                    self.id()
                );
            }
        }
        // Until the driver is ready, frames wait in the tap; activation kicks the RX
        // queue event, which starts watching it.
        self.rx_stalled = true;
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
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
        self.watch_backend_while_receiving(ops);
    }
}

impl Net {
    /// Watches the backend only while receiving can progress. Edge-triggered, so a
    /// watched backend wakes the loop once per burst; unwatched while the guest has
    /// no buffers, so frames wait in the tap without waking it at all. Re-adding an
    /// fd with data already queued reports it at once.
    fn watch_backend_while_receiving(&mut self, ops: &mut EventOps) {
        let want = !self.rx_stalled;
        if want == self.backend_watched {
            return;
        }
        let event = Events::with_data_raw(
            self.backend_fd(),
            BACKEND,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        let result = if want {
            ops.add(event)
        } else {
            ops.remove(event)
        };
        match result {
            Ok(()) => self.backend_watched = want,
            Err(err) => log::error!(
                "virtio-net {}: cannot (un)watch the tap: {err:?}",
                self.id()
            ),
        }
    }
}
