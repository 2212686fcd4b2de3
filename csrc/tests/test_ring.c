/* test_ring.c - ring.h: the MPMC handle ring on its own (process-local memory): FIFO, full and
 * empty, many laps, refused takes, sealing, a producer dead between publish and tail, cursor
 * validation, and a short multi-threaded run. */
#define _GNU_SOURCE
#include <pthread.h>

#include "../ring.h"
#include "tharness.h"

typedef struct {
    shmq_ring_t r;
    uint64_t *mem; /* head, tail */
} ring_box;

static int ring_new(ring_box *b, uint32_t log2)
{
    b->mem = calloc(2, sizeof(uint64_t));
    b->r.cells = aligned_alloc(64, sizeof(shmq_cell_t) << log2);
    if (!b->mem || !b->r.cells)
        return -1;
    b->r.head = &b->mem[0];
    b->r.tail = &b->mem[1];
    b->r.log2 = log2;
    b->r.mask = (1ull << log2) - 1;
    shmq_ring_init(&b->r);
    return 0;
}

static void ring_free(ring_box *b)
{
    free(b->r.cells);
    free(b->mem);
    b->r.cells = NULL;
    b->mem = NULL;
}

static int take_all(void *ctx, uint64_t h)
{
    (void)ctx;
    (void)h;
    return SHMQ_OK;
}

/* refuses odd handles (someone else's / stale), counting them */
static int take_even(void *ctx, uint64_t h)
{
    if (h & 1) {
        ++*(int *)ctx;
        return SHMQ_EAGAIN;
    }
    return SHMQ_OK;
}

static ring_box box; /* freed after each test (a failed CHECK returns early) */

static void test_fifo_full_empty_laps(void)
{
    CHECK_EQ(ring_new(&box, 4), 0);
    shmq_ring_t *r = &box.r;
    uint64_t h;
    CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_EMPTY);
    for (uint64_t i = 0; i < 16; i++)
        CHECK_EQ(shmq_ring_put_mpmc(r, 1000 + i), SHMQ_OK);
    CHECK_EQ(shmq_ring_put_mpmc(r, 99), SHMQ_FULL);
    CHECK_EQ(shmq_ring_count(r), 16);
    CHECK(shmq_ring_valid(r));
    for (uint64_t i = 0; i < 16; i++) {
        CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_OK);
        CHECK_EQ(h, 1000 + i);
    }
    CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_EMPTY);
    /* many laps, at every fill level */
    uint64_t next_in = 0, next_out = 0;
    for (int round = 0; round < 2000; round++) {
        int k = 1 + round % 16;
        for (int i = 0; i < k; i++)
            CHECK_EQ(shmq_ring_put_mpmc(r, next_in++), SHMQ_OK);
        CHECK_EQ(shmq_ring_count(r), (uint64_t)k);
        for (int i = 0; i < k; i++) {
            CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_OK);
            CHECK_EQ(h, next_out++);
        }
    }
    CHECK_EQ(shmq_ring_count(r), 0);
    CHECK(*r->head > 1000); /* the laps really went round */
}

static void test_refused_take_advances(void)
{
    CHECK_EQ(ring_new(&box, 3), 0);
    shmq_ring_t *r = &box.r;
    for (uint64_t i = 1; i <= 5; i++)
        CHECK_EQ(shmq_ring_put_mpmc(r, i), SHMQ_OK);
    int refused = 0;
    uint64_t h;
    CHECK_EQ(shmq_ring_get_mpmc(r, take_even, &refused, &h), SHMQ_OK);
    CHECK_EQ(h, 2);
    CHECK_EQ(refused, 1);
    CHECK_EQ(shmq_ring_get_mpmc(r, take_even, &refused, &h), SHMQ_OK);
    CHECK_EQ(h, 4);
    CHECK_EQ(shmq_ring_get_mpmc(r, take_even, &refused, &h), SHMQ_EMPTY); /* 5 refused, then empty */
    CHECK_EQ(refused, 3);
    CHECK_EQ(shmq_ring_count(r), 0);
}

static void test_seal(void)
{
    CHECK_EQ(ring_new(&box, 3), 0);
    shmq_ring_t *r = &box.r;
    uint64_t h;
    CHECK_EQ(shmq_ring_put_mpmc(r, 7), SHMQ_OK);
    CHECK_EQ(shmq_ring_seal_mpmc(r), SHMQ_EAGAIN); /* not drained */
    CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_OK);
    CHECK_EQ(shmq_ring_seal_mpmc(r), SHMQ_OK);
    CHECK_EQ(shmq_ring_seal_mpmc(r), SHMQ_OK); /* already sealed */
    CHECK_EQ(shmq_ring_put_mpmc(r, 8), SHMQ_ESEALED);
    CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_ESEALED);
}

