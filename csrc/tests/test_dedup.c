/* test_dedup.c - dedup.h through shmq_send with a dedup key: duplicates answered with the
 * original id and nothing enqueued; the window runs from the first send, acked or not; a live
 * sender's PENDING entry holds a second sender up to its deadline; a dead sender's PENDING
 * entry is resolved by looking for its id (the crash points mid_dedup, after_claim,
 * after_commit); a full table refuses with SHMQ_EDEDUPFULL and expired entries are reused. */
#define _GNU_SOURCE
#include <pthread.h>

#include "../dedup.h"
#include "../lease.h"
#include "tharness.h"

static void key_of(uint32_t seed, uint8_t key[16])
{
    shmq_hash128(&seed, sizeof seed, key); /* any 16 bytes do; distinct seeds, distinct keys */
}

static int send_key(shmq_seg_t *q, const char *body, uint32_t seed, uint64_t deadline_ns, uint64_t *id, int *dup)
{
    uint8_t key[16];
    key_of(seed, key);
    shmq_iov_t iov = {body, strlen(body)};
    shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .hdr = NULL, .hdr_size = 0, .priority = 0, .dedup_key = key};
    *dup = -1;
    return shmq_send(q, &iov, 1, 1, &o, deadline_ns, id, dup);
}

static int recv_ack(shmq_seg_t *q, uint64_t *id, char *body, size_t cap)
{
    shmq_msg_t m;
    int rc = shmq_receive_begin(q, &m, 0);
    if (rc != SHMQ_OK)
        return rc;
    size_t n = m.size < cap - 1 ? m.size : cap - 1;
    memcpy(body, m.data, n);
    body[n] = 0;
    *id = m.id;
    uint64_t token = m.handle;
    if ((rc = shmq_receive_end(q, &m)) != SHMQ_OK)
        return rc;
    return shmq_ack(q, token, *id);
}

static shmq_seg_t *dq(const char *tag, char *path, uint64_t window_ns, uint32_t slots)
{
    th_path(path, 128, tag);
    shmq_create_opts_t o = th_ack_opts(path, 1 << 20, 30000 * TH_MS, 5, NULL);
    o.dedup_window_ns = window_ns;
    o.dedup_slots = slots;
    return th_create(&o);
}

static uint64_t hits(shmq_seg_t *q)
{
    shmq_stats_t st;
    shmq_stats(q, &st);
    return st.dedup_hits;
}

