//! The `--config-file` JSON, in Firecracker's layout and field names.
//!
//! These are plain serde types: parsing checks shape and types only. Meaning (ranges,
//! files that exist, what this host can do) is checked by [`crate::resources`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors while reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or does not match the expected shape.
    #[error("{path}: {field}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Dotted path of the offending field ("." for the document itself).
        field: String,
        /// serde's description of the problem.
        message: String,
    },
}

/// The whole config file (Firecracker's `VmmConfig`).
///
/// Keys Firecracker knows but spry does not implement parse, and are then refused
/// unless absent, `null` or empty, so a config never loses part of its meaning
/// silently; any other key is an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    pub boot_source: BootSourceConfig,
    /// vCPUs and memory.
    #[serde(default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// Network interfaces.
    #[serde(default)]
    pub network_interfaces: Vec<NetConfig>,
    /// Firecracker's `cpu-config`; not supported.
    #[serde(default, skip_serializing)]
    pub cpu_config: Option<serde_json::Value>,
    /// The virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// Firecracker's `balloon`; not supported.
    #[serde(default, skip_serializing)]
    pub balloon: Option<serde_json::Value>,
    /// Firecracker's `entropy`; not supported.
    #[serde(default, skip_serializing)]
    pub entropy: Option<serde_json::Value>,
    /// Firecracker's `mmds-config`; not supported.
    #[serde(default, skip_serializing)]
    pub mmds_config: Option<serde_json::Value>,
    /// Firecracker's `pmem`; not supported.
    #[serde(default, skip_serializing)]
    pub pmem: Option<serde_json::Value>,
    /// Firecracker's `memory-hotplug`; not supported.
    #[serde(default, skip_serializing)]
    pub memory_hotplug: Option<serde_json::Value>,
    /// Where spry's log lines go, and which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// Where metrics lines go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

impl VmConfig {
    /// Names of the Firecracker sections spry does not implement that are present
    /// with content (absent, `null` and `[]` are fine).
    pub fn unsupported_sections(&self) -> Vec<&'static str> {
        let used = |v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        [
            ("cpu-config", &self.cpu_config),
            ("balloon", &self.balloon),
            ("entropy", &self.entropy),
            ("mmds-config", &self.mmds_config),
            ("pmem", &self.pmem),
            ("memory-hotplug", &self.memory_hotplug),
        ]
        .into_iter()
        .filter(|(_, v)| used(v))
        .map(|(name, _)| name)
        .collect()
    }
}

/// `boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Uncompressed ELF `vmlinux` or compressed `bzImage`.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; a default that suits spry's devices when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initial RAM disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u32,
    /// Present two hardware threads per core to the guest.
    #[serde(default)]
    pub smt: bool,
    /// Ask KVM to log dirty pages of guest memory.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's CPU template; only `None` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Firecracker's huge page setting: `None` or `Transparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// spry's addition: keep guest RAM in an unnamed file in this directory, on a
    /// tmpfs, mapped shared, so that a Full snapshot whose memory file is on the
    /// same file system links that file instead of writing memory (a live fork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file_dir: Option<PathBuf>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
            memory_file_dir: None,
        }
    }
}

/// How the block device caches writes (Firecracker's `cache_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing the backing file.
    #[default]
    Unsafe,
    /// Flush requests sync the backing file (`fdatasync`).
    Writeback,
}

/// One entry of `drives`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Identifier, alphanumerics and `_`.
    pub drive_id: String,
    /// Backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether this drive holds the root file system.
    pub is_root_device: bool,
    /// Partition UUID to boot from instead of `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Read-only drive.
    #[serde(default)]
    pub is_read_only: bool,
    /// Flush semantics.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Firecracker's I/O engine; only `Sync` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Firecracker's rate limiter; not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    /// vhost-user socket; not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// spry's extension: open `path_on_host` read-only as the base image and keep
    /// the guest's writes in an overlay of this drive's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_on_write: Option<CopyOnWrite>,
}

