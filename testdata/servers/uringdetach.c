/*
 * uringdetach.c - a UDP echo server that tries to leave grmwrap's steering
 * through io_uring, for the io_uring test of grmwrap (issue 10, case 6).
 *
 * Usage: uringdetach PORT
 *
 * It binds a UDP socket to 127.0.0.1:PORT (a bind grmwrap manages), then
 * sets up an io_uring with the raw system call and, if that works, submits
 * one IORING_OP_URING_CMD SOCKET_URING_OP_SETSOCKOPT(SOL_SOCKET,
 * SO_DETACH_REUSEPORT_BPF) on the socket: a setsockopt that seccomp never
 * sees (Linux 6.7+). stdout carries, each flushed at once:
 *   ready pid=<pid> udp_reuseport=0 tcp_reuseport=-1 port=<port>
 *   uring setup=<0|-errno> detach=<cqe res, or "none" without a ring>
 * then every datagram is answered with "<pid> " + payload. SIGTERM ends it
 * with status 0. Setup failures exit with status 1.
 *
 * No liburing: the structures come from <linux/io_uring.h>; the fields the
 * socket command reads (level, optname, optval, optlen) are newer than
 * Debian 12's header and are written at their offsets in the SQE.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif
/* include/uapi/linux/io_uring.h, Linux 6.7+ */
#define SOCKET_URING_OP_SETSOCKOPT 3
/* Offsets in struct io_uring_sqe of the socket command's fields. */
#define SQE_CMD_OP 8   /* cmd_op */
#define SQE_LEVEL 16   /* level */
#define SQE_OPTNAME 20 /* optname */
#define SQE_OPTLEN 44  /* optlen */
#define SQE_OPTVAL 48  /* optval */

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static void put32(struct io_uring_sqe *sqe, size_t off, uint32_t v)
{
	memcpy((char *)sqe + off, &v, sizeof v);
}

static void put64(struct io_uring_sqe *sqe, size_t off, uint64_t v)
{
	memcpy((char *)sqe + off, &v, sizeof v);
}

/* detach submits the setsockopt through a ring; returns the CQE's result,
 * sets *setup to 0 or -errno of io_uring_setup. */
static int detach(int sock, int *setup, int *have)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int ring = syscall(__NR_io_uring_setup, 4, &p);
	*have = 0;
	if (ring < 0) {
		*setup = -errno;
		return 0;
	}
	*setup = 0;
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	char *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		perror("mmap ring");
		exit(1);
	}
	static int one = 1;
	struct io_uring_sqe *sqe = &sqes[0];
	memset(sqe, 0, sizeof *sqe);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = sock;
	sqe->user_data = 42;
	put32(sqe, SQE_CMD_OP, SOCKET_URING_OP_SETSOCKOPT);
	put32(sqe, SQE_LEVEL, SOL_SOCKET);
	put32(sqe, SQE_OPTNAME, SO_DETACH_REUSEPORT_BPF);
	put32(sqe, SQE_OPTLEN, sizeof one);
	put64(sqe, SQE_OPTVAL, (uint64_t)(uintptr_t)&one);

	uint32_t mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
	uint32_t *tail = (uint32_t *)(sq + p.sq_off.tail);
	uint32_t *array = (uint32_t *)(sq + p.sq_off.array);
	uint32_t t = *tail;
	array[t & mask] = 0;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
		perror("io_uring_enter");
		exit(1);
	}
	uint32_t *chead = (uint32_t *)(cq + p.cq_off.head);
	uint32_t ctail = __atomic_load_n((uint32_t *)(cq + p.cq_off.tail), __ATOMIC_ACQUIRE);
	if (*chead == ctail) {
		fprintf(stderr, "io_uring: no completion\n");
		exit(1);
	}
	uint32_t cmask = *(uint32_t *)(cq + p.cq_off.ring_mask);
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (*chead & cmask);
	int res = cqe->res;
	__atomic_store_n(chead, *chead + 1, __ATOMIC_RELEASE);
	*have = 1;
	close(ring);
	return res;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: uringdetach PORT\n");
		return 2;
	}
	signal(SIGTERM, on_term);
	int port = atoi(argv[1]);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("bind");
		return 1;
	}
	int setup, have;
	int res = detach(s, &setup, &have);
	printf("ready pid=%d udp_reuseport=0 tcp_reuseport=-1 port=%d\n", getpid(), port);
	if (have)
		printf("uring setup=%d detach=%d\n", setup, res);
	else
		printf("uring setup=%d detach=none\n", setup);
	fflush(stdout);
	char buf[65536 + 32];
	int pre = snprintf(buf, 32, "%d ", getpid());
	for (;;) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof peer;
		ssize_t n = recvfrom(s, buf + pre, 65536, 0, (struct sockaddr *)&peer, &plen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("recvfrom");
			return 1;
		}
		sendto(s, buf, pre + n, 0, (struct sockaddr *)&peer, plen);
	}
}
