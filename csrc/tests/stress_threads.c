/* stress_threads.c - the queue driven by threads of one process (each thread with its own
 * attached handle), for ThreadSanitizer: every message exactly once, FIFO per producer; and
 * the at-least-once paths: receive, ack, nack (requeue and delay), extend, and leases that
 * expire under the consumers (timer scans racing receives and settles), where every message
 * must be acked successfully exactly once; and senders of the same dedup keys racing each
 * other (the dedup lock, PENDING waits), where every key must be enqueued exactly once. */
#define _GNU_SOURCE
#include <pthread.h>

#include "../dedup.h"
#include "../lease.h"
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
static long put_done[PRODUCERS];

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
        __atomic_store_n(&put_done[p], (long)i + (rc == SHMQ_OK), __ATOMIC_RELAXED);
        if (rc != SHMQ_OK) {
            fprintf(stderr, "producer %u: put of %u failed: %s (%d)\n", p, i, shmq_strerror(rc), rc);
            __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
            break; /* the consumers see the error and stop instead of waiting for it forever */
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
    uint64_t give_up = shmq_now_mono_ns() + 150ull * 1000 * 1000 * 1000;
    while (__atomic_load_n(&taken, __ATOMIC_SEQ_CST) < PRODUCERS * PER && !__atomic_load_n(&errors, __ATOMIC_SEQ_CST)) {
        if (shmq_now_mono_ns() > give_up) {
            /* say where it stands rather than hang until the watchdog */
            fprintf(stderr, "consumer: gave up with %ld of %d taken; puts done %ld %ld %ld; depth %llu\n",
                    __atomic_load_n(&taken, __ATOMIC_SEQ_CST), PRODUCERS * PER, __atomic_load_n(&put_done[0], __ATOMIC_RELAXED),
                    __atomic_load_n(&put_done[1], __ATOMIC_RELAXED), __atomic_load_n(&put_done[2], __ATOMIC_RELAXED),
                    (unsigned long long)shmq_depth(&q));
            __atomic_fetch_add(&errors, 1, __ATOMIC_SEQ_CST);
            break;
        }
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
}

/* ---------------------------------------------------------------- at-least-once */

#define L_PRODUCERS 2
#define L_CONSUMERS 3
#define L_PER 3000
#define L_VIS_NS (20ull * 1000 * 1000) /* short: abandoned leases expire while others receive */

static char lpath[128];
static uint32_t l_acked_ok[L_PRODUCERS * L_PER];
static long l_done = 0, l_receives = 0, l_stale = 0;
static int l_errors = 0;

static void l_error(const char *what, int rc)
{
    fprintf(stderr, "lease stress: %s: %s (%d)\n", what, shmq_strerror(rc), rc);
    __atomic_fetch_add(&l_errors, 1, __ATOMIC_SEQ_CST);
}

static void *l_producer(void *arg)
{
    uint32_t p = (uint32_t)(uintptr_t)arg;
    shmq_seg_t q;
    if (shmq_open(&q, lpath, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        l_error("producer attach", SHMQ_ESYS);
        return NULL;
    }
    for (uint32_t i = 0; i < L_PER; i++) {
        uint32_t v[2] = {p, i};
        uint8_t buf[300];
        memset(buf, (int)i, sizeof buf);
        memcpy(buf, v, sizeof v);
        shmq_iov_t iov = {buf, (i % 5 == 0) ? sizeof buf : sizeof v}; /* some in the arena */
        shmq_send_opts_t o = {.delay_ns = (i % 11 == 0) ? 1000000 : 0, .ttl_ns = 0, .hdr = NULL, .hdr_size = 0,
                              .priority = 0, .dedup_key = NULL};
        uint64_t id;
        int dup;
        int rc = shmq_send(&q, &iov, 1, 1, &o, shmq_now_mono_ns() + 30ull * 1000 * 1000 * 1000, &id, &dup);
        if (rc != SHMQ_OK)
            l_error("send", rc);
    }
    shmq_close(&q);
    return NULL;
}

static void *l_consumer(void *arg)
{
    (void)arg;
    shmq_seg_t q;
    if (shmq_open(&q, lpath, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        l_error("consumer attach", SHMQ_ESYS);
        return NULL;
    }
    uint64_t give_up = shmq_now_mono_ns() + 120ull * 1000 * 1000 * 1000;
    while (__atomic_load_n(&l_done, __ATOMIC_SEQ_CST) < L_PRODUCERS * L_PER) {
        if (shmq_now_mono_ns() > give_up) {
            l_error("consumer gave up", SHMQ_TIMEOUT);
            break;
        }
        shmq_msg_t m;
        int rc = shmq_receive_begin(&q, &m, shmq_now_mono_ns() + 20ull * 1000 * 1000);
        if (rc == SHMQ_EMPTY || rc == SHMQ_TIMEOUT)
            continue;
        if (rc != SHMQ_OK || m.size < 8) {
            l_error("receive", rc);
            break;
        }
        uint32_t v[2];
        memcpy(v, m.data, sizeof v);
        uint64_t token = m.handle, id = m.id;
        uint32_t dc = m.delivery_count;
        if (shmq_receive_end(&q, &m) != SHMQ_OK) {
            __atomic_fetch_add(&l_stale, 1, __ATOMIC_RELAXED); /* lost during the copy: not ours */
            continue;
        }
        __atomic_fetch_add(&l_receives, 1, __ATOMIC_RELAXED);
        if (v[0] >= L_PRODUCERS || v[1] >= L_PER || dc == 0) {
            l_error("bad message", SHMQ_ECORRUPT);
            break;
        }
        uint32_t i = v[1];
        if (dc == 1 && i % 6 == 0) {
            rc = shmq_nack(&q, token, id, 1, 0); /* straight back */
        } else if (dc == 1 && i % 6 == 1) {
            rc = shmq_nack(&q, token, id, 1, 2ull * 1000 * 1000); /* back in 2 ms */
        } else if (dc == 1 && i % 6 == 2) {
            rc = SHMQ_OK; /* abandoned: its lease expires and a scan puts it back */
        } else {
            if (dc == 1 && i % 60 == 4) {
                /* a slow consumer: acks after its lease ended; OK if nobody took it meanwhile
                 * (lazy expiry), else SHMQ_ESTALE and the other delivery acks it */
                struct timespec ts = {0, (long)L_VIS_NS + 3000000};
                nanosleep(&ts, NULL);
            }
            if (i % 6 == 3 && (rc = shmq_extend(&q, token, id, L_VIS_NS)) != SHMQ_OK && rc != SHMQ_ESTALE)
                l_error("extend", rc);
            rc = shmq_ack(&q, token, id);
            if (rc == SHMQ_OK) {
                if (__atomic_add_fetch(&l_acked_ok[v[0] * L_PER + i], 1, __ATOMIC_SEQ_CST) != 1)
                    l_error("acked twice", SHMQ_ESTALE);
                __atomic_fetch_add(&l_done, 1, __ATOMIC_SEQ_CST);
                continue;
            }
        }
        if (rc == SHMQ_ESTALE)
            __atomic_fetch_add(&l_stale, 1, __ATOMIC_RELAXED); /* expired and delivered again: fine */
        else if (rc != SHMQ_OK)
            l_error("settle", rc);
    }
    shmq_close(&q);
    return NULL;
}

static void test_lease_threads(void)
{
    th_path(lpath, sizeof lpath, "lthreads");
    shmq_create_opts_t o = th_ack_opts(lpath, 512 << 10, L_VIS_NS, 65535, NULL);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pthread_t t[L_PRODUCERS + L_CONSUMERS];
    for (int i = 0; i < L_CONSUMERS; i++)
        pthread_create(&t[i], NULL, l_consumer, NULL);
    for (int i = 0; i < L_PRODUCERS; i++)
        pthread_create(&t[L_CONSUMERS + i], NULL, l_producer, (void *)(uintptr_t)i);
    for (int i = 0; i < L_PRODUCERS + L_CONSUMERS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(l_errors, 0);
    for (long i = 0; i < L_PRODUCERS * L_PER; i++)
        CHECK_EQ(l_acked_ok[i], 1);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.acked, L_PRODUCERS * L_PER);
    CHECK_EQ(st.depth + st.in_flight + st.delayed, 0);
    CHECK_EQ(st.dead_lettered + st.expired, 0);
    CHECK(st.redelivered >= (uint64_t)L_PRODUCERS * L_PER / 2); /* the nacks and abandoned leases */
    CHECK(l_receives >= L_PRODUCERS * L_PER + (long)st.redelivered / 2);
    printf("lease stress: %ld receives, %llu redelivered, %ld stale settles\n", l_receives,
           (unsigned long long)st.redelivered, l_stale);
}

/* ---------------------------------------------------------------- dedup */

#define D_SENDERS 4
#define D_KEYS 2000
static char dpath[128];
static int d_errors = 0;
static long d_fresh = 0;

static void *d_sender(void *arg)
{
    uint32_t who = (uint32_t)(uintptr_t)arg;
    shmq_seg_t q;
    if (shmq_open(&q, dpath, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK) {
        __atomic_fetch_add(&d_errors, 1, __ATOMIC_SEQ_CST);
        return NULL;
    }
    for (uint32_t k = 0; k < D_KEYS; k++) {
        uint32_t v = (k + who * 7) % D_KEYS; /* the same keys, in different orders */
        uint8_t key[16];
        shmq_hash128(&v, sizeof v, key);
        shmq_iov_t iov = {&v, sizeof v};
        shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .hdr = NULL, .hdr_size = 0, .priority = 0, .dedup_key = key};
        uint64_t id;
        int dup, rc;
        while ((rc = shmq_send(&q, &iov, 1, 1, &o, shmq_now_mono_ns() + 5ull * 1000 * 1000 * 1000, &id, &dup)) ==
               SHMQ_TIMEOUT) {
        }
        if (rc != SHMQ_OK) {
            fprintf(stderr, "dedup sender: %s (%d)\n", shmq_strerror(rc), rc);
            __atomic_fetch_add(&d_errors, 1, __ATOMIC_SEQ_CST);
            break;
        } else if (!dup) {
            __atomic_fetch_add(&d_fresh, 1, __ATOMIC_SEQ_CST);
        }
    }
    shmq_close(&q);
    return NULL;
}

static void test_dedup_threads(void)
{
    th_path(dpath, sizeof dpath, "dthreads");
    shmq_create_opts_t o = th_ack_opts(dpath, 4 << 20, 60000 * TH_MS, 5, NULL); /* 4096 descriptors: room for every key */
    o.dedup_window_ns = 600000 * TH_MS;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pthread_t t[D_SENDERS];
    for (int i = 0; i < D_SENDERS; i++)
        pthread_create(&t[i], NULL, d_sender, (void *)(uintptr_t)i);
    for (int i = 0; i < D_SENDERS; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(d_errors, 0);
    CHECK_EQ(d_fresh, D_KEYS);
    static uint8_t count[D_KEYS];
    long total = 0;
    shmq_msg_t m;
    while (shmq_receive_begin(q, &m, 0) == SHMQ_OK) {
        uint32_t v;
        memcpy(&v, m.data, sizeof v);
        uint64_t token = m.handle, id = m.id;
        CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
        CHECK(v < D_KEYS);
        count[v]++;
        total++;
        CHECK_EQ(shmq_ack(q, token, id), SHMQ_OK);
    }
    CHECK_EQ(total, D_KEYS);
    for (int i = 0; i < D_KEYS; i++)
        CHECK_EQ(count[i], 1);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.dedup_hits, (D_SENDERS - 1) * D_KEYS);
}

int main(void)
{
    RUN(test_threads);
    RUN(test_lease_threads);
    RUN(test_dedup_threads);
    TH_SUMMARY();
}
