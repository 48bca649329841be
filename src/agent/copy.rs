//! `spry cp`: files and directories into and out of a running guest, with their
//! modes, as tar streams through the agent (the guest runs its own busybox `tar`,
//! as `docker cp` moves tar archives).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

use super::client::{ClientError, Session};
use super::protocol::{Ended, ExecRequest};

/// Errors of copying to or from the guest.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Neither or both sides name a guest path.
    #[error("exactly one of the two paths must be in the guest (written :PATH), got {src:?} and {dst:?}")]
    Sides {
        /// The source as given.
        src: String,
        /// The destination as given.
        dst: String,
    },
    /// A path with nothing to name the copy by (`/`, `..`, empty).
    #[error("{0:?} names no file or directory to copy")]
    NoName(String),
    /// Reaching the agent or running tar through it failed.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// tar in the guest failed.
    #[error("tar in the guest failed ({ended:?}): {stderr}")]
    GuestTar {
        /// How it ended.
        ended: Ended,
        /// What it printed.
        stderr: String,
    },
    /// Reading or writing on the host failed.
    #[error("{what} {path}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Where a path of `spry cp` is: `:PATH` is in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A host path.
    Host(PathBuf),
    /// An absolute or relative (to `/`) guest path.
    Guest(String),
}

impl Place {
    /// Reads `spry cp`'s notation.
    pub fn parse(text: &str) -> Place {
        match text.strip_prefix(':') {
            Some(guest) => Place::Guest(guest.to_owned()),
            None => Place::Host(PathBuf::from(text)),
        }
    }
}

/// Copies `src` to `dst`, one of them in the guest reached through `uds`/`port`.
pub fn copy(uds: &Path, port: u32, src: &str, dst: &str) -> Result<(), CopyError> {
    match (Place::parse(src), Place::parse(dst)) {
        (Place::Host(from), Place::Guest(to)) => copy_in(uds, port, &from, &to),
        (Place::Guest(from), Place::Host(to)) => copy_out(uds, port, &from, &to),
        _ => Err(CopyError::Sides {
            src: src.to_owned(),
            dst: dst.to_owned(),
        }),
    }
}

/// The directory a copy lands in and the name it gets there: `dir/` keeps the
/// source's name, anything else is the new name (as `cp -r SRC DST` when DST
/// does not exist).
fn target(dst: &str, src_name: &str) -> Result<(String, String), CopyError> {
    if dst.ends_with('/') {
        return Ok((dst.to_owned(), src_name.to_owned()));
    }
    let path = Path::new(dst);
    let name = file_name(path).ok_or_else(|| CopyError::NoName(dst.to_owned()))?;
    let dir = match path.parent().map(Path::as_os_str) {
        Some(p) if !p.is_empty() => p.to_string_lossy().into_owned(),
        _ => ".".to_owned(),
    };
    Ok((dir, name))
}

