//! Protocol version 2 between spry and its guest agent (docs/agent-protocol.md):
//! frames of a kind byte, a little-endian u32 length and a payload. Version 2
//! adds a terminal (TERMINAL, WINSIZE) to version 1, which both sides still speak.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

/// The protocol version this side speaks.
pub const VERSION: u16 = 2;
/// The oldest version this side still speaks (an agent in an older guest image).
pub const OLDEST_VERSION: u16 = 1;
/// The first version with a terminal.
pub const TERMINAL_VERSION: u16 = 2;
/// The vsock port the guest's agent listens on.
pub const DEFAULT_PORT: u32 = 52;
/// The largest STDIN, STDOUT or STDERR payload a side sends.
pub const MAX_CHUNK: usize = 65536;
/// The largest payload a side accepts (an EXEC with a long argv and environment).
pub const MAX_FRAME: u32 = 1 << 20;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Both ways, first: the sender's protocol version (u16 LE).
    Hello = b'H',
    /// Host to agent: the command to run.
    Exec = b'E',
    /// Host to agent: bytes for the command's standard input; empty: its end.
    Stdin = b'I',
    /// Host to agent: a signal (u32 LE) for the command's process group.
    Signal = b'S',
    /// Agent to host: bytes the command wrote to its standard output; empty: its end.
    Stdout = b'O',
    /// Agent to host: bytes the command wrote to its standard error; empty: its end.
    Stderr = b'R',
    /// Agent to host, last: how the command ended (exit code, signal: u32 LE each).
    Exit = b'X',
    /// Agent to host, last: why the command could not run (UTF-8 text).
    Failed = b'F',
    /// Host to agent, before EXEC (version 2): run the command on a new terminal
    /// of this size (rows, columns: u16 LE each).
    Terminal = b'T',
    /// Host to agent (version 2): the terminal's new size (rows, columns).
    Winsize = b'W',
}

/// Errors of the agent protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream failed or ended mid-frame.
    #[error("the agent connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced a payload over [`MAX_FRAME`].
    #[error("the agent sent a frame of {0} bytes (at most {MAX_FRAME})")]
    FrameTooLong(u32),
    /// A frame of a kind this side does not expect at this point.
    #[error("the agent sent an unexpected frame of kind {0:#04x}")]
    Unexpected(u8),
    /// A frame whose payload has the wrong size.
    #[error("the agent sent a {kind:?} frame of {len} bytes")]
    BadPayload {
        /// The frame's kind.
        kind: Kind,
        /// Its payload length.
        len: usize,
    },
    /// The agent speaks another protocol version.
    #[error("the agent speaks protocol version {0}; spry speaks {OLDEST_VERSION} to {VERSION}")]
    Version(u16),
    /// An argument, environment entry or directory holds a NUL byte.
    #[error("{0:?} holds a NUL byte, which cannot reach the guest")]
    Nul(OsString),
    /// The command has no program.
    #[error("no command to run")]
    EmptyCommand,
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind byte (possibly of a later protocol version).
    pub kind: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame payload over 4 GiB")
    })?;
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLong(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        kind: head[0],
        payload,
    }))
}

/// The HELLO payload.
pub fn hello() -> [u8; 2] {
    VERSION.to_le_bytes()
}

/// Checks the agent's HELLO and returns the version it speaks.
pub fn check_hello(frame: &Frame) -> Result<u16, ProtocolError> {
    match (frame.kind, frame.payload.as_slice()) {
        (k, [lo, hi, ..]) if k == Kind::Hello as u8 => match u16::from_le_bytes([*lo, *hi]) {
            v @ OLDEST_VERSION..=VERSION => Ok(v),
            other => Err(ProtocolError::Version(other)),
        },
        (k, p) if k == Kind::Hello as u8 => Err(ProtocolError::BadPayload {
            kind: Kind::Hello,
            len: p.len(),
        }),
        (k, _) => Err(ProtocolError::Unexpected(k)),
    }
}

/// A command for the agent to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program (looked up in the guest's PATH) and its arguments.
    pub argv: Vec<OsString>,
    /// `NAME=value` entries set on top of the agent's environment.
    pub env: Vec<OsString>,
    /// The working directory; empty: `/`.
    pub cwd: OsString,
    /// Run it on a new terminal of this size (rows, columns) instead of pipes.
    pub terminal: Option<(u16, u16)>,
}

/// A TERMINAL or WINSIZE payload.
pub fn window_size(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_le_bytes(), cols.to_le_bytes());
    [r[0], r[1], c[0], c[1]]
}

