/* stress_queue.c - P producer and C consumer processes; every message exactly once, FIFO per
 * producer as seen by each consumer. Bounded (small ring, maxsize) and growable variants.
 * usage: stress_queue [messages_per_producer] [producers] [consumers] */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"

static long per = 20000;
static int P = 3, C = 3;

typedef struct {
    uint32_t producer;
    uint32_t seq;
    uint8_t pad[56]; /* some messages inline, some in the arena (see size below) */
} msg_t;

static void producer(const char *path, uint32_t p)
{
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        _exit(10);
    static uint8_t buf[3000];
    for (uint32_t i = 0; i < (uint32_t)per; i++) {
        msg_t m = {.producer = p, .seq = i};
        memcpy(buf, &m, sizeof m);
        uint64_t len = (i % 5 == 0) ? 200 + (i % 2500) : sizeof m; /* mix inline and arena */
        shmq_iov_t iov = {buf, len};
        int rc = shmq_put(&q, &iov, 1, 1, shmq_now_mono_ns() + 30ull * 1000 * 1000 * 1000, NULL);
        if (rc != SHMQ_OK)
            _exit(11);
    }
    shmq_close(&q);
    _exit(0);
}

static void consumer(const char *path, uint8_t *seen, long total, long *taken)
{
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        _exit(20);
    int64_t last[64];
    for (int i = 0; i < 64; i++)
        last[i] = -1;
    for (;;) {
        if (__atomic_load_n(taken, __ATOMIC_SEQ_CST) >= total)
            break;
        shmq_msg_t m;
        int rc = shmq_get_begin(&q, &m, shmq_now_mono_ns() + 100ull * 1000 * 1000);
        if (rc == SHMQ_EMPTY)
            continue;
        if (rc != SHMQ_OK)
            _exit(21);
        msg_t v;
        if (m.size < sizeof v)
            _exit(22);
        memcpy(&v, m.data, sizeof v);
        shmq_get_end(&q, &m);
        if (v.producer >= (uint32_t)P || v.seq >= (uint32_t)per)
            _exit(23);
        if ((int64_t)v.seq <= last[v.producer])
            _exit(24); /* FIFO per producer violated */
        last[v.producer] = v.seq;
        __atomic_fetch_add(&seen[(long)v.producer * per + v.seq], 1, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(taken, 1, __ATOMIC_SEQ_CST);
    }
    shmq_close(&q);
    _exit(0);
}

static void run(uint64_t capacity, uint32_t flags, uint64_t maxsize, const char *tag)
{
    char path[128];
    th_path(path, sizeof path, tag);
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_QUEUE, .flags = flags, .capacity = capacity,
                            .maxsize = maxsize, .mode = 0600};
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    long total = per * P;
    uint8_t *seen = mmap(NULL, (size_t)total + 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(seen != MAP_FAILED);
    long *taken = (long *)(seen + total);
    pid_t pids[64];
    int n = 0;
    for (int c = 0; c < C; c++)
        if ((pids[n++] = fork()) == 0)
            consumer(path, seen, total, taken);
    for (int p = 0; p < P; p++)
        if ((pids[n++] = fork()) == 0)
            producer(path, (uint32_t)p);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "child %d ended with status %d\n", i, st);
            bad++;
        }
    }
    long missing = 0, dup = 0;
    for (long i = 0; i < total; i++) {
        missing += seen[i] == 0;
        dup += seen[i] > 1;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(missing, 0);
    CHECK_EQ(dup, 0);
    shmq_stats_t st;
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    shmq_stats(&q, &st);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.bytes_used, 0);
    CHECK_EQ(st.enqueued, total);
    CHECK_EQ(st.dequeued, total);
    munmap(seen, (size_t)total + 64);
    shmq_close(&q);
    unlink(path);
}

static void test_bounded_small_ring(void) { run(128 << 10, 0, 0, "s-bounded"); }
static void test_maxsize(void) { run(1 << 20, 0, 7, "s-maxsize"); }
static void test_growable(void) { run(64 << 10, SHMQ_F_GROWABLE, 0, "s-grow"); }

int main(int argc, char **argv)
{
    if (argc > 1)
        per = atol(argv[1]);
    if (argc > 2)
        P = atoi(argv[2]);
    if (argc > 3)
        C = atoi(argv[3]);
    if (P < 1 || P > 64 || C < 1 || C > 60 || per < 1)
        return 2;
    RUN(test_bounded_small_ring);
    RUN(test_maxsize);
    RUN(test_growable);
    TH_SUMMARY();
}
