//! Helpers for the API tests: a small HTTP/1.1 client over a Unix socket (raw, so
//! tests can pipeline, stall and send garbage), a spry child serving an API socket
//! whose console lines the test can wait for, and the request corpus and mutations
//! the hostile-input tests throw.
#![allow(dead_code, clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::{in_nested_host, EmulatorFault, NESTED_SILENCE_LIMIT};

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `fault_message` of a 400, asserting the status and body shape.
    pub fn fault(&self) -> String {
        assert_eq!(self.status, 400, "not a 400: {self:?}");
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message: {self:?}"))
            .to_owned()
    }
}

/// Parses one response from the front of `buf`: `Ok(Some((response, used)))`, or
/// `Ok(None)` when more bytes are needed, or `Err` when the bytes are not HTTP.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("{e}: {:?}", String::from_utf8_lossy(buf))),
    };
    let status = parsed.code.ok_or("no status")?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| {
            v.parse::<usize>()
                .map_err(|e| format!("content-length {v:?}: {e}"))
        })
        .transpose()?
        .unwrap_or(0);
    if buf.len() < head + len {
        return Ok(None);
    }
    let body = buf[head..head + len].to_vec();
    Ok(Some((
        Response {
            status,
            headers,
            body,
        },
        head + len,
    )))
}

/// A raw HTTP/1.1 connection to an API socket.
pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).expect("connect to the API socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send request");
    }

    pub fn send(&mut self, method: &str, path: &str, body: &str) {
        let raw = request(method, path, body);
        self.send_raw(&raw);
    }

    /// Reads the next response; panics on a timeout, EOF or garbage.
    pub fn read_response(&mut self) -> Response {
        loop {
            match parse_response(&self.buf) {
                Ok(Some((response, used))) => {
                    self.buf.drain(..used);
                    return response;
                }
                Ok(None) => {}
                Err(e) => panic!("malformed response: {e}"),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "connection closed before a full response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn call(&mut self, method: &str, path: &str, body: &str) -> Response {
        self.send(method, path, body);
        self.read_response()
    }
}

/// A well-formed request.
pub fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if !body.is_empty() || method != "GET" {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    raw.into_bytes()
}

/// One request on a fresh connection.
pub fn call(socket: &Path, method: &str, path: &str, body: &str) -> Response {
    Client::connect(socket).call(method, path, body)
}

/// What a spry child printed: console lines and stderr, collected by threads.
#[derive(Clone)]
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// When spry last printed anything, on either stream.
    last_output: Arc<Mutex<Instant>>,
    /// A wait fails as an [`EmulatorFault`] once spry printed nothing for this long.
    silence_limit: Option<Duration>,
}

impl Output {
    fn new() -> Output {
        Output {
            lines: Arc::default(),
            stderr: Arc::default(),
            last_output: Arc::new(Mutex::new(Instant::now())),
            silence_limit: in_nested_host().then_some(NESTED_SILENCE_LIMIT),
        }
    }

    fn printed_now(&self) {
        *lock(&self.last_output) = Instant::now();
    }

    /// Everything spry printed so far, for a failure message.
    fn dump(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            lock(&self.lines).join("\n"),
            lock(&self.stderr)
        )
    }

    /// Polls `check` until it gives a value, failing after `timeout` with `what`
    /// and everything spry printed.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check() {
                return value;
            }
            let silent = lock(&self.last_output).elapsed();
            if let Some(limit) = self.silence_limit.filter(|l| silent > *l) {
                std::panic::panic_any(EmulatorFault(format!(
                    "{what}: spry printed nothing for {limit:?} (a stalled guest)\n{}",
                    self.dump()
                )));
            }
            if Instant::now() >= deadline {
                panic!("{what} within {timeout:?}\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Locks `m` even when a panicking test thread poisoned it: the collected output is
/// still what the failure report needs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spry child serving an API socket, with its console lines collected.
pub struct SpryApi {
    pub child: Child,
    pub socket: PathBuf,
    pub stdin: Option<ChildStdin>,
    out: Output,
}

impl SpryApi {
    /// Starts `spry --api-sock socket` plus `args`, and waits until the socket answers.
    pub fn start(socket: &Path, args: &[&str]) -> SpryApi {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spry"))
            .arg("--api-sock")
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spry");
        let out = Output::new();
        let stdout = child.stdout.take().expect("stdout");
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lock(&sink.lines).push(line);
                sink.printed_now();
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                lock(&sink.stderr).push_str(&String::from_utf8_lossy(&chunk[..n]));
                sink.printed_now();
            }
        });
        let stdin = child.stdin.take();
        let spry = SpryApi {
            child,
            socket: socket.to_owned(),
            stdin,
            out,
        };
        spry.wait_for_socket();
        spry
    }

    fn wait_for_socket(&self) {
        self.out.wait_until(
            Duration::from_secs(20),
            "the API socket never answered",
            || UnixStream::connect(&self.socket).ok(),
        );
    }

    pub fn call(&self, method: &str, path: &str, body: &str) -> Response {
        call(&self.socket, method, path, body)
    }

    /// Console lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.out.lines).clone()
    }

    /// The numbers of the counting probe's `probe: count N` lines so far.
    pub fn probe_counts(&self) -> Vec<u64> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("probe: count "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }

    pub fn stderr(&self) -> String {
        lock(&self.out.stderr).clone()
    }

    /// Waits until a console line satisfies `pred`, and returns it.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.out.wait_until(timeout, "no such console line", || {
            self.lines().into_iter().find(|l| pred(l))
        })
    }

    /// Waits until spry's stderr has a line satisfying `pred`, and returns it.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.out.wait_until(timeout, "no such log line", || {
            self.stderr().lines().find(|l| pred(l)).map(str::to_owned)
        })
    }

    /// Types `bytes` on the guest console.
    pub fn type_keys(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write the console");
        stdin.flush().expect("flush the console");
    }

    /// Waits for spry to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = self.out.wait_until(timeout, "spry did not exit", || {
            child.try_wait().expect("wait spry")
        });
        status.code()
    }

    /// Stops spry with SIGTERM and returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child process; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for SpryApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Valid requests of every route, for mutation. Paths in bodies point into
