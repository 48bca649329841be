//! A virtio-vsock device's saved state. Connections do not survive a snapshot, as
//! Firecracker documents: the restored device tells the guest's driver with a
//! TRANSPORT_RESET event, on which it resets every connected socket and re-reads
//! its CID (listening sockets, such as the agent's, stay). The rings and indices
//! come back through the transport's restore; the Unix socket is created anew.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a virtio-vsock device needs to come back as the guest last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The Unix socket host clients connect to (created again on restore).
    pub uds_path: PathBuf,
}
