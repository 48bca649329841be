//! The block device on the event loop: its queue's ioeventfd.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;

const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.queue_evt,
            QUEUE_EVENT,
            EventSet::IN,
        )) {
            log::error!(
                "virtio-blk {}: cannot watch the queue event: {e:?}",
                self.id()
            );
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == QUEUE_EVENT {
            let _ = self.queue_evt.read();
            self.process_queue();
        }
    }
}
