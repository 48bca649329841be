//! A whole VM's saved state, and Firecracker's snapshot parameters.
//!
//! The state file (see [`super::format`]) holds one [`VmSnapshot`]: the config the
//! VM was built from, the memory layout, the in-kernel VM state, every vCPU's
//! state and every device's, in the order the builder attaches devices (drives,
//! then network interfaces), which also fixes each virtio device's MMIO window and
//! interrupt. Guest memory lives in the memory file beside it
//! ([`super::memory`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::format::SnapshotFormatError;
use super::memory::{MemoryFileError, MemoryState};
use crate::config::{CopyOnWrite, VmConfig};
use crate::devices::legacy::i8042::I8042State;
use crate::devices::legacy::serial::SerialState;
use crate::devices::virtio::block::cow::CowError;
use crate::devices::virtio::block::BlockState;
use crate::devices::virtio::net::NetState;
use crate::devices::virtio::persist::TransportState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::{VmState, VmStateError};

/// Errors while creating a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Firecracker's rule: only a paused VM is snapshotted.
    #[error("cannot create a snapshot of a running microVM; pause it first (PATCH /vm)")]
    NotPaused,
    /// A Diff needs KVM's dirty log.
    #[error(
        "a Diff snapshot needs machine-config.track_dirty_pages (or track_dirty_pages on load)"
    )]
    DiffWithoutTracking,
    /// A Diff with nothing to layer it on.
    #[error(
        "a Diff snapshot needs a Full one to layer on: take a Full snapshot first (this VM \
         was booted, or a snapshot write failed, since the last one)"
    )]
    DiffWithoutBase,
    /// A vCPU's state could not be saved.
    #[error("cannot save a vCPU's state: {0}")]
    Vcpu(String),
    /// A vCPU did not answer in time.
    #[error("vCPU {0} did not save its state in time")]
    VcpuNoAnswer(u8),
    /// The VM's in-kernel state could not be saved.
    #[error(transparent)]
    VmState(#[from] VmStateError),
    /// A copy-on-write drive's overlay could not be frozen beside the state file.
    #[error("drive {drive_id:?}: cannot freeze its copy-on-write overlay")]
    Overlay {
        /// The drive.
        drive_id: String,
        /// Why.
        #[source]
        source: CowError,
    },
    /// The memory file could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// Guest RAM's file was linked at the memory file's path, but could not then be
    /// mapped privately: the VM cannot run again.
    #[error(
        "live fork: cannot map guest RAM privately after linking it to {}; the microVM \
         cannot run again",
        .path.display()
    )]
    Fork {
        /// The memory file's path.
        path: std::path::PathBuf,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The state file could not be written.
    #[error(transparent)]
    Format(#[from] SnapshotFormatError),
}

/// A virtio-blk device and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSnapshot {
    /// The device.
    pub device: BlockState,
    /// Its virtio-mmio transport.
    pub transport: TransportState,
}

/// A virtio-net device and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSnapshot {
    /// The device.
    pub device: NetState,
    /// Its virtio-mmio transport.
    pub transport: TransportState,
}

/// The virtio-vsock device and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSnapshot {
    /// The device.
    pub device: VsockState,
    /// Its virtio-mmio transport.
    pub transport: TransportState,
}

/// Everything of a paused VM but its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// The config the VM was built from (`GET /vm/config` after a load).
    pub config: VmConfig,
    /// Where guest RAM is, in the guest and in the memory file.
    pub memory: MemoryState,
    /// Irqchip, PIT, clock.
    pub vm: VmState,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialState,
    /// The i8042.
    pub i8042: I8042State,
    /// Drives, in attach order.
    pub blocks: Vec<BlockSnapshot>,
    /// Network interfaces, in attach order.
    pub nets: Vec<NetSnapshot>,
    /// The vsock device, attached after the interfaces.
    #[serde(default)]
    pub vsock: Option<VsockSnapshot>,
}

/// Full or Diff (Firecracker's `snapshot_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// Every page of guest memory.
    #[default]
    Full,
    /// Only the pages dirtied since the previous snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the state file goes.
    pub snapshot_path: PathBuf,
    /// Where the memory file goes.
    pub mem_file_path: PathBuf,
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// Where the memory of a snapshot comes from (Firecracker's `mem_backend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// `File` or `Uffd`.
    pub backend_type: MemBackendType,
    /// The memory file (or the page-fault handler's socket, for `Uffd`).
    pub backend_path: PathBuf,
}

/// Firecracker's memory backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Map the memory file copy-on-write.
    File,
    /// Anonymous memory whose page faults a handler process serves through a
    /// userfaultfd (see [`super::uffd`]).
    Uffd,
}

/// A tap to use instead of the saved one (Firecracker's `network_overrides`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// Which interface.
    pub iface_id: String,
    /// The tap to attach it to.
    pub host_dev_name: String,
}