/// directories that do not exist; still, `PUT /logger` and `PUT /metrics` create the
/// files they name, and a truncated path names a file in `/`, so throw these only
/// at a booted VM, which refuses them.
pub fn corpus() -> Vec<Vec<u8>> {
    let mut all = corpus_without_file_creation();
    all.push(request(
        "PUT",
        "/logger",
        r#"{"level": "Warning", "show_level": true}"#,
    ));
    all.push(request(
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/nonexistent-spry/metrics"}"#,
    ));
    all
}

/// The corpus without the routes that create files, safe before boot.
pub fn corpus_without_file_creation() -> Vec<Vec<u8>> {
    [
        ("GET", "/", ""),
        ("GET", "/version", ""),
        ("GET", "/machine-config", ""),
        ("GET", "/vm/config", ""),
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#),
        ("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent-spry/vmlinux", "boot_args": "console=ttyS0"}"#,
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent-spry/disk", "is_root_device": true, "is_read_only": false}"#,
        ),
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/nonexistent-spry/disk2"}"#,
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "sprynotap0", "guest_mac": "AA:FC:00:00:00:01"}"#,
        ),
        ("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
    ]
    .iter()
    .map(|(m, p, b)| request(m, p, b))
    .collect()
}

/// One change to a request.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR the byte at (position modulo length) with a mask.
    Flip(usize, u8),
    /// Insert a byte.
    Insert(usize, u8),
    /// Delete a byte.
    Delete(usize),
    /// Keep only the first (position modulo length) bytes.
    Truncate(usize),
    /// Replace the Content-Length value (or add one).
    ContentLength(String),
    /// Insert bytes that are not UTF-8.
    InvalidUtf8(usize),
    /// Repeat a slice of the request.
    Duplicate(usize, usize),
}

/// `request` with `mutations` applied in order.
pub fn mutate(request: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut r = request.to_vec();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, mask) if !r.is_empty() => {
                let i = i % r.len();
                r[i] ^= mask;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, b) => {
                let i = at(*i, r.len());
                r.insert(i, *b);
            }
            Mutation::Delete(i) if !r.is_empty() => {
                let i = i % r.len();
                r.remove(i);
            }
            Mutation::Delete(_) => {}
            Mutation::Truncate(i) => {
                let i = at(*i, r.len());
                r.truncate(i);
            }
            Mutation::ContentLength(value) => r = with_content_length(&r, value),
            Mutation::InvalidUtf8(i) => {
                let i = at(*i, r.len());
                r.splice(i..i, [0xff, 0xfe, 0xc3, 0x28]);
            }
            Mutation::Duplicate(i, len) => {
                let start = at(*i, r.len());
                let end = (start + len % 64).min(r.len());
                let copy = r[start..end].to_vec();
                r.splice(end..end, copy);
            }
        }
    }
    r
}

fn with_content_length(request: &[u8], value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let Some(head_end) = text.find("\r\n") else {
        return request.to_vec();
    };
    let kept: Vec<&str> = text[head_end + 2..]
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    format!(
        "{}\r\nContent-Length: {value}\r\n{}",
        &text[..head_end],
        kept.join("\r\n")
    )
    .into_bytes()
}

/// A deterministic xorshift generator for the integration tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> usize {
        (self.next() % n.max(1)) as usize
    }

    pub fn mutation(&mut self) -> Mutation {
        let i = self.below(1 << 16);
        match self.below(7) {
            0 => Mutation::Flip(i, (self.next() as u8) | 1),
            1 => Mutation::Insert(i, self.next() as u8),
            2 => Mutation::Delete(i),
            3 => Mutation::Truncate(i),
            4 => Mutation::ContentLength(
                [
                    "0",
                    "-1",
                    "18446744073709551615",
                    "99999999999",
                    "51201",
                    "1e3",
                    " 7",
                ][self.below(7)]
                .to_owned(),
            ),
            5 => Mutation::InvalidUtf8(i),
            _ => Mutation::Duplicate(i, self.below(64)),
        }
    }

    /// A random or mutated request.
    pub fn hostile_request(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        if self.below(10) == 0 {
            let len = self.below(512);
            return (0..len).map(|_| self.next() as u8).collect();
        }
        let base = &corpus[self.below(corpus.len() as u64)];
        let n = 1 + self.below(4);
        let mutations: Vec<Mutation> = (0..n).map(|_| self.mutation()).collect();
        mutate(base, &mutations)
    }
}

/// `curl --unix-socket`, the way people script Firecracker: (status, body).
pub fn curl(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--unix-socket")
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .args(["-H", "Accept: application/json"]);
    if !body.is_empty() {
        cmd.args(["-H", "Content-Type: application/json", "--data-raw", body]);
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}
