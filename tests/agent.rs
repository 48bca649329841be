//! `spry exec` and `spry cp` against the real guest agent (`resources/guest/spry-agent.c`,
//! built here with the machine's gcc) serving on a Unix socket, behind a stand-in
//! for the vsock device's hybrid socket (`CONNECT <port>\n` → `OK <port>\n`, then
//! the bytes both ways). The Linux tests run the same commands against a guest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{spry_bin, Scratch};
use spry::agent::client::{self, ClientError, Session};
use spry::agent::protocol::{ContainerSpec, Ended, ExecRequest, Rlimit};

/// The agent, built once per test binary into target/.
fn agent_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spry-agent");
            let src = common::repo().join("resources/guest/spry-agent.c");
            let built = Command::new("gcc")
                .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("run gcc");
            assert!(built.success(), "gcc could not build {}", src.display());
            out
        })
        .clone()
}

/// A running agent and the hybrid-vsock stand-in in front of it.
struct Guest {
    agent: Child,
    /// What `spry exec --vsock-uds` connects to.
    uds: PathBuf,
    _scratch: Scratch,
}

impl Guest {
    fn start() -> Guest {
        let scratch = Scratch::new();
        let agent_sock = scratch.path("agent.sock");
        let agent = Command::new(agent_bin())
            .arg("--unix")
            .arg(&agent_sock)
            // In the agent's environment only: a container's replaced one lacks it.
            .env("AGENT_ONLY", "agent")
            .spawn()
            .expect("start the agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent_sock.exists() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        let uds = scratch.path("v.sock");
        let listener = UnixListener::bind(&uds).expect("bind the vsock stand-in");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let agent_sock = agent_sock.clone();
                std::thread::spawn(move || hybrid_connect(conn, &agent_sock));
            }
        });
        Guest {
            agent,
            uds,
            _scratch: scratch,
        }
    }

    fn spry(&self, sub: &str) -> Command {
        let mut cmd = Command::new(spry_bin());
        cmd.arg(sub).arg("--vsock-uds").arg(&self.uds);
        cmd
    }

    fn exec(&self, args: &[&str], stdin: &[u8]) -> Output {
        common::output_with_stdin(self.spry("exec").arg("--").args(args), stdin)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// The vsock device's side of a host-initiated connection, as Firecracker's
/// hybrid vsock behaves: read `CONNECT <port>`, answer `OK <port>`, bridge.
fn hybrid_connect(conn: UnixStream, agent_sock: &Path) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.trim() != "CONNECT 52" {
        return; // a wrong port: the device closes the connection
    }
    let Ok(agent) = UnixStream::connect(agent_sock) else {
        return;
    };
    let mut conn_w = conn;
    if conn_w.write_all(b"OK 1073741824\n").is_err() {
        return;
    }
    let mut agent_r = agent.try_clone().expect("clone");
    let mut agent_w = agent;
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut agent_w);
        let _ = agent_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut agent_r, &mut conn_w);
    let _ = conn_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    let out = common::output_with_stdin(&mut Command::new("sha256sum"), bytes);
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn test_exec_returns_output_streams_apart_and_the_exit_status() {
    let guest = Guest::start();
    let out = guest.exec(&["sh", "-c", "echo out; echo err >&2; exit 7"], b"");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn test_exec_streams_binary_stdin_and_stdout_byte_exact() {
    let guest = Guest::start();
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11).to_le_bytes()[0])
        .collect();
    let out = guest.exec(&["cat"], &data);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "cat's output differs from its input");
    let out = guest.exec(&["sha256sum"], &data);
    assert_eq!(
        stdout(&out).split_whitespace().next(),
        Some(sha256(&data).as_str())
    );
}

