//! The jailer's command line, which is Firecracker's, and its validation into a
//! [`JailSpec`]: every path resolved and checked and every value parsed before
//! the jailer changes anything on the host.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

use crate::cgroup::{CgroupPlan, CgroupSetting, CgroupVersion};
use crate::error::JailError;
use crate::rlimits::Limits;

/// Firecracker's default for `--chroot-base-dir`.
const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// spry-jailer: confine one spry in a chroot jail, cgroup and namespaces, as an
/// unprivileged user, then exec it (Firecracker's jailer command line).
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Arguments after `--` are passed to spry, after `--id <ID>`."
)]
pub struct Cli {
    /// The microVM's id: 1 to 64 ASCII letters, digits or '-'; names the jail and cgroup.
    #[arg(long, value_name = "ID")]
    id: String,
    /// The spry binary to copy into the jail and exec there (statically linked, or
    /// with its libraries placed in the jail).
    #[arg(long, value_name = "FILE")]
    exec_file: PathBuf,
    /// The user spry runs as.
    #[arg(long, value_name = "UID")]
    uid: u32,
    /// The group spry runs as.
    #[arg(long, value_name = "GID")]
    gid: u32,
    /// Where jails are built: <DIR>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    chroot_base_dir: PathBuf,
    /// A network namespace handle (e.g. /var/run/netns/NAME) to join.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Detach: new session, stdin/stdout/stderr on /dev/null.
    #[arg(long)]
    daemonize: bool,
    /// Run spry as init of a new PID namespace; the jailer exits once it is started.
    #[arg(long)]
    new_pid_ns: bool,
    /// The cgroup hierarchy kind for --cgroup: 1 (one per controller, Firecracker's
    /// default) or 2 (unified).
    #[arg(long, value_name = "VERSION", default_value = "1")]
    cgroup_version: String,
    /// A file to write in spry's cgroup, as <file>=<value> (repeatable).
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    cgroups: Vec<String>,
    /// The cgroup (relative to the hierarchy's root) that holds spry's cgroup <id>;
    /// default: the exec file's name.
    #[arg(long, value_name = "PATH")]
    parent_cgroup: Option<PathBuf>,
    /// A resource limit, fsize=<bytes> or no-file=<count> (repeatable).
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    resource_limits: Vec<String>,
    /// Build the jail without root (spry's addition): a user namespace mapping only
    /// the calling user, whose --uid and --gid these must be; host device nodes
    /// bind-mounted; no --netns.
    #[arg(long)]
    rootless: bool,
    /// Bind-mount the exec file read-only into the jail instead of copying it
    /// (spry's addition): no copy at start, and every jail shares the binary's
    /// pages with other spry processes, as unjailed ones do. The default copy keeps
    /// each jail's pages its own, as Firecracker does.
    #[arg(long)]
    share_exec_file: bool,
    /// Arguments for spry.
    #[arg(last = true, value_name = "SPRY ARGS")]
    spry_args: Vec<OsString>,
}

/// A validated jail: what the jailer will build, with every input checked.
#[derive(Debug)]
pub struct JailSpec {
    /// The microVM id.
    pub id: String,
    /// The host's exec file, resolved.
    pub exec_file: PathBuf,
    /// Its file name: the jail's directory, the name inside the jail, the default
    /// parent cgroup.
    pub exec_name: String,
    /// `<chroot_base>/<exec_name>/<id>/root`.
    pub chroot_dir: PathBuf,
    /// The user spry runs as.
    pub uid: u32,
    /// The group spry runs as.
    pub gid: u32,
    /// The network namespace to join.
    pub netns: Option<PathBuf>,
    /// Whether to detach.
    pub daemonize: bool,
    /// Whether spry becomes init of a new PID namespace.
    pub new_pid_ns: bool,
    /// The cgroup to create and enter.
    pub cgroup: CgroupPlan,
    /// The resource limits.
    pub limits: Limits,
    /// Whether to build the jail in a user namespace, without root.
    pub rootless: bool,
    /// Whether the exec file is bind-mounted rather than copied.
    pub share_exec_file: bool,
    /// Arguments passed to spry after `--id`.
    pub spry_args: Vec<OsString>,
}

impl JailSpec {
    /// Checks every argument; nothing on the host has changed yet when this fails.
    pub fn from_cli(cli: Cli) -> Result<JailSpec, JailError> {
        check_id(&cli.id)?;
        let version = match cli.cgroup_version.as_str() {
            "1" => CgroupVersion::V1,
            "2" => CgroupVersion::V2,
            _ => return Err(JailError::CgroupVersion(cli.cgroup_version)),
        };
        if cli.rootless {
            check_rootless(&cli)?;
        } else if effective_uid() != 0 {
            return Err(JailError::NotRoot);
        }
        let (exec_file, exec_name) = check_exec_file(&cli.exec_file)?;
        let chroot_base = check_chroot_base(&cli.chroot_base_dir)?;
        let chroot_dir = chroot_base.join(&exec_name).join(&cli.id).join("root");
        if let Some(netns) = &cli.netns {
            std::fs::metadata(netns).map_err(|source| JailError::Netns {
                path: netns.clone(),
                source,
            })?;
        }
        let parent = match &cli.parent_cgroup {
            Some(parent) => check_parent_cgroup(parent)?,
            None => PathBuf::from(&exec_name),
        };
        let settings = cli
            .cgroups
            .iter()
            .map(|s| parse_cgroup_setting(s))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = Limits::parse(&cli.resource_limits)?;
        Ok(JailSpec {
            id: cli.id,
            exec_file,
            exec_name,
            chroot_dir,
            uid: cli.uid,
            gid: cli.gid,
            netns: cli.netns,
            daemonize: cli.daemonize,
            new_pid_ns: cli.new_pid_ns,
            cgroup: CgroupPlan {
                version,
                parent,
                settings,
            },
            limits,
            rootless: cli.rootless,
            share_exec_file: cli.share_exec_file,
            spry_args: cli.spry_args,
        })
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments.
    unsafe { libc::geteuid() }
}

/// A user namespace made without privilege maps only its maker's ids, and joining
/// a network namespace needs privilege over it.
fn check_rootless(cli: &Cli) -> Result<(), JailError> {
    // SAFETY: getuid and getgid take no arguments.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if (cli.uid, cli.gid) != (uid, gid) {
        return Err(JailError::RootlessIds { uid, gid });
    }
    if cli.netns.is_some() {
        return Err(JailError::RootlessNetns);
    }
    Ok(())
}

