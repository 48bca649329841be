//! The `spry` command: boot a microVM from a Firecracker-style JSON config, or drive
//! one over Firecracker's REST API on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spry::seccomp::FilterSource;
use spry::Launch;

/// spry: a KVM microVM monitor with container-grade start time.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Boot the VM this Firecracker-style JSON file describes.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve Firecracker's REST API on this Unix socket (created by spry, removed at exit).
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    api_sock: Option<PathBuf>,
    /// Serve no API socket (the default unless --api-sock is given; for Firecracker compatibility).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// The instance id `GET /` reports.
    #[arg(long, value_name = "ID", default_value = spry::DEFAULT_INSTANCE_ID, value_parser = instance_id)]
    id: String,
    /// Accepted for Firecracker compatibility: spry's boot timer is always on.
    #[arg(long)]
    boot_timer: bool,
    /// Install no seccomp filters: every thread may make any system call (for
    /// debugging; Firecracker's switch).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Confine spry's threads with the filters in this JSON file (Firecracker's
    /// seccompiler format, keys "vmm", "api" and "vcpu") instead of spry's own.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
    /// How much spry logs on stderr.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: log::LevelFilter,
}

/// Firecracker's rule for `--id`: 1 to 64 alphanumerics or `-`.
fn instance_id(text: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err("1 to 64 alphanumerics or '-'".to_owned())
    }
}

fn main() -> ExitCode {
    spry::clock::mark_process_start();
    spry::seccomp::single_malloc_arena();
    let cli = Cli::parse();
    spry::logger::init(cli.log_level);
    let how = match (cli.api_sock, cli.config_file) {
        (Some(api_sock), config_file) => Launch::Api {
            api_sock,
            config_file,
            instance_id: cli.id,
        },
        (None, Some(config_file)) => Launch::ConfigFile(config_file),
        (None, None) => {
            eprintln!(
                "spry: nothing to boot: pass --config-file FILE or --api-sock PATH (see --help)"
            );
            return ExitCode::from(2);
        }
    };
    let seccomp = match (cli.no_seccomp, cli.seccomp_filter) {
        (true, _) => FilterSource::Off,
        (false, Some(path)) => FilterSource::File(path),
        (false, None) => FilterSource::Default,
    };
    match spry::launch(&how, &seccomp) {
        Ok(reason) => {
            log::info!("VM stopped: {reason}");
            if reason.exit_code() != 0 {
                eprintln!("spry: {reason}");
            }
            ExitCode::from(reason.exit_code())
        }
        Err(e) => {
            eprintln!("spry: {}", spry::error_line(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
