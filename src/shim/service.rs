//! containerd's task API for spry: each container is a microVM, each of its
//! processes a command the guest agent runs inside the container's root.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_shim::api::{
    self, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ResizePtyRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, Error, ExitSignal, Flags, TtrpcContext, TtrpcResult};

use super::jail;
use super::network::{self, GuestNetwork};
use super::process::{Exit, Process, Status, Stdio};
use super::rootfs;
use super::settings::Settings;
use super::spec;
use super::vm::{Vm, VmSpec, DISK};

/// The directory in a bundle where the shim keeps its records of a
/// container's VM: console log, pid, where the VM's own files are.
const VM_DIR: &str = "spry";
/// The sandbox a Kubernetes pod's containers share: CRI groups them into one
/// shim by it.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// CRI marks a pod's sandbox (pause) container with this annotation.
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// How long spry gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The shim process: started by containerd, serving one container (or a
/// group that containerd asks to share it).
pub struct SpryShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: String,
}

impl containerd_shim::Shim for SpryShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        SpryShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
        }
    }

    fn start_shim(&mut self, opts: containerd_shim::StartOpts) -> Result<String, Error> {
        // A Kubernetes pod's containers share one shim, as CRI asks.
        let grouping = std::env::current_dir()
            .ok()
            .and_then(|bundle| spec::load(&bundle.to_string_lossy()).ok())
            .and_then(|oci| spec::annotation::<String>(&oci, SANDBOX_ANNOTATION))
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // containerd, restarted, finds the running shim again through this
        // file in the bundle (our working directory).
        std::fs::write("address", &address)
            .map_err(|e| Error::Other(format!("cannot write the shim's address file: {e}")))?;
        Ok(address)
    }

    /// containerd runs this after a shim died, to clean up what it left: the
    /// VM, the mounts, the tap and the files.
    fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir()
                .map_err(|e| Error::Other(format!("no bundle directory: {e}")))?
        } else {
            PathBuf::from(&self.bundle)
        };
        clean_leftovers(&bundle);
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService(Arc::new(Inner {
            namespace: self.namespace.clone(),
            publisher: Mutex::new(publisher),
            exit: Arc::clone(&self.exit),
            containers: Mutex::new(HashMap::new()),
        }))
    }
}

/// The task service containerd calls.
#[derive(Clone)]
pub struct TaskService(Arc<Inner>);

struct Inner {
    namespace: String,
    publisher: Mutex<RemotePublisher>,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// One container: its VM and its processes.
struct Container {
    id: String,
    bundle: String,
    dir: PathBuf,
    vm_pid: u32,
    vm: Mutex<Option<Vm>>,
    vsock: PathBuf,
    network: Option<GuestNetwork>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// A Kubernetes pod's sandbox (pause) container: no VM. pause only holds
    /// namespaces, which a VM does not need (the pod's network namespace is a
    /// file CNI configured), so its task is a placeholder that runs until it is
    /// killed, and the pod's containers do not pay for a second VM.
    placeholder: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

fn not_found(what: String) -> containerd_shim::protos::ttrpc::Error {
    Error::NotFoundError(what).into()
}

fn failed(what: String) -> containerd_shim::protos::ttrpc::Error {
    Error::FailedPreconditionError(what).into()
}

fn other(what: String) -> containerd_shim::protos::ttrpc::Error {
    // An RPC status rather than the crate's `Error::Other`, whose text reaches
    // containerd wrapped in Rust debug formatting.
    use containerd_shim::protos::ttrpc;
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, what))
}