/// Firecracker's rule for ids: 1 to 64 ASCII alphanumerics or '-'. The id becomes a
/// directory and a cgroup name, so nothing else may pass.
fn check_id(id: &str) -> Result<(), JailError> {
    let ok =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(JailError::InvalidId(id.to_owned()))
    }
}

/// Resolves the exec file (following symlinks, as exec would) and takes its name.
fn check_exec_file(path: &Path) -> Result<(PathBuf, String), JailError> {
    let resolved = std::fs::canonicalize(path).map_err(|source| JailError::ExecFile {
        path: path.to_owned(),
        source,
    })?;
    let meta = std::fs::metadata(&resolved).map_err(|source| JailError::ExecFile {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(JailError::ExecFileNotRegular(path.to_owned()));
    }
    // The name of the file given (not of the symlink's target) names the jail, as in
    // Firecracker; it must be a plain name that needs no quoting.
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !n.starts_with('.')
        })
        .ok_or_else(|| JailError::ExecFileName(path.to_owned()))?;
    Ok((resolved, name.to_owned()))
}

fn check_chroot_base(path: &Path) -> Result<PathBuf, JailError> {
    let resolved = std::fs::canonicalize(path).map_err(|source| JailError::ChrootBase {
        path: path.to_owned(),
        source,
    })?;
    if !resolved.is_dir() {
        return Err(JailError::ChrootBaseNotDir(path.to_owned()));
    }
    Ok(resolved)
}

/// The parent cgroup stays inside the hierarchy: relative, plain names only.
fn check_parent_cgroup(path: &Path) -> Result<PathBuf, JailError> {
    let plain = path.components().count() > 0
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path.to_owned())
    } else {
        Err(JailError::ParentCgroup(path.display().to_string()))
    }
}

/// `<file>=<value>`: the file is one plain name with a controller prefix
/// (`memory.max`); the value is everything after the first '=', so `io.max`'s
/// `8:0 rbps=1048576` passes.
fn parse_cgroup_setting(text: &str) -> Result<CgroupSetting, JailError> {
    let bad = || JailError::CgroupSetting(text.to_owned());
    let (file, value) = text.split_once('=').ok_or_else(bad)?;
    let plain_name = !file.is_empty()
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let has_controller = file
        .split_once('.')
        .is_some_and(|(c, rest)| !c.is_empty() && !rest.is_empty());
    if !plain_name || !has_controller || value.is_empty() || value.contains('\n') {
        return Err(bad());
    }
    Ok(CgroupSetting {
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_id_of_64_alphanumerics_and_dashes_is_accepted() {
        let id = format!("{}-{}", "a".repeat(32), "B9".repeat(15));
        assert_eq!(id.len(), 63);
        assert!(check_id(&id).is_ok());
    }

    #[test]
    fn test_id_of_65_characters_is_refused() {
        assert!(check_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn test_id_with_a_slash_or_dot_is_refused() {
        assert!(check_id("../etc").is_err());
        assert!(check_id("a.b").is_err());
        assert!(check_id("").is_err());
    }

    #[test]
    fn test_parent_cgroup_with_dotdot_or_root_is_refused() {
        assert!(check_parent_cgroup(Path::new("a/../b")).is_err());
        assert!(check_parent_cgroup(Path::new("/sys")).is_err());
        assert!(check_parent_cgroup(Path::new("./a")).is_err());
        assert!(check_parent_cgroup(Path::new("vms/external")).is_ok());
    }

    #[test]
    fn test_cgroup_value_may_contain_equals_and_spaces() {
        let s = parse_cgroup_setting("io.max=8:0 rbps=1048576").unwrap();
        assert_eq!(
            (s.file.as_str(), s.value.as_str()),
            ("io.max", "8:0 rbps=1048576")
        );
        let s = parse_cgroup_setting("cpu.max=50000 100000").unwrap();
        assert_eq!(s.value, "50000 100000");
    }

    #[test]
    fn test_cgroup_file_with_a_path_or_no_controller_is_refused() {
        assert!(parse_cgroup_setting("../memory.max=1").is_err());
        assert!(parse_cgroup_setting("memory/max=1").is_err());
        assert!(parse_cgroup_setting("max=1").is_err());
        assert!(parse_cgroup_setting("memory.max=").is_err());
        assert!(parse_cgroup_setting("memory.max").is_err());
    }
}
