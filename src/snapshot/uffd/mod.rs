//! The `Uffd` memory backend of a snapshot load, as Firecracker has it: guest RAM is
//! anonymous memory (nothing read from the memory file) registered with a
//! userfaultfd for missing pages, and an external page-fault handler, listening on
//! the Unix socket `backend_path`, fills each page the first time it is touched
//! (`UFFDIO_COPY`). spry connects once and sends one message: the JSON list of
//! [`GuestRegionUffdMapping`]s with the userfaultfd as `SCM_RIGHTS` data.
//!
//! spry keeps its own copy of the userfaultfd, as Firecracker does: were the last
//! copy closed, the kernel would drop the registration and the guest would read
//! zeros where its memory was. A handler that dies would then leave faults waiting
//! forever; so spry watches the handler process (its pid from `SO_PEERCRED`, a
//! pidfd) and stops the VM with [`ExitReason::PageFaultHandlerGone`] when it ends.

pub mod sys;

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::memory::{MemoryState, PAGE_SIZE};
use crate::exit::{ExitEvent, ExitReason};
use crate::vstate::memory::{self, GuestMemory, MemoryError};

/// Errors while setting up `Uffd` guest memory.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The host refuses this process a userfaultfd that sees KVM's faults.
    #[error(
        "this host refuses spry a userfaultfd that handles kernel faults: allow it with \
         `sysctl vm.unprivileged_userfaultfd=1`, run spry with CAP_SYS_PTRACE, or give it \
         read-write access to /dev/userfaultfd"
    )]
    Permission(#[source] io::Error),
    /// Creating the userfaultfd failed otherwise.
    #[error("cannot create a userfaultfd")]
    Create(#[source] io::Error),
    /// The `UFFDIO_API` handshake failed.
    #[error("userfaultfd API handshake (UFFDIO_API) failed")]
    Api(#[source] io::Error),
    /// Anonymous guest memory could not be mapped.
    #[error("cannot map guest memory for the Uffd backend")]
    Memory(#[source] MemoryError),
    /// Registering a region failed.
    #[error("cannot register {size_mib} MiB of guest memory at host address {addr:#x} with the userfaultfd")]
    Register {
        /// Host address.
        addr: u64,
        /// Size.
        size_mib: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The kernel cannot fill the registered range with `UFFDIO_COPY`.
    #[error("the registered guest memory does not take UFFDIO_COPY (ioctls {0:#x})")]
    NoCopy(u64),
    /// The handler's socket is missing or refuses connections.
    #[error("cannot connect to the page-fault handler socket {path}")]
    Connect {
        /// `backend_path`.
        path: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// Sending the mappings and the userfaultfd failed (the handler closed early).
    #[error(
        "cannot send the memory mappings and the userfaultfd to the page-fault handler on {path}"
    )]
    Send {
        /// `backend_path`.
        path: PathBuf,
        /// What sendmsg said.
        #[source]
        source: io::Error,
    },
    /// The handler closed the connection without reading the message.
    #[error("the page-fault handler on {0} closed the connection without taking the userfaultfd")]
    HandlerClosed(PathBuf),
}

/// One region of guest memory as a page-fault handler sees it (Firecracker's
/// `GuestRegionUffdMapping`, field for field): its contents are `size` bytes of the
/// memory file from `offset`, to be copied to `base_host_virt_addr` in spry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Where the region starts in spry's address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Where its bytes start in the memory file.
    pub offset: u64,
    /// The page size of the mapping, in bytes.
    pub page_size: u64,
    /// The same, in bytes despite its name: Firecracker sends both and keeps this one
    /// for handlers written before `page_size` existed.
    pub page_size_kib: u64,
}

/// The live parts of a `Uffd` backend: the userfaultfd, the connection to the
/// handler and a pidfd of its process. Dropping it closes spry's copies.
#[derive(Debug)]
pub struct UffdBackend {
    path: PathBuf,
    // Spry's copy keeps the registration alive even if the handler closes its own.
    _uffd: OwnedFd,
    // Kept open: handlers written for Firecracker treat its end as spry's exit.
    _socket: UnixStream,
    handler: Option<OwnedFd>,
}

impl UffdBackend {
    /// The handler's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An event-loop subscriber that stops the VM when the handler process ends, or
    /// `None` if the process could not be watched (then a dead handler freezes the
    /// guest, as it does under Firecracker).
    pub fn watcher(&mut self, exit: Arc<ExitEvent>) -> Option<HandlerWatch> {
        let pidfd = self.handler.take()?;
        Some(HandlerWatch {
            pidfd,
            path: self.path.clone(),
            exit,
        })
    }
}

/// Anonymous guest memory in the layout `state` describes, registered with a new
/// userfaultfd that is handed, with the regions' mappings, to the handler listening
/// on `socket`. Nothing touches guest memory before the handler has it.
pub fn restore(
    socket: &Path,
    state: &MemoryState,
) -> Result<(GuestMemory, UffdBackend), UffdError> {
    let mem = memory::create_guest_memory(state.size()).map_err(UffdError::Memory)?;
    let uffd = sys::create().map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => UffdError::Permission(e),
        _ => UffdError::Create(e),
    })?;
    sys::handshake(uffd.as_fd()).map_err(UffdError::Api)?;
    let mappings = register(&mem, state, &uffd)?;
    let stream = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    // The list of a few small structs always serializes.
    let json = serde_json::to_vec(&mappings).unwrap_or_default();
    send(&stream, &json, &uffd).map_err(|source| UffdError::Send {
        path: socket.to_owned(),
        source,
    })?;
    if hung_up(&stream) {
        return Err(UffdError::HandlerClosed(socket.to_owned()));
    }
    let handler = watch_peer(&stream);
    log::info!(
        "guest memory ({} MiB in {} regions) handed to the page-fault handler on {}",
        state.size() >> 20,
        mappings.len(),
        socket.display()
    );
    Ok((
        mem,
        UffdBackend {
            path: socket.to_owned(),
            _uffd: uffd,
            _socket: stream,
            handler,
        },
    ))
}

