//! Everything that can stop the jailer. Each variant names the step and the path or
//! value it was working on, so the single line the jailer prints is enough to act on.

use std::io;
use std::path::PathBuf;

/// Why `spry-jailer` refused to run or could not finish building the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// `--id` breaks Firecracker's rule.
    #[error("invalid --id {0:?}: use 1 to 64 ASCII letters, digits or '-'")]
    InvalidId(String),
    /// `--exec-file` cannot be resolved.
    #[error("cannot use --exec-file {}", .path.display())]
    ExecFile {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be resolved.
        #[source]
        source: io::Error,
    },
    /// `--exec-file` is not a regular file.
    #[error("--exec-file {} is not a regular file", .0.display())]
    ExecFileNotRegular(PathBuf),
    /// `--exec-file`'s name cannot name a jail directory.
    #[error("--exec-file {} has no file name usable as a directory name", .0.display())]
    ExecFileName(PathBuf),
    /// `--chroot-base-dir` cannot be resolved.
    #[error("cannot use --chroot-base-dir {}", .path.display())]
    ChrootBase {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be resolved.
        #[source]
        source: io::Error,
    },
    /// `--chroot-base-dir` is not a directory.
    #[error("--chroot-base-dir {} is not a directory", .0.display())]
    ChrootBaseNotDir(PathBuf),
    /// `--netns` names nothing that exists.
    #[error("cannot use --netns {}", .path.display())]
    Netns {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: io::Error,
    },
    /// `--cgroup-version` is neither 1 nor 2.
    #[error("invalid --cgroup-version {0:?}: use 1 or 2")]
    CgroupVersion(String),
    /// `--parent-cgroup` is not a plain relative path.
    #[error("invalid --parent-cgroup {0:?}: use a relative path without '.' or '..'")]
    ParentCgroup(String),
    /// A `--cgroup` argument is not `<file>=<value>` with a plain file name.
    #[error("invalid --cgroup {0:?}: use <controller>.<file>=<value>, e.g. memory.max=256M")]
    CgroupSetting(String),
    /// A `--resource-limit` argument is not `fsize=<n>` or `no-file=<n>`.
    #[error("invalid --resource-limit {0:?}: use fsize=<bytes> or no-file=<count>")]
    ResourceLimit(String),
    /// Building a jail needs root, unless `--rootless`.
    #[error("spry-jailer needs root to build a jail (or --rootless, to build one as this user)")]
    NotRoot,
    /// `--rootless` can only run spry as the calling user.
    #[error("--rootless runs spry as the calling user: use --uid {uid} --gid {gid}")]
    RootlessIds {
        /// The caller's uid.
        uid: u32,
        /// The caller's gid.
        gid: u32,
    },
    /// `--rootless` cannot join a network namespace.
    #[error(
        "--rootless cannot use --netns (joining a namespace needs CAP_SYS_ADMIN over it); spry \
         stays in the caller's network namespace, where taps made for the user (ip tuntap add \
         NAME mode tap user UID) work"
    )]
    RootlessNetns,
    /// Inherited descriptors could not be closed.
    #[error("cannot close inherited file descriptors")]
    CloseFds(#[source] io::Error),
    /// A directory of the jail could not be created or prepared.
    #[error("cannot create directory {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The exec file could not be copied into the jail.
    #[error("cannot copy {} to {}", .from.display(), .to.display())]
    CopyExecFile {
        /// The host's exec file.
        from: PathBuf,
        /// Its copy in the jail.
        to: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A file the jailer needs could not be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// `setns` into the network namespace failed.
    #[error("cannot join the network namespace {}", .path.display())]
    JoinNetns {
        /// The namespace handle.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A resource limit could not be set.
    #[error("cannot set resource limit {resource}={value}")]
    Rlimit {
        /// `fsize` or `no-file`.
        resource: &'static str,
        /// The limit.
        value: u64,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// No cgroup hierarchy of the kind needed is mounted.
    #[error("no {what} is mounted (see {mountinfo})")]
    NoCgroupHierarchy {
        /// The hierarchy looked for.
        what: String,
        /// Where the mounts were looked up.
        mountinfo: &'static str,
    },
    /// A `--cgroup` file belongs to a controller the v2 hierarchy does not offer.
    #[error(
        "cgroup controller {controller:?} (for --cgroup {file}) is not available in the cgroup v2 \
         hierarchy at {} (it offers: {available:?})",
        .hierarchy.display()
    )]
    ControllerUnavailable {
        /// The controller, e.g. `memory`.
        controller: String,
        /// The `--cgroup` file that needs it.
        file: String,
        /// The cgroup2 mount point.
        hierarchy: PathBuf,
        /// What `cgroup.controllers` lists there.
        available: String,
    },
    /// A cgroup file could not be written.
    #[error("cannot write {value:?} to {}", .path.display())]
    CgroupWrite {
        /// The cgroup file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A step of moving into the jail failed.
    #[error("cannot build the jail at {}: {step} failed", .path.display())]
    Jail {
        /// The system call or step, e.g. `pivot_root`.
        step: &'static str,
        /// The jail root.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A device node could not be created in the jail.
    #[error("cannot create device node {path} in the jail")]
    Mknod {
        /// The node, as the jailed process sees it.
        path: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Ownership could not be handed to the jailed user.
    #[error("cannot give {} to {uid}:{gid}", .path.display())]
    Chown {
        /// The file, as the jailed process sees it.
        path: PathBuf,
        /// The target uid.
        uid: u32,
        /// The target gid.
        gid: u32,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A process step (fork, setsid, a new PID namespace, stdio to /dev/null) failed.
    #[error("cannot {step}")]
    Process {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The pid file could not be written.
    #[error("cannot write the pid file {}", .path.display())]
    PidFile {
        /// The pid file, as the jailed process sees it.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Dropping to the target user failed; the jailer never execs with privileges.
    #[error("cannot drop privileges to {uid}:{gid}: {step} failed")]
    DropPrivileges {
        /// The call that failed.
        step: &'static str,
        /// The target uid.
        uid: u32,
        /// The target gid.
        gid: u32,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// exec of the jailed binary failed.
    #[error("cannot exec {} inside the jail", .path.display())]
    Exec {
        /// The binary, as the jailed process sees it.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl JailError {
    /// The error and its causes on one line, for the jailer's single refusal line.
    pub fn line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            line.push_str(": ");
            line.push_str(&c.to_string());
            cause = c.source();
        }
        line
    }
}
