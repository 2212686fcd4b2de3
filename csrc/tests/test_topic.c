/* test_topic.c - topic.h: publish and read (private, named, groups), exact overrun counts, the
 * block gate, subscriptions, hostile entries, and a process killed at each topic crash point
 * (nothing torn or half-visible, the log never wedged, no named position lost). */
#define _GNU_SOURCE
#include "../crashpoint.h"
#include "../kinds.h"
#include "../topic.h"
#include "tharness.h"

static shmq_seg_t *make_topic(char *path, size_t n, const char *tag, uint64_t capacity)
{
    th_path(path, n, tag);
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_TOPIC, .capacity = capacity, .mode = 0600};
    return th_create(&o);
}

static int pub1(shmq_seg_t *t, uint32_t v, uint64_t deadline, uint64_t *seq)
{
    uint8_t buf[64];
    memset(buf, (int)(v & 0xff), sizeof buf);
    memcpy(buf, &v, sizeof v);
    shmq_iov_t iov = {buf, 8 + v % 56};
    shmq_topic_pub_t m = {&iov, 1, 1, 0};
    uint32_t done = 0;
    uint64_t first = 0;
    int rc = shmq_topic_publish(t, &m, 1, deadline, &done, &first);
    if (seq)
        *seq = first;
    return rc;
}

/* a message pub1 wrote, intact */
static int intact(const shmq_topic_msg_t *m)
{
    uint32_t v;
    if (m->size < 8)
        return 0;
    memcpy(&v, m->data, sizeof v);
    if (m->size != 8 + v % 56)
        return 0;
    for (uint32_t i = 4; i < m->size; i++)
        if (m->data[i] != (uint8_t)(v & 0xff))
            return 0;
    return 1;
}

static uint8_t rbuf[1 << 20];
static shmq_topic_msg_t rout[256];

static int read_all(shmq_seg_t *t, shmq_topic_reader_t *r, uint64_t *seqs, int max, int *bad)
{
    int n = 0;
    *bad = 0;
    for (;;) {
        uint32_t got = 0;
        int rc = shmq_topic_read(t, r, rbuf, sizeof rbuf, rout, 256, &got, 0);
        if (rc != SHMQ_OK)
            return n;
        for (uint32_t i = 0; i < got; i++) {
            if (!intact(&rout[i]))
                (*bad)++;
            if (n < max)
                seqs[n] = rout[i].seq;
            n++;
        }
    }
}

static void test_publish_and_private_read(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tpriv", 1 << 20);
    CHECK(t != NULL);
    shmq_topic_reader_t r = {.sub = UINT32_MAX, .cursor = shmq_topic_head(t)};
    uint64_t seq = 0;
    for (uint32_t i = 0; i < 100; i++) {
        CHECK_EQ(pub1(t, i, 0, &seq), SHMQ_OK);
        CHECK_EQ(seq, i + 1);
    }
    static uint64_t seqs[200];
    int bad;
    CHECK_EQ(read_all(t, &r, seqs, 200, &bad), 100);
    CHECK_EQ(bad, 0);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(seqs[i], (uint64_t)i + 1);
    uint32_t got;
    CHECK_EQ(shmq_topic_read(t, &r, rbuf, sizeof rbuf, rout, 1, &got, th_after_ms(20)), SHMQ_TIMEOUT);
}

static void test_overrun_exact(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tover", 64 * 1024);
    CHECK(t != NULL);
    shmq_topic_reader_t r = {.sub = UINT32_MAX, .cursor = 1};
    uint32_t idx, gen;
    int created;
    CHECK_EQ(shmq_topic_subscribe(t, "lossy", 5, 0, SHMQ_TSTART_EARLIEST, 0, &idx, &gen, &created), SHMQ_OK);
    CHECK(created);
    shmq_topic_reader_t nr = {.sub = idx, .gen = gen};
    for (uint32_t i = 0; i < 1000; i++)
        CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK); /* never gated: no block subscription */
    static uint64_t seqs[1000];
    int bad;
    int n = read_all(t, &r, seqs, 1000, &bad);
    CHECK_EQ(bad, 0);
    CHECK_EQ((uint64_t)n + r.missed, 1000);
    CHECK_EQ(seqs[n - 1], 1000);
    n = read_all(t, &nr, seqs, 1000, &bad);
    shmq_topic_subinfo_t si;
    CHECK_EQ(shmq_topic_subinfo(t, idx, &si), SHMQ_OK);
    CHECK_EQ(si.missed + (uint64_t)n, 1000);
    CHECK_EQ(si.delivered, (uint64_t)n);
}

