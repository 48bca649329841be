//! Seccomp: each of spry's threads confines itself to the system calls its work needs
//! before it touches anything a guest or an API client controls.
//!
//! There are three kinds of thread, and one filter for each, by Firecracker's names:
//! - `vmm`: the main thread once the VM is built, serving devices from the event loop
//!   and API requests at run time (installed right before the event loop first runs);
//! - `api`: the HTTP server on the API socket (installed before its first accept);
//! - `vcpu`: each vCPU thread (installed before its first `KVM_RUN`).
//!
//! spry's own filters are the JSON file `resources/seccomp/x86_64.json`, compiled to
//! BPF by `seccompiler` in `build.rs` ([`builtin`]); `--seccomp-filter FILE` takes a
//! file of the same format (Firecracker's and seccompiler's JSON schema) instead,
//! compiled at start, and `--no-seccomp` installs none. A forbidden call traps: the SIGSYS handler writes one
//! line naming the thread and the call, counts it in the metrics, and ends spry with
//! [`EXIT_BAD_SYSCALL`].

mod syscall_names;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use seccompiler::{BpfProgram, TargetArch};

/// spry's filters, as `resources/seccomp/x86_64.json` has them (the source of
/// [`builtin`]).
pub const DEFAULT_FILTERS: &str = include_str!("../../resources/seccomp/x86_64.json");

/// spry's filters compiled to BPF by `build.rs` from [`DEFAULT_FILTERS`], so a start
/// costs no JSON parsing (about 0.3 ms in a release build).
pub mod builtin {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// The exit code when a thread made a system call its filter forbids (Firecracker's
/// `BadSyscall` code, so tools written for it read it the same way).
pub const EXIT_BAD_SYSCALL: u8 = 148;

/// Forbidden system calls caught, for the metrics.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Keeps glibc's malloc to the one `brk` heap every filter allows. By default glibc
/// gives threads arenas of their own, and the first time it shrinks one it opens
/// `/proc/sys/vm/overcommit_memory` (past eight arenas it also reads
/// `/sys/devices/system/cpu/online`): an `openat` the API and vCPU filters forbid, so
/// a client whose requests made the API thread allocate and free large buffers
/// stopped spry with exit 148 (found by `tests/hostile.rs`). Call it first thing in
/// `main`, before any thread exists.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets one of malloc's tunables; no thread allocates
    // concurrently yet, and M_ARENA_MAX takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Forbidden system calls caught so far (the SIGSYS handler ends spry at the first,
/// so this is 0 in any metrics line but the one the handler writes).
pub fn fault_count() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// The kinds of thread spry runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop (the main thread once the VM runs).
    Vmm,
    /// The API server.
    Api,
    /// A vCPU.
    Vcpu,
}

impl ThreadKind {
    /// Every kind, in the order a filter file is checked.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    /// The filter's key in a filter file.
    pub fn key(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// Which filters spry installs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FilterSource {
    /// spry's own ([`DEFAULT_FILTERS`]).
    #[default]
    Default,
    /// A filter file in Firecracker's JSON format (`--seccomp-filter`).
    File(PathBuf),
    /// None at all (`--no-seccomp`).
    Off,
}

/// Errors while loading or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter file cannot be read.
    #[error("--seccomp-filter {path}: cannot read it")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The filters do not compile (bad JSON, an unknown system call, a filter too
    /// large for BPF).
    #[error("seccomp filters from {origin}: {detail}")]
    Compile {
        /// The file, or "spry's built-in filters".
        origin: String,
        /// seccompiler's message (it includes its own causes).
        detail: String,
    },
    /// A thread kind has no filter in the file.
    #[error(
        "seccomp filters from {origin}: no filter for the {kind} thread (a file needs the \
         keys \"vmm\", \"api\" and \"vcpu\")"
    )]
    Missing {
        /// The file.
        origin: String,
        /// The kind without a filter.
        kind: ThreadKind,
    },
    /// A filter for a thread spry does not have.
    #[error(
        "seccomp filters from {origin}: {key:?} is not one of spry's threads (\"vmm\", \"api\", \
         \"vcpu\")"
    )]
    UnknownThread {
        /// The file.
        origin: String,
        /// The key.
        key: String,
    },
    /// The SIGSYS handler cannot be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter.
    #[error("cannot install the {kind} thread's seccomp filter: {detail}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's message (it includes its own causes).
        detail: String,
    },
}

