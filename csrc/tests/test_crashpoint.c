/* test_crashpoint.c - crashpoint.h: the table of named points, SHMQ_CRASH_AT really kills a
 * process at the named point (and only there, and only at the n-th hit), and a process killed
 * at each put/get/lock/repair point of the plain queue leaves a state that repair makes
 * consistent again (the at-least-once points are in test_lease.c and test_dedup.c). */
#define _GNU_SOURCE
#include "../crashpoint.h"
#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"

/* child: put `count` messages (of argv[2] bytes, default 4) into the queue at argv[0]; exits 0
 * if every put returned */
static int child_put(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t q;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    int count = atoi(argv[1]);
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : sizeof(int);
    static uint8_t buf[1 << 16];
    if (size < sizeof(int) || size > sizeof buf)
        return 9;
    for (int i = 0; i < count; i++) {
        memset(buf, 0x5a, size);
        memcpy(buf, &i, sizeof i);
        shmq_iov_t iov = {buf, size};
        if (shmq_put(&q, &iov, 1, 1, th_after_ms(5000), NULL) != SHMQ_OK)
            return 3;
    }
    shmq_close(&q);
    return 0;
}

/* child: get argv[1] messages from the queue at argv[0] */
static int child_get(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t q;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    for (int i = 0; i < atoi(argv[1]); i++) {
        shmq_msg_t m;
        if (shmq_get_begin(&q, &m, th_after_ms(5000)) != SHMQ_OK)
            return 3;
        shmq_get_end(&q, &m);
    }
    shmq_close(&q);
    return 0;
}

/* child: attach to the queue at argv[0] (and repair whatever is dead), then detach */
static int child_attach(int argc, char **argv)
{
    if (argc < 1)
        return 9;
    shmq_seg_t q;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    shmq_repair_dead(&q);
    shmq_close(&q);
    return 0;
}

static const th_role_t roles[] = {{"put", child_put}, {"get", child_get}, {"attach", child_attach}, {NULL, NULL}};

/* After repair: nothing owned, nothing orphaned, arena and descriptors agree (a consumer
 * killed at mid_get leaves its cell FULL with a stale handle: the next get skips it). */
#define CHECK_CONSISTENT(q)                                                   \
    do {                                                                      \
        shmq_repair_dead(q);                                                  \
        shmq_check_t _ck;                                                     \
        shmq_check((q), &_ck);                                                \
        CHECK_EQ(_ck.owned_desc, 0);                                          \
        CHECK_EQ(_ck.dead_owned, 0);                                          \
        CHECK_EQ(_ck.orphan_ready, 0);                                        \
        CHECK_EQ(_ck.bad_chunks, 0);                                          \
        CHECK_EQ(_ck.arena_mismatch, 0);                                      \
        CHECK_EQ(_ck.bad_areas, 0);                                           \
        CHECK(_ck.ready_desc <= _ck.queued); /* a dead taker's cell may linger */ \
    } while (0)

static void test_killed_putter_at_every_put_point(void)
{
    /* {point, does the message count as queued afterwards} */
    static const struct {
        const char *point;
        int queued;
    } pts[] = {{"after_desc_claim", 0}, {"after_alloc", 0}, {"mid_copy", 0}, {"after_claim", 0},
               {"before_commit", 1},    {"after_commit", 1}, {"arena_locked", 0}};
    for (unsigned i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        char path[128];
        th_path(path, sizeof path, pts[i].point);
        shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
        shmq_seg_t *q = th_create(&o);
        CHECK(q != NULL);
        CHECK(th_killed(th_wait(th_spawn(pts[i].point, "put", path, "1", "5000", NULL), 20000)));
        CHECK_CONSISTENT(q);
        if (shmq_depth(q) != (uint64_t)pts[i].queued)
            fprintf(stderr, "after %s\n", pts[i].point);
        CHECK_EQ(shmq_depth(q), pts[i].queued);
        /* the queue goes on: a put and a get of an arena payload, then nothing left */
        static uint8_t buf[5000];
        shmq_iov_t iov = {buf, sizeof buf};
        CHECK_EQ(shmq_put(q, &iov, 1, 1, th_after_ms(5000), NULL), SHMQ_OK);
        for (int k = 0; k < pts[i].queued + 1; k++) {
            shmq_msg_t m;
            CHECK_EQ(shmq_get_begin(q, &m, 0), SHMQ_OK);
            CHECK_EQ(m.size, 5000);
            shmq_get_end(q, &m);
        }
        shmq_stats_t st;
        shmq_stats(q, &st);
        CHECK_EQ(st.depth, 0);
        CHECK_EQ(st.bytes_used, 0);
        shmq_close(q);
        CHECK_EQ(unlink(path), 0);
    }
}

