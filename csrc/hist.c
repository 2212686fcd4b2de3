#include "hist.h"

#include <string.h>

/* ns per TSC tick, as a 32.32 fixed-point number; 0 until this process has calibrated (relaxed:
 * a stale 0 only sends one more sample through the fallback). */
uint64_t shmq_hist_mult;
static uint64_t cal_ticks0, cal_mono0;
#define CAL_MIN_NS (10ull * 1000 * 1000) /* 10 ms between the two readings: error ~1e-5 */

__attribute__((constructor)) static void hist_clock_start(void)
{
#if defined(__x86_64__)
    cal_mono0 = shmq_now_mono_ns();
    cal_ticks0 = shmq_ticks();
#else
    shmq_hist_mult = 1ull << 32; /* shmq_ticks() is CLOCK_MONOTONIC nanoseconds already */
#endif
}

static void calibrate(void)
{
    uint64_t t = shmq_ticks(), m = shmq_now_mono_ns();
    if (m - cal_mono0 < CAL_MIN_NS || t <= cal_ticks0)
        return;
    uint64_t mult = (uint64_t)(((unsigned __int128)(m - cal_mono0) << 32) / (t - cal_ticks0));
    shmq_store_relaxed(&shmq_hist_mult, mult ? mult : 1);
}

uint64_t shmq_hist_wait_coarse(uint64_t ts)
{
    if (shmq_load_relaxed(&shmq_hist_mult) == 0)
        calibrate(); /* the next sample takes the fast path */
    /* one kernel tick of resolution: the put's coarse wall clock against ours */
    uint64_t now = shmq_now_wall_coarse_ns();
    return now > ts ? now - ts : 0;
}

uint64_t shmq_hist_wait_slow(const shmq_desc_t *d) { return shmq_hist_wait_coarse(d->timestamp_ns); }

/* The dimensions a create asks for (read by region_init during this thread's create). */
typedef struct {
    uint32_t n_blocks, n_subs, n_ticks, n_lticks;
} dims_t;

static uint64_t topic_parts_size(uint32_t n_subs, uint32_t n_ticks, uint32_t n_lticks)
{
    return (uint64_t)n_subs * sizeof(shmq_hist_block_t) + 8ull * n_ticks + 8ull * n_lticks;
}

static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    shmq_hist_region_t *r = (shmq_hist_region_t *)base;
    const dims_t *d = ctx;
    (void)size; /* shmq_hist_region sized it for these dimensions; the rest is zero */
    r->n_blocks = d->n_blocks;
    r->n_subs = d->n_subs;
    r->n_ticks = d->n_ticks;
    r->n_lticks = d->n_lticks;
    r->n_buckets = SHMQ_HIST_BUCKETS;
    r->base_log2 = SHMQ_HIST_BASE_LOG2;
    r->block_size = (uint32_t)sizeof(shmq_hist_block_t);
    r->magic = SHMQ_HIST_MAGIC; /* the file is linked only after this: no reader sees it half-built */
}

void shmq_hist_region_topic(uint32_t max_slots, uint32_t n_subs, uint32_t n_ticks, uint32_t n_lticks,
                            shmq_region_req_t *req)
{
    static __thread dims_t dims;
    uint32_t n = max_slots ? max_slots : SHMQ_DEFAULT_SLOTS;
    if (n > SHMQ_HIST_MAX_BLOCKS)
        n = SHMQ_HIST_MAX_BLOCKS;
    dims = (dims_t){n, n_subs, n_ticks, n_lticks};
    req->kind = SHMQ_REGION_HIST;
    req->size = sizeof(shmq_hist_region_t) + (uint64_t)n * sizeof(shmq_hist_block_t) +
                topic_parts_size(n_subs, n_ticks, n_lticks);
    req->init = region_init;
    req->ctx = &dims;
}

void shmq_hist_region(uint32_t max_slots, shmq_region_req_t *req) { shmq_hist_region_topic(max_slots, 0, 0, 0, req); }

/* untrusted: the region header against the region's size; the block count or 0. */
static uint32_t region_blocks(shmq_seg_t *seg, shmq_hist_region_t **out)
{
    *out = NULL;
    if (!seg->hdr || !(seg->hdr->flags & SHMQ_F_HIST))
        return 0;
    uint64_t size;
    shmq_hist_region_t *r = (shmq_hist_region_t *)shmq_seg_region(seg, SHMQ_REGION_HIST, &size);
    if (!r || size < sizeof *r)
        return 0;
    uint32_t n = shmq_load_relaxed(&r->n_blocks);
    if (shmq_load_relaxed(&r->magic) != SHMQ_HIST_MAGIC || r->n_buckets != SHMQ_HIST_BUCKETS ||
        r->base_log2 != SHMQ_HIST_BASE_LOG2 || r->block_size != sizeof(shmq_hist_block_t) || n == 0 ||
        n > SHMQ_HIST_MAX_BLOCKS || sizeof *r + (uint64_t)n * sizeof(shmq_hist_block_t) > size)
        return 0;
    *out = r;
    return n;
}

