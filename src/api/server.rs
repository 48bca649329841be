//! The API thread: HTTP/1.1 (hyper) on the Unix socket, on a current-thread tokio
//! runtime that lives on this thread only.
//!
//! Every connection is its own task, so a client that sends nothing, or half a
//! request, ties up nothing but its own connection; keep-alive and pipelined
//! requests are answered in order by hyper. A request becomes a typed action
//! ([`super::routes`]) that the VMM thread answers ([`super::channel`]); this thread
//! never touches KVM or a device.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use super::action::VmmData;
use super::channel::VmmClient;
use super::routes::{self, RequestError, MAX_PAYLOAD};
use crate::seccomp::{Filter, ThreadKind};

/// A client must send a request's headers within this time of the connection
/// becoming ready for one (also closes idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// A client must send a request's body within this time of its headers.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once, so hostile clients cannot
/// take the file descriptors the VMM needs.
pub const MAX_CONNECTIONS: usize = 256;
/// Pause after accept(2) fails (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Errors while starting the API thread.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The tokio runtime could not be built.
    #[error("cannot create the API thread's runtime")]
    Runtime(#[source] std::io::Error),
    /// The socket could not be registered with the runtime.
    #[error("cannot watch the API socket")]
    Listener(#[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
    /// The thread could not confine itself.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The thread ended before saying whether its filter is on.
    #[error("the API thread ended while installing its seccomp filter")]
    Vanished,
}

/// Starts serving `listener` on a new thread; requests go to `vmm`. The thread
/// installs `seccomp` (its filter, when filters are on) before its first accept;
/// this returns once it did.
pub fn start(
    listener: std::os::unix::net::UnixListener,
    vmm: VmmClient,
    seccomp: Option<Filter>,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Listener)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ServerError::Runtime)?;
    // Registered here, so a failure is reported before spry reports the API ready.
    let listener = {
        let _context = runtime.enter();
        UnixListener::from_std(listener).map_err(ServerError::Listener)?
    };
    let (confined_tx, confined_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("spry-api".into())
        .spawn(move || {
            let confined = match &seccomp {
                Some(filter) => crate::seccomp::apply(filter, ThreadKind::Api, "API"),
                None => Ok(()),
            };
            let ok = confined.is_ok();
            let _ = confined_tx.send(confined);
            if ok {
                runtime.block_on(serve(listener, vmm));
            }
        })
        .map_err(ServerError::Thread)?;
    confined_rx.recv().map_err(|_| ServerError::Vanished)??;
    Ok(thread)
}

/// Accepts connections forever.
async fn serve(listener: UnixListener, vmm: VmmClient) {
    let (wall_us, cpu_us) = crate::metrics::record_api_ready();
    log::info!("API serving {wall_us} us after spry started ({cpu_us} us of CPU)");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("API socket: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::warn!("API socket: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let vmm = vmm.clone();
        tokio::spawn(async move {
            serve_connection(TokioIo::new(stream), vmm).await;
            drop(slot);
        });
    }
}

/// Serves one connection until the client closes it or breaks the protocol.
pub async fn serve_connection<I>(io: I, vmm: VmmClient)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let vmm = vmm.clone();
        async move { Ok::<_, Infallible>(answer(request, &vmm).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    if let Err(e) = connection.await {
        log::debug!("API connection closed: {e}");
    }
}

/// The response to one request, counted in the API metrics.
async fn answer(request: Request<Incoming>, vmm: &VmmClient) -> Response<Full<Bytes>> {
    let counters = crate::metrics::api();
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let response = match respond(request, vmm).await {
        Ok(data) => success(data),
        Err(Refusal::Request(e)) => fault(&e.to_string(), e.closes_connection()),
        Err(Refusal::Vmm(message)) => fault(&message, false),
    };
    if !response.status().is_success() {
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// Why a request got a 400.
enum Refusal {
    /// The request itself is wrong.
    Request(RequestError),
    /// The VMM refused the action.
    Vmm(String),
}

impl From<RequestError> for Refusal {
    fn from(e: RequestError) -> Refusal {
        Refusal::Request(e)
    }
}

async fn respond(request: Request<Incoming>, vmm: &VmmClient) -> Result<VmmData, Refusal> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > MAX_PAYLOAD as u64) {
        return Err(RequestError::BodyTooLarge(len.to_string()).into());
    }
    let body = read_body(body).await?;
    let action = routes::parse(&parts.method, parts.uri.path(), &body)?;
    vmm.call(action).await.map_err(Refusal::Vmm)
}

async fn read_body(body: Incoming) -> Result<Bytes, RequestError> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_PAYLOAD).collect())
        .await
        .map_err(|_| RequestError::BodyTimeout(BODY_TIMEOUT.as_secs()))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(RequestError::BodyTooLarge(format!(
            "more than {MAX_PAYLOAD}"
        ))),
        Err(e) => Err(RequestError::BodyRead(e.to_string())),
    }
}

fn base(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static("spry API"));
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = base(status, Bytes::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A 400 with Firecracker's `{"fault_message": ...}` body.
fn fault(message: &str, close: bool) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "fault_message": message }).to_string();
    let mut response = json_response(StatusCode::BAD_REQUEST, body.into_bytes());
    if close {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn success(data: VmmData) -> Response<Full<Bytes>> {
    let encoded = match &data {
        VmmData::Empty => return base(StatusCode::NO_CONTENT, Bytes::new()),
        VmmData::InstanceInfo(info) => serde_json::to_vec(info),
        VmmData::Version(version) => serde_json::to_vec(version),
        VmmData::MachineConfig(config) => serde_json::to_vec(config),
        VmmData::VmConfig(config) => serde_json::to_vec(config),
    };
    match encoded {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => fault(&format!("cannot encode the answer: {e}"), false),
    }
}
