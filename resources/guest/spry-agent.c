/*
 * spry-agent: runs commands for the host inside a spry guest.
 *
 *   spry-agent [--vsock PORT | --unix PATH]
 *
 * Listens on a vsock stream port (default 52; the host reaches it through the
 * vsock device's Unix socket with "CONNECT 52") and serves one command per
 * connection in a child process of its own, speaking protocol version 3 of
 * docs/agent-protocol.md (and versions 1 and 2): the host sends HELLO,
 * optionally TERMINAL and CONTAINER, and EXEC, then STDIN data, SIGNALs and
 * WINSIZE changes; the agent answers HELLO, STARTED (the command's pid), then
 * STDOUT and STDERR data, then EXIT. With TERMINAL the command runs on a new
 * pseudo-terminal: its output, both streams, comes as STDOUT. With CONTAINER it
 * runs chrooted into a container's root file system, as another user, with
 * rlimits, a umask, only the environment EXEC gives and optionally in a new PID
 * namespace.
 * --unix serves the same protocol on a Unix socket, so the host side can be
 * tested against this very program without a VM.
 *
 * Why C: the guest's root file system is busybox and this agent, built with
 * the machine's gcc against static glibc like spry-exec.c; nothing else runs
 * in the guest. Started by the guest's init; built by build.sh into
 * /sbin/spry-agent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define PROTOCOL_VERSION 3
#define OLDEST_VERSION 1
#define CONTAINER_VERSION 3 /* CONTAINER and STARTED */
#define MAX_FRAME (1u << 20)   /* EXEC may carry a long argv and env */
#define CHUNK 65536            /* STDOUT/STDERR frames carry at most this */
#define STDIN_BUFFER (1u << 18) /* stop reading the host when this is queued */
/* STDIN frames carry at most CHUNK bytes too: the host reads them only while
 * CHUNK more fit in the buffer. */

enum {
	HELLO = 'H', EXEC = 'E', STDIN = 'I', SIGNAL = 'S',       /* host -> agent */
	TERMINAL = 'T', WINSIZE = 'W',                            /* host -> agent, v2 */
	CONTAINER = 'C',                                          /* host -> agent, v3 */
	STDOUT = 'O', STDERR = 'R', EXIT = 'X', FAILED = 'F',     /* agent -> host */
	STARTED = 'P',                                            /* agent -> host, v3 */
};

/* CONTAINER's flags. */
#define REPLACE_ENV 1u
#define NO_NEW_PRIVS 2u
#define NEW_PID_NS 4u
#define KNOWN_FLAGS (REPLACE_ENV | NO_NEW_PRIVS | NEW_PID_NS)
#define KEEP_UMASK 0xffffffffu


/*
 * The command starts with every signal at its default and none blocked. The
 * agent itself ignores SIGPIPE and SIGCHLD, and init starts it as a background
 * job, which a shell without job control starts with SIGINT and SIGQUIT
 * ignored; ignored dispositions survive exec, and a shell cannot even trap a
 * signal that was ignored when it started, so without this ^C and a SIGNAL
 * frame carrying SIGINT would never reach the command.
 */
static void reset_signals(void)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t none;

	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* fails, harmlessly, for SIGKILL and SIGSTOP */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}
