/* stress_threads.c - the queue driven by threads of one process (each thread with its own
 * attached handle), for ThreadSanitizer: every message exactly once, FIFO per producer. */
#define _GNU_SOURCE
#include <pthread.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"

#define PRODUCERS 3
#define CONSUMERS 3
#define PER 20000

static char path[128];
static uint8_t seen[PRODUCERS * PER];
static long taken = 0;
static int errors = 0;

static void *producer(void *arg)
{
    uint32_t p = (uint32_t)(uintptr_t)arg;
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
        return NULL;
    }
    static __thread uint8_t buf[1024];
    for (uint32_t i = 0; i < PER; i++) {
        uint32_t v[2] = {p, i};
        memcpy(buf, v, sizeof v);
        shmq_iov_t iov = {buf, (i % 7 == 0) ? 600 : sizeof v};
        int rc = shmq_put(&q, &iov, 1, 1, shmq_now_mono_ns() + 30ull * 1000 * 1000 * 1000, NULL);
        if (rc != SHMQ_OK) {
            fprintf(stderr, "producer %u: put of %u failed: %s (%d)\n", p, i, shmq_strerror(rc), rc);
            __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
        }
    }
    shmq_close(&q);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
        return NULL;
    }
    int64_t last[PRODUCERS] = {-1, -1, -1};
    while (__atomic_load_n(&taken, __ATOMIC_SEQ_CST) < PRODUCERS * PER) {
        shmq_msg_t m;
        int rc = shmq_get_begin(&q, &m, shmq_now_mono_ns() + 50ull * 1000 * 1000);
        if (rc == SHMQ_EMPTY)
            continue;
        if (rc != SHMQ_OK || m.size < 8) {
            fprintf(stderr, "consumer: get failed: %s (%d)\n", shmq_strerror(rc), rc);
            __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
            break;
        }
        uint32_t v[2];
        memcpy(v, m.data, sizeof v);
        shmq_get_end(&q, &m);
        if (v[0] >= PRODUCERS || v[1] >= PER || (int64_t)v[1] <= last[v[0]]) {
            fprintf(stderr, "consumer: bad message (%u, %u)\n", v[0], v[1]);
            __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
            break;
        }
        last[v[0]] = v[1];
        __atomic_fetch_add(&seen[v[0] * PER + v[1]], 1, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&taken, 1, __ATOMIC_SEQ_CST);
    }
    shmq_close(&q);
    return NULL;
}

static void test_threads(void)
{
    th_path(path, sizeof path, "threads");
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_QUEUE, .flags = SHMQ_F_GROWABLE, .capacity = 64 << 10,
                            .mode = 0600};
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    pthread_t t[PRODUCERS + CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        pthread_create(&t[i], NULL, consumer, NULL);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&t[CONSUMERS + i], NULL, producer, (void *)(uintptr_t)i);
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(errors, 0);
    for (long i = 0; i < PRODUCERS * PER; i++)
        CHECK_EQ(seen[i], 1);
    shmq_close(&q);
    unlink(path);
}

int main(void)
{
    RUN(test_threads);
    TH_SUMMARY();
}
