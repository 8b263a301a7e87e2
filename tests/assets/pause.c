/*
 * pause: the process that holds a test pod's namespaces, like Kubernetes' pause container.
 *
 * Sleeps in pause() until SIGTERM or SIGINT, and reaps any child re-parented to it (it is PID 1
 * of the pod's PID namespace when that namespace is shared). Built by the podtrace test harness
 * with `gcc -Os -static` into the sandbox image registry.k8s.io/pause:3.9, which it imports into
 * its private containerd (nothing can be pulled).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction stop, child;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("podtrace-test pause\n");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not running as pid 1\n");

	memset(&stop, 0, sizeof(stop));
	stop.sa_handler = on_stop;
	sigemptyset(&stop.sa_mask);
	if (sigaction(SIGTERM, &stop, NULL) < 0 || sigaction(SIGINT, &stop, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}

	memset(&child, 0, sizeof(child));
	child.sa_handler = on_child;
	sigemptyset(&child.sa_mask);
	child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGCHLD, &child, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}

	for (;;)
		pause();
}
