/* test_crashpoint.c - crashpoint.h: the table of named points, and SHMQ_CRASH_AT really kills
 * a process at the named point (and only there, and only at the n-th hit). */
#define _GNU_SOURCE
#include "../crashpoint.h"
#include "../queue.h"
#include "tharness.h"

/* child: put `count` messages into the queue at argv[0]; exits 0 if every put returned */
static int child_put(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t q;
    if (shmq_seg_open(&q, argv[0], -1) != SHMQ_OK || shmq_seg_attach(&q) != SHMQ_OK)
        return 2;
    int count = atoi(argv[1]);
    for (int i = 0; i < count; i++) {
        shmq_iov_t iov = {&i, sizeof i};
        if (shmq_put(&q, &iov, 1, 1, 0, NULL) != SHMQ_OK)
            return 3;
    }
    shmq_seg_close(&q);
    return 0;
}

static const th_role_t roles[] = {{"put", child_put}, {NULL, NULL}};

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
    TH_SUMMARY();
}
