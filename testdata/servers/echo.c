/*
 * echo.c - an "unmodified" UDP echo server for grmwrap integration tests.
 *
 * Usage: echo-c [--addr ADDR] [--tcp] [--reuseport] [--exit-after-ms N@G] PORT
 *
 *   --addr ADDR   IP literal to bind the UDP socket to (default 0.0.0.0).
 *                 An ADDR containing ':' is IPv6 (AF_INET6); for the
 *                 unspecified address "::" IPV6_V6ONLY is set to 0.
 *   --tcp         also bind a TCP socket of the same family to ADDR and the
 *                 port the UDP socket got, and listen(16) on it.
 *   --reuseport   set SO_REUSEPORT=1 on the UDP socket before bind().
 *   --exit-after-ms N@G
 *                 in generation G only (the GRMWRAP_GENERATION environment
 *                 variable), exit with status 1 N milliseconds after the
 *                 ready line (serving until then): a server whose later
 *                 start step fails.
 *   PORT          decimal port, may be 0.
 *
 * stdout carries exactly these lines, each flushed at once:
 *   ready pid=<pid> udp_reuseport=<0|1> tcp_reuseport=<0|1|-1> port=<port>
 *   bind-error errno=<n> <strerror text>          (then exit status 3)
 *   signal <n>                                    (SIGTERM/SIGINT: exit 0;
 *                                                  SIGHUP/SIGUSR1/SIGURG: go on)
 * Every datagram is answered with "<pid> " + payload; the payload "exit N"
 * is answered and then the server exits with status N. Three payloads are
 * commands, answered with "<pid> " + their result instead of an echo:
 *   bind N        a new AF_INET UDP socket binds 0.0.0.0:N (kept open):
 *                 "bind ret=<r> errno=<e>"
 *   reuseport V   setsockopt(SO_REUSEPORT, V) on the UDP socket:
 *                 "reuseport ret=<r> errno=<e> now=<getsockopt value>"
 *   attach-cbpf   attach a classic BPF reuseport program (return 0) to the
 *                 UDP socket: "attach ret=<r> errno=<e>"
 * The payload "hang" is answered, then the server stops reading for good:
 * it blocks until SIGTERM or SIGINT (a deadlocked server; it uses no CPU).
 * Usage errors exit with status 2, other setup failures with status 1;
 * their diagnostics go to stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/filter.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_PAYLOAD 65536
#define SIG_RING 64
#define NHANDLED 5 /* entries of handled[] in main */

/* Signal numbers received, in order. Written by the handler only; read by
 * the main loop only while the handled signals are blocked. */
static volatile sig_atomic_t sig_ring[SIG_RING];
static volatile sig_atomic_t sig_count;

static void on_signal(int sig)
{
	if (sig_count < SIG_RING) {
		sig_ring[sig_count] = sig;
		sig_count = sig_count + 1;
	}
}

static void usage(const char *msg)
{
	fprintf(stderr, "echo-c: %s\n", msg);
	fprintf(stderr, "usage: echo-c [--addr ADDR] [--tcp] [--reuseport] PORT\n");
	exit(2);
}

static void fatal(const char *what)
{
	fprintf(stderr, "echo-c: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void bind_error(int err)
{
	printf("bind-error errno=%d %s\n", err, strerror(err));
	fflush(stdout);
	exit(3);
}

static int parse_port(const char *s)
{
	char *end;
	long v;

	if (*s < '0' || *s > '9')
		usage("PORT must be a decimal number");
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > 65535)
		usage("PORT must be a decimal number from 0 to 65535");
	return (int)v;
}

/* exit_code returns N if the payload is exactly "exit N" (N: 1 to 9 decimal
 * digits), -1 otherwise. */
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

/* command runs a command payload (see the top of the file) on the UDP
 * socket udp, writing its result to out; it returns the result's length,
 * or 0 when the payload is not a command. */
static size_t command(int udp, const char *p, size_t n, char *out, size_t outlen)
{
	char arg[32];
	int r, v, e;
	socklen_t len = sizeof(v);

	if (n > 5 && n < 5 + sizeof(arg) && memcmp(p, "bind ", 5) == 0) {
		struct sockaddr_in sin;
		int fd = socket(AF_INET, SOCK_DGRAM, 0);

		memcpy(arg, p + 5, n - 5);
		arg[n - 5] = '\0';
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons((unsigned short)atoi(arg));
		r = bind(fd, (struct sockaddr *)&sin, sizeof(sin));
		e = r < 0 ? errno : 0;
		return (size_t)snprintf(out, outlen, "bind ret=%d errno=%d", r, e);
	}
	if (n > 10 && n < 10 + sizeof(arg) && memcmp(p, "reuseport ", 10) == 0) {
		memcpy(arg, p + 10, n - 10);
		arg[n - 10] = '\0';
		v = atoi(arg);
		r = setsockopt(udp, SOL_SOCKET, SO_REUSEPORT, &v, sizeof(v));
		e = r < 0 ? errno : 0;
		v = -1;
		getsockopt(udp, SOL_SOCKET, SO_REUSEPORT, &v, &len);
		return (size_t)snprintf(out, outlen, "reuseport ret=%d errno=%d now=%d", r, e, v);
	}
	if (n == 11 && memcmp(p, "attach-cbpf", 11) == 0) {
		struct sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, 0}};
		struct sock_fprog prog = {.len = 1, .filter = code};

		r = setsockopt(udp, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog));
		e = r < 0 ? errno : 0;
		return (size_t)snprintf(out, outlen, "attach ret=%d errno=%d", r, e);
	}
	return 0;
}

