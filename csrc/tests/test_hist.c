/* test_hist.c - hist.h: wait and processing histograms, counters, a dead participant's
 * samples kept, hostile region headers and blocks. */
#define _GNU_SOURCE
#include "../hist.h"
#include "../queue.h"
#include "tharness.h"

static uint64_t total(const uint64_t *b)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < SHMQ_HIST_BUCKETS; i++)
        n += b[i];
    return n;
}

static void test_buckets(void)
{
    CHECK_EQ(shmq_hist_bucket(0), 0u);
    CHECK_EQ(shmq_hist_bucket(1023), 0u);
    CHECK_EQ(shmq_hist_bucket(1024), 1u);
    CHECK_EQ(shmq_hist_bucket(2047), 1u);
    CHECK_EQ(shmq_hist_bucket(2048), 2u);
    CHECK_EQ(shmq_hist_bucket(1ull << 39), SHMQ_HIST_BUCKETS - 2);
    CHECK_EQ(shmq_hist_bucket(1ull << 40), SHMQ_HIST_BUCKETS - 1);
    CHECK_EQ(shmq_hist_bucket(UINT64_MAX), SHMQ_HIST_BUCKETS - 1);
}

static void test_wait_samples_and_dead_participant(void)
{
    char path[128];
    th_path(path, sizeof path, "hw");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *a = th_create(&o);
    CHECK(a != NULL);
    CHECK(a->hdr->flags & SHMQ_F_HIST);
    CHECK(a->hist_blk != NULL);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(th_put_bytes(a, "abc", 3, 0), SHMQ_OK);
    char out[16];
    uint64_t n;
    for (int i = 0; i < 4; i++)
        CHECK_EQ(th_get_bytes(a, out, sizeof out, &n, 0), SHMQ_OK);
    shmq_hist_sum_t hs;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 4u);
    CHECK_EQ(total(hs.process), 0u);
    /* a child takes three and dies without closing: its samples stay counted */
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        memset(&c, 0, sizeof c);
        c.fd = -1;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        for (int i = 0; i < 3; i++)
            if (th_get_bytes(&c, out, sizeof out, &n, 0) != SHMQ_OK)
                _exit(3);
        raise(SIGKILL);
    }
    CHECK(th_killed(th_wait(pid, 10000)));
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 7u);
    /* a new participant (it may take the dead one's slot, repairing it) adds to the figures */
    shmq_seg_t *b = th_open(path);
    CHECK(b != NULL);
    CHECK_EQ(th_get_bytes(b, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 8u);
    CHECK(hs.wait_sum_ns > 0 || hs.wait[0] == 8u);
    /* an inspector (not attached) reads but never records */
    shmq_seg_t *r = th_seg();
    CHECK_EQ(shmq_open(r, path, -1), SHMQ_OK);
    CHECK(r->hist_blk == NULL);
    CHECK_EQ(shmq_hist_read(r, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 8u);
}

static void test_time_in_queue_is_measured(void)
{
    char path[128];
    th_path(path, sizeof path, "ht");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *a = th_create(&o);
    CHECK(a != NULL);
    CHECK_EQ(th_put_bytes(a, "abc", 3, 0), SHMQ_OK);
    th_sleep_ms(30);
    char out[16];
    uint64_t n;
    CHECK_EQ(th_get_bytes(a, out, sizeof out, &n, 0), SHMQ_OK);
    shmq_hist_sum_t hs;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 1u);
    /* slept 30 ms: at least 25 ms measured (either clock), and the bucket says the same */
    CHECK(hs.wait_sum_ns >= 25 * TH_MS);
    CHECK(hs.wait[shmq_hist_bucket(hs.wait_sum_ns)] == 1u);
}

