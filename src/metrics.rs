//! Metrics: cheap counters where things happen (relaxed atomics on the vCPU exit
//! path, plain fields on the devices, which only the event loop touches), and one JSON
//! object per line in the metrics file, written on `FlushMetrics` and every
//! [`FLUSH_INTERVAL`].
//!
//! Like Firecracker's, each line reports what changed since the previous line:
//!
//! ```json
//! {"utc_timestamp_ms": 1700000000000,
//!  "api_server": {"process_startup_time_us": 950, "process_startup_time_cpu_us": 700,
//!                 "requests": 5, "errors": 1},
//!  "vcpu": {"exit_io_in": 10, "exit_io_out": 550, "exit_mmio_read": 0,
//!           "exit_mmio_write": 3, "failures": 0},
//!  "block": {"requests": 0, "read_bytes": 0, "write_bytes": 0, "flushes": 0, "errors": 0},
//!  "block_rootfs": {"requests": 0, ...},
//!  "net": {"rx_frames": 0, "rx_bytes": 0, "tx_frames": 0, "tx_bytes": 0, "tx_dropped": 0},
//!  "net_eth0": {...},
//!  "vsock": {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0,
//!            "malformed": 0, "connections": 0, "refused": 0, "resets": 0},
//!  "logger": {"missed_log_count": 0},
//!  "seccomp": {"num_faults": 0}}
//! ```
//!
//! `vsock` counts the vsock device's packets and stream bytes each way
//! (`rx` towards the guest), packets and chains dropped as malformed, connections
//! made, refused (unbound ports, the connection limit, bad `CONNECT` lines) and
//! reset. `block` and `net` add up every device; `block_<drive_id>` and `net_<iface_id>` are
//! per device. A forbidden system call ends spry at once; its SIGSYS handler adds
//! one last line of its own, `{"utc_timestamp_ms": ..., "seccomp": {"num_faults": 1}}`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde_json::{json, Map, Value};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::MetricsConfig;
use crate::devices::virtio::block::device::BlockCounters;
use crate::devices::virtio::net::device::NetCounters;
use crate::devices::virtio::vsock::VsockCounters;
use crate::sync::lock;
use crate::vmm::Vmm;

/// How often metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Errors of the metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics file or FIFO cannot be opened.
    #[error("metrics.metrics_path: cannot open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line could not be written (a FIFO nobody reads, a full disk).
    #[error("cannot write metrics to {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The periodic timer could not be set up.
    #[error("cannot arm the metrics timer")]
    Timer(#[source] std::io::Error),
}

/// One vCPU's exits by kind. Incremented on the vCPU thread, read by the event loop.
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// KVM_RUN failures, emulation failures and exits spry cannot handle.
    pub failures: AtomicU64,
}

impl VcpuExitCounters {
    /// Adds one to `counter`. Relaxed: nothing is ordered by these counts.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// API server counters, shared by every connection.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
}

static API: ApiCounters = ApiCounters {
    requests: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// The API server's counters.
pub fn api() -> &'static ApiCounters {
    &API
}

/// Wall and CPU time from process start until the API served, in microseconds.
static API_READY: OnceLock<(u64, u64)> = OnceLock::new();

/// Records that the API socket serves now; the first call wins. Returns the wall
/// and CPU microseconds since the process started.
pub fn record_api_ready() -> (u64, u64) {
    *API_READY.get_or_init(|| {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        (
            us(crate::clock::since_start()),
            us(crate::clock::process_cpu_time()),
        )
    })
}

/// Every counter at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// vCPU exits, all vCPUs added up: in, out, mmio read, mmio write, failures.
    pub vcpu: [u64; 5],
    /// Per drive.
    pub blocks: Vec<(String, BlockCounters)>,
    /// Per interface.
    pub nets: Vec<(String, NetCounters)>,
    /// The vsock device's, zeros without one.
    pub vsock: VsockCounters,
    /// API requests, API errors.
    pub api: [u64; 2],
    /// Log lines lost.
    pub missed_logs: u64,
    /// Forbidden system calls caught by the seccomp filters.
    pub seccomp_faults: u64,
}

impl Snapshot {
    /// Reads every counter of `vmm`.
    pub fn of(vmm: &Vmm) -> Snapshot {
        let mut vcpu = [0u64; 5];
        for c in vmm.vcpu_exit_counters() {
            let kinds = [
                &c.io_in,
                &c.io_out,
                &c.mmio_read,
                &c.mmio_write,
                &c.failures,
            ];
            for (sum, counter) in vcpu.iter_mut().zip(kinds) {
                *sum += counter.load(Ordering::Relaxed);
            }
        }
        let devices = vmm.devices();
        Snapshot {
            vcpu,
            blocks: devices
                .blocks
                .iter()
                .map(|b| {
                    let b = lock(b);
                    (b.id().to_owned(), b.counters)
                })
                .collect(),
            nets: devices
                .nets
                .iter()
                .map(|n| {
                    let n = lock(n);
                    (n.id().to_owned(), n.counters)
                })
                .collect(),
            vsock: devices
                .vsock
                .as_ref()
                .map(|(v, _)| lock(v).muxer.counters)
                .unwrap_or_default(),
            api: [
                API.requests.load(Ordering::Relaxed),
                API.errors.load(Ordering::Relaxed),
            ],
            missed_logs: crate::logger::missed_log_count(),
            seccomp_faults: crate::seccomp::fault_count(),
        }
    }
}

