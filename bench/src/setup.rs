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

/// Where the project keeps its Firecracker peer: `shared/peers/firecracker` next to
/// the repository (`../shared/peers/firecracker` from its root).
pub fn default_firecracker() -> PathBuf {
    let repo = default_repo();
    repo.parent()
        .unwrap_or(&repo)
        .join("shared/peers/firecracker")
}

/// The Firecracker to compare with: `explicit` (`--firecracker PATH`), else
/// `from_env` (`$FIRECRACKER`), else `default` if a file is there; `None` leaves
/// Firecracker out.
pub fn find_firecracker(
    explicit: Option<PathBuf>,
    from_env: Option<std::ffi::OsString>,
    default: &Path,
) -> Option<PathBuf> {
    explicit
        .or_else(|| from_env.map(PathBuf::from))
        .or_else(|| default.is_file().then(|| default.to_owned()))
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
    fn test_an_explicit_firecracker_wins_over_the_environment_and_the_default() {
        let found = find_firecracker(
            Some("/opt/fc".into()),
            Some("/env/fc".into()),
            Path::new("/nonexistent/fc"),
        );
        assert_eq!(found, Some(PathBuf::from("/opt/fc")));
    }

    #[test]
    fn test_the_default_firecracker_is_taken_only_where_it_exists() {
        let dir = std::env::temp_dir().join(format!("bench-fc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let present = dir.join("firecracker");
        std::fs::write(&present, b"").unwrap();

        let found = find_firecracker(None, None, &present);
        let absent = find_firecracker(None, None, &dir.join("absent"));

        assert_eq!(found, Some(present.clone()));
        assert_eq!(absent, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_the_default_firecracker_is_in_shared_peers_next_to_the_repository() {
        let fc = default_firecracker();
        let beside = default_repo()
            .parent()
            .map(|p| p.join("shared/peers/firecracker"));
        assert_eq!(Some(fc), beside);
    }

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