/// 1 GiB of output through a pipe, checksummed on the host as it streams (never
/// held in memory), against the same bytes made here.
#[test]
fn test_exec_streams_1_gib_of_output_byte_exact() {
    let guest = Guest::start();
    let make = "yes 'spry-agent streams this line over and over' | head -c 1073741824";
    let sha_of = |cmd: &mut Command| {
        let out = cmd.output().expect("run a pipeline");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .map(str::to_owned)
            .expect("a sha256")
    };
    let expected = sha_of(Command::new("sh").args(["-c", &format!("{make} | sha256sum")]));
    let exec = guest.spry("exec");
    let program = exec.get_program().to_owned();
    let args: Vec<_> = exec.get_args().map(|a| a.to_owned()).collect();
    let streamed = sha_of(
        Command::new("bash")
            .arg("-c")
            .arg(r#"set -o pipefail; "$@" | sha256sum"#)
            .arg("bash")
            .arg(program)
            .args(args)
            .args(["--", "sh", "-c", make]),
    );
    assert_eq!(streamed, expected);
}

#[test]
fn test_exec_of_a_missing_program_is_127_and_env_and_workdir_apply() {
    let guest = Guest::start();
    let out = guest.exec(&["no-such-program-anywhere"], b"");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let out = guest
        .spry("exec")
        .args([
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $GREETING; pwd",
        ])
        .output()
        .expect("spry exec");
    assert_eq!(stdout(&out), "hi there\n/tmp\n", "{out:?}");
}

#[test]
fn test_exec_that_never_reads_its_input_or_never_exits_is_ended_by_the_host() {
    let guest = Guest::start();
    // Never reads: 8 MiB of input must not wedge anything.
    let out = guest.exec(&["sh", "-c", "echo done"], &vec![b'x'; 8 << 20]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "done\n")
    );
    // Never exits: --timeout kills it.
    let start = Instant::now();
    let out = guest
        .spry("exec")
        .args(["--timeout", "1", "--", "sleep", "600"])
        .output()
        .expect("spry exec");
    assert_eq!(out.status.code(), Some(128 + 9), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn test_sigint_to_spry_exec_reaches_the_command() {
    let guest = Guest::start();
    let mut child = guest
        .spry("exec")
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spry exec");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line, "ready\n");
    // SAFETY: kill with a pid of our own child and a valid signal.
    let sent = unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGINT) };
    assert_eq!(sent, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest");
    assert_eq!(rest, "got-int\n");
    assert_eq!(child.wait().expect("wait").code(), Some(42));
}

#[test]
fn test_concurrent_execs_each_get_their_own_output() {
    let guest = Guest::start();
    let guest = &guest;
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let script =
                        format!("for n in 1 2 3 4 5; do echo {i}-$n; sleep 0.05; done; exit {i}");
                    guest.exec(&["sh", "-c", &script], b"")
                })
            })
            .collect();
        for (i, run) in runs.into_iter().enumerate() {
            let out = run.join().expect("exec thread");
            let want: String = (1..=5).map(|n| format!("{i}-{n}\n")).collect();
            assert_eq!(
                (out.status.code(), stdout(&out)),
                (Some(i32::try_from(i).expect("i")), want)
            );
        }
    });
}

#[test]
fn test_cp_copies_a_tree_in_and_out_with_its_modes() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let tree = scratch.path("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    let blob: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("sub/blob.bin"), &blob).expect("write");
    // The "guest" here is this machine under another directory.
    let inside = scratch.path("guest-root");
    std::fs::create_dir(&inside).expect("mkdir");
    let to_guest = format!(":{}/copied", inside.display());
    let out = guest
        .spry("cp")
        .arg(&tree)
        .arg(&to_guest)
        .output()
        .expect("spry cp in");
    assert!(out.status.success(), "{out:?}");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&inside.join("copied/run.sh")), 0o751);
    assert_eq!(
        std::fs::read(inside.join("copied/sub/blob.bin")).expect("read"),
        blob
    );

    let back = scratch.path("back");
    let out = guest
        .spry("cp")
        .arg(format!(":{}/copied", inside.display()))
        .arg(&back)
        .output()
        .expect("spry cp out");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&back.join("run.sh")), 0o751);
    assert_eq!(
        std::fs::read(back.join("sub/blob.bin")).expect("read"),
        blob
    );
    let leftovers: Vec<_> = std::fs::read_dir(scratch.path(""))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".spry-cp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn test_cp_of_a_missing_guest_path_fails_with_tar_s_message() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let out = guest
        .spry("cp")
        .arg(":/nonexistent/file")
        .arg(scratch.path("x"))
        .output()
        .expect("spry cp");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tar in the guest failed"), "{err}");
    assert!(!scratch.path("x").exists());
}

