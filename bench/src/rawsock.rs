//! Sends Ethernet frames out of a host interface with an AF_PACKET socket: the way
//! the net benchmark feeds the guest's receive queue through the tap.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Errors sending raw frames.
#[derive(Debug, thiserror::Error)]
pub enum RawSocketError {
    /// The interface does not exist.
    #[error("no network interface {0}")]
    NoInterface(String),
    /// socket(AF_PACKET) failed (needs CAP_NET_RAW).
    #[error("cannot open an AF_PACKET socket (needs root)")]
    Open(#[source] std::io::Error),
    /// sendto failed.
    #[error("cannot send a {len}-byte frame out of {iface}")]
    Send {
        /// The interface.
        iface: String,
        /// Frame length.
        len: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The probe's frame type (IEEE local experimental EtherType).
pub const ETH_P_PROBE: u16 = 0x88b5;

/// A frame of `len` bytes (at least 14) to `dst` from `src` with EtherType `kind`.
pub fn frame(dst: [u8; 6], src: [u8; 6], kind: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&kind.to_be_bytes());
    f
}

/// An AF_PACKET socket sending out of one interface.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
    iface: String,
}

impl RawSender {
    /// Opens a sender on interface `iface`.
    pub fn open(iface: &str) -> Result<RawSender, RawSocketError> {
        let name = std::ffi::CString::new(iface)
            .map_err(|_| RawSocketError::NoInterface(iface.to_owned()))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let ifindex = i32::try_from(index)
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| RawSocketError::NoInterface(iface.to_owned()))?;
        let protocol = i32::from(u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be());
        // SAFETY: socket takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(RawSocketError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh socket fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(RawSender {
            fd,
            ifindex,
            iface: iface.to_owned(),
        })
    }

    /// Sends one frame (it leaves the interface, i.e. goes into the tap's reader).
    pub fn send(&self, frame: &[u8]) -> Result<(), RawSocketError> {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        for (dst, byte) in addr.sll_addr.iter_mut().zip(frame.iter().take(6)) {
            *dst = *byte;
        }
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
        // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a valid
        // sockaddr_ll of `len` bytes; sendto only reads both.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                len,
            )
        };
        if sent < 0 {
            return Err(RawSocketError::Send {
                iface: self.iface.clone(),
                len: frame.len(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frame_layout() {
        let f = frame([1; 6], [2; 6], ETH_P_PROBE, 64);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[..6], &[1; 6]);
        assert_eq!(&f[6..12], &[2; 6]);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
    }

    #[test]
    fn test_frame_is_at_least_a_header() {
        assert_eq!(frame([0; 6], [0; 6], 1, 3).len(), 14);
    }
}
