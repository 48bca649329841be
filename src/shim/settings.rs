//! The shim's own settings: which spry, which guest kernel and image, and the
//! VM's default size. containerd starts the shim with its own environment and
//! no arguments of ours, so they come from a JSON file:
//! `$SPRY_SHIM_CONFIG`, else `/etc/spry/containerd-shim.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the settings file is looked for when `SPRY_SHIM_CONFIG` is unset.
pub const DEFAULT_PATH: &str = "/etc/spry/containerd-shim.json";

/// Errors reading the settings file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read the shim settings {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid settings JSON.
    #[error("invalid shim settings {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// A value is out of range.
    #[error("invalid shim settings {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which value, and why.
        what: String,
    },
}

/// How the shim starts each container's VM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The spry binary; default: `spry` beside the shim's own binary, else `spry`
    /// in PATH.
    #[serde(default)]
    pub spry: Option<PathBuf>,
    /// The guest kernel (spry's `vmlinux` or `bzImage`, from
    /// `resources/guest/build.sh`).
    pub kernel: PathBuf,
    /// The guest's initramfs, which carries init and the agent.
    pub initramfs: PathBuf,
    /// vCPUs per VM (an `io.spry.vcpus` annotation overrides it).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory per VM in MiB (an `io.spry.mem_mib` annotation overrides it).
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    /// Free space added to the container's root disk beyond its contents, MiB.
    #[serde(default = "default_disk_slack_mib")]
    pub disk_slack_mib: u64,
    /// How long a VM may take from its start to its agent answering, seconds.
    #[serde(default = "default_boot_timeout_s")]
    pub boot_timeout_s: u64,
    /// More kernel command line, appended to the shim's own.
    #[serde(default)]
    pub extra_boot_args: String,
    /// Where images built from containerd's layers are kept, each shared
    /// read-only by the containers of that image (each writes to an overlay of
    /// its own); `null`: every container's tree is copied into a disk of its
    /// own instead.
    #[serde(default = "default_image_cache")]
    pub image_cache: Option<PathBuf>,
    /// Where each unjailed VM's files (config, sockets, disks) go, in a
    /// directory of its own.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Run each VM under spry-jailer with these settings (the default: `{}`,
    /// a uid of its own per VM in `/srv/jailer`); `null`: spry runs as the
    /// shim's child, still with seccomp.
    #[serde(default = "default_jailer")]
    pub jailer: Option<super::jail::JailSettings>,
    /// spry's log level (`--log-level`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem_mib() -> u32 {
    256
}
fn default_disk_slack_mib() -> u64 {
    64
}
fn default_boot_timeout_s() -> u64 {
    60
}
fn default_jailer() -> Option<super::jail::JailSettings> {
    Some(super::jail::JailSettings::default())
}
fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/spry-shim")
}
fn default_image_cache() -> Option<PathBuf> {
    Some(PathBuf::from("/var/lib/spry/image-cache"))
}
fn default_log_level() -> String {
    "warn".into()
}

impl Settings {
    /// Reads the settings file containerd's environment names.
    pub fn load() -> Result<Settings, SettingsError> {
        let path = std::env::var_os("SPRY_SHIM_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        Settings::read(&path)
    }

    /// Reads and checks the settings in `path`.
    pub fn read(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.into(),
            source,
        })?;
        Settings::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Settings, SettingsError> {
        let settings: Settings =
            serde_json::from_str(text).map_err(|source| SettingsError::Parse {
                path: path.into(),
                source,
            })?;
        let invalid = |what: String| SettingsError::Invalid {
            path: path.into(),
            what,
        };
        if settings.vcpus == 0 {
            return Err(invalid("vcpus must be at least 1".into()));
        }
        if settings.mem_mib < 64 {
            return Err(invalid(format!(
                "mem_mib {} is below the guest's minimum of 64",
                settings.mem_mib
            )));
        }
        if settings.boot_timeout_s == 0 {
            return Err(invalid("boot_timeout_s must be at least 1".into()));
        }
        Ok(settings)
    }

    /// The spry binary to run.
    pub fn spry_binary(&self) -> PathBuf {
        self.spry.clone().unwrap_or_else(|| beside_shim("spry"))
    }
}

/// The program `name` beside the shim's own binary, as installed together;
/// else `name`, looked up in PATH.
pub fn beside_shim(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    match beside {
        Some(path) if path.exists() => path,
        _ => PathBuf::from(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let s = Settings::parse(
            Path::new("t.json"),
            r#"{"kernel": "/k", "initramfs": "/i"}"#,
        )
        .unwrap();
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.mem_mib, 256);
        assert_eq!(s.kernel, PathBuf::from("/k"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_reason() {
        let err = Settings::parse(
            Path::new("t.json"),
            r#"{"kernel": "/k", "initramfs": "/i", "vcpu": 2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `vcpu`"), "{err}");
        let err = Settings::parse(
            Path::new("t.json"),
            r#"{"kernel": "/k", "initramfs": "/i", "mem_mib": 8}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mem_mib 8"), "{err}");
        let err = Settings::parse(Path::new("t.json"), r#"{"initramfs": "/i"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `kernel`"), "{err}");
    }
}