static void test_duplicate_returns_the_original_id(void)
{
    char path[128];
    shmq_seg_t *q = dq("dup", path, 1000 * TH_MS, 0);
    CHECK(q != NULL);
    uint64_t id1, id2, id3;
    int dup;
    CHECK_EQ(send_key(q, "first", 1, 0, &id1, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK_EQ(send_key(q, "second", 1, 0, &id2, &dup), SHMQ_OK);
    CHECK_EQ(dup, 1);
    CHECK_EQ(id2, id1);
    CHECK_EQ(shmq_depth(q), 1); /* nothing enqueued */
    CHECK_EQ(hits(q), 1);
    CHECK_EQ(send_key(q, "other", 2, 0, &id3, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK(id3 > id1);
    CHECK_EQ(shmq_depth(q), 2);
    uint64_t id;
    char body[32];
    CHECK_EQ(recv_ack(q, &id, body, sizeof body), SHMQ_OK);
    CHECK_EQ(id, id1);
    CHECK(strcmp(body, "first") == 0); /* the duplicate's body went nowhere */
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.dedup_hits, 1);
    CHECK_EQ(st.enqueued, 2);
}

static void test_window_from_the_first_send_acked_or_not(void)
{
    char path[128];
    shmq_seg_t *q = dq("window", path, 300 * TH_MS, 0);
    CHECK(q != NULL);
    uint64_t id1, id, got;
    int dup;
    char body[32];
    CHECK_EQ(send_key(q, "a", 7, 0, &id1, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK_EQ(recv_ack(q, &got, body, sizeof body), SHMQ_OK);
    CHECK_EQ(got, id1);
    th_sleep_ms(100);
    CHECK_EQ(send_key(q, "a", 7, 0, &id, &dup), SHMQ_OK); /* acked, still inside the window */
    CHECK_EQ(dup, 1);
    CHECK_EQ(id, id1);
    CHECK_EQ(shmq_depth(q), 0);
    th_sleep_ms(250); /* 350 ms after the first send: the duplicate at 100 ms did not extend it */
    CHECK_EQ(send_key(q, "a", 7, 0, &id, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK(id > id1);
    CHECK_EQ(shmq_depth(q), 1);
    CHECK_EQ(hits(q), 1);
}

typedef struct {
    shmq_seg_t *q;
    uint32_t seed;
    int committed;
    unsigned after_ms;
} finisher_t;

static void *finish_later(void *arg)
{
    finisher_t *f = arg;
    uint8_t key[16];
    key_of(f->seed, key);
    th_sleep_ms(f->after_ms);
    shmq_dedup_finish(f->q, key, f->committed);
    return NULL;
}

static void test_live_pending_holds_a_second_sender(void)
{
    char path[128];
    shmq_seg_t *a = dq("pending", path, 5000 * TH_MS, 0);
    shmq_seg_t *b = a ? th_open(path) : NULL;
    CHECK(a && b);
    uint8_t key[16];
    uint64_t pid_, id;
    int dup;
    /* a's send is in progress (PENDING, its id reserved) */
    key_of(11, key);
    CHECK_EQ(shmq_dedup_begin(a, key, th_after_ms(1000), &pid_, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(send_key(b, "b", 11, t0 + 60 * TH_MS, &id, &dup), SHMQ_TIMEOUT); /* up to its deadline */
    CHECK(shmq_now_mono_ns() - t0 >= 59 * TH_MS);
    CHECK_EQ(shmq_depth(a), 0);
    /* a finishes (committed) while b waits: b gets a's id as a duplicate */
    finisher_t f = {a, 11, 1, 50};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, finish_later, &f), 0);
    t0 = shmq_now_mono_ns();
    int rc = send_key(b, "b", 11, t0 + 3000 * TH_MS, &id, &dup);
    uint64_t el = shmq_now_mono_ns() - t0;
    pthread_join(t, NULL);
    CHECK_EQ(rc, SHMQ_OK);
    CHECK_EQ(dup, 1);
    CHECK_EQ(id, pid_);
    CHECK(el >= 40 * TH_MS);
    CHECK_EQ(shmq_depth(a), 0);
    /* a's send failed (finish without commit): b's send goes ahead with an id of its own */
    uint64_t pid2;
    key_of(12, key);
    CHECK_EQ(shmq_dedup_begin(a, key, th_after_ms(1000), &pid2, &dup), SHMQ_OK);
    finisher_t f2 = {a, 12, 0, 50};
    CHECK_EQ(pthread_create(&t, NULL, finish_later, &f2), 0);
    rc = send_key(b, "b2", 12, th_after_ms(3000), &id, &dup);
    pthread_join(t, NULL);
    CHECK_EQ(rc, SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK(id != pid2);
    CHECK_EQ(shmq_depth(a), 1);
}

/* child: send body argv[2] with the key of seed argv[1] to the queue at argv[0] */
static int child_send(int argc, char **argv)
{
    if (argc < 3)
        return 9;
    shmq_seg_t q;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    uint64_t id;
    int dup;
    if (send_key(&q, argv[2], (uint32_t)atoi(argv[1]), th_after_ms(5000), &id, &dup) != SHMQ_OK || dup)
        return 3;
    shmq_close(&q);
    return 0;
}

static const th_role_t roles[] = {{"send", child_send}, {NULL, NULL}};

static void test_dead_pending_resolved_by_looking_for_the_id(void)
{
    char path[128];
    shmq_seg_t *q = dq("dead", path, 5000 * TH_MS, 0);
    CHECK(q != NULL);
    uint64_t id, got;
    int dup;
    char body[32];
    /* mid_dedup: PENDING written, the put never happened: the key is taken over */
    CHECK(th_killed(th_wait(th_spawn("mid_dedup", "send", path, "21", "lost", NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 0);
    CHECK_EQ(send_key(q, "retry", 21, th_after_ms(3000), &id, &dup), SHMQ_OK);
    CHECK_EQ(dup, 0);
    CHECK_EQ(shmq_depth(q), 1);
    CHECK_EQ(recv_ack(q, &got, body, sizeof body), SHMQ_OK);
    CHECK(strcmp(body, "retry") == 0);
    /* after_commit: the put was published, finish never ran: the retry is a duplicate */
    CHECK(th_killed(th_wait(th_spawn("after_commit", "send", path, "22", "made-it", NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 1);
    CHECK_EQ(send_key(q, "retry", 22, th_after_ms(3000), &id, &dup), SHMQ_OK);
    CHECK_EQ(dup, 1);
    CHECK_EQ(shmq_depth(q), 1);
    CHECK_EQ(recv_ack(q, &got, body, sizeof body), SHMQ_OK);
    CHECK_EQ(got, id);
    CHECK(strcmp(body, "made-it") == 0);
    /* before_dedup_finish: put returned, finish never ran, and the message is acked before
     * anyone resolves the entry: the ack settled it, so the retry is still a duplicate */
    CHECK(th_killed(th_wait(th_spawn("before_dedup_finish", "send", path, "24", "acked", NULL), 20000)));
    CHECK_EQ(shmq_depth(q), 1);
    uint64_t acked_id;
    CHECK_EQ(recv_ack(q, &acked_id, body, sizeof body), SHMQ_OK);
    CHECK(strcmp(body, "acked") == 0);
    shmq_repair_dead(q);
    CHECK_EQ(send_key(q, "retry", 24, th_after_ms(3000), &id, &dup), SHMQ_OK);
    CHECK_EQ(dup, 1);
    CHECK_EQ(id, acked_id);
    CHECK_EQ(shmq_depth(q), 0);
    /* after_claim: READY but not yet in the ring: present, so a duplicate; repair publishes it */
    CHECK(th_killed(th_wait(th_spawn("after_claim", "send", path, "23", "orphan", NULL), 20000)));
    CHECK_EQ(send_key(q, "retry", 23, th_after_ms(3000), &id, &dup), SHMQ_OK);
    CHECK_EQ(dup, 1);
    shmq_repair_dead(q);
    CHECK_EQ(recv_ack(q, &got, body, sizeof body), SHMQ_OK);
    CHECK_EQ(got, id);
    CHECK(strcmp(body, "orphan") == 0);
    CHECK_EQ(recv_ack(q, &got, body, sizeof body), SHMQ_EMPTY);
    CHECK_EQ(hits(q), 3);
}

static void test_full_table_then_expired_entries_reused(void)
{
    enum { SLOTS = 8 };
    char path[128];
    shmq_seg_t *q = dq("full", path, 400 * TH_MS, SLOTS);
    CHECK(q != NULL);
    uint64_t id, first_id = 0;
    int dup, n = 0, rc = SHMQ_OK;
    for (uint32_t s = 100; s < 100 + SLOTS + 1; s++) {
        rc = send_key(q, "k", s, 0, &id, &dup);
        if (rc != SHMQ_OK)
            break;
        CHECK_EQ(dup, 0);
        if (!first_id)
            first_id = id;
        n++;
    }
    CHECK_EQ(rc, SHMQ_EDEDUPFULL); /* only live keys: refused, not overwritten */
    CHECK(n >= SLOTS / 2 && n <= SLOTS);
    CHECK_EQ(shmq_depth(q), (uint64_t)n); /* the refused send enqueued nothing */
    CHECK_EQ(send_key(q, "k", 100, 0, &id, &dup), SHMQ_OK); /* a known key is still answered */
    CHECK_EQ(dup, 1);
    CHECK_EQ(id, first_id);
    th_sleep_ms(450); /* every key expired: their entries are reused */
    for (int i = 0; i < n; i++) {
        CHECK_EQ(send_key(q, "k2", 500 + (uint32_t)i, 0, &id, &dup), SHMQ_OK);
        CHECK_EQ(dup, 0);
    }
    CHECK_EQ(send_key(q, "k", 100, 0, &id, &dup), SHMQ_EDEDUPFULL); /* full again, with new keys */
    CHECK_EQ(shmq_depth(q), 2 * (uint64_t)n);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.dedup_slots, SLOTS);
    CHECK_EQ(st.dedup_hits, 1);
}

static void test_garbage_in_the_table(void)
{
    /* untrusted: entries with impossible states, and a PENDING entry stamped by an owner that
     * names no slot, are reusable garbage, never a crash or a wedge */
    char path[128];
    shmq_seg_t *q = dq("garbage", path, 5000 * TH_MS, 64);
    CHECK(q != NULL);
    uint32_t n = 0;
    shmq_dedup_ent_t *t = th_dedup_table(q, &n);
    CHECK(t != NULL && n == 64);
    uint8_t key[16];
    key_of(41, key);
    for (uint32_t i = 0; i < n; i++) {
        memset(&t[i], 0xa5, sizeof t[i]);
        t[i].state = 7 + i;
    }
    /* key 41 as a PENDING entry of a nonexistent sender, for an id that is in no descriptor */
    for (uint32_t i = 0; i < n; i++) {
        memcpy(&t[i].k0, key, 8);
        memcpy(&t[i].k1, key + 8, 8);
        t[i].id = 987654321;
        t[i].owner = 0x7fffffffu;
        t[i].state = SHMQ_DEDUP_PENDING;
        t[i].expires_ns = UINT64_MAX;
        if (i % 5 == 4)
            t[i].state = 99; /* some garbage between */
    }
    uint64_t id, id2;
    int dup;
    CHECK_EQ(send_key(q, "x", 41, th_after_ms(3000), &id, &dup), SHMQ_OK); /* the dead PENDING is taken over */
    CHECK_EQ(dup, 0);
    CHECK(id != 987654321);
    CHECK_EQ(send_key(q, "x", 41, 0, &id2, &dup), SHMQ_OK);
    CHECK_EQ(dup, 1);
    CHECK_EQ(id2, id);
    for (uint32_t s = 42; s < 52; s++) { /* new keys go into reusable garbage */
        CHECK_EQ(send_key(q, "y", s, 0, &id, &dup), SHMQ_OK);
        CHECK_EQ(dup, 0);
    }
    CHECK_EQ(shmq_depth(q), 11);
}

static void test_no_table_on_a_plain_queue(void)
{
    char path[128];
    th_path(path, sizeof path, "plain");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    uint8_t key[16];
    key_of(1, key);
    uint64_t id;
    int dup;
    CHECK_EQ(shmq_dedup_begin(q, key, 0, &id, &dup), SHMQ_EINVAL);
    shmq_dedup_finish(q, key, 1); /* no table: nothing to do, no crash */
    /* shmq_hash128: deterministic, and any input bit changes the key */
    uint8_t a[16], b[16];
    shmq_hash128("abc", 3, a);
    shmq_hash128("abc", 3, b);
    CHECK(memcmp(a, b, 16) == 0);
    shmq_hash128("abd", 3, b);
    CHECK(memcmp(a, b, 16) != 0);
    shmq_hash128("abc", 2, b);
    CHECK(memcmp(a, b, 16) != 0);
}

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_duplicate_returns_the_original_id);
    RUN(test_window_from_the_first_send_acked_or_not);
    RUN(test_live_pending_holds_a_second_sender);
    RUN(test_dead_pending_resolved_by_looking_for_the_id);
    RUN(test_full_table_then_expired_entries_reused);
    RUN(test_garbage_in_the_table);
    RUN(test_no_table_on_a_plain_queue);
    TH_SUMMARY();
}
