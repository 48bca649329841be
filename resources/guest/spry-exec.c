/*
 * spry-exec PROG [ARGS...]: reset every signal to its default action, unblock
 * all signals, then exec PROG (looked up in PATH).
 *
 * Why: the init is an ash script that starts the shell / the spry.cmd command
 * as a background job so that its `wait` can be interrupted by the SIGINT the
 * kernel sends init on Ctrl-Alt-Del. But a shell without job control starts
 * background jobs with SIGINT and SIGQUIT ignored, an ignored signal survives
 * exec, and ash cannot un-ignore it (`trap - INT` has no effect on a signal
 * ignored on entry). Without this, Ctrl-C would not interrupt anything in the
 * guest's shell. Built statically by build.sh into /sbin/spry-exec.
 */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t none;
	int sig;

	if (argc < 2) {
		fputs("usage: spry-exec PROG [ARGS...]\n", stderr);
		return 2;
	}
	sigemptyset(&dfl.sa_mask);
	for (sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL/SIGSTOP: fine */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execvp(argv[1], argv + 1);
	perror(argv[1]);
	return 127;
}