impl SeccompError {
    /// Whether the user must fix the command line or the filter file.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SeccompError::Read { .. }
                | SeccompError::Compile { .. }
                | SeccompError::Missing { .. }
                | SeccompError::UnknownThread { .. }
        )
    }
}

/// A compiled filter for one kind of thread.
pub type Filter = Arc<BpfProgram>;

/// The compiled filter of each kind of thread, or none with `--no-seccomp`.
#[derive(Debug, Clone, Default)]
pub struct SeccompFilters {
    vmm: Option<Filter>,
    api: Option<Filter>,
    vcpu: Option<Filter>,
}

impl SeccompFilters {
    /// No filters: every thread runs unconfined.
    pub fn none() -> SeccompFilters {
        SeccompFilters::default()
    }

    /// Compiles the filters `source` names.
    pub fn load(source: &FilterSource) -> Result<SeccompFilters, SeccompError> {
        match source {
            FilterSource::Off => Ok(SeccompFilters::none()),
            FilterSource::Default => Ok(SeccompFilters {
                vmm: Some(Arc::new(builtin::VMM.to_vec())),
                api: Some(Arc::new(builtin::API.to_vec())),
                vcpu: Some(Arc::new(builtin::VCPU.to_vec())),
            }),
            FilterSource::File(path) => {
                let text = std::fs::read(path).map_err(|source| SeccompError::Read {
                    path: path.clone(),
                    source,
                })?;
                SeccompFilters::from_json(&text, &path.display().to_string())
            }
        }
    }

    /// Compiles a filter file's text; `origin` names it in errors.
    pub fn from_json(text: &[u8], origin: &str) -> Result<SeccompFilters, SeccompError> {
        let mut compiled =
            seccompiler::compile_from_json(text, TargetArch::x86_64).map_err(|e| {
                SeccompError::Compile {
                    origin: origin.to_owned(),
                    detail: e.to_string(),
                }
            })?;
        let mut take = |kind: ThreadKind| {
            compiled
                .remove(kind.key())
                .map(Arc::new)
                .ok_or_else(|| SeccompError::Missing {
                    origin: origin.to_owned(),
                    kind,
                })
        };
        let filters = SeccompFilters {
            vmm: Some(take(ThreadKind::Vmm)?),
            api: Some(take(ThreadKind::Api)?),
            vcpu: Some(take(ThreadKind::Vcpu)?),
        };
        if let Some(key) = first_key(&compiled) {
            return Err(SeccompError::UnknownThread {
                origin: origin.to_owned(),
                key,
            });
        }
        Ok(filters)
    }

    /// The filter of `kind`'s threads, if filters are on.
    pub fn get(&self, kind: ThreadKind) -> Option<&Filter> {
        match kind {
            ThreadKind::Vmm => self.vmm.as_ref(),
            ThreadKind::Api => self.api.as_ref(),
            ThreadKind::Vcpu => self.vcpu.as_ref(),
        }
    }

    /// Confines the calling thread with `kind`'s filter (nothing when filters are
    /// off). `label` names the thread in the line a forbidden call prints ("vCPU 0").
    /// Filters only narrow: a thread spawned afterwards inherits this one.
    pub fn apply(&self, kind: ThreadKind, label: &str) -> Result<(), SeccompError> {
        match self.get(kind) {
            Some(filter) => apply(filter, kind, label),
            None => Ok(()),
        }
    }
}

/// The first key of `map` in sorted order, so the error names the same one each run.
fn first_key(map: &HashMap<String, BpfProgram>) -> Option<String> {
    map.keys().min().cloned()
}

/// Installs `filter` on the calling thread after naming the thread for the SIGSYS
/// handler.
pub fn apply(filter: &BpfProgram, kind: ThreadKind, label: &str) -> Result<(), SeccompError> {
    install_sigsys_handler()?;
    set_thread_label(label);
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install {
        kind,
        detail: e.to_string(),
    })
}