static void test_block_gate_and_group(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tgate", 64 * 1024);
    CHECK(t != NULL);
    shmq_seg_t *t2 = th_open(path);
    CHECK(t2 != NULL);
    uint32_t idx, gen, idx2, gen2;
    int created;
    CHECK_EQ(shmq_topic_subscribe(t, "g", 1, SHMQ_TSUB_BLOCK, SHMQ_TSTART_LATEST, 0, &idx, &gen, &created), SHMQ_OK);
    CHECK_EQ(shmq_topic_subscribe(t2, "g", 1, SHMQ_TSUB_BLOCK, SHMQ_TSTART_LATEST, 0, &idx2, &gen2, &created), SHMQ_OK);
    CHECK(!created && idx == idx2 && gen == gen2);
    CHECK_EQ(shmq_topic_subscribe(t2, "g", 1, 0, SHMQ_TSTART_LATEST, 0, &idx2, &gen2, &created), SHMQ_EINCOMPAT);
    int n = 0, rc;
    while ((rc = pub1(t, (uint32_t)n, 0, NULL)) == SHMQ_OK)
        n++;
    CHECK_EQ(rc, SHMQ_FULL);
    CHECK(n > 10);
    CHECK_EQ(pub1(t, 0, th_after_ms(20), NULL), SHMQ_TIMEOUT);
    shmq_topic_reader_t a = {.sub = idx, .gen = gen}, b = {.sub = idx2, .gen = gen2};
    int total = 0;
    for (int round = 0; round < 10000 && total < n; round++) {
        uint32_t got = 0;
        if (shmq_topic_read(round & 1 ? t2 : t, round & 1 ? &b : &a, rbuf, sizeof rbuf, rout, 3, &got, 0) == SHMQ_OK)
            total += (int)got;
    }
    CHECK_EQ(total, n); /* each message once to the group, none missed */
    CHECK_EQ(pub1(t, 1, 0, NULL), SHMQ_OK);
    CHECK_EQ(shmq_topic_unsubscribe(t2, "g", 1), SHMQ_OK);
    CHECK_EQ(shmq_topic_unsubscribe(t2, "g", 1), SHMQ_EMPTY);
    uint32_t got;
    CHECK_EQ(shmq_topic_read(t, &a, rbuf, sizeof rbuf, rout, 1, &got, 0), SHMQ_ECLOSED);
}

static void test_hostile_entry(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "thost", 1 << 20);
    CHECK(t != NULL);
    for (uint32_t i = 0; i < 10; i++)
        CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK);
    shmq_topic_t *k = shmq_topic_of(t);
    CHECK(k != NULL);
    k->ents[4].size = 0xffffffffu; /* message 4 */
    k->ents[6].pos = 1ull << 62;
    shmq_topic_reader_t r = {.sub = UINT32_MAX, .cursor = 1};
    uint32_t got = 0;
    CHECK_EQ(shmq_topic_read(t, &r, rbuf, sizeof rbuf, rout, 256, &got, 0), SHMQ_OK);
    CHECK_EQ(got, 3);
    CHECK_EQ(shmq_topic_read(t, &r, rbuf, sizeof rbuf, rout, 256, &got, 0), SHMQ_ECORRUPT);
    k->th->n_entries = 100; /* forged geometry: refused by the next opener */
    shmq_seg_t *o = th_seg();
    CHECK(o != NULL);
    CHECK_EQ(shmq_open(o, path, -1), SHMQ_ECORRUPT);
}

/* child: publish argv[1] messages to the topic at argv[0] */
static int child_publish(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t t;
    if (shmq_open(&t, argv[0], -1) != SHMQ_OK || shmq_attach(&t) != SHMQ_OK)
        return 2;
    for (int i = 0; i < atoi(argv[1]); i++)
        if (pub1(&t, (uint32_t)i, th_after_ms(5000), NULL) != SHMQ_OK)
            return 3;
    shmq_close(&t);
    return 0;
}

/* child: read argv[1] messages one by one from named subscription "d" */
static int child_read(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t t;
    if (shmq_open(&t, argv[0], -1) != SHMQ_OK || shmq_attach(&t) != SHMQ_OK)
        return 2;
    uint32_t idx, gen;
    int created;
    if (shmq_topic_subscribe(&t, "d", 1, SHMQ_TSUB_BLOCK, SHMQ_TSTART_EARLIEST, 0, &idx, &gen, &created) != SHMQ_OK)
        return 4;
    shmq_topic_reader_t r = {.sub = idx, .gen = gen};
    for (int i = 0; i < atoi(argv[1]); i++) {
        uint32_t got;
        if (shmq_topic_read(&t, &r, rbuf, sizeof rbuf, rout, 1, &got, th_after_ms(5000)) != SHMQ_OK)
            return 3;
    }
    shmq_close(&t);
    return 0;
}

