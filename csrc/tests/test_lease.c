/* test_lease.c - lease.h: the at-least-once state machine through the public API.
 *
 * send -> receive (lease) -> ack | nack (requeue, delay, reject) | extend | lease expiry;
 * redelivery with delivery_count + 1; stale tokens (SHMQ_ESTALE, nothing changes); lazy
 * expiry; max_deliveries, TTLs and rejections to the dead-letter queue with its x-dead-letter
 * headers, or dropped and counted without one; a full dead-letter queue; forged tokens; a
 * consumer killed holding leases or at a crash point, repaired by shmq_repair_dead.
 * The stats counters are checked exactly after every step. */
#define _GNU_SOURCE
#include "../hist.h"
#include "../lease.h"
#include "../participants.h"
#include "tharness.h"

#define VIS_SHORT (30 * TH_MS)
#define VIS_LONG (30000 * TH_MS)

/* ---------------------------------------------------------------- helpers */

static int send_msg(shmq_seg_t *q, const char *body, uint64_t delay_ns, uint64_t ttl_ns, const void *hdr, uint32_t hdr_size,
                    uint64_t *id)
{
    shmq_iov_t iov = {body, strlen(body)};
    shmq_send_opts_t o = {.delay_ns = delay_ns, .ttl_ns = ttl_ns, .hdr = hdr, .hdr_size = hdr_size, .priority = 0, .dedup_key = NULL};
    int dup = -1;
    uint64_t tmp;
    int rc = shmq_send(q, &iov, 1, 1, &o, 0, id ? id : &tmp, &dup);
    if (rc == SHMQ_OK && dup != 0)
        return -1000; /* no dedup key: never a duplicate */
    return rc;
}

typedef struct {
    uint64_t token, id;
    uint32_t dc;
    uint32_t len;
    char body[512];
    uint32_t hdr_size;
    uint8_t hdr[2048];
} got_t;

/* receive one message and copy it out; SHMQ_OK, or the error of begin / end */
static int recv_msg(shmq_seg_t *q, got_t *g, uint64_t deadline_ns)
{
    shmq_msg_t m;
    int rc = shmq_receive_begin(q, &m, deadline_ns);
    if (rc != SHMQ_OK)
        return rc;
    memset(g, 0, sizeof *g);
    g->token = m.handle;
    g->id = m.id;
    g->dc = m.delivery_count;
    g->len = (uint32_t)(m.size < sizeof g->body - 1 ? m.size : sizeof g->body - 1);
    memcpy(g->body, m.data, g->len);
    g->hdr_size = m.hdr_size < sizeof g->hdr ? m.hdr_size : (uint32_t)sizeof g->hdr;
    memcpy(g->hdr, m.hdr, g->hdr_size);
    return shmq_receive_end(q, &m);
}

/* Append one str entry to a header block (lease.h's encoding). */
static uint32_t hdr_add(uint8_t *buf, uint32_t at, const char *key, const char *val)
{
    uint16_t kl = (uint16_t)strlen(key);
    uint32_t vl = (uint32_t)strlen(val);
    memcpy(buf + at, &kl, 2);
    buf[at + 2] = 0;
    buf[at + 3] = 0;
    memcpy(buf + at + 4, &vl, 4);
    memcpy(buf + at + 8, key, kl);
    memcpy(buf + at + 8 + kl, val, vl);
    return at + 8 + kl + vl;
}

/* The value of key in a header block as a C string in out; 0 if absent or malformed. */
static int hdr_get(const uint8_t *h, uint32_t size, const char *key, char *out, size_t cap)
{
    uint32_t at = 0;
    while (at + 8 <= size) {
        uint16_t kl;
        uint32_t vl;
        memcpy(&kl, h + at, 2);
        memcpy(&vl, h + at + 4, 4);
        if ((uint64_t)at + 8 + kl + vl > size)
            return 0;
        if (kl == strlen(key) && memcmp(h + at + 8, key, kl) == 0) {
            if (vl >= cap)
                return 0;
            memcpy(out, h + at + 8 + kl, vl);
            out[vl] = 0;
            return 1;
        }
        at += 8 + kl + vl;
    }
    return 0;
}

#define CHECK_HDR(g, key, want)                                                   \
    do {                                                                          \
        char _v[256];                                                             \
        if (!hdr_get((g)->hdr, (g)->hdr_size, key, _v, sizeof _v)) {               \
            fprintf(stderr, "%s:%d: header %s missing\n", __FILE__, __LINE__, key); \
            th_failed++;                                                          \
            return;                                                               \
        }                                                                         \
        if (strcmp(_v, want) != 0) {                                              \
            fprintf(stderr, "%s:%d: header %s == '%s', want '%s'\n", __FILE__, __LINE__, key, _v, want); \
            th_failed++;                                                          \
            return;                                                               \
        }                                                                         \
    } while (0)

/* Every at-least-once counter, exactly. */
#define CHECK_ACK(q, depth_, in_flight_, delayed_, acked_, redelivered_, dead_lettered_, expired_) \
    do {                                                                                         \
        shmq_stats_t _s;                                                                         \
        shmq_stats((q), &_s);                                                                    \
        CHECK_EQ(_s.depth, (depth_));                                                            \
        CHECK_EQ(_s.in_flight, (in_flight_));                                                    \
        CHECK_EQ(_s.delayed, (delayed_));                                                        \
        CHECK_EQ(_s.acked, (acked_));                                                            \
        CHECK_EQ(_s.redelivered, (redelivered_));                                                \
        CHECK_EQ(_s.dead_lettered, (dead_lettered_));                                            \
        CHECK_EQ(_s.expired, (expired_));                                                        \
    } while (0)
#define CHECK_DLF(q, n)                 \
    do {                                \
        shmq_stats_t _s;                \
        shmq_stats((q), &_s);           \
        CHECK_EQ(_s.dead_letter_failed, (n)); \
    } while (0)

static const char *base_name(const char *path) { return strrchr(path, '/') + 1 + strlen("shmq."); }