impl ExecRequest {
    /// The EXEC payload: argc and envc (u32 LE), then each argument, each
    /// environment entry and the directory, NUL-terminated.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        if self.argv.is_empty() {
            return Err(ProtocolError::EmptyCommand);
        }
        let count = |v: &[OsString]| u32::try_from(v.len()).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        out.extend_from_slice(&count(&self.argv).to_le_bytes());
        out.extend_from_slice(&count(&self.env).to_le_bytes());
        for s in self.argv.iter().chain(&self.env).chain([&self.cwd]) {
            if s.as_bytes().contains(&0) {
                return Err(ProtocolError::Nul(s.clone()));
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}

/// How a command ended in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(u8),
    /// A signal ended it.
    Signalled(u8),
}

impl Ended {
    /// Decodes an EXIT payload.
    pub fn decode(payload: &[u8]) -> Result<Ended, ProtocolError> {
        let bad = || ProtocolError::BadPayload {
            kind: Kind::Exit,
            len: payload.len(),
        };
        let word = |at: usize| -> Result<u32, ProtocolError> {
            let bytes = payload.get(at..at + 4).ok_or_else(bad)?;
            Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        if payload.len() != 8 {
            return Err(bad());
        }
        let (code, signal) = (word(0)?, word(4)?);
        match (u8::try_from(code), u8::try_from(signal)) {
            (Ok(code), Ok(0)) => Ok(Ended::Exited(code)),
            (Ok(0), Ok(signal)) => Ok(Ended::Signalled(signal)),
            _ => Err(bad()),
        }
    }

    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn exit_code(self) -> u8 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signalled(signal) => 128u8.saturating_add(signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frames_round_trip_and_a_clean_end_is_none() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Stdin, b"abc").unwrap();
        write_frame(&mut buf, Kind::Stdin, b"").unwrap();
        let mut r = buf.as_slice();
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((f.kind, f.payload.as_slice()), (b'I', &b"abc"[..]));
        assert_eq!(read_frame(&mut r).unwrap().unwrap().payload, b"");
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn test_truncated_and_oversized_frames_are_errors() {
        let mut r: &[u8] = &[b'O', 5, 0, 0, 0, b'x'];
        assert!(matches!(read_frame(&mut r), Err(ProtocolError::Io(_))));
        let mut r: &[u8] = &[b'O', 5];
        assert!(matches!(read_frame(&mut r), Err(ProtocolError::Io(_))));
        let mut r: &[u8] = &[b'O', 0, 0, 0, 0x10];
        assert!(matches!(
            read_frame(&mut r),
            Err(ProtocolError::FrameTooLong(0x1000_0000))
        ));
    }

    #[test]
    fn test_exec_request_encoding_matches_the_protocol() {
        let req = ExecRequest {
            argv: vec!["ls".into(), "-l".into()],
            env: vec!["A=1".into()],
            cwd: "/tmp".into(),
            terminal: None,
        };
        let mut want = vec![2, 0, 0, 0, 1, 0, 0, 0];
        want.extend_from_slice(b"ls\0-l\0A=1\0/tmp\0");
        assert_eq!(req.encode().unwrap(), want);
        let nul = ExecRequest {
            argv: vec!["a\0b".into()],
            ..ExecRequest::default()
        };
        assert!(matches!(nul.encode(), Err(ProtocolError::Nul(_))));
        assert!(matches!(
            ExecRequest::default().encode(),
            Err(ProtocolError::EmptyCommand)
        ));
    }

    #[test]
    fn test_exit_payloads_decode_and_malformed_ones_are_refused() {
        assert_eq!(
            Ended::decode(&[3, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Ended::Exited(3)
        );
        let killed = Ended::decode(&[0, 0, 0, 0, 9, 0, 0, 0]).unwrap();
        assert_eq!((killed, killed.exit_code()), (Ended::Signalled(9), 137));
        assert!(Ended::decode(&[0; 7]).is_err());
        assert!(Ended::decode(&[1, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(Ended::decode(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn test_hello_of_another_version_is_refused() {
        let frame = |payload: Vec<u8>| Frame {
            kind: b'H',
            payload,
        };
        assert_eq!(check_hello(&frame(hello().to_vec())).ok(), Some(VERSION));
        assert_eq!(check_hello(&frame(vec![1, 0])).ok(), Some(1));
        assert!(matches!(
            check_hello(&frame(vec![3, 0])),
            Err(ProtocolError::Version(3))
        ));
        assert!(matches!(
            check_hello(&frame(vec![0, 0])),
            Err(ProtocolError::Version(0))
        ));
        assert_eq!(window_size(24, 0x150), [24, 0, 0x50, 1]);
        assert!(check_hello(&frame(vec![1])).is_err());
        assert!(check_hello(&Frame {
            kind: b'O',
            payload: vec![1, 0]
        })
        .is_err());
    }
}
