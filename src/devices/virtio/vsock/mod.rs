//! virtio-vsock in Firecracker's hybrid form: guest stream sockets bridged to Unix
//! sockets on the host (see [`muxer`] for the protocol host clients speak).

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod muxer;
pub mod packet;
pub mod persist;
pub mod unix;

pub use device::{Vsock, TYPE_VSOCK};
pub use muxer::{Muxer, VsockCounters};

#[cfg(test)]
mod tests;
