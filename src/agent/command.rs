//! What `spry exec` and `spry cp` do: find the guest's vsock socket, run the
//! command with this process's stdio, forward signals, apply the timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{ClientError, Session, Signaller};
use super::copy::{self, CopyError};
use super::protocol::ExecRequest;

/// The exit status of `spry exec` and `spry cp` when spry itself (not the
/// command) failed: Docker's choice for its own failures.
pub const FAILED: u8 = 125;

/// How long after `--timeout`'s SIGKILL spry waits for the agent's EXIT.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Errors of finding the guest's vsock socket.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The API socket did not answer `GET /vm/config`.
    #[error("cannot ask {path} for the VM's configuration: {why}")]
    Api {
        /// The API socket.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The VM has no vsock device.
    #[error("the VM behind {0} has no vsock device (PUT /vsock before boot, or a \"vsock\" section in its config)")]
    NoVsock(PathBuf),
    /// Running the command failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Copying failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// How to reach the guest's agent.
#[derive(Debug, Clone)]
pub enum Target {
    /// Through the API socket of the spry running the guest.
    ApiSocket(PathBuf),
    /// Through the vsock device's Unix socket directly.
    VsockSocket(PathBuf),
}

/// The vsock device's Unix socket for `target`.
pub fn vsock_socket(target: &Target) -> Result<PathBuf, CommandError> {
    match target {
        Target::VsockSocket(path) => Ok(path.clone()),
        Target::ApiSocket(api) => {
            let config = get_vm_config(api)?;
            config["vsock"]["uds_path"]
                .as_str()
                .map(PathBuf::from)
                .ok_or_else(|| CommandError::NoVsock(api.clone()))
        }
    }
}

/// `GET /vm/config` on the API socket `api`.
fn get_vm_config(api: &Path) -> Result<serde_json::Value, CommandError> {
    use http_body_util::BodyExt;
    let err = |why: String| CommandError::Api {
        path: api.to_owned(),
        why,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| err(e.to_string()))?;
    runtime.block_on(async {
        let stream = tokio::net::UnixStream::connect(api)
            .await
            .map_err(|e| err(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| err(e.to_string()))?;
        tokio::spawn(conn);
        let request = hyper::Request::get("/vm/config")
            .header(hyper::header::HOST, "localhost")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(err(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        serde_json::from_slice(&body).map_err(|e| err(e.to_string()))
    })
}

/// `spry exec`: runs `request` in the guest with this process's stdin, stdout and
/// stderr; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to spry reach the command's
/// process group; at `timeout` the command is killed. Returns spry's exit status:
/// the command's (128 + signal when a signal ended it).
pub fn exec(
    target: &Target,
    port: u32,
    request: &ExecRequest,
    timeout: Option<Duration>,
) -> Result<u8, CommandError> {
    // Blocked before any thread starts, so that only the forwarding thread's
    // sigwait ever takes them.
    let forwarded = forwarded_signals(request.terminal.is_some());
    // SAFETY: pthread_sigmask with a fully initialised set and no old set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &forwarded, std::ptr::null_mut()) };
    let uds = vsock_socket(target)?;
    let session = Session::open(&uds, port, request)?;
    let signaller = session.signaller();
    std::thread::spawn(move || forward_signals(&forwarded, &signaller));
    if let Some(timeout) = timeout {
        let signaller = session.signaller();
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            let _ = signaller.send(libc::SIGKILL);
            // An agent that cannot even report the kill is given up on.
            std::thread::sleep(KILL_GRACE);
            signaller.abandon();
        });
    }
    // On a guest terminal, this one passes every key through (Ctrl-C becomes the
    // guest terminal's interrupt) until spry returns.
    let _raw = request
        .terminal
        .and_then(|_| crate::terminal::RawTerminal::enter(libc::STDIN_FILENO));
    // The reader thread is left behind when the command ends first: a terminal
    // that never sends EOF must not keep spry waiting.
    session.feed_stdin(std::io::stdin());
    let ended = session.wait(&mut std::io::stdout(), &mut std::io::stderr())?;
    Ok(ended.exit_code())
}

/// The signals passed on to the command; with a terminal also SIGWINCH, which
/// becomes a WINSIZE for the guest terminal.
fn forwarded_signals(terminal: bool) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    let resize = terminal.then_some(libc::SIGWINCH);
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
            .into_iter()
            .chain(resize)
        {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

fn forward_signals(set: &libc::sigset_t, signaller: &Signaller) {
    loop {
        let mut signal = 0;
        // SAFETY: `set` is initialised and `signal` is a valid out pointer.
        if unsafe { libc::sigwait(set, &mut signal) } != 0 {
            return;
        }
        let sent = match (signal, window_size(libc::STDIN_FILENO)) {
            (libc::SIGWINCH, Some((rows, cols))) => signaller.resize(rows, cols),
            (libc::SIGWINCH, None) => Ok(()),
            _ => signaller.send(signal),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// `spry cp`.
pub fn cp(target: &Target, port: u32, src: &str, dst: &str) -> Result<(), CommandError> {
    let uds = vsock_socket(target)?;
    Ok(copy::copy(&uds, port, src, dst)?)
}

/// A command line as an EXEC request; with `terminal`, on a guest terminal of
/// this terminal's size (80x24 when stdin is not one).
pub fn request(
    command: Vec<OsString>,
    env: Vec<OsString>,
    workdir: Option<OsString>,
    terminal: bool,
) -> ExecRequest {
    ExecRequest {
        argv: command,
        env,
        cwd: workdir.unwrap_or_default(),
        terminal: terminal.then(|| window_size(libc::STDIN_FILENO).unwrap_or((24, 80))),
        container: None,
    }
}

/// The size (rows, columns) of the terminal on `fd`, if it is one.
fn window_size(fd: libc::c_int) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which outlives the call.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}
