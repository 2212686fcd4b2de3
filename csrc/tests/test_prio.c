/* test_prio.c - prio.h: strict order and FIFO within a level, bad priorities and options,
 * validation of a corrupted region, many processes (nothing lost or doubled), a producer
 * killed between its publish and its bitmap bit (prio_before_bit), aging. */
#define _GNU_SOURCE
#include <fcntl.h>

#include "../prio.h"
#include "../queue.h"
#include "tharness.h"

static shmq_create_opts_t prio_opts(const char *path, uint64_t cap, uint32_t levels)
{
    shmq_create_opts_t o = th_opts(path, cap, 0, 0);
    o.kind = SHMQ_KIND_PRIORITY;
    o.levels = levels;
    return o;
}

static int put_u64(shmq_seg_t *q, uint64_t v, uint32_t prio, uint64_t deadline)
{
    shmq_iov_t iov = {&v, sizeof v};
    return shmq_put_prio(q, &iov, 1, 0, prio, deadline, NULL);
}

static int get_u64(shmq_seg_t *q, uint64_t *v, uint32_t *prio, uint64_t deadline)
{
    shmq_msg_t m;
    int rc = shmq_get_begin(q, &m, deadline);
    if (rc != SHMQ_OK)
        return rc;
    memcpy(v, m.data, sizeof *v);
    if (prio)
        *prio = m.priority;
    shmq_get_end(q, &m);
    return SHMQ_OK;
}

static void test_order(void)
{
    char path[128];
    th_path(path, sizeof path, "order");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 64);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(shmq_prio_levels(q), 64);
    for (uint64_t i = 0; i < 640; i++)
        CHECK_EQ(put_u64(q, i, (uint32_t)((i * 7) % 64), 0), SHMQ_OK);
    CHECK_EQ(shmq_depth(q), 640);
    uint64_t counts[64];
    CHECK_EQ(shmq_prio_counts(q, counts, 64), 64);
    CHECK_EQ(counts[0], 10);
    int last_p = 64;
    uint64_t last_v = 0;
    for (int k = 0; k < 640; k++) {
        uint64_t v;
        uint32_t p;
        CHECK_EQ(get_u64(q, &v, &p, 0), SHMQ_OK);
        CHECK_EQ(p, (v * 7) % 64);
        CHECK((int)p <= last_p);
        if ((int)p == last_p)
            CHECK(v > last_v); /* FIFO within a level */
        last_p = (int)p;
        last_v = v;
    }
    uint64_t v;
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_EMPTY);
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.orphan_ready + ck.dead_owned + ck.queued + ck.owned_desc, 0);
}

static void test_bad_arguments(void)
{
    char path[128];
    th_path(path, sizeof path, "bad");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 0);
    shmq_seg_t *s = th_seg();
    int created = 0;
    CHECK_EQ(shmq_create(s, &o, 0, &created), SHMQ_EINVAL); /* levels 0 */
    o.levels = 65;
    CHECK_EQ(shmq_create(s, &o, 0, &created), SHMQ_EINVAL);
    o.levels = 4;
    o.flags = 0;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(put_u64(q, 1, 4, 0), SHMQ_EINVAL);
    CHECK_EQ(put_u64(q, 1, UINT32_MAX, 0), SHMQ_EINVAL);
    CHECK_EQ(shmq_depth(q), 0);
    /* a plain queue is not a priority queue */
    char path2[128];
    th_path(path2, sizeof path2, "plain");
    shmq_create_opts_t o2 = th_opts(path2, 1 << 20, 0, 0);
    shmq_seg_t *fifo = th_create(&o2);
    CHECK(fifo != NULL);
    CHECK_EQ(shmq_prio_levels(fifo), 0);
    CHECK_EQ(put_u64(fifo, 1, 0, 0), SHMQ_EINVAL);
}

static void test_corrupt_region_refused(void)
{
    char path[128];
    th_path(path, sizeof path, "corrupt");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 8);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    uint64_t size;
    shmq_prio_hdr_t *h = (shmq_prio_hdr_t *)shmq_seg_region(q, SHMQ_REGION_PRIO, &size);
    CHECK(h != NULL);
    CHECK_EQ(h->levels, 8);
    uint32_t saved = h->levels;
    uint32_t bad[] = {0, 65, 0x7fffffffu};
    for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h->levels = bad[i];
        shmq_seg_t *o2 = th_seg();
        CHECK_EQ(shmq_open(o2, path, -1), SHMQ_ECORRUPT);
    }
    h->levels = saved;
    uint64_t *tail0 = (uint64_t *)((uint8_t *)h + sizeof *h + 128);
    *tail0 = 1ull << 40; /* a tail far past its head */
    shmq_seg_t *o3 = th_seg();
    CHECK_EQ(shmq_open(o3, path, -1), SHMQ_ECORRUPT);
    *tail0 = 0;
    shmq_seg_t *o4 = th_seg();
    CHECK_EQ(shmq_open(o4, path, -1), SHMQ_OK);
}