fn file_name(path: &Path) -> Option<String> {
    match path.components().next_back()? {
        Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// Runs `argv` in the guest with `input` as its standard input, its standard
/// output to `output`, and fails unless it exits 0.
fn guest_tar(
    uds: &Path,
    port: u32,
    argv: &[&str],
    input: Option<UnixStream>,
    output: &mut dyn Write,
) -> Result<(), CopyError> {
    let request = ExecRequest {
        argv: argv.iter().map(OsString::from).collect(),
        ..ExecRequest::default()
    };
    let session = Session::open(uds, port, &request)?;
    let feeder = match input {
        Some(input) => Some(session.feed_stdin(input)),
        None => {
            session.close_stdin()?;
            None
        }
    };
    let mut stderr = Vec::new();
    let ended = session.wait(output, &mut stderr)?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    match ended {
        Ended::Exited(0) => Ok(()),
        ended => Err(CopyError::GuestTar {
            ended,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        }),
    }
}

fn host_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CopyError + 'a {
    move |source| CopyError::Host {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Host `from` (file or directory) into the guest at `to`.
pub fn copy_in(uds: &Path, port: u32, from: &Path, to: &str) -> Result<(), CopyError> {
    let src_name = file_name(from).ok_or_else(|| CopyError::NoName(from.display().to_string()))?;
    let (dir, name) = target(to, &src_name)?;
    let meta = std::fs::symlink_metadata(from).map_err(host_err("cannot read", from))?;
    let (archive_in, archive_out) =
        UnixStream::pair().map_err(host_err("cannot make a pipe for", from))?;
    let source = from.to_owned();
    // The archive is written as tar in the guest reads it, so no copy of the
    // tree is ever held in memory or on disk.
    let packer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut builder = tar::Builder::new(archive_out);
        builder.follow_symlinks(false);
        if meta.is_dir() {
            builder.append_dir_all(&name, &source)?;
        } else {
            builder.append_path_with_name(&source, &name)?;
        }
        builder.into_inner()?.flush()
    });
    let result = guest_tar(
        uds,
        port,
        &["tar", "-x", "-f", "-", "-C", &dir],
        Some(archive_in),
        &mut std::io::sink(),
    );
    let packed = packer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the archive writer panicked")));
    result?;
    packed.map_err(host_err("cannot archive", from))
}

/// Guest `from` (file or directory) to the host at `to`.
pub fn copy_out(uds: &Path, port: u32, from: &str, to: &Path) -> Result<(), CopyError> {
    let src_name = file_name(Path::new(from)).ok_or_else(|| CopyError::NoName(from.to_owned()))?;
    let src_dir = match Path::new(from).parent().map(Path::as_os_str) {
        Some(p) if !p.is_empty() => p.to_string_lossy().into_owned(),
        _ => "/".to_owned(),
    };
    let (dir, name) = target(&to.to_string_lossy(), &src_name)?;
    // Unpacked into a fresh directory beside the destination, then renamed into
    // place: the archive comes from the guest, and tar's own checks keep its
    // entries inside that directory (no `..`, no absolute paths, no writes
    // through its symlinks).
    let staging = tempdir_in(Path::new(&dir))?;
    let (archive_in, mut archive_out) =
        UnixStream::pair().map_err(host_err("cannot make a pipe for", to))?;
    let unpack_into = staging.clone();
    let unpacker = std::thread::spawn(move || unpack_archive(archive_in, &unpack_into));
    let result = guest_tar(
        uds,
        port,
        &["tar", "-c", "-f", "-", "-C", &src_dir, &src_name],
        None,
        &mut archive_out,
    );
    drop(archive_out);
    let unpacked = unpacker
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the archive reader panicked")));
    let placed = result.and_then(|()| {
        unpacked.map_err(host_err("cannot unpack the guest's archive into", &staging))?;
        let dest = Path::new(&dir).join(&name);
        std::fs::rename(staging.join(&src_name), &dest).map_err(host_err("cannot create", &dest))
    });
    let _ = std::fs::remove_dir_all(&staging);
    placed
}

/// Unpacks a tar stream that came from the guest into `into`, an empty directory,
/// keeping modes and times. tar's own checks keep every entry inside `into`: no
/// `..`, no absolute paths, no writes through the archive's own symlinks. What is
/// left of the stream is drained, so the guest's tar is never stuck writing.
pub fn unpack_archive(stream: impl std::io::Read, into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    let result = archive.unpack(into);
    let _ = std::io::copy(&mut archive.into_inner(), &mut std::io::sink());
    result
}

/// A new empty directory inside `dir`, named for spry.
fn tempdir_in(dir: &Path) -> Result<PathBuf, CopyError> {
    for n in 0..1000u32 {
        let path = dir.join(format!(".spry-cp-{}-{n}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(host_err("cannot create a directory in", dir)(e)),
        }
    }
    Err(CopyError::Host {
        what: "cannot create a directory in",
        path: dir.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_places_and_targets() {
        assert_eq!(Place::parse(":/tmp/x"), Place::Guest("/tmp/x".into()));
        assert_eq!(Place::parse("a/b"), Place::Host("a/b".into()));
        let t = |dst, src| target(dst, src).ok();
        assert_eq!(t("/tmp/", "f"), Some(("/tmp/".into(), "f".into())));
        assert_eq!(t("/tmp/g", "f"), Some(("/tmp".into(), "g".into())));
        assert_eq!(t("g", "f"), Some((".".into(), "g".into())));
        assert!(t("/", "f").is_some());
        assert!(t("/tmp/..", "f").is_none());
    }

    #[test]
    fn test_both_sides_on_one_machine_is_refused() {
        let err = copy(Path::new("/nonexistent"), 52, "a", "b").unwrap_err();
        assert!(matches!(err, CopyError::Sides { .. }), "{err}");
        let err = copy(Path::new("/nonexistent"), 52, ":a", ":b").unwrap_err();
        assert!(matches!(err, CopyError::Sides { .. }), "{err}");
    }
}
