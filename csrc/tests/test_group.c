/* test_group.c - group.h through shmq_send with a group key: send order per group, one member
 * out at a time, other groups not held up; nack keeps the head; a wiped table is rebuilt from
 * the descriptors (order kept, the member that is out stays the only one); a dirty flag and a
 * lock stamped by a dead owner are taken over; a full table refuses with SHMQ_FULL; a process
 * killed at each group and forward crash point leaves no wedge, and a forward is both or neither. */
#define _GNU_SOURCE
#include "../forward.h"
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

static void test_garbage_block_of_a_parked_member(void)
{
    char path[128];
    shmq_seg_t *q = gq("blk", path);
    CHECK(q != NULL);
    CHECK_EQ(gsend(q, "z", 1), SHMQ_OK);
    CHECK_EQ(gsend(q, "z", 2), SHMQ_OK);
    int found = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            if (shmq_group_parked(d, d->word)) { /* hostile: its key length beyond the block */
                shmq_group_blk(a, d, SHMQ_ACK_META)->key_len = 255;
                found++;
            }
        }
    CHECK_EQ(found, 1);
    uint32_t v;
    uint64_t t, id;
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 1);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK); /* the chain's next is garbage: a rebuild ... */
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK); /* ... delivers it ungrouped, not parked forever */
    CHECK_EQ(v, 2);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(gsend(q, "z", 3), SHMQ_OK); /* the group goes on */
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 3);
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

static int child_open(shmq_seg_t *q, const char *path)
{
    if (shmq_open(q, path, -1) != SHMQ_OK || shmq_attach(q) != SHMQ_OK)
        return 2;
    shmq_ack_set_dlq(q, NULL, "src"); /* the name forward's dedup key is made of */
    return 0;
}

/* child: send value argv[2] with group argv[1] to the queue at argv[0] */
static int child_gsend(int argc, char **argv)
{
    shmq_seg_t q;
    if (argc < 3 || child_open(&q, argv[0]))
        return 2;
    return gsend(&q, argv[1], (uint32_t)atoi(argv[2])) == SHMQ_OK ? 0 : 3;
}

/* child: receive one message of the queue at argv[0] and ack it */
static int child_gack(int argc, char **argv)
{
    shmq_seg_t q;
    if (argc < 1 || child_open(&q, argv[0]))
        return 2;
    uint32_t v;
    uint64_t t, id;
    if (grecv(&q, &v, &t, &id) != SHMQ_OK)
        return 3;
    return shmq_ack(&q, t, id) == SHMQ_OK ? 0 : 4;
}

static int fwd_one(shmq_seg_t *src, shmq_seg_t *dst, uint64_t *nid, int *dup)
{
    uint32_t v;
    uint64_t t, id;
    int rc = grecv(src, &v, &t, &id);
    if (rc != SHMQ_OK)
        return rc;
    v += 1000;
    shmq_iov_t iov = {&v, sizeof v};
    shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0};
    return shmq_forward(src, t, id, dst, &iov, 1, 1, &o, th_after_ms(3000), nid, dup);
}

/* child: forward one message of the queue at argv[0] to the queue at argv[1] */
static int child_fwd(int argc, char **argv)
{
    shmq_seg_t src, dst;
    if (argc < 2 || child_open(&src, argv[0]) || child_open(&dst, argv[1]))
        return 2;
    uint64_t nid;
    int dup;
    return fwd_one(&src, &dst, &nid, &dup) == SHMQ_OK ? 0 : 3;
}

static const th_role_t roles[] = {{"gsend", child_gsend}, {"gack", child_gack}, {"fwd", child_fwd}, {NULL, NULL}};

static void test_kill_in_group_send_and_settle(void)
{
    char path[128];
    shmq_seg_t *q = gq("kill", path);
    CHECK(q != NULL);
    uint32_t v;
    uint64_t t, id;
    /* group_after_put: put PARKED, never linked: the repair appends it to its group */
    CHECK_EQ(gsend(q, "g", 1), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("group_after_put", "gsend", path, "g", "2", NULL), 20000)));
    shmq_repair_dead(q);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 1);
    uint32_t v2;
    uint64_t t2, id2;
    CHECK_EQ(grecv(q, &v2, &t2, &id2), SHMQ_EMPTY); /* 2 waits for 1 */
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK); /* then the dead sender's 2 */
    CHECK_EQ(v, 2);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    /* group_mid_link: linked as an idle group's head, killed holding the table lock */
    CHECK(th_killed(th_wait(th_spawn("group_mid_link", "gsend", path, "h", "5", NULL), 20000)));
    shmq_repair_dead(q);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 5);
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    /* group_mid_settle: an ack made the next member head, killed before releasing it */
    CHECK_EQ(gsend(q, "s", 7), SHMQ_OK);
    CHECK_EQ(gsend(q, "s", 8), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("group_mid_settle", "gack", path, NULL, NULL, NULL), 20000)));
    shmq_repair_dead(q);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_OK);
    CHECK_EQ(v, 8);                      /* 7 was acked (its ack had claimed it) */
    CHECK_EQ(shmq_ack(q, t, id), SHMQ_OK);
    CHECK_EQ(grecv(q, &v, &t, &id), SHMQ_EMPTY);
}

static void test_kill_in_forward(void)
{
    char sp[128], dp[128];
    shmq_seg_t *src = gq("fsrc", sp), *dst = gq("fdst", dp);
    CHECK(src != NULL && dst != NULL);
    shmq_ack_set_dlq(src, NULL, "src");
    const char *pts[] = {"forward_after_hold", "forward_after_send"};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(gsend(src, "f", 40 + (uint32_t)i), SHMQ_OK);
        CHECK(th_killed(th_wait(th_spawn(pts[i], "fwd", sp, dp, NULL, NULL), 20000)));
        shmq_repair_dead(src);
        CHECK_EQ(shmq_depth(dst), (uint64_t)i); /* after the hold: nothing sent; after the send: one */
        uint64_t nid;
        int dup;
        CHECK_EQ(fwd_one(src, dst, &nid, &dup), SHMQ_OK); /* the killed one's message, again */
        CHECK_EQ(dup, i);                  /* the repeated forward sends nothing new */
        CHECK_EQ(shmq_depth(dst), 1);
        uint32_t v;
        uint64_t t, id;
        CHECK_EQ(grecv(dst, &v, &t, &id), SHMQ_OK);
        CHECK_EQ(v, 1040 + (uint32_t)i);
        CHECK_EQ(id, nid);
        CHECK_EQ(shmq_ack(dst, t, id), SHMQ_OK);
        CHECK_EQ(grecv(src, &v, &t, &id), SHMQ_EMPTY);
    }
}

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_order_and_one_out);
    RUN(test_wiped_table_is_rebuilt);
    RUN(test_garbage_block_of_a_parked_member);
    RUN(test_dead_lock_and_dirty_taken_over);
    RUN(test_full_table);
    RUN(test_bad_keys);
    RUN(test_kill_in_group_send_and_settle);
    RUN(test_kill_in_forward);
    TH_SUMMARY();
}
