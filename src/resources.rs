//! Validated, typed VM resources: what the builder builds, checked before anything is
//! created so a bad config starts nothing.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::num::NonZeroU8;
use std::path::PathBuf;

use linux_loader::cmdline::Cmdline;

use crate::arch::x86_64::layout::MAX_VIRTIO_DEVICES;
use crate::config::{
    BootSourceConfig, CopyOnWrite, DriveConfig, MachineConfig, NetConfig, OverlayType, VmConfig,
    VsockConfig,
};
use crate::devices::virtio::block::cow::{CowDisk, CowError};
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::tap;
use crate::host;
use crate::loader::{InitrdImage, KernelImage, LoaderError};

/// Most vCPUs a spry VM may have.
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory spry boots with.
pub const MIN_MEM_MIB: u32 = 16;
/// Command line used when `boot_args` is absent: console on COM1, reset through the
/// i8042, no PCI or modules, and the i8042 probing shortcuts microVMs use.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Errors in a config's meaning.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    /// `vcpu_count` out of range.
    #[error("machine-config.vcpu_count: {0} is out of range (1 to {MAX_VCPUS})")]
    VcpuCount(u8),
    /// SMT needs pairs of threads.
    #[error("machine-config.vcpu_count: {0} is odd, but smt needs 1 or an even number of vCPUs")]
    SmtOddVcpus(u8),
    /// Too little memory.
    #[error("machine-config.mem_size_mib: {0} MiB is below the {MIN_MEM_MIB} MiB minimum")]
    MemTooSmall(u32),
    /// More memory than the host has.
    #[error(
        "machine-config.mem_size_mib: {mib} MiB is more than this host's {host_mib} MiB of RAM"
    )]
    MemAboveHost {
        /// Requested.
        mib: u32,
        /// Host total.
        host_mib: u64,
    },
    /// A CPU template other than `None`.
    #[error("machine-config.cpu_template: {0:?} is not supported (only \"None\")")]
    CpuTemplate(String),
    /// A huge page setting spry does not implement.
    #[error("machine-config.huge_pages: {0:?} is not supported (\"None\" or \"Transparent\")")]
    HugePages(String),
    /// The kernel image is unusable.
    #[error("boot-source.kernel_image_path")]
    Kernel(#[source] LoaderError),
    /// The initrd cannot be opened.
    #[error("boot-source.initrd_path: cannot read {path}")]
    Initrd {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd is larger than the zero page can describe.
    #[error("boot-source.initrd_path: {path} is {size} bytes; initrds must be under 4 GiB")]
    InitrdTooLarge {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is too long for the kernel.
    #[error("boot-source.boot_args: {len} bytes, longer than the {max} bytes the kernel accepts")]
    BootArgsTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit (without the NUL).
        max: usize,
    },
    /// The command line has characters the kernel cannot take.
    #[error(
        "boot-source.boot_args: {0:?} is not a valid kernel command line (printable ASCII only)"
    )]
    BootArgsInvalid(String),
    /// A Firecracker section spry does not implement.
    #[error("{0}: not supported by spry")]
    UnsupportedSection(&'static str),
    /// An id with characters Firecracker does not allow.
    #[error("{field}: {id:?} is not a valid id (1 to 64 alphanumerics or '_')")]
    BadId {
        /// `drives[i].drive_id` or `network-interfaces[i].iface_id`.
        field: String,
        /// The id.
        id: String,
    },
    /// Two devices with one id.
    #[error("{field}: {id:?} is used twice")]
    DuplicateId {
        /// Which field.
        field: String,
        /// The id.
        id: String,
    },
    /// More than one root drive.
    #[error("drives[{index}].is_root_device: drive {id:?} is a second root device (drive {first:?} is the first)")]
    SecondRoot {
        /// Position in `drives`.
        index: usize,
        /// Its id.
        id: String,
        /// The other root's id.
        first: String,
    },
    /// A drive without a backing file.
    #[error("drives[{0}].path_on_host: missing (spry has no vhost-user block devices)")]
    DriveWithoutPath(usize),
    /// The backing file cannot be opened.
    #[error("drives[{index}].path_on_host: cannot open {path}")]
    DriveOpen {
        /// Position in `drives`.
        index: usize,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is not whole sectors.
    #[error("drives[{index}].path_on_host: {path} is {size} bytes, not a multiple of 512")]
    DriveSize {
        /// Position in `drives`.
        index: usize,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A Firecracker drive or interface option spry does not implement.
    #[error("{field}: {value} is not supported by spry")]
    UnsupportedOption {
        /// Which field.
        field: String,
        /// What was asked.
        value: String,
    },
    /// A copy-on-write drive that is also read-only.
    #[error(
        "drives[{0}].copy_on_write: the drive is read-only, so it has no writes to keep; \
         drop is_read_only or copy_on_write"
    )]
    CowReadOnly(usize),
    /// An overlay path missing for a `File` overlay, or given for a `Memory` one.
    #[error("drives[{index}].copy_on_write.overlay_path: {why}")]
    CowOverlayPath {
        /// Position in `drives`.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The copy-on-write layer cannot be set up (overlay file unusable).
    #[error("drives[{index}].copy_on_write")]
    Cow {
        /// Position in `drives`.
        index: usize,
        /// Why.
        #[source]
        source: CowError,
    },
    /// `partuuid` on a drive that is not the root.
    #[error("drives[{0}].partuuid: only the root device boots from a partition UUID")]
    PartuuidNotRoot(usize),
    /// The tap is missing or unusable.
    #[error("network-interfaces[{index}].host_dev_name")]
    Tap {
        /// Position in `network-interfaces`.
        index: usize,
        /// What is wrong.
        #[source]
        source: tap::TapError,
    },
    /// Two interfaces on one tap.
    #[error("network-interfaces[{index}].host_dev_name: tap {name:?} is used twice")]
    DuplicateTap {
        /// Position.
        index: usize,
        /// The tap.
        name: String,
    },
    /// A MAC that does not parse.
    #[error(
        "network-interfaces[{index}].guest_mac: {mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
    )]
    BadMac {
        /// Position.
        index: usize,
        /// The text.
        mac: String,
    },
    /// A multicast MAC cannot be a station address.
    #[error("network-interfaces[{index}].guest_mac: {mac:?} is a multicast address")]
    MulticastMac {
        /// Position.
        index: usize,
        /// The text.
        mac: String,
    },
    /// MTU out of range.
    #[error("network-interfaces[{index}].mtu: {mtu} is out of range (68 to 65535)")]
    BadMtu {
        /// Position.
        index: usize,
        /// The value.
        mtu: u16,
    },
    /// A context id the guest cannot have (0-2 are reserved, `u32::MAX` means any).
    #[error("vsock.guest_cid: {0} is not a guest context id (3 to 4294967294)")]
    VsockCid(u32),
    /// A socket path that cannot be bound.
    #[error("vsock.uds_path: {path}: {why}")]
    VsockPath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// More devices than the IOAPIC has pins for.
    #[error("{0} virtio devices, more than the {MAX_VIRTIO_DEVICES} spry can wire to interrupts")]
    TooManyDevices(usize),
}