/* An at-least-once queue; with dlq_out, also its dead-letter queue, attached. */
static shmq_seg_t *ack_queue(const char *tag, uint64_t vis, uint32_t max_deliveries, shmq_seg_t **dlq_out, char *path,
                             char *dlq_path)
{
    th_path(path, 128, tag);
    if (!dlq_out) {
        shmq_create_opts_t o = th_ack_opts(path, 1 << 20, vis, max_deliveries, NULL);
        return th_create(&o);
    }
    char t2[64];
    snprintf(t2, sizeof t2, "%s.dlq", tag);
    th_path(dlq_path, 128, t2);
    shmq_create_opts_t od = th_ack_opts(dlq_path, 1 << 20, VIS_LONG, max_deliveries, NULL); /* no expiry surprises */
    shmq_seg_t *d = th_create(&od);
    shmq_create_opts_t o = th_ack_opts(path, 1 << 20, vis, max_deliveries, base_name(dlq_path));
    shmq_seg_t *q = d ? th_create(&o) : NULL;
    if (!q)
        return NULL;
    shmq_ack_set_dlq(q, d, base_name(path));
    *dlq_out = d;
    return q;
}

/* ---------------------------------------------------------------- ack */

static void test_ack_then_second_ack_is_stale(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("ack", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint8_t hdr[128];
    uint32_t hs = hdr_add(hdr, 0, "trace", "abc");
    uint64_t id = 0;
    CHECK_EQ(send_msg(q, "hello", 0, 0, hdr, hs, &id), SHMQ_OK);
    CHECK(id > 0);
    CHECK_ACK(q, 1, 0, 0, 0, 0, 0, 0);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.id, id);
    CHECK_EQ(g.dc, 1);
    CHECK_EQ(g.len, 5);
    CHECK(memcmp(g.body, "hello", 5) == 0);
    CHECK_EQ(g.hdr_size, hs);
    CHECK(memcmp(g.hdr, hdr, hs) == 0);
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 0);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 0, 0, 0);
    /* lease.h: ack/nack/extend succeed iff the descriptor still carries this delivery's stamp;
     * after the ack it does not: a second ack is SHMQ_ESTALE and changes nothing */
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_ESTALE);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_ESTALE);
    CHECK_EQ(shmq_extend(q, g.token, g.id, VIS_LONG), SHMQ_ESTALE);
    CHECK_ACK(q, 0, 0, 0, 1, 0, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    /* the freed descriptor is reused by the next send: the old token still names nothing */
    CHECK_EQ(send_msg(q, "next", 0, 0, NULL, 0, &id), SHMQ_OK);
    uint64_t old = g.token;
    CHECK_EQ(shmq_ack(q, old, id), SHMQ_ESTALE);
    CHECK_ACK(q, 1, 0, 0, 1, 0, 0, 0);
}

static void test_wrong_kind_and_bad_args(void)
{
    char path[128], ppath[128];
    shmq_seg_t *q = ack_queue("args", VIS_LONG, 5, NULL, path, NULL);
    th_path(ppath, sizeof ppath, "plain");
    shmq_create_opts_t po = th_opts(ppath, 256 << 10, 0, 0);
    shmq_seg_t *p = th_create(&po);
    CHECK(q && p);
    got_t g;
    CHECK_EQ(recv_msg(p, &g, 0), SHMQ_EINVAL); /* receive on a queue without SHMQ_F_ACK */
    CHECK_EQ(send_msg(p, "x", 0, 0, NULL, 0, NULL), SHMQ_EINVAL);
    static uint8_t big[SHMQ_HDR_MAX + 2];
    CHECK_EQ(send_msg(q, "x", 0, 0, big, SHMQ_HDR_MAX + 1, NULL), SHMQ_EINVAL); /* header block too large */
    static char huge[2 << 20];
    memset(huge, 'h', sizeof huge - 1);
    CHECK_EQ(send_msg(q, huge, 0, 0, NULL, 0, NULL), SHMQ_ETOOBIG);
    CHECK_ACK(q, 0, 0, 0, 0, 0, 0, 0);
    CHECK_EQ(shmq_timers_run(p), 0); /* no timers on a plain queue */
}

/* ---------------------------------------------------------------- nack */

static void test_nack_requeue_redelivers(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("nack", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id;
    CHECK_EQ(send_msg(q, "body", 0, 0, NULL, 0, &id), SHMQ_OK);
    got_t g1, g2;
    CHECK_EQ(recv_msg(q, &g1, 0), SHMQ_OK);
    CHECK_EQ(g1.dc, 1);
    CHECK_EQ(shmq_nack(q, g1.token, g1.id, 1, 0), SHMQ_OK);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0);
    CHECK_EQ(recv_msg(q, &g2, 0), SHMQ_OK);
    CHECK_EQ(g2.id, id);
    CHECK_EQ(g2.dc, 2);
    CHECK(g2.token != g1.token);
    CHECK_EQ(g2.len, 4);
    CHECK(memcmp(g2.body, "body", 4) == 0);
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0);
    CHECK_EQ(shmq_ack(q, g1.token, g1.id), SHMQ_ESTALE); /* the first delivery's token */
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0);
    CHECK_EQ(shmq_ack(q, g2.token, g2.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 1, 0, 0);
}

static void test_nack_with_delay(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("nackd", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id;
    CHECK_EQ(send_msg(q, "later", 0, 0, NULL, 0, &id), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 60 * TH_MS), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 1, 0, 1, 0, 0); /* DELAYED */
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    CHECK_EQ(shmq_timers_run(q), 0); /* not due yet */
    CHECK_ACK(q, 0, 0, 1, 0, 1, 0, 0);
    th_sleep_ms(80);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0); /* ready again */
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.id, id);
    CHECK_EQ(g.dc, 2);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 1, 0, 0);
}