static int child_subscribe(int argc, char **argv)
{
    if (argc < 1)
        return 9;
    shmq_seg_t t;
    if (shmq_open(&t, argv[0], -1) != SHMQ_OK || shmq_attach(&t) != SHMQ_OK)
        return 2;
    uint32_t idx, gen;
    int created;
    return shmq_topic_subscribe(&t, "half", 4, 0, SHMQ_TSTART_LATEST, 0, &idx, &gen, &created) == SHMQ_OK ? 0 : 3;
}

/* child: receive (ack=True subscription "a") and ack argv[1] messages */
static int child_receive(int argc, char **argv)
{
    if (argc < 2)
        return 9;
    shmq_seg_t t;
    if (shmq_open(&t, argv[0], -1) != SHMQ_OK || shmq_attach(&t) != SHMQ_OK)
        return 2;
    uint32_t idx, gen;
    int created, dead;
    if (shmq_topic_subscribe_ack(&t, "a", 1, SHMQ_TSUB_BLOCK | SHMQ_TSUB_ACK, SHMQ_TSTART_EARLIEST, 0, 60 * TH_MS * 1000,
                                 5, &idx, &gen, &created) != SHMQ_OK)
        return 4;
    shmq_topic_reader_t r = {.sub = idx, .gen = gen};
    for (int i = 0; i < atoi(argv[1]); i++) {
        uint64_t token;
        uint32_t n;
        if (shmq_topic_receive(&t, &r, rbuf, sizeof rbuf, rout, &token, &n, &dead, th_after_ms(5000)) != SHMQ_OK ||
            shmq_topic_ack(&t, token) != SHMQ_OK)
            return 3;
    }
    shmq_close(&t);
    return 0;
}

static const th_role_t roles[] = {{"publish", child_publish}, {"read", child_read}, {"subscribe", child_subscribe},
                                  {"receive", child_receive}, {NULL, NULL}};

static void test_ack_leases(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tack", 1 << 20);
    CHECK(t != NULL);
    uint32_t idx, gen;
    int created, dead;
    CHECK_EQ(shmq_topic_subscribe_ack(t, "a", 1, SHMQ_TSUB_BLOCK | SHMQ_TSUB_ACK, SHMQ_TSTART_EARLIEST, 0, 50 * TH_MS, 2,
                                      &idx, &gen, &created), SHMQ_OK);
    for (uint32_t i = 0; i < 3; i++)
        CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK);
    shmq_topic_reader_t r = {.sub = idx, .gen = gen};
    uint64_t tok, tok2;
    uint32_t n;
    CHECK_EQ(shmq_topic_receive(t, &r, rbuf, sizeof rbuf, rout, &tok, &n, &dead, 0), SHMQ_OK);
    CHECK(rout[0].seq == 1 && n == 1 && !dead && intact(&rout[0]));
    CHECK_EQ(shmq_topic_ack(t, tok), SHMQ_OK);
    CHECK_EQ(shmq_topic_ack(t, tok), SHMQ_ESTALE);
    CHECK_EQ(shmq_topic_receive(t, &r, rbuf, sizeof rbuf, rout, &tok, &n, &dead, 0), SHMQ_OK);
    CHECK_EQ(rout[0].seq, 2);
    tok2 = tok;
    CHECK_EQ(shmq_topic_extend(t, &tok2, 10 * TH_MS), SHMQ_OK);
    CHECK_EQ(shmq_topic_ack(t, tok), SHMQ_ESTALE); /* extend gave a new stamp */
    CHECK_EQ(shmq_topic_nack(t, tok2), SHMQ_OK);
    CHECK_EQ(shmq_topic_receive(t, &r, rbuf, sizeof rbuf, rout, &tok, &n, &dead, 0), SHMQ_OK);
    CHECK(rout[0].seq == 2 && n == 2 && !dead);
    th_sleep_ms(80); /* its lease runs out: delivered again, past max_deliveries = 2 */
    CHECK_EQ(shmq_topic_receive(t, &r, rbuf, sizeof rbuf, rout, &tok2, &n, &dead, th_after_ms(1000)), SHMQ_OK);
    CHECK(rout[0].seq == 2 && n == 3 && dead);
    CHECK_EQ(shmq_topic_ack(t, tok), SHMQ_ESTALE);
    CHECK_EQ(shmq_topic_ack(t, tok2), SHMQ_OK); /* the caller dead-lettered it */
    shmq_topic_subinfo_t si;
    CHECK_EQ(shmq_topic_subinfo(t, idx, &si), SHMQ_OK);
    CHECK(si.acked == 1 && si.dead_lettered == 1 && si.in_flight == 0);
}

