//! The host side of the guest agent (`resources/guest/spry-agent.c`): run a
//! command in a running guest (`spry exec`) and copy files in and out of it
//! (`spry cp`), over the vsock device's Unix socket in Firecracker's hybrid form.
//! The wire protocol is docs/agent-protocol.md.

pub mod client;
pub mod command;
pub mod copy;
pub mod protocol;
