//! Emulated devices and the buses vCPUs reach them through.

pub mod bus;
pub mod legacy;
pub mod virtio;