static void test_ack_process_and_nacks(void)
{
    char path[128];
    th_path(path, sizeof path, "ha");
    shmq_create_opts_t o = th_ack_opts(path, 1 << 20, 10000 * TH_MS, 5, NULL);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_iov_t iov = {"body", 4};
    shmq_send_opts_t so = {.delay_ns = SHMQ_USE_DEFAULT, .ttl_ns = SHMQ_USE_DEFAULT};
    uint64_t id;
    int dup;
    for (int i = 0; i < 2; i++)
        CHECK_EQ(shmq_send(q, &iov, 1, 0, &so, 0, &id, &dup), SHMQ_OK);
    shmq_msg_t m;
    CHECK_EQ(shmq_receive_begin(q, &m, 0), SHMQ_OK);
    CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
    th_sleep_ms(20);
    CHECK_EQ(shmq_ack(q, m.handle, m.id), SHMQ_OK);
    CHECK_EQ(shmq_receive_begin(q, &m, 0), SHMQ_OK);
    CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
    CHECK_EQ(shmq_nack(q, m.handle, m.id, 1, 0), SHMQ_OK);
    /* the redelivery is no new wait sample */
    CHECK_EQ(shmq_receive_begin(q, &m, 0), SHMQ_OK);
    CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
    CHECK_EQ(m.delivery_count, 2u);
    shmq_hist_sum_t hs;
    CHECK_EQ(shmq_hist_read(q, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 2u);
    CHECK_EQ(total(hs.process), 1u);
    CHECK(hs.process_sum_ns >= 15 * TH_MS);
    CHECK_EQ(hs.nacks, 1u);
}

static void test_hostile_region(void)
{
    char path[128];
    th_path(path, sizeof path, "hh");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *a = th_create(&o);
    CHECK(a != NULL);
    uint64_t size;
    shmq_hist_region_t *r = (shmq_hist_region_t *)shmq_seg_region(a, SHMQ_REGION_HIST, &size);
    CHECK(r != NULL && size >= sizeof *r);
    /* garbage counts: sums saturate, nothing breaks */
    shmq_hist_block_t *b0 = (shmq_hist_block_t *)(r + 1);
    memset(b0, 0xff, sizeof *b0);
    shmq_hist_sum_t hs;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(hs.wait[3], UINT64_MAX);
    CHECK_EQ(hs.wait_sum_ns, UINT64_MAX);
    char out[16];
    uint64_t n;
    CHECK_EQ(th_put_bytes(a, "abc", 3, 0), SHMQ_OK);
    CHECK_EQ(th_get_bytes(a, out, sizeof out, &n, 0), SHMQ_OK);
    /* a block count past the region: refused by readers and binders; traffic goes on */
    uint32_t good = r->n_blocks;
    r->n_blocks = 1u << 30;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_ECORRUPT);
    shmq_seg_t *b = th_open(path);
    CHECK(b != NULL);
    CHECK(b->hist_blk == NULL);
    CHECK_EQ(th_put_bytes(b, "abc", 3, 0), SHMQ_OK);
    CHECK_EQ(th_get_bytes(b, out, sizeof out, &n, 0), SHMQ_OK);
    r->n_blocks = good;
    r->magic ^= 1;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_ECORRUPT);
    r->magic ^= 1;
    r->block_size = 8;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_ECORRUPT);
    r->block_size = sizeof(shmq_hist_block_t);
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    /* a garbage tick reading in a READY descriptor is one sample, never a wild access */
    CHECK_EQ(th_put_bytes(a, "abc", 3, 0), SHMQ_OK);
    for (uint32_t k = 0; k < th_area0(a)->n_desc; k++) {
        shmq_desc_t *d = (shmq_desc_t *)(th_area0(a)->desc + (uint64_t)k * SHMQ_DESC_SIZE);
        if (shmq_desc_state(d->word) == SHMQ_D_READY)
            d->deadline_ns = UINT64_MAX - 5;
    }
    memset(b0, 0, sizeof *b0);
    CHECK_EQ(th_get_bytes(a, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_OK);
    CHECK_EQ(total(hs.wait), 1u);
    /* no flag: the segment has no histograms (an older one): read says so */
    a->hdr->flags &= ~SHMQ_F_HIST;
    CHECK_EQ(shmq_hist_read(a, &hs), SHMQ_EINVAL);
    a->hdr->flags |= SHMQ_F_HIST;
}

int main(void)
{
    RUN(test_buckets);
    RUN(test_wait_samples_and_dead_participant);
    RUN(test_time_in_queue_is_measured);
    RUN(test_ack_process_and_nacks);
    RUN(test_hostile_region);
    TH_SUMMARY();
}