#define PROCS 2
#define PER 3000

static int child_produce(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    uint64_t tag = (uint64_t)atoi(argv[1]);
    for (uint64_t i = 0; i < PER; i++)
        if (put_u64(&q, tag << 32 | i, (uint32_t)(i % 5), th_after_ms(20000)) != SHMQ_OK)
            return 3;
    shmq_close(&q);
    return 0;
}

static void test_many_processes(void)
{
    char path[128];
    th_path(path, sizeof path, "mp");
    shmq_create_opts_t o = prio_opts(path, 4 << 20, 5);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pid_t kids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "%d", i);
        kids[i] = th_spawn(NULL, "produce", path, tag, NULL, NULL);
    }
    static uint8_t seen[PROCS][PER];
    memset(seen, 0, sizeof seen);
    for (int k = 0; k < PROCS * PER; k++) {
        uint64_t v;
        CHECK_EQ(get_u64(q, &v, NULL, th_after_ms(20000)), SHMQ_OK);
        uint64_t tag = v >> 32, i = v & 0xffffffffu;
        CHECK(tag < PROCS && i < PER);
        CHECK_EQ(seen[tag][i], 0);
        seen[tag][i] = 1;
    }
    for (int i = 0; i < PROCS; i++)
        CHECK(th_exited_ok(th_wait(kids[i], 20000)));
    uint64_t v;
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_EMPTY);
}

static int child_produce_crash(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    for (uint64_t i = 0; i < 10; i++)
        put_u64(&q, i, (uint32_t)i, 0);
    return 0;
}

static void test_killed_before_bit(void)
{
    char path[128];
    th_path(path, sizeof path, "bit");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 10);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(put_u64(q, 100, 0, 0), SHMQ_OK); /* level 0 keeps its bit set throughout */
    pid_t pid = th_spawn("prio_before_bit:4", "crash", path, NULL, NULL, NULL);
    CHECK(th_killed(th_wait(pid, 20000)));
    /* seqs 0..2 returned; 3 is in level 3's ring, its bit possibly clear */
    uint64_t v;
    uint32_t p;
    CHECK(shmq_repair_dead(q) >= 1); /* the repair sets the bit of every non-empty level */
    CHECK_EQ(get_u64(q, &v, &p, 0), SHMQ_OK);
    CHECK_EQ(v, 3);
    uint64_t want[] = {2, 1, 100, 0}; /* level 0: FIFO, 100 was put first */
    for (unsigned i = 0; i < 4; i++) {
        CHECK_EQ(get_u64(q, &v, &p, 0), SHMQ_OK);
        CHECK_EQ(v, want[i]);
    }
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_EMPTY);
}

static int child_consume_crash(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    for (int i = 0; i < 10; i++) {
        uint64_t v;
        get_u64(&q, &v, NULL, 0);
    }
    return 0;
}

static void test_killed_before_clear(void)
{
    char path[128];
    th_path(path, sizeof path, "clear");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 4);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    for (uint64_t i = 0; i < 6; i++)
        CHECK_EQ(put_u64(q, i, i < 3 ? 2 : 0, 0), SHMQ_OK);
    /* the child takes the three of level 2, finds it empty and dies before clearing its bit */
    pid_t pid = th_spawn("prio_mid_clear:1", "consume", path, NULL, NULL, NULL);
    CHECK(th_killed(th_wait(pid, 20000)));
    shmq_repair_dead(q);
    CHECK_EQ(shmq_depth(q), 3); /* it held nothing: nothing lost */
    CHECK_EQ(put_u64(q, 9, 2, 0), SHMQ_OK);
    uint64_t want[] = {9, 3, 4, 5}, v;
    for (unsigned i = 0; i < 4; i++) {
        CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_OK);
        CHECK_EQ(v, want[i]);
    }
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_EMPTY);
}