/// A validated drive: the block device to build, and how the guest boots from it.
#[derive(Debug)]
pub struct Drive {
    /// The device: id, open backing file, capacity, read-only, cache type.
    pub block: BlockConfig,
    /// Holds the root file system.
    pub is_root: bool,
    /// Boot from this partition instead of the whole disk.
    pub partuuid: Option<String>,
    /// The copy-on-write layer over `block.file`, for `copy_on_write` drives.
    pub cow: Option<CowDisk>,
}

/// A validated network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    /// `iface_id`.
    pub id: String,
    /// The existing tap.
    pub tap: String,
    /// Guest MAC.
    pub mac: Option<[u8; 6]>,
    /// Advertised MTU.
    pub mtu: Option<u16>,
}

/// Firecracker's resource id rule.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn unsupported(field: String, value: impl std::fmt::Display) -> ResourcesError {
    ResourcesError::UnsupportedOption {
        field,
        value: value.to_string(),
    }
}

/// Validates `drives`: ids, one root at most, backing files that open and are whole
/// sectors. The root drive comes first, so the guest names it `/dev/vda`.
pub fn drives_from_config(configs: &[DriveConfig]) -> Result<Vec<Drive>, ResourcesError> {
    let mut seen = HashSet::new();
    let mut root: Option<&str> = None;
    let mut drives = Vec::with_capacity(configs.len());
    for (index, c) in configs.iter().enumerate() {
        let field = format!("drives[{index}].drive_id");
        if !valid_id(&c.drive_id) {
            return Err(ResourcesError::BadId {
                field,
                id: c.drive_id.clone(),
            });
        }
        if !seen.insert(c.drive_id.as_str()) {
            return Err(ResourcesError::DuplicateId {
                field,
                id: c.drive_id.clone(),
            });
        }
        if c.is_root_device {
            if let Some(first) = root {
                return Err(ResourcesError::SecondRoot {
                    index,
                    id: c.drive_id.clone(),
                    first: first.to_owned(),
                });
            }
            root = Some(&c.drive_id);
        } else if c.partuuid.is_some() {
            return Err(ResourcesError::PartuuidNotRoot(index));
        }
        match c.io_engine.as_deref() {
            None | Some("Sync") => {}
            Some(other) => {
                return Err(unsupported(
                    format!("drives[{index}].io_engine"),
                    format!("{other:?}"),
                ))
            }
        }
        if c.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(
                format!("drives[{index}].rate_limiter"),
                "a rate limiter",
            ));
        }
        if c.socket.is_some() {
            return Err(unsupported(format!("drives[{index}].socket"), "vhost-user"));
        }
        let path = c
            .path_on_host
            .clone()
            .ok_or(ResourcesError::DriveWithoutPath(index))?;
        let (file, capacity, cow) =
            open_drive(index, &path, c.is_read_only, c.copy_on_write.as_ref())?;
        drives.push(Drive {
            cow,
            block: BlockConfig {
                id: c.drive_id.clone(),
                path,
                file,
                capacity,
                read_only: c.is_read_only,
                cache: c.cache_type,
            },
            is_root: c.is_root_device,
            partuuid: c.partuuid.clone(),
        });
    }
    drives.sort_by_key(|d| !d.is_root);
    Ok(drives)
}