/// Where a copy-on-write disk keeps its changes (spry's `copy_on_write` object on a
/// drive): `{"overlay_type": "Memory"}` or
/// `{"overlay_type": "File", "overlay_path": "/path"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyOnWrite {
    /// `Memory` or `File`.
    pub overlay_type: OverlayType,
    /// The overlay file, for `File`: created sparse if missing or empty, reused
    /// (with its changes) if it is an overlay of a disk of the same size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_path: Option<PathBuf>,
}

/// The overlay kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayType {
    /// Changes live in spry's memory and go with the process (or into a snapshot).
    Memory,
    /// Changes live in a sparse file of their own.
    File,
}

/// One entry of `network-interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Identifier, alphanumerics and `_`.
    pub iface_id: String,
    /// Name of an existing tap device.
    pub host_dev_name: String,
    /// MAC address the guest sees, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU the device advertises, 68 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Firecracker's rate limiters; not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// Firecracker's rate limiters; not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `vsock` (Firecracker's `PUT /vsock` body): a virtio-vsock device whose host side
/// is Unix sockets at `uds_path` (host-initiated) and `<uds_path>_<port>`
/// (guest-initiated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Firecracker's deprecated device id; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id, 3 or more.
    pub guest_cid: u32,
    /// Where host clients connect; must not exist yet.
    pub uds_path: PathBuf,
}

/// `logger` (Firecracker's `PUT /logger` body). Absent fields keep their current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File or FIFO the lines go to instead of stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Most verbose level written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Write each line's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Write each line's source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only write lines from modules under this path (e.g. `spry::api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A log level in Firecracker's spelling (`Error`, `Warning`, `Info`, `Debug`,
/// `Trace`, `Off`), accepted in any letter case and as `Warn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(pub log::LevelFilter);

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(text: String) -> Result<LogLevel, String> {
        let level = match text.to_ascii_lowercase().as_str() {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "warning" | "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => {
                return Err(format!(
                    "{text:?} is not a log level (Error, Warning, Info, Debug, Trace or Off)"
                ))
            }
        };
        Ok(LogLevel(level))
    }
}

impl From<LogLevel> for String {
    fn from(level: LogLevel) -> String {
        match level.0 {
            log::LevelFilter::Off => "Off",
            log::LevelFilter::Error => "Error",
            log::LevelFilter::Warn => "Warning",
            log::LevelFilter::Info => "Info",
            log::LevelFilter::Debug => "Debug",
            log::LevelFilter::Trace => "Trace",
        }
        .to_owned()
    }
}

/// `metrics` (Firecracker's `PUT /metrics` body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or FIFO that receives one JSON object per line.
    pub metrics_path: PathBuf,
}

/// Parses `json` (one value, nothing after it) as a config section, naming the
/// offending field on error ("." for the whole value).
pub fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, (String, String)> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        (field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| (".".to_owned(), e.to_string()))?;
    Ok(value)
}

