//! The VMM thread's side of the API, split as Firecracker splits it: a
//! [`PrebootController`] that assembles a [`VmConfig`] and boots it on
//! `InstanceStart`, then a [`RuntimeController`] that acts on the running [`Vmm`].
//! Each takes only the actions of its phase; the other phase's get Firecracker's
//! "not supported before/after starting the microVM".

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::action::{
    InstanceInfo, PrebootAction, Query, RuntimeAction, VersionInfo, VmmAction, VmmData,
    FIRECRACKER_API_VERSION,
};
use super::channel::{ApiInbox, ApiRequest};
use crate::builder::{self, BuildError};
use crate::config::{DriveConfig, LoggerConfig, VmConfig};
use crate::devices::legacy::i8042::I8042Error;
use crate::logger::{self, LoggerError};
use crate::metrics::{FlushTimer, MetricsError, MetricsSink, Snapshot};
use crate::resources::{self, Boot, Machine, ResourcesError, VmResources};
use crate::seccomp::SeccompFilters;
use crate::snapshot::rollback::RollbackError;
use crate::snapshot::vm::SnapshotError;
use crate::snapshot::vm::SnapshotLoadParams;
use crate::sync::lock;
use crate::vmm::{RunHook, Vmm, VmmError};
use crate::vstate::prepared::PreparedKvm;

/// `app_name` in `GET /`.
pub const APP_NAME: &str = "spry";