/// Opens the backing file of `drives[index]` (read-write unless `read_only`) and
/// returns it with its size in 512-byte sectors.
pub fn open_backing_file(
    index: usize,
    path: &std::path::Path,
    read_only: bool,
) -> Result<(File, u64), ResourcesError> {
    let open_err = |source| ResourcesError::DriveOpen {
        index,
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(open_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    if size % 512 != 0 {
        return Err(ResourcesError::DriveSize {
            index,
            path: path.to_owned(),
            size,
        });
    }
    Ok((file, size / 512))
}

/// Opens drive `drives[index]`: an ordinary one as [`open_backing_file`] does; a
/// copy-on-write one (`cow`) with its base image read-only and its overlay
/// created or reopened. Returns the file the device keeps (the base, for a
/// copy-on-write drive), its size in sectors and the copy-on-write layer.
pub fn open_drive(
    index: usize,
    path: &std::path::Path,
    read_only: bool,
    cow: Option<&CopyOnWrite>,
) -> Result<(File, u64, Option<CowDisk>), ResourcesError> {
    let Some(cow) = cow else {
        let (file, capacity) = open_backing_file(index, path, read_only)?;
        return Ok((file, capacity, None));
    };
    if read_only {
        return Err(ResourcesError::CowReadOnly(index));
    }
    let (file, capacity) = open_backing_file(index, path, true)?;
    let base = file
        .try_clone()
        .map_err(|source| ResourcesError::DriveOpen {
            index,
            path: path.to_owned(),
            source,
        })?;
    let size = capacity * 512;
    let layer = match (cow.overlay_type, &cow.overlay_path) {
        (OverlayType::Memory, None) => CowDisk::in_memory(base, path.to_owned(), size),
        (OverlayType::File, Some(overlay)) => {
            CowDisk::with_file(base, path.to_owned(), size, overlay)
                .map_err(|source| ResourcesError::Cow { index, source })?
        }
        (OverlayType::Memory, Some(_)) => {
            return Err(ResourcesError::CowOverlayPath {
                index,
                why: "a Memory overlay has no file; drop overlay_path or use overlay_type File",
            })
        }
        (OverlayType::File, None) => {
            return Err(ResourcesError::CowOverlayPath {
                index,
                why: "missing: a File overlay needs the path of its (new or empty) overlay file",
            })
        }
    };
    Ok((file, capacity, Some(layer)))
}

/// Validates `network-interfaces`: ids, existing taps used once, MACs and MTUs.
pub fn nets_from_config(configs: &[NetConfig]) -> Result<Vec<NetInterface>, ResourcesError> {
    let mut ids = HashSet::new();
    let mut taps = HashSet::new();
    let mut nets = Vec::with_capacity(configs.len());
    for (index, c) in configs.iter().enumerate() {
        let field = format!("network-interfaces[{index}].iface_id");
        if !valid_id(&c.iface_id) {
            return Err(ResourcesError::BadId {
                field,
                id: c.iface_id.clone(),
            });
        }
        if !ids.insert(c.iface_id.as_str()) {
            return Err(ResourcesError::DuplicateId {
                field,
                id: c.iface_id.clone(),
            });
        }
        for (name, limiter) in [
            ("rx_rate_limiter", &c.rx_rate_limiter),
            ("tx_rate_limiter", &c.tx_rate_limiter),
        ] {
            if limiter.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(unsupported(
                    format!("network-interfaces[{index}].{name}"),
                    "a rate limiter",
                ));
            }
        }
        tap::check_exists(&c.host_dev_name)
            .map_err(|source| ResourcesError::Tap { index, source })?;
        if !taps.insert(c.host_dev_name.as_str()) {
            return Err(ResourcesError::DuplicateTap {
                index,
                name: c.host_dev_name.clone(),
            });
        }
        let mac = match &c.guest_mac {
            None => None,
            Some(text) => {
                let mac = parse_mac(text).ok_or_else(|| ResourcesError::BadMac {
                    index,
                    mac: text.clone(),
                })?;
                if mac[0] & 1 != 0 {
                    return Err(ResourcesError::MulticastMac {
                        index,
                        mac: text.clone(),
                    });
                }
                Some(mac)
            }
        };
        if let Some(mtu) = c.mtu {
            if mtu < 68 {
                return Err(ResourcesError::BadMtu { index, mtu });
            }
        }
        nets.push(NetInterface {
            id: c.iface_id.clone(),
            tap: c.host_dev_name.clone(),
            mac,
            mtu: c.mtu,
        });
    }
    Ok(nets)
}

/// A validated vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockDevice {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The Unix socket host clients connect to.
    pub uds_path: PathBuf,
}

