//! spry's own log lines: on stderr by default, so they never mix with the guest
//! console on stdout, or in the file or FIFO a `logger` config (`PUT /logger`) names,
//! with the level, format and module filter it sets.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use crate::config::LoggerConfig;
use crate::sync::lock;

/// Errors while reconfiguring the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file or FIFO cannot be opened.
    #[error("logger.log_path: cannot open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The process-wide logger.
struct Logger {
    /// `None`: stderr.
    output: Mutex<Option<File>>,
    show_level: AtomicBool,
    show_origin: AtomicBool,
    /// Only targets under this module path are written.
    module: RwLock<Option<String>>,
    /// Lines a full FIFO or failing file refused.
    missed: AtomicU64,
}

/// The log file's descriptor, or -1 for stderr: for the SIGSYS handler, which may
/// take no lock.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

static LOGGER: Logger = Logger {
    output: Mutex::new(None),
    show_level: AtomicBool::new(true),
    show_origin: AtomicBool::new(false),
    module: RwLock::new(None),
    missed: AtomicU64::new(0),
};

/// Starts logging to stderr at `level`.
pub fn init(level: log::LevelFilter) {
    // A second call (tests) keeps the logger installed first.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Applies `config`; fields it leaves out keep their current values. Nothing changes
/// when the new log file cannot be opened.
pub fn configure(config: &LoggerConfig) -> Result<(), LoggerError> {
    if let Some(path) = &config.log_path {
        let file = crate::sink::open(path).map_err(|source| LoggerError::Open {
            path: path.clone(),
            source,
        })?;
        LOG_FD.store(file.as_raw_fd(), Ordering::SeqCst);
        *lock(&LOGGER.output) = Some(file);
    }
    if let Some(level) = config.level {
        log::set_max_level(level.0);
    }
    if let Some(show) = config.show_level {
        LOGGER.show_level.store(show, Ordering::Relaxed);
    }
    if let Some(show) = config.show_log_origin {
        LOGGER.show_origin.store(show, Ordering::Relaxed);
    }
    if let Some(module) = &config.module {
        *LOGGER
            .module
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(module.clone()).filter(|m| !m.is_empty());
    }
    Ok(())
}

/// The log file's descriptor, or -1 when spry logs to stderr. Log files are never
/// closed once open but to be replaced, so a signal handler may write a last line
/// to this descriptor.
pub fn log_file_fd() -> i32 {
    LOG_FD.load(Ordering::SeqCst)
}

/// Lines lost so far because the log file or FIFO refused them.
pub fn missed_log_count() -> u64 {
    LOGGER.missed.load(Ordering::Relaxed)
}

/// Whether `target` is `module` or inside it (`spry::api` covers `spry::api::server`).
fn in_module(target: &str, module: &str) -> bool {
    target
        .strip_prefix(module)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

impl Logger {
    fn format(&self, record: &log::Record<'_>) -> String {
        let t = crate::clock::since_start();
        let mut line = format!(
            "[spry {:>4}.{:03}ms",
            t.as_millis(),
            t.subsec_micros() % 1000
        );
        if self.show_level.load(Ordering::Relaxed) {
            let _ = write!(line, " {:<5}", record.level());
        }
        if self.show_origin.load(Ordering::Relaxed) {
            let _ = write!(
                line,
                " {}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            );
        }
        let _ = writeln!(line, "] {}", record.args());
        line
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        if metadata.level() > log::max_level() {
            return false;
        }
        // virtio-queue logs errors a guest can trigger at will (a bad ring address,
        // an out-of-range head); spry reports those once per device itself.
        if in_module(metadata.target(), "virtio_queue")
            && log::max_level() < log::LevelFilter::Debug
        {
            return false;
        }
        let module = self.module.read().unwrap_or_else(PoisonError::into_inner);
        module
            .as_deref()
            .is_none_or(|m| in_module(metadata.target(), m))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.format(record);
        let mut output = lock(&self.output);
        let written = match output.as_mut() {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
        if written.is_err() {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_module_filter_covers_submodules_only() {
        assert!(in_module("spry::api", "spry::api"));
        assert!(in_module("spry::api::server", "spry::api"));
        assert!(!in_module("spry::apix", "spry::api"));
        assert!(!in_module("spry::vmm", "spry::api"));
    }

    #[test]
    fn test_unopenable_log_path_is_named() {
        let config = LoggerConfig {
            log_path: Some("/nonexistent/dir/log".into()),
            ..LoggerConfig::default()
        };

        let e = configure(&config).unwrap_err();

        assert_eq!(
            e.to_string(),
            "logger.log_path: cannot open /nonexistent/dir/log"
        );
    }
}