static void test_send_with_delay_wakes_a_sleeping_receiver(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("sendd", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "d", 50 * TH_MS, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 1, 0, 0, 0, 0);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(recv_msg(q, &g, t0 + 3000 * TH_MS), SHMQ_OK); /* sleeps, wakes for the timer */
    uint64_t el = shmq_now_mono_ns() - t0;
    CHECK(el >= 40 * TH_MS && el < 2000 * TH_MS);
    CHECK_EQ(g.dc, 1);
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 0);
}

/* ---------------------------------------------------------------- lease expiry and extend */

static void test_expired_lease_not_redelivered_can_be_acked(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("lazy", VIS_SHORT, 5, NULL, path, NULL);
    CHECK(q != NULL);
    got_t g;
    /* (a) expired, nobody looked: still INFLIGHT with our stamp */
    CHECK_EQ(send_msg(q, "a", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    th_sleep_ms(45);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 0, 0, 0);
    /* (b) expired and put back by the timer scan, not delivered again: still ackable */
    CHECK_EQ(send_msg(q, "b", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    th_sleep_ms(45);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 1, 1, 0, 0);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 2, 1, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY); /* its ring cell went stale: nothing delivered twice */
    /* (c) nack(requeue) of such a delivery: it is already back, so nothing more is counted */
    CHECK_EQ(send_msg(q, "c", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    th_sleep_ms(45);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 2, 2, 0, 0);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK);
    CHECK_ACK(q, 1, 0, 0, 2, 2, 0, 0);
    got_t g2;
    CHECK_EQ(recv_msg(q, &g2, 0), SHMQ_OK);
    CHECK_EQ(g2.id, g.id);
    CHECK_EQ(g2.dc, 2);
    CHECK_EQ(shmq_ack(q, g2.token, g2.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 3, 2, 0, 0);
}

static void test_expired_and_redelivered_old_token_is_stale(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("stale", VIS_SHORT, 5, NULL, path, NULL);
    shmq_seg_t *other = q ? th_open(path) : NULL;
    CHECK(q && other);
    uint64_t id;
    CHECK_EQ(send_msg(q, "m", 0, 0, NULL, 0, &id), SHMQ_OK);
    got_t g1, g2;
    CHECK_EQ(recv_msg(q, &g1, 0), SHMQ_OK);
    th_sleep_ms(45);
    CHECK_EQ(recv_msg(other, &g2, 0), SHMQ_OK); /* the receive's scan puts it back and takes it again */
    CHECK_EQ(g2.id, id);
    CHECK_EQ(g2.dc, 2);
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0);
    CHECK_EQ(shmq_ack(q, g1.token, g1.id), SHMQ_ESTALE);
    CHECK_EQ(shmq_nack(q, g1.token, g1.id, 1, 0), SHMQ_ESTALE);
    CHECK_EQ(shmq_nack(q, g1.token, g1.id, 0, 0), SHMQ_ESTALE);
    CHECK_EQ(shmq_extend(q, g1.token, g1.id, VIS_LONG), SHMQ_ESTALE);
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0); /* changed nothing */
    CHECK_EQ(shmq_ack(other, g2.token, g2.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 1, 0, 0);
}

static void test_receive_end_reports_a_lease_lost_during_the_copy(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("rend", VIS_SHORT, 5, NULL, path, NULL);
    shmq_seg_t *other = q ? th_open(path) : NULL;
    CHECK(q && other);
    CHECK_EQ(send_msg(q, "copy", 0, 0, NULL, 0, NULL), SHMQ_OK);
    shmq_msg_t m;
    CHECK_EQ(shmq_receive_begin(q, &m, 0), SHMQ_OK);
    uint64_t token = m.handle, id = m.id;
    th_sleep_ms(45); /* a copy slower than the lease */
    got_t g;
    CHECK_EQ(recv_msg(other, &g, 0), SHMQ_OK);
    CHECK_EQ(g.dc, 2);
    CHECK_EQ(shmq_receive_end(q, &m), SHMQ_ESTALE); /* discard that copy */
    CHECK_EQ(shmq_ack(q, token, id), SHMQ_ESTALE);
    CHECK_EQ(shmq_ack(other, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 1, 0, 0);
}

static void test_extend_moves_the_deadline(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("extend", VIS_SHORT, 5, NULL, path, NULL);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "e", 0, 0, NULL, 0, NULL), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_extend(q, g.token, g.id, 2000 * TH_MS), SHMQ_OK); /* later */
    th_sleep_ms(60);                                                  /* past the original lease */
    shmq_timers_run(q);
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 0);
    got_t x;
    CHECK_EQ(recv_msg(q, &x, 0), SHMQ_EMPTY);
    CHECK_EQ(shmq_extend(q, g.token, g.id, 1 * TH_MS), SHMQ_OK); /* earlier: now + 1 ms */
    th_sleep_ms(10);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0); /* expired and put back */
    /* extend of an expired lease not yet delivered again takes it back */
    CHECK_EQ(shmq_extend(q, g.token, g.id, 2000 * TH_MS), SHMQ_OK);
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0);
    CHECK_EQ(recv_msg(q, &x, 0), SHMQ_EMPTY);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 1, 1, 0, 0);
}

/* ---------------------------------------------------------------- dead letters */

