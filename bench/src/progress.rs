//! Progress on stderr while a benchmark works: how many runs are done, of which system.

use std::io::Write;

/// A progress counter for one phase.
#[derive(Debug)]
pub struct Progress {
    phase: String,
    total: usize,
    done: usize,
}

impl Progress {
    /// A phase of `total` steps.
    pub fn new(phase: &str, total: usize) -> Progress {
        Progress {
            phase: phase.to_owned(),
            total,
            done: 0,
        }
    }

    /// One more step, on `system`.
    pub fn step(&mut self, system: &str, warmup: bool) {
        self.done += 1;
        let kind = if warmup { " (warm-up)" } else { "" };
        eprint!(
            "\r\x1b[K[{}] {}/{} {system}{kind}",
            self.phase, self.done, self.total
        );
        let _ = std::io::stderr().flush();
    }

    /// A note on its own line.
    pub fn note(&self, text: &str) {
        eprintln!("\r\x1b[K[{}] {text}", self.phase);
    }

    /// Ends the phase's line.
    pub fn done(&self) {
        eprintln!("\r\x1b[K[{}] {} steps done", self.phase, self.done);
    }
}