/// Longest thread label the handler prints.
const LABEL_MAX: usize = 32;

thread_local! {
    /// This thread's label, for the SIGSYS handler: plain bytes in a const-initialized
    /// thread-local without a destructor, so reading it in a handler takes no lock and
    /// allocates nothing.
    static THREAD_LABEL: Cell<([u8; LABEL_MAX], usize)> = const { Cell::new(([0; LABEL_MAX], 0)) };
}

fn set_thread_label(label: &str) {
    let mut bytes = [0u8; LABEL_MAX];
    let len = label.len().min(LABEL_MAX);
    bytes[..len].copy_from_slice(&label.as_bytes()[..len]);
    THREAD_LABEL.with(|l| l.set((bytes, len)));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // The errno of a failed sigaction, kept so every later caller fails too.
    static INSTALLED: OnceLock<Option<i32>> = OnceLock::new();
    let failed = *INSTALLED.get_or_init(|| {
        // The handler does only async-signal-safe work: atomics, a read of a
        // destructor-free thread-local, write(2), _exit(2).
        // SAFETY: that handler, and `act` zeroed, then filled with valid values.
        let ret = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigsys as extern "C" fn(_, _, _) as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
        };
        (ret != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    });
    match failed {
        Some(errno) => Err(SeccompError::Handler(std::io::Error::from_raw_os_error(
            errno,
        ))),
        None => Ok(()),
    }
}

/// `si_syscall` in a SIGSYS `siginfo_t` on x86_64: after `si_signo`, `si_errno`,
/// `si_code`, padding and `si_call_addr`, the seventh 32-bit word.
const SI_SYSCALL_WORD: usize = 6;
/// `si_code` of a SIGSYS that a seccomp filter raised (`SYS_SECCOMP`).
const SYS_SECCOMP: i32 = 1;

/// The name of x86_64 system call `nr`, if the table knows it.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u32::try_from(nr).ok()?;
    syscall_names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |(n, _)| *n)
        .ok()
        .map(|i| syscall_names::SYSCALL_NAMES[i].1)
}

/// A line built in a fixed buffer: no allocation, so a signal handler may build it.
struct LineBuf {
    bytes: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            bytes: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            // `v % 10` is a single digit.
            #[allow(clippy::cast_possible_truncation)]
            let digit = (v % 10) as u8;
            digits[i] = b'0' + digit;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The line a forbidden call prints, e.g. `spry: seccomp: the vCPU 0 thread made a
/// forbidden system call: ioctl (16); stopping with exit code 148`.
fn fault_line(label: &[u8], nr: i64) -> LineBuf {
    let mut line = LineBuf::new();
    line.push(b"spry: seccomp: the ");
    line.push(if label.is_empty() { b"unnamed" } else { label });
    line.push(b" thread made a forbidden system call: ");
    match syscall_name(nr) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push(b"unknown"),
    }
    line.push(b" (");
    match u64::try_from(nr) {
        Ok(n) => line.push_u64(n),
        Err(_) => line.push(b"?"),
    }
    line.push(b"); stopping with exit code ");
    line.push_u64(u64::from(EXIT_BAD_SYSCALL));
    line.push(b"\n");
    line
}

/// The metrics line the handler adds: the fault, in the metrics file's format.
fn fault_metrics_line(utc_ms: u64, faults: u64) -> LineBuf {
    let mut line = LineBuf::new();
    line.push(b"{\"utc_timestamp_ms\":");
    line.push_u64(utc_ms);
    line.push(b",\"seccomp\":{\"num_faults\":");
    line.push_u64(faults);
    line.push(b"}}\n");
    line
}

fn write_all_raw(fd: libc::c_int, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a live buffer of `rest.len()` bytes; write(2) is
        // async-signal-safe and only reads it.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => rest = &rest[n..],
            _ => return,
        }
    }
}