static void test_max_deliveries_to_dead_letter_queue(void)
{
    char path[128], dpath[128];
    shmq_seg_t *dlq = NULL;
    shmq_seg_t *q = ack_queue("maxd", VIS_LONG, 2, &dlq, path, dpath);
    CHECK(q && dlq);
    uint8_t hdr[128];
    uint32_t hs = hdr_add(hdr, 0, "k", "v");
    uint64_t id;
    CHECK_EQ(send_msg(q, "poison", 0, 0, hdr, hs, &id), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.dc, 2);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK); /* a third delivery would exceed 2 */
    CHECK_ACK(q, 0, 0, 0, 0, 1, 1, 0);
    CHECK_ACK(dlq, 1, 0, 0, 0, 0, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    got_t d;
    CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
    CHECK_EQ(d.len, 6);
    CHECK(memcmp(d.body, "poison", 6) == 0);
    CHECK_EQ(d.dc, 1);
    CHECK(d.hdr_size > hs);
    CHECK(memcmp(d.hdr, hdr, hs) == 0); /* the original headers first */
    char idstr[32];
    snprintf(idstr, sizeof idstr, "%llu", (unsigned long long)id);
    CHECK_HDR(&d, "k", "v");
    CHECK_HDR(&d, "x-dead-letter-source", base_name(path));
    CHECK_HDR(&d, "x-dead-letter-reason", "max_deliveries");
    CHECK_HDR(&d, "x-delivery-count", "2");
    CHECK_HDR(&d, "x-original-id", idstr);
    char v[64];
    CHECK(hdr_get(d.hdr, d.hdr_size, "x-first-delivery", v, sizeof v) && atof(v) > 1e9);
    CHECK(hdr_get(d.hdr, d.hdr_size, "x-last-delivery", v, sizeof v) && atof(v) > 1e9);
    CHECK(hdr_get(d.hdr, d.hdr_size, "x-original-timestamp", v, sizeof v) && atof(v) > 1e9);
    CHECK_EQ(shmq_ack(dlq, d.token, d.id), SHMQ_OK);
}

static void test_lease_expiry_past_max_deliveries_and_reject(void)
{
    char path[128], dpath[128];
    shmq_seg_t *dlq = NULL;
    shmq_seg_t *q = ack_queue("maxexp", VIS_SHORT, 1, &dlq, path, dpath);
    CHECK(q && dlq);
    got_t g, d;
    /* a lease expiry is a failed delivery too: with max_deliveries 1 it dead-letters */
    CHECK_EQ(send_msg(q, "slow", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    th_sleep_ms(45);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 0, 0, 0, 0, 0, 1, 0);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_ESTALE); /* moved away: the old lease is gone */
    CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
    CHECK_HDR(&d, "x-dead-letter-reason", "max_deliveries");
    CHECK_HDR(&d, "x-delivery-count", "1");
    /* nack(requeue = 0): rejected */
    CHECK_EQ(send_msg(q, "bad", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 0, 0), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 0, 0, 2, 0);
    CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
    CHECK_HDR(&d, "x-dead-letter-reason", "rejected");
    CHECK_EQ(d.len, 3);
    CHECK_ACK(dlq, 0, 2, 0, 0, 0, 0, 0);
}

static void test_without_dead_letter_queue(void)
{
    /* A queue without a dead-letter queue (a DLQ itself): max_deliveries does not apply, a
     * rejection is dropped and counted in dead_lettered */
    char path[128];
    shmq_seg_t *q = ack_queue("nodlq", VIS_LONG, 1, NULL, path, NULL);
    CHECK(q != NULL);
    got_t g;
    CHECK_EQ(send_msg(q, "r", 0, 0, NULL, 0, NULL), SHMQ_OK);
    for (uint32_t k = 1; k <= 3; k++) {
        CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
        CHECK_EQ(g.dc, k);
        CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK);
    }
    CHECK_ACK(q, 1, 0, 0, 0, 3, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 0, 0), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 0, 0, 3, 1, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
}

static void test_full_dead_letter_queue_keeps_the_message(void)
{
    char path[128], dpath[128];
    th_path(dpath, sizeof dpath, "fulldlq.dlq");
    th_path(path, sizeof path, "fulldlq");
    shmq_create_opts_t od = th_ack_opts(dpath, 256 << 10, VIS_LONG, 5, NULL);
    od.maxsize = 1;
    shmq_seg_t *dlq = th_create(&od);
    shmq_create_opts_t o = th_ack_opts(path, 256 << 10, VIS_LONG, 1, base_name(dpath));
    shmq_seg_t *q = dlq ? th_create(&o) : NULL;
    CHECK(q && dlq);
    shmq_ack_set_dlq(q, dlq, base_name(path));
    CHECK_EQ(send_msg(dlq, "occupant", 0, 0, NULL, 0, NULL), SHMQ_OK); /* the DLQ is full */
    uint64_t id;
    CHECK_EQ(send_msg(q, "poison", 0, 0, NULL, 0, &id), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 0, 0), SHMQ_OK);
    CHECK_ACK(q, 0, 0, 1, 0, 0, 0, 0); /* still here, held for a retry */
    CHECK_DLF(q, 1);
    CHECK_ACK(dlq, 1, 0, 0, 0, 0, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY); /* not delivered again meanwhile */
    /* room in the DLQ: the retry (one second later) moves it */
    got_t d;
    CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
    CHECK_EQ(shmq_ack(dlq, d.token, d.id), SHMQ_OK);
    shmq_timers_run(q);
    CHECK_ACK(q, 0, 0, 1, 0, 0, 0, 0); /* not before the retry time */
    th_sleep_ms(1100);
    CHECK(shmq_timers_run(q) >= 1);
    CHECK_ACK(q, 0, 0, 0, 0, 0, 1, 0);
    CHECK_DLF(q, 1);
    CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
    char idstr[32];
    snprintf(idstr, sizeof idstr, "%llu", (unsigned long long)id);
    CHECK_HDR(&d, "x-original-id", idstr);
    CHECK_HDR(&d, "x-dead-letter-reason", "rejected");
}

static void test_no_dead_letter_handle_attached(void)
{
    /* a queue that names a DLQ but whose handle has none attached keeps the message, counted */
    char path[128];
    th_path(path, sizeof path, "noattach");
    shmq_create_opts_t o = th_ack_opts(path, 256 << 10, VIS_LONG, 1, "somewhere.dlq");
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "p", 0, 0, NULL, 0, NULL), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK); /* past max_deliveries */
    CHECK_ACK(q, 0, 0, 1, 0, 0, 0, 0);
    CHECK_DLF(q, 1);
}

/* ---------------------------------------------------------------- TTL */

