/*
 * alrmbind.c - calls bind() once while a 1 ms interval timer keeps
 * interrupting it with SIGALRM (handler installed with SA_RESTART), to show
 * how a bind that grmwrap holds in seccomp user notification behaves under
 * signals.
 *
 * Usage: alrmbind PORT
 *
 * stdout carries exactly these lines, each flushed at once:
 *   bind ret=<ret> errno=<errno> alarms=<count> reuseport=<0|1>
 *   signal <n>                 (SIGTERM/SIGINT, then exit status 0)
 * After the bind line (whatever the bind returned) the program answers every
 * datagram with "<pid> " + payload; the payload "exit N" is answered and then
 * the program exits with status N. errno is 0 when bind succeeded.
 * Usage errors exit with status 2, other setup failures with status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_PAYLOAD 65536

static volatile sig_atomic_t alarms;
static volatile sig_atomic_t stop_sig;

static void on_alarm(int sig)
{
	(void)sig;
	alarms = alarms + 1;
}

static void on_stop(int sig)
{
	stop_sig = sig;
}

static void fatal(const char *what)
{
	fprintf(stderr, "alrmbind: %s: %s\n", what, strerror(errno));
	exit(1);
}

static long exit_code(const char *p, size_t n)
{
	long v = 0;
	size_t i;

	if (n < 6 || n > 14 || memcmp(p, "exit ", 5) != 0)
		return -1;
	for (i = 5; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

static void set_timer(long usec)
{
	struct itimerval it;

	memset(&it, 0, sizeof(it));
	it.it_interval.tv_usec = usec;
	it.it_value.tv_usec = usec;
	if (setitimer(ITIMER_REAL, &it, NULL) < 0)
		fatal("setitimer");
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct sockaddr_in sin;
	sigset_t block, unblocked;
	char *end;
	long port;
	int fd, ret, err, rp = 0;
	socklen_t len = sizeof(rp);
	pid_t pid = getpid();
	char prefix[32];
	size_t prefix_len;
	static char buf[32 + MAX_PAYLOAD];

	if (argc != 2 || argv[1][0] < '0' || argv[1][0] > '9') {
		fprintf(stderr, "usage: alrmbind PORT\n");
		return 2;
	}
	errno = 0;
	port = strtol(argv[1], &end, 10);
	if (errno != 0 || *end != '\0' || port < 0 || port > 65535) {
		fprintf(stderr, "alrmbind: PORT must be a decimal number from 0 to 65535\n");
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGALRM, &sa, NULL) < 0)
		fatal("sigaction(SIGALRM)");

	sa.sa_handler = on_stop;
	sa.sa_flags = 0;
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGINT);
	if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
		fatal("sigaction");

	set_timer(1000);

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fatal("socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)port);
	sin.sin_addr.s_addr = htonl(INADDR_ANY);

	errno = 0;
	ret = bind(fd, (struct sockaddr *)&sin, sizeof(sin));
	err = ret < 0 ? errno : 0;

	set_timer(0);

	if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &rp, &len) < 0)
		fatal("getsockopt(SO_REUSEPORT)");
	printf("bind ret=%d errno=%d alarms=%d reuseport=%d\n", ret, err,
	       (int)alarms, rp != 0);
	fflush(stdout);

	/* As in echo.c: the stop signals get through only inside ppoll(). */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	if (sigprocmask(SIG_BLOCK, &block, &unblocked) < 0)
		fatal("sigprocmask");
	sigdelset(&unblocked, SIGTERM);
	sigdelset(&unblocked, SIGINT);

	prefix_len = (size_t)snprintf(prefix, sizeof(prefix), "%d ", (int)pid);
	memcpy(buf, prefix, prefix_len);

	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		struct sockaddr_storage from;
		socklen_t fromlen;
		ssize_t n;
		long code;

		if (stop_sig != 0) {
			printf("signal %d\n", (int)stop_sig);
			fflush(stdout);
			exit(0);
		}
		if (ppoll(&pfd, 1, NULL, &unblocked) < 0) {
			if (errno == EINTR)
				continue;
			fatal("ppoll");
		}
		fromlen = sizeof(from);
		n = recvfrom(fd, buf + prefix_len, MAX_PAYLOAD, MSG_DONTWAIT,
			     (struct sockaddr *)&from, &fromlen);
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				fprintf(stderr, "alrmbind: recvfrom: %s\n", strerror(errno));
			continue;
		}
		if (sendto(fd, buf, prefix_len + (size_t)n, 0,
			   (struct sockaddr *)&from, fromlen) < 0)
			fprintf(stderr, "alrmbind: sendto: %s\n", strerror(errno));
		code = exit_code(buf + prefix_len, (size_t)n);
		if (code >= 0)
			exit((int)code);
	}
}
