/*
 * Core-to-core latency between CPU 0 and CPU 1: two threads pass a flag in one cache line
 * back and forth; prints the mean one-way time in nanoseconds.
 *
 * Why: benches/vs_dpdk.py measures two processes that talk through shared memory on those
 * two CPUs, so every frame costs a few cache-line transfers between them, and a reader
 * comparing figures across machines needs to know what a transfer costs on each. On the
 * reference VM, whose vCPUs the host moves about, it took 25-50 ns at one moment and
 * 170-190 ns a few seconds later. (That is not what swings the benchmark's rates by up
 * to 3x there: 5 and 16 Mpps rounds came after probes of either kind.) The benchmark
 * samples it before every round and reports the spread.
 *
 * Usage: core_to_core [round trips]   (default 100000, about 5-35 ms)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(64) atomic_int ball;
static long round_trips = 100000;
static int responder_unpinned;

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *responder(void *unused)
{
	(void)unused;
	/* Answers even where it cannot be pinned, so that the caller never waits forever. */
	responder_unpinned = pin(1) != 0;
	for (long i = 0; i < round_trips; i++) {
		while (atomic_load_explicit(&ball, memory_order_acquire) != 1)
			;
		atomic_store_explicit(&ball, 0, memory_order_release);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct timespec start, end;
	pthread_t thread;

	if (argc > 1)
		round_trips = atol(argv[1]);
	if (round_trips <= 0 || pin(0) != 0) {
		fprintf(stderr, "core_to_core: needs CPUs 0 and 1 and a positive count\n");
		return 1;
	}
	if (pthread_create(&thread, NULL, responder, NULL) != 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < round_trips; i++) {
		atomic_store_explicit(&ball, 1, memory_order_release);
		while (atomic_load_explicit(&ball, memory_order_acquire) != 0)
			;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	pthread_join(thread, NULL);
	if (responder_unpinned) {
		fprintf(stderr, "core_to_core: cannot run on CPU 1\n");
		return 1;
	}
	printf("%.1f\n", ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) /
			  round_trips / 2);
	return 0;
}