/// Another backing for a saved drive (spry's extension of `PUT /snapshot/load`, in
/// the manner of `network_overrides`): each clone of one snapshot gets a disk of
/// its own, or a copy-on-write view of a shared one. The drive keeps its saved
/// id, read-only flag and cache type; the file must have the saved size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// Which drive of the snapshot.
    pub drive_id: String,
    /// The backing file instead of the saved one (the base image, with
    /// `copy_on_write`).
    pub path_on_host: PathBuf,
    /// Open `path_on_host` read-only as a base and keep this clone's writes in an
    /// overlay of its own (as on a drive); absent, the drive is an ordinary one on
    /// `path_on_host`, whatever the saved drive was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_on_write: Option<CopyOnWrite>,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Where memory comes from.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// The memory file (Firecracker's older spelling of a `File` backend).
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// Track dirty pages from the start, for later Diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Run the vCPUs at once (otherwise the VM is loaded Paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// Taps to use instead of the saved ones.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// spry's extension: backing files to use instead of the saved drives' ones.
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
    /// Advance the guest's KVM clock by the real time that passed since the
    /// snapshot (otherwise the guest sees no time pass while it was saved).
    #[serde(default)]
    pub clock_realtime: bool,
}

/// `PUT /snapshot/rollback` (spry's own route): no field yet; `{}` or no body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRollbackParams {}

/// Why a load request is refused before anything is read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadParamsError {
    /// Neither or both of `mem_backend` and `mem_file_path`.
    #[error("snapshot/load: give exactly one of mem_backend and mem_file_path")]
    MemorySource,
}

/// Where a load takes guest memory from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource<'a> {
    /// Map this memory file copy-on-write.
    File(&'a PathBuf),
    /// Hand this page-fault handler socket the memory's userfaultfd.
    Uffd(&'a PathBuf),
}

impl SnapshotLoadParams {
    /// Where guest memory comes from.
    pub fn memory_source(&self) -> Result<MemorySource<'_>, LoadParamsError> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(backend), None) => Ok(match backend.backend_type {
                MemBackendType::File => MemorySource::File(&backend.backend_path),
                MemBackendType::Uffd => MemorySource::Uffd(&backend.backend_path),
            }),
            (None, Some(path)) => Ok(MemorySource::File(path)),
            _ => Err(LoadParamsError::MemorySource),
        }
    }

    /// Whether the restored VM tracks dirty pages.
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots
    }

    /// The tap for interface `iface_id`: its override, else `saved`.
    pub fn tap_for<'a>(&'a self, iface_id: &str, saved: &'a str) -> &'a str {
        self.network_overrides
            .iter()
            .find(|o| o.iface_id == iface_id)
            .map_or(saved, |o| o.host_dev_name.as_str())
    }

    /// The override of drive `drive_id`, if any.
    pub fn drive_override(&self, drive_id: &str) -> Option<&DriveOverride> {
        self.drive_overrides.iter().find(|o| o.drive_id == drive_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> SnapshotLoadParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn test_file_backend_names_the_memory_file() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
        );

        assert_eq!(
            p.memory_source(),
            Ok(MemorySource::File(&PathBuf::from("m")))
        );
        assert!(!p.resume_vm);
    }

    #[test]
    fn test_old_mem_file_path_is_accepted() {
        let p = load(r#"{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": true}"#);

        assert_eq!(
            p.memory_source(),
            Ok(MemorySource::File(&PathBuf::from("m")))
        );
    }

    #[test]
    fn test_both_memory_sources_are_refused() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
        );

        assert_eq!(p.memory_source(), Err(LoadParamsError::MemorySource));
    }

    #[test]
    fn test_uffd_backend_names_the_handler_socket() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"}}"#,
        );

        assert_eq!(
            p.memory_source(),
            Ok(MemorySource::Uffd(&PathBuf::from("u")))
        );
    }

    #[test]
    fn test_network_override_replaces_the_saved_tap() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}]}"#,
        );

        assert_eq!(p.tap_for("eth0", "tap0"), "tap7");
        assert_eq!(p.tap_for("eth1", "tap1"), "tap1");
    }

    #[test]
    fn test_drive_override_parses_with_a_copy_on_write_overlay() {
        let p = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "drive_overrides": [{"drive_id": "rootfs", "path_on_host": "/base.ext4",
                  "copy_on_write": {"overlay_type": "File", "overlay_path": "/c1.cow"}}]}"#,
        );

        let o = p.drive_override("rootfs").unwrap();
        assert_eq!(o.path_on_host, PathBuf::from("/base.ext4"));
        let cow = o.copy_on_write.as_ref().unwrap();
        assert_eq!(cow.overlay_path, Some(PathBuf::from("/c1.cow")));
        assert!(p.drive_override("data").is_none());
    }

    #[test]
    fn test_drive_override_with_an_unknown_field_is_refused() {
        let err = serde_json::from_str::<SnapshotLoadParams>(
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "drive_overrides": [{"drive_id": "rootfs", "path": "/x"}]}"#,
        )
        .unwrap_err();

        assert!(err.to_string().contains("unknown field `path`"), "{err}");
    }

    #[test]
    fn test_create_defaults_to_full() {
        let p: SnapshotCreateParams =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();

        assert_eq!(p.snapshot_type, SnapshotType::Full);
    }
}
