//! The `spry` command: boot a microVM from a Firecracker-style JSON config, or drive
//! one over Firecracker's REST API on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spry::seccomp::FilterSource;
use spry::Launch;

/// spry: a KVM microVM monitor with container-grade start time.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<AgentCommand>,
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

/// Commands for a running guest, through its agent (`spry-agent`, on vsock).
#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Run a command in the running guest with this terminal's stdin, stdout and
    /// stderr; spry exits with the command's status (128 + signal if a signal
    /// ended it; 125 if spry could not run it). Ctrl-C reaches the command.
    Exec {
        #[command(flatten)]
        target: TargetArgs,
        /// Set NAME=VALUE in the command's environment (repeatable).
        #[arg(short, long = "env", value_name = "NAME=VALUE")]
        env: Vec<std::ffi::OsString>,
        /// The command's working directory in the guest (default /).
        #[arg(short, long, value_name = "DIR")]
        workdir: Option<std::ffi::OsString>,
        /// Kill the command after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// Run the command on a terminal in the guest (for interactive programs):
        /// its output, both streams, comes on stdout; this terminal passes every
        /// key through (Ctrl-C interrupts the command) and its size follows.
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
    /// Copy a file or directory (with its modes) into or out of the running
    /// guest: write the guest's side as :PATH. A destination ending in / keeps
    /// the source's name.
    Cp {
        #[command(flatten)]
        target: TargetArgs,
        /// What to copy (a host path, or :PATH in the guest).
        src: String,
        /// Where to (a guest :PATH, or a host path).
        dst: String,
    },
}

/// How `spry exec` and `spry cp` reach the guest.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The API socket of the spry running the guest (its vsock socket is read
    /// from GET /vm/config).
    #[arg(long, value_name = "PATH", required_unless_present = "vsock_uds")]
    api_sock: Option<PathBuf>,
    /// The vsock device's Unix socket (its uds_path), instead of --api-sock.
    #[arg(long, value_name = "PATH", conflicts_with = "api_sock")]
    vsock_uds: Option<PathBuf>,
    /// The vsock port the guest's agent listens on.
    #[arg(long, value_name = "PORT", default_value_t = spry::agent::protocol::DEFAULT_PORT)]
    port: u32,
}

impl TargetArgs {
    /// `--vsock-uds` if given, else `--api-sock` (clap requires one of them).
    fn target(self) -> Option<spry::agent::command::Target> {
        use spry::agent::command::Target;
        match (self.vsock_uds, self.api_sock) {
            (Some(uds), _) => Some(Target::VsockSocket(uds)),
            (None, api) => api.map(Target::ApiSocket),
        }
    }
}

/// Runs `spry exec` or `spry cp`.
fn agent_command(command: AgentCommand) -> ExitCode {
    use spry::agent::command::{self, FAILED};
    let (what, result) = match command {
        AgentCommand::Exec {
            target,
            env,
            workdir,
            timeout,
            tty,
            command: argv,
        } => {
            let timeout = match timeout.map(std::time::Duration::try_from_secs_f64) {
                Some(Err(e)) => {
                    eprintln!("spry exec: --timeout: {e}");
                    return ExitCode::from(FAILED);
                }
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let port = target.port;
            let request = command::request(argv, env, workdir, tty);
            let Some(target) = target.target() else {
                eprintln!("spry exec: pass --api-sock PATH or --vsock-uds PATH");
                return ExitCode::from(FAILED);
            };
            ("exec", command::exec(&target, port, &request, timeout))
        }
        AgentCommand::Cp { target, src, dst } => {
            let port = target.port;
            let Some(target) = target.target() else {
                eprintln!("spry cp: pass --api-sock PATH or --vsock-uds PATH");
                return ExitCode::from(FAILED);
            };
            ("cp", command::cp(&target, port, &src, &dst).map(|()| 0))
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("spry {what}: {e}");
            ExitCode::from(FAILED)
        }
    }
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
    if let Some(command) = cli.command {
        return agent_command(command);
    }
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
