//! One process of a container (its init, or one `ctr task exec`), run in the
//! guest by the agent, with its standard streams wired to the FIFOs containerd
//! made for it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::SystemTime;

use spry::agent::client::{self, ClientError, Session, Signaller};
use spry::agent::protocol::{self, ExecRequest};

/// Errors starting or signalling a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The agent could not be reached or refused the command.
    #[error("cannot start the process in the guest: {0}")]
    Start(#[from] ClientError),
    /// The process has not been started.
    #[error("the process has not started")]
    NotStarted,
    /// The process has ended.
    #[error("the process has already finished")]
    Finished,
    /// Sending the signal failed.
    #[error("cannot signal the process: {0}")]
    Signal(std::io::Error),
    /// A start of a process that was already started.
    #[error("the process was already started")]
    AlreadyStarted,
}

/// The FIFOs containerd made for a process (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    /// Read end for the process's input.
    pub stdin: String,
    /// Write end for its output.
    pub stdout: String,
    /// Write end for its error output (unused with a terminal).
    pub stderr: String,
    /// Run it on a terminal.
    pub terminal: bool,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not yet started.
    Created,
    /// Running in the guest.
    Running,
    /// Ended.
    Stopped,
}

struct State {
    status: Status,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    guest_pid: u32,
    signaller: Option<Signaller>,
}

/// A process of the container.
pub struct Process {
    request: ExecRequest,
    stdio: Stdio,
    state: Mutex<State>,
    changed: Condvar,
}

/// What containerd is told when a process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status (128 + signal when a signal ended it).
    pub status: u32,
    /// When.
    pub at: SystemTime,
    /// Its pid in the guest.
    pub guest_pid: u32,
}

/// The exit status containerd gets when the VM went away under a process.
pub const VM_GONE: u32 = 255;

