/* bench_ring.c - the C core alone: 1 producer process -> 1 consumer process (fork), 64-byte
 * messages through shmq_put / shmq_get_begin / shmq_get_end on a bounded (not growable) queue.
 *
 * usage: bench_ring [messages] [repeats] [any|pinned|same]
 *   any    : the scheduler places both processes
 *   pinned : producer on the first usable CPU, consumer on the second
 *   same   : both on the first usable CPU (the core never spins against a peer on its own CPU)
 * Prints one line per run and a final "RESULT msgs=N best=X median=Y" line (msgs/s).
 * Timing: the producer's clock starts when the consumer says it is attached (through a pipe);
 * it stops when the consumer has taken the last message (CLOCK_MONOTONIC is system-wide, so
 * the consumer's end time is comparable). Every wait has a deadline; the segment is unlinked
 * as soon as both processes hold it, so nothing is left in /dev/shm even on a crash.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"

#define MSG 64
#define WAIT_NS (10ull * 1000 * 1000 * 1000) /* every blocking call gives up after 10 s */

static int cpu_nth(int n)
{
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s) != 0)
        return -1;
    for (int c = 0, k = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &s) && k++ == n)
            return c;
    return -1;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0)
        perror("sched_setaffinity");
}

static int read_full(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int consumer(const char *path, uint64_t n, int cpu, int wfd)
{
    pin(cpu);
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    uint64_t ready = 1;
    if (write(wfd, &ready, sizeof ready) != sizeof ready)
        return 3;
    uint8_t sink[MSG];
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        shmq_msg_t m;
        int rc;
        do
            rc = shmq_get_begin(&q, &m, shmq_now_mono_ns() + WAIT_NS);
        while (rc == SHMQ_EINTR);
        if (rc != SHMQ_OK) {
            fprintf(stderr, "consumer: get %llu: %s\n", (unsigned long long)i, shmq_strerror(rc));
            return 4;
        }
        if (m.size != MSG)
            bad++;
        memcpy(sink, m.data, MSG); /* what a caller does: copy the payload out */
        bad += sink[0] != (uint8_t)i;
        shmq_get_end(&q, &m);
    }
    uint64_t end = shmq_now_mono_ns();
    if (write(wfd, &end, sizeof end) != sizeof end)
        return 3;
    shmq_close(&q);
    if (bad) {
        fprintf(stderr, "consumer: %llu corrupt messages\n", (unsigned long long)bad);
        return 5;
    }
    return 0;
}

/* One run; returns msgs/s, or a negative number on failure. */
static double run_once(uint64_t n, int pcpu, int ccpu)
{
    char path[128];
    /* not named "shmq.*": the Python test fixtures sweep new shmq.* files made while they run */
    snprintf(path, sizeof path, "/dev/shm/shmq-bench-ring-%d", (int)getpid());
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_QUEUE, .flags = 0, .capacity = 64ull << 20,
                            .max_message = 0, .maxsize = 0, .mode = 0600, .max_slots = 0};
    shmq_seg_t q;
    int created;
    if (shmq_create(&q, &o, 0, &created) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        fprintf(stderr, "create %s failed (errno %d)\n", path, q.err);
        unlink(path);
        return -1;
    }
    int fds[2];
    if (pipe(fds) != 0) {
        shmq_close(&q);
        unlink(path);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        shmq_close(&q);
        unlink(path);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        alarm(60); /* a stuck consumer dies rather than hangs */
        _exit(consumer(path, n, ccpu, fds[1]));
    }
    close(fds[1]);
    cpu_set_t orig;
    sched_getaffinity(0, sizeof orig, &orig);
    pin(pcpu);
    double rate = -1;
    uint64_t ready = 0, end = 0;
    if (read_full(fds[0], &ready, sizeof ready) != 0) {
        unlink(path);
        goto out;
    }
    unlink(path); /* both processes hold it now */
    uint8_t msg[MSG];
    memset(msg, 0xab, sizeof msg);
    shmq_iov_t iov = {msg, MSG};
    uint64_t t0 = shmq_now_mono_ns();
    for (uint64_t i = 0; i < n; i++) {
        msg[0] = (uint8_t)i;
        int rc;
        do
            rc = shmq_put(&q, &iov, 1, 1, shmq_now_mono_ns() + WAIT_NS, NULL);
        while (rc == SHMQ_EINTR);
        if (rc != SHMQ_OK) {
            fprintf(stderr, "producer: put %llu: %s\n", (unsigned long long)i, shmq_strerror(rc));
            goto out;
        }
    }
    if (read_full(fds[0], &end, sizeof end) != 0)
        goto out;
    rate = (double)n / ((double)(end - t0) / 1e9);
out:
    sched_setaffinity(0, sizeof orig, &orig); /* undo the producer's pinning for the next run */
    close(fds[0]);
    if (rate < 0)
        kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "consumer exited with status %d\n", status);
        rate = -1;
    }
    shmq_close(&q);
    return rate;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000ull;
    int repeats = argc > 2 ? atoi(argv[2]) : 3;
    const char *mode = argc > 3 ? argv[3] : "any";
    if (repeats < 1 || repeats > 100 || n == 0) {
        fprintf(stderr, "usage: bench_ring [messages] [repeats 1..100] [any|pinned|same]\n");
        return 2;
    }
    int pcpu = -1, ccpu = -1;
    if (strcmp(mode, "pinned") == 0) {
        pcpu = cpu_nth(0);
        ccpu = cpu_nth(1);
        if (ccpu < 0) {
            fprintf(stderr, "pinned: needs two usable CPUs\n");
            return 2;
        }
    } else if (strcmp(mode, "same") == 0) {
        pcpu = ccpu = cpu_nth(0);
    } else if (strcmp(mode, "any") != 0) {
        fprintf(stderr, "mode must be any, pinned or same\n");
        return 2;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("bench_ring: %d B messages, 1 producer process -> 1 consumer process, %s CPUs (%ld online)\n", MSG,
           mode, ncpu);
    double rates[100];
    for (int r = 0; r < repeats; r++) {
        rates[r] = run_once(n, pcpu, ccpu);
        if (rates[r] < 0)
            return 1;
        printf("  run %d: %llu msgs, %.2f M msgs/s\n", r + 1, (unsigned long long)n, rates[r] / 1e6);
    }
    qsort(rates, (size_t)repeats, sizeof rates[0], cmp_double);
    printf("RESULT msgs=%llu best=%.0f median=%.0f\n", (unsigned long long)n, rates[repeats - 1],
           rates[repeats / 2]);
    return 0;
}