static void test_ttl_to_dead_letter_queue(void)
{
    char path[128], dpath[128];
    shmq_seg_t *dlq = NULL;
    shmq_seg_t *q = ack_queue("ttl", VIS_LONG, 5, &dlq, path, dpath);
    CHECK(q && dlq);
    CHECK_EQ(send_msg(q, "ready", 0, 20 * TH_MS, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(send_msg(q, "delayed", 500 * TH_MS, 20 * TH_MS, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(send_msg(q, "lives", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_ACK(q, 2, 0, 1, 0, 0, 0, 0);
    th_sleep_ms(40);
    CHECK(shmq_timers_run(q) >= 2);
    CHECK_ACK(q, 1, 0, 0, 0, 0, 2, 2);
    CHECK_ACK(dlq, 2, 0, 0, 0, 0, 0, 0);
    got_t d;
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
        CHECK_HDR(&d, "x-dead-letter-reason", "expired");
        CHECK_HDR(&d, "x-delivery-count", "0"); /* never delivered */
        CHECK((d.len == 5 && memcmp(d.body, "ready", 5) == 0) || (d.len == 7 && memcmp(d.body, "delayed", 7) == 0));
    }
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.len, 5);
    CHECK(memcmp(g.body, "lives", 5) == 0);
}

static void test_ttl_without_dead_letter_queue_dropped_and_counted(void)
{
    char path[128];
    th_path(path, sizeof path, "ttldrop");
    shmq_create_opts_t o = th_ack_opts(path, 256 << 10, VIS_LONG, 5, NULL);
    o.default_ttl_ns = 20 * TH_MS;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "a", 0, SHMQ_USE_DEFAULT, NULL, 0, NULL), SHMQ_OK); /* the queue's default TTL */
    CHECK_EQ(send_msg(q, "b", 300 * TH_MS, 20 * TH_MS, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(send_msg(q, "c", 0, 0, NULL, 0, NULL), SHMQ_OK); /* 0 = no TTL */
    CHECK_ACK(q, 2, 0, 1, 0, 0, 0, 0);
    th_sleep_ms(40);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK); /* the expired ones are not delivered */
    CHECK_EQ(g.len, 1);
    CHECK_EQ(g.body[0], 'c');
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 2);
    /* a TTL does not end a lease: an in-flight message past its TTL can still be acked */
    CHECK_EQ(send_msg(q, "d", 0, 30 * TH_MS, NULL, 0, NULL), SHMQ_OK);
    got_t h;
    CHECK_EQ(recv_msg(q, &h, 0), SHMQ_OK);
    th_sleep_ms(40);
    shmq_timers_run(q);
    CHECK_EQ(shmq_ack(q, h.token, h.id), SHMQ_OK);
    CHECK_ACK(q, 0, 1, 0, 1, 0, 0, 2);
}

static void test_growable_queue_leases_in_later_areas(void)
{
    /* tokens name their area: deliveries from areas appended by growth settle like area 0's */
    char path[128];
    th_path(path, sizeof path, "grow");
    shmq_create_opts_t o = th_ack_opts(path, 64 << 10, VIS_LONG, 5, NULL);
    o.flags |= SHMQ_F_GROWABLE;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    enum { N = 3000 };
    for (int i = 0; i < N; i++)
        CHECK_EQ(send_msg(q, (i % 10) ? "small" : "a somewhat longer body that goes to the arena, not inline in the descriptor", 0,
                          0, NULL, 0, NULL),
                 SHMQ_OK);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK(st.areas > 1);
    CHECK_ACK(q, N, 0, 0, 0, 0, 0, 0);
    uint64_t last_area_token = 0;
    for (int i = 0; i < N; i++) {
        got_t g;
        CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
        if (shmq_handle_area(g.token) > 0)
            last_area_token = g.token;
        if (i % 3 == 0)
            CHECK_EQ(shmq_nack(q, g.token, g.id, 1, 0), SHMQ_OK);
        else
            CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    }
    CHECK(last_area_token != 0);
    CHECK_EQ(shmq_ack(q, last_area_token ^ 0xffffff00000000ull, 1), SHMQ_ESTALE); /* beyond that area's descriptors */
    CHECK_ACK(q, N / 3, 0, 0, N - N / 3, N / 3, 0, 0);
    for (int i = 0; i < N / 3; i++) {
        got_t g;
        CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
        CHECK_EQ(g.dc, 2);
        CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    }
    CHECK_ACK(q, 0, 0, 0, N, N / 3, 0, 0);
}

/* ---------------------------------------------------------------- forged tokens */

static void test_forged_tokens_are_refused(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("forged", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "one", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(send_msg(q, "two", 0, 0, NULL, 0, NULL), SHMQ_OK);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    uint64_t t = g.token;
    uint64_t forged[] = {0,
                         ~0ull,
                         t ^ 1,                           /* another generation */
                         t + 1,                           /* a later generation */
                         t + (1ull << 32),                /* the neighbouring descriptor */
                         shmq_handle_make(1, 0, 1),       /* an area that does not exist */
                         shmq_handle_make(63, 0, 1),      /* the last area slot */
                         shmq_handle_make(255, 7, 3),     /* beyond the area table */
                         shmq_handle_make(0, 0xffffff, shmq_handle_dgen(t)), /* beyond the descriptors */
                         t & ~0xffffffffull};             /* generation 0 */
    for (unsigned i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        CHECK_EQ(shmq_ack(q, forged[i], g.id), SHMQ_ESTALE);
        CHECK_EQ(shmq_nack(q, forged[i], g.id, 1, 0), SHMQ_ESTALE);
        CHECK_EQ(shmq_nack(q, forged[i], g.id, 0, 0), SHMQ_ESTALE);
        CHECK_EQ(shmq_extend(q, forged[i], g.id, 1), SHMQ_ESTALE);
    }
    /* the right token with a wrong id */
    CHECK_EQ(shmq_ack(q, t, g.id + 1), SHMQ_ESTALE);
    CHECK_EQ(shmq_ack(q, t, 0), SHMQ_ESTALE);
    CHECK_EQ(shmq_nack(q, t, ~0ull, 0, 0), SHMQ_ESTALE);
    /* garbage */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t tok = (i & 1) ? x : shmq_handle_make(0, (uint32_t)(x >> 40) & 0xff, (uint32_t)x & 0xff);
        CHECK(shmq_ack(q, tok, x * 31) != SHMQ_OK);
        CHECK(shmq_extend(q, tok, x * 31, 1) != SHMQ_OK);
    }
    CHECK_ACK(q, 1, 1, 0, 0, 0, 0, 0); /* nothing changed */
    CHECK_EQ(shmq_ack(q, t, g.id), SHMQ_OK);
    CHECK_ACK(q, 1, 0, 0, 1, 0, 0, 0);
}

/* ---------------------------------------------------------------- hostile shared memory */

static void test_garbage_descriptors_are_skipped_not_delivered(void)
{
    /* untrusted: a descriptor whose sizes or state were overwritten is skipped and counted,
     * never read outside its payload, and never forwarded to the dead-letter queue */
    char path[128], dpath[128];
    shmq_seg_t *dlq = NULL;
    shmq_seg_t *q = ack_queue("garbage", VIS_LONG, 5, &dlq, path, dpath);
    CHECK(q && dlq);
    uint64_t id1, id2, id3, id4;
    static char longb[3000];
    memset(longb, 'L', sizeof longb - 1);
    CHECK_EQ(send_msg(q, "hdr", 0, 0, NULL, 0, &id1), SHMQ_OK);
    CHECK_EQ(send_msg(q, "size", 0, 0, NULL, 0, &id2), SHMQ_OK);
    CHECK_EQ(send_msg(q, "state", 0, 0, NULL, 0, &id3), SHMQ_OK);
    CHECK_EQ(send_msg(q, "good", 0, 0, NULL, 0, &id4), SHMQ_OK);
    shmq_desc_t *d1 = th_desc_by_id(q, id1), *d2 = th_desc_by_id(q, id2), *d3 = th_desc_by_id(q, id3);
    CHECK(d1 && d2 && d3);
    d1->hdr_size = 60000;                                                     /* header block past the payload */
    d2->size = 0xfffffff0u;                                                   /* payload past the descriptor */
    d3->word = shmq_desc_word(shmq_desc_dgen(d3->word), 15, 0x12345);        /* no such state */
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK); /* the three are passed over */
    CHECK_EQ(g.id, id4);
    CHECK_EQ(g.len, 4);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.corrupt_skipped, 2);
    CHECK_EQ(shmq_timers_run(q), 0); /* the scan leaves an unknown state alone */
    /* an in-flight message whose chunk reference went bad, then rejected: not forwarded */
    CHECK_EQ(send_msg(q, longb, 0, 0, NULL, 0, &id1), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    d1 = th_desc_by_id(q, id1);
    CHECK(d1 != NULL);
    CHECK(d1->chunk != SHMQ_NO_CHUNK);
    d1->chunk = 0x7ffffff0u;
    CHECK_EQ(shmq_nack(q, g.token, g.id, 0, 0), SHMQ_OK);
    shmq_stats(q, &st);
    CHECK_EQ(st.corrupt_skipped, 3);
    CHECK_EQ(st.in_flight + st.depth + st.delayed, 0);
    CHECK_ACK(dlq, 0, 0, 0, 0, 0, 0, 0);
    /* the queue still works, payloads in the arena included */
    CHECK_EQ(send_msg(q, longb, 0, 0, NULL, 0, &id2), SHMQ_OK);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.id, id2);
    CHECK_EQ(g.len, sizeof g.body - 1); /* truncated by our copy, the message itself is whole */
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
}

