//! How requests cross from the API thread to the VMM thread: an mpsc queue of
//! [`ApiRequest`]s plus an eventfd that wakes the VMM's event loop, and a one-shot
//! channel per request for the answer. The API thread awaits that answer without
//! blocking its other connections; the VMM thread never waits for the API thread.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use tokio::sync::oneshot;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::action::{VmmAction, VmmData};

/// The VMM's answer: data, or the message of a 400 `fault_message`.
pub type ApiReply = Result<VmmData, String>;

/// One request waiting for the VMM.
#[derive(Debug)]
pub struct ApiRequest {
    /// What is asked.
    pub action: VmmAction,
    /// Where the answer goes.
    pub reply: Responder,
}

/// The way back to the connection waiting for an answer.
#[derive(Debug)]
pub struct Responder(oneshot::Sender<ApiReply>);

impl Responder {
    /// Sends the answer (dropped if the client has gone).
    pub fn answer(self, reply: ApiReply) {
        let _ = self.0.send(reply);
    }
}

/// The API thread's end: cloned into every connection.
#[derive(Debug, Clone)]
pub struct VmmClient {
    requests: Sender<ApiRequest>,
    wake: Arc<EventFd>,
}

/// The message when the VMM thread has gone (the VM stopped and spry is exiting).
pub const VMM_GONE: &str = "The microVM has stopped and spry is exiting.";

impl VmmClient {
    /// Hands `action` to the VMM and waits for its answer.
    pub async fn call(&self, action: VmmAction) -> ApiReply {
        let (reply, answer) = oneshot::channel();
        let request = ApiRequest {
            action,
            reply: Responder(reply),
        };
        if self.requests.send(request).is_err() {
            return Err(VMM_GONE.to_owned());
        }
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the VMM for an API request: {e}");
        }
        answer.await.unwrap_or_else(|_| Err(VMM_GONE.to_owned()))
    }
}

/// The VMM thread's end.
#[derive(Debug)]
pub struct ApiInbox {
    requests: Receiver<ApiRequest>,
    wake: EventFd,
}

impl ApiInbox {
    /// The eventfd written after every request.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Clears the wake-up; call before taking requests so none is missed.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    /// The next waiting request, if any.
    pub fn try_next(&self) -> Option<ApiRequest> {
        // Disconnected means the API thread has gone: nothing more will come.
        self.requests.try_recv().ok()
    }

    /// An event-loop subscriber that clears the wake-up; the requests themselves are
    /// taken by the run hook, which has the whole VMM at hand.
    pub fn wake_subscriber(&self) -> std::io::Result<ApiWake> {
        Ok(ApiWake {
            wake: self.wake.try_clone()?,
        })
    }
}

/// Creates the two ends.
pub fn channel() -> std::io::Result<(VmmClient, ApiInbox)> {
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = mpsc::channel();
    let client = VmmClient {
        requests: tx,
        wake: Arc::new(wake.try_clone()?),
    };
    Ok((client, ApiInbox { requests: rx, wake }))
}

/// Clears the API wake-up on the event loop.
#[derive(Debug)]
pub struct ApiWake {
    wake: EventFd,
}

impl MutEventSubscriber for ApiWake {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("cannot watch the API wake-up: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::action::Query;

    #[test]
    fn test_request_wakes_the_inbox_and_gets_its_answer() {
        let (client, inbox) = channel().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let vmm = std::thread::spawn(move || {
            let request = inbox.requests.recv().unwrap();
            request.reply.answer(Ok(VmmData::Empty));
            inbox
        });

        let reply = runtime.block_on(client.call(VmmAction::Query(Query::Version)));

        let inbox = vmm.join().unwrap();
        assert_eq!(reply, Ok(VmmData::Empty));
        assert_eq!(inbox.wake_fd().read().unwrap(), 1);
    }

    #[test]
    fn test_request_after_the_vmm_left_is_refused() {
        let (client, inbox) = channel().unwrap();
        drop(inbox);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();

        let reply = runtime.block_on(client.call(VmmAction::Query(Query::Version)));

        assert_eq!(reply, Err(VMM_GONE.to_owned()));
    }
}
