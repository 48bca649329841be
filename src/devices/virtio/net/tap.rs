//! An existing tap device, opened with a virtio-net header so frames (and their
//! checksum/segmentation offload metadata) pass between the guest and the host
//! kernel without translation.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `struct virtio_net_hdr_mrg_rxbuf`, the header of every frame with
/// VIRTIO_F_VERSION_1.
pub const VNET_HDR_LEN: usize = 12;

/// Errors while opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No network interface of that name.
    #[error(
        "tap device {0:?} does not exist (create it first, e.g. `ip tuntap add {0} mode tap`)"
    )]
    Missing(String),
    /// The interface exists but is not a tap.
    #[error("{0:?} is not a tap device")]
    NotTap(String),
    /// The name does not fit an interface name.
    #[error("{0:?} is not a valid interface name (1 to 15 bytes, no '/' or whitespace)")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    /// An ioctl on the tap failed.
    #[error("{what} on tap {name:?} failed")]
    Ioctl {
        /// Which request.
        what: &'static str,
        /// The tap.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Validates an interface name the way the kernel will.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.to_owned()))
    }
}

/// Checks that `name` is an existing tap device, without creating one (opening a
/// missing name through /dev/net/tun would create it).
///
/// The kernel is asked by name in spry's own network namespace. sysfs may show
/// another one (a spry that joined a namespace with `setns`, as `nsenter` or a
/// container runtime does, still sees the sysfs mounted for the one it came from)
/// or none at all (inside spry-jailer's jail), so its `tun_flags` are read only
/// when its entry has the same index; otherwise whether it is a tap is left to
/// `TUNSETIFF`, which refuses any other kind of device.
pub fn check_exists(name: &str) -> Result<(), TapError> {
    check_name(name)?;
    let missing = || TapError::Missing(name.to_owned());
    let c_name = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: if_nametoindex reads the NUL-terminated name, which outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(missing());
    }
    let sys = std::path::Path::new("/sys/class/net").join(name);
    let sys_index = std::fs::read_to_string(sys.join("ifindex")).unwrap_or_default();
    if sys_index.trim() != index.to_string() {
        return Ok(());
    }
    let flags = std::fs::read_to_string(sys.join("tun_flags"))
        .map_err(|_| TapError::NotTap(name.to_owned()))?;
    let flags = i64::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & i64::from(libc::IFF_TAP) == 0 {
        return Err(TapError::NotTap(name.to_owned()));
    }
    Ok(())
}

/// An open tap queue, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// TUN_F_* offloads the host kernel accepts on this tap.
    pub supported_offloads: libc::c_uint,
}

impl Tap {
    /// Attaches to the existing tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_exists(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            // The flag constants are small positive values that fit a c_short.
            #[allow(clippy::cast_possible_truncation)]
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let tap = Tap {
            file,
            name: name.to_owned(),
            supported_offloads: 0,
        };
        // SAFETY: TUNSETIFF reads an `ifreq`, which `IfReq` lays out (name, flags,
        // padding to 40 bytes); `req` outlives the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The name exists (checked above) but is not a tap.
            return Err(TapError::NotTap(name.to_owned()));
        }
        tap.check("TUNSETIFF", ret)?;
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12);
        // SAFETY: TUNSETVNETHDRSZ reads one c_int from the pointer.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        tap.check("TUNSETVNETHDRSZ", ret)?;
        let mut tap = tap;
        let wanted = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        tap.supported_offloads = if tap.set_offloads(wanted).is_ok() {
            wanted
        } else if tap.set_offloads(libc::TUN_F_CSUM).is_ok() {
            libc::TUN_F_CSUM
        } else {
            0
        };
        tap.set_offloads(0)?;
        Ok(tap)
    }

    fn check(&self, what: &'static str, ret: libc::c_int) -> Result<(), TapError> {
        if ret < 0 {
            return Err(TapError::Ioctl {
                what,
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the host which offloads the guest can receive (TUNSETOFFLOAD).
    pub fn set_offloads(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        self.check("TUNSETOFFLOAD", ret)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_missing_tap_is_refused_without_creating_it() {
        let err = check_exists("sprynotap0").unwrap_err();
        assert!(matches!(err, TapError::Missing(_)), "{err}");
        assert!(!std::path::Path::new("/sys/class/net/sprynotap0").exists());
    }

    #[test]
    fn test_loopback_is_not_a_tap() {
        assert!(matches!(check_exists("lo"), Err(TapError::NotTap(_))));
    }

    /// A tap made in another network namespace, looked for by a thread that joined
    /// it with `setns`: sysfs still shows this namespace, the kernel the other.
    #[test]
    fn test_tap_of_a_joined_namespace_is_found_though_sysfs_shows_another() {
        use std::process::Command;
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return;
        }
        let ns = format!("spry-taptest-{}", std::process::id());
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["netns", "add", &ns]) {
            return;
        }
        let made = ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "tuntap",
            "add",
            "sprynstap0",
            "mode",
            "tap",
        ]) && ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "tuntap",
            "add",
            "sprynstun0",
            "mode",
            "tun",
        ]);
        let found = std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(format!("/var/run/netns/{ns}")).expect("open the netns");
                // SAFETY: setns on this scoped thread only, with a valid netns fd.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns");
                let tap = check_exists("sprynstap0").map(|()| Tap::open("sprynstap0").map(|_| ()));
                let tun = Tap::open("sprynstun0").map(|_| ());
                (tap, tun)
            })
            .join()
            .expect("netns thread")
        });
        ip(&["netns", "del", &ns]);
        assert!(made, "could not make the devices");
        let (tap, tun) = found;
        assert!(matches!(tap, Ok(Ok(()))), "{tap:?}");
        assert!(matches!(tun, Err(TapError::NotTap(_))), "{tun:?}");
    }

    #[test]
    fn test_bad_names_are_refused() {
        for name in ["", "a/b", "sixteen-chars-xx", "tap 0"] {
            assert!(
                matches!(check_name(name), Err(TapError::BadName(_))),
                "{name}"
            );
        }
    }
}
