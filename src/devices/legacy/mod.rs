//! Legacy PC devices: COM1, the i8042 controller and the boot timer.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