static void test_aging(void)
{
    char path[128];
    th_path(path, sizeof path, "aging");
    shmq_create_opts_t o = prio_opts(path, 1 << 20, 3);
    o.max_wait_ns = 20 * TH_MS;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(shmq_prio_max_wait_ns(q), 20 * TH_MS);
    CHECK_EQ(put_u64(q, 1, 0, 0), SHMQ_OK);
    th_sleep_ms(80);
    CHECK_EQ(put_u64(q, 2, 2, 0), SHMQ_OK);
    uint64_t v;
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_OK);
    CHECK_EQ(v, 1); /* waited past max_wait: before the younger, higher one */
    CHECK_EQ(get_u64(q, &v, NULL, 0), SHMQ_OK);
    CHECK_EQ(v, 2);
}

static int child_drain(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    uint64_t v;
    while (get_u64(&q, &v, NULL, 0) == SHMQ_OK)
        ;
    return 0;
}

#define GROW_LEVELS 3
#define GROW_N 3000

/* A growable priority queue: puts past area 0 grow it (each grown area carries a ring per
 * level), order holds across the rings, and a consumer killed at either growth point
 * (prio_after_seal: a drained ring sealed, its level not moved on; prio_before_head: every
 * level moved on, area_head not) held nothing: what it did not take is all there, in order,
 * and the repair moves the heads on. */
static void test_growth_and_its_crash_points(void)
{
    const char *pts[] = {"prio_after_seal", "prio_before_head"}; /* the first hit of each */
    for (unsigned i = 0; i < 2; i++) {
        char path[128];
        th_path(path, sizeof path, i ? "ghead" : "gseal");
        shmq_create_opts_t o = prio_opts(path, 64 << 10, GROW_LEVELS);
        o.flags = SHMQ_F_GROWABLE;
        shmq_seg_t *q = th_create(&o);
        CHECK(q != NULL);
        CHECK_EQ(q->area_rings, GROW_LEVELS);
        for (uint64_t v = 0; v < GROW_N; v++)
            CHECK_EQ(put_u64(q, v, (uint32_t)(v % GROW_LEVELS), 0), SHMQ_OK);
        CHECK(q->hdr->area_tail >= 2); /* grew twice at least */
        CHECK_EQ(shmq_depth(q), GROW_N);
        pid_t pid = th_spawn(pts[i], "drain", path, NULL, NULL, NULL);
        CHECK(th_killed(th_wait(pid, 20000)));
        shmq_repair_dead(q);
        CHECK(q->hdr->area_head >= (i ? 1u : 0u)); /* prio_before_head: the repair moved it */
        /* each level's rest is a suffix of its sequence (FIFO, nothing lost in between), and
         * the levels come highest first */
        uint64_t left = shmq_depth(q), n = 0, v, next[GROW_LEVELS] = {0};
        int seen[GROW_LEVELS] = {0};
        uint32_t p, lastp = GROW_LEVELS - 1;
        while (get_u64(q, &v, &p, 0) == SHMQ_OK) {
            CHECK(p < GROW_LEVELS && p <= lastp && v % GROW_LEVELS == p);
            if (seen[p])
                CHECK_EQ(v, next[p]);
            seen[p] = 1;
            next[p] = v + GROW_LEVELS;
            lastp = p;
            n++;
        }
        CHECK_EQ(n, left);
        CHECK(n > 0);
        for (uint32_t l = 0; l < GROW_LEVELS; l++)
            CHECK(!seen[l] || next[l] >= GROW_N); /* each level drained to its last message */
        shmq_check_t ck;
        shmq_check(q, &ck);
        CHECK_EQ(ck.orphan_ready + ck.dead_owned + ck.queued + ck.owned_desc, 0);
        /* still usable: a second round grows on and keeps the order */
        for (uint64_t v2 = 0; v2 < GROW_N; v2++)
            CHECK_EQ(put_u64(q, v2, (uint32_t)(v2 % GROW_LEVELS), 0), SHMQ_OK);
        lastp = GROW_LEVELS - 1;
        n = 0;
        while (get_u64(q, &v, &p, 0) == SHMQ_OK) {
            CHECK(p <= lastp);
            lastp = p;
            n++;
        }
        CHECK_EQ(n, GROW_N);
        CHECK(q->hdr->area_head >= 1); /* the heads moved on past drained areas */
    }
}

static const th_role_t roles[] = {{"produce", child_produce},
                                  {"crash", child_produce_crash},
                                  {"consume", child_consume_crash},
                                  {"drain", child_drain},
                                  {NULL, NULL}};

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_order);
    RUN(test_bad_arguments);
    RUN(test_corrupt_region_refused);
    RUN(test_many_processes);
    RUN(test_killed_before_bit);
    RUN(test_killed_before_clear);
    RUN(test_aging);
    RUN(test_growth_and_its_crash_points);
    TH_SUMMARY();
}