static void test_killed_getter_at_every_get_point(void)
{
    /* at-most-once: the message a dead consumer had taken is the one lost, nothing else */
    const char *pts[] = {"mid_get", "after_take", "before_free"};
    for (unsigned i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        char path[128];
        th_path(path, sizeof path, pts[i]);
        shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 2);
        shmq_seg_t *q = th_create(&o);
        CHECK(q != NULL);
        static uint8_t buf[5000];
        shmq_iov_t iov = {buf, sizeof buf};
        CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_OK);
        CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_OK);
        CHECK(th_killed(th_wait(th_spawn(pts[i], "get", path, "1", NULL, NULL), 20000)));
        CHECK_CONSISTENT(q);
        shmq_msg_t m;
        CHECK_EQ(shmq_get_begin(q, &m, 0), SHMQ_OK); /* exactly one left */
        CHECK_EQ(m.size, 5000);
        shmq_get_end(q, &m);
        CHECK_EQ(shmq_get_begin(q, &m, 0), SHMQ_EMPTY);
        CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_OK); /* maxsize 2: the lost one's unit came back */
        CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_OK);
        CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_FULL);
        shmq_stats_t st;
        shmq_stats(q, &st);
        CHECK_EQ(st.depth, 2);
        shmq_close(q);
        CHECK_EQ(unlink(path), 0);
    }
}

static void test_killed_with_the_grow_lock(void)
{
    char path[128];
    th_path(path, sizeof path, "growlk");
    shmq_create_opts_t o = th_opts(path, 64 << 10, SHMQ_F_GROWABLE, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK(th_killed(th_wait(th_spawn("grow_locked", "put", path, "200", "2000", NULL), 20000)));
    static uint8_t buf[2000];
    shmq_iov_t iov = {buf, sizeof buf};
    for (int i = 0; i < 400; i++) /* grows past the dead holder's lock */
        CHECK_EQ(shmq_put(q, &iov, 1, 1, th_after_ms(5000), NULL), SHMQ_OK);
    CHECK_CONSISTENT(q);
    CHECK(th_area_tail(q) >= 1);
    uint64_t n = shmq_depth(q);
    CHECK(n >= 400);
    CHECK_EQ(shmq_purge(q), n);
}

static void test_killed_while_attaching_or_repairing(void)
{
    char path[128];
    th_path(path, sizeof path, "attachlk");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    o.max_slots = 3;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK(th_killed(th_wait(th_spawn("attach_locked", "attach", path, NULL, NULL, NULL), 20000)));
    /* a putter dies holding a descriptor; the repairer dies in the middle of freeing it */
    CHECK(th_killed(th_wait(th_spawn("after_alloc", "put", path, "1", "5000", NULL), 20000)));
    CHECK(th_killed(th_wait(th_spawn("mid_repair", "attach", path, NULL, NULL, NULL), 20000)));
    CHECK_CONSISTENT(q);
    shmq_seg_t *a = th_open(path), *b = a ? th_open(path) : NULL; /* every slot usable again */
    CHECK(a && b);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.attached, 3);
    CHECK_EQ(st.bytes_used, 0);
}

/* Parked chunks (arena.h): a FREE descriptor keeps its chunk for the next put. A putter killed
 * while reusing one (chunk_reused), while swapping one of another size under the arena lock
 * (chunk_mid_swap), or while taking parked chunks back from FREE descriptors because the arena
 * was full (chunk_mid_unpark) leaks nothing: the walker counts parked chunks as referenced and
 * finds no mismatch, and the whole arena is usable again. */
static int put_n(shmq_seg_t *q, size_t size, uint64_t deadline)
{
    static uint8_t buf[8192];
    shmq_iov_t iov = {buf, size};
    int n = 0;
    while (shmq_put(q, &iov, 1, 1, deadline, NULL) == SHMQ_OK)
        n++;
    return n;
}