#[test]
fn test_exec_without_an_agent_says_what_is_missing() {
    let scratch = Scratch::new();
    let out = Command::new(spry_bin())
        .args(["exec", "--vsock-uds"])
        .arg(scratch.path("nothing.sock"))
        .args(["--", "true"])
        .output()
        .expect("spry exec");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the vsock socket"), "{err}");
    // A device that closes the connection: nothing listens on that port.
    let guest = Guest::start();
    let out = guest
        .spry("exec")
        .args(["--port", "53", "--", "true"])
        .output()
        .expect("spry exec");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the guest's spry-agent running?"), "{err}");
}

/// `spry exec -t`: the command runs on a terminal in the guest, of 80x24 when
/// spry's stdin is not a terminal, with both its streams on spry's stdout.
#[test]
fn test_exec_with_a_terminal_runs_the_command_on_one() {
    let guest = Guest::start();
    let out = common::output_with_stdin(
        guest.spry("exec").args([
            "-t",
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo on-a-terminal; stty size; echo to-stderr >&2",
        ]),
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("on-a-terminal"), "{text:?}");
    assert!(text.contains("24 80"), "{text:?}");
    assert!(text.contains("to-stderr"), "{text:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// Typed input reaches a shell reading its terminal, and its exit status is
/// spry's.
#[test]
fn test_shell_on_a_terminal_reads_what_is_typed() {
    let guest = Guest::start();
    let out = common::output_with_stdin(
        guest.spry("exec").args(["-t", "--", "sh"]),
        b"echo typed-$((40+2)); exit 3\n",
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("typed-42"), "{out:?}");
}

/// Ctrl-C typed on the terminal is the guest terminal's interrupt: the command
/// in its foreground gets SIGINT.
#[test]
fn test_ctrl_c_on_a_terminal_interrupts_the_command() {
    let guest = Guest::start();
    let mut child = guest
        .spry("exec")
        .args(["-t", "--", "sh", "-c", "echo ready; exec sleep 30"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spry exec");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "no ready line"
        );
    }
    // The shell printed it, then exec'd sleep: a moment for the exec.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&[0x03]).expect("type Ctrl-C");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// What one command run through the library ended with.
#[derive(Debug)]
struct Run {
    pid: Option<u32>,
    ended: Ended,
    stdout: String,
    stderr: String,
}

impl Guest {
    /// Runs `request` through [`Session`], saying `version` in the HELLO.
    fn run(&self, request: &ExecRequest, version: u16) -> Result<Run, ClientError> {
        let stream = client::connect(&self.uds, 52)?;
        let session = Session::start_speaking(stream, request, version)?;
        let pid = session.guest_pid();
        session.close_stdin()?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ended = session.wait(&mut out, &mut err)?;
        Ok(Run {
            pid,
            ended,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }
}

/// A container root file system: a static busybox as /bin/busybox, /bin/sh and
/// the few applets the tests run, a /proc directory, a file only it holds.
fn container_root(scratch: &Scratch) -> PathBuf {
    let root = scratch.path("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::create_dir(root.join("proc")).expect("mkdir");
    std::fs::create_dir(root.join("work")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox (busybox-static)");
    for applet in ["sh", "id", "cat", "ls", "grep", "tr", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("only-in-root"), "inside\n").expect("write");
    // Reachable by the unprivileged user the command becomes after chroot.
    for dir in [&root, &root.join("bin"), &root.join("work")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

fn sh(script: &str, env: &[&str], container: ContainerSpec) -> ExecRequest {
    ExecRequest {
        argv: ["sh", "-c", script].map(Into::into).to_vec(),
        env: env.iter().map(Into::into).collect(),
        cwd: "/work".into(),
        terminal: None,
        container: Some(container),
    }
}

/// uid and gid 1000, groups 1000 and 2000, open files at most 64, umask 027,
/// the EXEC environment only.
fn user_1000(root: &Path) -> ContainerSpec {
    ContainerSpec {
        root: root.into(),
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1000, 2000],
        rlimits: vec![Rlimit {
            resource: Rlimit::resource_by_name("RLIMIT_NOFILE").expect("known"),
            soft: 64,
            hard: 64,
        }],
        umask: Some(0o027),
        replace_env: true,
        no_new_privileges: true,
        new_pid_namespace: false,
        join_pid: None,
    }
}

#[test]
fn test_container_runs_chrooted_as_its_user_with_its_env_limits_and_umask() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let host_file = scratch.write("only-on-the-host", b"host\n");
    let script = format!(
        "cat /only-in-root; [ -e {} ] && echo host-file-visible; pwd; id -u; id -g; id -G; \
         echo \"$PATH ${{ONLY-unset}} ${{AGENT_ONLY-unset}}\"; ulimit -n; umask; echo $$",
        host_file.display()
    );

    let run = guest
        .run(
            &sh(&script, &["PATH=/bin", "ONLY=given"], user_1000(&root)),
            3,
        )
        .expect("run in the container");

    let pid = run.pid.expect("a version-3 agent reports the pid");
    let want = format!("inside\n/work\n1000\n1000\n1000 2000\n/bin given unset\n64\n0027\n{pid}\n");
    assert_eq!(run.stdout, want, "{run:?}");
    assert_eq!(run.ended, Ended::Exited(0), "{run:?}");
}

#[test]
fn test_container_without_env_replacement_adds_to_the_agent_s() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let spec = ContainerSpec {
        replace_env: false,
        ..user_1000(&root)
    };

    let run = guest
        .run(
            &sh("echo ${AGENT_ONLY-unset} $ONLY", &["ONLY=given"], spec),
            3,
        )
        .expect("run in the container");

    assert_eq!(run.stdout, "agent given\n", "{run:?}");
}

#[test]
fn test_container_in_a_new_pid_namespace_is_pid_1_with_its_own_proc() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let spec = ContainerSpec {
        new_pid_namespace: true,
        ..user_1000(&root)
    };

    let run = guest
        .run(
            &sh(
                "echo $$; cat /proc/1/comm; grep NoNewPrivs /proc/self/status",
                &["PATH=/bin"],
                spec,
            ),
            3,
        )
        .expect("run in the container");

    let pid = run.pid.expect("a pid");
    assert_ne!(pid, 1, "STARTED is the pid the agent sees");
    assert_eq!(run.stdout, "1\nsh\nNoNewPrivs:\t1\n", "{run:?}");
    assert_eq!(run.ended, Ended::Exited(0), "{run:?}");
    // The /proc mount was the command's alone.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&root.display().to_string()), "{mounts}");
}

/// An exec into a running container (`ctr task exec`) joins its init's PID and
/// mount namespaces: it sees the init as pid 1 and the container's own /proc.
#[test]
fn test_exec_joins_the_pid_and_mount_namespaces_of_the_container_s_init() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let init = sh(
        "echo started; while :; do sleep 1; done",
        &["PATH=/bin"],
        ContainerSpec {
            new_pid_namespace: true,
            ..user_1000(&root)
        },
    );
    let stream = client::connect(&guest.uds, 52).expect("connect");
    let session = Session::start(stream, &init).expect("start the init");
    let init_pid = session.guest_pid().expect("the init's pid");
    let signaller = session.signaller();

    let run = guest
        .run(
            &sh(
                "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo",
                &["PATH=/bin"],
                ContainerSpec {
                    join_pid: Some(init_pid),
                    ..user_1000(&root)
                },
            ),
            3,
        )
        .expect("exec into the container");
    signaller.send(libc::SIGKILL).expect("kill the init");
    let ended = session
        .wait(&mut Vec::new(), &mut Vec::new())
        .expect("init ends");

    let mut lines = run.stdout.lines();
    let pid_inside: u32 = lines.next().and_then(|l| l.parse().ok()).expect("a pid");
    assert!(pid_inside > 1, "{run:?}");
    assert_eq!(
        lines.next(),
        Some("sh -c echo started; while :; do sleep 1; done "),
        "{run:?}"
    );
    assert_eq!(run.ended, Ended::Exited(0), "{run:?}");
    assert_eq!(ended, Ended::Signalled(9));
}

#[test]
fn test_exec_joining_a_gone_process_fails_with_the_reason() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let spec = ContainerSpec {
        join_pid: Some(u32::MAX - 1),
        ..user_1000(&root)
    };

    let err = guest.run(&sh("true", &["PATH=/bin"], spec), 3).unwrap_err();

    let text = err.to_string();
    assert!(
        text.contains("join the namespaces of pid 4294967294"),
        "{text}"
    );
}

#[test]
fn test_container_with_a_missing_root_fails_with_the_reason() {
    let guest = Guest::start();
    let spec = ContainerSpec {
        root: "/nonexistent-container-root".into(),
        ..ContainerSpec::default()
    };

    let failed = guest.run(&sh("true", &[], spec), 3);

    let Err(ClientError::Failed(why)) = failed else {
        panic!("not FAILED: {failed:?}");
    };
    assert_eq!(
        why,
        "chroot /nonexistent-container-root: No such file or directory"
    );
}

#[test]
fn test_container_with_a_missing_workdir_or_program_fails_as_exec_does() {
    let guest = Guest::start();
    let scratch = Scratch::new();
    let root = container_root(&scratch);
    let mut request = sh("true", &["PATH=/bin"], user_1000(&root));
    request.cwd = "/no-such-dir".into();

    let failed = guest.run(&request, 3);
    request.cwd = "/".into();
    request.argv = vec!["no-such-program".into()];
    let missing = guest.run(&request, 3).expect("run in the container");

    assert!(
        matches!(&failed, Err(ClientError::Failed(why)) if why == "cd /no-such-dir: No such file or directory"),
        "{failed:?}"
    );
    assert_eq!(missing.ended, Ended::Exited(127), "{missing:?}");
    assert!(missing.stderr.contains("no-such-program"), "{missing:?}");
}

#[test]
fn test_older_hosts_still_run_commands_without_a_pid() {
    let guest = Guest::start();
    let request = ExecRequest {
        argv: ["sh", "-c", "echo $AGENT_ONLY"].map(Into::into).to_vec(),
        ..ExecRequest::default()
    };

    let v2 = guest.run(&request, 2).expect("a version-2 host");
    let v1 = guest.run(&request, 1).expect("a version-1 host");

    assert_eq!((v2.pid, v2.stdout.as_str()), (None, "agent\n"));
    assert_eq!((v1.pid, v1.stdout.as_str()), (None, "agent\n"));
}

#[test]
fn test_started_reports_the_pid_of_a_plain_command() {
    let guest = Guest::start();
    let request = ExecRequest {
        argv: ["sh", "-c", "echo $$"].map(Into::into).to_vec(),
        ..ExecRequest::default()
    };

    let run = guest.run(&request, 3).expect("run");

    assert_eq!(run.stdout, format!("{}\n", run.pid.expect("a pid")));
}

#[test]
fn test_a_container_asked_of_a_version_2_session_is_refused() {
    let guest = Guest::start();
    let request = sh("true", &[], ContainerSpec::default());

    let refused = guest.run(&request, 2);

    assert!(
        matches!(refused, Err(ClientError::NoContainer(2))),
        "{refused:?}"
    );
}

/// The guest init's container mounts (`container_mounts` in
/// resources/guest/init), run by busybox's sh and mount in a mount namespace of
/// their own on a fake root: each where its mount point is or can be made,
/// never through the image's symlinks.
#[test]
fn test_guest_init_mounts_a_container_s_file_systems_where_it_can() {
    let scratch = Scratch::new();
    let root = scratch.path("container");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    // An image's /sys pointing out of it must not be mounted on.
    std::os::unix::fs::symlink("/", root.join("sys")).expect("symlink");
    let bin = scratch.path("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for applet in ["mount", "mkdir", "grep", "cut"] {
        std::os::unix::fs::symlink("/bin/busybox", bin.join(applet)).expect("symlink");
    }
    let script = format!(
        "mount --make-rprivate / && PATH={bin}:$PATH && SPRY_INIT_FUNCTIONS_ONLY=1 && \
         . {init} && container_mounts {root} && grep ' {root}/' /proc/mounts | cut -d' ' -f2",
        bin = bin.display(),
        init = common::repo().join("resources/guest/init").display(),
        root = root.display(),
    );

    let out = Command::new("unshare")
        .args(["-m", "/bin/busybox", "sh", "-c", &script])
        .output()
        .expect("run unshare");

    let r = root.display();
    assert_eq!(
        stdout(&out),
        format!("{r}/proc\n{r}/dev\n{r}/dev/pts\n{r}/dev/shm\n"),
        "{out:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&r.to_string()), "{mounts}");
}