/// Longest Unix socket path (`sun_path` less its NUL).
const MAX_UDS_PATH: usize = 107;

/// Validates `vsock`: a guest CID, and a socket path that fits a Unix address and
/// does not exist yet (spry binds it at boot).
pub fn vsock_from_config(c: &VsockConfig) -> Result<VsockDevice, ResourcesError> {
    if c.guest_cid < 3 || c.guest_cid == u32::MAX {
        return Err(ResourcesError::VsockCid(c.guest_cid));
    }
    let bad = |why| ResourcesError::VsockPath {
        path: c.uds_path.clone(),
        why,
    };
    let len = c.uds_path.as_os_str().len();
    if len == 0 {
        return Err(bad("empty"));
    }
    if len > MAX_UDS_PATH {
        return Err(bad("longer than the 107 bytes a Unix socket address holds"));
    }
    if c.uds_path.symlink_metadata().is_ok() {
        return Err(bad("already exists"));
    }
    Ok(VsockDevice {
        guest_cid: u64::from(c.guest_cid),
        uds_path: c.uds_path.clone(),
    })
}

/// Validated machine shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// vCPU count, 1 to [`MAX_VCPUS`].
    pub vcpu_count: NonZeroU8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Two threads per core.
    pub smt: bool,
    /// Dirty page logging on the memory slots.
    pub track_dirty_pages: bool,
    /// Ask for transparent huge pages on guest RAM.
    pub transparent_huge_pages: bool,
    /// Guest RAM in a shared file in this tmpfs directory (a live fork links it).
    pub memory_file_dir: Option<PathBuf>,
}

/// Validated boot source.
#[derive(Debug)]
pub struct Boot {
    /// The kernel, opened and identified.
    pub kernel: KernelImage,
    /// The initrd, opened and measured.
    pub initrd: Option<InitrdImage>,
    /// The command line (devices add to it at build time).
    pub cmdline: Cmdline,
}

