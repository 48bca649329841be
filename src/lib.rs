//! spry: a KVM microVM monitor. One process runs one sandbox: guest memory and vCPUs
//! through KVM, a Linux-compatible 64-bit boot, and devices served from an epoll event
//! loop.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod arch;
pub mod builder;
pub mod clock;
pub mod config;
pub mod devices;
pub mod exit;
pub mod host;
pub mod loader;
pub mod logger;
pub mod metrics;
pub mod resources;
pub mod seccomp;
pub mod sink;
pub mod snapshot;
pub mod sync;
pub mod terminal;
pub mod vmm;
pub mod vstate;

use std::path::{Path, PathBuf};

use crate::api::channel::ApiInbox;
use crate::api::controller::{
    Booted, ControllerError, PrebootController, PrebootEnd, RuntimeController,
};
use crate::api::server::ServerError;
use crate::api::socket::SocketError;
use crate::config::{ConfigError, VmConfig};
use crate::exit::ExitReason;
use crate::logger::LoggerError;
use crate::metrics::{MetricsError, MetricsSink};
use crate::resources::{ResourcesError, VmResources};
use crate::seccomp::{FilterSource, SeccompError, SeccompFilters, ThreadKind};

/// The instance id when `--id` is not given (Firecracker's).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Everything that can make `spry` fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is unreadable or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config is well-formed but means something spry cannot do.
    #[error("{path}")]
    Resources {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ResourcesError,
    },
    /// The config file's `logger` cannot be applied.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// The config file's `metrics` file cannot be opened.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The API socket cannot be created.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The API thread cannot start.
    #[error(transparent)]
    ApiServer(#[from] ServerError),
    /// The API channel cannot be created.
    #[error("cannot create the API request channel")]
    ApiChannel(#[source] std::io::Error),
    /// Serving API requests on the VMM thread failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    /// The VMM failed while running.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// Installing signal handlers failed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The seccomp filters cannot be loaded or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

impl Error {
    /// Process exit code: 2 for a config or command line the user must fix, 1 for
    /// everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Resources { .. }
            | Error::Logger(_)
            | Error::Metrics(_)
            | Error::Socket(_) => 2,
            Error::Seccomp(e) if e.is_user_error() => 2,
            _ => 1,
        }
    }
}

/// `e` and its sources on one line, `: `-separated.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// How `spry` was asked to run.
#[derive(Debug, Clone)]
pub enum Launch {
    /// Boot this config file at once and serve no API (`--no-api`).
    ConfigFile(PathBuf),
    /// Serve the API on a socket.
    Api {
        /// The socket path.
        api_sock: PathBuf,
        /// Boot the VM this config file describes at once; without one, the VM is
        /// configured and started over the API.
        config_file: Option<PathBuf>,
        /// The id `GET /` reports.
        instance_id: String,
    },
}

/// Runs one sandbox as `how` says, confined by the `seccomp` filters, and returns
/// how it ended. The API socket serves before the VM exists, and its file is
/// removed on every way out. The filters are compiled first, so a bad filter file
/// stops spry before anything else happens.
pub fn launch(how: &Launch, seccomp: &FilterSource) -> Result<ExitReason, Error> {
    let compiling = std::time::Instant::now();
    let filters = SeccompFilters::load(seccomp)?;
    log::debug!(
        "seccomp filters ({seccomp:?}) ready in {} us",
        compiling.elapsed().as_micros()
    );
    exit::catch_stop_signals().map_err(Error::Signals)?;
    let (api_sock, config_file, instance_id) = match how {
        Launch::ConfigFile(path) => return run_config_file(path, &filters),
        Launch::Api {
            api_sock,
            config_file,
            instance_id,
        } => (api_sock, config_file, instance_id),
    };
    let (listener, _socket_file) = api::socket::bind(api_sock)?;
    let (client, inbox) = api::channel::channel().map_err(Error::ApiChannel)?;
    api::server::start(listener, client, filters.get(ThreadKind::Api).cloned())?;
    let booted = match config_file {
        Some(config_file) => boot_config_file(config_file, &filters)?,
        None => {
            let preboot = PrebootController::new(
                instance_id.clone(),
                Some(libc::STDIN_FILENO),
                filters.clone(),
            );
            match preboot.serve_until_start(&inbox)? {
                PrebootEnd::Started(booted) => *booted,
                PrebootEnd::Signalled(signal) => return Ok(ExitReason::Signal(signal)),
            }
        }
    };
    run_booted(booted, instance_id, Some(inbox), &filters)
}

/// Reads, checks and boots a config file, with its logger and metrics applied first.
fn boot_config_file(config_path: &Path, filters: &SeccompFilters) -> Result<Booted, Error> {
    let config = VmConfig::from_file(config_path)?;
    if let Some(logger_config) = &config.logger {
        logger::configure(logger_config)?;
    }
    let metrics = config.metrics.as_ref().map(MetricsSink::open).transpose()?;
    let resources = VmResources::try_from(config).map_err(|source| Error::Resources {
        path: config_path.to_owned(),
        source,
    })?;
    let vmm = builder::build_and_start(
        resources,
        Box::new(std::io::stdout()),
        Some(libc::STDIN_FILENO),
        filters,
        None,
    )?;
    Ok(Booted { vmm, metrics })
}

/// Runs a booted VM until it stops, serving `inbox`'s API requests if there is one.
/// This thread takes its `vmm` filter once everything the event loop needs is open,
/// before the loop first serves a device.
fn run_booted(
    mut booted: Booted,
    instance_id: &str,
    inbox: Option<ApiInbox>,
    filters: &SeccompFilters,
) -> Result<ExitReason, Error> {
    let _raw_terminal = terminal::RawTerminal::enter(libc::STDIN_FILENO);
    let mut controller = RuntimeController::attach(
        &mut booted.vmm,
        instance_id.to_owned(),
        inbox,
        booted.metrics,
    )?;
    filters.apply(ThreadKind::Vmm, "VMM")?;
    Ok(booted.vmm.run_with(&mut controller)?)
}

/// Boots the VM `config_path` describes with its console on stdin/stdout, and
/// returns how it ended.
fn run_config_file(config_path: &Path, filters: &SeccompFilters) -> Result<ExitReason, Error> {
    let booted = boot_config_file(config_path, filters)?;
    run_booted(booted, DEFAULT_INSTANCE_ID, None, filters)
}
