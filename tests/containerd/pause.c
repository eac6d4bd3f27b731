/* The infra ("pause") process of a pod sandbox: holds the namespaces and waits for a signal. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
	(void)sig;
	/* Reap zombies: a sandbox's init adopts orphans. */
	while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
	signal(SIGINT, on_term);
	signal(SIGTERM, on_term);
	signal(SIGCHLD, on_child);
	for (;;)
		pause();
	return 0;
}
