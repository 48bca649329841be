//! The parts of an OCI runtime spec a spry VM honours, turned into what the
//! guest agent runs: the process (args, env, cwd, user, rlimits, terminal) and
//! the container's host name, root and network namespace.

use std::ffi::OsString;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimit, Process, Spec};
use spry::agent::protocol::{ContainerSpec, ExecRequest, Rlimit};

/// Where the guest's init mounts the container's root disk.
pub const GUEST_ROOT: &str = "/container";

/// Errors in a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read or parsed.
    #[error("cannot load the OCI spec {path}: {why}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// An exec's process spec is not valid JSON of a process.
    #[error("invalid OCI process spec: {0}")]
    Process(String),
    /// The spec has no process.
    #[error("the OCI spec has no process to run")]
    NoProcess,
    /// An rlimit spry does not know.
    #[error("unknown rlimit type {0}")]
    Rlimit(String),
    /// The process has no arguments.
    #[error("the OCI process has no args")]
    NoArgs,
}

/// Reads `bundle/config.json`.
pub fn load(bundle: &str) -> Result<Spec, SpecError> {
    let path = PathBuf::from(bundle).join("config.json");
    Spec::load(&path).map_err(|e| SpecError::Load {
        path,
        why: e.to_string(),
    })
}

/// The network namespace the container is to join, when the spec names one
/// (CNI prepared it); `None` means a new, empty one, so the VM gets no network.
pub fn netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The spec's bind mounts of single files (CRI's /etc/hosts, /etc/resolv.conf,
/// /etc/hostname, a termination log), as (host file, path in the container).
/// A VM cannot share a host file, so these are copied into the root disk;
/// directories (volumes) are not, and are returned in the second list.
pub fn file_mounts(spec: &Spec) -> (Vec<(PathBuf, PathBuf)>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source().as_ref() else {
            continue;
        };
        if !bind {
            continue;
        }
        match std::fs::metadata(source) {
            Ok(meta) if meta.is_file() => files.push((source.clone(), m.destination().clone())),
            _ => skipped.push(m.destination().clone()),
        }
    }
    (files, skipped)
}

/// A per-container override from the spec's annotations, e.g.
/// `io.spry.vcpus`.
pub fn annotation<T: std::str::FromStr>(spec: &Spec, key: &str) -> Option<T> {
    spec.annotations().as_ref()?.get(key)?.parse().ok()
}

/// Parses the JSON process spec of an exec request.
pub fn process_from_json(bytes: &[u8]) -> Result<Process, SpecError> {
    serde_json::from_slice(bytes).map_err(|e| SpecError::Process(e.to_string()))
}

fn rlimit(limit: &PosixRlimit) -> Result<Rlimit, SpecError> {
    let name = serde_json::to_value(limit.typ())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let resource = Rlimit::resource_by_name(&name).ok_or(SpecError::Rlimit(name))?;
    Ok(Rlimit {
        resource,
        soft: limit.soft(),
        hard: limit.hard(),
    })
}

/// What the agent runs for `process`, inside the container's root, and
/// whether it wants a terminal.
pub fn exec_request(process: &Process) -> Result<ExecRequest, SpecError> {
    let argv: Vec<OsString> = process
        .args()
        .as_ref()
        .map(|a| a.iter().map(OsString::from).collect())
        .unwrap_or_default();
    if argv.is_empty() {
        return Err(SpecError::NoArgs);
    }
    let env = process
        .env()
        .as_ref()
        .map(|e| e.iter().map(OsString::from).collect())
        .unwrap_or_default();
    let user = process.user();
    let rlimits = process
        .rlimits()
        .as_ref()
        .map(|r| r.iter().map(rlimit).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let terminal = process.terminal().unwrap_or(false).then(|| {
        process
            .console_size()
            .as_ref()
            .map(|b| {
                (
                    u16::try_from(b.height()).unwrap_or(u16::MAX),
                    u16::try_from(b.width()).unwrap_or(u16::MAX),
                )
            })
            .unwrap_or((24, 80))
    });
    Ok(ExecRequest {
        argv,
        env,
        cwd: process.cwd().as_os_str().to_owned(),
        terminal,
        container: Some(ContainerSpec {
            root: GUEST_ROOT.into(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            rlimits,
            umask: user.umask(),
            replace_env: true,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            new_pid_namespace: false,
            join_pid: None,
        }),
    })
}

/// The init process's request: as [`exec_request`], but pid 1 of its own pid
/// namespace, as the OCI spec makes a container's process.
pub fn init_request(spec: &Spec) -> Result<ExecRequest, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let mut request = exec_request(process)?;
    if let Some(container) = request.container.as_mut() {
        container.new_pid_namespace = true;
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESS: &str = r#"{
        "terminal": false,
        "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 11], "umask": 18},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/bin", "A=b"],
        "cwd": "/work",
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": true
    }"#;

    #[test]
    fn a_process_spec_becomes_the_agents_request() {
        let p = process_from_json(PROCESS.as_bytes()).unwrap();
        let r = exec_request(&p).unwrap();
        assert_eq!(r.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(r.env, ["PATH=/bin", "A=b"]);
        assert_eq!(r.cwd, "/work");
        assert_eq!(r.terminal, None);
        let c = r.container.unwrap();
        assert_eq!((c.uid, c.gid), (1000, 100));
        assert_eq!(c.additional_gids, [10, 11]);
        assert_eq!(c.umask, Some(18));
        assert!(c.replace_env && c.no_new_privileges && !c.new_pid_namespace);
        assert_eq!(c.root, GUEST_ROOT);
        let nofile = libc::RLIMIT_NOFILE;
        assert_eq!(
            c.rlimits,
            [Rlimit {
                resource: nofile,
                soft: 512,
                hard: 1024
            }]
        );
    }

    #[test]
    fn a_terminal_gets_the_console_size_or_a_default() {
        let mut v: serde_json::Value = serde_json::from_str(PROCESS).unwrap();
        v["terminal"] = true.into();
        let p = process_from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(exec_request(&p).unwrap().terminal, Some((24, 80)));
        v["consoleSize"] = serde_json::json!({"height": 50, "width": 132});
        let p = process_from_json(v.to_string().as_bytes()).unwrap();
        assert_eq!(exec_request(&p).unwrap().terminal, Some((50, 132)));
    }

    #[test]
    fn bad_process_specs_are_refused_with_the_reason() {
        assert!(matches!(
            process_from_json(b"{\"args\": 3}"),
            Err(SpecError::Process(_))
        ));
        let mut v: serde_json::Value = serde_json::from_str(PROCESS).unwrap();
        v["args"] = serde_json::json!([]);
        let p = process_from_json(v.to_string().as_bytes()).unwrap();
        assert!(matches!(exec_request(&p), Err(SpecError::NoArgs)));
    }
}
