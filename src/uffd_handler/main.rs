//! `spry-uffd-handler`: a page-fault handler for the `Uffd` memory backend of
//! `PUT /snapshot/load`, serving guest pages from a snapshot's memory file. It
//! speaks Firecracker's protocol, so it serves Firecracker too, and Firecracker's
//! example handlers serve spry. A reference and a test helper: one connection, one
//! VM, 4 KiB pages, no balloon events.
//!
//! ```text
//! spry-uffd-handler SOCKET MEMORY_FILE [--exit-after-receive]
//! ```
//!
//! It listens on SOCKET (printing `listening on SOCKET` once it does), takes one
//! connection, receives the JSON region mappings and the userfaultfd, and copies
//! each faulting page from MEMORY_FILE (`UFFDIO_COPY`) until the VMM closes the
//! connection; then it prints `served N pages` and exits 0. A page faulting again
//! after the VMM dropped it (`MADV_DONTNEED`, as spry's rollback does) is served
//! again. `--exit-after-receive` exits 0.3 s after receiving, serving nothing (a
//! handler that dies once the guest runs, for tests).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

use spry::snapshot::uffd::sys;
use spry::snapshot::uffd::GuestRegionUffdMapping;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Errors of the handler.
#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error("usage: spry-uffd-handler SOCKET MEMORY_FILE [--exit-after-receive]")]
    Usage,
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    #[error("cannot receive the mappings and the userfaultfd")]
    Receive(#[source] std::io::Error),
    #[error("the VMM sent no userfaultfd with its mappings")]
    NoUffd,
    #[error("the VMM's mappings are not JSON region mappings")]
    Mappings(#[source] serde_json::Error),
    #[error("cannot map memory file {0}")]
    MemoryFile(PathBuf, #[source] std::io::Error),
    #[error("region at file offset {offset:#x} of {size:#x} bytes is past the memory file's end ({len:#x})")]
    PastEnd { offset: u64, size: u64, len: u64 },
    #[error("fault at {0:#x} is in no region the VMM sent")]
    Stray(u64),
    #[error("serving a page fault failed")]
    Serve(#[source] std::io::Error),
}

struct Args {
    socket: PathBuf,
    memory: PathBuf,
    exit_after_receive: bool,
}

fn parse_args() -> Result<Args, HandlerError> {
    let mut args = std::env::args_os().skip(1);
    let socket = args.next().ok_or(HandlerError::Usage)?.into();
    let memory = args.next().ok_or(HandlerError::Usage)?.into();
    let exit_after_receive = match args.next() {
        None => false,
        Some(flag) if flag == "--exit-after-receive" => true,
        Some(_) => return Err(HandlerError::Usage),
    };
    Ok(Args {
        socket,
        memory,
        exit_after_receive,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spry-uffd-handler: {}", spry::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), HandlerError> {
    let args = parse_args()?;
    // A socket file left by an earlier run would make bind fail; it may not exist.
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| HandlerError::Listen(args.socket.clone(), e))?;
    println!("listening on {}", args.socket.display());
    let _ = std::io::stdout().flush();
    let (stream, _) = listener
        .accept()
        .map_err(|e| HandlerError::Listen(args.socket.clone(), e))?;
    let (mappings, uffd) = receive(&stream)?;
    if args.exit_after_receive {
        println!("exiting without serving");
        let _ = std::io::stdout().flush();
        // Long enough for the VMM to finish its load and start the guest, which then
        // faults on pages nobody will serve.
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(uffd);
        return Ok(());
    }
    let memory = MemoryFile::map(&args.memory)?;
    for m in &mappings {
        if m.offset.saturating_add(m.size) > memory.len as u64 {
            return Err(HandlerError::PastEnd {
                offset: m.offset,
                size: m.size,
                len: memory.len as u64,
            });
        }
    }
    let served = serve(&stream, uffd.as_fd(), &mappings, &memory)?;
    println!("served {served} pages");
    Ok(())
}

/// The one message a VMM sends: JSON mappings with the userfaultfd attached.
fn receive(stream: &UnixStream) -> Result<(Vec<GuestRegionUffdMapping>, OwnedFd), HandlerError> {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| HandlerError::Receive(std::io::Error::from_raw_os_error(e.errno())))?;
    let uffd = OwnedFd::from(file.ok_or(HandlerError::NoUffd)?);
    let mappings = serde_json::from_slice(&buf[..n]).map_err(HandlerError::Mappings)?;
    Ok((mappings, uffd))
}

/// The memory file, mapped read-only.
struct MemoryFile {
    addr: *mut libc::c_void,
    len: usize,
}

impl MemoryFile {
    fn map(path: &PathBuf) -> Result<MemoryFile, HandlerError> {
        let err = |e| HandlerError::MemoryFile(path.clone(), e);
        let file = File::open(path).map_err(err)?;
        let len = usize::try_from(file.metadata().map_err(err)?.len())
            .map_err(|e| err(std::io::Error::other(e)))?;
        // SAFETY: a new read-only private mapping of a file this process opened; no
        // existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(MemoryFile { addr, len })
    }
}

impl Drop for MemoryFile {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping made in `map`, used by nothing
        // once this is dropped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Serves faults until the VMM closes the connection; returns the pages served.
fn serve(
    stream: &UnixStream,
    uffd: BorrowedFd<'_>,
    mappings: &[GuestRegionUffdMapping],
    memory: &MemoryFile,
) -> Result<u64, HandlerError> {
    let mut served = 0u64;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds two valid pollfds, the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(HandlerError::Serve(e));
        }
        if fds[1].revents != 0 {
            // The VMM is gone (or going): nothing more to serve.
            return Ok(served);
        }
        while let Some(msg) = sys::read_msg(uffd).map_err(HandlerError::Serve)? {
            if msg.event != sys::UFFD_EVENT_PAGEFAULT {
                continue;
            }
            if serve_fault(uffd, mappings, memory, msg.address)? {
                served += 1;
            }
        }
    }
}

/// Copies the page holding `address` in; false if another fault already did.
fn serve_fault(
    uffd: BorrowedFd<'_>,
    mappings: &[GuestRegionUffdMapping],
    memory: &MemoryFile,
    address: u64,
) -> Result<bool, HandlerError> {
    let region = mappings
        .iter()
        .find(|m| address >= m.base_host_virt_addr && address - m.base_host_virt_addr < m.size)
        .ok_or(HandlerError::Stray(address))?;
    let page_size = region.page_size.max(4096);
    let page = (address - region.base_host_virt_addr) / page_size * page_size;
    let src = memory.addr as u64 + region.offset + page;
    loop {
        match sys::copy(uffd, region.base_host_virt_addr + page, src, page_size) {
            Ok(()) => return Ok(true),
            // Another fault on the same page was served first.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(false),
            // The VMM's memory map changed under the copy (e.g. MADV_DONTNEED): retry.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(HandlerError::Serve(e)),
        }
    }
}
