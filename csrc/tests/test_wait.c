/* test_wait.c - wait.h: futex waits with absolute deadlines and liveness slices, wake-ups
 * across processes, and a blocking get woken by a put from another process. */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "../wait.h"
#include "tharness.h"

static void test_futex_timeouts_and_slices(void)
{
    uint32_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(w != MAP_FAILED);
    *w = 5;
    CHECK_EQ(shmq_futex_wait(w, 4, SHMQ_NO_DEADLINE), SHMQ_OK); /* value differs: returns at once */
    CHECK_EQ(shmq_futex_wait(w, 5, shmq_now_mono_ns() - 1), SHMQ_TIMEOUT); /* deadline passed */
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_futex_wait(w, 5, t0 + 20 * TH_MS), SHMQ_TIMEOUT);
    uint64_t el = shmq_now_mono_ns() - t0;
    CHECK(el >= 19 * TH_MS && el < 1000 * TH_MS); /* TIMEOUT, not a slice's EAGAIN: the deadline came first */
    /* a wait longer than a liveness slice returns after one slice (SHMQ_EAGAIN) */
    t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_futex_wait(w, 5, SHMQ_NO_DEADLINE), SHMQ_EAGAIN);
    el = shmq_now_mono_ns() - t0;
    CHECK(el >= SHMQ_LIVENESS_SLICE_NS - TH_MS && el < 20 * SHMQ_LIVENESS_SLICE_NS);
    munmap(w, 4096);
}

static void test_futex_wake_across_processes(void)
{
    uint32_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(w != MAP_FAILED);
    *w = 0;
    pid_t pid = th_fork();
    if (pid == 0) {
        th_sleep_ms(30);
        __atomic_store_n(w, 1, __ATOMIC_SEQ_CST);
        shmq_futex_wake(w, INT32_MAX);
        _exit(0);
    }
    uint64_t t0 = shmq_now_mono_ns();
    int rc;
    while ((rc = shmq_futex_wait(w, 0, t0 + 5000 * TH_MS)) == SHMQ_EAGAIN || (rc == SHMQ_OK && *w == 0)) {
    }
    CHECK_EQ(rc, SHMQ_OK);
    CHECK_EQ(*w, 1);
    CHECK(shmq_now_mono_ns() - t0 < 4000 * TH_MS);
    CHECK(th_exited_ok(th_wait(pid, 5000)));
    munmap(w, 4096);
}

static void test_blocking_get_wakes(void)
{
    char path[128];
    th_path(path, sizeof path, "wake");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        usleep(100 * 1000);
        _exit(th_put_bytes(&c, "wake", 4, 0) == SHMQ_OK ? 0 : 3);
    }
    char out[8];
    uint64_t n;
    uint64_t t0 = shmq_now_mono_ns();
    int rc = th_get_bytes(q, out, sizeof out, &n, t0 + 5ull * 1000 * 1000 * 1000);
    int status = th_wait(pid, 10000);
    CHECK_EQ(rc, SHMQ_OK);
    CHECK(memcmp(out, "wake", 4) == 0);
    CHECK(th_exited_ok(status));
    /* a timed-out get returns EMPTY after (not before) its deadline */
    t0 = shmq_now_mono_ns();
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, t0 + 30 * 1000 * 1000), SHMQ_EMPTY);
    CHECK(shmq_now_mono_ns() - t0 >= 29 * 1000 * 1000);
}

static void test_blocked_put_woken_by_get(void)
{
    char path[128];
    th_path(path, sizeof path, "wakeput");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 1);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(th_put_bytes(q, "a", 1, 0), SHMQ_OK);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        char out[4];
        uint64_t n;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        usleep(50 * 1000);
        _exit(th_get_bytes(&c, out, sizeof out, &n, 0) == SHMQ_OK ? 0 : 3);
    }
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(th_put_bytes(q, "b", 1, t0 + 5000 * TH_MS), SHMQ_OK); /* maxsize 1: waits for the child's get */
    CHECK(shmq_now_mono_ns() - t0 < 4000 * TH_MS);
    CHECK(th_exited_ok(th_wait(pid, 10000)));
    CHECK_EQ(shmq_depth(q), 1);
}

static void test_wake_all_closes_waits(void)
{
    /* shmq_wake_all: this handle's blocked calls return SHMQ_ECLOSED */
    char path[128];
    th_path(path, sizeof path, "wakeall");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_wake_all(q);
    char out[4];
    uint64_t n;
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, t0 + 2000 * TH_MS), SHMQ_ECLOSED);
    CHECK(shmq_now_mono_ns() - t0 < 1000 * TH_MS);
}

