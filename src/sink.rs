//! Files and FIFOs that log and metrics lines go to, opened so that a slow or absent
//! reader can never block spry: a full FIFO loses lines instead of stalling a vCPU or
//! the event loop.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for appending lines. A FIFO is opened read-write and non-blocking
/// (opening it write-only would wait for, or without O_NONBLOCK fail for lack of,
/// a reader); a regular file is created if missing and appended to.
pub fn open(path: &Path) -> std::io::Result<File> {
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut options = OpenOptions::new();
    if is_fifo {
        options.read(true).write(true);
    } else {
        options.append(true).create(true);
    }
    options
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn test_open_creates_and_appends_to_a_regular_file() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-sink-").unwrap();
        let path = dir.as_path().join("log");
        std::fs::write(&path, b"first\n").unwrap();

        let mut file = open(&path).unwrap();
        file.write_all(b"second\n").unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"first\nsecond\n");
    }

    #[test]
    fn test_full_fifo_refuses_instead_of_blocking() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-sink-").unwrap();
        let path = dir.as_path().join("fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut file = open(&path).unwrap();
        // A pipe holds 64 KiB by default; 1 MiB cannot fit without a reader.
        let chunk = vec![b'x'; 4096];

        let refused = (0..256).any(|_| file.write_all(&chunk).is_err());

        assert!(refused);
    }
}
