//! The userfaultfd kernel interface (`linux/userfaultfd.h`), for both ends: spry
//! creates and registers the descriptor, a page-fault handler reads its messages and
//! copies pages in. Only what those two need.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_API`: the interface version both sides speak.
pub const UFFD_API: u64 = 0xaa;
/// `UFFDIO_REGISTER_MODE_MISSING`: fault on pages not yet present.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`: a range was `madvise(MADV_DONTNEED)`-ed (only sent when the
/// feature was asked for; spry does not ask).
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// Bit of `UFFDIO_COPY` (`_UFFDIO_COPY` = 3) in the `ioctls` mask a registration
/// returns.
pub const UFFDIO_COPY_BIT: u64 = 1 << 3;

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO: u64 = 0xaa;

/// `_IOC(dir, type, nr, size)` of `asm-generic/ioctl.h`.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    /// `UFFD_API` in; the kernel's answer out.
    pub api: u64,
    /// Features asked for in, offered out.
    pub features: u64,
    /// Ioctls the descriptor takes (out).
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start (host virtual address).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    /// The range to watch.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Ioctls the range takes (out).
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    /// Where the page goes (the faulting process's address).
    pub dst: u64,
    /// Where its bytes are (the caller's address).
    pub src: u64,
    /// Bytes, a multiple of the page size.
    pub len: u64,
    /// 0: wake the faulting thread.
    pub mode: u64,
    /// Bytes copied, or a negative errno (out).
    pub copy: i64,
}

/// `struct uffd_msg`, as a page-fault message: 32 bytes, of which a page fault uses
/// the event, the flags and the address.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// `arg.pagefault.flags`.
    pub flags: u64,
    /// `arg.pagefault.address`: the faulting address.
    pub address: u64,
    /// `arg.pagefault.feat` (the faulting thread's id when asked for).
    pub feat: u64,
}

/// `UFFDIO_API`.
pub const UFFDIO_API: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x3f,
    std::mem::size_of::<UffdioApi>(),
);
/// `UFFDIO_REGISTER`.
pub const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
/// `UFFDIO_COPY`.
pub const UFFDIO_COPY: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x03,
    std::mem::size_of::<UffdioCopy>(),
);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`.
pub const USERFAULTFD_IOC_NEW: u64 = ioc(0, UFFDIO, 0x00, 0);

/// Runs ioctl `request` on `fd` with `arg`, which must be the struct the request
/// names.
fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct type its request encodes (the sizes are
    // part of the request numbers above), so the kernel reads and writes only `*arg`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new userfaultfd, close-on-exec and non-blocking (Firecracker's flags, so a
/// handler written for it finds the same), that also reports faults KVM takes in
/// the kernel: by the `userfaultfd` system call, or by `/dev/userfaultfd` where the
/// system call is refused (its file mode decides who may open it).
pub fn create() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd takes one int of flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let refused = io::Error::last_os_error();
    let Ok(dev) = std::fs::File::open("/dev/userfaultfd") else {
        return Err(refused);
    };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            USERFAULTFD_IOC_NEW,
            libc::c_long::from(flags),
        )
    };
    if fd < 0 {
        return Err(refused);
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `UFFDIO_API` handshake, asking for no optional feature.
pub fn handshake(uffd: BorrowedFd<'_>) -> io::Result<UffdioApi> {
    let mut api = UffdioApi {
        api: UFFD_API,
        ..UffdioApi::default()
    };
    ioctl(uffd, UFFDIO_API, &mut api)?;
    Ok(api)
}

/// Registers `len` bytes at host address `start` for missing-page faults; returns
/// the ioctls the range takes.
pub fn register_missing(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<u64> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_REGISTER, &mut reg)?;
    Ok(reg.ioctls)
}

/// Copies `len` bytes from `src` (this process) to `dst` (the registered process)
/// and wakes the threads waiting on them.
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, src: u64, len: u64) -> io::Result<()> {
    let mut copy = UffdioCopy {
        dst,
        src,
        len,
        mode: 0,
        copy: 0,
    };
    ioctl(uffd, UFFDIO_COPY, &mut copy)
}

/// Reads one message, or `None` when none is pending (a non-blocking descriptor).
pub fn read_msg(uffd: BorrowedFd<'_>) -> io::Result<Option<UffdMsg>> {
    let mut msg = UffdMsg::default();
    let size = std::mem::size_of::<UffdMsg>();
    // SAFETY: `msg` is a plain struct of exactly `size` bytes the kernel may fill.
    let n = unsafe { libc::read(uffd.as_raw_fd(), std::ptr::from_mut(&mut msg).cast(), size) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    if usize::try_from(n).ok() != Some(size) {
        return Err(io::Error::other(format!("short userfaultfd message: {n}")));
    }
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ioctl_numbers_are_the_kernel_s() {
        // From linux/userfaultfd.h on x86_64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
    }
}
