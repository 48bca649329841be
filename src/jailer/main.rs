//! `spry-jailer`: Firecracker's jailer for spry. It builds a chroot jail for one
//! microVM, puts it in its own cgroup and namespaces, drops every privilege and
//! execs spry inside, taking Firecracker's command line and jail layout so tools
//! written for Firecracker's jailer drive it unchanged.
//!
//! The steps, in order (see `run`), follow Firecracker's `docs/jailer.md`.

mod args;
mod cgroup;
mod chroot;
mod error;
mod namespaces;
mod privileges;
mod process;
mod rlimits;
mod rootless;

use std::fs::File;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::{Cli, JailSpec};
use crate::chroot::DeviceNode;
use crate::error::JailError;

fn main() -> ExitCode {
    // First, before anything can use them: descriptors the caller leaked.
    if let Err(e) = process::close_inherited_fds() {
        return refuse(&e);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("spry-jailer: {}", clap_error_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let spec = match JailSpec::from_cli(cli) {
        Ok(spec) => spec,
        Err(e) => return refuse(&e),
    };
    match run(&spec) {
        Ok(never) => match never {},
        Err(e) => refuse(&e),
    }
}

/// clap's message up to its first blank line (the problem, and for missing
/// arguments their names), on one line; the usage lines that follow add nothing.
fn clap_error_line(text: &str) -> String {
    let problem: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    problem.join(" ").trim_start_matches("error: ").to_owned()
}

fn refuse(e: &JailError) -> ExitCode {
    eprintln!("spry-jailer: {}", e.line());
    ExitCode::FAILURE
}

/// Builds the jail and execs spry in it; returns only on failure.
fn run(spec: &JailSpec) -> Result<std::convert::Infallible, JailError> {
    // 1. Where the cgroup goes, so a missing hierarchy or controller is named before
    //    anything is created.
    let cgroup = spec.cgroup.place(&spec.id)?;
    // 2. The jail directory and spry's own copy of its binary (or, shared, the file
    //    it is mounted on once the jail has a mount namespace).
    chroot::create_jail_dir(&spec.chroot_dir)?;
    let jailed_exec = if spec.share_exec_file {
        chroot::exec_mount_point(&spec.exec_file, &spec.chroot_dir, &spec.exec_name)?
    } else {
        chroot::copy_exec_file(&spec.exec_file, &spec.chroot_dir, &spec.exec_name)?
    };
    // 3. The network namespace: its handle is a host path, so before the jail.
    if let Some(netns) = &spec.netns {
        namespaces::join_netns(netns)?;
    }
    // 4. Resource limits and the cgroup, inherited by everything spry starts; cgroupfs
    //    is out of sight once jailed.
    spec.limits.install()?;
    cgroup.enter()?;
    // 5. What must be opened or read from the host before it leaves view.
    let dev_null = if spec.daemonize {
        Some(File::open("/dev/null").map_err(|source| JailError::Open {
            path: "/dev/null".into(),
            source,
        })?)
    } else {
        None
    };
    let nodes = DeviceNode::from_host();
    // 6. Into the jail, then its directories and device nodes for the jailed user.
    //    Rootless: first a user namespace, in which nodes cannot be made, so the
    //    host's are bind-mounted in before the host leaves view.
    if spec.rootless {
        rootless::enter_user_namespace(spec.uid, spec.gid)?;
    }
    chroot::isolate_mounts(&spec.chroot_dir)?;
    if spec.share_exec_file {
        chroot::bind_exec_file(&spec.exec_file, &spec.chroot_dir, &spec.exec_name)?;
    }
    if spec.rootless {
        rootless::bind_devices(&spec.chroot_dir, &nodes)?;
    }
    chroot::pivot_into(&spec.chroot_dir)?;
    let nodes_to_make = if spec.rootless { &[][..] } else { &nodes[..] };
    chroot::populate(spec.uid, spec.gid, nodes_to_make)?;
    // 7. Detach, and/or become init of a new PID namespace; the pid file (in the jail
    //    root) names the process that will be spry.
    if let Some(dev_null) = dev_null {
        process::daemonize(dev_null)?;
    }
    let pid_file = std::path::Path::new("/").join(format!("{}.pid", spec.exec_name));
    if spec.new_pid_ns {
        namespaces::enter_new_pid_ns(&pid_file, spec.daemonize)?;
    } else {
        // SAFETY: getpid takes no arguments.
        process::write_pid_file(&pid_file, unsafe { libc::getpid() })?;
    }
    // 8. No privileges left, then spry.
    privileges::drop_to(spec.uid, spec.gid, spec.rootless)?;
    Err(process::exec_spry(&jailed_exec, &spec.id, &spec.spry_args))
}
