//! Reaching the guest's agent through the vsock device's Unix socket
//! (Firecracker's hybrid vsock: `CONNECT <port>\n`, answered `OK <port>\n`) and
//! running one command there.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{self, Ended, ExecRequest, Frame, Kind, ProtocolError, MAX_CHUNK};

/// How long the vsock device and the agent may take to answer a connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of reaching the agent and running a command through it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The vsock device's Unix socket cannot be reached.
    #[error("cannot connect to the vsock socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The vsock device did not accept the connection to the agent's port.
    #[error(
        "nothing in the guest accepted vsock port {port} through {path} ({answer}); \
         is the guest's spry-agent running?"
    )]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The agent's port.
        port: u32,
        /// What the device answered, or how the connection ended.
        answer: String,
    },
    /// The protocol failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The agent could not run the command.
    #[error("the guest's agent could not run the command: {0}")]
    Failed(String),
    /// The connection ended before the command did.
    #[error("the agent closed the connection before the command ended")]
    Closed,
    /// A terminal was asked of an agent that has none.
    #[error(
        "the guest's agent speaks protocol {0}, which has no terminal (-t); rebuild the \
         guest image for a newer spry-agent"
    )]
    NoTerminal(u16),
    /// A container was asked of an agent that cannot run one.
    #[error(
        "the guest's agent speaks protocol {0}, which has no containers; rebuild the guest \
         image for a newer spry-agent"
    )]
    NoContainer(u16),
    /// The agent is older than this side and, as agents before version 3 do,
    /// refuses a newer host: [`Session::open`] connects again speaking its version.
    #[error(
        "the guest's agent speaks protocol {0} and refuses newer hosts; connect again \
         speaking {0}"
    )]
    OlderAgent(u16),
    /// Writing the command's output on this side failed.
    #[error("writing the command's output: {0}")]
    Output(std::io::Error),
}

/// Connects to the guest's vsock `port` through the device's Unix socket `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let connect_err = |source| ClientError::Connect {
        path: uds.to_owned(),
        source,
    };
    let refused = |answer: String| ClientError::Refused {
        path: uds.to_owned(),
        port,
        answer,
    };
    let mut stream = UnixStream::connect(uds).map_err(connect_err)?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(connect_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(connect_err)?;
    // Byte by byte: what follows the answer line is the agent's stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => return Err(refused("the connection was closed".into())),
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => return Err(refused("an over-long answer".into())),
            Err(e) => return Err(refused(e.to_string())),
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
    if !text.starts_with("OK ") {
        return Err(refused(format!("answer {text:?}")));
    }
    stream.set_read_timeout(None).map_err(connect_err)?;
    Ok(stream)
}

/// Sends SIGNAL frames to a running command; clones share the connection.
#[derive(Clone)]
pub struct Signaller(Arc<Mutex<UnixStream>>);

