//! What an API request asks of the VMM, as types: the router produces a
//! [`VmmAction`], the VMM thread answers with [`VmmData`].
//!
//! Actions come in three kinds, and which kind a request is decides where it may run:
//! a [`PrebootAction`] only before `InstanceStart`, a [`RuntimeAction`] only after,
//! a [`Query`] at any time. Each controller takes only its own kind, so a pre-boot
//! call after boot cannot reach code that would mishandle it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{
    BootSourceConfig, DriveConfig, LoggerConfig, MachineConfig, MetricsConfig, NetConfig, VmConfig,
    VsockConfig,
};
use crate::snapshot::vm::{SnapshotCreateParams, SnapshotLoadParams};

/// One request for the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// Allowed before boot only.
    Preboot(PrebootAction),
    /// Allowed after boot only.
    Runtime(RuntimeAction),
    /// Allowed at any time.
    Query(Query),
}

/// Calls that configure the VM before it boots, and the boot itself.
#[derive(Debug, Clone, PartialEq)]
pub enum PrebootAction {
    /// `PUT /boot-source`.
    PutBootSource(BootSourceConfig),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{drive_id}`.
    PutDrive(DriveConfig),
    /// `PUT /network-interfaces/{iface_id}`.
    PutNetworkInterface(NetConfig),
    /// `PUT /vsock`.
    PutVsock(VsockConfig),
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /actions` `InstanceStart`.
    InstanceStart,
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
}

/// Calls on a running VM.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeAction {
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /actions` `SendCtrlAltDel`.
    SendCtrlAltDel,
    /// `PUT /actions` `FlushMetrics`.
    FlushMetrics,
    /// `PATCH /vm` `Paused`.
    Pause,
    /// `PATCH /vm` `Resumed`.
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/rollback` (spry's own).
    RollbackSnapshot,
}

/// Reads, valid in every state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `GET /`.
    InstanceInfo,
    /// `GET /version`.
    Version,
    /// `GET /machine-config`.
    MachineConfig,
    /// `GET /vm/config`.
    VmConfig,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done; nothing to report (HTTP 204).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(VersionInfo),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /vm/config`.
    VmConfig(Box<VmConfig>),
}

/// `GET /` (Firecracker's `InstanceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The `--id` spry was started with.
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// spry's version.
    pub vmm_version: String,
    /// `spry`.
    pub app_name: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The Firecracker API version whose routes and bodies spry serves, so clients
    /// that check it accept spry.
    pub firecracker_version: String,
    /// spry's own version.
    pub spry_version: String,
}

/// The Firecracker API level spry's dialect matches: the routes and bodies in
/// `resources/openapi.json` are those of Firecracker 1.10 (drives and interfaces
/// configured before boot; no hotplug).
pub const FIRECRACKER_API_VERSION: &str = "1.10.0";

/// `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New dirty-page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// New huge page setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// New directory for guest RAM's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file_dir: Option<std::path::PathBuf>,
}

impl MachineConfigUpdate {
    /// `current` with this update's fields in place.
    pub fn apply(&self, current: &MachineConfig) -> MachineConfig {
        let mut next = current.clone();
        if let Some(v) = self.vcpu_count {
            next.vcpu_count = v;
        }
        if let Some(v) = self.mem_size_mib {
            next.mem_size_mib = v;
        }
        if let Some(v) = self.smt {
            next.smt = v;
        }
        if let Some(v) = self.track_dirty_pages {
            next.track_dirty_pages = v;
        }
        if let Some(v) = &self.cpu_template {
            next.cpu_template = Some(v.clone());
        }
        if let Some(v) = &self.huge_pages {
            next.huge_pages = Some(v.clone());
        }
        if let Some(v) = &self.memory_file_dir {
            next.memory_file_dir = Some(v.clone());
        }
        next
    }
}

/// `PATCH /drives/{drive_id}` (Firecracker's `PartialDrive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// Which drive.
    pub drive_id: String,
    /// The new backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Firecracker's rate limiter; not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Write a metrics line now.
    FlushMetrics,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state to move to.
    pub state: VmState,
}

/// The states `PATCH /vm` moves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs stop.
    Paused,
    /// vCPUs run again.
    Resumed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_machine_config_update_changes_only_given_fields() {
        let current = MachineConfig {
            vcpu_count: 2,
            smt: true,
            ..MachineConfig::default()
        };
        let update = MachineConfigUpdate {
            mem_size_mib: Some(256),
            ..MachineConfigUpdate::default()
        };

        let next = update.apply(&current);

        assert_eq!(next.vcpu_count, 2);
        assert!(next.smt);
        assert_eq!(next.mem_size_mib, 256);
    }
}
