//! The route table: which method and path mean which [`VmmAction`], and how each
//! body is decoded. The table is the router, so the routes the server answers are
//! exactly [`ROUTES`], which the OpenAPI conformance test compares with
//! `resources/openapi.json`.

use hyper::Method;
use serde::de::DeserializeOwned;

use super::action::{
    ActionType, DriveUpdate, InstanceActionInfo, PrebootAction, Query, RuntimeAction, VmState,
    VmStateUpdate, VmmAction,
};
use crate::config::{DriveConfig, NetConfig, VsockConfig};
use crate::resources::valid_id;
use crate::snapshot::vm::SnapshotRollbackParams;

/// Largest request body accepted, as Firecracker's default
/// `--http-api-max-payload-size`.
pub const MAX_PAYLOAD: usize = 51_200;

/// Longest part of a request path quoted back in an error.
const QUOTED_PATH_MAX: usize = 128;

/// Why a request is refused (HTTP 400); the message is the `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No route has this method and path.
    #[error("Invalid request method and/or path: {method} {path}.")]
    UnknownRoute {
        /// The method.
        method: String,
        /// The path (shortened when long).
        path: String,
    },
    /// A PUT or PATCH without a body.
    #[error("Empty {0} request.")]
    EmptyBody(String),
    /// A GET with a body.
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// The body is not the JSON this route takes.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(String),
    /// `/drives/` and the like.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// A path id with other characters than Firecracker allows.
    #[error(
        "API Resource IDs can only contain alphanumeric characters and underscores \
         (at most 64): {0:?} is not one."
    )]
    BadId(String),
    /// The id in the path and the one in the body differ.
    #[error(
        "The id from the path does not match the id from the body! Path: {path:?}, body: {body:?}."
    )]
    IdMismatch {
        /// From the path.
        path: String,
        /// From the body.
        body: String,
    },
    /// The body is larger than [`MAX_PAYLOAD`].
    #[error("The request body is {0} bytes, over the limit of {MAX_PAYLOAD} bytes.")]
    BodyTooLarge(String),
    /// The client stopped sending its body.
    #[error("The request body did not arrive within {0} seconds.")]
    BodyTimeout(u64),
    /// The body could not be read (malformed chunked encoding, a closed connection).
    #[error("The request body could not be read: {0}.")]
    BodyRead(String),
}

impl RequestError {
    /// Whether the connection must close after the answer: the server no longer
    /// knows where the next request starts.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::BodyTooLarge(_)
                | RequestError::BodyTimeout(_)
                | RequestError::BodyRead(_)
        )
    }
}

/// One route: a method, a path template with at most one `{id}` segment, and how
/// its body becomes an action.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template, as in the OpenAPI description (`/drives/{drive_id}`).
    pub path: &'static str,
    decode: fn(Option<&str>, &[u8]) -> Result<VmmAction, RequestError>,
}

impl Route {
    /// The status of a successful answer: 200 with JSON for reads, 204 otherwise.
    pub fn success_status(&self) -> u16 {
        if self.method == Method::GET {
            200
        } else {
            204
        }
    }
}

/// Every route spry serves.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/",
        decode: get_instance_info,
    },
    Route {
        method: Method::GET,
        path: "/version",
        decode: get_version,
    },
    Route {
        method: Method::GET,
        path: "/machine-config",
        decode: get_machine_config,
    },
    Route {
        method: Method::PUT,
        path: "/machine-config",
        decode: put_machine_config,
    },
    Route {
        method: Method::PATCH,
        path: "/machine-config",
        decode: patch_machine_config,
    },
    Route {
        method: Method::PUT,
        path: "/boot-source",
        decode: put_boot_source,
    },
    Route {
        method: Method::PUT,
        path: "/drives/{drive_id}",
        decode: put_drive,
    },
    Route {
        method: Method::PATCH,
        path: "/drives/{drive_id}",
        decode: patch_drive,
    },
    Route {
        method: Method::PUT,
        path: "/network-interfaces/{iface_id}",
        decode: put_network_interface,
    },
    Route {
        method: Method::PUT,
        path: "/vsock",
        decode: put_vsock,
    },
    Route {
        method: Method::PUT,
        path: "/actions",
        decode: put_actions,
    },
    Route {
        method: Method::PATCH,
        path: "/vm",
        decode: patch_vm,
    },
    Route {
        method: Method::GET,
        path: "/vm/config",
        decode: get_vm_config,
    },
    Route {
        method: Method::PUT,
        path: "/logger",
        decode: put_logger,
    },
    Route {
        method: Method::PUT,
        path: "/metrics",
        decode: put_metrics,
    },
    Route {
        method: Method::PUT,
        path: "/snapshot/create",
        decode: put_snapshot_create,
    },
    Route {
        method: Method::PUT,
        path: "/snapshot/load",
        decode: put_snapshot_load,
    },
    // spry's own: not one of Firecracker's routes.
    Route {
        method: Method::PUT,
        path: "/snapshot/rollback",
        decode: put_snapshot_rollback,
    },
];