static int get_reuseport(int fd)
{
	int v = 0;
	socklen_t len = sizeof(v);

	if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &v, &len) < 0)
		fatal("getsockopt(SO_REUSEPORT)");
	return v != 0;
}

static void set_v6only_off(int fd)
{
	int off = 0;

	if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) < 0)
		fatal("setsockopt(IPV6_V6ONLY)");
}

static void on_exit_timer(int sig)
{
	(void)sig;
	_exit(1);
}

/* exit_after arms --exit-after-ms N@G: SIGALRM after N ms exits with 1, in
 * generation G only. */
static void exit_after(const char *spec)
{
	char *end;
	long ms = strtol(spec, &end, 10);
	const char *gen = getenv("GRMWRAP_GENERATION");
	struct itimerval it;

	if (end == spec || *end != '@' || ms <= 0 || end[1] == '\0')
		usage("--exit-after-ms wants N@GENERATION");
	if (gen == NULL || strcmp(gen, end + 1) != 0)
		return;
	signal(SIGALRM, on_exit_timer);
	memset(&it, 0, sizeof(it));
	it.it_value.tv_sec = ms / 1000;
	it.it_value.tv_usec = (ms % 1000) * 1000;
	if (setitimer(ITIMER_REAL, &it, NULL) < 0)
		fatal("setitimer");
}

