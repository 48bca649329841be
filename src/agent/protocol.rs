//! Protocol version 3 between spry and its guest agent (docs/agent-protocol.md):
//! frames of a kind byte, a little-endian u32 length and a payload. Version 2
//! adds a terminal (TERMINAL, WINSIZE) to version 1; version 3 runs a command in
//! a container (CONTAINER) and reports its pid (STARTED). Both sides still speak
//! the older versions.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

/// The newest protocol version this side speaks.
pub const VERSION: u16 = 3;
/// The oldest version this side still speaks (an agent in an older guest image).
pub const OLDEST_VERSION: u16 = 1;
/// The first version with a terminal.
pub const TERMINAL_VERSION: u16 = 2;
/// The first version with CONTAINER and STARTED.
pub const CONTAINER_VERSION: u16 = 3;
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
    /// Host to agent, before EXEC (version 3): run the command in a container
    /// ([`ContainerSpec`]).
    Container = b'C',
    /// Agent to host, before any output (version 3): the command's pid in the
    /// guest (u32 LE).
    Started = b'P',
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
    /// A payload over [`MAX_FRAME`], which the agent would refuse.
    #[error("a {kind:?} request of {len} bytes is over the agent's limit of {MAX_FRAME}")]
    TooLarge {
        /// The frame's kind.
        kind: Kind,
        /// Its payload length.
        len: usize,
    },
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