impl Signaller {
    /// Delivers `signal` to the command's process group in the guest.
    pub fn send(&self, signal: i32) -> std::io::Result<()> {
        let signal = u32::try_from(signal).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "negative signal")
        })?;
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        protocol::write_frame(&mut *w, Kind::Signal, &signal.to_le_bytes())
    }

    /// Tells the command's terminal its new size (the guest's kernel sends it
    /// SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        protocol::write_frame(&mut *w, Kind::Winsize, &protocol::window_size(rows, cols))
    }

    /// Gives up on the agent: the session's wait ends with [`ClientError::Closed`]
    /// and the agent, seeing the connection go, kills the command's process group.
    pub fn abandon(&self) {
        let w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

/// One command running in the guest.
pub struct Session {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    version: u16,
    guest_pid: Option<u32>,
    /// Output (or the end) read while waiting for STARTED, for [`Session::wait`].
    pending: VecDeque<Frame>,
}

impl Session {
    /// Connects to the agent on vsock `port` through `uds` and asks it to run
    /// `request`, speaking [`protocol::VERSION`], or once more on a new
    /// connection the version of an older agent that refused it.
    pub fn open(uds: &Path, port: u32, request: &ExecRequest) -> Result<Session, ClientError> {
        match Session::start(connect(uds, port)?, request) {
            Err(ClientError::OlderAgent(version)) => {
                Session::start_speaking(connect(uds, port)?, request, version)
            }
            started => started,
        }
    }

    /// Greets the agent on `stream` and asks it to run `request`. With an agent
    /// of version 3 or later, returns once the command started (its pid is
    /// [`Session::guest_pid`]) or fails with the agent's reason. An agent older
    /// than version 3 refuses this side's HELLO: [`ClientError::OlderAgent`]
    /// ([`Session::open`] handles it).
    pub fn start(stream: UnixStream, request: &ExecRequest) -> Result<Session, ClientError> {
        Session::start_speaking(stream, request, protocol::VERSION)
    }

    /// [`Session::start`] saying `version` (at most [`protocol::VERSION`]) in
    /// this side's HELLO.
    pub fn start_speaking(
        stream: UnixStream,
        request: &ExecRequest,
        version: u16,
    ) -> Result<Session, ClientError> {
        let speak = version.clamp(protocol::OLDEST_VERSION, protocol::VERSION);
        let exec = request.encode()?;
        let container = request
            .container
            .as_ref()
            .map(protocol::ContainerSpec::encode)
            .transpose()?;
        let mut reader = stream.try_clone().map_err(ProtocolError::Io)?;
        let mut writer = stream;
        protocol::write_frame(&mut writer, Kind::Hello, &speak.to_le_bytes())
            .map_err(ProtocolError::Io)?;
        let hello = protocol::read_frame(&mut reader)?.ok_or(ClientError::Closed)?;
        if hello.kind == Kind::Failed as u8 {
            return Err(ClientError::Failed(
                String::from_utf8_lossy(&hello.payload).into_owned(),
            ));
        }
        let agent = protocol::check_hello(&hello)?;
        // Agents before version 3 answer a newer HELLO with their own, then
        // FAILED, and close: this connection is lost.
        if agent < speak && agent < protocol::CONTAINER_VERSION {
            return Err(ClientError::OlderAgent(agent));
        }
        let version = agent.min(speak);
        if let Some((rows, cols)) = request.terminal {
            if version < protocol::TERMINAL_VERSION {
                return Err(ClientError::NoTerminal(version));
            }
            let size = protocol::window_size(rows, cols);
            protocol::write_frame(&mut writer, Kind::Terminal, &size).map_err(ProtocolError::Io)?;
        }
        if let Some(container) = container {
            if version < protocol::CONTAINER_VERSION {
                return Err(ClientError::NoContainer(version));
            }
            protocol::write_frame(&mut writer, Kind::Container, &container)
                .map_err(ProtocolError::Io)?;
        }
        protocol::write_frame(&mut writer, Kind::Exec, &exec).map_err(ProtocolError::Io)?;
        let mut session = Session {
            reader,
            writer: Arc::new(Mutex::new(writer)),
            version,
            guest_pid: None,
            pending: VecDeque::new(),
        };
        if version >= protocol::CONTAINER_VERSION {
            session.read_started()?;
        }
        Ok(session)
    }

    /// Reads up to STARTED. The agent sends it before any output; output or an
    /// EXIT that came first anyway is kept for [`Session::wait`].
    fn read_started(&mut self) -> Result<(), ClientError> {
        loop {
            let frame = protocol::read_frame(&mut self.reader)?.ok_or(ClientError::Closed)?;
            match frame.kind {
                k if k == Kind::Started as u8 => {
                    self.guest_pid = Some(protocol::decode_started(&frame.payload)?);
                    return Ok(());
                }
                k if k == Kind::Failed as u8 => {
                    let why = String::from_utf8_lossy(&frame.payload).into_owned();
                    return Err(ClientError::Failed(why));
                }
                k if k == Kind::Exit as u8 => {
                    self.pending.push_back(frame);
                    return Ok(());
                }
                k if k == Kind::Stdout as u8 || k == Kind::Stderr as u8 => {
                    self.pending.push_back(frame);
                }
                // Later protocol versions may add kinds; this one skips them.
                _ => {}
            }
        }
    }

    /// The command's pid in the guest (from protocol version 3 on; `None` with an
    /// older agent).
    pub fn guest_pid(&self) -> Option<u32> {
        self.guest_pid
    }

    /// The protocol version of this session: the older of the agent's and this
    /// side's.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// A handle that delivers signals to the command.
    pub fn signaller(&self) -> Signaller {
        Signaller(Arc::clone(&self.writer))
    }

    /// Streams `input` to the command's standard input on a thread of its own,
    /// then closes it.
    pub fn feed_stdin(&self, mut input: impl Read + Send + 'static) -> JoinHandle<()> {
        let writer = Arc::clone(&self.writer);
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; MAX_CHUNK];
            loop {
                let n = match input.read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
                // An empty frame is the end of the input.
                if protocol::write_frame(&mut *w, Kind::Stdin, &chunk[..n]).is_err() || n == 0 {
                    return;
                }
            }
        })
    }

    /// Closes the command's standard input without sending any.
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        protocol::write_frame(&mut *w, Kind::Stdin, &[]).map_err(|e| ProtocolError::Io(e).into())
    }

    /// Copies the command's output to `stdout` and `stderr` until it ends.
    pub fn wait(
        mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<Ended, ClientError> {
        loop {
            let frame = match self.pending.pop_front() {
                Some(frame) => frame,
                None => protocol::read_frame(&mut self.reader)?.ok_or(ClientError::Closed)?,
            };
            let out: &mut dyn Write = match frame.kind {
                k if k == Kind::Stdout as u8 => stdout,
                k if k == Kind::Stderr as u8 => stderr,
                k if k == Kind::Exit as u8 => return Ok(Ended::decode(&frame.payload)?),
                k if k == Kind::Failed as u8 => {
                    let why = String::from_utf8_lossy(&frame.payload).into_owned();
                    return Err(ClientError::Failed(why));
                }
                // Later protocol versions may add kinds; this one skips them.
                _ => continue,
            };
            out.write_all(&frame.payload)
                .and_then(|()| out.flush())
                .map_err(ClientError::Output)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent of protocol version 2 on the other end of `stream`, as the real
    /// one behaved: a newer host's HELLO is answered with HELLO 2 and FAILED;
    /// otherwise the command prints "hi" and exits 0. Returns the kinds the host
    /// sent before EXEC.
    fn version_2_agent(mut stream: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let hello = protocol::read_frame(&mut stream).unwrap().unwrap();
            protocol::write_frame(&mut stream, Kind::Hello, &[2, 0]).unwrap();
            if hello.payload != [2, 0] {
                // The host may have hung up already, having seen HELLO 2.
                let _ = protocol::write_frame(&mut stream, Kind::Failed, b"another");
                return Vec::new();
            }
            let mut kinds = Vec::new();
            while let Some(frame) = protocol::read_frame(&mut stream).unwrap() {
                if frame.kind == Kind::Exec as u8 {
                    break;
                }
                kinds.push(frame.kind);
            }
            protocol::write_frame(&mut stream, Kind::Stdout, b"hi").unwrap();
            protocol::write_frame(&mut stream, Kind::Exit, &[0; 8]).unwrap();
            kinds
        })
    }

    fn request() -> ExecRequest {
        ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        }
    }

    #[test]
    fn test_an_older_agent_refusing_this_hello_is_older_agent() {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = version_2_agent(guest);

        let started = Session::start(host, &request());

        assert!(matches!(started, Err(ClientError::OlderAgent(2))));
        agent.join().unwrap();
    }

    #[test]
    fn test_speaking_version_2_runs_the_command_without_a_pid() {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = version_2_agent(guest);

        let session = Session::start_speaking(host, &request(), 2).unwrap();
        let (pid, version) = (session.guest_pid(), session.version());
        let mut out = Vec::new();
        let ended = session.wait(&mut out, &mut Vec::new()).unwrap();

        assert_eq!((pid, version, ended), (None, 2, Ended::Exited(0)));
        assert_eq!(out, b"hi");
        assert!(agent.join().unwrap().is_empty());
    }

    #[test]
    fn test_a_container_for_a_version_2_agent_is_refused_before_exec() {
        let (host, guest) = UnixStream::pair().unwrap();
        let _agent = version_2_agent(guest);
        let req = ExecRequest {
            container: Some(protocol::ContainerSpec::default()),
            ..request()
        };

        let started = Session::start_speaking(host, &req, 2);

        assert!(matches!(started, Err(ClientError::NoContainer(2))));
    }

    #[test]
    fn test_output_before_started_is_kept_for_wait() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            protocol::read_frame(&mut guest).unwrap();
            protocol::write_frame(&mut guest, Kind::Hello, &[3, 0]).unwrap();
            protocol::read_frame(&mut guest).unwrap(); // EXEC
            protocol::write_frame(&mut guest, Kind::Stderr, b"early").unwrap();
            protocol::write_frame(&mut guest, Kind::Started, &[42, 0, 0, 0]).unwrap();
            protocol::write_frame(&mut guest, Kind::Exit, &[5, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        });

        let session = Session::start(host, &request()).unwrap();
        let pid = session.guest_pid();
        let mut err = Vec::new();
        let ended = session.wait(&mut Vec::new(), &mut err).unwrap();

        assert_eq!((pid, ended), (Some(42), Ended::Exited(5)));
        assert_eq!(err, b"early");
        agent.join().unwrap();
    }
}