impl VmConfig {
    /// Reads and parses a config file.
    pub fn from_file(path: &std::path::Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(text.as_bytes()).map_err(|(field, message)| ConfigError::Parse {
            path: path.to_owned(),
            field,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_config(text: &str) -> Result<VmConfig, (String, String)> {
        parse(text.as_bytes())
    }

    #[test]
    fn test_text_after_the_config_is_an_error() {
        let err =
            parse_config(r#"{"boot-source": {"kernel_image_path": "/k"}} {"machine-config": {}}"#)
                .unwrap_err();
        assert_eq!(err.0, ".");
        assert!(err.1.contains("trailing characters"), "{err:?}");
    }

    #[test]
    fn test_minimal_config_gets_firecracker_defaults() {
        let config = parse_config(r#"{"boot-source": {"kernel_image_path": "/k"}}"#).unwrap();
        assert_eq!(config.machine_config, MachineConfig::default());
        assert_eq!(config.boot_source.kernel_image_path, PathBuf::from("/k"));
        assert!(config.drives.is_empty());
    }

    #[test]
    fn test_firecracker_example_config_parses() {
        let text = r#"{
          "boot-source": {"kernel_image_path": "vmlinux.bin", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "initrd_path": null},
          "drives": [{"drive_id": "rootfs", "path_on_host": "bionic.rootfs.ext4", "is_root_device": true, "is_read_only": false}],
          "network-interfaces": [{"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0"}],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false},
          "cpu-config": null, "balloon": null, "vsock": null, "logger": null, "metrics": null, "mmds-config": null, "entropy": null
        }"#;
        let config = parse_config(text).unwrap();
        assert_eq!(config.machine_config.vcpu_count, 2);
        assert_eq!(config.drives[0].drive_id, "rootfs");
        assert_eq!(config.network_interfaces[0].host_dev_name, "tap0");
        assert!(config.unsupported_sections().is_empty());
    }

    #[test]
    fn test_unknown_top_level_key_names_it() {
        let (field, message) =
            parse_config(r#"{"boot-source": {"kernel_image_path": "/k"}, "bogus": 1}"#)
                .unwrap_err();
        assert_eq!(field, "bogus");
        assert!(message.contains("unknown field `bogus`"), "{message}");
    }

    #[test]
    fn test_unknown_nested_field_names_its_path() {
        let (field, message) = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}}"#,
        )
        .unwrap_err();
        assert_eq!(field, "machine-config.cpus");
        assert!(message.contains("unknown field `cpus`"), "{message}");
    }

    #[test]
    fn test_wrong_type_names_the_field() {
        let (field, message) = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "2", "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert_eq!(field, "machine-config.vcpu_count");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn test_vcpu_count_above_u8_is_rejected_by_type() {
        let (field, _) = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 300, "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert_eq!(field, "machine-config.vcpu_count");
    }

    #[test]
    fn test_missing_boot_source_is_an_error() {
        let (_, message) = parse_config(r#"{}"#).unwrap_err();
        assert!(message.contains("missing field `boot-source`"), "{message}");
    }

    #[test]
    fn test_unsupported_section_with_content_is_reported() {
        let config = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 3}, "pmem": []}"#,
        )
        .unwrap();
        assert_eq!(config.unsupported_sections(), vec!["balloon"]);
    }

    #[test]
    fn test_vsock_section_parses() {
        let config = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3, "uds_path": "/v"}}"#,
        )
        .unwrap();
        let vsock = config.vsock.unwrap();
        assert_eq!((vsock.guest_cid, vsock.uds_path), (3, PathBuf::from("/v")));
    }

    #[test]
    fn test_vsock_unknown_field_names_its_path() {
        let (field, _) = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": 3, "uds_path": "/v", "port": 1}}"#,
        )
        .unwrap_err();
        assert_eq!(field, "vsock.port");
    }

    #[test]
    fn test_logger_and_metrics_sections_parse() {
        let config = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "logger": {"log_path": "/tmp/log", "level": "warning", "show_level": true},
                "metrics": {"metrics_path": "/tmp/metrics"}}"#,
        )
        .unwrap();
        let logger = config.logger.unwrap();
        assert_eq!(logger.level, Some(LogLevel(log::LevelFilter::Warn)));
        assert_eq!(logger.show_level, Some(true));
        assert_eq!(
            config.metrics.unwrap().metrics_path,
            PathBuf::from("/tmp/metrics")
        );
    }

    #[test]
    fn test_unknown_log_level_names_the_value() {
        let (field, message) = parse_config(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "logger": {"level": "Loud"}}"#,
        )
        .unwrap_err();
        assert_eq!(field, "logger.level");
        assert!(message.contains("\"Loud\" is not a log level"), "{message}");
    }

    #[test]
    fn test_log_level_serializes_in_firecracker_spelling() {
        let text = serde_json::to_string(&LogLevel(log::LevelFilter::Warn)).unwrap();
        assert_eq!(text, "\"Warning\"");
    }

    #[test]
    fn test_malformed_json_is_an_error() {
        let (_, message) = parse_config(r#"{"boot-source": "#).unwrap_err();
        assert!(message.contains("EOF"), "{message}");
    }
}