fn block_json(now: &BlockCounters, was: &BlockCounters) -> Value {
    json!({
        "requests": now.requests.saturating_sub(was.requests),
        "read_bytes": now.read_bytes.saturating_sub(was.read_bytes),
        "write_bytes": now.write_bytes.saturating_sub(was.write_bytes),
        "flushes": now.flushes.saturating_sub(was.flushes),
        "errors": now.errors.saturating_sub(was.errors),
    })
}

fn net_json(now: &NetCounters, was: &NetCounters) -> Value {
    json!({
        "rx_frames": now.rx_frames.saturating_sub(was.rx_frames),
        "rx_bytes": now.rx_bytes.saturating_sub(was.rx_bytes),
        "tx_frames": now.tx_frames.saturating_sub(was.tx_frames),
        "tx_bytes": now.tx_bytes.saturating_sub(was.tx_bytes),
        "tx_dropped": now.tx_dropped.saturating_sub(was.tx_dropped),
    })
}

fn vsock_json(now: &VsockCounters, was: &VsockCounters) -> Value {
    json!({
        "rx_packets": now.rx_packets.saturating_sub(was.rx_packets),
        "rx_bytes": now.rx_bytes.saturating_sub(was.rx_bytes),
        "tx_packets": now.tx_packets.saturating_sub(was.tx_packets),
        "tx_bytes": now.tx_bytes.saturating_sub(was.tx_bytes),
        "malformed": now.malformed.saturating_sub(was.malformed),
        "connections": now.connections.saturating_sub(was.connections),
        "refused": now.refused.saturating_sub(was.refused),
        "resets": now.resets.saturating_sub(was.resets),
    })
}

fn sum_blocks(list: &[(String, BlockCounters)]) -> BlockCounters {
    list.iter().fold(BlockCounters::default(), |mut s, (_, c)| {
        s.requests += c.requests;
        s.read_bytes += c.read_bytes;
        s.write_bytes += c.write_bytes;
        s.flushes += c.flushes;
        s.errors += c.errors;
        s
    })
}

fn sum_nets(list: &[(String, NetCounters)]) -> NetCounters {
    list.iter().fold(NetCounters::default(), |mut s, (_, c)| {
        s.rx_frames += c.rx_frames;
        s.rx_bytes += c.rx_bytes;
        s.tx_frames += c.tx_frames;
        s.tx_bytes += c.tx_bytes;
        s.tx_dropped += c.tx_dropped;
        s
    })
}

/// The counter of device `id` in `list`, or zeros for a device new since then.
fn previous<T: Default + Copy>(list: &[(String, T)], id: &str) -> T {
    list.iter()
        .find(|(i, _)| i == id)
        .map(|(_, c)| *c)
        .unwrap_or_default()
}

/// The metrics line for the changes from `was` to `now`.
pub fn line(now: &Snapshot, was: &Snapshot, utc_timestamp_ms: u64) -> Value {
    let d = |i: usize| now.vcpu[i].saturating_sub(was.vcpu[i]);
    let (startup_us, startup_cpu_us) = API_READY.get().copied().unwrap_or((0, 0));
    let mut out = Map::new();
    out.insert("utc_timestamp_ms".into(), json!(utc_timestamp_ms));
    out.insert(
        "api_server".into(),
        json!({
            "process_startup_time_us": startup_us,
            "process_startup_time_cpu_us": startup_cpu_us,
            "requests": now.api[0].saturating_sub(was.api[0]),
            "errors": now.api[1].saturating_sub(was.api[1]),
        }),
    );
    out.insert(
        "vcpu".into(),
        json!({
            "exit_io_in": d(0),
            "exit_io_out": d(1),
            "exit_mmio_read": d(2),
            "exit_mmio_write": d(3),
            "failures": d(4),
        }),
    );
    out.insert(
        "block".into(),
        block_json(&sum_blocks(&now.blocks), &sum_blocks(&was.blocks)),
    );
    for (id, c) in &now.blocks {
        out.insert(
            format!("block_{id}"),
            block_json(c, &previous(&was.blocks, id)),
        );
    }
    out.insert(
        "net".into(),
        net_json(&sum_nets(&now.nets), &sum_nets(&was.nets)),
    );
    for (id, c) in &now.nets {
        out.insert(format!("net_{id}"), net_json(c, &previous(&was.nets, id)));
    }
    out.insert("vsock".into(), vsock_json(&now.vsock, &was.vsock));
    out.insert(
        "logger".into(),
        json!({"missed_log_count": now.missed_logs.saturating_sub(was.missed_logs)}),
    );
    out.insert(
        "seccomp".into(),
        json!({"num_faults": now.seccomp_faults.saturating_sub(was.seccomp_faults)}),
    );
    Value::Object(out)
}

