//! The boot sequence, top to bottom: from validated resources to running vCPUs.

use std::fs::File;
use std::io::Write;
use std::num::NonZeroU8;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::acpi::{self, VirtioMmio};
use crate::arch::x86_64::boot_params::{self, ZeroPageContents};
use crate::arch::x86_64::cpuid::{filter_cpuid, Topology};
use crate::arch::x86_64::cpuid_compat::{missing_features, MissingFeatures};
use crate::arch::x86_64::layout::{
    BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, CMDLINE_ADDR, IRQ_COM1, IRQ_I8042, IRQ_MAX, IRQ_VIRTIO_FIRST,
    MAX_VIRTIO_DEVICES, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::arch::x86_64::{mptable, regs};
use crate::config::VmConfig;
use crate::devices::bus::{BusError, DeviceBuses};
use crate::devices::legacy::boot_timer::BootTimer;
use crate::devices::legacy::i8042::{I8042Error, I8042State, I8042, I8042_LEN, I8042_PORT};
use crate::devices::legacy::serial::{
    SerialDevice, SerialInput, SerialState, SerialStateError, COM1_LEN, COM1_PORT,
};
use crate::devices::virtio::block::cow::CowDisk;
use crate::devices::virtio::block::{Block, BlockState, BlockStateError};
use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::{Net, NetDeviceConfig, NetStateError};
use crate::devices::virtio::persist::{TransportState, VirtioStateError};
use crate::devices::virtio::vsock::{Muxer, Vsock};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::exit::ExitEvent;
use crate::host::HostKvm;
use crate::loader::{self, KernelKind, LoadedInitrd, LoadedKernel};
use crate::resources::{self, Drive, NetInterface, ResourcesError, VmResources, VsockDevice};
use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::snapshot::device_writes::device_writes;
use crate::snapshot::format::{self, SnapshotFormatError};
use crate::snapshot::memory::{self as memory_file, MemoryFileError};
use crate::snapshot::rollback::Restored;
use crate::snapshot::uffd::{self, UffdError};
use crate::snapshot::vm::{
    BlockSnapshot, LoadParamsError, MemorySource, NetSnapshot, SnapshotLoadParams, VmSnapshot,
    VsockSnapshot,
};
use crate::vmm::{ExitSubscriber, MemoryOrigin, SnapshotSources, VirtioDevices, Vmm, VsockHandles};
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{self, GuestMemory, MemoryError};
use crate::vstate::prepared::{PrepareError, PreparedKvm};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuStateError;
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::vm_state::{ClockRestore, VmStateError};

/// The event loop every device and control source lives on.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Errors while building and starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The host's KVM cannot run this kernel.
    #[error(
        "cannot boot {kernel} on this host: it is Linux, and /dev/kvm is {host}, where Linux dies \
         early; use a host with VT-x/AMD-V, or the nested test host (tools/devtool nested shell); \
         kernels that are not Linux are tried here"
    )]
    HostCannotRunGuest {
        /// The kernel image.
        kernel: String,
        /// What the host is.
        host: &'static str,
    },
    /// Opening KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// More vCPUs than KVM allows.
    #[error(
        "machine-config.vcpu_count: {wanted} is more than the {max} vCPUs this host's KVM allows"
    )]
    TooManyVcpus {
        /// Requested.
        wanted: u8,
        /// KVM's maximum.
        max: usize,
    },
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel or initrd loading failed.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// The final command line does not fit.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("cannot write the kernel command line: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
    /// Zero page.
    #[error(transparent)]
    BootParams(#[from] boot_params::BootParamsError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// GDT, page tables.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// vCPU creation or configuration.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device placement.
    #[error("cannot place {device} on the bus")]
    Bus {
        /// Which device.
        device: &'static str,
        /// Why.
        #[source]
        source: BusError,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// KVM refused a queue-notification ioeventfd.
    #[error("cannot register the queue notifier of {device}")]
    Ioevent {
        /// Which device.
        device: String,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The tap could not be opened.
    #[error("network interface {id}")]
    Tap {
        /// `iface_id`.
        id: String,
        /// Why.
        #[source]
        source: crate::devices::virtio::net::tap::TapError,
    },
    /// The vsock device's Unix socket could not be created.
    #[error("vsock.uds_path: cannot listen on {path}")]
    VsockListen {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Too many devices for the MMIO window or interrupt pins.
    #[error("no room for virtio device {0}: spry wires at most {MAX_VIRTIO_DEVICES} devices")]
    NoDeviceSlot(String),
    /// What this host's KVM can save of a vCPU could not be probed.
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    /// KVM could not be opened or the VM created.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The load request itself is wrong.
    #[error(transparent)]
    LoadParams(#[from] LoadParamsError),
    /// The snapshot's state file is refused.
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFormatError),
    /// The snapshot's memory file is refused.
    #[error(transparent)]
    SnapshotMemory(#[from] MemoryFileError),
    /// The `Uffd` memory backend could not be set up.
    #[error("snapshot/load with a Uffd backend")]
    SnapshotUffd(#[from] UffdError),
    /// The snapshot holds no vCPU, or more than spry or this host allows.
    #[error("snapshot holds {found} vCPUs; spry on this host takes 1 to {max}")]
    SnapshotVcpus {
        /// vCPUs in the snapshot.
        found: usize,
        /// KVM's maximum.
        max: usize,
    },
    /// The VM's in-kernel state is refused.
    #[error(transparent)]
    VmState(#[from] VmStateError),
    /// A drive of the snapshot cannot be opened again.
    #[error(transparent)]
    SnapshotDrive(#[from] ResourcesError),
    /// A saved block device is refused.
    #[error(transparent)]
    BlockState(#[from] BlockStateError),
    /// A saved network device is refused.
    #[error(transparent)]
    NetState(#[from] NetStateError),
    /// A saved virtio transport is refused.
    #[error("{device}")]
    TransportState {
        /// Which device.
        device: String,
        /// Why.
        #[source]
        source: VirtioStateError,
    },
    /// The saved serial port is refused.
    #[error(transparent)]
    SerialState(#[from] SerialStateError),
    /// The saved i8042 is refused.
    #[error(transparent)]
    I8042State(#[from] I8042Error),
    /// `drive_overrides` names a drive the snapshot does not have.
    #[error("drive_overrides: the snapshot has no drive {0:?}")]
    UnknownDriveOverride(String),
    /// An overriding drive cannot be opened.
    #[error("drive_overrides: drive {drive_id:?}")]
    DriveOverride {
        /// The drive.
        drive_id: String,
        /// Why.
        #[source]
        source: ResourcesError,
    },
    /// `network_overrides` names an interface the snapshot does not have.
    #[error("network_overrides: the snapshot has no network interface {0:?}")]
    UnknownOverride(String),
    /// The snapshot's vCPUs had CPU features this host cannot give.
    #[error("{0}")]
    CpuFeatures(MissingFeatures),
}

fn eventfd(what: &'static str) -> Result<EventFd, BuildError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd(what, e))
}

/// Refuses kernels the host cannot run, before anything is created.
pub fn check_host_can_run(res: &VmResources, host: HostKvm) -> Result<(), BuildError> {
    if host.runs_linux() || res.boot.kernel.kind != KernelKind::Linux {
        return Ok(());
    }
    Err(BuildError::HostCannotRunGuest {
        kernel: res.boot.kernel.path.display().to_string(),
        host: host.describe(),
    })
}

/// Builds the VM `res` describes and starts its vCPUs, each confined by the `vcpu`
/// filter of `seccomp` before its first `KVM_RUN`. `console` receives the guest's
/// serial output; `console_input` (a pollable fd, normally stdin) feeds it.
/// `prepared` is KVM opened ahead of time, if the caller had time for it.
pub fn build_and_start(
    mut res: VmResources,
    console: Box<dyn Write + Send>,
    console_input: Option<std::os::fd::RawFd>,
    seccomp: &SeccompFilters,
    prepared: Option<PreparedKvm>,
) -> Result<Vmm, BuildError> {
    check_host_can_run(&res, HostKvm::detect())?;
    let PreparedKvm {
        kvm,
        vm,
        vcpu_support,
    } = PreparedKvm::or_new(prepared)?;
    let vcpu_count = res.machine.vcpu_count;
    if usize::from(vcpu_count.get()) > kvm.max_vcpus {
        return Err(BuildError::TooManyVcpus {
            wanted: vcpu_count.get(),
            max: kvm.max_vcpus,
        });
    }

    // Memory slots go in before the irqchip exists: afterwards each costs milliseconds.
    let guest_memory = match &res.machine.memory_file_dir {
        Some(dir) => memory::create_guest_memory_in_file(res.machine.mem_size, dir)?,
        None => memory::create_guest_memory(res.machine.mem_size)?,
    };
    if res.machine.transparent_huge_pages {
        advise_huge_pages(&guest_memory);
    }
    vm.register_memory(&guest_memory, res.machine.track_dirty_pages)?;
    if res.machine.track_dirty_pages {
        device_writes().enable();
    }
    vm.setup_irqchip()?;

    let kernel = loader::load_kernel(&guest_memory, &mut res.boot.kernel)?;
    let initrd = match res.boot.initrd.as_mut() {
        Some(image) => Some(loader::load_initrd(&guest_memory, image, &kernel)?),
        None => None,
    };

    let exit = Arc::new(ExitEvent::new().map_err(|e| BuildError::EventFd("the exit event", e))?);
    let mut event_loop = EventLoop::new().map_err(|e| {
        BuildError::EventFd("the event loop", std::io::Error::other(format!("{e:?}")))
    })?;
    let mut buses = DeviceBuses::default();
    let legacy = attach_legacy_devices(&vm, &mut buses, &exit, console, None)?;
    if let Some(fd) = console_input {
        let input = SerialInput::new(legacy.serial.clone(), fd, legacy.serial_drained);
        event_loop.add_subscriber(Arc::new(Mutex::new(input)));
    }
    event_loop.add_subscriber(Arc::new(Mutex::new(ExitSubscriber::new(exit.clone()))));

    let drives = std::mem::take(&mut res.drives);
    let mut env = DeviceEnv {
        vm: &vm,
        mem: &guest_memory,
        buses: &mut buses,
        event_loop: &mut event_loop,
        cmdline: Some(&mut res.boot.cmdline),
        next_slot: 0,
        announced: Vec::new(),
    };
    let (blocks, block_transports) = attach_block_devices(&mut env, drives)?;
    let (net_devices, net_transports) = attach_net_devices(&mut env, &res.nets)?;
    let vsock = res
        .vsock
        .as_ref()
        .map(|v| attach_vsock_device(&mut env, v, None))
        .transpose()?;
    let virtio_mmio = env.announced;

    configure_system(
        &guest_memory,
        &res.boot.cmdline,
        &kernel,
        initrd,
        vcpu_count,
        &virtio_mmio,
    )?;

    let buses = Arc::new(buses);
    let vcpus = create_vcpus(
        &kvm,
        &vm,
        vcpu_count,
        res.machine.smt,
        kernel.entry,
        &buses,
        &exit,
    )?;
    let devices = VirtioDevices {
        blocks,
        nets: net_devices,
        vsock,
        block_transports,
        net_transports,
    };
    let sources = SnapshotSources {
        serial: legacy.serial,
        vcpu_support,
        track_dirty_pages: res.machine.track_dirty_pages,
        diff_base: false,
        origin: if res.machine.memory_file_dir.is_some() {
            MemoryOrigin::SharedFile
        } else {
            MemoryOrigin::Booted
        },
        restored: None,
    };
    let mut vmm = Vmm::new(
        vm,
        guest_memory,
        event_loop,
        exit,
        legacy.i8042,
        devices,
        sources,
        res.config,
    );
    let vcpu_filter = seccomp.get(ThreadKind::Vcpu);
    for vcpu in vcpus {
        vmm.add_vcpu(vcpu.start(vcpu_filter.cloned(), false)?);
    }
    Ok(vmm)
}

/// Rebuilds the VM a snapshot describes, in this fresh process, and starts its
/// vCPUs (paused unless `params.resume_vm`). The same steps as a boot where they
/// can be shared, in the same order (memory slots before the irqchip, devices in
/// attach order so each gets its old window and interrupt), with saved state in
/// place of the kernel and the boot tables. Everything read from the snapshot is
/// checked before a vCPU runs; a refusal names the piece and the value.
pub fn restore_and_start(
    params: &SnapshotLoadParams,
    console: Box<dyn Write + Send>,
    console_input: Option<std::os::fd::RawFd>,
    seccomp: &SeccompFilters,
    prepared: Option<PreparedKvm>,
) -> Result<Vmm, BuildError> {
    let started = Instant::now();
    let source = params.memory_source()?;
    let snap: VmSnapshot = format::read_file(&params.snapshot_path)?;
    let read_us = started.elapsed().as_micros();
    let PreparedKvm {
        kvm,
        vm,
        vcpu_support: support,
    } = PreparedKvm::or_new(prepared)?;
    let max_vcpus = kvm.max_vcpus.min(usize::from(resources::MAX_VCPUS));
    if snap.vcpus.is_empty() || snap.vcpus.len() > max_vcpus {
        return Err(BuildError::SnapshotVcpus {
            found: snap.vcpus.len(),
            max: max_vcpus,
        });
    }
    if let Some(unknown) = params
        .network_overrides
        .iter()
        .find(|o| !snap.nets.iter().any(|n| n.device.id == o.iface_id))
    {
        return Err(BuildError::UnknownOverride(unknown.iface_id.clone()));
    }
    if let Some(unknown) = params
        .drive_overrides
        .iter()
        .find(|o| !snap.blocks.iter().any(|b| b.device.id == o.drive_id))
    {
        return Err(BuildError::UnknownDriveOverride(unknown.drive_id.clone()));
    }
    let track_dirty_pages = params.tracks_dirty_pages();
    // Past this point a Uffd handler has guest memory: every later refusal closes
    // the connection, which tells it this load is over.
    let (guest_memory, mut origin) = match source {
        MemorySource::File(path) => (
            memory_file::restore(path, &snap.memory)?,
            MemoryOrigin::File,
        ),
        MemorySource::Uffd(socket) => {
            snap.memory.check()?;
            let (mem, backend) = uffd::restore(socket, &snap.memory)?;
            (mem, MemoryOrigin::Uffd(backend))
        }
    };
    let mapped_us = started.elapsed().as_micros();
    vm.register_memory(&guest_memory, track_dirty_pages)?;
    if track_dirty_pages {
        device_writes().enable();
    }
    vm.setup_irqchip()?;
    let clock = if params.clock_realtime {
        ClockRestore::Realtime
    } else {
        ClockRestore::Continue
    };
    snap.vm.restore(vm.fd(), clock)?;

    let exit = Arc::new(ExitEvent::new().map_err(|e| BuildError::EventFd("the exit event", e))?);
    let mut event_loop = EventLoop::new().map_err(|e| {
        BuildError::EventFd("the event loop", std::io::Error::other(format!("{e:?}")))
    })?;
    let mut buses = DeviceBuses::default();
    let saved_legacy = Some((&snap.serial, &snap.i8042));
    let legacy = attach_legacy_devices(&vm, &mut buses, &exit, console, saved_legacy)?;
    if let Some(fd) = console_input {
        let input = SerialInput::new(legacy.serial.clone(), fd, legacy.serial_drained);
        event_loop.add_subscriber(Arc::new(Mutex::new(input)));
    }
    event_loop.add_subscriber(Arc::new(Mutex::new(ExitSubscriber::new(exit.clone()))));
    if let MemoryOrigin::Uffd(backend) = &mut origin {
        if let Some(watch) = backend.watcher(exit.clone()) {
            event_loop.add_subscriber(Arc::new(Mutex::new(watch)));
        }
    }

    let mut env = DeviceEnv {
        vm: &vm,
        mem: &guest_memory,
        buses: &mut buses,
        event_loop: &mut event_loop,
        cmdline: None,
        next_slot: 0,
        announced: Vec::new(),
    };
    let (blocks, block_transports) = restore_block_devices(&mut env, &snap.blocks, params)?;
    let (nets, net_transports) = restore_net_devices(&mut env, &snap.nets, params)?;
    // Attached last, as at boot, so it gets its old MMIO slot and IRQ back.
    let vsock = snap
        .vsock
        .as_ref()
        .map(|saved| {
            let config = VsockDevice {
                guest_cid: saved.device.guest_cid,
                uds_path: saved.device.uds_path.clone(),
            };
            attach_vsock_device(&mut env, &config, Some(saved))
        })
        .transpose()?;
    let devices = VirtioDevices {
        blocks,
        nets,
        vsock,
        block_transports,
        net_transports,
    };
    let devices_us = started.elapsed().as_micros();
    let buses = Arc::new(buses);
    let mut vcpus = Vec::with_capacity(snap.vcpus.len());
    // At most MAX_VCPUS (checked above).
    let vcpu_count = u8::try_from(snap.vcpus.len()).unwrap_or(u8::MAX);
    for (index, state) in (0u8..).zip(&snap.vcpus) {
        let vcpu = Vcpu::new(vm.fd(), index, buses.clone(), exit.clone())?;
        // What a vCPU of this host gets at boot, bits spry sets itself included.
        let mut offered = kvm.supported_cpuid.clone();
        let topology = Topology {
            vcpu_id: index,
            vcpu_count,
            smt: snap.config.machine_config.smt,
            tsc_deadline: kvm.tsc_deadline,
        };
        filter_cpuid(&mut offered, topology);
        let host = vcpu.host_cpuid(&offered)?;
        if let Some(missing) = missing_features(&state.cpuid, &host) {
            return Err(BuildError::CpuFeatures(missing));
        }
        vcpu.restore_state(state, &support)?;
        vcpus.push(vcpu);
    }
    let mut config = snap.config.clone();
    config.machine_config.track_dirty_pages = track_dirty_pages;
    apply_drive_overrides(&mut config, params);
    // An overridden drive started this load with its override's own overlay, not
    // the snapshot's frozen one: a rollback takes it back to that start.
    let mut snap = snap;
    for block in &mut snap.blocks {
        if params.drive_override(&block.device.id).is_some() {
            block.device.copy_on_write = None;
        }
    }
    let restored = Restored {
        snapshot: snap,
        clock,
    };
    let sources = SnapshotSources {
        serial: legacy.serial,
        vcpu_support: support,
        track_dirty_pages,
        diff_base: true,
        origin,
        restored: Some(Arc::new(restored)),
    };
    let mut vmm = Vmm::new(
        vm,
        guest_memory,
        event_loop,
        exit,
        legacy.i8042,
        devices,
        sources,
        config,
    );
    if !params.resume_vm {
        vmm.started_paused();
    }
    log::info!(
        "snapshot restored in {} us: state file read by {read_us}, memory mapped by \
         {mapped_us}, VM and devices by {devices_us}",
        started.elapsed().as_micros()
    );
    let vcpu_filter = seccomp.get(ThreadKind::Vcpu);
    for vcpu in vcpus {
        vmm.add_vcpu(vcpu.start(vcpu_filter.cloned(), !params.resume_vm)?);
    }
    Ok(vmm)
}

/// Transparent huge pages make the guest's page faults 2 MiB at a time.
fn advise_huge_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = usize::try_from(region.len()).unwrap_or(0);
        // SAFETY: `host..host + len` is one live mapping owned by `mem`; madvise only
        // changes how the kernel backs it.
        let ret = unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
        if ret != 0 {
            log::warn!(
                "madvise(MADV_HUGEPAGE) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// What attaching a virtio device needs.
struct DeviceEnv<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemory,
    buses: &'a mut DeviceBuses,
    event_loop: &'a mut EventLoop,
    /// Where devices are announced; `None` on a restore (the guest knows them).
    cmdline: Option<&'a mut Cmdline>,
    next_slot: u32,
    /// Every virtio-mmio device so far, in attach order, for the DSDT.
    announced: Vec<VirtioMmio>,
}

/// Puts one virtio device on the MMIO bus with its interrupt, queue notifiers,
/// event-loop subscription, command-line entry and DSDT entry.
///
/// Every device is announced twice, on the command line (`virtio_mmio.device=`, for
/// kernels without ACPI such as the project's own) and in the DSDT (`LNRO0005`, for
/// distribution kernels, which often lack `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
/// A kernel that reads both never drives a device twice: the ACPI platform device is
/// created first (`acpi_init`, a subsys initcall; the command-line devices come at
/// device-initcall level or at module load) and binds first, and its probe marks the
/// window busy (`devm_platform_ioremap_resource`), so the probe of the command-line
/// twin at the same address fails with -EBUSY (two log lines, no second disk).
/// `acpi=off` in the boot args leaves the command line alone in charge.
fn attach_virtio<D>(
    env: &mut DeviceEnv<'_>,
    name: String,
    device: Arc<Mutex<D>>,
    interrupt: Arc<Interrupt>,
    (irq_evt, queue_evts): (&EventFd, &[&EventFd]),
    saved: Option<&TransportState>,
) -> Result<Arc<Mutex<MmioTransport>>, BuildError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let slot = env.next_slot;
    let irq = IRQ_VIRTIO_FIRST + slot;
    if irq > IRQ_MAX {
        return Err(BuildError::NoDeviceSlot(name));
    }
    let base = VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SIZE;
    env.next_slot += 1;
    env.vm.register_irqfd(irq_evt, irq)?;
    for (queue, evt) in (0u32..).zip(queue_evts) {
        env.vm
            .fd()
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + mmio::reg::QUEUE_NOTIFY),
                queue,
            )
            .map_err(|source| BuildError::Ioevent {
                device: name.clone(),
                source,
            })?;
    }
    let transport = match saved {
        None => MmioTransport::new(name.clone(), device.clone(), interrupt, env.mem.clone()),
        Some(state) => MmioTransport::restore(
            name.clone(),
            device.clone(),
            interrupt,
            env.mem.clone(),
            state,
        )
        .map_err(|source| BuildError::TransportState {
            device: name.clone(),
            source,
        })?,
    };
    let transport = Arc::new(Mutex::new(transport));
    env.buses
        .mmio
        .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
        .map_err(|source| BuildError::Bus {
            device: "virtio",
            source,
        })?;
    env.event_loop.add_subscriber(device);
    if let Some(cmdline) = env.cmdline.as_deref_mut() {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(BuildError::Cmdline)?;
    }
    env.announced.push(VirtioMmio {
        base,
        size: VIRTIO_MMIO_SIZE,
        gsi: irq,
    });
    log::debug!("{name} at {base:#x}, IRQ {irq}");
    Ok(transport)
}

fn device_interrupt(what: &'static str) -> Result<(Arc<Interrupt>, EventFd), BuildError> {
    let evt = eventfd(what)?;
    let line = evt.try_clone().map_err(|e| BuildError::EventFd(what, e))?;
    Ok((Arc::new(Interrupt::new(Box::new(line))), evt))
}

type Attached<D> = (Vec<Arc<Mutex<D>>>, Vec<Arc<Mutex<MmioTransport>>>);

fn attach_block_devices(
    env: &mut DeviceEnv<'_>,
    drives: Vec<Drive>,
) -> Result<Attached<Block>, BuildError> {
    let mut blocks = Vec::with_capacity(drives.len());
    let mut transports = Vec::with_capacity(drives.len());
    for drive in drives {
        if drive.is_root {
            if let Some(cmdline) = env.cmdline.as_deref_mut() {
                add_root_args(cmdline, &drive)?;
            }
        }
        let (interrupt, irq_evt) = device_interrupt("a block device's interrupt")?;
        let name = format!("virtio-blk {}", drive.block.id);
        let mut block = Block::new(drive.block, interrupt.clone())
            .map_err(|e| BuildError::EventFd("a block queue", e))?;
        if let Some(cow) = drive.cow {
            block.set_copy_on_write(cow);
        }
        let queue_evt = block
            .queue_event()
            .try_clone()
            .map_err(|e| BuildError::EventFd("a block queue", e))?;
        let block = Arc::new(Mutex::new(block));
        let evts: (&EventFd, &[&EventFd]) = (&irq_evt, &[&queue_evt]);
        transports.push(attach_virtio(
            env,
            name,
            block.clone(),
            interrupt,
            evts,
            None,
        )?);
        blocks.push(block);
    }
    Ok((blocks, transports))
}

/// The saved drives, each on its saved backing file (which must still have the
/// saved size) or the one `params.drive_overrides` names, at the slot each had.
/// A saved copy-on-write drive comes back over its base with its overlay reset to
/// the blocks the snapshot froze.
fn restore_block_devices(
    env: &mut DeviceEnv<'_>,
    saved: &[BlockSnapshot],
    params: &SnapshotLoadParams,
) -> Result<Attached<Block>, BuildError> {
    let mut blocks = Vec::with_capacity(saved.len());
    let mut transports = Vec::with_capacity(saved.len());
    for (index, saved) in saved.iter().enumerate() {
        let state = &saved.device;
        let (path, file, capacity, cow) = open_saved_drive(index, state, params)?;
        let (interrupt, irq_evt) = device_interrupt("a block device's interrupt")?;
        let mut block = Block::restore(state, path, file, capacity, interrupt.clone())?;
        if let Some(cow) = cow {
            block.set_copy_on_write(cow);
        }
        let queue_evt = block
            .queue_event()
            .try_clone()
            .map_err(|e| BuildError::EventFd("a block queue", e))?;
        let block = Arc::new(Mutex::new(block));
        let name = format!("virtio-blk {}", state.id);
        let evts: (&EventFd, &[&EventFd]) = (&irq_evt, &[&queue_evt]);
        let transport = Some(&saved.transport);
        transports.push(attach_virtio(
            env,
            name,
            block.clone(),
            interrupt,
            evts,
            transport,
        )?);
        blocks.push(block);
    }
    Ok((blocks, transports))
}

/// Opens saved drive `index`: as its override says, else as it was saved.
fn open_saved_drive(
    index: usize,
    state: &BlockState,
    params: &SnapshotLoadParams,
) -> Result<(PathBuf, File, u64, Option<CowDisk>), BuildError> {
    if let Some(o) = params.drive_override(&state.id) {
        let cow = o.copy_on_write.as_ref();
        let (file, capacity, layer) =
            resources::open_drive(index, &o.path_on_host, state.read_only, cow).map_err(
                |source| BuildError::DriveOverride {
                    drive_id: state.id.clone(),
                    source,
                },
            )?;
        return Ok((o.path_on_host.clone(), file, capacity, layer));
    }
    let saved_cow = state.copy_on_write.as_ref();
    let (file, capacity, layer) = resources::open_drive(
        index,
        &state.path,
        state.read_only,
        saved_cow.map(|c| &c.copy_on_write),
    )?;
    // The overlay goes back to what the snapshot froze: a file overlay may hold
    // later writes the snapshot's guest memory knows nothing of.
    let layer = match (layer, saved_cow) {
        (Some(mut layer), Some(saved)) => {
            layer
                .thaw(saved.frozen_overlay.as_deref())
                .map_err(|source| ResourcesError::Cow { index, source })?;
            Some(layer)
        }
        (layer, _) => layer,
    };
    Ok((state.path.clone(), file, capacity, layer))
}

/// The config a restored VM reports (`GET /vm/config`) and saves again: the
/// saved one, with each overridden drive's new backing.
fn apply_drive_overrides(config: &mut VmConfig, params: &SnapshotLoadParams) {
    for drive in &mut config.drives {
        if let Some(o) = params.drive_override(&drive.drive_id) {
            drive.path_on_host = Some(o.path_on_host.clone());
            drive.copy_on_write = o.copy_on_write.clone();
        }
    }
}

/// The saved network interfaces, each on its saved tap or the one `params`
/// overrides it with, at the slot each had.
fn restore_net_devices(
    env: &mut DeviceEnv<'_>,
    saved: &[NetSnapshot],
    params: &SnapshotLoadParams,
) -> Result<Attached<Net>, BuildError> {
    let mut devices = Vec::with_capacity(saved.len());
    let mut transports = Vec::with_capacity(saved.len());
    for saved in saved {
        let state = &saved.device;
        let tap_name = params.tap_for(&state.id, &state.host_dev_name);
        let tap = Tap::open(tap_name).map_err(|source| BuildError::Tap {
            id: state.id.clone(),
            source,
        })?;
        let (interrupt, irq_evt) = device_interrupt("a network device's interrupt")?;
        let net = Net::restore(state, Box::new(tap), interrupt.clone())?;
        let [rx, tx] = net.queue_events();
        let rx = rx
            .try_clone()
            .map_err(|e| BuildError::EventFd("a network queue", e))?;
        let tx = tx
            .try_clone()
            .map_err(|e| BuildError::EventFd("a network queue", e))?;
        let net = Arc::new(Mutex::new(net));
        let name = format!("virtio-net {}", state.id);
        let evts: (&EventFd, &[&EventFd]) = (&irq_evt, &[&rx, &tx]);
        let transport = Some(&saved.transport);
        transports.push(attach_virtio(
            env,
            name,
            net.clone(),
            interrupt,
            evts,
            transport,
        )?);
        devices.push(net);
    }
    Ok((devices, transports))
}

/// `root=` and `ro`/`rw` for the root drive, unless the user's boot_args name a root.
fn add_root_args(cmdline: &mut Cmdline, drive: &Drive) -> Result<(), BuildError> {
    let current = cmdline.as_cstring().map_err(BuildError::Cmdline)?;
    let has_root = current
        .to_string_lossy()
        .split_whitespace()
        .any(|arg| arg.starts_with("root="));
    if has_root {
        return Ok(());
    }
    let root = match &drive.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_owned(),
    };
    cmdline.insert_str(root).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(if drive.block.read_only { "ro" } else { "rw" })
        .map_err(BuildError::Cmdline)
}

fn attach_net_devices(
    env: &mut DeviceEnv<'_>,
    nets: &[NetInterface],
) -> Result<Attached<Net>, BuildError> {
    let mut devices = Vec::with_capacity(nets.len());
    let mut transports = Vec::with_capacity(nets.len());
    for iface in nets {
        let tap = Tap::open(&iface.tap).map_err(|source| BuildError::Tap {
            id: iface.id.clone(),
            source,
        })?;
        let (interrupt, irq_evt) = device_interrupt("a network device's interrupt")?;
        let net = Net::new(
            NetDeviceConfig {
                id: iface.id.clone(),
                backend: Box::new(tap),
                mac: iface.mac,
                mtu: iface.mtu,
            },
            interrupt.clone(),
        )
        .map_err(|e| BuildError::EventFd("a network queue", e))?;
        let [rx, tx] = net.queue_events();
        let rx = rx
            .try_clone()
            .map_err(|e| BuildError::EventFd("a network queue", e))?;
        let tx = tx
            .try_clone()
            .map_err(|e| BuildError::EventFd("a network queue", e))?;
        let net = Arc::new(Mutex::new(net));
        let name = format!("virtio-net {}", iface.id);
        let evts: (&EventFd, &[&EventFd]) = (&irq_evt, &[&rx, &tx]);
        transports.push(attach_virtio(
            env,
            name,
            net.clone(),
            interrupt,
            evts,
            None,
        )?);
        devices.push(net);
    }
    Ok((devices, transports))
}

/// The vsock device (restored from `saved`, if given): its listener is bound
/// here, before any seccomp filter (the event loop's may not create sockets of its
/// own, only accept and connect).
fn attach_vsock_device(
    env: &mut DeviceEnv<'_>,
    config: &VsockDevice,
    saved: Option<&VsockSnapshot>,
) -> Result<VsockHandles, BuildError> {
    let listen_err = |source| BuildError::VsockListen {
        path: config.uds_path.clone(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(&config.uds_path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let muxer = Muxer::new(config.guest_cid, config.uds_path.clone(), listener);
    let (interrupt, irq_evt) = device_interrupt("the vsock device's interrupt")?;
    let vsock = match saved {
        None => Vsock::new(config.guest_cid, muxer, interrupt.clone()),
        Some(saved) => Vsock::restore(&saved.device, muxer, interrupt.clone()),
    }
    .map_err(|e| BuildError::EventFd("a vsock queue", e))?;
    let mut queue_evts = Vec::with_capacity(3);
    for evt in vsock.queue_events() {
        queue_evts.push(
            evt.try_clone()
                .map_err(|e| BuildError::EventFd("a vsock queue", e))?,
        );
    }
    let vsock = Arc::new(Mutex::new(vsock));
    let evts: Vec<&EventFd> = queue_evts.iter().collect();
    let transport = attach_virtio(
        env,
        "virtio-vsock".to_owned(),
        vsock.clone(),
        interrupt,
        (&irq_evt, &evts),
        saved.map(|s| &s.transport),
    )?;
    Ok((vsock, transport))
}

/// The legacy devices other parts of the VMM keep a handle on.
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    serial_drained: EventFd,
    i8042: Arc<Mutex<I8042>>,
}

fn attach_legacy_devices(
    vm: &Vm,
    buses: &mut DeviceBuses,
    exit: &Arc<ExitEvent>,
    console: Box<dyn Write + Send>,
    saved: Option<(&SerialState, &I8042State)>,
) -> Result<LegacyDevices, BuildError> {
    let com1_irq = eventfd("COM1's interrupt")?;
    vm.register_irqfd(&com1_irq, IRQ_COM1)?;
    let (serial, serial_drained) = match saved {
        None => SerialDevice::new(com1_irq, console).map_err(|e| BuildError::EventFd("COM1", e))?,
        Some((state, _)) => SerialDevice::restore(state, com1_irq, console)?,
    };
    let serial = Arc::new(Mutex::new(serial));
    buses
        .pio
        .insert(serial.clone(), COM1_PORT, COM1_LEN)
        .map_err(|source| BuildError::Bus {
            device: "COM1",
            source,
        })?;

    let kbd_irq = eventfd("the i8042 interrupt")?;
    vm.register_irqfd(&kbd_irq, IRQ_I8042)?;
    let i8042 = match saved {
        None => I8042::new(exit.clone(), kbd_irq),
        Some((_, state)) => I8042::restore(state, exit.clone(), kbd_irq)?,
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    buses
        .pio
        .insert(i8042.clone(), I8042_PORT, I8042_LEN)
        .map_err(|source| BuildError::Bus {
            device: "i8042",
            source,
        })?;

    buses
        .mmio
        .insert(
            Arc::new(Mutex::new(BootTimer::default())),
            BOOT_TIMER_ADDR,
            BOOT_TIMER_SIZE,
        )
        .map_err(|source| BuildError::Bus {
            device: "boot timer",
            source,
        })?;
    Ok(LegacyDevices {
        serial,
        serial_drained,
        i8042,
    })
}

/// Writes everything the kernel reads at entry: command line, ACPI tables, zero page,
/// MP table, GDT and page tables.
fn configure_system(
    mem: &GuestMemory,
    cmdline: &Cmdline,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    vcpu_count: NonZeroU8,
    virtio_mmio: &[VirtioMmio],
) -> Result<(), BuildError> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(BuildError::CmdlineWrite)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BuildError::Cmdline)?
        .as_bytes()
        .len();
    let started = Instant::now();
    let (rsdp_addr, acpi_bytes) = acpi::setup_acpi(mem, vcpu_count.get(), virtio_mmio)?;
    log::debug!(
        "ACPI tables: {acpi_bytes} bytes, RSDP at {rsdp_addr:#x}, in {:?}",
        started.elapsed()
    );
    let mem_size = mem.iter().map(|r| r.len()).sum();
    let mut params = boot_params::build_boot_params(&ZeroPageContents {
        setup_header: kernel.setup_header,
        mem_size,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len,
        initrd: initrd.map(|i| (i.addr.0, i.size)),
    })?;
    // Boot protocol 2.14+: the kernel takes the RSDP from here; older ones find it by
    // scanning 0xe0000..1 MiB.
    params.acpi_rsdp_addr = rsdp_addr;
    boot_params::write_boot_params(mem, params)?;
    mptable::setup_mptable(mem, vcpu_count.get())?;
    regs::write_boot_tables(mem)?;
    Ok(())
}

fn create_vcpus(
    kvm: &KvmContext,
    vm: &Vm,
    vcpu_count: NonZeroU8,
    smt: bool,
    entry: GuestAddress,
    buses: &Arc<DeviceBuses>,
    exit: &Arc<ExitEvent>,
) -> Result<Vec<Vcpu>, BuildError> {
    (0..vcpu_count.get())
        .map(|index| {
            let vcpu = Vcpu::new(vm.fd(), index, buses.clone(), exit.clone())?;
            let topology = Topology {
                vcpu_id: index,
                vcpu_count: vcpu_count.get(),
                smt,
                tsc_deadline: kvm.tsc_deadline,
            };
            let boot_entry = (index == 0).then_some(entry.0);
            vcpu.configure(&kvm.supported_cpuid, topology, boot_entry)?;
            Ok(vcpu)
        })
        .collect()
}
