//! Where everything is: the spry binary, the guest artifacts (built if missing), the
//! output and scratch directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cleanup;
use crate::host::HostInfo;

/// Errors finding or preparing what the benchmarks need.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No spry binary.
    #[error(
        "no spry binary at {0}: build it with `cargo build --release` (tools/bench does) or \
         pass --spry PATH"
    )]
    NoSpry(PathBuf),
    /// A guest build script failed.
    #[error("{script} failed ({status}): it builds {what}")]
    Build {
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: String,
        /// What it builds.
        what: &'static str,
    },
    /// A script could not run.
    #[error("cannot run {script}")]
    Run {
        /// The script.
        script: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory could not be created.
    #[error("cannot create {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What every benchmark starts from.
#[derive(Debug)]
pub struct Env {
    /// The repository root.
    pub repo: PathBuf,
    /// `<repo>/build` (or --build-dir).
    pub build: PathBuf,
    /// The spry binary under test.
    pub spry: PathBuf,
    /// Scratch directory for configs, bundles and disks; removed at the end.
    pub scratch: PathBuf,
    /// The host.
    pub host: HostInfo,
}

/// The repository this binary was built from.
pub fn default_repo() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// The spry binary: `--spry`, else `$SPRY_BIN`, else `spry` next to this binary, else
/// `<repo>/target/release/spry`.
pub fn find_spry(explicit: Option<PathBuf>, repo: &Path) -> PathBuf {
    if let Some(path) = explicit.or_else(|| std::env::var_os("SPRY_BIN").map(PathBuf::from)) {
        return path;
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("spry")))
        .filter(|p| p.is_file());
    sibling.unwrap_or_else(|| repo.join("target/release/spry"))
}

impl Env {
    /// Finds spry and makes the scratch directory.
    pub fn new(spry: Option<PathBuf>, build: Option<PathBuf>) -> Result<Env, SetupError> {
        let repo = default_repo();
        let build = build.unwrap_or_else(|| repo.join("build"));
        let spry = find_spry(spry, &repo);
        if !spry.is_file() {
            return Err(SetupError::NoSpry(spry));
        }
        let scratch = std::env::temp_dir().join(format!("spry-bench-{}", std::process::id()));
        cleanup::creating(|| {
            cleanup::add_path(&scratch);
            std::fs::create_dir_all(&scratch)
        })
        .map_err(|source| SetupError::Dir {
            path: scratch.clone(),
            source,
        })?;
        Ok(Env {
            repo,
            build,
            spry,
            scratch,
            host: HostInfo::detect(),
        })
    }

    /// Builds the probe guest into build/probe unless it is there.
    pub fn ensure_probe(&self) -> Result<(), SetupError> {
        if self.build.join("probe/vmlinux").is_file() && self.build.join("probe/bzImage").is_file()
        {
            return Ok(());
        }
        self.run_script("resources/probe/build.sh", "probe", "the probe guest")
    }

    /// Builds the Linux guest and busybox root file system into build/guest unless
    /// they are there (minutes on a cold cache).
    pub fn ensure_guest(&self) -> Result<(), SetupError> {
        let needed = ["vmlinux", "bzImage", "rootfs.ext4", "initramfs.cpio"];
        if needed
            .iter()
            .all(|f| self.build.join("guest").join(f).is_file())
        {
            return Ok(());
        }
        self.run_script(
            "resources/guest/build.sh",
            "guest",
            "the Linux guest and its busybox root file system",
        )
    }

    fn run_script(&self, script: &str, out: &str, what: &'static str) -> Result<(), SetupError> {
        let script = self.repo.join(script);
        eprintln!("spry-bench: building {what} ({})", script.display());
        let status = Command::new(&script)
            .arg(self.build.join(out))
            .status()
            .map_err(|source| SetupError::Run {
                script: script.clone(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(SetupError::Build {
                script,
                status: status.to_string(),
                what,
            })
        }
    }

    /// A fresh scratch subdirectory.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf, SetupError> {
        let dir = self.scratch.join(name);
        std::fs::create_dir_all(&dir).map_err(|source| SetupError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Whether the spry binary looks like a debug build (numbers from it are not
    /// representative).
    pub fn spry_is_debug(&self) -> bool {
        self.spry.components().any(|c| c.as_os_str() == "debug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_explicit_spry_wins() {
        let p = find_spry(Some("/opt/spry".into()), Path::new("/repo"));
        assert_eq!(p, PathBuf::from("/opt/spry"));
    }

    #[test]
    fn test_repo_is_the_workspace_root() {
        assert!(default_repo().join("Cargo.toml").is_file());
        assert!(default_repo().join("bench/Cargo.toml").is_file());
    }
}
