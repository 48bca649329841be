//! A running VM: the event loop that serves its devices, pause and resume, and an
//! orderly stop.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::builder::EventLoop;
use crate::config::VmConfig;
use crate::devices::legacy::i8042::{I8042Error, I8042};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::{ExitEvent, ExitReason};
use crate::metrics::VcpuExitCounters;
use crate::snapshot::device_writes::device_writes;
use crate::snapshot::format;
use crate::snapshot::memory::{self, DirtyPages, MemoryState};
use crate::snapshot::rollback::{self, Restored, RollbackError};
use crate::snapshot::uffd::UffdBackend;
use crate::snapshot::vm::{
    BlockSnapshot, NetSnapshot, SnapshotCreateParams, SnapshotError, SnapshotType, VmSnapshot,
    VsockSnapshot,
};
use crate::sync::lock;
use crate::vstate::memory::{self as memory_backing, GuestMemory};
use crate::vstate::vcpu::{VcpuEvent, VcpuHandle, VcpuResponse};
use crate::vstate::vcpu_state::{VcpuState, VcpuStateSupport};
use crate::vstate::vm::Vm;
use crate::vstate::vm_state::ClockRestore;
use crate::vstate::vm_state::VmState;

/// How long a vCPU may take to acknowledge a pause or resume. A vCPU leaves KVM_RUN
/// within microseconds of its kick; only a wedged host misses this.
pub const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the running VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// epoll failed.
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// A rollback failed part way, so the VM must not run again.
    #[error(
        "a rollback failed part way: the VM's state is inconsistent and it cannot run again; \
         stop it"
    )]
    Inconsistent,
    /// A vCPU did not acknowledge a pause or resume in time.
    #[error("vCPU {vcpu} did not {what} within {timeout:?}")]
    VcpuNoAnswer {
        /// The vCPU.
        vcpu: u8,
        /// "pause" or "resume".
        what: &'static str,
        /// How long spry waited.
        timeout: Duration,
    },
}

/// Work that needs the whole VMM (API requests, metrics), done on the event-loop
/// thread after each batch of events, so it never races the devices it inspects.
pub trait RunHook {
    /// Called after every batch of events the event loop dispatched.
    fn after_events(&mut self, vmm: &mut Vmm);
}

/// Wakes the event loop when the VM must stop.
#[derive(Debug)]
pub struct ExitSubscriber {
    exit: Arc<ExitEvent>,
}

