/* test_group.c - group.h through shmq_send with a group key: send order per group, one member
 * out at a time, other groups not held up; nack keeps the head; a wiped table is rebuilt from
 * the descriptors (order kept, the member that is out stays the only one); a dirty flag and a
 * lock stamped by a dead owner are taken over; a full table refuses with SHMQ_FULL. */
#define _GNU_SOURCE
#include "../group.h"
#include "../lease.h"
#include "tharness.h"

static int gsend(shmq_seg_t *q, const char *group, uint32_t val)
{
    shmq_iov_t iov = {&val, sizeof val};
    shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .group = (const uint8_t *)group,
                          .group_len = (uint32_t)strlen(group), .group_type = 0};
    uint64_t id;
    int dup;
    return shmq_send(q, &iov, 1, 1, &o, 0, &id, &dup);
}

/* receive one: its value in *val, its token in *tok; SHMQ_EMPTY when nothing is deliverable */
static int grecv(shmq_seg_t *q, uint32_t *val, uint64_t *tok, uint64_t *id)
{
    shmq_msg_t m;
    int rc = shmq_receive_begin(q, &m, 0);
    if (rc != SHMQ_OK)
        return rc;
    memcpy(val, m.data, sizeof *val);
    *tok = m.handle;
    *id = m.id;
    return shmq_receive_end(q, &m);
}

static shmq_seg_t *gq(const char *tag, char *path)
{
    th_path(path, 128, tag);
    shmq_create_opts_t o = th_ack_opts(path, 4 << 20, 30000 * TH_MS, 50, NULL);
    return th_create(&o);
}

static void test_order_and_one_out(void)
{
    char path[128];
    shmq_seg_t *q = gq("order", path);
    CHECK(q != NULL);
    CHECK(shmq_ack_of(q)->grp != NULL);
    for (uint32_t i = 0; i < 3; i++) {
        CHECK_EQ(gsend(q, "a", 10 + i), SHMQ_OK);
        CHECK_EQ(gsend(q, "b", 20 + i), SHMQ_OK);
    }
    uint32_t v1, v2, v;
    uint64_t t1, t2, t, i1, i2, id;
    CHECK_EQ(grecv(q, &v1, &t1, &i1), SHMQ_OK);
    CHECK_EQ(grecv(q, &v2, &t2, &i2), SHMQ_OK);
    CHECK_EQ(v1 + v2, 30);               /* a's and b's first */
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_EMPTY);
    CHECK_EQ(shmq_nack(q, t1, i1, 1, 0), SHMQ_OK);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, v1);                     /* the nacked head again, before its group's later ones */
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, v1 + 1);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(shmq_ack(q, t2, i2), SHMQ_OK);
}

static void test_wiped_table_is_rebuilt(void)
{
    char path[128];
    shmq_seg_t *q = gq("wipe", path);
    CHECK(q != NULL);
    for (uint32_t i = 0; i < 4; i++)
        CHECK_EQ(gsend(q, "g", i), SHMQ_OK);
    uint32_t v;
    uint64_t t, id;
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 0);
    shmq_group_t *g = shmq_ack_of(q)->grp;
    memset(g->tab, 0xA5, (size_t)g->slots * sizeof *g->tab); /* hostile: garbage everywhere */
    shmq_group_rebuild(q, g);
    uint32_t v2;
    uint64_t t2, id2;
    CHECK_EQ(grecv(q, &v2, &t2, &id2), SHMQ_EMPTY); /* 0 is still out: still the only one */
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    for (uint32_t want = 1; want < 4; want++) {
        CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
        CHECK_EQ(v, want);
        CHECK_EQ(grecv(q, &v2, &t2, &id2), SHMQ_EMPTY);
        CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    }
    uint64_t groups, rebuilds;
    shmq_group_counts(g, &groups, &rebuilds);
    CHECK_EQ(groups, 0);
    CHECK(rebuilds >= 1);
}

static void test_dead_lock_and_dirty_taken_over(void)
{
    char path[128];
    shmq_seg_t *q = gq("lock", path);
    CHECK(q != NULL);
    shmq_group_t *g = shmq_ack_of(q)->grp;
    CHECK_EQ(gsend(q, "g", 1), SHMQ_OK);
    CHECK_EQ(gsend(q, "g", 2), SHMQ_OK);
    g->hdr->lock = shmq_owner_make(300, 9); /* nobody alive has that id */
    g->hdr->dirty = 1;
    uint32_t v;
    uint64_t t, id;
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 1);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK); /* settles under the taken-over lock */
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 2);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(g->hdr->dirty, 0);
}

static void test_full_table(void)
{
    char path[128];
    shmq_seg_t *q = gq("full", path);
    CHECK(q != NULL);
    char key[32];
    int rc = SHMQ_OK;
    uint32_t n = 0;
    for (; n < SHMQ_GROUP_DEFAULT_SLOTS + 8 && rc == SHMQ_OK; n++) {
        snprintf(key, sizeof key, "k%u", n);
        rc = gsend(q, key, n);
    }
    CHECK_EQ(rc, SHMQ_FULL);
    CHECK_EQ(q->full_why, SHMQ_WHY_GROUPS);
    CHECK(n >= SHMQ_GROUP_DEFAULT_SLOTS - 2);
    CHECK_EQ(gsend(q, "k1", 0), SHMQ_OK); /* an existing group still takes messages */
}

static void test_bad_keys(void)
{
    char path[128];
    shmq_seg_t *q = gq("keys", path);
    CHECK(q != NULL);
    char big[SHMQ_GROUP_KEY_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK_EQ(gsend(q, big, 0), SHMQ_EINVAL);
    big[SHMQ_GROUP_KEY_MAX] = 0;
    CHECK_EQ(gsend(q, big, 0), SHMQ_OK);
}

static const th_role_t roles[] = {{NULL, NULL}};

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_order_and_one_out);
    RUN(test_wiped_table_is_rebuilt);
    RUN(test_dead_lock_and_dirty_taken_over);
    RUN(test_full_table);
    RUN(test_bad_keys);
    TH_SUMMARY();
}