static void drain(shmq_seg_t *q)
{
    shmq_msg_t m;
    while (shmq_get_begin(q, &m, 0) == SHMQ_OK)
        shmq_get_end(q, &m);
}

static void test_killed_with_parked_chunks(void)
{
    /* {point, bytes the parent parks first (0: fill the arena with 1000-byte chunks)} */
    static const struct {
        const char *point;
        size_t warm;
    } pts[] = {{"chunk_reused", 5000}, {"chunk_mid_swap", 1000}, {"chunk_mid_unpark", 0}};
    for (unsigned i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        char path[128];
        th_path(path, sizeof path, pts[i].point);
        shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
        shmq_seg_t *q = th_create(&o);
        CHECK(q != NULL);
        static uint8_t buf[8192];
        shmq_iov_t iov = {buf, pts[i].warm ? pts[i].warm : 1000};
        int filled = 0;
        if (pts[i].warm) {
            CHECK_EQ(shmq_put(q, &iov, 1, 1, 0, NULL), SHMQ_OK);
        } else {
            filled = put_n(q, 1000, 0);
            CHECK(filled > 100);
        }
        drain(q); /* every chunk now parked in a FREE descriptor */
        shmq_check_t ck;
        shmq_check(q, &ck);
        CHECK_EQ(ck.parked_chunks, filled ? (uint64_t)filled : 1);
        CHECK_EQ(ck.arena_mismatch, 0); /* parked is referenced, not leaked */
        shmq_stats_t st;
        shmq_stats(q, &st);
        CHECK_EQ(st.bytes_used, 0); /* parked is free room */
        CHECK(th_killed(th_wait(th_spawn(pts[i].point, "put", path, "1", "5000", NULL), 20000)));
        CHECK_CONSISTENT(q);
        CHECK_EQ(shmq_depth(q), 0);
        /* the queue goes on: the whole arena is usable by a size nobody parked */
        int n = put_n(q, 8000, th_after_ms(200));
        CHECK(n * 8192 >= (int)(((1 << 20) * 3 / 4) * 0.8));
        drain(q);
        CHECK_CONSISTENT(q);
        shmq_stats(q, &st);
        CHECK_EQ(st.depth, 0);
        CHECK_EQ(st.bytes_used, 0);
        shmq_close(q);
        CHECK_EQ(unlink(path), 0);
    }
}

static void test_crash_table(void)
{
    CHECK(shmq_crash_count() >= 10);
    for (int i = 0; i < shmq_crash_count(); i++)
        CHECK(shmq_crash_name(i) && shmq_crash_where(i));
    CHECK(shmq_crash_name(shmq_crash_count()) == NULL);
    CHECK(shmq_crash_name(-1) == NULL);
    for (int i = 0; i < shmq_crash_count(); i++) /* names are unique */
        for (int j = i + 1; j < shmq_crash_count(); j++)
            CHECK(strcmp(shmq_crash_name(i), shmq_crash_name(j)) != 0);
}

static void test_crash_at_kills_at_the_nth_hit(void)
{
    char path[128];
    th_path(path, sizeof path, "cp");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    /* unarmed: all 5 puts return */
    CHECK(th_exited_ok(th_wait(th_spawn(NULL, "put", path, "5", NULL, NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 5);
    /* after_commit:3: killed in the third put, after it was published */
    CHECK(th_killed(th_wait(th_spawn("after_commit:3", "put", path, "5", NULL, NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 8);
    /* a point the puts never reach: no kill */
    CHECK(th_exited_ok(th_wait(th_spawn("mid_ack", "put", path, "2", NULL, NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 10);
    /* after_desc_claim: killed before anything was published; repair frees the descriptor */
    CHECK(th_killed(th_wait(th_spawn("after_desc_claim", "put", path, "1", NULL, NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 10);
    shmq_repair_dead(q);
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.owned_desc, 0);
    CHECK_EQ(ck.ready_desc, 10);
}

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_crash_table);
    RUN(test_crash_at_kills_at_the_nth_hit);
    RUN(test_killed_putter_at_every_put_point);
    RUN(test_killed_getter_at_every_get_point);
    RUN(test_killed_with_the_grow_lock);
    RUN(test_killed_while_attaching_or_repairing);
    RUN(test_killed_with_parked_chunks);
    TH_SUMMARY();
}
