//! The vsock device on the event loop: the three queues' ioeventfds, the Unix
//! listener, and every connection's socket (edge-triggered, so a socket the guest
//! has no credit for does not wake the loop again until something changes).

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVT, RX, TX};
use super::muxer::FdChange;

const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const EVT_QUEUE: u32 = 2;
const LISTENER: u32 = 3;
const CONNECTION: u32 = 4;
const TIMER: u32 = 5;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data(&self.queue_evts[RX], RX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[TX], TX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[EVT], EVT_QUEUE, EventSet::IN),
            Events::with_data_raw(self.muxer.listener_fd(), LISTENER, EventSet::IN),
            Events::with_data(&self.timer, TIMER, EventSet::IN),
        ];
        for e in events {
            if let Err(err) = ops.add(e) {
                log::error!("virtio-vsock: cannot watch an event source: {err:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            RX_QUEUE => {
                let _ = self.queue_evts[RX].read();
                self.process_rx();
            }
            TX_QUEUE => {
                let _ = self.queue_evts[TX].read();
                self.process_tx();
            }
            EVT_QUEUE => {
                let _ = self.queue_evts[EVT].read();
            }
            LISTENER => {
                self.muxer.accept_clients();
            }
            TIMER => {
                // Read before re-arming: arming clears the expiry this event reports.
                let _ = self.timer.wait();
                self.timer_deadline = None;
                self.muxer.expire(std::time::Instant::now());
                self.process_rx();
            }
            CONNECTION => {
                let set = events.event_set();
                let readable = set.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                );
                let writable = set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP);
                let hung_up = set.contains(EventSet::HANG_UP);
                self.muxer
                    .handle_fd_event(events.fd(), readable, writable, hung_up);
                self.process_rx();
            }
            _ => {}
        }
        self.apply_fd_changes(ops);
        self.arm_timer();
    }
}

impl Vsock {
    /// Arms the timer for the muxer's next deadline, when that changed.
    fn arm_timer(&mut self) {
        let want = self.muxer.next_deadline();
        if want == self.timer_deadline {
            return;
        }
        let result = match want {
            // A zero duration would disarm the timer: wait at least a millisecond.
            Some(at) => {
                let left = at.saturating_duration_since(std::time::Instant::now());
                self.timer
                    .reset(left.max(std::time::Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_deadline = want,
            Err(e) => log::error!("virtio-vsock: cannot arm the connect timer: {e}"),
        }
    }

    fn apply_fd_changes(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_fd_changes() {
            match change {
                FdChange::Watch(fd) => {
                    let set = EventSet::IN
                        | EventSet::OUT
                        | EventSet::READ_HANG_UP
                        | EventSet::EDGE_TRIGGERED;
                    if let Err(err) = ops.add(Events::with_data_raw(fd, CONNECTION, set)) {
                        log::error!("virtio-vsock: cannot watch a connection: {err:?}");
                    }
                }
                FdChange::Unwatch(stream) => {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                    // The event set does not matter for removal.
                    let _ = ops.remove(Events::with_data_raw(fd, CONNECTION, EventSet::IN));
                    drop(stream);
                }
            }
        }
    }
}