static shmq_hist_block_t *block_at(shmq_hist_region_t *r, uint32_t i)
{
    return (shmq_hist_block_t *)((uint8_t *)r + sizeof *r) + i;
}

int shmq_hist_topic_parts(shmq_seg_t *seg, uint32_t n_subs, uint32_t n_ticks, uint32_t n_lticks,
                          shmq_hist_topic_t *out)
{
    memset(out, 0, sizeof *out);
    shmq_hist_region_t *r;
    uint32_t n = region_blocks(seg, &r);
    uint64_t size = 0;
    if (!n || !shmq_seg_region(seg, SHMQ_REGION_HIST, &size))
        return SHMQ_EINVAL;
    /* untrusted: the counts must be the ones the validated topic header implies, and fit */
    if (n_subs == 0 || r->n_subs != n_subs || r->n_ticks != n_ticks || r->n_lticks != n_lticks ||
        sizeof *r + (uint64_t)n * sizeof(shmq_hist_block_t) + topic_parts_size(n_subs, n_ticks, n_lticks) > size)
        return SHMQ_EINVAL;
    out->subs = block_at(r, n);
    out->ticks = (uint64_t *)(out->subs + n_subs);
    out->lticks = out->ticks + n_ticks;
    return SHMQ_OK;
}

void shmq_hist_clear(shmq_hist_block_t *b)
{
    uint64_t *w = (uint64_t *)b;
    for (size_t i = 0; i < sizeof *b / 8; i++)
        shmq_store_relaxed(&w[i], 0);
}

int shmq_hist_read_block(const shmq_hist_block_t *b, shmq_hist_sum_t *out)
{
    memset(out, 0, sizeof *out);
    if (!b)
        return SHMQ_EINVAL;
    for (uint32_t k = 0; k < SHMQ_HIST_BUCKETS; k++) {
        out->wait[k] = shmq_load_relaxed(&b->wait[k]);
        out->process[k] = shmq_load_relaxed(&b->process[k]);
    }
    out->wait_sum_ns = shmq_load_relaxed(&b->wait_sum_ns);
    out->process_sum_ns = shmq_load_relaxed(&b->process_sum_ns);
    out->nacks = shmq_load_relaxed(&b->nacks);
    out->late_replies = shmq_load_relaxed(&b->late_replies);
    out->blocks_read = 1;
    return SHMQ_OK;
}

void shmq_hist_bind(shmq_seg_t *seg)
{
    shmq_hist_region_t *r;
    uint32_t n = region_blocks(seg, &r);
    /* the pointer is process-local and was bounds-checked here: writers never re-read the header */
    seg->hist_blk = (n && seg->slot != UINT32_MAX) ? block_at(r, seg->slot % n) : NULL;
    if (seg->hist_blk && shmq_load_relaxed(&shmq_hist_mult) == 0)
        calibrate();
}

static inline uint64_t sat_add(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

int shmq_hist_read(shmq_seg_t *seg, shmq_hist_sum_t *out)
{
    memset(out, 0, sizeof *out);
    if (!seg->hdr || !(seg->hdr->flags & SHMQ_F_HIST))
        return SHMQ_EINVAL;
    shmq_hist_region_t *r;
    uint32_t n = region_blocks(seg, &r);
    if (!n)
        return SHMQ_ECORRUPT;
    uint32_t hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    if (hwm < n)
        n = hwm; /* blocks of slots never attached are zero: skip them (a handful for most queues) */
    for (uint32_t i = 0; i < n; i++) {
        const shmq_hist_block_t *b = block_at(r, i);
        for (uint32_t k = 0; k < SHMQ_HIST_BUCKETS; k++) {
            out->wait[k] = sat_add(out->wait[k], shmq_load_relaxed(&b->wait[k]));
            out->process[k] = sat_add(out->process[k], shmq_load_relaxed(&b->process[k]));
        }
        out->wait_sum_ns = sat_add(out->wait_sum_ns, shmq_load_relaxed(&b->wait_sum_ns));
        out->process_sum_ns = sat_add(out->process_sum_ns, shmq_load_relaxed(&b->process_sum_ns));
        out->nacks = sat_add(out->nacks, shmq_load_relaxed(&b->nacks));
        out->late_replies = sat_add(out->late_replies, shmq_load_relaxed(&b->late_replies));
    }
    out->blocks_read = n;
    return SHMQ_OK;
}

void shmq_hist_count(shmq_seg_t *seg, int which, uint64_t n)
{
    shmq_hist_block_t *b = (shmq_hist_block_t *)seg->hist_blk;
    if (!b)
        return;
    uint64_t *c = which == SHMQ_HIST_NACKS ? &b->nacks : which == SHMQ_HIST_LATE_REPLIES ? &b->late_replies : NULL;
    if (c)
        shmq_fetch_add_relaxed(c, n); /* rare paths: exact even between threads of one handle */
}

void shmq_hist_process(shmq_seg_t *seg, uint64_t ns)
{
    shmq_hist_block_t *b = (shmq_hist_block_t *)seg->hist_blk;
    if (b)
        shmq_hist_add(b->process, &b->process_sum_ns, ns);
}
