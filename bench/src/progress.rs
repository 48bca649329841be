//! Progress on stderr while a benchmark works: how many runs are done, of which system.

use std::io::Write;

/// A progress counter for one phase.
#[derive(Debug)]
pub struct Progress {
    phase: String,
    total: usize,
    done: usize,
    terminal: bool,
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

impl Progress {
    /// A phase of `total` steps.
    pub fn new(phase: &str, total: usize) -> Progress {
        Progress {
            phase: phase.to_owned(),
            total,
            done: 0,
            terminal: stderr_is_terminal(),
        }
    }

    /// One more step, on `system`.
    pub fn step(&mut self, system: &str, warmup: bool) {
        self.done += 1;
        let kind = if warmup { " (warm-up)" } else { "" };
        // Progress never fails the benchmark, even with stderr gone.
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(
                err,
                "\r\x1b[K[{}] {}/{} {system}{kind}",
                self.phase, self.done, self.total
            );
            let _ = err.flush();
        } else if self.done == 1 || self.done % (self.total / 10).max(1) == 0 {
            // In logs, about ten lines per phase.
            let _ = writeln!(
                err,
                "[{}] {}/{} {system}{kind}",
                self.phase, self.done, self.total
            );
        }
    }

    /// A note on its own line.
    pub fn note(&self, text: &str) {
        let clear = if self.terminal { "\r\x1b[K" } else { "" };
        let _ = writeln!(std::io::stderr(), "{clear}[{}] {text}", self.phase);
    }

    /// Ends the phase's line.
    pub fn done(&self) {
        self.note(&format!("{} steps done", self.done));
    }
}