/// Everything the builder needs, validated.
#[derive(Debug)]
pub struct VmResources {
    /// vCPUs and memory.
    pub machine: Machine,
    /// Kernel, initrd, command line.
    pub boot: Boot,
    /// Block devices, root first.
    pub drives: Vec<Drive>,
    /// Network interfaces.
    pub nets: Vec<NetInterface>,
    /// The vsock device.
    pub vsock: Option<VsockDevice>,
    /// The config these resources came from (as `GET /vm/config` reports it).
    pub config: VmConfig,
}

impl Machine {
    /// Validates `machine-config`.
    pub fn from_config(c: &MachineConfig) -> Result<Machine, ResourcesError> {
        let vcpu_count = NonZeroU8::new(c.vcpu_count)
            .filter(|n| n.get() <= MAX_VCPUS)
            .ok_or(ResourcesError::VcpuCount(c.vcpu_count))?;
        if c.smt && c.vcpu_count > 1 && c.vcpu_count % 2 == 1 {
            return Err(ResourcesError::SmtOddVcpus(c.vcpu_count));
        }
        if c.mem_size_mib < MIN_MEM_MIB {
            return Err(ResourcesError::MemTooSmall(c.mem_size_mib));
        }
        let mem_size = u64::from(c.mem_size_mib) << 20;
        if let Some(host) = host::total_memory() {
            if mem_size > host {
                return Err(ResourcesError::MemAboveHost {
                    mib: c.mem_size_mib,
                    host_mib: host >> 20,
                });
            }
        }
        match c.cpu_template.as_deref() {
            None | Some("None") => {}
            Some(other) => return Err(ResourcesError::CpuTemplate(other.to_owned())),
        }
        let transparent_huge_pages = match c.huge_pages.as_deref() {
            None | Some("None") => false,
            Some("Transparent") => true,
            Some(other) => return Err(ResourcesError::HugePages(other.to_owned())),
        };
        Ok(Machine {
            vcpu_count,
            mem_size,
            smt: c.smt,
            track_dirty_pages: c.track_dirty_pages,
            transparent_huge_pages,
            memory_file_dir: c.memory_file_dir.clone(),
        })
    }
}

/// Builds the kernel command line from `boot_args` (or the default), refusing what
/// the kernel would truncate or reject.
pub fn build_cmdline(boot_args: Option<&str>, capacity: usize) -> Result<Cmdline, ResourcesError> {
    let args = boot_args.unwrap_or(DEFAULT_BOOT_ARGS).trim();
    let max = capacity.saturating_sub(1);
    if args.len() > max {
        return Err(ResourcesError::BootArgsTooLong {
            len: args.len(),
            max,
        });
    }
    if !args.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ResourcesError::BootArgsInvalid(args.to_owned()));
    }
    if args.is_empty() {
        return Cmdline::new(capacity).map_err(|_| ResourcesError::BootArgsInvalid(String::new()));
    }
    Cmdline::try_from(args, capacity).map_err(|_| ResourcesError::BootArgsInvalid(args.to_owned()))
}

impl Boot {
    /// Validates `boot-source`: opens and identifies the images.
    pub fn from_config(c: &BootSourceConfig) -> Result<Boot, ResourcesError> {
        let kernel = KernelImage::inspect(&c.kernel_image_path).map_err(ResourcesError::Kernel)?;
        let initrd = c
            .initrd_path
            .as_ref()
            .map(|path| open_initrd(path))
            .transpose()?;
        let cmdline = build_cmdline(c.boot_args.as_deref(), kernel.cmdline_capacity)?;
        Ok(Boot {
            kernel,
            initrd,
            cmdline,
        })
    }
}

