//! A sandbox process under measurement: spawned as its own process group (so cleanup
//! can kill everything it started), every output line stamped with `CLOCK_MONOTONIC`
//! when it arrives, and reaped with `wait4` for its CPU time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::clock::monotonic_us;

/// Errors running a measured process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The awaited line never came.
    #[error(
        "{program}: no line matching {what} {}; last output:\n{tail}",
        if *exited { "before it exited".to_owned() } else { format!("within {timeout:?}") }
    )]
    NoSignal {
        /// The program.
        program: String,
        /// What was awaited.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// Whether it exited (rather than the time running out).
        exited: bool,
        /// The end of its output.
        tail: String,
    },
    /// The process did not exit in time.
    #[error("{program} did not exit within {timeout:?}; last output:\n{tail}")]
    NoExit {
        /// The program.
        program: String,
        /// How long we waited.
        timeout: Duration,
        /// The end of its output.
        tail: String,
    },
    /// Writing to its stdin failed.
    #[error("cannot write to the stdin of {program}")]
    Stdin {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One line of output (stdout or stderr) and when it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    /// The text, without the newline.
    pub text: String,
    /// `CLOCK_MONOTONIC` when the harness read it, µs.
    pub at_us: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Its wait status.
    pub status: ExitStatus,
    /// `CLOCK_MONOTONIC` right after `wait4` returned, µs.
    pub at_us: u64,
    /// User CPU of it and its reaped descendants, µs.
    pub user_us: u64,
    /// System CPU of it and its reaped descendants, µs.
    pub system_us: u64,
}

impl Exit {
    /// User plus system CPU, ms.
    pub fn cpu_ms(&self) -> f64 {
        (self.user_us + self.system_us) as f64 / 1000.0
    }
}

/// A running (or finished) measured process.
#[derive(Debug)]
pub struct Measured {
    program: String,
    pid: i32,
    /// `CLOCK_MONOTONIC` just before the spawn, µs.
    pub spawned_us: u64,
    stdin: Option<ChildStdin>,
    lines_rx: Receiver<Line>,
    exit_rx: Receiver<Exit>,
    /// Every line received so far.
    pub lines: Vec<Line>,
    exit: Option<Exit>,
}

fn forward_lines(pipe: impl Read, tx: Sender<Line>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let at_us = monotonic_us();
                let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if tx.send(Line { text, at_us }).is_err() {
                    return;
                }
            }
        }
    }
}

fn timeval_us(tv: libc::timeval) -> u64 {
    u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0)
}

fn reap(pid: i32, tx: Sender<Exit>) {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and outlive the call; `pid`
        // is our own child, which only this thread reaps.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret == pid {
            break;
        }
        if ret < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
    let at_us = monotonic_us();
    cleanup::remove_process_group(pid);
    let _ = tx.send(Exit {
        status: ExitStatus::from_raw(status),
        at_us,
        user_us: timeval_us(usage.ru_utime),
        system_us: timeval_us(usage.ru_stime),
    });
}

impl Measured {
    /// Spawns `cmd` in its own process group with piped stdout/stderr and stdin piped
    /// (`keep_stdin`) or from /dev/null.
    pub fn spawn(mut cmd: Command, keep_stdin: bool) -> Result<Measured, ChildError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let spawned_us = monotonic_us();
        // Spawned and registered at once, as far as an interrupt's cleanup can tell.
        let (mut child, pid) = cleanup::creating(|| {
            let child = cmd.spawn().map_err(|source| ChildError::Spawn {
                program: program.clone(),
                source,
            })?;
            let pid = i32::try_from(child.id()).unwrap_or(0);
            cleanup::add_process_group(pid);
            Ok::<_, ChildError>((child, pid))
        })?;
        let (lines_tx, lines_rx) = channel();
        if let Some(out) = child.stdout.take() {
            let tx = lines_tx.clone();
            std::thread::spawn(move || forward_lines(out, tx));
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || forward_lines(err, lines_tx));
        }
        let (exit_tx, exit_rx) = channel();
        std::thread::spawn(move || reap(pid, exit_tx));
        Ok(Measured {
            program,
            pid,
            spawned_us,
            stdin: child.stdin.take(),
            lines_rx,
            exit_rx,
            lines: Vec::new(),
            exit: None,
        })
    }

    /// The process id (and process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The last lines of output, for error messages.
    pub fn tail(&self) -> String {
        let start = self.lines.len().saturating_sub(12);
        self.lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Takes in the lines that arrived since the last wait.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines_rx.try_recv() {
            self.lines.push(line);
        }
    }

    /// Waits until a line for which `parse` returns `Some` arrives (or has arrived),
    /// and returns that value with the line's arrival time.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut parse: impl FnMut(&Line) -> Option<T>,
    ) -> Result<(T, u64), ChildError> {
        self.drain();
        if let Some(found) = self
            .lines
            .iter()
            .find_map(|l| parse(l).map(|v| (v, l.at_us)))
        {
            return Ok(found);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => {
                    let found = parse(&line).map(|v| (v, line.at_us));
                    self.lines.push(line);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    // Output ended or time is up; a late exit still ends the wait.
                    let exited = self.exited_now();
                    if left.is_zero() || exited {
                        return Err(ChildError::NoSignal {
                            program: self.program.clone(),
                            what: what.to_owned(),
                            timeout,
                            exited,
                            tail: self.tail(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1).min(left));
                }
            }
        }
    }

    fn exited_now(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.exit_rx.try_recv().ok();
        }
        self.exit.is_some()
    }

    /// Writes `bytes` to the child's stdin (no-op without one).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ChildError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(());
        };
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|source| ChildError::Stdin {
                program: self.program.clone(),
                source,
            })
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit (all output read), killing its group at the
    /// deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Exit, ChildError> {
        let exit = match self.exit {
            Some(exit) => exit,
            None => match self.exit_rx.recv_timeout(timeout) {
                Ok(exit) => exit,
                Err(_) => {
                    self.kill();
                    self.drain();
                    return Err(ChildError::NoExit {
                        program: self.program.clone(),
                        timeout,
                        tail: self.tail(),
                    });
                }
            },
        };
        self.exit = Some(exit);
        // The pipes close when the last process holding them exits; give readers a
        // moment and keep whatever arrived.
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(line) = self
            .lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(line);
        }
        Ok(exit)
    }

    /// SIGKILLs the process group (if the leader was not reaped yet) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() && !self.exited_now() {
            cleanup::kill_group(self.pid);
            self.exit = self.exit_rx.recv_timeout(Duration::from_secs(5)).ok();
        }
    }

    /// Whether it has exited, and how.
    pub fn exit_status(&mut self) -> Option<Exit> {
        self.exited_now();
        self.exit
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.kill();
    }
}