fn utc_ms_signal_safe() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) is async-signal-safe and fills `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(ms)
}

/// Handles a SIGSYS: one a filter raised ends spry; one sent by someone else (`kill
/// -SYS`) is ignored.
extern "C" fn on_sigsys(_signum: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    if unsafe { (*info).si_code } != SYS_SECCOMP {
        return;
    }
    let faults = FAULTS.fetch_add(1, Ordering::Relaxed) + 1;
    // SAFETY: the kernel passes a full siginfo_t (128 bytes); for a seccomp SIGSYS
    // its seventh 32-bit word is `si_syscall`.
    let nr = i64::from(unsafe { *info.cast::<i32>().add(SI_SYSCALL_WORD) });
    let (label, len) = THREAD_LABEL.with(Cell::get);
    let line = fault_line(&label[..len], nr);
    write_all_raw(libc::STDERR_FILENO, line.as_bytes());
    let log_fd = crate::logger::log_file_fd();
    if log_fd >= 0 {
        write_all_raw(log_fd, line.as_bytes());
    }
    let metrics_fd = crate::metrics::metrics_file_fd();
    if metrics_fd >= 0 {
        let metrics = fault_metrics_line(utc_ms_signal_safe(), faults);
        write_all_raw(metrics_fd, metrics.as_bytes());
    }
    // SAFETY: _exit(2) is async-signal-safe; nothing of the process may run on.
    unsafe { libc::_exit(i32::from(EXIT_BAD_SYSCALL)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_file(vmm: &str, api: &str, vcpu: &str) -> String {
        let one = |rules: &str| {
            format!(
                r#"{{"mismatch_action": "trap", "match_action": "allow", "filter": [{rules}]}}"#
            )
        };
        format!(
            r#"{{"vmm": {}, "api": {}, "vcpu": {}}}"#,
            one(vmm),
            one(api),
            one(vcpu)
        )
    }

    #[test]
    fn test_builtin_filters_compile_for_every_thread() {
        let filters = SeccompFilters::load(&FilterSource::Default).unwrap();

        for kind in ThreadKind::ALL {
            assert!(filters.get(kind).is_some_and(|f| !f.is_empty()), "{kind}");
        }
    }

    #[test]
    fn test_builtin_programs_are_the_json_compiled() {
        let compiled =
            SeccompFilters::from_json(DEFAULT_FILTERS.as_bytes(), "x86_64.json").unwrap();

        let builtin = SeccompFilters::load(&FilterSource::Default).unwrap();

        for kind in ThreadKind::ALL {
            assert_eq!(compiled.get(kind), builtin.get(kind), "{kind}");
        }
    }

    #[test]
    fn test_no_seccomp_has_no_filter() {
        let filters = SeccompFilters::load(&FilterSource::Off).unwrap();

        assert!(ThreadKind::ALL.iter().all(|k| filters.get(*k).is_none()));
    }

    #[test]
    fn test_custom_file_with_arguments_compiles() {
        let ioctl = r#"{"syscall": "ioctl", "args": [{"index": 1, "type": "dword", "op": "eq",
                        "val": 44672, "comment": "KVM_RUN"}]}"#;
        let mmap = r#"{"syscall": "mmap", "args": [{"index": 2, "type": "dword",
                       "op": {"masked_eq": 4}, "val": 0}]}"#;
        let text = filter_file(r#"{"syscall": "read"}"#, mmap, ioctl);

        let filters = SeccompFilters::from_json(text.as_bytes(), "test.json").unwrap();

        assert!(filters.get(ThreadKind::Vcpu).is_some());
    }

    #[test]
    fn test_unknown_syscall_names_the_file_and_the_call() {
        let text = filter_file(r#"{"syscall": "no_such_call"}"#, "", "");

        let e = SeccompFilters::from_json(text.as_bytes(), "bad.json").unwrap_err();

        let message = e.to_string();
        assert!(
            message.starts_with("seccomp filters from bad.json: "),
            "{message}"
        );
        assert!(message.contains("no_such_call"), "{message}");
        assert!(e.is_user_error());
    }

    #[test]
    fn test_malformed_json_is_a_compile_error() {
        let e = SeccompFilters::from_json(b"{\"vmm\": ", "bad.json").unwrap_err();

        assert!(matches!(e, SeccompError::Compile { .. }), "{e}");
    }

    #[test]
    fn test_missing_thread_is_named() {
        let text = r#"{"vmm": {"mismatch_action": "trap", "match_action": "allow", "filter": []},
                       "api": {"mismatch_action": "trap", "match_action": "allow", "filter": []}}"#;

        let e = SeccompFilters::from_json(text.as_bytes(), "two.json").unwrap_err();

        assert_eq!(
            e.to_string(),
            "seccomp filters from two.json: no filter for the vcpu thread (a file needs the keys \
             \"vmm\", \"api\" and \"vcpu\")"
        );
    }

    #[test]
    fn test_unknown_thread_is_refused() {
        let mut text = filter_file("", "", "");
        text.pop();
        text.push_str(
            r#", "io": {"mismatch_action": "trap", "match_action": "allow", "filter": []}}"#,
        );

        let e = SeccompFilters::from_json(text.as_bytes(), "four.json").unwrap_err();

        assert!(
            matches!(&e, SeccompError::UnknownThread { key, .. } if key == "io"),
            "{e}"
        );
    }

    #[test]
    fn test_identical_actions_are_refused() {
        let text =
            r#"{"vmm": {"mismatch_action": "allow", "match_action": "allow", "filter": []}}"#;

        let e = SeccompFilters::from_json(text.as_bytes(), "same.json").unwrap_err();

        assert!(e.to_string().contains("are equal"), "{e}");
    }

    #[test]
    fn test_missing_file_is_a_read_error() {
        let e = SeccompFilters::load(&FilterSource::File("/nonexistent/filter.json".into()))
            .unwrap_err();

        assert!(
            e.to_string()
                .starts_with("--seccomp-filter /nonexistent/filter.json: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn test_apply_confines_only_the_calling_thread() {
        let text = r#"{"vmm": {"mismatch_action": "allow", "match_action": {"errno": 1},
                               "filter": [{"syscall": "getppid"}]},
                       "api": {"mismatch_action": "allow", "match_action": {"errno": 1},
                               "filter": []},
                       "vcpu": {"mismatch_action": "allow", "match_action": {"errno": 1},
                                "filter": []}}"#;
        let filters = SeccompFilters::from_json(text.as_bytes(), "test.json").unwrap();

        let confined = std::thread::spawn(move || {
            filters.apply(ThreadKind::Vmm, "test").unwrap();
            // SAFETY: getppid(2) takes no arguments and has no preconditions.
            let ret = unsafe { libc::syscall(libc::SYS_getppid) };
            (ret, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();

        assert_eq!(confined, (-1, Some(libc::EPERM)));
        // SAFETY: getppid(2) takes no arguments and has no preconditions.
        assert!(unsafe { libc::syscall(libc::SYS_getppid) } > 0);
    }

    #[test]
    fn test_syscall_names_are_the_kernels() {
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_name(-1), None);
    }

    #[test]
    fn test_fault_line_names_thread_call_and_exit_code() {
        let line = fault_line(b"vCPU 0", libc::SYS_ioctl);

        assert_eq!(
            std::str::from_utf8(line.as_bytes()).unwrap(),
            "spry: seccomp: the vCPU 0 thread made a forbidden system call: ioctl (16); \
             stopping with exit code 148\n"
        );
    }

    #[test]
    fn test_fault_line_for_an_unknown_number() {
        let line = fault_line(b"", 4000);

        assert_eq!(
            std::str::from_utf8(line.as_bytes()).unwrap(),
            "spry: seccomp: the unnamed thread made a forbidden system call: unknown (4000); \
             stopping with exit code 148\n"
        );
    }

    #[test]
    fn test_fault_metrics_line_is_json() {
        let line = fault_metrics_line(1_700_000_000_123, 1);

        let value: serde_json::Value = serde_json::from_slice(line.as_bytes()).unwrap();
        assert_eq!(value["seccomp"]["num_faults"], 1);
        assert_eq!(value["utc_timestamp_ms"], 1_700_000_000_123u64);
    }

    /// The ioctl numbers in the JSON file, which has no names, match the constants
    /// they are commented with.
    #[test]
    fn test_builtin_ioctl_numbers_match_their_names() {
        let doc: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS).unwrap();
        vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
        vmm_sys_util::ioctl_io_nr!(KVM_KVMCLOCK_CTRL, kvm_bindings::KVMIO, 0xad);
        vmm_sys_util::ioctl_ior_nr!(
            KVM_GET_REGS,
            kvm_bindings::KVMIO,
            0x81,
            kvm_bindings::kvm_regs
        );
        use kvm_bindings::{
            kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_irqchip, kvm_lapic_state,
            kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
            kvm_xsave, KVMIO,
        };
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_bindings::kvm_fpu);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
        vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
        vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
        vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
        vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
        vmm_sys_util::ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
        vmm_sys_util::ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
        vmm_sys_util::ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_bindings::kvm_regs);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_bindings::kvm_fpu);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
        vmm_sys_util::ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
        let expected: HashMap<&str, u64> = [
            ("KVM_RUN", KVM_RUN()),
            ("KVM_KVMCLOCK_CTRL", KVM_KVMCLOCK_CTRL()),
            ("KVM_GET_REGS", KVM_GET_REGS()),
            ("KVM_GET_MP_STATE", KVM_GET_MP_STATE()),
            ("KVM_GET_SREGS", KVM_GET_SREGS()),
            ("KVM_GET_XSAVE", KVM_GET_XSAVE()),
            ("KVM_GET_FPU", KVM_GET_FPU()),
            ("KVM_GET_XCRS", KVM_GET_XCRS()),
            ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS()),
            ("KVM_GET_LAPIC", KVM_GET_LAPIC()),
            ("KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ()),
            ("KVM_GET_CPUID2", KVM_GET_CPUID2()),
            ("KVM_GET_MSRS", KVM_GET_MSRS()),
            ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
            ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP()),
            ("KVM_GET_PIT2", KVM_GET_PIT2()),
            ("KVM_GET_CLOCK", KVM_GET_CLOCK()),
            ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG()),
            ("KVM_SET_IRQCHIP", KVM_SET_IRQCHIP()),
            ("KVM_SET_PIT2", KVM_SET_PIT2()),
            ("KVM_SET_CLOCK", KVM_SET_CLOCK()),
            ("KVM_SET_CPUID2", KVM_SET_CPUID2()),
            ("KVM_SET_TSC_KHZ", KVM_SET_TSC_KHZ()),
            ("KVM_SET_MP_STATE", KVM_SET_MP_STATE()),
            ("KVM_SET_REGS", KVM_SET_REGS()),
            ("KVM_SET_SREGS", KVM_SET_SREGS()),
            ("KVM_SET_XSAVE", KVM_SET_XSAVE()),
            ("KVM_SET_FPU", KVM_SET_FPU()),
            ("KVM_SET_XCRS", KVM_SET_XCRS()),
            ("KVM_SET_DEBUGREGS", KVM_SET_DEBUGREGS()),
            ("KVM_SET_LAPIC", KVM_SET_LAPIC()),
            ("KVM_SET_MSRS", KVM_SET_MSRS()),
            ("KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS()),
            ("TUNSETOFFLOAD", libc::TUNSETOFFLOAD),
            ("TCGETS", libc::TCGETS),
            ("TCSETS", libc::TCSETS),
        ]
        .into_iter()
        .collect();
        // A name may appear in several threads' filters (TUNSETOFFLOAD).
        let mut seen = std::collections::HashSet::new();
        for kind in ThreadKind::ALL {
            for rule in doc[kind.key()]["filter"].as_array().unwrap() {
                if rule["syscall"] != "ioctl" {
                    continue;
                }
                let arg = &rule["args"][0];
                let name = arg["comment"].as_str().unwrap();
                assert_eq!(arg["val"].as_u64(), expected.get(name).copied(), "{name}");
                seen.insert(name.to_owned());
            }
        }
        assert_eq!(seen.len(), expected.len());
    }
}