/// Routes whose body may be empty (it has no field that must be given).
const EMPTY_BODY_ALLOWED: &[&str] = &["/snapshot/rollback"];

/// Decodes one request into the action it asks for.
pub fn parse(method: &Method, path: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    for route in ROUTES.iter().filter(|r| r.method == *method) {
        let Some(param) = match_template(route.path, path) else {
            continue;
        };
        if *method == Method::GET {
            if !body.is_empty() {
                return Err(RequestError::GetWithBody);
            }
        } else if body.is_empty() && !EMPTY_BODY_ALLOWED.contains(&route.path) {
            return Err(RequestError::EmptyBody(method.to_string()));
        }
        return (route.decode)(param, body);
    }
    Err(RequestError::UnknownRoute {
        method: method.to_string(),
        path: path.chars().take(QUOTED_PATH_MAX).collect(),
    })
}

/// `Some(param)` when `path` fits `template`; `param` is the `{...}` segment's text.
fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut param = None;
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(param),
            (Some(w), Some(g)) if w.starts_with('{') => param = Some(g),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// Decodes a JSON body, naming the offending field.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    crate::config::parse(body).map_err(|(field, message)| {
        RequestError::Json(if field == "." {
            message
        } else {
            format!("{field}: {message}")
        })
    })
}

/// The path's id, checked as Firecracker checks it.
fn path_id(param: Option<&str>) -> Result<&str, RequestError> {
    match param.unwrap_or_default() {
        "" => Err(RequestError::EmptyId),
        id if !valid_id(id) => Err(RequestError::BadId(id.to_owned())),
        id => Ok(id),
    }
}

fn same_id(path: &str, body: &str) -> Result<(), RequestError> {
    if path == body {
        return Ok(());
    }
    Err(RequestError::IdMismatch {
        path: path.to_owned(),
        body: body.to_owned(),
    })
}

fn preboot(action: PrebootAction) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::Preboot(action))
}

fn runtime(action: RuntimeAction) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::Runtime(action))
}

fn query(query: Query) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::Query(query))
}

fn get_instance_info(_: Option<&str>, _: &[u8]) -> Result<VmmAction, RequestError> {
    query(Query::InstanceInfo)
}

fn get_version(_: Option<&str>, _: &[u8]) -> Result<VmmAction, RequestError> {
    query(Query::Version)
}

fn get_machine_config(_: Option<&str>, _: &[u8]) -> Result<VmmAction, RequestError> {
    query(Query::MachineConfig)
}

fn get_vm_config(_: Option<&str>, _: &[u8]) -> Result<VmmAction, RequestError> {
    query(Query::VmConfig)
}

fn put_machine_config(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::PutMachineConfig(json(body)?))
}

fn patch_machine_config(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::PatchMachineConfig(json(body)?))
}

fn put_boot_source(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::PutBootSource(json(body)?))
}

fn put_drive(param: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let id = path_id(param)?;
    let drive: DriveConfig = json(body)?;
    same_id(id, &drive.drive_id)?;
    preboot(PrebootAction::PutDrive(drive))
}

fn patch_drive(param: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let id = path_id(param)?;
    let update: DriveUpdate = json(body)?;
    same_id(id, &update.drive_id)?;
    runtime(RuntimeAction::PatchDrive(update))
}