/// Registers every region of `mem` for missing-page faults; returns their mappings.
fn register(
    mem: &GuestMemory,
    state: &MemoryState,
    uffd: &OwnedFd,
) -> Result<Vec<GuestRegionUffdMapping>, UffdError> {
    mem.iter()
        .zip(&state.regions)
        .map(|(region, saved)| {
            let addr = region.as_ptr() as u64;
            let ioctls =
                sys::register_missing(uffd.as_fd(), addr, region.len()).map_err(|source| {
                    UffdError::Register {
                        addr,
                        size_mib: region.len() >> 20,
                        source,
                    }
                })?;
            if ioctls & sys::UFFDIO_COPY_BIT == 0 {
                return Err(UffdError::NoCopy(ioctls));
            }
            Ok(mappings_for(addr, region.len(), saved.file_offset))
        })
        .collect()
}

fn mappings_for(addr: u64, size: u64, offset: u64) -> GuestRegionUffdMapping {
    GuestRegionUffdMapping {
        base_host_virt_addr: addr,
        size,
        offset,
        page_size: PAGE_SIZE,
        page_size_kib: PAGE_SIZE,
    }
}

/// Sends `json` with `uffd` attached, all of it or an error.
fn send(stream: &UnixStream, json: &[u8], uffd: &OwnedFd) -> io::Result<()> {
    let sent = stream
        .send_with_fd(json, uffd.as_raw_fd())
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != json.len() {
        return Err(io::Error::other(format!(
            "sent {sent} of {} bytes",
            json.len()
        )));
    }
    Ok(())
}

/// Whether the peer closed its end with the message still unread (the kernel then
/// marks this end ECONNRESET, and the descriptor in flight is gone). A handler that
/// read the message and closed the socket keeps serving with the descriptor: that
/// is not an error.
fn hung_up(stream: &UnixStream) -> bool {
    matches!(stream.take_error(), Ok(Some(e)) if e.raw_os_error() == Some(libc::ECONNRESET))
}

