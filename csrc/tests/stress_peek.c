/* stress_peek.c - shmq_peek racing a getter (threads of one process, run under ASan+UBSan).
 *
 * queue.h: peek "re-checks the descriptor's generation after the copy, so a message taken
 * meanwhile is never half-reported", and returns SHMQ_OK, SHMQ_EMPTY or SHMQ_EAGAIN (the
 * queue moved: call again). So a peeker racing a getter may get SHMQ_EAGAIN or SHMQ_EMPTY,
 * but never an error, and an SHMQ_OK copy is never torn. Payloads describe themselves:
 * byte k of message v is (v * 31 + k) & 255. Up to twenty rounds, stopping at the first error.
 *
 * Known defect (today's core): peek reads size and chunk after checking the word READY(g)
 * and validates them before re-checking the word; a getter that took and freed the message
 * meanwhile has set chunk = SHMQ_NO_CHUNK, so peek returns SHMQ_ECORRUPT for a live,
 * healthy queue instead of SHMQ_EAGAIN (shmq peek / Queue.peek then raise CorruptQueueError).
 * tests/test_c_core.py counts exactly that symptom as an expected failure until the fix lands. */
#define _GNU_SOURCE
#include <pthread.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"
#include <sched.h>

/* shmq_peek re-checks the descriptor generation after its copy: a peeker racing the getters
 * may get SHMQ_EAGAIN or SHMQ_EMPTY, but an SHMQ_OK copy is never torn. Payloads describe
 * themselves: byte k of message v is (v * 31 + k) & 255. */
#define P_MSGS 20000
static char ppath[128];
static int p_errors = 0, p_stop = 0;
static long p_ok = 0;

static void fill(uint8_t *b, uint32_t v, uint32_t n)
{
    memcpy(b, &v, sizeof v);
    for (uint32_t k = sizeof v; k < n; k++)
        b[k] = (uint8_t)(v * 31 + k);
}

static int intact(const uint8_t *b, uint64_t n)
{
    uint32_t v;
    if (n < sizeof v)
        return 0;
    memcpy(&v, b, sizeof v);
    for (uint64_t k = sizeof v; k < n; k++)
        if (b[k] != (uint8_t)(v * 31 + k))
            return 0;
    return 1;
}

static void *p_worker(void *arg)
{
    int role = (int)(uintptr_t)arg; /* 0 producer, 1 consumer, 2.. peekers */
    shmq_seg_t q;
    if (shmq_open(&q, ppath, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        fprintf(stderr, "attach failed\n");
        __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
        return NULL;
    }
    static __thread uint8_t buf[2048];
    if (role == 0) {
        uint64_t give_up = shmq_now_mono_ns() + 30ull * 1000 * 1000 * 1000;
        for (uint32_t v = 0; v < P_MSGS && !__atomic_load_n(&p_errors, __ATOMIC_SEQ_CST);) {
            uint32_t n = 8 + (v * 37) % 1500;
            fill(buf, v, n);
            shmq_iov_t iov = {buf, n};
            int rc = shmq_put(&q, &iov, 1, 1, shmq_now_mono_ns() + 100ull * 1000 * 1000, NULL);
            if (rc == SHMQ_OK)
                v++;
            else if (rc != SHMQ_FULL || shmq_now_mono_ns() > give_up) {
                shmq_stats_t st;
                shmq_stats(&q, &st);
                shmq_check_t ck;
                shmq_check(&q, &ck);
                fprintf(stderr, "put: %s (%d) at message %u: depth %llu, bytes_used %llu, descriptors free %llu ready %llu owned %llu\n",
                        shmq_strerror(rc), rc, v, (unsigned long long)st.depth, (unsigned long long)st.bytes_used,
                        (unsigned long long)ck.free_desc, (unsigned long long)ck.ready_desc, (unsigned long long)ck.owned_desc);
                __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
                break;
            } /* FULL: the getter stopped (an error elsewhere) or is slow: look again */
        }
    } else if (role == 1) {
        /* First let a peeker see a message (on a loaded machine the getter could otherwise drain
         * everything before any peeker runs, and the race would not be tested at all). */
        for (uint64_t wait_until = shmq_now_mono_ns() + 10ull * 1000 * 1000 * 1000;
             !__atomic_load_n(&p_ok, __ATOMIC_RELAXED) && shmq_now_mono_ns() < wait_until;)
            sched_yield();
        uint64_t give_up = shmq_now_mono_ns() + 120ull * 1000 * 1000 * 1000;
        for (uint32_t got = 0; got < P_MSGS && !__atomic_load_n(&p_errors, __ATOMIC_SEQ_CST);) {
            shmq_msg_t m;
            int rc = shmq_get_begin(&q, &m, shmq_now_mono_ns() + 50ull * 1000 * 1000);
            if (rc == SHMQ_EMPTY) {
                if (shmq_now_mono_ns() > give_up) {
                    fprintf(stderr, "get: gave up after %u messages\n", got);
                    __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
                }
                continue;
            }
            if (rc != SHMQ_OK || !intact(m.data, m.size)) {
                fprintf(stderr, "get: %s (%d)%s\n", shmq_strerror(rc), rc, rc == SHMQ_OK ? ", a torn message" : "");
                __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
                break;
            }
            shmq_get_end(&q, &m);
            got++;
        }
        __atomic_store_n(&p_stop, 1, __ATOMIC_SEQ_CST);
    } else {
        while (!__atomic_load_n(&p_stop, __ATOMIC_SEQ_CST)) {
            shmq_peek_t pk;
            int rc = shmq_peek(&q, (uint64_t)role - 2, &pk, buf, sizeof buf);
            if (rc == SHMQ_OK) {
                if (pk.copied != pk.size || !intact(buf, pk.copied)) {
                    fprintf(stderr, "peek: a torn copy (size %llu)\n", (unsigned long long)pk.size);
                    __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
                    break;
                }
                __atomic_fetch_add(&p_ok, 1, __ATOMIC_RELAXED);
            } else if (rc != SHMQ_EMPTY && rc != SHMQ_EAGAIN) {
                fprintf(stderr, "peek: %s (%d)\n", shmq_strerror(rc), rc);
                __atomic_fetch_add(&p_errors, 1, __ATOMIC_SEQ_CST);
                break;
            }
        }
    }
    shmq_close(&q);
    return NULL;
}

static void test_peek_threads(void)
{
    p_ok = 0;
    th_path(ppath, sizeof ppath, "pthreads");
    shmq_create_opts_t o = th_opts(ppath, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, p_worker, (void *)(uintptr_t)(3 - i)); /* peekers first */
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(p_errors, 0);
    CHECK(p_ok > 0);
    CHECK_EQ(shmq_depth(q), 0);
}

int main(void)
{
    for (int round = 0; round < 20 && th_failed == 0; round++) {
        p_stop = 0;
        RUN(test_peek_threads);
    }
    TH_SUMMARY();
}
