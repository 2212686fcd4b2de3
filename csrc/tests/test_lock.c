/* test_lock.c - lock.h: the owner-stamped robust lock: acquire/release, try, a deadline
 * against a live holder, stealing from a dead holder (SHMQ_EAGAIN: rebuild), a stale stamp of
 * our own, a bare CONTENDED bit, and wake-up of a sleeping waiter. The lock word lives in an
 * anonymous MAP_SHARED page shared with forked children; the handles give owner ids. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/mman.h>

#include "../lock.h"
#include "tharness.h"

static uint32_t *word_page(void)
{
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : (uint32_t *)p;
}

static shmq_seg_t *queue(const char *tag, char *path, size_t n)
{
    th_path(path, n, tag);
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    return th_create(&o);
}

static void test_acquire_release_try(void)
{
    char path[128];
    shmq_seg_t *a = queue("lk", path, sizeof path), *b = a ? th_open(path) : NULL;
    uint32_t *w = word_page();
    CHECK(a && b && w);
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), 0), SHMQ_OK);
    CHECK_EQ(*w & ~SHMQ_LOCK_CONTENDED, a->owner); /* stamped with the holder */
    CHECK_EQ(shmq_lock_try(b, w, th_lock_flag(b, w)), SHMQ_EAGAIN);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_lock_acquire(b, w, th_lock_flag(b, w), t0 + 30 * TH_MS), SHMQ_TIMEOUT); /* a live holder is never stolen from */
    CHECK(shmq_now_mono_ns() - t0 >= 29 * TH_MS);
    shmq_lock_release(a, w, th_lock_flag(a, w));
    CHECK_EQ(*w, 0);
    CHECK_EQ(shmq_lock_try(b, w, th_lock_flag(b, w)), SHMQ_OK);
    CHECK_EQ(*w, b->owner);
    shmq_lock_release(b, w, th_lock_flag(b, w));
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), SHMQ_NO_DEADLINE), SHMQ_OK); /* the timed-out waiter left nothing held */
    shmq_lock_release(a, w, th_lock_flag(a, w));
    munmap(w, 4096);
}

static void test_dead_holder_stolen(void)
{
    char path[128];
    shmq_seg_t *a = queue("lkdead", path, sizeof path);
    uint32_t *w = word_page();
    CHECK(a && w);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        if (shmq_lock_acquire(&c, w, th_lock_flag(&c, w), SHMQ_NO_DEADLINE) != SHMQ_OK)
            _exit(3);
        _exit(0); /* dies holding it */
    }
    CHECK(th_exited_ok(th_wait(pid, 10000)));
    CHECK(*w != 0);
    CHECK(*w != a->owner);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), t0 + 5000 * TH_MS), SHMQ_EAGAIN); /* ours now: rebuild */
    CHECK(shmq_now_mono_ns() - t0 < 4000 * TH_MS);                     /* within a liveness slice or so */
    CHECK_EQ(*w & ~SHMQ_LOCK_CONTENDED, a->owner);
    shmq_lock_release(a, w, th_lock_flag(a, w));
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), 0), SHMQ_OK); /* and a plain lock afterwards */
    shmq_lock_release(a, w, th_lock_flag(a, w));
    munmap(w, 4096);
}

static void test_stale_own_stamp_and_bare_contended(void)
{
    char path[128];
    shmq_seg_t *a = queue("lkstale", path, sizeof path);
    uint32_t *w = word_page();
    CHECK(a && w);
    *w = a->owner; /* "held by us" while no thread of ours holds it: stale or forged */
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), th_after_ms(1000)), SHMQ_EAGAIN);
    shmq_lock_release(a, w, th_lock_flag(a, w));
    *w = SHMQ_LOCK_CONTENDED; /* left by a waiter that died: free */
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), th_after_ms(1000)), SHMQ_OK);
    shmq_lock_release(a, w, th_lock_flag(a, w));
    CHECK_EQ(*w, 0);
    munmap(w, 4096);
}

static void test_sleeping_waiter_woken(void)
{
    /* The child holds the lock 100 ms; our waiter sleeps and gets it at the release, not at a
     * liveness slice or its deadline. */
    char path[128];
    shmq_seg_t *a = queue("lkwake", path, sizeof path);
    uint32_t *w = word_page();
    CHECK(a && w);
    volatile uint32_t *flag = w + 64;
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        if (shmq_lock_acquire(&c, w, th_lock_flag(&c, w), SHMQ_NO_DEADLINE) != SHMQ_OK)
            _exit(3);
        *flag = 1;
        th_sleep_ms(100);
        shmq_lock_release(&c, w, th_lock_flag(&c, w));
        th_sleep_ms(200);
        shmq_close(&c);
        _exit(0);
    }
    uint64_t t0 = shmq_now_mono_ns();
    while (!*flag && shmq_now_mono_ns() - t0 < 5000 * TH_MS)
        th_sleep_ms(1);
    CHECK(*flag);
    t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_lock_acquire(a, w, th_lock_flag(a, w), t0 + 5000 * TH_MS), SHMQ_OK);
    uint64_t took = shmq_now_mono_ns() - t0;
    CHECK(took < 2000 * TH_MS);
    shmq_lock_release(a, w, th_lock_flag(a, w));
    CHECK(th_exited_ok(th_wait(pid, 10000)));
    munmap(w, 4096);
}

static uint32_t *t_word;
static long t_counter = 0;
static int t_errors = 0;

static void *t_locker(void *arg)
{
    shmq_seg_t *s = arg;
    for (int i = 0; i < 2000; i++) {
        if (shmq_lock_acquire(s, t_word, th_lock_flag(s, t_word), th_after_ms(10000)) != SHMQ_OK) {
            __atomic_fetch_add(&t_errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        long v = __atomic_load_n(&t_counter, __ATOMIC_RELAXED); /* guarded: a non-atomic increment */
        __atomic_store_n(&t_counter, v + 1, __ATOMIC_RELAXED);
        shmq_lock_release(s, t_word, th_lock_flag(s, t_word));
    }
    return NULL;
}

static void test_threads_mutual_exclusion(void)
{
    /* two handles, two threads each (threads of one handle share its owner id) */
    char path[128];
    shmq_seg_t *a = queue("lkthr", path, sizeof path), *b = a ? th_open(path) : NULL;
    t_word = word_page();
    CHECK(a && b && t_word);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, t_locker, i % 2 ? a : b), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(t_errors, 0);
    CHECK_EQ(t_counter, 8000);
    CHECK_EQ(*t_word, 0);
    munmap(t_word, 4096);
}

int main(void)
{
    RUN(test_acquire_release_try);
    RUN(test_dead_holder_stolen);
    RUN(test_stale_own_stamp_and_bare_contended);
    RUN(test_sleeping_waiter_woken);
    RUN(test_threads_mutual_exclusion);
    TH_SUMMARY();
}