impl ExitSubscriber {
    /// Watches `exit`.
    pub fn new(exit: Arc<ExitEvent>) -> ExitSubscriber {
        ExitSubscriber { exit }
    }
}

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event_fd(), EventSet::IN)) {
            log::error!("cannot watch the exit event: {e:?}");
        }
        if let Some(signals) = crate::exit::signal_event() {
            if let Err(e) = ops.add(Events::new(signals, EventSet::IN)) {
                log::error!("cannot watch stop signals: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // The reason is already recorded; draining the counter is all that is left.
        match crate::exit::signal_event() {
            Some(signals) if events.fd() == std::os::fd::AsRawFd::as_raw_fd(signals) => {
                let _ = signals.read();
            }
            _ => {
                let _ = self.exit.event_fd().read();
            }
        }
    }
}

/// Adds to KVM's dirty log what spry's devices wrote from the host side, which KVM
/// never sees: the buffers they accepted since the last snapshot, and every live
/// queue's used ring (see [`crate::snapshot::device_writes`]).
fn add_device_writes(dirty: &mut DirtyPages, mem: &GuestMemory, state: &VmSnapshot) {
    for page in device_writes().take() {
        dirty.add_page(mem, page);
    }
    let transports = state
        .blocks
        .iter()
        .map(|b| &b.transport)
        .chain(state.nets.iter().map(|n| &n.transport))
        .chain(state.vsock.iter().map(|v| &v.transport));
    for queue in transports.filter(|t| t.activated).flat_map(|t| &t.queues) {
        // flags, idx, the ring of (id, len) pairs and avail_event.
        let used_len = 6 + 8 * u64::from(queue.size);
        dirty.add_range(mem, queue.used_ring, used_len);
    }
}

/// Each drive back to what it held at the load: a copy-on-write drive loaded from
/// the snapshot's frozen overlay takes it again; one a `drive_overrides` entry made
/// copy-on-write (its saved state cleared at the load) drops every change, as its
/// overlay started at the load. Ordinary drives have no changes kept apart: their
/// writes survive a rollback.
fn rollback_drives(
    blocks: &[Arc<Mutex<Block>>],
    saved: &[BlockSnapshot],
) -> Result<(), RollbackError> {
    for (block, saved) in blocks.iter().zip(saved) {
        let mut block = lock(block);
        let dropped = match &saved.device.copy_on_write {
            Some(state) => block.roll_back_changes(state),
            None => block.discard_changes(),
        };
        let dropped = dropped.map_err(|source| RollbackError::Drive {
            id: saved.device.id.clone(),
            source,
        })?;
        if !dropped {
            log::debug!(
                "rollback: drive {:?} is not copy-on-write; its writes since the snapshot stay",
                saved.device.id
            );
        }
    }
    Ok(())
}

/// The vsock device and its transport.
pub type VsockHandles = (Arc<Mutex<Vsock>>, Arc<Mutex<MmioTransport>>);

/// Handles on the virtio devices, for runtime changes, metrics and snapshots.
#[derive(Default)]
pub struct VirtioDevices {
    /// Block devices, in attach order (root first).
    pub blocks: Vec<Arc<Mutex<Block>>>,
    /// Network devices.
    pub nets: Vec<Arc<Mutex<Net>>>,
    /// The vsock device and its transport.
    pub vsock: Option<VsockHandles>,
    /// The transport of each block device, in the same order.
    pub block_transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The transport of each network device, in the same order.
    pub net_transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// What a snapshot reads besides the devices the VMM keeps anyway.
pub struct SnapshotSources {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// What this host's KVM saves of a vCPU (probed once, at build).
    pub vcpu_support: Arc<VcpuStateSupport>,
    /// KVM logs dirty pages (a Diff snapshot is possible).
    pub track_dirty_pages: bool,
    /// Memory a Diff can be layered on exists: a Full snapshot this process took
    /// (the last memory write succeeded) or the memory file it was loaded from.
    pub diff_base: bool,
    /// Where guest memory came from.
    pub origin: MemoryOrigin,
    /// The snapshot this VM was loaded from, for rollbacks; `None` for a boot.
    pub restored: Option<Arc<Restored>>,
}

/// Where guest memory came from, which decides how a snapshot reads it.
#[derive(Debug)]
pub enum MemoryOrigin {
    /// Fresh anonymous memory of a boot: pages never touched are zero.
    Booted,
    /// A private mapping of a snapshot's memory file.
    File,
    /// Anonymous memory a page-fault handler fills (a `Uffd` load): pages not
    /// present yet are not zero, they are still with the handler.
    Uffd(UffdBackend),
    /// A boot's memory in an unnamed shared file on a tmpfs
    /// (`machine-config.memory_file_dir`): pages never touched are holes, zero.
    /// Its first Full snapshot links the file (a live fork) and makes it `File`.
    SharedFile,
}

/// A built VM with running vCPUs.
///
/// Field order is drop order: vCPU threads are joined, then the VM fd is closed
/// (the kernel destroys the VM and retires every irqfd and ioeventfd at once),
/// then the devices and their eventfds go, and the guest mapping last, once
/// nothing can reach it.
pub struct Vmm {
    vcpus: Vec<VcpuHandle>,
    // The VM fd must outlive the vCPU threads.
    vm: Vm,
    paused: bool,
    /// A rollback failed part way: the VM stays paused for good.
    inconsistent: bool,
    event_loop: EventLoop,
    exit: Arc<ExitEvent>,
    i8042: Arc<Mutex<I8042>>,
    devices: VirtioDevices,
    snapshot: SnapshotSources,
    // The guest mapping must outlive the vCPU threads, the VM and the devices,
    // whatever else keeps a handle.
    guest_memory: GuestMemory,
    config: VmConfig,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Assembles a VMM from built parts; vCPUs are added as they start.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: Vm,
        guest_memory: GuestMemory,
        event_loop: EventLoop,
        exit: Arc<ExitEvent>,
        i8042: Arc<Mutex<I8042>>,
        devices: VirtioDevices,
        snapshot: SnapshotSources,
        config: VmConfig,
    ) -> Vmm {
        Vmm {
            vcpus: Vec::new(),
            vm,
            paused: false,
            inconsistent: false,
            event_loop,
            exit,
            i8042,
            devices,
            snapshot,
            guest_memory,
            config,
        }
    }

    /// Records that the vCPUs were started paused (a snapshot loaded without
    /// `resume_vm`).
    pub fn started_paused(&mut self) {
        self.paused = true;
    }

    /// Takes ownership of a started vCPU.
    pub fn add_vcpu(&mut self, vcpu: VcpuHandle) {
        self.vcpus.push(vcpu);
    }

    /// Adds an event source to the event loop (the API wake-up, the metrics timer).
    pub fn add_subscriber(&mut self, subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>) {
        event_manager::SubscriberOps::add_subscriber(&mut self.event_loop, subscriber);
    }

    /// Serves devices until something asks the VM to stop, then stops the vCPUs;
    /// calls `hook` after each batch of events.
    pub fn run_with(&mut self, hook: &mut dyn RunHook) -> Result<ExitReason, VmmError> {
        let reason = loop {
            if let Some(reason) = self.exit.reason() {
                break reason;
            }
            match self.event_loop.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => {
                    self.stop();
                    return Err(VmmError::EventLoop(e));
                }
            }
            hook.after_events(self);
        };
        self.stop();
        Ok(reason)
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stops every vCPU from running guest code. Devices keep serving what the guest
    /// queued, so the guest finds them consistent when it resumes. If a vCPU does not
    /// acknowledge, the others are resumed and the VM keeps running.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        if let Err(e) = self.tell_vcpus(VcpuEvent::Pause, VcpuResponse::Paused, "pause") {
            let _ = self.tell_vcpus(VcpuEvent::Resume, VcpuResponse::Resumed, "resume");
            return Err(e);
        }
        self.paused = true;
        Ok(())
    }

    /// Lets every vCPU run guest code again.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        if self.inconsistent {
            return Err(VmmError::Inconsistent);
        }
        self.tell_vcpus(VcpuEvent::Resume, VcpuResponse::Resumed, "resume")?;
        self.paused = false;
        Ok(())
    }

    /// Sends `event` to every vCPU, then waits for each to answer `want`.
    fn tell_vcpus(
        &self,
        event: VcpuEvent,
        want: VcpuResponse,
        what: &'static str,
    ) -> Result<(), VmmError> {
        for vcpu in &self.vcpus {
            vcpu.send(event.clone());
        }
        let deadline = Instant::now() + VCPU_ANSWER_TIMEOUT;
        for vcpu in &self.vcpus {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match vcpu.response(left) {
                    Some(answer) if answer == want => break,
                    // A late answer to an earlier request that timed out.
                    Some(_) => {}
                    None => {
                        return Err(VmmError::VcpuNoAnswer {
                            vcpu: vcpu.index(),
                            what,
                            timeout: VCPU_ANSWER_TIMEOUT,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a snapshot of the paused VM: guest memory to `mem_file_path` (all of
    /// it, or for a Diff the pages dirtied since the last snapshot), then the state
    /// file, each whole or not at all. Runs on the event-loop thread, between two
    /// turns of the loop, so no device is half way through a request. The VM stays
    /// paused whatever happens.
    pub fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), SnapshotError> {
        if !self.paused {
            return Err(SnapshotError::NotPaused);
        }
        let diff = params.snapshot_type == SnapshotType::Diff;
        if diff && !self.snapshot.track_dirty_pages {
            return Err(SnapshotError::DiffWithoutTracking);
        }
        if diff && !self.snapshot.diff_base {
            return Err(SnapshotError::DiffWithoutBase);
        }
        let vcpus = self.save_vcpus()?;
        let vm = VmState::save(self.vm.fd())?;
        let state = VmSnapshot {
            config: self.config.clone(),
            memory: MemoryState::of(&self.guest_memory),
            vm,
            vcpus,
            serial: lock(&self.snapshot.serial).save(),
            i8042: lock(&self.i8042).save(),
            blocks: self.save_blocks(&params.snapshot_path)?,
            nets: self.save_nets(),
            vsock: self.save_vsock(),
        };
        // An earlier state file at this path must not outlive a failure below next
        // to memory it does not describe. Best effort: it may not exist.
        let _ = std::fs::remove_file(&params.snapshot_path);
        let started = Instant::now();
        let forked = matches!(self.snapshot.origin, MemoryOrigin::SharedFile)
            && params.snapshot_type == SnapshotType::Full
            && self.link_memory(&params.mem_file_path)?;
        let written = if forked {
            Ok(memory::WriteStats {
                pages_written: 0,
                file_size: MemoryState::of(&self.guest_memory).size(),
            })
        } else {
            self.write_memory(params.snapshot_type, &params.mem_file_path, &state)
        };
        // A failed write may have used up the dirty log: until a Full succeeds, a
        // Diff would miss pages.
        self.snapshot.diff_base = written.is_ok();
        let written = written?;
        format::write_file(&params.snapshot_path, &state)?;
        if forked {
            // This VM now runs on a private mapping of the snapshot's memory file,
            // as if loaded from it: it can roll back to this point.
            self.snapshot.restored = Some(Arc::new(Restored {
                snapshot: state,
                clock: ClockRestore::Continue,
            }));
            log::info!(
                "Full snapshot by live fork: guest RAM's file linked, no memory written, in \
                 {} us",
                started.elapsed().as_micros()
            );
            return Ok(());
        }
        log::info!(
            "{:?} snapshot: {} pages of memory written in {} us",
            params.snapshot_type,
            written.pages_written,
            started.elapsed().as_micros()
        );
        Ok(())
    }

    /// A live fork: guest RAM already is a file (`MemoryOrigin::SharedFile`), so it is
    /// linked at `path` (under a temporary name, then renamed over it) and then
    /// mapped privately at the same addresses, so the guest's writes from here on
    /// stay in this process and the file keeps the snapshot's memory. `false` when
    /// the file cannot be linked there (another file system, or no `/proc` to name it
    /// by, as in a jail): memory is then written as for any Full snapshot.
    fn link_memory(&mut self, path: &Path) -> Result<bool, SnapshotError> {
        let Some(file) = memory_backing::backing_file(&self.guest_memory) else {
            return Ok(false);
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".fork-{}", std::process::id()));
        let temporary = std::path::PathBuf::from(temporary);
        if let Err(e) = memory_backing::link_file(&file, &temporary) {
            log::info!(
                "live fork: cannot link guest RAM's file to {} ({e}); writing memory instead",
                temporary.display()
            );
            return Ok(false);
        }
        if self.snapshot.track_dirty_pages {
            // The file is this snapshot's memory: a Diff from here holds what changes
            // from now on.
            DirtyPages::take(self.vm.fd(), &self.guest_memory)?;
            device_writes().take();
        }
        if let Err(source) = memory_backing::make_private(&self.guest_memory) {
            let _ = std::fs::remove_file(&temporary);
            self.inconsistent = true;
            return Err(SnapshotError::Fork {
                path: path.to_owned(),
                source,
            });
        }
        self.snapshot.origin = MemoryOrigin::File;
        if let Err(e) = std::fs::rename(&temporary, path) {
            let _ = std::fs::remove_file(&temporary);
            // The dirty log was taken for a snapshot that did not happen.
            self.snapshot.diff_base = false;
            return Err(SnapshotError::Memory(memory::MemoryFileError::Write(
                path.to_owned(),
                e,
            )));
        }
        Ok(true)
    }

    /// Writes guest memory for a snapshot of `kind` to `path`.
    fn write_memory(
        &self,
        kind: SnapshotType,
        path: &std::path::Path,
        state: &VmSnapshot,
    ) -> Result<memory::WriteStats, SnapshotError> {
        let full = |mem| match self.snapshot.origin {
            MemoryOrigin::Uffd(_) => memory::write_full_reading_every_page(mem, path),
            MemoryOrigin::Booted | MemoryOrigin::File | MemoryOrigin::SharedFile => {
                memory::write_full(mem, path)
            }
        };
        if !self.snapshot.track_dirty_pages {
            return Ok(full(&self.guest_memory)?);
        }
        // Taking the log also restarts it: the next Diff holds what changes from
        // here on.
        let mut dirty = DirtyPages::take(self.vm.fd(), &self.guest_memory)?;
        add_device_writes(&mut dirty, &self.guest_memory, state);
        Ok(match kind {
            SnapshotType::Diff => memory::write_diff(&self.guest_memory, &dirty, path)?,
            SnapshotType::Full => full(&self.guest_memory)?,
        })
    }

    /// Each paused vCPU saves its own state, on its own thread.
    fn save_vcpus(&self) -> Result<Vec<VcpuState>, SnapshotError> {
        let event = VcpuEvent::SaveState(self.snapshot.vcpu_support.clone());
        for vcpu in &self.vcpus {
            vcpu.send(event.clone());
        }
        let deadline = Instant::now() + VCPU_ANSWER_TIMEOUT;
        self.vcpus
            .iter()
            .map(|vcpu| loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match vcpu.response(left) {
                    Some(VcpuResponse::Saved(saved)) => {
                        break (*saved).map_err(SnapshotError::Vcpu);
                    }
                    // A late answer to an earlier request that timed out.
                    Some(_) => {}
                    None => break Err(SnapshotError::VcpuNoAnswer(vcpu.index())),
                }
            })
            .collect()
    }

    // One lock at a time: a transport's save locks its device. A copy-on-write
    // drive's overlay is frozen beside the state file.
    fn save_blocks(&self, snapshot_path: &Path) -> Result<Vec<BlockSnapshot>, SnapshotError> {
        let pairs = self
            .devices
            .blocks
            .iter()
            .zip(&self.devices.block_transports);
        pairs
            .map(|(device, transport)| {
                let device = lock(device);
                let saved = device.save_for_snapshot(snapshot_path);
                let saved = saved.map_err(|source| SnapshotError::Overlay {
                    drive_id: device.id().to_owned(),
                    source,
                });
                drop(device);
                Ok(BlockSnapshot {
                    device: saved?,
                    transport: lock(transport).save(),
                })
            })
            .collect()
    }

    fn save_nets(&self) -> Vec<NetSnapshot> {
        let pairs = self.devices.nets.iter().zip(&self.devices.net_transports);
        pairs
            .map(|(device, transport)| {
                let device = lock(device).save();
                NetSnapshot {
                    device,
                    transport: lock(transport).save(),
                }
            })
            .collect()
    }

    fn save_vsock(&self) -> Option<VsockSnapshot> {
        let (device, transport) = self.devices.vsock.as_ref()?;
        // The device's lock is released before the transport's save takes it.
        let device = lock(device).save();
        Some(VsockSnapshot {
            device,
            transport: lock(transport).save(),
        })
    }

    /// Puts the VM back in the state of the snapshot it was loaded from, in place
    /// (see [`crate::snapshot::rollback`]): pauses it, drops the memory it dirtied
    /// since, loads the VM's, every vCPU's and every device's saved state, and
    /// resumes it if it was running. Runs on the event-loop thread between two turns,
    /// so no device is half way through a request. A failure part way leaves the VM
    /// paused for good ([`VmmError::Inconsistent`]).
    pub fn rollback(&mut self) -> Result<(), RollbackError> {
        let Some(restored) = self.snapshot.restored.clone() else {
            return Err(RollbackError::NoSnapshot);
        };
        if self.inconsistent {
            return Err(RollbackError::Inconsistent);
        }
        let started = Instant::now();
        let was_running = !self.paused;
        if was_running {
            self.pause()
                .map_err(|e| RollbackError::Pause(crate::error_line(&e)))?;
        }
        let paused_us = started.elapsed().as_micros();
        let memory_us = match self.rollback_paused(&restored) {
            Ok(took) => took.as_micros(),
            Err(e) => {
                self.inconsistent = true;
                return Err(e);
            }
        };
        let loaded_us = started.elapsed().as_micros();
        if was_running {
            self.resume()
                .map_err(|e| RollbackError::Resume(crate::error_line(&e)))?;
        }
        log::info!(
            "rolled back to the snapshot in {} us: paused by {paused_us}, dirtied memory \
             dropped in {memory_us}, state loaded by {loaded_us}",
            started.elapsed().as_micros()
        );
        Ok(())
    }

    /// The rollback of a paused VM; returns how long dropping the memory took.
    fn rollback_paused(&mut self, restored: &Restored) -> Result<Duration, RollbackError> {
        let snap = &restored.snapshot;
        let devices = &self.devices;
        rollback::same_count("vCPUs", snap.vcpus.len(), self.vcpus.len())?;
        rollback::same_count("drives", snap.blocks.len(), devices.block_transports.len())?;
        rollback::same_count("interfaces", snap.nets.len(), devices.net_transports.len())?;
        let vsocks = usize::from(devices.vsock.is_some());
        rollback::same_count("vsock devices", usize::from(snap.vsock.is_some()), vsocks)?;
        // Memory first: devices read their rings from it as they come back.
        let dropping = Instant::now();
        rollback::discard_memory_changes(&self.guest_memory)?;
        let dropped = dropping.elapsed();
        if self.snapshot.track_dirty_pages {
            // The memory is the snapshot's again: a Diff from here holds only what
            // changes from now on. The pages taken here are dropped.
            DirtyPages::take(self.vm.fd(), &self.guest_memory).map_err(RollbackError::DirtyLog)?;
            device_writes().take();
        }
        self.snapshot.diff_base = true;
        snap.vm
            .restore(self.vm.fd(), restored.clock)
            .map_err(RollbackError::VmState)?;
        self.restore_vcpus(&snap.vcpus)?;
        lock(&self.snapshot.serial)
            .restore_in_place(&snap.serial)
            .map_err(RollbackError::Serial)?;
        lock(&self.i8042)
            .restore_in_place(&snap.i8042)
            .map_err(RollbackError::I8042)?;
        self.rollback_devices(snap)?;
        Ok(dropped)
    }

    /// Every virtio transport (and its device) back to its saved state; vsock also
    /// tells the guest its connections are gone, as after a load.
    fn rollback_devices(&self, snap: &VmSnapshot) -> Result<(), RollbackError> {
        let devices = &self.devices;
        let virtio = |name: String| move |source| RollbackError::Virtio { name, source };
        for (transport, saved) in devices.block_transports.iter().zip(&snap.blocks) {
            lock(transport)
                .restore_in_place(&saved.transport)
                .map_err(virtio(saved.device.id.clone()))?;
        }
        rollback_drives(&devices.blocks, &snap.blocks)?;
        for (transport, saved) in devices.net_transports.iter().zip(&snap.nets) {
            lock(transport)
                .restore_in_place(&saved.transport)
                .map_err(virtio(saved.device.id.clone()))?;
        }
        if let (Some((device, transport)), Some(saved)) = (&devices.vsock, &snap.vsock) {
            lock(device).reset_transport_on_activation();
            lock(transport)
                .restore_in_place(&saved.transport)
                .map_err(virtio(String::from("vsock")))?;
        }
        Ok(())
    }

    /// Each paused vCPU loads its saved state, on its own thread.
    fn restore_vcpus(&self, states: &[VcpuState]) -> Result<(), RollbackError> {
        let support = &self.snapshot.vcpu_support;
        for (vcpu, state) in self.vcpus.iter().zip(states) {
            vcpu.send(VcpuEvent::RestoreState(
                Arc::new(state.clone()),
                support.clone(),
            ));
        }
        let deadline = Instant::now() + VCPU_ANSWER_TIMEOUT;
        for vcpu in &self.vcpus {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match vcpu.response(left) {
                    Some(VcpuResponse::Restored(done)) => {
                        done.map_err(RollbackError::Vcpu)?;
                        break;
                    }
                    // A late answer to an earlier request that timed out.
                    Some(_) => {}
                    None => return Err(RollbackError::VcpuNoAnswer(vcpu.index())),
                }
            }
        }
        Ok(())
    }

    /// Each vCPU's exit counters.
    pub fn vcpu_exit_counters(&self) -> impl Iterator<Item = &VcpuExitCounters> {
        self.vcpus.iter().map(VcpuHandle::exit_counters)
    }

    /// Finishes and joins every vCPU thread. A vCPU that does not finish in time is
    /// abandoned to the process exit: one waiting on a page of `Uffd` memory whose
    /// handler died never returns to spry (on PVM, KVM retries the fault in the kernel
    /// for as long as the thread lives), and waiting for it would hang spry.
    pub fn stop(&mut self) {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuEvent::Finish);
        }
        let deadline = Instant::now() + VCPU_ANSWER_TIMEOUT;
        for vcpu in &mut self.vcpus {
            if !vcpu.join_until(deadline) {
                log::error!(
                    "vCPU {} did not stop within {VCPU_ANSWER_TIMEOUT:?} (waiting on guest \
                     memory nobody serves?); it ends with the process",
                    vcpu.index()
                );
                vcpu.abandon();
            }
        }
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), I8042Error> {
        lock(&self.i8042).ctrl_alt_del()
    }

    /// The virtio devices.
    pub fn devices(&self) -> &VirtioDevices {
        &self.devices
    }

    /// The config the VM was built from (as `GET /vm/config` reports it).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }
}