/// A pidfd of the process at the other end of `stream`, if the kernel tells.
fn watch_peer(stream: &UnixStream) -> Option<OwnedFd> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).ok()?;
    // SAFETY: SO_PEERCRED writes one `ucred` into `cred`, whose size `len` holds.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    if ret != 0 || cred.pid <= 0 {
        log::warn!("cannot tell the page-fault handler's pid: it is not watched");
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return None;
    };
    if fd < 0 {
        log::warn!(
            "cannot watch the page-fault handler (pid {}): {}",
            cred.pid,
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Stops the VM when the page-fault handler's process ends: no page the guest has
/// not touched yet could ever be served.
#[derive(Debug)]
pub struct HandlerWatch {
    pidfd: OwnedFd,
    path: PathBuf,
    exit: Arc<ExitEvent>,
}

impl MutEventSubscriber for HandlerWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.pidfd, EventSet::IN)) {
            log::error!("cannot watch the page-fault handler: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        // Readable once, for good: the process has ended.
        let _ = ops.remove(Events::new(&self.pidfd, EventSet::IN));
        self.exit.request(ExitReason::PageFaultHandlerGone {
            socket: self.path.display().to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mapping_has_firecracker_s_field_names_with_both_page_sizes_in_bytes() {
        let mapping = mappings_for(0x7f00_0000_0000, 128 << 20, 0);

        let json = serde_json::to_value(mapping).unwrap();

        assert_eq!(
            json,
            serde_json::json!({
                "base_host_virt_addr": 0x7f00_0000_0000u64,
                "size": 134_217_728u64,
                "offset": 0,
                "page_size": 4096,
                "page_size_kib": 4096,
            })
        );
    }

    fn some_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn test_peer_closing_with_the_message_unread_is_a_hang_up() {
        let (spry_end, handler_end) = UnixStream::pair().unwrap();
        send(&spry_end, b"[]", &some_fd()).unwrap();

        drop(handler_end);

        assert!(hung_up(&spry_end));
    }

    #[test]
    fn test_peer_closing_after_reading_the_message_is_not_a_hang_up() {
        let (spry_end, handler_end) = UnixStream::pair().unwrap();
        send(&spry_end, b"[]", &some_fd()).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = handler_end.recv_with_fd(&mut buf).unwrap();

        drop(handler_end);

        assert_eq!((n, fd.is_some()), (2, true));
        assert!(!hung_up(&spry_end));
    }

    #[test]
    fn test_missing_socket_is_named_in_the_error() {
        let state = MemoryState {
            regions: vec![super::super::memory::RegionState {
                guest_addr: 0,
                size: 2 << 20,
                file_offset: 0,
            }],
        };

        let err = match restore(Path::new("/nonexistent/uffd.sock"), &state) {
            Err(e) => crate::error_line(&e),
            Ok(_) => String::from("restored"),
        };

        // Without userfaultfd permission the error says so instead.
        assert!(
            err.starts_with(
                "cannot connect to the page-fault handler socket /nonexistent/uffd.sock: "
            ) || err.contains("refuses spry a userfaultfd"),
            "{err}"
        );
    }

    #[test]
    fn test_registered_memory_is_filled_by_a_handler_thread() {
        let mem = memory::create_guest_memory(2 << 20).unwrap();
        let Ok(uffd) = sys::create() else {
            eprintln!("no userfaultfd on this host; skipped");
            return;
        };
        sys::handshake(uffd.as_fd()).unwrap();
        let state = MemoryState::of(&mem);
        let mappings = register(&mem, &state, &uffd).unwrap();
        let page = vec![0x5au8; 4096];
        let src = page.as_ptr() as u64;
        let handler = std::thread::spawn(move || loop {
            if let Some(msg) = sys::read_msg(uffd.as_fd()).unwrap() {
                assert_eq!(msg.event, sys::UFFD_EVENT_PAGEFAULT);
                let dst = msg.address & !(PAGE_SIZE - 1);
                sys::copy(uffd.as_fd(), dst, src, PAGE_SIZE).unwrap();
                return dst;
            }
            std::thread::yield_now();
        });

        let byte: u8 = vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x3008)).unwrap();

        assert_eq!(byte, 0x5a);
        assert_eq!(
            handler.join().unwrap(),
            mappings[0].base_host_virt_addr + 0x3000
        );
    }
}
