//! QEMU's side of the probe's device benchmarks: the flags that give the probe
//! guest QEMU's virtio-blk and virtio-net over modern virtio-mmio, backed by the same
//! file and the same kind of tap spry gets.

use std::path::Path;

/// How QEMU's virtio-net reaches the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetBackend {
    /// QEMU's own tap backend: its main loop reads and writes the tap (`vhost=off`).
    Tap,
    /// vhost-net: a kernel worker moves the frames (`vhost=on`; needs /dev/vhost-net).
    Vhost,
}

impl NetBackend {
    /// The system name in tables.
    pub fn system_name(self) -> &'static str {
        match self {
            NetBackend::Tap => "QEMU",
            NetBackend::Vhost => "QEMU vhost",
        }
    }
}

/// Flags every device run adds to QEMU's command line.
///
/// microvm's virtio-mmio transports are legacy (version 1) unless told otherwise; the
/// probe drives only the modern interface (version 2), as spry offers it. Thread
/// names (`debug-threads=on`) let the harness tell QEMU's vCPU threads (`CPU n/KVM`)
/// from its I/O threads; they change nothing else.
pub fn common_args() -> Vec<String> {
    [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-name",
        "spry-bench,debug-threads=on",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// QEMU spells a comma inside an option value as two.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// A virtio-blk disk on `disk` (raw), read-only or not.
///
/// `cache=writeback` is spry's `Writeback`: buffered I/O through the host page cache
/// (spry's preadv/pwritev, QEMU's thread-pool preadv/pwritev), a volatile write
/// cache offered to the guest (VIRTIO_BLK_F_FLUSH) and a flush answered with
/// fdatasync; both flush once more when they exit. `cache=none` would bypass the
/// page cache (O_DIRECT), which spry never does.
///
/// The device sits on the first transport (IRQ 5, as spry's first device). QEMU's
/// default, the last free transport, has IRQ 12, which the `-device i8042` the
/// probe needs also drives (its mouse line).
pub fn block_args(disk: &Path, read_only: bool) -> Vec<String> {
    let ro = if read_only { ",readonly=on" } else { "" };
    vec![
        "-drive".into(),
        format!(
            "id=d0,file={},format=raw,if=none,cache=writeback{ro}",
            escape(&disk.to_string_lossy())
        ),
        "-device".into(),
        "virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0".into(),
    ]
}

/// A virtio-net device on the existing tap `tap` with MAC `mac` (first transport,
/// as for the disk).
pub fn net_args(tap: &str, mac: &str, backend: NetBackend) -> Vec<String> {
    let vhost = match backend {
        NetBackend::Tap => "off",
        NetBackend::Vhost => "on",
    };
    vec![
        "-netdev".into(),
        format!(
            "tap,id=n0,ifname={},script=no,downscript=no,vhost={vhost}",
            escape(tap)
        ),
        "-device".into(),
        format!("virtio-net-device,netdev=n0,mac={mac},bus=virtio-mmio-bus.0"),
    ]
}

/// Why vhost-net cannot run here, if it cannot.
pub fn vhost_unavailable() -> Option<String> {
    let dev = Path::new("/dev/vhost-net");
    (!dev.exists()).then(|| {
        "/dev/vhost-net does not exist (a kernel without CONFIG_VHOST_NET, or the vhost_net \
         module is not loaded)"
            .to_owned()
    })
}

/// Whether a thread of spry or QEMU (by its name) runs a vCPU: spry names them
/// `spry-vcpu<n>`, QEMU (with `debug-threads=on`) `CPU <n>/KVM`.
pub fn is_vcpu_thread(name: &str) -> bool {
    name.starts_with("spry-vcpu") || (name.starts_with("CPU ") && name.ends_with("/KVM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn test_transports_are_modern_and_threads_named() {
        let args = common_args();
        assert_eq!(
            value_after(&args, "-global"),
            ["virtio-mmio.force-legacy=false"]
        );
        assert_eq!(value_after(&args, "-name"), ["spry-bench,debug-threads=on"]);
    }

    #[test]
    fn test_disk_is_the_same_file_with_writeback_caching_on_the_first_transport() {
        let args = block_args(Path::new("/tmp/spry-bench-1/block/disk.img"), true);
        assert_eq!(
            value_after(&args, "-drive"),
            ["id=d0,file=/tmp/spry-bench-1/block/disk.img,format=raw,if=none,cache=writeback,readonly=on"]
        );
        assert_eq!(
            value_after(&args, "-device"),
            ["virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0"]
        );
        let writable = block_args(Path::new("/d,x.img"), false);
        assert_eq!(
            writable[1],
            "id=d0,file=/d,,x.img,format=raw,if=none,cache=writeback"
        );
    }

    #[test]
    fn test_net_uses_the_existing_tap_with_or_without_vhost() {
        let args = net_args("sbt42", "06:00:00:00:00:02", NetBackend::Tap);
        assert_eq!(
            value_after(&args, "-netdev"),
            ["tap,id=n0,ifname=sbt42,script=no,downscript=no,vhost=off"]
        );
        assert_eq!(
            value_after(&args, "-device"),
            ["virtio-net-device,netdev=n0,mac=06:00:00:00:00:02,bus=virtio-mmio-bus.0"]
        );
        let vhost = net_args("sbt42", "06:00:00:00:00:02", NetBackend::Vhost);
        assert!(vhost[1].ends_with(",vhost=on"), "{vhost:?}");
        assert_eq!(NetBackend::Vhost.system_name(), "QEMU vhost");
    }

    #[test]
    fn test_vcpu_threads_of_both_vmms() {
        assert!(is_vcpu_thread("spry-vcpu0"));
        assert!(is_vcpu_thread("CPU 1/KVM"));
        assert!(!is_vcpu_thread("spry"));
        assert!(!is_vcpu_thread("qemu-system-x86"));
        assert!(!is_vcpu_thread("worker"));
        assert!(!is_vcpu_thread("vhost-1234"));
    }
}
