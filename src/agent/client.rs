//! Reaching the guest's agent through the vsock device's Unix socket
//! (Firecracker's hybrid vsock: `CONNECT <port>\n`, answered `OK <port>\n`) and
//! running one command there.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{self, Ended, ExecRequest, Kind, ProtocolError, MAX_CHUNK};

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
}

impl Session {
    /// Greets the agent on `stream` and asks it to run `request`.
    pub fn start(stream: UnixStream, request: &ExecRequest) -> Result<Session, ClientError> {
        let exec = request.encode()?;
        let mut reader = stream.try_clone().map_err(ProtocolError::Io)?;
        let mut writer = stream;
        protocol::write_frame(&mut writer, Kind::Hello, &protocol::hello())
            .map_err(ProtocolError::Io)?;
        let hello = protocol::read_frame(&mut reader)?.ok_or(ClientError::Closed)?;
        if hello.kind == Kind::Failed as u8 {
            return Err(ClientError::Failed(
                String::from_utf8_lossy(&hello.payload).into_owned(),
            ));
        }
        let version = protocol::check_hello(&hello)?;
        if let Some((rows, cols)) = request.terminal {
            if version < protocol::TERMINAL_VERSION {
                return Err(ClientError::NoTerminal(version));
            }
            let size = protocol::window_size(rows, cols);
            protocol::write_frame(&mut writer, Kind::Terminal, &size).map_err(ProtocolError::Io)?;
        }
        protocol::write_frame(&mut writer, Kind::Exec, &exec).map_err(ProtocolError::Io)?;
        Ok(Session {
            reader,
            writer: Arc::new(Mutex::new(writer)),
        })
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
            let frame = protocol::read_frame(&mut self.reader)?.ok_or(ClientError::Closed)?;
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
