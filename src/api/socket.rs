//! The API socket file: created fresh (an existing path is refused, never replaced,
//! since it may be another spry's), and removed when spry exits, unless something
//! else took its path meanwhile.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Longest path a Unix socket address holds (`sun_path` without its NUL).
const SUN_PATH_MAX: usize = 107;

/// Errors while creating the API socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something is at the path already.
    #[error(
        "API socket {0}: the path exists; spry never replaces a file there (remove it if no \
         other spry serves it)"
    )]
    Exists(PathBuf),
    /// The directory is missing.
    #[error("API socket {path}: directory {dir} does not exist")]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The path does not fit in a socket address.
    #[error(
        "API socket {path}: {len} bytes, longer than the {SUN_PATH_MAX} a socket path may have"
    )]
    TooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// bind(2) or listen(2) failed otherwise (permissions, a read-only file system).
    #[error("API socket {path}: cannot create it")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Removes the socket file when dropped, if it is still the one spry created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove API socket {}: {e}", self.path.display());
            }
        }
    }
}

/// Creates the socket at `path` and listens on it.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(SocketError::TooLong {
            path: path.to_owned(),
            len,
        });
    }
    // bind(2) refuses an existing path too (EADDRINUSE); looking first also covers
    // dangling symlinks and gives the clearer message.
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(SocketError::Exists(path.to_owned()));
    }
    let listener = UnixListener::bind(path).map_err(|source| bind_error(path, source))?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

fn bind_error(path: &Path, source: std::io::Error) -> SocketError {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match source.raw_os_error() {
        Some(libc::EADDRINUSE) => SocketError::Exists(path.to_owned()),
        // ENOENT also comes from file systems that cannot hold sockets (procfs).
        Some(libc::ENOENT) if !dir.exists() => SocketError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        },
        _ => SocketError::Bind {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> vmm_sys_util::tempdir::TempDir {
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-socket-").unwrap()
    }

    #[test]
    fn test_bind_creates_and_drop_removes_the_socket() {
        let dir = scratch();
        let path = dir.as_path().join("api.sock");

        let (listener, file) = bind(&path).unwrap();
        let existed = path.exists();
        drop(file);

        assert!(existed);
        assert!(!path.exists());
        drop(listener);
    }

    #[test]
    fn test_existing_path_is_refused_and_left_alone() {
        let dir = scratch();
        let path = dir.as_path().join("api.sock");
        std::fs::write(&path, b"someone else's").unwrap();

        let e = bind(&path).unwrap_err();

        assert!(matches!(e, SocketError::Exists(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    }

    #[test]
    fn test_missing_directory_is_named() {
        let e = bind(Path::new("/nonexistent/dir/api.sock")).unwrap_err();

        assert_eq!(
            e.to_string(),
            "API socket /nonexistent/dir/api.sock: directory /nonexistent/dir does not exist"
        );
    }

    #[test]
    fn test_replaced_socket_file_is_not_removed() {
        let dir = scratch();
        let path = dir.as_path().join("api.sock");
        let (_listener, file) = bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"new owner").unwrap();

        drop(file);

        assert_eq!(std::fs::read(&path).unwrap(), b"new owner");
    }

    #[test]
    fn test_overlong_path_is_refused() {
        let path = PathBuf::from(format!("/tmp/{}", "s".repeat(200)));

        let e = bind(&path).unwrap_err();

        assert!(matches!(e, SocketError::TooLong { len: 205, .. }), "{e}");
    }
}