/// The metrics file and what its last line reported.
#[derive(Debug)]
pub struct MetricsSink {
    path: PathBuf,
    file: File,
    last: Snapshot,
}

impl MetricsSink {
    /// Opens the file or FIFO `config` names.
    pub fn open(config: &MetricsConfig) -> Result<MetricsSink, MetricsError> {
        let path = config.metrics_path.clone();
        let file = crate::sink::open(&path).map_err(|source| MetricsError::Open {
            path: path.clone(),
            source,
        })?;
        METRICS_FD.store(file.as_raw_fd(), Ordering::SeqCst);
        Ok(MetricsSink {
            path,
            file,
            last: Snapshot::default(),
        })
    }

    /// Writes the line for what changed since the last one.
    pub fn write(&mut self, now: Snapshot) -> Result<(), MetricsError> {
        let utc_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut text = line(&now, &self.last, utc_ms).to_string();
        text.push('\n');
        // The counts move on even when the line is lost, so the next line does not
        // report them twice.
        self.last = now;
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| MetricsError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for MetricsSink {
    fn drop(&mut self) {
        let _ = METRICS_FD.compare_exchange(
            self.file.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// The open metrics file's descriptor, or -1: for the SIGSYS handler, which may take
/// no lock.
static METRICS_FD: AtomicI32 = AtomicI32::new(-1);

/// The descriptor of the metrics file opened last, or -1 when none is open. The
/// SIGSYS handler writes its last line there.
pub fn metrics_file_fd() -> i32 {
    METRICS_FD.load(Ordering::SeqCst)
}

/// Marks metrics as due at a fixed interval ([`FLUSH_INTERVAL`] in spry), from the
/// event loop.
#[derive(Debug)]
pub struct FlushTimer {
    timer: TimerFd,
    due: Arc<std::sync::atomic::AtomicBool>,
}

impl FlushTimer {
    /// A running timer that sets `due` every `interval`.
    pub fn start(
        due: Arc<std::sync::atomic::AtomicBool>,
        interval: Duration,
    ) -> Result<FlushTimer, MetricsError> {
        let mut timer = TimerFd::new().map_err(|e| MetricsError::Timer(e.into()))?;
        timer
            .reset(interval, Some(interval))
            .map_err(|e| MetricsError::Timer(e.into()))?;
        Ok(FlushTimer { timer, due })
    }
}

impl MutEventSubscriber for FlushTimer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the metrics timer: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Reading clears the expiry count; the fd is readable now, so this cannot block.
        let _ = self.timer.wait();
        self.due.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn snapshot(io_out: u64, drive_reads: u64) -> Snapshot {
        Snapshot {
            vcpu: [0, io_out, 0, 0, 0],
            blocks: vec![(
                "rootfs".into(),
                BlockCounters {
                    read_bytes: drive_reads,
                    ..BlockCounters::default()
                },
            )],
            ..Snapshot::default()
        }
    }

    #[test]
    fn test_line_reports_changes_since_the_previous_line() {
        let was = snapshot(100, 4096);
        let now = snapshot(150, 6144);

        let line = line(&now, &was, 7);

        assert_eq!(line["utc_timestamp_ms"], 7);
        assert_eq!(line["vcpu"]["exit_io_out"], 50);
        assert_eq!(line["block"]["read_bytes"], 2048);
        assert_eq!(line["block_rootfs"]["read_bytes"], 2048);
    }

    #[test]
    fn test_first_line_reports_everything() {
        let now = snapshot(150, 6144);

        let line = line(&now, &Snapshot::default(), 0);

        assert_eq!(line["vcpu"]["exit_io_out"], 150);
        assert_eq!(line["block_rootfs"]["read_bytes"], 6144);
        assert_eq!(line["net"]["rx_bytes"], 0);
    }

    #[test]
    fn test_line_reports_seccomp_faults_as_firecracker_names_them() {
        let now = Snapshot {
            seccomp_faults: 1,
            ..Snapshot::default()
        };

        let line = line(&now, &Snapshot::default(), 0);

        assert_eq!(line["seccomp"]["num_faults"], 1);
    }

    #[test]
    fn test_flush_timer_marks_metrics_due_from_the_event_loop() {
        let due = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timer = FlushTimer::start(due.clone(), Duration::from_millis(5)).unwrap();
        let mut event_loop =
            event_manager::EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
                .unwrap();
        event_manager::SubscriberOps::add_subscriber(&mut event_loop, Arc::new(Mutex::new(timer)));

        let dispatched = event_loop.run_with_timeout(1000).unwrap();

        assert_eq!(dispatched, 1);
        assert!(due.load(Ordering::Relaxed));
    }

    #[test]
    fn test_sink_writes_one_json_object_per_line() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/spry-metrics-").unwrap();
        let path = dir.as_path().join("metrics");
        let mut sink = MetricsSink::open(&MetricsConfig {
            metrics_path: path.clone(),
        })
        .unwrap();

        sink.write(snapshot(1, 0)).unwrap();
        sink.write(snapshot(3, 0)).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["vcpu"]["exit_io_out"], 2);
    }
}
