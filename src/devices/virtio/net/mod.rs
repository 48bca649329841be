//! virtio-net: a host tap device as the guest's network card.

pub mod device;
pub mod event_handler;
pub mod persist;
pub mod tap;

pub use device::{Net, NetBackend, NetDeviceConfig};
pub use persist::{NetState, NetStateError};

#[cfg(test)]
mod tests;
