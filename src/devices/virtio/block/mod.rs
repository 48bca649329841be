//! virtio-blk: a file on the host as a disk in the guest.

pub mod cow;
pub mod device;
pub mod event_handler;
pub mod persist;
pub mod request;

pub use device::{Block, BlockConfig};
pub use persist::{BlockState, BlockStateError};

#[cfg(test)]
mod cow_device_tests;
#[cfg(test)]
mod tests;