static void test_dead_producer_after_publish(void)
{
    /* A producer killed between its publishing CAS and its tail CAS: the message counts, a
     * consumer takes it, and the next producer moves tail for it (nobody waits). */
    CHECK_EQ(ring_new(&box, 3), 0);
    shmq_ring_t *r = &box.r;
    CHECK_EQ(shmq_ring_put_mpmc(r, 1), SHMQ_OK);
    uint64_t t = *r->tail;
    r->cells[t & r->mask].handle = 2; /* what the dead producer's CAS wrote; tail left behind */
    r->cells[t & r->mask].word = shmq_cell_word((uint32_t)(t >> r->log2), SHMQ_CELL_FULL);
    CHECK_EQ(shmq_ring_count(r), 2);
    CHECK_EQ(shmq_ring_put_mpmc(r, 3), SHMQ_OK);
    CHECK_EQ(*r->tail, t + 2);
    uint64_t h;
    for (uint64_t want = 1; want <= 3; want++) {
        CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_OK);
        CHECK_EQ(h, want);
    }
    CHECK_EQ(shmq_ring_get_mpmc(r, take_all, NULL, &h), SHMQ_EMPTY);
}

static void test_valid_rejects_garbage_cursors(void)
{
    CHECK_EQ(ring_new(&box, 3), 0);
    shmq_ring_t *r = &box.r;
    CHECK(shmq_ring_valid(r));
    *r->tail = 100; /* more queued than cells */
    CHECK(!shmq_ring_valid(r));
    *r->tail = 0;
    *r->head = 5; /* head far past tail */
    CHECK(!shmq_ring_valid(r));
    *r->head = 1; /* one past tail: a dead producer's message taken before tail moved */
    CHECK(shmq_ring_valid(r));
}

#define TPER 20000
static long t_sum_in = 0, t_sum_out = 0, t_taken = 0;
static uint8_t t_claimed[2][TPER + 1];

/* The ring leaves exclusivity to the take callback (the queue claims a descriptor by CAS):
 * two consumers may see the same FULL cell, only the one whose claim wins owns the message. */
static int take_claim(void *ctx, uint64_t h)
{
    (void)ctx;
    uint64_t p = h / 1000000, i = h % 1000000;
    if (p > 1 || i > TPER)
        return SHMQ_ECORRUPT;
    uint8_t exp = 0;
    return __atomic_compare_exchange_n(&t_claimed[p][i], &exp, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) ? SHMQ_OK
                                                                                                        : SHMQ_EAGAIN;
}

static void *t_producer(void *arg)
{
    uint64_t base = (uint64_t)(uintptr_t)arg * 1000000;
    uint64_t give_up = th_after_ms(20000);
    for (uint64_t i = 1; i <= TPER; i++) {
        while (shmq_ring_put_mpmc(&box.r, base + i) == SHMQ_FULL) {
            if (shmq_now_mono_ns() > give_up)
                return NULL; /* consumers stopped: the sums differ and the test fails */
            sched_yield();
        }
        __atomic_fetch_add(&t_sum_in, (long)(base + i), __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *t_consumer(void *arg)
{
    (void)arg;
    uint64_t last[2] = {0, 0};
    uint64_t give_up = th_after_ms(20000);
    while (__atomic_load_n(&t_taken, __ATOMIC_SEQ_CST) < 2 * TPER && shmq_now_mono_ns() < give_up) {
        uint64_t h;
        if (shmq_ring_get_mpmc(&box.r, take_claim, NULL, &h) != SHMQ_OK) {
            sched_yield();
            continue;
        }
        uint64_t p = h / 1000000, i = h % 1000000;
        if (p > 1 || i <= last[p]) /* FIFO per producer */
            __atomic_fetch_add(&t_sum_out, 1L << 40, __ATOMIC_RELAXED);
        last[p < 2 ? p : 0] = i;
        __atomic_fetch_add(&t_sum_out, (long)h, __ATOMIC_RELAXED);
        __atomic_fetch_add(&t_taken, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void test_threads_mpmc(void)
{
    CHECK_EQ(ring_new(&box, 6), 0);
    pthread_t t[4];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, t_consumer, NULL), 0);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[2 + i], NULL, t_producer, (void *)(uintptr_t)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(t_taken, 2 * TPER);
    CHECK_EQ(t_sum_out, t_sum_in); /* every handle exactly once, in order per producer */
    CHECK_EQ(shmq_ring_count(&box.r), 0);
}

#define RUN_RING(fn) \
    do {             \
        RUN(fn);     \
        ring_free(&box); \
    } while (0)

int main(void)
{
    RUN_RING(test_fifo_full_empty_laps);
    RUN_RING(test_refused_take_advances);
    RUN_RING(test_seal);
    RUN_RING(test_dead_producer_after_publish);
    RUN_RING(test_valid_rejects_garbage_cursors);
    RUN_RING(test_threads_mpmc);
    TH_SUMMARY();
}