/// Why an action failed (HTTP 400 with this text, and its sources, as
/// `fault_message`).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A runtime action before `InstanceStart`.
    #[error("The requested operation is not supported before starting the microVM.")]
    BeforeStart,
    /// A pre-boot action after `InstanceStart`.
    #[error("The requested operation is not supported after starting the microVM.")]
    AfterStart,
    /// `InstanceStart` without a kernel.
    #[error("boot-source: not configured yet (PUT /boot-source first)")]
    NoBootSource,
    /// The configuration means something spry cannot do.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The logger could not be reconfigured.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// The metrics file could not be opened or written.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// `PATCH /drives/{id}` for a drive the VM does not have.
    #[error("drives: there is no drive {0:?}")]
    UnknownDrive(String),
    /// `PATCH /drives/{id}` with a new file for a copy-on-write drive, whose
    /// overlay holds changes to its base only.
    #[error(
        "drives[{0}].path_on_host: drive {1:?} is copy-on-write; its overlay holds changes to \
         its base, so PATCH cannot swap the base (restore with drive_overrides instead)"
    )]
    CopyOnWriteBase(usize, String),
    /// A rate limiter in `PATCH /drives/{id}`.
    #[error("drives[{0}].rate_limiter: a rate limiter is not supported by spry")]
    RateLimiter(usize),
    /// Pause or resume failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The keyboard could not take Ctrl-Alt-Del.
    #[error("cannot send Ctrl-Alt-Del")]
    CtrlAltDel(#[source] I8042Error),
    /// Waiting for API requests failed.
    #[error("cannot wait for API requests")]
    Wait(#[source] std::io::Error),
    /// `PUT /snapshot/load` after a call that configures a boot (Firecracker's
    /// `LoadSnapshotNotAllowed`).
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    /// `PUT /snapshot/create` failed; the VM stays paused.
    #[error("cannot create the snapshot")]
    Snapshot(#[source] SnapshotError),
    /// `PUT /snapshot/rollback` failed.
    #[error("cannot roll back to the snapshot")]
    Rollback(#[source] RollbackError),
}

/// The answer to a [`Query`], in whichever phase.
fn answer_query(query: Query, config: &VmConfig, id: &str, state: &str) -> VmmData {
    match query {
        Query::InstanceInfo => VmmData::InstanceInfo(InstanceInfo {
            id: id.to_owned(),
            state: state.to_owned(),
            vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
            app_name: APP_NAME.to_owned(),
        }),
        Query::Version => VmmData::Version(VersionInfo {
            firecracker_version: FIRECRACKER_API_VERSION.to_owned(),
            spry_version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
        Query::MachineConfig => VmmData::MachineConfig(config.machine_config.clone()),
        Query::VmConfig => VmmData::VmConfig(Box::new(config.clone())),
    }
}

/// A booted VM and what the runtime takes over from the pre-boot phase.
#[derive(Debug)]
pub struct Booted {
    /// The running VM.
    pub vmm: Vmm,
    /// The metrics file, if one was configured.
    pub metrics: Option<MetricsSink>,
}

/// How the pre-boot phase ended.
#[derive(Debug)]
pub enum PrebootEnd {
    /// `InstanceStart` booted the VM.
    Started(Box<Booted>),
    /// A stop signal arrived first.
    Signalled(i32),
}

/// The outcome of one pre-boot action.
enum Outcome {
    Done(VmmData),
    Started(Box<Booted>),
}

/// Assembles the VM configuration from API calls until `InstanceStart`.
#[derive(Debug)]
pub struct PrebootController {
    instance_id: String,
    config: VmConfig,
    metrics: Option<MetricsSink>,
    console_input: Option<RawFd>,
    seccomp: SeccompFilters,
    /// A call configured a boot, so a snapshot can no longer be loaded.
    boot_path: bool,
    /// KVM opened while waiting for the first request, for the boot or load.
    prepared: Option<PreparedKvm>,
}

const WAKE_API: u64 = 0;
const WAKE_SIGNAL: u64 = 1;

impl PrebootController {
    /// An empty configuration (Firecracker's defaults: 1 vCPU, 128 MiB). The guest
    /// console will read `console_input`; the vCPUs take their filter from `seccomp`.
    pub fn new(
        instance_id: String,
        console_input: Option<RawFd>,
        seccomp: SeccompFilters,
    ) -> PrebootController {
        PrebootController {
            instance_id,
            config: VmConfig::default(),
            metrics: None,
            console_input,
            seccomp,
            boot_path: false,
            prepared: None,
        }
    }

    /// Answers requests from `inbox` until one boots the VM or a stop signal arrives.
    pub fn serve_until_start(mut self, inbox: &ApiInbox) -> Result<PrebootEnd, ControllerError> {
        let epoll = Epoll::new().map_err(ControllerError::Wait)?;
        let watch = |fd: RawFd, data: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(ControllerError::Wait)
        };
        watch(inbox.wake_fd().as_raw_fd(), WAKE_API)?;
        if let Some(signals) = crate::exit::signal_event() {
            watch(signals.as_raw_fd(), WAKE_SIGNAL)?;
        }
        self.prepare_kvm();
        let mut events = [EpollEvent::default(); 2];
        loop {
            if let Some(signal) = crate::exit::caught_signal() {
                return Ok(PrebootEnd::Signalled(signal));
            }
            inbox.clear_wake();
            while let Some(ApiRequest { action, reply }) = inbox.try_next() {
                match self.handle(action) {
                    Ok(Outcome::Done(data)) => reply.answer(Ok(data)),
                    Ok(Outcome::Started(booted)) => {
                        reply.answer(Ok(VmmData::Empty));
                        return Ok(PrebootEnd::Started(booted));
                    }
                    Err(e) => reply.answer(Err(crate::error_line(&e))),
                }
            }
            match epoll.wait(-1, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ControllerError::Wait(e)),
            }
        }
    }

    /// Opens KVM and creates the empty VM now, while the client is still sending its
    /// requests (the boot or load needs them anyway; a request that arrives meanwhile
    /// waits at most this long). A failure is only logged: the boot or load tries
    /// again and reports it.
    fn prepare_kvm(&mut self) {
        let started = std::time::Instant::now();
        match PreparedKvm::new() {
            Ok(prepared) => {
                log::debug!("KVM prepared in {} us", started.elapsed().as_micros());
                self.prepared = Some(prepared);
            }
            Err(e) => log::debug!("KVM not prepared ahead: {}", crate::error_line(&e)),
        }
    }

    fn handle(&mut self, action: VmmAction) -> Result<Outcome, ControllerError> {
        match action {
            VmmAction::Query(query) => Ok(Outcome::Done(answer_query(
                query,
                &self.config,
                &self.instance_id,
                "Not started",
            ))),
            VmmAction::Runtime(_) => Err(ControllerError::BeforeStart),
            VmmAction::Preboot(action) => self.preboot(action),
        }
    }

    /// Boots on `InstanceStart`; otherwise applies one configuring call after
    /// checking it as far as it can be checked alone (nothing changes when it is
    /// refused).
    fn preboot(&mut self, action: PrebootAction) -> Result<Outcome, ControllerError> {
        // Firecracker's rule: everything but the logger and metrics commits the
        // process to a boot (the refused call too; InstanceStart ends this phase).
        let configures_boot = !matches!(
            action,
            PrebootAction::PutLogger(_)
                | PrebootAction::PutMetrics(_)
                | PrebootAction::LoadSnapshot(_)
        );
        self.boot_path |= configures_boot;
        match action {
            PrebootAction::InstanceStart => return self.start(),
            PrebootAction::LoadSnapshot(params) => return self.load(&params),
            PrebootAction::PutBootSource(boot) => {
                Boot::from_config(&boot)?;
                self.config.boot_source = boot;
            }
            PrebootAction::PutMachineConfig(machine) => {
                Machine::from_config(&machine)?;
                self.config.machine_config = machine;
            }
            PrebootAction::PatchMachineConfig(update) => {
                let machine = update.apply(&self.config.machine_config);
                Machine::from_config(&machine)?;
                self.config.machine_config = machine;
            }
            PrebootAction::PutDrive(drive) => {
                let drives = upsert(&self.config.drives, drive, |d| &d.drive_id);
                resources::drives_from_config(&drives)?;
                self.config.drives = drives;
            }
            PrebootAction::PutNetworkInterface(iface) => {
                let nets = upsert(&self.config.network_interfaces, iface, |n| &n.iface_id);
                resources::nets_from_config(&nets)?;
                self.config.network_interfaces = nets;
            }
            PrebootAction::PutVsock(vsock) => {
                resources::vsock_from_config(&vsock)?;
                self.config.vsock = Some(vsock);
            }
            PrebootAction::PutLogger(update) => {
                logger::configure(&update)?;
                self.config.logger = Some(merge_logger(self.config.logger.take(), update));
            }
            PrebootAction::PutMetrics(metrics) => {
                self.metrics = Some(MetricsSink::open(&metrics)?);
                self.config.metrics = Some(metrics);
            }
        }
        Ok(Outcome::Done(VmmData::Empty))
    }

    /// Validates the whole configuration and boots it.
    fn start(&mut self) -> Result<Outcome, ControllerError> {
        if self
            .config
            .boot_source
            .kernel_image_path
            .as_os_str()
            .is_empty()
        {
            return Err(ControllerError::NoBootSource);
        }
        let resources = VmResources::try_from(self.config.clone())?;
        let vmm = builder::build_and_start(
            resources,
            Box::new(std::io::stdout()),
            self.console_input,
            &self.seccomp,
            self.prepared.take(),
        )?;
        Ok(Outcome::Started(Box::new(Booted {
            vmm,
            metrics: self.metrics.take(),
        })))
    }
}

impl PrebootController {
    /// Restores the snapshot `params` names, in this process that configured
    /// nothing else.
    fn load(&mut self, params: &SnapshotLoadParams) -> Result<Outcome, ControllerError> {
        if self.boot_path {
            return Err(ControllerError::LoadSnapshotNotAllowed);
        }
        let vmm = builder::restore_and_start(
            params,
            Box::new(std::io::stdout()),
            self.console_input,
            &self.seccomp,
            self.prepared.take(),
        )?;
        Ok(Outcome::Started(Box::new(Booted {
            vmm,
            metrics: self.metrics.take(),
        })))
    }
}

/// `list` with `item` replacing the entry of the same id, or added at the end.
fn upsert<T: Clone>(list: &[T], item: T, id: impl Fn(&T) -> &String) -> Vec<T> {
    let mut next = list.to_vec();
    match next.iter().position(|x| id(x) == id(&item)) {
        Some(i) => next[i] = item,
        None => next.push(item),
    }
    next
}

/// The logger config after `update` (whose absent fields keep their values).
fn merge_logger(current: Option<LoggerConfig>, update: LoggerConfig) -> LoggerConfig {
    let current = current.unwrap_or_default();
    LoggerConfig {
        log_path: update.log_path.or(current.log_path),
        level: update.level.or(current.level),
        show_level: update.show_level.or(current.show_level),
        show_log_origin: update.show_log_origin.or(current.show_log_origin),
        module: update.module.or(current.module),
    }
}

/// Acts on the running VM: API requests and metrics, on the event-loop thread.
#[derive(Debug)]
pub struct RuntimeController {
    instance_id: String,
    config: VmConfig,
    inbox: Option<ApiInbox>,
    metrics: Option<MetricsSink>,
    metrics_due: Arc<AtomicBool>,
}

impl RuntimeController {
    /// Takes over `vmm`: its API wake-up and metrics timer go on its event loop.
    /// `inbox` is `None` without an API socket.
    pub fn attach(
        vmm: &mut Vmm,
        instance_id: String,
        inbox: Option<ApiInbox>,
        metrics: Option<MetricsSink>,
    ) -> Result<RuntimeController, ControllerError> {
        if let Some(inbox) = &inbox {
            let wake = inbox.wake_subscriber().map_err(ControllerError::Wait)?;
            vmm.add_subscriber(Arc::new(Mutex::new(wake)));
        }
        let metrics_due = Arc::new(AtomicBool::new(false));
        if metrics.is_some() {
            let timer = FlushTimer::start(metrics_due.clone(), crate::metrics::FLUSH_INTERVAL)?;
            vmm.add_subscriber(Arc::new(Mutex::new(timer)));
        }
        Ok(RuntimeController {
            instance_id,
            config: vmm.config().clone(),
            inbox,
            metrics,
            metrics_due,
        })
    }

    fn handle(&mut self, vmm: &mut Vmm, action: VmmAction) -> Result<VmmData, ControllerError> {
        match action {
            VmmAction::Query(query) => {
                let state = if vmm.is_paused() { "Paused" } else { "Running" };
                Ok(answer_query(query, &self.config, &self.instance_id, state))
            }
            VmmAction::Preboot(_) => Err(ControllerError::AfterStart),
            VmmAction::Runtime(action) => {
                self.act(vmm, action)?;
                Ok(VmmData::Empty)
            }
        }
    }

    fn act(&mut self, vmm: &mut Vmm, action: RuntimeAction) -> Result<(), ControllerError> {
        match action {
            RuntimeAction::PatchDrive(update) => {
                let index = self
                    .config
                    .drives
                    .iter()
                    .position(|d| d.drive_id == update.drive_id)
                    .ok_or_else(|| ControllerError::UnknownDrive(update.drive_id.clone()))?;
                if update.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(ControllerError::RateLimiter(index));
                }
                if let Some(path) = update.path_on_host {
                    let drive = &mut self.config.drives[index];
                    if drive.copy_on_write.is_some() {
                        return Err(ControllerError::CopyOnWriteBase(
                            index,
                            drive.drive_id.clone(),
                        ));
                    }
                    replace_backing(vmm, drive, index, path)?;
                }
            }
            RuntimeAction::SendCtrlAltDel => vmm
                .send_ctrl_alt_del()
                .map_err(ControllerError::CtrlAltDel)?,
            RuntimeAction::FlushMetrics => self.write_metrics(vmm)?,
            RuntimeAction::Pause => vmm.pause()?,
            RuntimeAction::Resume => vmm.resume()?,
            RuntimeAction::CreateSnapshot(params) => vmm
                .create_snapshot(&params)
                .map_err(ControllerError::Snapshot)?,
            RuntimeAction::RollbackSnapshot => {
                vmm.rollback().map_err(ControllerError::Rollback)?;
            }
        }
        Ok(())
    }

    fn write_metrics(&mut self, vmm: &Vmm) -> Result<(), ControllerError> {
        // Without a metrics file there is nothing to flush, as in Firecracker.
        match &mut self.metrics {
            Some(sink) => Ok(sink.write(Snapshot::of(vmm))?),
            None => Ok(()),
        }
    }
}

/// Points drive `drives[index]` at `path` and tells the guest.
fn replace_backing(
    vmm: &Vmm,
    drive: &mut DriveConfig,
    index: usize,
    path: std::path::PathBuf,
) -> Result<(), ControllerError> {
    let (file, capacity) = resources::open_backing_file(index, &path, drive.is_read_only)?;
    let block = vmm
        .devices()
        .blocks
        .iter()
        .find(|b| lock(b).id() == drive.drive_id)
        .ok_or_else(|| ControllerError::UnknownDrive(drive.drive_id.clone()))?;
    lock(block).replace_backing(path.clone(), file, capacity);
    log::info!("drive {} now backed by {}", drive.drive_id, path.display());
    drive.path_on_host = Some(path);
    Ok(())
}

impl RunHook for RuntimeController {
    fn after_events(&mut self, vmm: &mut Vmm) {
        if self.metrics_due.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.write_metrics(vmm) {
                log::warn!("{}", crate::error_line(&e));
            }
        }
        let Some(inbox) = self.inbox.take() else {
            return;
        };
        while let Some(ApiRequest { action, reply }) = inbox.try_next() {
            let result = self.handle(vmm, action);
            reply.answer(result.map_err(|e| crate::error_line(&e)));
        }
        self.inbox = Some(inbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::action::MachineConfigUpdate;
    use crate::config::{LogLevel, MachineConfig, NetConfig};

    fn controller() -> PrebootController {
        PrebootController::new("test".into(), None, SeccompFilters::none())
    }

    fn preboot(c: &mut PrebootController, action: PrebootAction) -> Result<(), String> {
        c.handle(VmmAction::Preboot(action))
            .map(|_| ())
            .map_err(|e| crate::error_line(&e))
    }

    fn machine_config(c: &mut PrebootController) -> MachineConfig {
        match c.handle(VmmAction::Query(Query::MachineConfig)) {
            Ok(Outcome::Done(VmmData::MachineConfig(m))) => m,
            _ => panic!("GET /machine-config gave no machine config"),
        }
    }

    #[test]
    fn test_machine_config_defaults_to_1_vcpu_128_mib() {
        let mut c = controller();

        let m = machine_config(&mut c);

        assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 128));
    }

    #[test]
    fn test_invalid_machine_config_is_refused_and_changes_nothing() {
        let mut c = controller();
        let bad = MachineConfig {
            vcpu_count: 0,
            ..MachineConfig::default()
        };

        let e = preboot(&mut c, PrebootAction::PutMachineConfig(bad)).unwrap_err();

        assert_eq!(e, "machine-config.vcpu_count: 0 is out of range (1 to 32)");
        assert_eq!(machine_config(&mut c).vcpu_count, 1);
    }

    #[test]
    fn test_patch_machine_config_keeps_other_fields() {
        let mut c = controller();
        let put = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            ..MachineConfig::default()
        };
        preboot(&mut c, PrebootAction::PutMachineConfig(put)).unwrap();
        let patch = MachineConfigUpdate {
            mem_size_mib: Some(512),
            ..MachineConfigUpdate::default()
        };

        preboot(&mut c, PrebootAction::PatchMachineConfig(patch)).unwrap();

        let m = machine_config(&mut c);
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 512));
    }

    #[test]
    fn test_runtime_action_before_start_is_refused() {
        let mut c = controller();

        let e = c
            .handle(VmmAction::Runtime(RuntimeAction::Pause))
            .err()
            .map(|e| e.to_string());

        assert_eq!(
            e.as_deref(),
            Some("The requested operation is not supported before starting the microVM.")
        );
    }

    #[test]
    fn test_instance_start_without_boot_source_is_refused() {
        let mut c = controller();

        let e = preboot(&mut c, PrebootAction::InstanceStart).unwrap_err();

        assert_eq!(
            e,
            "boot-source: not configured yet (PUT /boot-source first)"
        );
    }

    #[test]
    fn test_drive_with_missing_file_is_refused() {
        let mut c = controller();
        let drive = DriveConfig {
            drive_id: "rootfs".into(),
            path_on_host: Some("/nonexistent/disk".into()),
            is_root_device: true,
            ..DriveConfig::default()
        };

        let e = preboot(&mut c, PrebootAction::PutDrive(drive)).unwrap_err();

        assert!(
            e.starts_with("drives[0].path_on_host: cannot open /nonexistent/disk"),
            "{e}"
        );
    }

    #[test]
    fn test_missing_tap_is_refused_and_not_added() {
        let mut c = controller();
        let iface = NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "sprynotap7".into(),
            ..NetConfig::default()
        };

        let e = preboot(&mut c, PrebootAction::PutNetworkInterface(iface)).unwrap_err();

        assert!(
            e.contains("tap device \"sprynotap7\" does not exist"),
            "{e}"
        );
        assert!(c.config.network_interfaces.is_empty());
    }

    #[test]
    fn test_upsert_replaces_by_id_or_appends() {
        let list = vec![("a".to_string(), 1), ("b".to_string(), 2)];

        let replaced = upsert(&list, ("a".to_string(), 3), |x| &x.0);
        let appended = upsert(&list, ("c".to_string(), 4), |x| &x.0);

        assert_eq!(replaced, vec![("a".to_string(), 3), ("b".to_string(), 2)]);
        assert_eq!(appended.len(), 3);
    }

    #[test]
    fn test_logger_updates_merge() {
        let first = LoggerConfig {
            log_path: Some("/tmp/log".into()),
            ..LoggerConfig::default()
        };
        let second = LoggerConfig {
            level: Some(LogLevel(log::LevelFilter::Debug)),
            ..LoggerConfig::default()
        };

        let merged = merge_logger(Some(first), second);

        assert_eq!(merged.log_path, Some("/tmp/log".into()));
        assert_eq!(merged.level, Some(LogLevel(log::LevelFilter::Debug)));
    }
}
