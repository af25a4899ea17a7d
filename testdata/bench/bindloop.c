/*
 * bindloop.c - times bind() of UDP sockets, for grmbench's bind section,
 * and a syscall that no filter traps.
 *
 * Usage: bindloop ADDR PORT N
 *        bindloop --syscall N
 *        bindloop --syscall-allow-filter N
 *
 * Runs WARMUP + N rounds of: socket(AF_INET, SOCK_DGRAM), bind(ADDR:PORT),
 * getsockopt(SO_REUSEPORT), close(). It never sets SO_REUSEPORT itself, so
 * a socket that has it after bind() was bound by a supervisor on its
 * behalf (grmwrap sets it on the sockets it manages). Each bind() call is
 * timed alone with CLOCK_MONOTONIC; the first WARMUP rounds are not
 * counted. stdout gets one line:
 *   binds=N median_ns=M p90_ns=P p99_ns=Q min_ns=L round_mean_ns=R reuseport_after_bind=K
 * (round_mean_ns: mean time of a whole round, socket to close; K: rounds
 * whose socket had SO_REUSEPORT after bind). Errors go to stderr, exit 1;
 * usage errors exit 2.
 *
 * With --syscall it makes WARMUP * 20 unmeasured then N measured
 * syscall(SYS_getppid) calls, timed together, and prints:
 *   syscalls=N mean_ns=M
 * --syscall-allow-filter first installs a seccomp filter of one
 * instruction (return SECCOMP_RET_ALLOW): what any seccomp filter costs a
 * syscall, the floor for grmwrap's.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 50

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

/* syscalls times n getppid() syscalls (glibc would not cache it, but
 * syscall() makes sure every call enters the kernel). */
static int syscalls(long n)
{
	long long start;
	long i;

	if (n <= 0) {
		fprintf(stderr, "bindloop: bad N\n");
		return 2;
	}
	for (i = 0; i < WARMUP * 20; i++)
		syscall(SYS_getppid);
	start = now_ns();
	for (i = 0; i < n; i++)
		syscall(SYS_getppid);
	printf("syscalls=%ld mean_ns=%lld\n", n, (now_ns() - start) / n);
	fflush(stdout);
	return 0;
}

/* allow_all installs a seccomp filter that allows every syscall. */
static int allow_all(void)
{
	struct sock_filter insn[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
	struct sock_fprog prog = {.len = 1, .filter = insn};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
		fprintf(stderr, "bindloop: install seccomp filter: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sin;
	long long *took, start, end, t0, t1;
	long n, i, port, reuseport = 0;

	if (argc == 3 && strcmp(argv[1], "--syscall") == 0)
		return syscalls(strtol(argv[2], NULL, 10));
	if (argc == 3 && strcmp(argv[1], "--syscall-allow-filter") == 0)
		return allow_all() ? 1 : syscalls(strtol(argv[2], NULL, 10));
	if (argc != 4) {
		fprintf(stderr, "usage: bindloop ADDR PORT N | bindloop --syscall N | bindloop --syscall-allow-filter N\n");
		return 2;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	if (inet_pton(AF_INET, argv[1], &sin.sin_addr) != 1) {
		fprintf(stderr, "bindloop: bad address %s\n", argv[1]);
		return 2;
	}
	port = strtol(argv[2], NULL, 10);
	n = strtol(argv[3], NULL, 10);
	if (port <= 0 || port > 65535 || n <= 0) {
		fprintf(stderr, "bindloop: bad PORT or N\n");
		return 2;
	}
	sin.sin_port = htons((unsigned short)port);
	took = calloc((size_t)n, sizeof(*took));
	if (took == NULL) {
		fprintf(stderr, "bindloop: out of memory\n");
		return 1;
	}
	start = 0;
	for (i = -WARMUP; i < n; i++) {
		int fd, v = 0;
		socklen_t len = sizeof(v);

		if (i == 0)
			start = now_ns();
		fd = socket(AF_INET, SOCK_DGRAM, 0);
		if (fd < 0) {
			fprintf(stderr, "bindloop: socket: %s\n", strerror(errno));
			return 1;
		}
		t0 = now_ns();
		if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
			fprintf(stderr, "bindloop: bind %s:%ld (round %ld): %s\n", argv[1], port, i, strerror(errno));
			return 1;
		}
		t1 = now_ns();
		if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &v, &len) < 0) {
			fprintf(stderr, "bindloop: getsockopt: %s\n", strerror(errno));
			return 1;
		}
		close(fd);
		if (i >= 0) {
			took[i] = t1 - t0;
			reuseport += v != 0;
		}
	}
	end = now_ns();
	qsort(took, (size_t)n, sizeof(*took), cmp_ll);
	printf("binds=%ld median_ns=%lld p90_ns=%lld p99_ns=%lld min_ns=%lld round_mean_ns=%lld reuseport_after_bind=%ld\n",
	       n, took[n / 2], took[n * 9 / 10], took[n * 99 / 100], took[0], (end - start) / n, reuseport);
	fflush(stdout);
	free(took);
	return 0;
}