fn put_network_interface(param: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let id = path_id(param)?;
    let iface: NetConfig = json(body)?;
    same_id(id, &iface.iface_id)?;
    preboot(PrebootAction::PutNetworkInterface(iface))
}

fn put_vsock(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let vsock: VsockConfig = json(body)?;
    preboot(PrebootAction::PutVsock(vsock))
}

fn put_actions(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let info: InstanceActionInfo = json(body)?;
    match info.action_type {
        ActionType::InstanceStart => preboot(PrebootAction::InstanceStart),
        ActionType::SendCtrlAltDel => runtime(RuntimeAction::SendCtrlAltDel),
        ActionType::FlushMetrics => runtime(RuntimeAction::FlushMetrics),
    }
}

fn patch_vm(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    let update: VmStateUpdate = json(body)?;
    match update.state {
        VmState::Paused => runtime(RuntimeAction::Pause),
        VmState::Resumed => runtime(RuntimeAction::Resume),
    }
}

fn put_logger(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::PutLogger(json(body)?))
}

fn put_metrics(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::PutMetrics(json(body)?))
}

fn put_snapshot_create(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    runtime(RuntimeAction::CreateSnapshot(json(body)?))
}

fn put_snapshot_load(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    preboot(PrebootAction::LoadSnapshot(json(body)?))
}