/// Checks the agent's HELLO and returns the version the session speaks: the
/// older of the agent's and this side's ([`VERSION`]).
pub fn check_hello(frame: &Frame) -> Result<u16, ProtocolError> {
    match (frame.kind, frame.payload.as_slice()) {
        (k, [lo, hi, ..]) if k == Kind::Hello as u8 => match u16::from_le_bytes([*lo, *hi]) {
            v @ OLDEST_VERSION.. => Ok(v.min(VERSION)),
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
    /// `NAME=value` entries set on top of the agent's environment (or, with
    /// [`ContainerSpec::replace_env`], the whole environment).
    pub env: Vec<OsString>,
    /// The working directory; empty: `/`. In a container, inside its root.
    pub cwd: OsString,
    /// Run it on a new terminal of this size (rows, columns) instead of pipes.
    pub terminal: Option<(u16, u16)>,
    /// Run it in a container (protocol version 3).
    pub container: Option<ContainerSpec>,
}

/// How the agent runs a command in a container (the CONTAINER frame): in the
/// command's process it sets the rlimits, the umask, chroots into `root`, changes
/// to the working directory, sets the groups, gid and uid, then no_new_privs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's root file system in the guest; empty: no chroot.
    pub root: OsString,
    /// The user the command runs as.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its supplementary groups (all of them: none when empty).
    pub additional_gids: Vec<u32>,
    /// Resource limits, set before anything else.
    pub rlimits: Vec<Rlimit>,
    /// The umask; `None` leaves the agent's.
    pub umask: Option<u32>,
    /// [`ExecRequest::env`] is the whole environment (OCI's semantics), and the
    /// program is looked up in its `PATH`.
    pub replace_env: bool,
    /// Set no_new_privs: setuid binaries and file capabilities no longer grant
    /// anything.
    pub no_new_privileges: bool,
    /// Run the command as pid 1 of a new PID namespace (with a /proc of its own
    /// mounted where the root has a /proc directory). The guest kernel needs
    /// CONFIG_PID_NS; an agent without it answers FAILED.
    pub new_pid_namespace: bool,
    /// Join the PID and mount namespaces of this guest process (a container's
    /// init, as [`Session::guest_pid`](super::client::Session::guest_pid)
    /// reported it), as an exec into a running container does.
    pub join_pid: Option<u32>,
}

/// One resource limit (`setrlimit(2)`); `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource, as Linux numbers it (`RLIMIT_NOFILE` is 7); see
    /// [`Rlimit::resource_by_name`].
    pub resource: u32,
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Linux's resource numbers by their OCI names (the same on every architecture
/// spry's guests run).
const RLIMIT_NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

impl Rlimit {
    /// The resource number of an OCI rlimit type such as `"RLIMIT_NOFILE"`.
    pub fn resource_by_name(name: &str) -> Option<u32> {
        let at = RLIMIT_NAMES.iter().position(|n| *n == name)?;
        u32::try_from(at).ok()
    }
}

/// CONTAINER's flags.
const REPLACE_ENV: u32 = 1;
const NO_NEW_PRIVS: u32 = 1 << 1;
const NEW_PID_NAMESPACE: u32 = 1 << 2;
/// CONTAINER's umask that leaves the agent's.
const KEEP_UMASK: u32 = u32::MAX;

impl ContainerSpec {
    /// The CONTAINER payload, all LE: the root (NUL-terminated), uid, gid,
    /// ngroups and the gids, nrlimits and (resource u32, soft u64, hard u64) each,
    /// umask (`u32::MAX`: unchanged), flags.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        if self.root.as_bytes().contains(&0) {
            return Err(ProtocolError::Nul(self.root.clone()));
        }
        let too_large = |len| ProtocolError::TooLarge {
            kind: Kind::Container,
            len,
        };
        // Counts that do not fit a u32 would be over MAX_FRAME anyway.
        let ngroups = u32::try_from(self.additional_gids.len())
            .map_err(|_| too_large(self.additional_gids.len() * 4))?;
        let nrlimits =
            u32::try_from(self.rlimits.len()).map_err(|_| too_large(self.rlimits.len() * 20))?;
        let mut out = Vec::with_capacity(
            self.root.len() + 25 + 4 * self.additional_gids.len() + 20 * self.rlimits.len(),
        );
        out.extend_from_slice(self.root.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&ngroups.to_le_bytes());
        for gid in &self.additional_gids {
            out.extend_from_slice(&gid.to_le_bytes());
        }
        out.extend_from_slice(&nrlimits.to_le_bytes());
        for limit in &self.rlimits {
            out.extend_from_slice(&limit.resource.to_le_bytes());
            out.extend_from_slice(&limit.soft.to_le_bytes());
            out.extend_from_slice(&limit.hard.to_le_bytes());
        }
        out.extend_from_slice(&self.umask.unwrap_or(KEEP_UMASK).to_le_bytes());
        let flags = [
            (self.replace_env, REPLACE_ENV),
            (self.no_new_privileges, NO_NEW_PRIVS),
            (self.new_pid_namespace, NEW_PID_NAMESPACE),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, bit)| flags | bit);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.join_pid.unwrap_or(0).to_le_bytes());
        if out.len() > MAX_FRAME as usize {
            return Err(too_large(out.len()));
        }
        Ok(out)
    }

    /// Reads a CONTAINER payload as the agent does: the join pid after the
    /// flags may be left out, bytes after a whole one are ignored (a later version may
    /// append fields), flags it does not know are refused.
    pub fn decode(payload: &[u8]) -> Result<ContainerSpec, ProtocolError> {
        let bad = || ProtocolError::BadPayload {
            kind: Kind::Container,
            len: payload.len(),
        };
        let nul = payload.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let root = OsString::from(std::ffi::OsStr::from_bytes(&payload[..nul]));
        let mut rest = &payload[nul + 1..];
        let mut take = |n: usize| -> Result<&[u8], ProtocolError> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut u32_at = || -> Result<u32, ProtocolError> {
            let b = take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let uid = u32_at()?;
        let gid = u32_at()?;
        let ngroups = u32_at()?;
        // No allocation from the count itself: a lying count fails at the end.
        let additional_gids = (0..ngroups)
            .map(|_| u32_at())
            .collect::<Result<Vec<_>, _>>()?;
        let nrlimits = u32_at()?;
        let rlimits = (0..nrlimits)
            .map(|_| {
                let resource = u32_at()?;
                let soft = u64::from(u32_at()?) | u64::from(u32_at()?) << 32;
                let hard = u64::from(u32_at()?) | u64::from(u32_at()?) << 32;
                Ok(Rlimit {
                    resource,
                    soft,
                    hard,
                })
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        let umask = u32_at()?;
        let flags = u32_at()?;
        if flags & !(REPLACE_ENV | NO_NEW_PRIVS | NEW_PID_NAMESPACE) != 0 {
            return Err(bad());
        }
        // Absent (an older host) or shorter than a u32: no join.
        let join_pid = u32_at().ok().filter(|&pid| pid != 0);
        Ok(ContainerSpec {
            root,
            uid,
            gid,
            additional_gids,
            rlimits,
            umask: (umask != KEEP_UMASK).then_some(umask),
            replace_env: flags & REPLACE_ENV != 0,
            no_new_privileges: flags & NO_NEW_PRIVS != 0,
            new_pid_namespace: flags & NEW_PID_NAMESPACE != 0,
            join_pid,
        })
    }
}

/// Decodes a STARTED payload: the command's pid in the guest.
pub fn decode_started(payload: &[u8]) -> Result<u32, ProtocolError> {
    match payload {
        [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => Err(ProtocolError::BadPayload {
            kind: Kind::Started,
            len: payload.len(),
        }),
    }
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
            container: None,
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
        // A newer agent: the session speaks this side's newest.
        assert_eq!(check_hello(&frame(vec![9, 0])).ok(), Some(VERSION));
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

    fn sample_container() -> ContainerSpec {
        ContainerSpec {
            root: "/c".into(),
            uid: 1000,
            gid: 1001,
            additional_gids: vec![5, 6],
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 64,
                hard: u64::MAX,
            }],
            umask: Some(0o027),
            replace_env: true,
            no_new_privileges: false,
            new_pid_namespace: true,
            join_pid: Some(42),
        }
    }

    #[test]
    fn test_container_encoding_matches_the_protocol() {
        let mut want = b"/c\0".to_vec();
        for word in [1000u32, 1001, 2, 5, 6, 1, 7] {
            want.extend_from_slice(&word.to_le_bytes());
        }
        want.extend_from_slice(&64u64.to_le_bytes());
        want.extend_from_slice(&[0xff; 8]);
        // umask 0o027, then flags: replace_env (bit 0) | new PID namespace (bit 2).
        want.extend_from_slice(&[0o27, 0, 0, 0, 0b101, 0, 0, 0]);
        // The process whose namespaces to join.
        want.extend_from_slice(&42u32.to_le_bytes());

        let encoded = sample_container().encode().unwrap();

        assert_eq!(encoded, want);
        assert_eq!(ContainerSpec::decode(&encoded).unwrap(), sample_container());
        // Without the join pid (as an agent reads an older host's payload).
        let older = ContainerSpec::decode(&encoded[..encoded.len() - 4]).unwrap();
        assert_eq!(older.join_pid, None);
    }

    #[test]
    fn test_container_umask_none_is_all_ones_and_a_nul_in_root_is_refused() {
        let keep = ContainerSpec::default().encode().unwrap();
        // umask (none), flags, join pid (none).
        assert_eq!(
            keep[keep.len() - 12..],
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let nul = ContainerSpec {
            root: "/a\0b".into(),
            ..ContainerSpec::default()
        };
        assert!(matches!(nul.encode(), Err(ProtocolError::Nul(_))));
    }

    #[test]
    fn test_malformed_container_payloads_are_refused() {
        let good = sample_container().encode().unwrap();
        // Every truncation before the flags' end, including one that cuts the
        // root's NUL; the join pid after them may be left out (or cut, and
        // then ignored, as the agent does).
        let flags_end = good.len() - 4;
        for len in 0..flags_end {
            assert!(ContainerSpec::decode(&good[..len]).is_err(), "len {len}");
        }
        for len in flags_end..good.len() {
            let spec = ContainerSpec::decode(&good[..len]).expect("decodes without a join pid");
            assert_eq!(spec.join_pid, None, "len {len}");
        }
        // A count far beyond the payload (ngroups = u32::MAX).
        let mut lying = good.clone();
        lying[11..15].copy_from_slice(&[0xff; 4]);
        assert!(ContainerSpec::decode(&lying).is_err());
        // An unknown flag (bit 3).
        let mut flagged = good.clone();
        let at = flagged.len() - 8;
        flagged[at] |= 0b1000;
        assert!(ContainerSpec::decode(&flagged).is_err());
        // Bytes a later version appended are ignored.
        let mut longer = good;
        longer.extend_from_slice(b"later");
        assert_eq!(ContainerSpec::decode(&longer).unwrap(), sample_container());
    }

    #[test]
    fn test_started_payload_is_a_u32() {
        assert_eq!(decode_started(&[0x39, 0x30, 0, 0]).unwrap(), 12345);
        assert!(decode_started(&[1, 2, 3]).is_err());
        assert_eq!(Rlimit::resource_by_name("RLIMIT_NOFILE"), Some(7));
        assert_eq!(Rlimit::resource_by_name("RLIMIT_RTTIME"), Some(15));
        assert_eq!(Rlimit::resource_by_name("NOFILE"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn container() -> impl Strategy<Value = ContainerSpec> {
            let rlimit =
                (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(resource, soft, hard)| {
                    Rlimit {
                        resource,
                        soft,
                        hard,
                    }
                });
            (
                proptest::collection::vec(1u8..=255, 0..64),
                any::<(u32, u32)>(),
                proptest::collection::vec(any::<u32>(), 0..40),
                proptest::collection::vec(rlimit, 0..20),
                // Only the permission bits are a umask; u32::MAX means none.
                proptest::option::of(0u32..=0o777),
                any::<(bool, bool, bool)>(),
                proptest::option::of(1u32..),
            )
                .prop_map(
                    |(root, (uid, gid), gids, rlimits, umask, flags, join_pid)| ContainerSpec {
                        root: OsString::from(std::ffi::OsStr::from_bytes(&root)),
                        uid,
                        gid,
                        additional_gids: gids,
                        rlimits,
                        umask,
                        replace_env: flags.0,
                        no_new_privileges: flags.1,
                        new_pid_namespace: flags.2,
                        join_pid,
                    },
                )
        }

        proptest! {
            #[test]
            fn test_container_encode_decode_round_trips(spec in container()) {
                let encoded = spec.encode().unwrap();
                prop_assert_eq!(ContainerSpec::decode(&encoded).unwrap(), spec);
            }

            #[test]
            fn test_container_decode_of_any_bytes_never_panics(
                bytes in proptest::collection::vec(any::<u8>(), 0..256)
            ) {
                let _ = ContainerSpec::decode(&bytes);
            }
        }
    }
}