/* ---------------------------------------------------------------- dead consumers */

/* child: open queue argv[0] (and attach DLQ argv[1] unless "-"), receive argv[2] messages, then
 * argv[3]: "hold" (keep the leases until killed), "close" (close holding them), "ack", "nack" (requeue), "reject" (nack
 * without requeue); with argv[2] == "0" and argv[3] "scan": sleep 60 ms, run the timer scan.
 * A crash point (SHMQ_CRASH_AT) may kill it on the way. */
static int child_consume(int argc, char **argv)
{
    if (argc < 4)
        return 9;
    static shmq_seg_t q, d;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    if (strcmp(argv[1], "-") != 0) {
        if (shmq_open(&d, argv[1], -1) != SHMQ_OK || shmq_attach(&d) != SHMQ_OK)
            return 3;
        shmq_ack_set_dlq(&q, &d, base_name(argv[0]));
    }
    if (strcmp(argv[3], "scan") == 0) {
        th_sleep_ms(60);
        shmq_timers_run(&q);
        return 0;
    }
    int n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        got_t g;
        if (recv_msg(&q, &g, th_after_ms(5000)) != SHMQ_OK)
            return 4;
        if (strcmp(argv[3], "ack") == 0 && shmq_ack(&q, g.token, g.id) != SHMQ_OK)
            return 5;
        if (strcmp(argv[3], "reject") == 0 && shmq_nack(&q, g.token, g.id, 0, 0) != SHMQ_OK)
            return 6;
        if (strcmp(argv[3], "nack") == 0 && shmq_nack(&q, g.token, g.id, 1, 0) != SHMQ_OK)
            return 7;
    }
    if (strcmp(argv[3], "hold") == 0)
        for (;;)
            pause();
    if (strcmp(argv[3], "close") == 0)
        shmq_close(&q); /* gives the unacked deliveries back (a crash point may kill it midway) */
    return 0;
}

static const th_role_t roles[] = {{"consume", child_consume}, {NULL, NULL}};

/* wait until the queue's in_flight is n (the child received), up to 10 s */
static int wait_in_flight(shmq_seg_t *q, uint64_t n)
{
    for (int i = 0; i < 10000; i++) {
        shmq_stats_t st;
        shmq_stats(q, &st);
        if (st.in_flight == n)
            return 1;
        th_sleep_ms(1);
    }
    return 0;
}

