//! spry: a KVM microVM monitor. One process runs one sandbox: guest memory and vCPUs
//! through KVM, a Linux-compatible 64-bit boot, and devices served from an epoll event
//! loop.
#![warn(missing_docs)]

pub mod arch;
pub mod builder;
pub mod clock;
pub mod config;
pub mod devices;
pub mod exit;
pub mod host;
pub mod loader;
pub mod logger;
pub mod resources;
pub mod terminal;
pub mod vmm;
pub mod vstate;

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, VmConfig};
use crate::exit::ExitReason;
use crate::resources::{ResourcesError, VmResources};

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
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    /// The VMM failed while running.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// Installing signal handlers failed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl Error {
    /// Process exit code: 2 for a config the user must fix, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Resources { .. } => 2,
            _ => 1,
        }
    }
}

/// Boots the VM `config_path` describes with its console on stdin/stdout, and
/// returns how it ended.
pub fn run_config_file(config_path: &Path) -> Result<ExitReason, Error> {
    let config = VmConfig::from_file(config_path)?;
    let resources = VmResources::try_from(config).map_err(|source| Error::Resources {
        path: config_path.to_owned(),
        source,
    })?;
    run(resources)
}

/// Boots `resources` with the console on stdin/stdout and runs until the VM stops.
pub fn run(resources: VmResources) -> Result<ExitReason, Error> {
    exit::catch_stop_signals().map_err(Error::Signals)?;
    let _raw_terminal = terminal::RawTerminal::enter(libc::STDIN_FILENO);
    let mut vmm = builder::build_and_start(
        resources,
        Box::new(std::io::stdout()),
        Some(libc::STDIN_FILENO),
    )?;
    Ok(vmm.run()?)
}
