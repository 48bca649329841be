//! `spry-bench`: spry's benchmarks. Boots sandboxes side by side with containers
//! (runc) and other VMMs (QEMU, Firecracker) and reports boot, restart, memory,
//! density, image size and device throughput.
#![warn(missing_docs)]

mod boot;
mod child;
mod cleanup;
mod clock;
mod guest;
mod host;
mod procfs;
mod progress;
mod report;
mod setup;
mod spry_log;
mod stats;
mod systems;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// spry-bench: spry's benchmarks against containers and other VMMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The spry binary (default: $SPRY_BIN, else `spry` next to spry-bench, else
    /// target/release/spry).
    #[arg(long, global = true, value_name = "PATH")]
    spry: Option<PathBuf>,
    /// Where the guest artifacts are (and are built if missing): default <repo>/build.
    #[arg(long, global = true, value_name = "DIR")]
    build_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Bench>,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Issue 2: boot the guest N times with spry; VMM share and own memory.
    Boot {
        /// Boots measured after the warm-up.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Boots before measuring.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Idle boots whose memory is read.
        #[arg(long, default_value_t = 5)]
        memory_runs: usize,
    },
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Everything that can end a benchmark.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
}

fn run(cli: Cli) -> Result<(), BenchError> {
    cleanup::install_interrupt_handler()?;
    let _cleanup = cleanup::CleanupGuard;
    let env = setup::Env::new(cli.spry, cli.build_dir)?;
    if env.spry_is_debug() {
        eprintln!("spry-bench: warning: {} is a debug build; numbers from it are not representative", env.spry.display());
    }
    match cli.command {
        Some(Bench::Boot {
            runs,
            warmup,
            memory_runs,
        }) => {
            let report = boot::run(&env, runs, warmup, memory_runs)?;
            println!("{}", report.render());
        }
        None => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spry-bench: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
