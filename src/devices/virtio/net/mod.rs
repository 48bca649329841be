//! virtio-net: a host tap device as the guest's network card.

pub mod device;
pub mod event_handler;
pub mod tap;

pub use device::{Net, NetBackend, NetDeviceConfig};

#[cfg(test)]
mod tests;