static void test_killed_ack_member(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tkack", 1 << 20);
    CHECK(t != NULL);
    for (uint32_t i = 0; i < 10; i++)
        CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("topic_ack_claimed:3", "receive", path, "10", NULL, NULL), 20000)));
    uint32_t idx, gen;
    int created, dead;
    CHECK_EQ(shmq_topic_subscribe_ack(t, "a", 1, SHMQ_TSUB_BLOCK | SHMQ_TSUB_ACK, SHMQ_TSTART_EARLIEST, 0, 60 * TH_MS, 5,
                                      &idx, &gen, &created), SHMQ_OK);
    CHECK(!created);
    shmq_topic_subinfo_t si;
    CHECK_EQ(shmq_topic_subinfo(t, idx, &si), SHMQ_OK);
    CHECK(si.cursor == 3 && si.acked == 2 && si.in_flight == 1); /* the dead one's reservation */
    shmq_repair_dead(t);
    CHECK_EQ(shmq_topic_subinfo(t, idx, &si), SHMQ_OK);
    CHECK_EQ(si.in_flight, 0); /* its cursor CAS never happened: the reservation is freed */
    shmq_topic_reader_t r = {.sub = idx, .gen = gen};
    uint64_t tok;
    uint32_t n;
    CHECK_EQ(shmq_topic_receive(t, &r, rbuf, sizeof rbuf, rout, &tok, &n, &dead, 0), SHMQ_OK);
    CHECK(rout[0].seq == 3 && n == 1);
}

static void test_killed_publisher_at_every_point(void)
{
    static const char *points[] = {"topic_mid_publish", "topic_before_commit", "topic_after_commit"};
    for (int p = 0; p < 3; p++) {
        char path[128];
        shmq_seg_t *t = make_topic(path, sizeof path, "tkpub", 1 << 20);
        CHECK(t != NULL);
        shmq_topic_reader_t r = {.sub = UINT32_MAX, .cursor = 1};
        for (uint32_t i = 0; i < 3; i++)
            CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK);
        /* killed in its first publish, the fourth message of the topic */
        CHECK(th_killed(th_wait(th_spawn(points[p], "publish", path, "10", NULL, NULL), 20000)));
        uint64_t seq = 0;
        CHECK_EQ(pub1(t, 77, th_after_ms(5000), &seq), SHMQ_OK); /* the dead holder's lock is taken over */
        uint64_t want = p == 2 ? 5 : 4; /* after_commit: its fourth message was committed */
        CHECK_EQ(seq, want);
        static uint64_t seqs[64];
        int bad;
        CHECK_EQ(read_all(t, &r, seqs, 64, &bad), (int)want);
        CHECK_EQ(bad, 0);
        CHECK_EQ(seqs[want - 1], want);
    }
}

static void test_killed_reader_and_subscriber(void)
{
    char path[128];
    shmq_seg_t *t = make_topic(path, sizeof path, "tkread", 1 << 20);
    CHECK(t != NULL);
    uint32_t idx, gen;
    int created;
    CHECK_EQ(shmq_topic_subscribe(t, "d", 1, SHMQ_TSUB_BLOCK, SHMQ_TSTART_EARLIEST, 0, &idx, &gen, &created), SHMQ_OK);
    shmq_topic_leave(t, idx);
    for (uint32_t i = 0; i < 10; i++)
        CHECK_EQ(pub1(t, i, 0, NULL), SHMQ_OK);
    CHECK(th_killed(th_wait(th_spawn("topic_before_advance:3", "read", path, "10", NULL, NULL), 20000)));
    shmq_topic_subinfo_t si;
    CHECK_EQ(shmq_topic_subinfo(t, idx, &si), SHMQ_OK);
    CHECK_EQ(si.cursor, 3); /* two delivered; the third copied, not claimed: still the group's */
    CHECK_EQ(si.consumers, 0);
    CHECK(th_killed(th_wait(th_spawn("topic_mid_subscribe", "subscribe", path, NULL, NULL, NULL), 20000)));
    uint32_t i2, g2;
    CHECK_EQ(shmq_topic_subscribe(t, "half", 4, 0, SHMQ_TSTART_LATEST, 0, &i2, &g2, &created), SHMQ_OK);
    CHECK(created); /* the dead one's entry never became LIVE; both locks were taken over */
    CHECK_EQ(pub1(t, 1, th_after_ms(5000), NULL), SHMQ_OK);
}

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_publish_and_private_read);
    RUN(test_overrun_exact);
    RUN(test_block_gate_and_group);
    RUN(test_hostile_entry);
    RUN(test_killed_publisher_at_every_point);
    RUN(test_killed_reader_and_subscriber);
    RUN(test_ack_leases);
    RUN(test_killed_ack_member);
    TH_SUMMARY();
}