static void test_watch_get(void)
{
    /* a watcher counts as a sleeper from begin to end; sleep(token) sees any put after the token */
    char path[128];
    th_path(path, sizeof path, "watchget");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(shmq_watch_begin(q, 7), SHMQ_EINVAL);
    CHECK_EQ(shmq_watch_begin(q, SHMQ_WATCH_GET), SHMQ_OK);
    CHECK_EQ(q->hdr->not_empty.waiters, 1);
    CHECK_EQ(q->slots[q->slot].waiting, 1);
    uint32_t tok = shmq_watch_token(q, SHMQ_WATCH_GET);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_watch_sleep(q, SHMQ_WATCH_GET, tok, t0 + 20 * TH_MS), SHMQ_TIMEOUT);
    CHECK(shmq_now_mono_ns() - t0 >= 19 * TH_MS);
    /* a put between the token and the sleep (the caller's failed look) is not lost */
    tok = shmq_watch_token(q, SHMQ_WATCH_GET);
    CHECK_EQ(th_put_bytes(q, "x", 1, 0), SHMQ_OK);
    t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_watch_sleep(q, SHMQ_WATCH_GET, tok, t0 + 2000 * TH_MS), SHMQ_OK);
    CHECK(shmq_now_mono_ns() - t0 < 1000 * TH_MS);
    char out[8];
    uint64_t n;
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    /* a put by another process wakes the sleeping watcher */
    tok = shmq_watch_token(q, SHMQ_WATCH_GET);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        usleep(60 * 1000);
        _exit(th_put_bytes(&c, "wake", 4, 0) == SHMQ_OK ? 0 : 3);
    }
    t0 = shmq_now_mono_ns();
    int rc;
    while ((rc = shmq_watch_sleep(q, SHMQ_WATCH_GET, tok, t0 + 5000 * TH_MS)) == SHMQ_EAGAIN && shmq_depth(q) == 0) {
    }
    CHECK(rc == SHMQ_OK || rc == SHMQ_EAGAIN);
    CHECK_EQ(shmq_depth(q), 1);
    CHECK(th_exited_ok(th_wait(pid, 10000)));
    /* end unregisters (and passes a wake-up on: a message remains) */
    shmq_watch_end(q, SHMQ_WATCH_GET);
    shmq_watch_end(q, SHMQ_WATCH_GET); /* a second end is a no-op */
    CHECK_EQ(q->hdr->not_empty.waiters, 0);
    CHECK_EQ(q->slots[q->slot].waiting, 0);
    /* close wakes a sleeping watcher with SHMQ_ECLOSED */
    CHECK_EQ(shmq_watch_begin(q, SHMQ_WATCH_GET), SHMQ_OK);
    tok = shmq_watch_token(q, SHMQ_WATCH_GET);
    shmq_wake_all(q);
    CHECK_EQ(shmq_watch_sleep(q, SHMQ_WATCH_GET, tok, shmq_now_mono_ns() + 2000 * TH_MS), SHMQ_ECLOSED);
}

static void test_watch_put_and_close(void)
{
    /* a put watcher of a full bounded queue wakes when another process gets; close undoes it */
    char path[128];
    th_path(path, sizeof path, "watchput");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 1);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(th_put_bytes(q, "a", 1, 0), SHMQ_OK);
    CHECK_EQ(shmq_watch_begin(q, SHMQ_WATCH_PUT), SHMQ_OK);
    CHECK_EQ(q->hdr->not_full.waiters, 1);
    CHECK_EQ(q->slots[q->slot].waiting, 1u << 16);
    uint32_t tok = shmq_watch_token(q, SHMQ_WATCH_PUT);
    CHECK_EQ(th_put_bytes(q, "b", 1, 0), SHMQ_FULL); /* the caller's look */
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        char out[4];
        uint64_t n;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        usleep(60 * 1000);
        _exit(th_get_bytes(&c, out, sizeof out, &n, 0) == SHMQ_OK ? 0 : 3);
    }
    uint64_t t0 = shmq_now_mono_ns();
    int rc;
    while ((rc = shmq_watch_sleep(q, SHMQ_WATCH_PUT, tok, t0 + 5000 * TH_MS)) == SHMQ_EAGAIN && shmq_depth(q) == 1) {
    }
    CHECK(rc == SHMQ_OK || rc == SHMQ_EAGAIN);
    CHECK(th_exited_ok(th_wait(pid, 10000)));
    CHECK_EQ(th_put_bytes(q, "b", 1, 0), SHMQ_OK);
    /* still registered: a second handle sees the count until the first closes */
    shmq_seg_t *other = th_open(path);
    CHECK(other != NULL);
    CHECK_EQ(other->hdr->not_full.waiters, 1);
    shmq_close(q);
    CHECK_EQ(other->hdr->not_full.waiters, 0);
    shmq_close(other);
}

int main(void)
{
    RUN(test_futex_timeouts_and_slices);
    RUN(test_futex_wake_across_processes);
    RUN(test_blocking_get_wakes);
    RUN(test_blocked_put_woken_by_get);
    RUN(test_wake_all_closes_waits);
    RUN(test_watch_get);
    RUN(test_watch_put_and_close);
    TH_SUMMARY();
}