impl Container {
    fn process(&self, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(format!("exec {exec_id} of container {}", self.id)))
    }

    /// Stops the VM; every process still running in it ends with SIGKILL's
    /// status, as in a container whose pid namespace went away.
    fn stop_vm(&self) -> Vec<(String, Exit)> {
        if let Some(vm) = lock(&self.vm).take() {
            vm.destroy(STOP_GRACE);
        }
        let now = SystemTime::now();
        let mut ended = Vec::new();
        for (exec_id, p) in lock(&self.execs).iter() {
            if p.status().0 != Status::Stopped {
                p.finish(128 + 9, now);
                let exit = Exit {
                    status: 128 + 9,
                    at: now,
                    guest_pid: p.guest_pid(),
                };
                ended.push((exec_id.clone(), exit));
            }
        }
        ended
    }

    /// Removes the VM's files, the mounts and the tap.
    fn clean_up(&self) {
        if let Some(net) = &self.network {
            network::detach(net);
        }
        rootfs::unmount_snapshot(&Path::new(&self.bundle).join("rootfs"));
        // The VM's own directory (a jail is removed with its VM).
        if let Ok(files) = std::fs::read(self.dir.join("files")) {
            let files = PathBuf::from(std::ffi::OsString::from_vec(files));
            if let Err(e) = std::fs::remove_dir_all(&files) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", files.display());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// What a dead shim left in `bundle`: its VM (by the pid file), its mounts,
/// its tap and its files.
fn clean_leftovers(bundle: &Path) {
    let dir = bundle.join(VM_DIR);
    if let Ok(text) = std::fs::read_to_string(dir.join("spry.pid")) {
        let mut words = text.split_whitespace();
        let pid = words.next().and_then(|w| w.parse::<u32>().ok());
        let started = words.next().and_then(|w| w.parse::<u64>().ok());
        if let (Some(pid), Some(started)) = (pid, started) {
            // Only the VM this bundle started: its pid may have been reused
            // since, but not with the same start time.
            let ours = start_time(pid) == Some(started);
            if let (true, Ok(pid)) = (ours, i32::try_from(pid)) {
                // SAFETY: kill(2) on the pid of the VM this bundle started,
                // checked by its start time.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Ok(root) = std::fs::read(dir.join("jail")) {
        let root = PathBuf::from(std::ffi::OsString::from_vec(root));
        if let Some(jail_dir) = root.parent() {
            let _ = std::fs::remove_dir_all(jail_dir);
        }
    }
    if let Ok(files) = std::fs::read(dir.join("files")) {
        let _ = std::fs::remove_dir_all(PathBuf::from(std::ffi::OsString::from_vec(files)));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("network.json")) {
        if let Ok(net) = serde_json::from_str::<GuestNetwork>(&text) {
            network::detach(&net);
        }
    }
    rootfs::unmount_snapshot(&bundle.join("rootfs"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process's start time in clock ticks after boot (/proc/PID/stat field
/// 22), which with its pid names it uniquely.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 3 (state) is the first after the name.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let publisher = lock(&self.publisher);
        if let Err(e) = publisher.publish(Context::default(), topic, &self.namespace, event) {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id}")))
    }

    /// Ends a container's init that runs nothing in a guest (a placeholder, or
    /// one killed before its start) as `signal` would have.
    fn end_unstarted(&self, c: &Container, init: &Process, signal: u32) {
        let exit = Exit {
            status: 128 + signal,
            at: SystemTime::now(),
            guest_pid: 0,
        };
        init.finish(exit.status, exit.at);
        self.publish_exit(c, "", exit);
    }

    fn publish_exit(&self, c: &Container, exec_id: &str, exit: Exit) {
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: c.id.clone(),
                id: if exec_id.is_empty() {
                    c.id.clone()
                } else {
                    exec_id.to_string()
                },
                pid: c.vm_pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            }),
        );
    }

    /// Builds the root disk, wires the network and boots the VM.
    fn create(&self, req: &CreateTaskRequest) -> Result<Container, String> {
        let settings = Settings::load().map_err(|e| e.to_string())?;
        let oci = spec::load(&req.bundle).map_err(|e| e.to_string())?;
        let mut init = spec::init_request(&oci).map_err(|e| e.to_string())?;
        if req.terminal && init.terminal.is_none() {
            init.terminal = Some((24, 80));
        }
        let bundle = PathBuf::from(&req.bundle);
        let dir = bundle.join(VM_DIR);
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        if spec::annotation::<String>(&oci, CONTAINER_TYPE_ANNOTATION).as_deref() == Some("sandbox")
        {
            log::info!("{}: a pod sandbox: no VM", req.id);
            return Ok(Container {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                dir,
                vm_pid: std::process::id(),
                vm: Mutex::new(None),
                vsock: PathBuf::new(),
                network: None,
                init: Arc::new(Process::new(init, stdio)),
                execs: Mutex::new(HashMap::new()),
                placeholder: true,
            });
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = self.boot(req, &settings, &oci, &dir);
        match result {
            Ok((vm, network)) => {
                let vm_pid = vm.pid();
                let vsock = vm.vsock().to_path_buf();
                Ok(Container {
                    id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    dir,
                    vm_pid,
                    vm: Mutex::new(Some(vm)),
                    vsock,
                    network,
                    init: Arc::new(Process::new(init, stdio)),
                    execs: Mutex::new(HashMap::new()),
                    placeholder: false,
                })
            }
            Err(e) => {
                clean_leftovers(&bundle);
                Err(e)
            }
        }
    }

    fn boot(
        &self,
        req: &CreateTaskRequest,
        settings: &Settings,
        oci: &oci_spec::runtime::Spec,
        dir: &Path,
    ) -> Result<(Vm, Option<GuestNetwork>), String> {
        let t0 = Instant::now();
        let tree = PathBuf::from(&req.bundle).join("rootfs");
        std::fs::create_dir_all(&tree)
            .map_err(|e| format!("cannot create {}: {e}", tree.display()))?;
        // A jailed VM's files live in its jail; the shim builds the jail's root
        // before the jailer runs.
        // Otherwise they live in a short directory of their own: a bundle's path
        // (containerd's state directory, a namespace, a 64-digit id) leaves no
        // room for a Unix socket's 107 bytes.
        let key = jail::jail_id(&self.namespace, &req.id);
        let (files, record) = match &settings.jailer {
            Some(js) => (jail::jail_root(js, &settings.spry_binary(), &key), "jail"),
            None => (settings.run_dir.join(&key), "files"),
        };
        let jail_id = settings.jailer.as_ref().map(|_| key.clone());
        std::fs::write(dir.join(record), files.as_os_str().as_encoded_bytes())
            .map_err(|e| format!("cannot record the VM's directory: {e}"))?;
        std::fs::create_dir_all(&files)
            .map_err(|e| format!("cannot create {}: {e}", files.display()))?;
        let read_only = oci
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let (file_mounts, volumes) = spec::file_mounts(oci);
        let (files_disk, skipped) =
            rootfs::files_disk(&file_mounts, &files).map_err(|e| e.to_string())?;
        for path in skipped.iter().chain(&volumes) {
            log::warn!(
                "{}: mount {} is not in the VM (only single files are bound in)",
                req.id,
                path.display()
            );
        }
        let layers = settings
            .image_cache
            .as_ref()
            .and_then(|cache| Some((cache, rootfs::image_layers(&req.rootfs)?)));
        let (disk, cow) = match layers {
            Some((cache, layers)) => {
                let (image, built) = rootfs::cached_image(cache, &layers, settings.disk_slack_mib)
                    .map_err(|e| e.to_string())?;
                log::info!(
                    "{}: image {} ({}) after {} ms",
                    req.id,
                    image.display(),
                    if built { "built" } else { "cached" },
                    t0.elapsed().as_millis()
                );
                (image, true)
            }
            None => {
                rootfs::mount_snapshot(&req.rootfs, &tree).map_err(|e| e.to_string())?;
                let disk = files.join(DISK);
                let made = rootfs::make_image(&tree, &disk, settings.disk_slack_mib);
                if !req.rootfs.is_empty() {
                    rootfs::unmount_snapshot(&tree);
                }
                let disk_bytes = made.map_err(|e| e.to_string())?;
                log::info!(
                    "{}: root disk of {} MiB copied in {} ms",
                    req.id,
                    disk_bytes >> 20,
                    t0.elapsed().as_millis()
                );
                (disk, false)
            }
        };
        let network = match spec::netns(oci) {
            Some(netns) => {
                let owner = settings.jailer.as_ref().map(|js| js.ids(&key).0);
                network::attach(&netns, owner).map_err(|e| e.to_string())?
            }
            None => None,
        };
        if let Some(net) = &network {
            let text = serde_json::to_string(net).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("network.json"), text)
                .map_err(|e| format!("cannot record the network: {e}"))?;
        }
        let hostname = oci
            .hostname()
            .clone()
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            })
            .unwrap_or_else(|| req.id.chars().take(12).collect());
        let vm_spec = VmSpec {
            settings,
            dir,
            files: &files,
            jail_id: jail_id.as_deref(),
            disk: &disk,
            cow,
            files_disk: files_disk.as_deref(),
            read_only,
            hostname: &hostname,
            vcpus: spec::annotation(oci, "io.spry.vcpus").unwrap_or(settings.vcpus),
            mem_mib: spec::annotation(oci, "io.spry.mem_mib").unwrap_or(settings.mem_mib),
            network: network.as_ref(),
        };
        let mut vm = Vm::spawn(&vm_spec).map_err(|e| e.to_string())?;
        let record = format!("{} {}", vm.pid(), start_time(vm.pid()).unwrap_or(0));
        std::fs::write(dir.join("spry.pid"), record)
            .map_err(|e| format!("cannot record the VM's pid: {e}"))?;
        vm.wait_ready(Duration::from_secs(settings.boot_timeout_s))
            .map_err(|e| e.to_string())?;
        log::info!(
            "{}: VM {} ready {} ms after create",
            req.id,
            vm.pid(),
            t0.elapsed().as_millis()
        );
        Ok((vm, network))
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let inner = &self.0;
        if lock(&inner.containers).contains_key(&req.id) {
            return Err(failed(format!("container {} already exists", req.id)));
        }
        let container = inner
            .create(&req)
            .map_err(|e| other(format!("spry: cannot create container {}: {e}", req.id)))?;
        let pid = container.vm_pid;
        lock(&inner.containers).insert(req.id.clone(), Arc::new(container));
        inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let inner = Arc::clone(&self.0);
        let c = inner.container(&req.id)?;
        let process = c.process(&req.exec_id)?;
        if c.placeholder {
            process.start_placeholder();
        } else {
            let (this, container, exec_id) =
                (Arc::clone(&inner), Arc::clone(&c), req.exec_id.clone());
            let on_exit = move |exit: Exit| {
                this.publish_exit(&container, &exec_id, exit);
                if exec_id.is_empty() {
                    // The container's init is gone: so is the container, as
                    // with runc, where its pid namespace takes every other
                    // process along.
                    for (exec_id, exit) in container.stop_vm() {
                        this.publish_exit(&container, &exec_id, exit);
                    }
                }
            };
            process
                .start(&c.vsock, on_exit)
                .map_err(|e| other(format!("spry: cannot start {}: {e}", req.id)))?;
        }
        if req.exec_id.is_empty() {
            inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: c.vm_pid,
                    ..Default::default()
                }),
            );
        } else {
            inner.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: c.vm_pid,
                    ..Default::default()
                }),
            );
        }
        Ok(StartResponse {
            pid: c.vm_pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let c = self.0.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (status, exit_status, exited_at) = p.status();
        let stdio = p.stdio();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: c.vm_pid,
            status: EnumOrUnknown::new(match status {
                Status::Created => TaskStatus::CREATED,
                Status::Running => TaskStatus::RUNNING,
                Status::Stopped => TaskStatus::STOPPED,
            }),
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: stdio.terminal,
            exit_status,
            exited_at: exited_at.map(timestamp).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let c = self.0.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (exit_status, at) = p.wait();
        Ok(WaitResponse {
            exit_status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<api::Empty> {
        let c = self.0.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if c.placeholder && p.status().0 != Status::Stopped {
            // pause ends on the signals that end a process by default; a
            // placeholder does the same for any but signal 0.
            if req.signal != 0 {
                self.0.end_unstarted(&c, &p, req.signal);
            }
            return Ok(api::Empty::new());
        }
        match p.kill(req.signal) {
            Ok(()) => Ok(api::Empty::new()),
            Err(super::process::ProcessError::Finished) => Err(not_found(format!(
                "process {} of container {} already finished",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            ))),
            Err(super::process::ProcessError::NotStarted) if req.exec_id.is_empty() => {
                // A container killed before it started never runs: end it as
                // the signal would have.
                c.stop_vm();
                self.0.end_unstarted(&c, &p, req.signal);
                Ok(api::Empty::new())
            }
            Err(e) => Err(failed(format!("spry: kill {}: {e}", req.id))),
        }
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let inner = &self.0;
        let c = inner.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (status, exit_status, exited_at) = p.status();
        if status == Status::Running {
            return Err(failed(format!(
                "process {} of container {} is still running",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            )));
        }
        let exited_at = timestamp(exited_at.unwrap_or_else(SystemTime::now));
        if req.exec_id.is_empty() {
            for (exec_id, exit) in c.stop_vm() {
                inner.publish_exit(&c, &exec_id, exit);
            }
            c.clean_up();
            lock(&inner.containers).remove(&req.id);
            inner.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid: c.vm_pid,
                    exit_status,
                    exited_at: MessageField::some(exited_at.clone()),
                    id: req.id.clone(),
                    ..Default::default()
                }),
            );
        } else {
            lock(&c.execs).remove(&req.exec_id);
        }
        Ok(api::DeleteResponse {
            pid: c.vm_pid,
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let inner = &self.0;
        let c = inner.container(&req.id)?;
        if c.placeholder {
            return Err(failed(format!(
                "{} is a pod sandbox, which runs no processes under spry",
                req.id
            )));
        }
        if c.init.status().0 != Status::Running {
            return Err(failed(format!("container {} is not running", req.id)));
        }
        let any = req.spec.as_ref().ok_or_else(|| {
            other(format!(
                "exec {} into {} has no process spec",
                req.exec_id, req.id
            ))
        })?;
        let mut process = spec::process_from_json(&any.value)
            .and_then(|p| spec::exec_request(&p))
            .map_err(|e| other(format!("exec {} into {}: {e}", req.exec_id, req.id)))?;
        // Into the container's PID and mount namespaces, as runc exec does.
        if let Some(container) = process.container.as_mut() {
            container.join_pid = Some(c.init.guest_pid()).filter(|&pid| pid != 0);
        }
        let mut execs = lock(&c.execs);
        if execs.contains_key(&req.exec_id) {
            return Err(failed(format!(
                "exec {} already exists in {}",
                req.exec_id, req.id
            )));
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        execs.insert(req.exec_id.clone(), Arc::new(Process::new(process, stdio)));
        drop(execs);
        inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        // The processes run in the guest, where their pids mean nothing to the
        // host; the host process that holds them all is the VM.
        let c = self.0.container(&req.id)?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: c.vm_pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let c = self.0.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        p.resize(rows, cols)
            .map_err(|e| failed(format!("resize {}: {e}", req.id)))?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The client closed its end of the stdin FIFO before asking; the
        // process's reader sees that end-of-file and passes it on.
        self.0.container(&req.id)?.process(&req.exec_id)?;
        Ok(api::Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let c = self.0.container(&req.id)?;
        let metrics = super::stats::vm_metrics(c.vm_pid)
            .map_err(|e| failed(format!("stats {}: {e}", req.id)))?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| other(format!("stats {}: {e}", req.id)))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.0.container(&req.id).map(|c| c.vm_pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<api::Empty> {
        if lock(&self.0.containers).is_empty() {
            self.0.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
