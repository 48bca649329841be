//! The `spry` command: boot a microVM from a Firecracker-style JSON config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// spry: a KVM microVM monitor with container-grade start time.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Boot the VM this Firecracker-style JSON file describes.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API socket (the only mode so far; accepted for Firecracker compatibility).
    #[arg(long)]
    no_api: bool,
    /// Accepted for Firecracker compatibility: spry's boot timer is always on.
    #[arg(long)]
    boot_timer: bool,
    /// How much spry logs on stderr.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: log::LevelFilter,
}

fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

fn main() -> ExitCode {
    spry::clock::mark_process_start();
    let cli = Cli::parse();
    spry::logger::init(cli.log_level);
    let Some(config_file) = cli.config_file else {
        eprintln!("spry: nothing to boot: pass --config-file FILE (see --help)");
        return ExitCode::from(2);
    };
    match spry::run_config_file(&config_file) {
        Ok(reason) => {
            log::info!("VM stopped: {reason}");
            if reason.exit_code() != 0 {
                eprintln!("spry: {reason}");
            }
            ExitCode::from(reason.exit_code())
        }
        Err(e) => {
            eprintln!("spry: {}", error_line(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
