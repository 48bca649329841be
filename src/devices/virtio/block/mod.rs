//! virtio-blk: a file on the host as a disk in the guest.

pub mod device;
pub mod event_handler;
pub mod request;

pub use device::{Block, BlockConfig};

#[cfg(test)]
mod tests;
