//! The Unix socket calls the event loop makes for the vsock device, none of which
//! may block it: accepting a client and connecting to a host listener whose
//! backlog may be full. (std's `UnixStream::connect` blocks on a full backlog and
//! `set_nonblocking` needs an ioctl the event loop's seccomp filter refuses.)

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Accepts one client without blocking; the new socket is non-blocking too.
pub fn accept_nonblocking(listener: &UnixListener) -> std::io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers writes nothing into our memory;
    // the fd it returns is new and owned by nobody else.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Connects to the Unix listener at `path` without blocking: a listener whose
/// backlog is full refuses (EAGAIN) instead of stalling the event loop.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or_default();
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un whose first `len` bytes hold the family
    // and the NUL-terminated path; connect only reads them.
    let ret = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            libc::socklen_t::try_from(len).unwrap_or(libc::socklen_t::MAX),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn test_connect_to_a_missing_listener_fails() {
        let e = connect_nonblocking(Path::new("/nonexistent/spry-vsock.sock_5")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn test_connect_to_an_over_long_path_is_invalid() {
        let long = format!("/tmp/{}", "x".repeat(120));
        let e = connect_nonblocking(Path::new(&long)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn test_both_ends_never_block() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-unix-").unwrap();
        let path = dir.as_path().join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut ours = connect_nonblocking(&path).unwrap();
        let mut theirs = accept_nonblocking(&listener).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            ours.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert_eq!(
            theirs.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            accept_nonblocking(&listener).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
}