static void test_killed_consumer_leases_come_back(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("killed", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t ids[3];
    for (int i = 0; i < 3; i++)
        CHECK_EQ(send_msg(q, "job", 0, 0, NULL, 0, &ids[i]), SHMQ_OK);
    CHECK_EQ(send_msg(q, "left", 0, 0, NULL, 0, NULL), SHMQ_OK);
    pid_t pid = th_spawn(NULL, "consume", path, "-", "3", "hold");
    CHECK(wait_in_flight(q, 3));
    CHECK_ACK(q, 1, 3, 0, 0, 0, 0, 0);
    kill(pid, SIGKILL);
    CHECK(th_killed(th_wait(pid, 10000)));
    CHECK_ACK(q, 1, 3, 0, 0, 0, 0, 0); /* nothing happens to them before a repair */
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_ACK(q, 4, 0, 0, 0, 3, 0, 0); /* back now, not after the 30 s lease */
    int seen[3] = {0, 0, 0};
    for (int i = 0; i < 4; i++) {
        got_t g;
        CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
        for (int k = 0; k < 3; k++)
            if (g.id == ids[k]) {
                CHECK_EQ(g.dc, 2);
                seen[k]++;
            }
        if (g.len == 4)
            CHECK_EQ(g.dc, 1); /* "left" was never delivered */
        CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    }
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    CHECK_ACK(q, 0, 0, 0, 4, 3, 0, 0);
}

static void test_crash_after_lease_is_redelivered(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("afterlease", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id;
    CHECK_EQ(send_msg(q, "x", 0, 0, NULL, 0, &id), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("after_lease", "consume", path, "-", "1", "ack"), 20000)));
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 0);
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.id, id);
    CHECK_EQ(g.dc, 2);
}

/* close() gives a handle's unacked deliveries back at once, each a failed delivery; a kill in
 * the middle (mid_close_return) leaves SETTLING(dead) and INFLIGHT(dead): repair does the rest. */
static void test_close_gives_deliveries_back(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("closeback", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(send_msg(q, "c", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK_EQ(th_wait(th_spawn(NULL, "consume", path, "-", "3", "close"), 20000), 0);
    CHECK_ACK(q, 3, 0, 0, 0, 3, 0, 0); /* back without any repair, each counted */
    CHECK(th_killed(th_wait(th_spawn("mid_close_return:2", "consume", path, "-", "3", "close"), 20000)));
    CHECK_ACK(q, 1, 2, 0, 0, 4, 0, 0); /* one given back, one SETTLING(dead), one INFLIGHT(dead) */
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_ACK(q, 3, 0, 0, 0, 6, 0, 0);
    got_t g;
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
        CHECK_EQ(g.dc, 3);
        CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    }
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.owned_desc, 0);
}

/* A sender looks after its message: find it once, then probe it in O(1). */
static void test_find_and_probe(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("probe", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id, token = 0;
    shmq_probe_t p;
    CHECK_EQ(send_msg(q, "p", 0, 0, NULL, 0, &id), SHMQ_OK);
    CHECK_EQ(shmq_ack_find(q, id + 1, &token), SHMQ_ESTALE);
    CHECK_EQ(shmq_ack_find(q, id, &token), SHMQ_OK);
    CHECK_EQ(shmq_ack_probe(q, token, id, &p), SHMQ_OK);
    CHECK_EQ(p.state, SHMQ_PROBE_READY);
    CHECK_EQ(shmq_part_consumers(q, 1), 0);
    pid_t pid = th_spawn(NULL, "consume", path, "-", "1", "hold");
    for (int i = 0; i < 2000 && p.state != SHMQ_PROBE_INFLIGHT; i++) {
        th_sleep_ms(5);
        CHECK_EQ(shmq_ack_probe(q, token, id, &p), SHMQ_OK);
    }
    CHECK_EQ(p.state, SHMQ_PROBE_INFLIGHT);
    CHECK_EQ(p.owner_alive, 1);
    CHECK_EQ(p.delivery_count, 1);
    CHECK_EQ(shmq_part_consumers(q, 1), 1);
    kill(pid, SIGKILL);
    CHECK(th_killed(th_wait(pid, 20000)));
    CHECK_EQ(shmq_ack_probe(q, token, id, &p), SHMQ_OK);
    CHECK_EQ(p.state, SHMQ_PROBE_INFLIGHT);
    CHECK_EQ(p.owner_alive, 0);
    CHECK_EQ(shmq_part_consumers(q, 0), 1); /* dead, not repaired yet: counted without the check */
    CHECK_EQ(shmq_part_consumers(q, 1), 0);
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_EQ(shmq_ack_probe(q, token, id, &p), SHMQ_OK);
    CHECK_EQ(p.state, SHMQ_PROBE_READY);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK);
    CHECK_EQ(shmq_ack_probe(q, token, id, &p), SHMQ_OK);
    CHECK_EQ(p.state, SHMQ_PROBE_GONE);
    CHECK_EQ(shmq_ack_probe(q, ~0ull, id, &p), SHMQ_OK); /* untrusted token: nothing read outside */
    CHECK_EQ(p.state, SHMQ_PROBE_GONE);
}

static void test_crash_mid_ack_finishes_the_ack(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("midack", VIS_LONG, 5, NULL, path, NULL);
    CHECK(q != NULL);
    CHECK_EQ(send_msg(q, "x", 0, 0, NULL, 0, NULL), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("mid_ack", "consume", path, "-", "1", "ack"), 20000)));
    shmq_repair_dead(q);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.depth + st.in_flight + st.delayed, 0); /* the ack had begun: the message is gone */
    CHECK_EQ(st.redelivered, 0);
    got_t g;
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_EMPTY);
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.owned_desc, 0);
}