fn put_snapshot_rollback(_: Option<&str>, body: &[u8]) -> Result<VmmAction, RequestError> {
    if !body.is_empty() {
        let _: SnapshotRollbackParams = json(body)?;
    }
    runtime(RuntimeAction::RollbackSnapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MachineConfig;

    fn err(method: Method, path: &str, body: &str) -> String {
        parse(&method, path, body.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn test_get_root_is_instance_info() {
        let action = parse(&Method::GET, "/", b"");

        assert_eq!(action, Ok(VmmAction::Query(Query::InstanceInfo)));
    }

    #[test]
    fn test_put_machine_config_decodes_the_body() {
        let action = parse(
            &Method::PUT,
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        );

        let expected = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            ..MachineConfig::default()
        };
        assert_eq!(
            action,
            Ok(VmmAction::Preboot(PrebootAction::PutMachineConfig(
                expected
            )))
        );
    }

    #[test]
    fn test_rollback_takes_an_empty_body_or_an_empty_object() {
        let empty = parse(&Method::PUT, "/snapshot/rollback", b"");
        let object = parse(&Method::PUT, "/snapshot/rollback", b"{}");

        let expected = Ok(VmmAction::Runtime(RuntimeAction::RollbackSnapshot));
        assert_eq!(empty, expected);
        assert_eq!(object, expected);
    }

    #[test]
    fn test_rollback_with_a_field_is_refused() {
        let message = err(
            Method::PUT,
            "/snapshot/rollback",
            r#"{"snapshot_path": "s"}"#,
        );

        assert!(
            message.contains("unknown field `snapshot_path`"),
            "{message}"
        );
    }

    #[test]
    fn test_unknown_path_names_method_and_path() {
        let message = err(Method::GET, "/nope", "");

        assert_eq!(message, "Invalid request method and/or path: GET /nope.");
    }

    #[test]
    fn test_wrong_method_is_an_unknown_route() {
        let message = err(Method::DELETE, "/drives/rootfs", "");

        assert_eq!(
            message,
            "Invalid request method and/or path: DELETE /drives/rootfs."
        );
    }

    #[test]
    fn test_long_path_is_shortened_in_the_message() {
        let path = format!("/{}", "a".repeat(10_000));

        let message = err(Method::GET, &path, "");

        assert!(message.len() < QUOTED_PATH_MAX + 64, "{message}");
    }

    #[test]
    fn test_empty_put_body_is_refused() {
        let message = err(Method::PUT, "/boot-source", "");

        assert_eq!(message, "Empty PUT request.");
    }

    #[test]
    fn test_empty_patch_body_is_refused() {
        let message = err(Method::PATCH, "/vm", "");

        assert_eq!(message, "Empty PATCH request.");
    }

    #[test]
    fn test_get_with_body_is_refused() {
        let message = err(Method::GET, "/machine-config", "{}");

        assert_eq!(message, "GET request cannot have a body.");
    }

    #[test]
    fn test_malformed_json_is_refused() {
        let message = err(Method::PUT, "/boot-source", "{\"kernel_image_path\": ");

        assert!(
            message.starts_with(
                "An error occurred when deserializing the json body of a request: \
                 kernel_image_path: EOF while parsing"
            ),
            "{message}"
        );
    }

    #[test]
    fn test_unknown_field_is_named() {
        let message = err(
            Method::PUT,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}"#,
        );

        assert!(message.contains("unknown field `cpus`"), "{message}");
    }

    #[test]
    fn test_wrong_type_names_the_field() {
        let message = err(
            Method::PUT,
            "/machine-config",
            r#"{"vcpu_count": "2", "mem_size_mib": 128}"#,
        );

        assert!(
            message.contains("vcpu_count: invalid type: string \"2\""),
            "{message}"
        );
    }

    #[test]
    fn test_trailing_garbage_after_json_is_refused() {
        let message = err(Method::PATCH, "/vm", r#"{"state": "Paused"} x"#);

        assert!(message.contains("trailing characters"), "{message}");
    }

    #[test]
    fn test_path_id_differing_from_body_id_is_refused() {
        let message = err(
            Method::PUT,
            "/drives/rootfs",
            r#"{"drive_id": "data", "is_root_device": false, "path_on_host": "/d"}"#,
        );

        assert_eq!(
            message,
            "The id from the path does not match the id from the body! Path: \"rootfs\", body: \"data\"."
        );
    }

    #[test]
    fn test_path_id_with_a_dash_is_refused() {
        let message = err(
            Method::PUT,
            "/network-interfaces/eth-0",
            r#"{"iface_id": "eth-0", "host_dev_name": "tap0"}"#,
        );

        assert!(
            message.starts_with("API Resource IDs can only contain alphanumeric"),
            "{message}"
        );
        assert!(message.contains("\"eth-0\""), "{message}");
    }

    #[test]
    fn test_empty_path_id_is_refused() {
        let message = err(Method::PATCH, "/drives/", r#"{"drive_id": ""}"#);

        assert_eq!(message, "The ID cannot be empty.");
    }

    #[test]
    fn test_actions_split_by_phase() {
        let start = parse(
            &Method::PUT,
            "/actions",
            br#"{"action_type": "InstanceStart"}"#,
        );
        let cad = parse(
            &Method::PUT,
            "/actions",
            br#"{"action_type": "SendCtrlAltDel"}"#,
        );

        assert_eq!(start, Ok(VmmAction::Preboot(PrebootAction::InstanceStart)));
        assert_eq!(cad, Ok(VmmAction::Runtime(RuntimeAction::SendCtrlAltDel)));
    }

    #[test]
    fn test_unknown_action_lists_the_known_ones() {
        let message = err(Method::PUT, "/actions", r#"{"action_type": "Reboot"}"#);

        assert!(
            message
                .contains("action_type: unknown variant `Reboot`, expected one of `InstanceStart`"),
            "{message}"
        );
    }

    #[test]
    fn test_pause_and_resume_are_runtime_actions() {
        let pause = parse(&Method::PATCH, "/vm", br#"{"state": "Paused"}"#);
        let resume = parse(&Method::PATCH, "/vm", br#"{"state": "Resumed"}"#);

        assert_eq!(pause, Ok(VmmAction::Runtime(RuntimeAction::Pause)));
        assert_eq!(resume, Ok(VmmAction::Runtime(RuntimeAction::Resume)));
    }

    #[test]
    fn test_template_matching() {
        assert_eq!(match_template("/", "/"), Some(None));
        assert_eq!(match_template("/vm", "/vm/"), None);
        assert_eq!(match_template("/drives/{id}", "/drives/a"), Some(Some("a")));
        assert_eq!(match_template("/drives/{id}", "/drives/a/b"), None);
        assert_eq!(match_template("/vm/config", "/vm"), None);
    }
}