static void die(const char *what)
{
	fprintf(stderr, "spry-agent: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A frame: kind (1 byte), payload length (u32 little-endian), payload. */
static int send_frame(int sock, uint8_t kind, const void *payload, uint32_t len)
{
	uint8_t head[5] = { kind, len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff,
			    (len >> 24) & 0xff };
	if (write_all(sock, head, sizeof(head)) < 0)
		return -1;
	return len ? write_all(sock, payload, len) : 0;
}

/* Reads one frame; *payload is malloc'd (NUL-terminated for convenience). */
static int recv_frame(int sock, uint8_t *kind, char **payload, uint32_t *len)
{
	uint8_t head[5];
	if (read_all(sock, head, sizeof(head)) < 0)
		return -1;
	*kind = head[0];
	*len = head[1] | head[2] << 8 | head[3] << 16 | (uint32_t)head[4] << 24;
	if (*len > MAX_FRAME)
		return -1;
	*payload = malloc(*len + 1);
	if (!*payload)
		return -1;
	if (read_all(sock, *payload, *len) < 0) {
		free(*payload);
		return -1;
	}
	(*payload)[*len] = 0;
	return 0;
}

static void fail(int sock, const char *fmt, ...)
{
	char msg[512];
	va_list args;
	int n;

	va_start(args, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, args);
	va_end(args);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	send_frame(sock, FAILED, msg, (uint32_t)n);
}

static uint32_t le32(const char *p)
{
	const uint8_t *u = (const uint8_t *)p;
	return u[0] | u[1] << 8 | u[2] << 16 | (uint32_t)u[3] << 24;
}

/*
 * EXEC's payload: argc (u32), envc (u32), then argc + envc + 1 NUL-terminated
 * strings: the arguments, environment entries ("NAME=value", set on top of the
 * agent's own environment) and the working directory (empty: /). Splits it in
 * place; -1 when it is malformed.
 */
struct command {
	char **argv, **envp, *cwd;
};

static int parse_exec(char *p, uint32_t len, struct command *cmd)
{
	char *end = p + len;
	uint32_t argc, envc, i;
	char **strings;

	if (len < 8)
		return -1;
	argc = le32(p);
	envc = le32(p + 4);
	if (argc == 0 || argc > len || envc > len)
		return -1;
	strings = calloc((size_t)argc + envc + 3, sizeof(char *));
	if (!strings)
		return -1;
	p += 8;
	for (i = 0; i < argc + envc + 1; i++) {
		char *nul = memchr(p, 0, (size_t)(end - p));
		if (!nul) {
			free(strings);
			return -1;
		}
		/* argv ends with NULL, envp starts after it and ends with NULL. */
		strings[i < argc ? i : i + 1] = p;
		p = nul + 1;
	}
	cmd->argv = strings;
	cmd->envp = strings + argc + 1;
	cmd->cwd = strings[argc + envc + 1];
	strings[argc + envc + 1] = NULL;
	if (!*cmd->cwd)
		cmd->cwd = "/";
	return 0;
}

static uint64_t le64(const char *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* The next `bytes` of [*p, end), advancing *p; NULL when fewer are left. */
static const char *take(char **p, const char *end, size_t bytes)
{
	char *at = *p;
	if ((size_t)(end - at) < bytes)
		return NULL;
	*p = at + bytes;
	return at;
}

/*
 * CONTAINER's payload, all LE: the root (NUL-terminated; empty: no chroot),
 * uid u32, gid u32, ngroups u32 and as many gids (u32), nrlimits u32 and as many
 * (resource u32, soft u64, hard u64), umask u32 (KEEP_UMASK: unchanged), flags
 * u32. Bytes after flags are ignored: a later version may append fields (and
 * would say so with a flag this one refuses). `root` points into the payload,
 * which must outlive it; -1 when it is malformed.
 */
struct limit {
	int resource;
	struct rlimit value;
};

struct container {
	const char *root;
	uid_t uid;
	gid_t gid;
	size_t ngroups, nrlimits;
	gid_t *groups;
	struct limit *rlimits;
	uint32_t umask, flags;
	uint32_t join_pid;       /* 0, or a process whose PID and mount namespaces to join */
	int join_pid_ns, join_mnt_ns; /* their descriptors, opened before the fork */
};

static int parse_container(char *p, uint32_t len, struct container *c)
{
	char *end = p + len, *nul = memchr(p, 0, len);
	const char *w;
	uint32_t n, i;

	memset(c, 0, sizeof(*c));
	if (!nul)
		return -1;
	c->root = p;
	p = nul + 1;
	if (!(w = take(&p, end, 12)))
		return -1;
	c->uid = le32(w);
	c->gid = le32(w + 4);
	n = le32(w + 8);
	/* Counts are checked against what is left, so a lying count cannot make
	 * the agent allocate more than the frame holds. */
	if (n > (size_t)(end - p) / 4 || !(c->groups = calloc(n + 1, sizeof(gid_t))))
		return -1;
	for (i = 0; i < n; i++)
		c->groups[i] = le32(take(&p, end, 4));
	c->ngroups = n;
	if (!(w = take(&p, end, 4)))
		return -1;
	n = le32(w);
	if (n > (size_t)(end - p) / 20 || !(c->rlimits = calloc(n + 1, sizeof(struct limit))))
		return -1;
	for (i = 0; i < n; i++) {
		w = take(&p, end, 20);
		c->rlimits[i].resource = (int)le32(w);
		c->rlimits[i].value.rlim_cur = le64(w + 4);
		c->rlimits[i].value.rlim_max = le64(w + 12);
	}
	c->nrlimits = n;
	if (!(w = take(&p, end, 8)))
		return -1;
	c->umask = le32(w);
	c->flags = le32(w + 4);
	c->join_pid_ns = c->join_mnt_ns = -1;
	/* join_pid came last; a payload without a whole one joins nothing. */
	if ((w = take(&p, end, 4)))
		c->join_pid = le32(w);
	return 0;
}

/*
 * An exec into a running container joins its init's PID and mount namespaces,
 * as `runc exec` does: it sees the container's processes and its /proc. The
 * descriptors are opened here, in the per-connection process, while the
 * guest's /proc is still in view.
 */
static int open_join(struct container *c, char *why, size_t whylen)
{
	char path[64];

	if (!c->join_pid)
		return 0;
	snprintf(path, sizeof(path), "/proc/%u/ns/pid", (unsigned)c->join_pid);
	if ((c->join_pid_ns = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		goto failed;
	snprintf(path, sizeof(path), "/proc/%u/ns/mnt", (unsigned)c->join_pid);
	if ((c->join_mnt_ns = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		goto failed;
	/* The next child is born in the joined PID namespace. */
	snprintf(path, sizeof(path), "/proc/%u/ns/pid", (unsigned)c->join_pid);
	if (setns(c->join_pid_ns, CLONE_NEWPID) < 0)
		goto failed;
	return 0;
failed:
	snprintf(why, whylen, "join the namespaces of pid %u: %s: %s", (unsigned)c->join_pid,
		 path, strerror(errno));
	return -1;
}

/*
 * In the command's process, before exec: a step of entering the container
 * failed. The reason goes to the agent through `report` (it becomes FAILED);
 * errno is the failed call's.
 */
static void setup_failed(int report, const char *step, const char *arg)
{
	int saved = errno;
	dprintf(report, "%s%s%s: %s", step, *arg ? " " : "", arg, strerror(saved));
	_exit(126);
}

/*
 * The command's own /proc, showing its new PID namespace, where the root has a
 * /proc directory. In a mount namespace of its own (with propagation off), so
 * the mount is the command's alone and goes away with it.
 */
static void mount_proc(const char *root, int report)
{
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s/proc", root);
	if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	if (unshare(CLONE_NEWNS) < 0)
		setup_failed(report, "new mount namespace", "");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		setup_failed(report, "making mounts private", "");
	if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		setup_failed(report, "mount proc on", path);
}

/*
 * CONTAINER's steps in the command's process, in this order: rlimits, umask,
 * (its /proc in a new PID namespace,) chroot and cd /, cd to the working
 * directory, supplementary groups, gid, uid (last of the ids: after it the
 * others can no longer be changed), no_new_privs. Limits and umask come first
 * because they need no privileges; everything that needs them comes before
 * setuid.
 */
static void enter_container(const struct container *c, const char *cwd, int report)
{
	char id[16];

	for (size_t i = 0; i < c->nrlimits; i++) {
		if (setrlimit((__rlimit_resource_t)c->rlimits[i].resource, &c->rlimits[i].value) < 0) {
			snprintf(id, sizeof(id), "%d", c->rlimits[i].resource);
			setup_failed(report, "setrlimit", id);
		}
	}
	if (c->umask != KEEP_UMASK)
		umask((mode_t)(c->umask & 0777));
	if (c->flags & NEW_PID_NS)
		mount_proc(c->root, report);
	/* setns to a mount namespace moves root and cwd to its root, from where
	 * the chroot below finds the container again. */
	if (c->join_mnt_ns >= 0 && setns(c->join_mnt_ns, CLONE_NEWNS) < 0)
		setup_failed(report, "join the mount namespace of the container", "");
	if (*c->root) {
		if (chroot(c->root) < 0)
			setup_failed(report, "chroot", c->root);
		if (chdir("/") < 0)
			setup_failed(report, "cd", "/");
	}
	if (chdir(cwd) < 0)
		setup_failed(report, "cd", cwd);
	if (setgroups(c->ngroups, c->groups) < 0)
		setup_failed(report, "setgroups", "");
	snprintf(id, sizeof(id), "%u", (unsigned)c->gid);
	if (setgid(c->gid) < 0)
		setup_failed(report, "setgid", id);
	snprintf(id, sizeof(id), "%u", (unsigned)c->uid);
	if (setuid(c->uid) < 0)
		setup_failed(report, "setuid", id);
	if ((c->flags & NO_NEW_PRIVS) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		setup_failed(report, "no_new_privs", "");
}

static void set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);
	if (flags >= 0)
		fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Sends what the pipe holds as frames of `kind`; at its end an empty frame. */
static int forward_output(int sock, int *fd, uint8_t kind)
{
	static char buf[CHUNK];
	ssize_t n = read(*fd, buf, sizeof(buf));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		close(*fd);
		*fd = -1;
		return send_frame(sock, kind, NULL, 0);
	}
	return send_frame(sock, kind, buf, (uint32_t)n);
}

/*
 * A new pseudo-terminal of `size` for the command: its side (the slave) as the
 * command's stdin, stdout and stderr (in[0] = out[1] = err[1]), the master as
 * where its input goes (in[1], a descriptor of its own) and its output comes
 * from (out[0]); no stderr stream (err[0] = -1). Keeps the master in *master for
 * WINSIZE. -1 with errno on failure.
 */
static int open_terminal(int *master, struct winsize *size, int in[2], int out[2], int err[2])
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC), s;
	if (m < 0)
		return -1;
	if (grantpt(m) || unlockpt(m) || (s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
		close(m);
		return -1;
	}
	if (size->ws_row && size->ws_col)
		ioctl(m, TIOCSWINSZ, size);
	in[0] = out[1] = err[1] = s;
	in[1] = fcntl(m, F_DUPFD_CLOEXEC, 0);
	out[0] = m;
	err[0] = -1;
	*master = m;
	return in[1] < 0 ? -1 : 0;
}

/* One connection: HELLO, EXEC, then relay until the command ended. */
static void serve(int sock)
{
	uint8_t kind;
	char *payload;
	uint32_t len;
	struct command cmd;
	int in[2], out[2], err[2], status;
	int tty = 0, master = -1;
	struct winsize size = { 0 };
	pid_t pid;
	char *queued = NULL; /* stdin bytes received but not yet taken by the command */
	size_t queued_len = 0, queued_off = 0;
	int host_open = 1, stdin_eof = 0, exited = 0;
	uint8_t hello[2] = { PROTOCOL_VERSION & 0xff, PROTOCOL_VERSION >> 8 };
	unsigned version;
	struct container box;
	char *box_payload = NULL; /* box's strings point into it */
	int report[2];
	char why[512];
	size_t why_len = 0;

	if (recv_frame(sock, &kind, &payload, &len) < 0 || kind != HELLO || len < 2)
		return;
	if (send_frame(sock, HELLO, hello, sizeof(hello)) < 0)
		return;
	/* Each side says the newest version it speaks; the session uses the older
	 * of the two, so a newer host is served too (versions 1 and 2 of this agent
	 * refused one). */
	version = (uint8_t)payload[0] | (unsigned)(uint8_t)payload[1] << 8;
	free(payload);
	if (version < OLDEST_VERSION) {
		fail(sock, "the host speaks protocol %u; this agent speaks %d to %d", version,
		     OLDEST_VERSION, PROTOCOL_VERSION);
		return;
	}
	if (version > PROTOCOL_VERSION)
		version = PROTOCOL_VERSION;
	/* TERMINAL (rows, cols: u16 LE each) and CONTAINER may come before EXEC. */
	for (;;) {
		if (recv_frame(sock, &kind, &payload, &len) < 0)
			return;
		if (kind == EXEC)
			break;
		if (kind == CONTAINER) {
			/* Never skipped: running the command outside its container as
			 * root is worse than not running it. */
			free(box_payload);
			box_payload = payload;
			if (version < CONTAINER_VERSION) {
				fail(sock, "CONTAINER needs protocol %d; this session speaks %u",
				     CONTAINER_VERSION, version);
				return;
			}
			if (parse_container(payload, len, &box) < 0) {
				fail(sock, "malformed CONTAINER request");
				return;
			}
			if (box.flags & ~KNOWN_FLAGS) {
				fail(sock, "CONTAINER asks for flags %#x, which this agent does not know",
				     box.flags & ~KNOWN_FLAGS);
				return;
			}
			continue;
		}
		if (kind == TERMINAL && len == 4) {
			tty = 1;
			size.ws_row = (unsigned short)((uint8_t)payload[0] | (uint8_t)payload[1] << 8);
			size.ws_col = (unsigned short)((uint8_t)payload[2] | (uint8_t)payload[3] << 8);
		}
		free(payload); /* anything else before EXEC is skipped */
	}
	if (parse_exec(payload, len, &cmd) < 0) {
		fail(sock, "malformed EXEC request%s", "");
		return;
	}
	if (tty) {
		if (open_terminal(&master, &size, in, out, err) < 0) {
			fail(sock, "cannot open a terminal: %s", strerror(errno));
			return;
		}
	} else if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		fail(sock, "pipe: %s", strerror(errno));
		return;
	}
	/* Why the command could not start, from its process; closed unwritten by
	 * its exec. */
	if (pipe2(report, O_CLOEXEC)) {
		fail(sock, "pipe: %s", strerror(errno));
		return;
	}
	/* The next child of this (per-connection) process is pid 1 of a new PID
	 * namespace; this process stays outside, so waitpid and kill(-pid) work as
	 * for any child. Nothing else may fork in between. */
	if (box_payload && (box.flags & NEW_PID_NS) && unshare(CLONE_NEWPID) < 0) {
		fail(sock, "new PID namespace: %s%s", strerror(errno),
		     errno == EINVAL ? " (the guest kernel needs CONFIG_PID_NS)" : "");
		return;
	}
	if (box_payload) {
		char why[256];

		if (open_join(&box, why, sizeof(why)) < 0) {
			fail(sock, "%s", why);
			return;
		}
	}
	pid = fork();
	if (pid < 0) {
		fail(sock, "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		/* Its own session and process group, so a SIGNAL reaches its children too. */
		setsid();
		/* The terminal becomes the session's controlling terminal: job control,
		 * and ^C typed on it interrupts the command. */
		if (tty)
			ioctl(in[0], TIOCSCTTY, 0);
		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		reset_signals();
		if (box_payload) {
			enter_container(&box, cmd.cwd, report[1]);
			/* OCI: the process's env is all of its environment. execvp then
			 * searches the command's PATH (glibc's execvpe would search the
			 * agent's). */
			if (box.flags & REPLACE_ENV)
				clearenv();
		} else if (chdir(cmd.cwd) < 0) {
			dprintf(2, "spry-agent: cd %s: %s\n", cmd.cwd, strerror(errno));
			_exit(126);
		}
		for (char **e = cmd.envp; *e; e++)
			putenv(*e);
		execvp(cmd.argv[0], cmd.argv);
		dprintf(2, "spry-agent: %s: %s\n", cmd.argv[0], strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}
	close(report[1]);
	for (;;) {
		ssize_t n = read(report[0], why + why_len, sizeof(why) - 1 - why_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		why_len += (size_t)n;
		if (why_len == sizeof(why) - 1)
			break;
	}
	close(report[0]);
	if (why_len) {
		why[why_len] = 0;
		waitpid(pid, &status, 0);
		fail(sock, "%s", why);
		return;
	}
	if (version >= CONTAINER_VERSION) {
		uint8_t started[4] = { pid & 0xff, (pid >> 8) & 0xff, (pid >> 16) & 0xff,
				       ((uint32_t)pid >> 24) & 0xff };
		/* A host gone already is noticed in the loop below. */
		send_frame(sock, STARTED, started, sizeof(started));
	}
	close(in[0]);
	if (out[1] != in[0])
		close(out[1]);
	if (err[1] != in[0] && err[1] != out[1])
		close(err[1]);
	set_nonblock(in[1]);
	set_nonblock(out[0]);
	if (err[0] >= 0)
		set_nonblock(err[0]);
	queued = malloc(STDIN_BUFFER);
	if (!queued)
		stdin_eof = 1;

	while (out[0] >= 0 || err[0] >= 0 || !exited) {
		struct pollfd p[4] = {
			{ .fd = out[0], .events = POLLIN },
			{ .fd = err[0], .events = POLLIN },
			/* Read the host only while the command's input has room. */
			{ .fd = host_open && queued_len < STDIN_BUFFER - CHUNK ? sock : -1,
			  .events = POLLIN },
			{ .fd = queued_len > queued_off || (stdin_eof && in[1] >= 0) ? in[1] : -1,
			  .events = POLLOUT },
		};
		if (!exited && waitpid(pid, &status, WNOHANG) == pid) {
			exited = 1;
			continue; /* the loop's condition may now be false */
		}
		if (poll(p, 4, exited ? -1 : 100) < 0 && errno != EINTR)
			break;
		if (p[0].revents && forward_output(sock, &out[0], STDOUT) < 0)
			break;
		if (p[1].revents && forward_output(sock, &err[0], STDERR) < 0)
			break;
		if (p[2].revents) {
			if (recv_frame(sock, &kind, &payload, &len) < 0) {
				/* The host went away: end the command and everything it started. */
				host_open = 0;
				kill(-pid, SIGKILL);
				stdin_eof = 1;
			} else if (kind == STDIN && len == 0) {
				stdin_eof = 1;
				free(payload);
			} else if (kind == STDIN && !stdin_eof) {
				if (queued_len + len > STDIN_BUFFER) {
					/* Frames larger than CHUNK break the protocol. */
					host_open = 0;
					kill(-pid, SIGKILL);
					stdin_eof = 1;
				} else {
					memcpy(queued + queued_len, payload, len);
					queued_len += len;
				}
				free(payload);
			} else if (kind == SIGNAL && len == 4) {
				kill(-pid, (int)le32(payload));
				free(payload);
			} else if (kind == WINSIZE && len == 4 && master >= 0 && out[0] == master) {
				size.ws_row = (unsigned short)((uint8_t)payload[0] | (uint8_t)payload[1] << 8);
				size.ws_col = (unsigned short)((uint8_t)payload[2] | (uint8_t)payload[3] << 8);
				ioctl(master, TIOCSWINSZ, &size); /* the kernel sends SIGWINCH */
				free(payload);
			} else {
				free(payload); /* unknown frames are ignored: later versions add some */
			}
		}
		if (p[3].revents && in[1] >= 0) {
			if (queued_len > queued_off) {
				ssize_t n = write(in[1], queued + queued_off, queued_len - queued_off);
				if (n > 0)
					queued_off += (size_t)n;
				else if (n < 0 && errno != EAGAIN && errno != EINTR)
					stdin_eof = 1, queued_off = queued_len; /* it closed its input */
				if (queued_off == queued_len) {
					queued_off = queued_len = 0;
				} else if (queued_off >= STDIN_BUFFER / 2) {
					memmove(queued, queued + queued_off, queued_len - queued_off);
					queued_len -= queued_off;
					queued_off = 0;
				}
			}
			if (stdin_eof && queued_off == queued_len) {
				/* A terminal cannot be half closed: its end of input is ^D. */
				if (tty)
					(void)!write(in[1], "\x04", 1);
				close(in[1]);
				in[1] = -1;
			}
		}
	}
	if (!exited)
		waitpid(pid, &status, 0);
	if (in[1] >= 0)
		close(in[1]);
	/* The master is out[0]: closed already once the command's output ended. */
	if (master >= 0 && out[0] == master)
		close(master);
	if (host_open) {
		uint8_t exit_frame[8] = { 0 };
		uint32_t code = WIFEXITED(status) ? (uint32_t)WEXITSTATUS(status) : 0;
		uint32_t sig = WIFSIGNALED(status) ? (uint32_t)WTERMSIG(status) : 0;
		for (int i = 0; i < 4; i++) {
			exit_frame[i] = (code >> (8 * i)) & 0xff;
			exit_frame[4 + i] = (sig >> (8 * i)) & 0xff;
		}
		send_frame(sock, EXIT, exit_frame, sizeof(exit_frame));
	}
}

static int listen_on(int argc, char **argv)
{
	int sock;
	if (argc == 3 && !strcmp(argv[1], "--unix")) {
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		if (strlen(argv[2]) >= sizeof(addr.sun_path)) {
			fprintf(stderr, "spry-agent: socket path too long: %s\n", argv[2]);
			exit(2);
		}
		strcpy(addr.sun_path, argv[2]);
		sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		unlink(argv[2]);
		if (sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
			die(argv[2]);
	} else {
		struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					    .svm_port = 52 };
		if (argc == 3 && !strcmp(argv[1], "--vsock")) {
			addr.svm_port = (unsigned)strtoul(argv[2], NULL, 10);
		} else if (argc != 1) {
			fputs("usage: spry-agent [--vsock PORT | --unix PATH]\n", stderr);
			exit(2);
		}
		sock = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
			die("vsock");
	}
	if (listen(sock, 16) < 0)
		die("listen");
	if (argc == 3 && !strcmp(argv[1], "--unix"))
		fprintf(stderr, "spry-agent: listening on %s\n", argv[2]);
	else
		fprintf(stderr, "spry-agent: listening on vsock port %s\n", argc == 3 ? argv[2] : "52");
	return sock;
}

int main(int argc, char **argv)
{
	int sock = listen_on(argc, argv);

	/* Connections are served by children that nobody waits for. */
	signal(SIGCHLD, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		int conn = accept4(sock, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept");
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(sock);
			/* The session waits for its command: undo the parent's SIG_IGN. */
			signal(SIGCHLD, SIG_DFL);
			serve(conn);
			_exit(0);
		}
		close(conn);
	}
}
