// SPDX-License-Identifier: GPL-2.0
/*
 * prism-udpping: a UDP ping-pong that counts the replies that never came, for the PRISM
 * defect tests (tests/kernel/test_kernel_defects.py, tests/kernel/guest/prism-defects).
 *
 *   prism-udpping server IP PORT
 *       echoes every datagram back to its sender, forever.
 *   prism-udpping client IP PORT COUNT TIMEOUT_MS
 *       sends COUNT numbered datagrams one after the other, each after the reply to the
 *       previous one or after TIMEOUT_MS without it; prints
 *       "sent=N replies=N timeouts=N stale=N missing=N" and exits 0 (the caller judges the
 *       counts). A late reply to an earlier datagram is counted as stale, not as a reply.
 *       missing counts the datagrams never answered at all: after the last one the client
 *       waits for the late replies still due, until none is or DRAIN_MS pass without one.
 *   prism-udpping burst IP PORT COUNT
 *       sends COUNT datagrams back to back (sendmmsg in batches of 64), no replies.
 *   prism-udpping stream IP PORT COUNT BATCH GAP_US
 *       sends COUNT numbered datagrams, BATCH back to back (sendmmsg) then a pause of
 *       GAP_US microseconds, no replies; prints "sent=N".
 *   prism-udpping sink IP PORT IDLE_MS
 *       receives numbered datagrams until IDLE_MS pass without one (after the first);
 *       prints "received=N reordered=N maxseq=N": a datagram is reordered when one with a
 *       higher number came before it. Exits 0 (the caller judges the counts).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
/* How long the client waits for a late reply after the previous one, at the end. */
#define DRAIN_MS 30000

static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int make_addr(const char *ip, const char *port, struct sockaddr_in *sa)
{
	long p;

	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1 || parse_long(port, 1, 65535, &p))
		return -1;
	sa->sin_port = htons((uint16_t)p);
	return 0;
}

static int server(int fd, const struct sockaddr_in *sa)
{
	char buf[2048];

	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa))) {
		perror("bind");
		return 2;
	}
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("recvfrom");
			return 2;
		}
		sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
	}
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Marks the reply to @seq as received; returns 1 the first time. */
static int answered(unsigned char *got, long count, uint32_t seq)
{
	if (seq >= (uint32_t)count || got[seq])
		return 0;
	got[seq] = 1;
	return 1;
}

static int client(int fd, const struct sockaddr_in *sa, long count, long timeout_ms)
{
	long seq, replies = 0, timeouts = 0, stale = 0, missing = count;
	unsigned char *got = calloc((size_t)count, 1);

	if (!got) {
		perror("calloc");
		return 2;
	}
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa))) {
		perror("connect");
		return 2;
	}
	for (seq = 0; seq < count; seq++) {
		uint32_t out = htonl((uint32_t)seq), in;
		long deadline = now_ms() + timeout_ms;
		int ok = 0;

		if (send(fd, &out, sizeof(out), 0) < 0 && errno != ECONNREFUSED) {
			perror("send");
			return 2;
		}
		while (!ok) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			long left = deadline - now_ms();

			if (left <= 0 || poll(&p, 1, (int)left) <= 0)
				break;
			if (recv(fd, &in, sizeof(in), 0) != sizeof(in))
				continue;
			missing -= answered(got, count, ntohl(in));
			if (ntohl(in) == (uint32_t)seq)
				ok = 1;
			else
				stale++;
		}
		if (ok)
			replies++;
		else
			timeouts++;
	}
	while (missing > 0) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint32_t in;

		if (poll(&p, 1, DRAIN_MS) <= 0)
			break;
		if (recv(fd, &in, sizeof(in), 0) != sizeof(in))
			continue;
		stale++;
		missing -= answered(got, count, ntohl(in));
	}
	printf("sent=%ld replies=%ld timeouts=%ld stale=%ld missing=%ld\n", count, replies,
	       timeouts, stale, missing);
	free(got);
	return 0;
}

static int stream(int fd, const struct sockaddr_in *sa, long count, long batch, long gap_us)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	uint32_t seqs[BATCH];
	struct timespec gap = { .tv_sec = gap_us / 1000000, .tv_nsec = gap_us % 1000000 * 1000 };
	long sent = 0;

	memset(msgs, 0, sizeof(msgs));
	while (sent < count) {
		int n = count - sent < batch ? (int)(count - sent) : (int)batch, i, r;

		for (i = 0; i < n; i++) {
			seqs[i] = htonl((uint32_t)(sent + i));
			iov[i].iov_base = &seqs[i];
			iov[i].iov_len = sizeof(seqs[i]);
			msgs[i].msg_hdr.msg_name = (void *)sa;
			msgs[i].msg_hdr.msg_namelen = sizeof(*sa);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		r = sendmmsg(fd, msgs, (unsigned int)n, 0);
		if (r < 0) {
			if (errno == ECONNREFUSED || errno == ENOBUFS)
				continue;
			perror("sendmmsg");
			return 2;
		}
		sent += r;
		if (gap_us)
			nanosleep(&gap, NULL);
	}
	printf("sent=%ld\n", sent);
	return 0;
}

static int burst(int fd, const struct sockaddr_in *sa, long count)
{
	return stream(fd, sa, count, BATCH, 0);
}

static int sink(int fd, const struct sockaddr_in *sa, long idle_ms)
{
	long received = 0, reordered = 0, maxseq = -1;
	int rcvbuf = 4 << 20;

	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa))) {
		perror("bind");
		return 2;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		uint32_t in;
		int r = poll(&p, 1, received ? (int)idle_ms : -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (recv(fd, &in, sizeof(in), 0) != sizeof(in))
			continue;
		received++;
		if ((long)ntohl(in) < maxseq)
			reordered++;
		else
			maxseq = (long)ntohl(in);
	}
	printf("received=%ld reordered=%ld maxseq=%ld\n", received, reordered, maxseq);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;
	long count, timeout_ms, batch, gap_us;
	int fd;

	if (argc < 4 || make_addr(argv[2], argv[3], &sa)) {
		fprintf(stderr, "usage: see the comment at the top of prism-udpping.c\n");
		return 2;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		return 2;
	}
	if (!strcmp(argv[1], "server") && argc == 4)
		return server(fd, &sa);
	if (!strcmp(argv[1], "client") && argc == 6 &&
	    !parse_long(argv[4], 1, 100000000, &count) &&
	    !parse_long(argv[5], 1, 3600000, &timeout_ms))
		return client(fd, &sa, count, timeout_ms);
	if (!strcmp(argv[1], "burst") && argc == 5 && !parse_long(argv[4], 1, 100000000, &count))
		return burst(fd, &sa, count);
	if (!strcmp(argv[1], "stream") && argc == 7 &&
	    !parse_long(argv[4], 1, 100000000, &count) &&
	    !parse_long(argv[5], 1, BATCH, &batch) &&
	    !parse_long(argv[6], 0, 10000000, &gap_us))
		return stream(fd, &sa, count, batch, gap_us);
	if (!strcmp(argv[1], "sink") && argc == 5 && !parse_long(argv[4], 1, 3600000, &timeout_ms))
		return sink(fd, &sa, timeout_ms);
	fprintf(stderr, "usage: see the comment at the top of prism-udpping.c\n");
	return 2;
}