impl Process {
    /// A process not yet started.
    pub fn new(request: ExecRequest, stdio: Stdio) -> Process {
        Process {
            request,
            stdio,
            state: Mutex::new(State {
                status: Status::Created,
                exit_status: 0,
                exited_at: None,
                guest_pid: 0,
                signaller: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its status, exit status and exit time.
    pub fn status(&self) -> (Status, u32, Option<SystemTime>) {
        let s = self.state();
        (s.status, s.exit_status, s.exited_at)
    }

    /// Its stdio.
    pub fn stdio(&self) -> &Stdio {
        &self.stdio
    }

    /// Its pid in the guest (0 before it starts, or from an agent older than
    /// protocol 3).
    pub fn guest_pid(&self) -> u32 {
        self.state().guest_pid
    }

    /// Starts the process through the agent behind `vsock`; `on_exit` runs on
    /// the process's own thread when it ends.
    pub fn start(
        self: &std::sync::Arc<Self>,
        vsock: &Path,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> Result<u32, ProcessError> {
        if self.state().status != Status::Created {
            return Err(ProcessError::AlreadyStarted);
        }
        let stream = client::connect(vsock, protocol::DEFAULT_PORT)?;
        let session = Session::start(stream, &self.request)?;
        let guest_pid = session.guest_pid().unwrap_or(0);
        {
            let mut s = self.state();
            s.status = Status::Running;
            s.guest_pid = guest_pid;
            s.signaller = Some(session.signaller());
        }
        if self.stdio.stdin.is_empty() {
            // Nothing will ever write: the process reads end-of-file at once
            // rather than waiting forever.
            let _ = session.close_stdin();
        } else {
            let _ = session.feed_stdin(LazyFifo::reader(&self.stdio.stdin));
        }
        let this = std::sync::Arc::clone(self);
        std::thread::spawn(move || {
            let mut stdout = LazyFifo::writer(&this.stdio.stdout);
            let mut stderr = LazyFifo::writer(&this.stdio.stderr);
            let status = match session.wait(&mut stdout, &mut stderr) {
                Ok(ended) => u32::from(ended.exit_code()),
                Err(e) => {
                    log::warn!("process {:?}: {e}", this.request.argv);
                    VM_GONE
                }
            };
            // Close the FIFOs before telling containerd, which reads to their
            // end before it reports the exit.
            drop((stdout, stderr));
            let exit = Exit {
                status,
                at: SystemTime::now(),
                guest_pid,
            };
            this.finish(exit.status, exit.at);
            on_exit(exit);
        });
        Ok(guest_pid)
    }

    /// Marks a process that has nothing to run (a pod's sandbox) as running.
    pub fn start_placeholder(&self) {
        let mut s = self.state();
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    }

    /// Marks the process ended (also for a VM that went away before it
    /// started).
    pub fn finish(&self, status: u32, at: SystemTime) {
        let mut s = self.state();
        if s.status == Status::Stopped {
            return;
        }
        s.status = Status::Stopped;
        s.exit_status = status;
        s.exited_at = Some(at);
        s.signaller = None;
        self.changed.notify_all();
    }

    /// Blocks until the process ends; its exit status and time.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut s = self.state();
        while s.status != Status::Stopped {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        (s.exit_status, s.exited_at.unwrap_or_else(SystemTime::now))
    }

    /// Delivers `signal` to the process's group in the guest.
    pub fn kill(&self, signal: u32) -> Result<(), ProcessError> {
        let s = self.state();
        match (&s.status, &s.signaller) {
            (Status::Created, _) => Err(ProcessError::NotStarted),
            (Status::Stopped, _) | (_, None) => Err(ProcessError::Finished),
            (Status::Running, Some(signaller)) => {
                let signal = i32::try_from(signal).map_err(|_| {
                    ProcessError::Signal(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("signal {signal}"),
                    ))
                })?;
                signaller.send(signal).map_err(ProcessError::Signal)
            }
        }
    }

    /// Resizes the process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ProcessError> {
        let s = self.state();
        let signaller = s.signaller.as_ref().ok_or(ProcessError::Finished)?;
        signaller.resize(rows, cols).map_err(ProcessError::Signal)
    }
}

/// A FIFO opened on first use, so that a thread, not the request that started
/// the process, waits for containerd's other end to open.
struct LazyFifo {
    path: PathBuf,
    write: bool,
    file: Option<File>,
    broken: bool,
}

impl LazyFifo {
    fn reader(path: &str) -> LazyFifo {
        LazyFifo {
            path: path.into(),
            write: false,
            file: None,
            broken: path.is_empty(),
        }
    }

    fn writer(path: &str) -> LazyFifo {
        LazyFifo {
            path: path.into(),
            write: true,
            file: None,
            broken: path.is_empty(),
        }
    }

    fn file(&mut self) -> Option<&mut File> {
        if self.file.is_none() && !self.broken {
            let opened = OpenOptions::new()
                .read(!self.write)
                .write(self.write)
                .open(&self.path);
            match opened {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    log::warn!("cannot open {}: {e}", self.path.display());
                    self.broken = true;
                }
            }
        }
        self.file.as_mut()
    }
}

impl Read for LazyFifo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.file() {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
    }
}

impl Write for LazyFifo {
    // Output nobody reads any more is dropped, never an error: the process must
    // be able to finish and report its exit even when the client went away.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = self.file() {
            if f.write_all(buf).is_err() {
                self.broken = true;
                self.file = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_to_a_closed_or_missing_fifo_is_dropped_not_an_error() {
        let mut w = LazyFifo::writer("");
        assert_eq!(w.write(b"abc").unwrap(), 3);
        let mut w = LazyFifo::writer("/nonexistent/dir/fifo");
        assert_eq!(w.write(b"abc").unwrap(), 3);
        let mut r = LazyFifo::reader("");
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn a_finished_process_reports_its_status_to_every_waiter() {
        let p = std::sync::Arc::new(Process::new(ExecRequest::default(), Stdio::default()));
        assert!(matches!(p.kill(15), Err(ProcessError::NotStarted)));
        let waiter = {
            let p = std::sync::Arc::clone(&p);
            std::thread::spawn(move || p.wait().0)
        };
        let at = SystemTime::now();
        p.finish(137, at);
        p.finish(1, at);
        assert_eq!(waiter.join().unwrap(), 137);
        assert_eq!(p.status(), (Status::Stopped, 137, Some(at)));
        assert!(matches!(p.kill(15), Err(ProcessError::Finished)));
    }
}