static void test_crash_mid_nack_and_mid_expire_count_a_failed_delivery(void)
{
    char path[128];
    shmq_seg_t *q = ack_queue("midnack", VIS_SHORT, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id;
    got_t g;
    /* mid_nack: the nack had claimed the delivery (SETTLING), not requeued it */
    CHECK_EQ(send_msg(q, "n", 0, 0, NULL, 0, &id), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("mid_nack", "consume", path, "-", "1", "nack"), 20000)));
    CHECK_ACK(q, 0, 1, 0, 0, 0, 0, 0); /* SETTLING counts as in flight */
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 0, 1, 0, 0);
    CHECK_EQ(recv_msg(q, &g, 0), SHMQ_OK);
    CHECK_EQ(g.id, id);
    CHECK_EQ(g.dc, 2);
    /* mid_expire: another process's timer scan claimed our expired lease and died */
    CHECK(th_killed(th_wait(th_spawn("mid_expire", "consume", path, "-", "0", "scan"), 20000)));
    CHECK_ACK(q, 0, 1, 0, 0, 1, 0, 0);
    CHECK(shmq_repair_dead(q) >= 1);
    CHECK_ACK(q, 1, 0, 0, 0, 2, 0, 0); /* put back: a failed delivery */
    CHECK_EQ(shmq_ack(q, g.token, g.id), SHMQ_OK); /* not delivered again yet: still ours (lazy expiry) */
    CHECK_ACK(q, 0, 0, 0, 1, 2, 0, 0);
}

static void test_crash_mid_move_copies_once(void)
{
    /* killed before and after the copy into the DLQ: repair finishes the move, and the DLQ's
     * dedup on (source, id) keeps it to one copy */
    const char *points[] = {"before_move", "mid_move"};
    for (int p = 0; p < 2; p++) {
        char path[128], dpath[128], tag[32];
        snprintf(tag, sizeof tag, "move%d", p);
        shmq_seg_t *dlq = NULL;
        shmq_seg_t *q = ack_queue(tag, VIS_LONG, 5, &dlq, path, dpath);
        CHECK(q && dlq);
        uint64_t id;
        CHECK_EQ(send_msg(q, "moved", 0, 0, NULL, 0, &id), SHMQ_OK);
        CHECK(th_killed(th_wait(th_spawn(points[p], "consume", path, dpath, "1", "reject"), 20000)));
        CHECK_ACK(dlq, p == 1 ? 1 : 0, 0, 0, 0, 0, 0, 0);
        CHECK(shmq_repair_dead(q) >= 1);
        CHECK_ACK(q, 0, 0, 0, 0, 0, 1, 0);
        CHECK_ACK(dlq, 1, 0, 0, 0, 0, 0, 0);
        got_t d;
        CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_OK);
        CHECK_EQ(d.len, 5);
        CHECK(memcmp(d.body, "moved", 5) == 0);
        CHECK_HDR(&d, "x-dead-letter-reason", "rejected");
        CHECK_EQ(recv_msg(dlq, &d, 0), SHMQ_EMPTY);
    }
}

static void test_scan_leaves_a_delivery_whose_lease_is_not_written_yet(void)
{
    /* A put leaves its ticks in a READY descriptor's deadline_ns (hist.h, SHMQ_DF_TICKS); a
     * receiver's CAS makes it INFLIGHT before it writes the lease. A timer scan in between must
     * not take those ticks for a lease end that passed (the receiver would then hand out a
     * message the scan had put back: a duplicate delivery). Forged here as that instant, with
     * ticks "in the past" (as on a machine without a TSC, or after a TSC reset). */
    char path[128];
    shmq_seg_t *q = ack_queue("ticks", VIS_SHORT, 5, NULL, path, NULL);
    CHECK(q != NULL);
    uint64_t id;
    CHECK_EQ(send_msg(q, "t", 0, 0, NULL, 0, &id), SHMQ_OK);
    shmq_desc_t *d = th_desc_by_id(q, id);
    CHECK(d != NULL);
    CHECK(d->flags & SHMQ_DF_TICKS);
    uint64_t w = d->word;
    CHECK_EQ(shmq_desc_state(w), SHMQ_D_READY);
    d->deadline_ns = 1000; /* long past as a monotonic time */
    d->word = shmq_desc_word(shmq_desc_dgen(w) + 1, SHMQ_D_INFLIGHT, q->owner); /* the receiver's CAS */
    th_sleep_ms(2);
    CHECK_EQ(shmq_timers_run(q), 0); /* nothing due: the lease is being written */
    CHECK_EQ(shmq_desc_state(d->word), SHMQ_D_INFLIGHT);
    /* once the lease is written (the flag goes), an expired one is put back as before */
    d->flags &= (uint8_t)~SHMQ_DF_TICKS;
    CHECK(shmq_timers_run(q) >= 1);
    CHECK(shmq_desc_state(d->word) != SHMQ_D_INFLIGHT);
}

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_ack_then_second_ack_is_stale);
    RUN(test_wrong_kind_and_bad_args);
    RUN(test_nack_requeue_redelivers);
    RUN(test_nack_with_delay);
    RUN(test_send_with_delay_wakes_a_sleeping_receiver);
    RUN(test_expired_lease_not_redelivered_can_be_acked);
    RUN(test_expired_and_redelivered_old_token_is_stale);
    RUN(test_receive_end_reports_a_lease_lost_during_the_copy);
    RUN(test_extend_moves_the_deadline);
    RUN(test_max_deliveries_to_dead_letter_queue);
    RUN(test_lease_expiry_past_max_deliveries_and_reject);
    RUN(test_without_dead_letter_queue);
    RUN(test_full_dead_letter_queue_keeps_the_message);
    RUN(test_no_dead_letter_handle_attached);
    RUN(test_ttl_to_dead_letter_queue);
    RUN(test_ttl_without_dead_letter_queue_dropped_and_counted);
    RUN(test_growable_queue_leases_in_later_areas);
    RUN(test_forged_tokens_are_refused);
    RUN(test_garbage_descriptors_are_skipped_not_delivered);
    RUN(test_scan_leaves_a_delivery_whose_lease_is_not_written_yet);
    RUN(test_killed_consumer_leases_come_back);
    RUN(test_crash_after_lease_is_redelivered);
    RUN(test_crash_mid_ack_finishes_the_ack);
    RUN(test_close_gives_deliveries_back);
    RUN(test_find_and_probe);
    RUN(test_crash_mid_nack_and_mid_expire_count_a_failed_delivery);
    RUN(test_crash_mid_move_copies_once);
    TH_SUMMARY();
}