fn open_initrd(path: &std::path::Path) -> Result<InitrdImage, ResourcesError> {
    let err = |source| ResourcesError::Initrd {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    if size >= 1 << 32 {
        return Err(ResourcesError::InitrdTooLarge {
            path: path.to_owned(),
            size,
        });
    }
    Ok(InitrdImage {
        path: path.to_owned(),
        file,
        size,
    })
}

impl TryFrom<VmConfig> for VmResources {
    type Error = ResourcesError;

    fn try_from(config: VmConfig) -> Result<VmResources, ResourcesError> {
        if let Some(section) = config.unsupported_sections().first() {
            return Err(ResourcesError::UnsupportedSection(section));
        }
        let machine = Machine::from_config(&config.machine_config)?;
        let boot = Boot::from_config(&config.boot_source)?;
        let drives = drives_from_config(&config.drives)?;
        let nets = nets_from_config(&config.network_interfaces)?;
        let vsock = config.vsock.as_ref().map(vsock_from_config).transpose()?;
        let devices = drives.len() + nets.len() + usize::from(vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ResourcesError::TooManyDevices(devices));
        }
        Ok(VmResources {
            machine,
            boot,
            drives,
            nets,
            vsock,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_line;
    use std::io::Write;

    fn machine(vcpu_count: u8, mem_size_mib: u32) -> MachineConfig {
        MachineConfig {
            vcpu_count,
            mem_size_mib,
            ..MachineConfig::default()
        }
    }

    /// A minimal x86_64 ELF header: enough to be recognised as a kernel.
    fn fake_elf() -> vmm_sys_util::tempfile::TempFile {
        let mut ehdr = vec![0u8; 64];
        ehdr[..4].copy_from_slice(b"\x7fELF");
        ehdr[4] = 2;
        ehdr[5] = 1;
        ehdr[18] = 62;
        ehdr[54] = 56;
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(&ehdr).unwrap();
        f
    }

    fn config_with_kernel(kernel: &std::path::Path) -> VmConfig {
        VmConfig {
            boot_source: BootSourceConfig {
                kernel_image_path: kernel.to_owned(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn test_zero_vcpus_names_field_and_value() {
        let e = Machine::from_config(&machine(0, 128)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "machine-config.vcpu_count: 0 is out of range (1 to 32)"
        );
    }

    #[test]
    fn test_33_vcpus_is_out_of_range() {
        assert!(matches!(
            Machine::from_config(&machine(33, 128)),
            Err(ResourcesError::VcpuCount(33))
        ));
    }

    #[test]
    fn test_32_vcpus_is_fine() {
        assert_eq!(
            Machine::from_config(&machine(32, 128))
                .unwrap()
                .vcpu_count
                .get(),
            32
        );
    }

    #[test]
    fn test_memory_below_16_mib_is_refused() {
        let e = Machine::from_config(&machine(1, 15)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "machine-config.mem_size_mib: 15 MiB is below the 16 MiB minimum"
        );
    }

    #[test]
    fn test_memory_above_host_is_refused() {
        let e = Machine::from_config(&machine(1, u32::MAX)).unwrap_err();
        assert!(
            matches!(e, ResourcesError::MemAboveHost { mib: u32::MAX, .. }),
            "{e}"
        );
        assert!(e
            .to_string()
            .starts_with("machine-config.mem_size_mib: 4294967295 MiB is more than"));
    }

    #[test]
    fn test_smt_with_odd_vcpus_is_refused() {
        let mut c = machine(3, 128);
        c.smt = true;
        assert!(matches!(
            Machine::from_config(&c),
            Err(ResourcesError::SmtOddVcpus(3))
        ));
    }

    #[test]
    fn test_cpu_template_other_than_none_is_refused() {
        let mut c = machine(1, 128);
        c.cpu_template = Some("T2".into());
        assert!(matches!(
            Machine::from_config(&c),
            Err(ResourcesError::CpuTemplate(_))
        ));
    }

    #[test]
    fn test_missing_kernel_names_field_and_path() {
        let config = config_with_kernel(std::path::Path::new("/nonexistent/vmlinux"));
        let e = VmResources::try_from(config).unwrap_err();
        assert_eq!(
            error_line(&e),
            "boot-source.kernel_image_path: cannot read /nonexistent/vmlinux: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn test_file_that_is_not_a_kernel_is_refused() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(b"#!/bin/sh\necho hi\n").unwrap();
        let e = VmResources::try_from(config_with_kernel(f.as_path())).unwrap_err();
        assert!(
            error_line(&e).contains("is not a kernel"),
            "{}",
            error_line(&e)
        );
    }

    #[test]
    fn test_missing_initrd_names_field_and_path() {
        let kernel = fake_elf();
        let mut config = config_with_kernel(kernel.as_path());
        config.boot_source.initrd_path = Some("/nonexistent/initrd".into());
        let e = VmResources::try_from(config).unwrap_err();
        assert!(
            error_line(&e).starts_with(
                "boot-source.initrd_path: cannot read /nonexistent/initrd: No such file"
            ),
            "{}",
            error_line(&e)
        );
    }

    #[test]
    fn test_boot_args_longer_than_kernel_limit_are_refused() {
        let e = build_cmdline(Some(&"a".repeat(2048)), 2048).unwrap_err();
        assert_eq!(
            e.to_string(),
            "boot-source.boot_args: 2048 bytes, longer than the 2047 bytes the kernel accepts"
        );
    }

    #[test]
    fn test_boot_args_at_kernel_limit_are_accepted() {
        assert!(build_cmdline(Some(&"a".repeat(2047)), 2048).is_ok());
    }

    #[test]
    fn test_boot_args_with_control_characters_are_refused() {
        assert!(matches!(
            build_cmdline(Some("console=ttyS0\nfoo"), 2048),
            Err(ResourcesError::BootArgsInvalid(_))
        ));
    }

    #[test]
    fn test_default_boot_args_when_absent() {
        let cmdline = build_cmdline(None, 2048).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            DEFAULT_BOOT_ARGS
        );
    }

    fn drive(id: &str, path: &std::path::Path, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: Some(path.to_owned()),
            is_root_device: root,
            ..Default::default()
        }
    }

    fn disk(size: usize) -> vmm_sys_util::tempfile::TempFile {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        f.as_file().write_all(&vec![0u8; size]).unwrap();
        f
    }

    fn cow_drive(path: &std::path::Path, cow: CopyOnWrite) -> DriveConfig {
        DriveConfig {
            copy_on_write: Some(cow),
            ..drive("rootfs", path, true)
        }
    }

    #[test]
    fn test_copy_on_write_drive_opens_its_base_read_only() {
        let base = disk(8192);
        let memory = CopyOnWrite {
            overlay_type: OverlayType::Memory,
            overlay_path: None,
        };

        let drives = drives_from_config(&[cow_drive(base.as_path(), memory)]).unwrap();

        let cow = drives[0].cow.as_ref().unwrap();
        assert_eq!((cow.size(), drives[0].block.capacity), (8192, 16));
        assert!(!drives[0].block.read_only);
        let mut file = &drives[0].block.file;
        assert!(file.write(&[1]).is_err(), "the base is open for writing");
    }

    #[test]
    fn test_copy_on_write_on_a_read_only_drive_is_refused() {
        let base = disk(4096);
        let mut config = cow_drive(
            base.as_path(),
            CopyOnWrite {
                overlay_type: OverlayType::Memory,
                overlay_path: None,
            },
        );
        config.is_read_only = true;

        let err = drives_from_config(&[config]).unwrap_err();

        assert!(matches!(err, ResourcesError::CowReadOnly(0)), "{err}");
    }

    #[test]
    fn test_file_overlay_without_a_path_is_refused() {
        let base = disk(4096);
        let file = CopyOnWrite {
            overlay_type: OverlayType::File,
            overlay_path: None,
        };

        let err = drives_from_config(&[cow_drive(base.as_path(), file)]).unwrap_err();

        assert_eq!(
            err.to_string(),
            "drives[0].copy_on_write.overlay_path: missing: a File overlay needs the path of \
             its (new or empty) overlay file"
        );
    }

    #[test]
    fn test_root_drive_comes_first_with_sector_capacity() {
        let (a, b) = (disk(4096), disk(1024));
        let drives = drives_from_config(&[
            drive("data", b.as_path(), false),
            drive("rootfs", a.as_path(), true),
        ])
        .unwrap();
        assert_eq!(drives[0].block.id, "rootfs");
        assert_eq!(drives[0].block.capacity, 8);
        assert_eq!(drives[1].block.capacity, 2);
    }

    #[test]
    fn test_drive_size_not_whole_sectors_is_refused() {
        let f = disk(1000);
        let e = drives_from_config(&[drive("rootfs", f.as_path(), true)]).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is 1000 bytes, not a multiple of 512"),
            "{e}"
        );
    }

    #[test]
    fn test_missing_backing_file_is_named() {
        let e = drives_from_config(&[drive(
            "rootfs",
            std::path::Path::new("/nonexistent/disk"),
            true,
        )])
        .unwrap_err();
        assert_eq!(
            error_line(&e),
            "drives[0].path_on_host: cannot open /nonexistent/disk: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn test_duplicate_drive_id_is_refused() {
        let (a, b) = (disk(512), disk(512));
        let e = drives_from_config(&[
            drive("d", a.as_path(), false),
            drive("d", b.as_path(), false),
        ])
        .unwrap_err();
        assert_eq!(e.to_string(), "drives[1].drive_id: \"d\" is used twice");
    }

    #[test]
    fn test_two_root_devices_are_refused() {
        let (a, b) = (disk(512), disk(512));
        let e = drives_from_config(&[drive("a", a.as_path(), true), drive("b", b.as_path(), true)])
            .unwrap_err();
        assert!(
            matches!(e, ResourcesError::SecondRoot { index: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn test_drive_id_with_bad_characters_is_refused() {
        let a = disk(512);
        let e = drives_from_config(&[drive("root-fs", a.as_path(), true)]).unwrap_err();
        assert!(matches!(e, ResourcesError::BadId { .. }), "{e}");
    }

    #[test]
    fn test_async_io_engine_is_refused() {
        let a = disk(512);
        let mut d = drive("rootfs", a.as_path(), true);
        d.io_engine = Some("Async".into());
        assert!(matches!(
            drives_from_config(&[d]),
            Err(ResourcesError::UnsupportedOption { .. })
        ));
    }

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn test_missing_tap_is_named() {
        let e = nets_from_config(&[iface("eth0", "sprynotap9", None)]).unwrap_err();
        assert!(
            error_line(&e).starts_with(
                "network-interfaces[0].host_dev_name: tap device \"sprynotap9\" does not exist"
            ),
            "{}",
            error_line(&e)
        );
    }

    #[test]
    fn test_mac_parsing() {
        assert_eq!(
            parse_mac("AA:fc:00:00:00:01"),
            Some([0xaa, 0xfc, 0, 0, 0, 1])
        );
        assert_eq!(parse_mac("aa:fc:00:00:00"), None);
        assert_eq!(parse_mac("aa:fc:00:00:00:01:02"), None);
        assert_eq!(parse_mac("aa-fc-00-00-00-01"), None);
        assert_eq!(parse_mac("zz:fc:00:00:00:01"), None);
    }

    #[test]
    fn test_valid_ids() {
        assert!(valid_id("rootfs_1"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id("é"));
    }

    #[test]
    fn test_unsupported_section_is_named() {
        let kernel = fake_elf();
        let mut config = config_with_kernel(kernel.as_path());
        config.balloon = Some(serde_json::json!({"amount_mib": 10}));
        let e = VmResources::try_from(config).unwrap_err();
        assert_eq!(e.to_string(), "balloon: not supported by spry");
    }

    #[test]
    fn test_valid_config_resolves() {
        let kernel = fake_elf();
        let res = VmResources::try_from(config_with_kernel(kernel.as_path())).unwrap();
        assert_eq!(res.machine.vcpu_count.get(), 1);
        assert_eq!(res.machine.mem_size, 128 << 20);
        assert_eq!(res.boot.kernel.kind, crate::loader::KernelKind::Other);
    }

    fn vsock(guest_cid: u32, uds_path: &str) -> VsockConfig {
        VsockConfig {
            vsock_id: None,
            guest_cid,
            uds_path: PathBuf::from(uds_path),
        }
    }

    #[test]
    fn test_vsock_cid_below_3_is_refused() {
        let e = vsock_from_config(&vsock(2, "/tmp/spry-no-such.sock")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vsock.guest_cid: 2 is not a guest context id (3 to 4294967294)"
        );
    }

    #[test]
    fn test_vsock_existing_path_is_refused() {
        let e = vsock_from_config(&vsock(3, "/")).unwrap_err();
        assert_eq!(e.to_string(), "vsock.uds_path: /: already exists");
    }

    #[test]
    fn test_vsock_over_long_path_is_refused() {
        let long = format!("/tmp/{}", "x".repeat(120));
        let e = vsock_from_config(&vsock(3, &long)).unwrap_err();
        assert!(e.to_string().contains("longer than the 107 bytes"), "{e}");
    }

    #[test]
    fn test_vsock_is_validated() {
        let v = vsock_from_config(&vsock(42, "/tmp/spry-no-such.sock")).unwrap();
        assert_eq!(v.guest_cid, 42);
    }
}