int main(int argc, char **argv)
{
	const char *exit_spec = NULL;
	const char *addr = "0.0.0.0";
	const char *port_arg = NULL;
	int want_tcp = 0, want_reuseport = 0;
	int family, port, udp = -1, tcp = -1, i, handled[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGURG};
	int udp_rp, tcp_rp = -1, bound_port;
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct sigaction sa;
	sigset_t block, unblocked;
	pid_t pid = getpid();
	char prefix[32];
	size_t prefix_len;
	static char buf[32 + MAX_PAYLOAD];

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--addr") == 0) {
			if (++i >= argc)
				usage("--addr needs an argument");
			addr = argv[i];
		} else if (strcmp(argv[i], "--tcp") == 0) {
			want_tcp = 1;
		} else if (strcmp(argv[i], "--reuseport") == 0) {
			want_reuseport = 1;
		} else if (strcmp(argv[i], "--exit-after-ms") == 0) {
			if (++i >= argc)
				usage("--exit-after-ms needs an argument");
			exit_spec = argv[i];
		} else if (argv[i][0] == '-' && argv[i][1] != '\0') {
			fprintf(stderr, "echo-c: unknown option %s\n", argv[i]);
			usage("bad arguments");
		} else if (port_arg == NULL) {
			port_arg = argv[i];
		} else {
			usage("too many arguments");
		}
	}
	if (port_arg == NULL)
		usage("missing PORT");
	port = parse_port(port_arg);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < NHANDLED; i++)
		sigaddset(&sa.sa_mask, handled[i]);
	sa.sa_flags = 0; /* no SA_RESTART */
	for (i = 0; i < NHANDLED; i++)
		if (sigaction(handled[i], &sa, NULL) < 0)
			fatal("sigaction");

	memset(&ss, 0, sizeof(ss));
	if (strchr(addr, ':') != NULL) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		family = AF_INET6;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((unsigned short)port);
		if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) != 1)
			usage("--addr is not an IPv6 literal");
		sslen = sizeof(*sin6);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		family = AF_INET;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((unsigned short)port);
		if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
			usage("--addr is not an IPv4 literal");
		sslen = sizeof(*sin);
	}

	udp = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (udp < 0)
		fatal("socket(SOCK_DGRAM)");
	if (family == AF_INET6 &&
	    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr))
		set_v6only_off(udp);
	if (want_reuseport) {
		int one = 1;

		if (setsockopt(udp, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
			fatal("setsockopt(SO_REUSEPORT)");
	}
	if (bind(udp, (struct sockaddr *)&ss, sslen) < 0)
		bind_error(errno);

	{
		struct sockaddr_storage got;
		socklen_t gotlen = sizeof(got);

		if (getsockname(udp, (struct sockaddr *)&got, &gotlen) < 0)
			fatal("getsockname");
		if (got.ss_family == AF_INET6)
			bound_port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
		else
			bound_port = ntohs(((struct sockaddr_in *)&got)->sin_port);
	}

	if (want_tcp) {
		/* Same address; with PORT 0 the TCP socket takes the UDP port. */
		if (family == AF_INET6)
			((struct sockaddr_in6 *)&ss)->sin6_port = htons((unsigned short)bound_port);
		else
			((struct sockaddr_in *)&ss)->sin_port = htons((unsigned short)bound_port);
		tcp = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (tcp < 0)
			fatal("socket(SOCK_STREAM)");
		if (family == AF_INET6 &&
		    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr))
			set_v6only_off(tcp);
		if (bind(tcp, (struct sockaddr *)&ss, sslen) < 0)
			bind_error(errno);
		if (listen(tcp, 16) < 0)
			fatal("listen");
	}

	udp_rp = get_reuseport(udp);
	if (tcp >= 0)
		tcp_rp = get_reuseport(tcp);
	printf("ready pid=%d udp_reuseport=%d tcp_reuseport=%d port=%d\n",
	       (int)pid, udp_rp, tcp_rp, bound_port);
	fflush(stdout);
	if (exit_spec != NULL)
		exit_after(exit_spec);

	/*
	 * From here on the handled signals are blocked except inside ppoll(),
	 * so a signal can never slip in between checking the ring and going to
	 * sleep. recvfrom() does not block (MSG_DONTWAIT), so it is never
	 * interrupted; EINTR from ppoll() sends us back to the ring.
	 */
	sigemptyset(&block);
	for (i = 0; i < NHANDLED; i++)
		sigaddset(&block, handled[i]);
	if (sigprocmask(SIG_BLOCK, &block, &unblocked) < 0)
		fatal("sigprocmask");
	for (i = 0; i < NHANDLED; i++)
		sigdelset(&unblocked, handled[i]);

	prefix_len = (size_t)snprintf(prefix, sizeof(prefix), "%d ", (int)pid);
	memcpy(buf, prefix, prefix_len);

	for (;;) {
		struct pollfd pfd = {.fd = udp, .events = POLLIN};
		struct sockaddr_storage from;
		socklen_t fromlen;
		ssize_t n;
		long code;
		int k;

		for (k = 0; k < sig_count; k++) {
			int sig = sig_ring[k];

			printf("signal %d\n", sig);
			fflush(stdout);
			if (sig == SIGTERM || sig == SIGINT)
				exit(0);
		}
		sig_count = 0;

		if (ppoll(&pfd, 1, NULL, &unblocked) < 0) {
			if (errno == EINTR)
				continue;
			fatal("ppoll");
		}

		fromlen = sizeof(from);
		n = recvfrom(udp, buf + prefix_len, MAX_PAYLOAD, MSG_DONTWAIT,
			     (struct sockaddr *)&from, &fromlen);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				continue;
			fprintf(stderr, "echo-c: recvfrom: %s\n", strerror(errno));
			continue;
		}
		k = (int)command(udp, buf + prefix_len, (size_t)n, buf + prefix_len, MAX_PAYLOAD);
		if (k > 0)
			n = k;
		if (sendto(udp, buf, prefix_len + (size_t)n, 0,
			   (struct sockaddr *)&from, fromlen) < 0)
			fprintf(stderr, "echo-c: sendto: %s\n", strerror(errno));
		code = exit_code(buf + prefix_len, (size_t)n);
		if (code >= 0)
			exit((int)code);
		if (n == 4 && memcmp(buf + prefix_len, "hang", 4) == 0) {
			/* Signals only, no socket: wait for a stop signal. */
			for (;;) {
				ppoll(NULL, 0, NULL, &unblocked);
				for (k = 0; k < sig_count; k++) {
					printf("signal %d\n", sig_ring[k]);
					fflush(stdout);
					if (sig_ring[k] == SIGTERM || sig_ring[k] == SIGINT)
						exit(0);
				}
				sig_count = 0;
			}
		}
	}
}
