#include "prio.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "crashpoint.h"
#include "desc.h"

typedef unsigned __int128 prio_u128;

/* Per-handle state: the level rings as ring.h sees them, over the region. */
typedef struct {
    shmq_prio_hdr_t *hdr;
    uint32_t levels;
    uint64_t mask;        /* bits of valid levels (untrusted: garbage bits beyond are ignored) */
    uint64_t max_wait_ns;
    shmq_ring_t rings[SHMQ_PRIO_MAX_LEVELS];
} prio_state_t;

static inline prio_state_t *P(shmq_seg_t *q) { return q->ready_state; }

#define CURSORS_OFF 256u
#define CURSOR_BLOCK (2u * SHMQ_CURSOR_PAD)

uint64_t shmq_prio_region_size(uint32_t levels, uint32_t cells_log2)
{
    if (levels == 0 || levels > SHMQ_PRIO_MAX_LEVELS || cells_log2 < 4 || cells_log2 > 22)
        return 0;
    return CURSORS_OFF + (uint64_t)levels * CURSOR_BLOCK + (uint64_t)levels * (16ull << cells_log2);
}

static void rings_of(shmq_prio_hdr_t *h, uint32_t levels, uint32_t lg, shmq_ring_t *rings)
{
    uint8_t *base = (uint8_t *)h;
    uint8_t *cells = base + CURSORS_OFF + (uint64_t)levels * CURSOR_BLOCK;
    for (uint32_t p = 0; p < levels; p++) {
        uint8_t *cur = base + CURSORS_OFF + (uint64_t)p * CURSOR_BLOCK;
        rings[p].head = (uint64_t *)cur;
        rings[p].tail = (uint64_t *)(cur + SHMQ_CURSOR_PAD);
        rings[p].cells = (shmq_cell_t *)(cells + (uint64_t)p * (16ull << lg));
        rings[p].log2 = lg;
        rings[p].mask = (1ull << lg) - 1;
    }
}

/* Cells per level: as many as area 0 has descriptors (segment.c's sizing rule). */
static uint32_t cells_log2_for(const shmq_create_opts_t *o)
{
    uint64_t a0 = SHMQ_ALIGN_UP(o->capacity, 4096);
    if (a0 < SHMQ_MIN_AREA_SIZE)
        a0 = SHMQ_MIN_AREA_SIZE;
    uint32_t lg, nd;
    uint64_t m, ao, au;
    shmq_area_geometry(a0, &lg, &nd, &m, &ao, &au);
    return lg;
}

static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    const shmq_create_opts_t *o = ctx;
    shmq_prio_hdr_t *h = (shmq_prio_hdr_t *)base;
    (void)size;
    h->magic = SHMQ_PRIO_MAGIC;
    h->levels = o->levels;
    h->cells_log2 = cells_log2_for(o);
    h->max_wait_ns = o->max_wait_ns;
    h->bits = 0;
    h->seq = 0;
    shmq_ring_t rings[SHMQ_PRIO_MAX_LEVELS];
    rings_of(h, h->levels, h->cells_log2, rings);
    for (uint32_t p = 0; p < h->levels; p++)
        shmq_ring_init(&rings[p]);
}

int shmq_prio_region(const shmq_create_opts_t *o, shmq_region_req_t *req)
{
    if (o->levels == 0 || o->levels > SHMQ_PRIO_MAX_LEVELS || (o->flags & SHMQ_F_GROWABLE))
        return SHMQ_EINVAL; /* a level ring is sized by area 0's descriptors: no growth */
    req->kind = SHMQ_REGION_PRIO;
    req->size = shmq_prio_region_size(o->levels, cells_log2_for(o));
    req->init = region_init;
    req->ctx = (void *)o;
    return req->size ? SHMQ_OK : SHMQ_EINVAL;
}

/* untrusted: everything the region says, against its size and area 0. */
static int region_check(shmq_seg_t *q, const shmq_prio_hdr_t *h, uint64_t size)
{
    if (size < sizeof *h || h->magic != SHMQ_PRIO_MAGIC)
        return SHMQ_ECORRUPT;
    uint64_t need = shmq_prio_region_size(h->levels, h->cells_log2);
    if (need == 0 || need > size)
        return SHMQ_ECORRUPT;
    if (q->hdr->flags & SHMQ_F_GROWABLE)
        return SHMQ_ECORRUPT; /* never created so */
    return SHMQ_OK;
}

int shmq_prio_valid(shmq_seg_t *q)
{
    uint64_t size;
    shmq_prio_hdr_t *h = (shmq_prio_hdr_t *)shmq_seg_region(q, SHMQ_REGION_PRIO, &size);
    if (!h)
        return SHMQ_ECORRUPT;
    int rc = region_check(q, h, size);
    if (rc != SHMQ_OK)
        return rc;
    shmq_ring_t rings[SHMQ_PRIO_MAX_LEVELS];
    rings_of(h, h->levels, h->cells_log2, rings);
    for (uint32_t p = 0; p < h->levels; p++)
        if (!shmq_ring_valid(&rings[p]))
            return SHMQ_ECORRUPT;
    return SHMQ_OK;
}

/* ---------------------------------------------------------------- bitmap */

/* The 16-byte CAS over {bits, seq} (cmpxchg16b: a full barrier, as ring.c's cell CAS). */
static inline int pair_cas(shmq_prio_hdr_t *h, uint64_t obits, uint64_t oseq, uint64_t nbits, uint64_t nseq)
{
    prio_u128 old = ((prio_u128)oseq << 64) | obits, nw = ((prio_u128)nseq << 64) | nbits;
    return __sync_bool_compare_and_swap((prio_u128 *)&h->bits, old, nw);
}

/* Set bit p and bump seq (every publish does this after its ring publish). */
static void bit_set(prio_state_t *s, uint32_t p)
{
    shmq_prio_hdr_t *h = s->hdr;
    for (;;) {
        uint64_t sq = shmq_load_seq(&h->seq), b = shmq_load_seq(&h->bits);
        if (pair_cas(h, b, sq, b | (1ull << p), sq + 1))
            return;
    }
}

/* Clear bit p if ring p is empty and nobody published since we looked (prio.h: bitmap rule).
 * Bounded: a failed CAS means another publish or clear moved the pair; we look once more. */
static void bit_clear_if_empty(prio_state_t *s, uint32_t p)
{
    shmq_prio_hdr_t *h = s->hdr;
    for (int tries = 0; tries < 4; tries++) {
        uint64_t sq = shmq_load_seq(&h->seq), b = shmq_load_seq(&h->bits); /* seq_cst: before the look */
        if (!(b & (1ull << p)))
            return;
        if (shmq_ring_count(&s->rings[p]) != 0)
            return; /* a message (or a stale cell, which the next take skips) is there */
        SHMQ_CRASH_POINT(prio_mid_clear);
        if (pair_cas(h, b, sq, b & ~(1ull << p), sq))
            return;
    }
}

/* Set the bit of every non-empty level whose bit is clear (a producer died before its bit). 1 if any. */
static int bits_rescue(prio_state_t *s)
{
    int any = 0;
    uint64_t b = shmq_load_seq(&s->hdr->bits);
    for (uint32_t p = 0; p < s->levels; p++)
        if (!(b & (1ull << p)) && shmq_ring_count(&s->rings[p]) != 0) {
            bit_set(s, p);
            any = 1;
        }
    return any;
}

/* ---------------------------------------------------------------- ready ops */

static inline uint32_t level_of(prio_state_t *s, uint32_t priority)
{
    return priority < s->levels ? priority : 0; /* untrusted: a descriptor's priority byte */
}

static int prio_publish(shmq_seg_t *q, uint64_t handle, uint32_t priority)
{
    prio_state_t *s = P(q);
    uint32_t p = level_of(s, priority);
    int rc = shmq_ring_put_mpmc(&s->rings[p], handle);
    if (rc != SHMQ_OK)
        return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc; /* untrusted: a level ring is never sealed */
    SHMQ_CRASH_POINT(prio_before_bit);
    bit_set(s, p);
    return SHMQ_OK;
}

static int prio_room(shmq_seg_t *q, uint32_t priority)
{
    prio_state_t *s = P(q);
    return shmq_ring_room(&s->rings[level_of(s, priority)]);
}

/* The head message's put time of a level, or UINT64_MAX (a racy look: only a hint). */
static uint64_t head_time(shmq_seg_t *q, prio_state_t *s, uint32_t p)
{
    uint64_t n = 0, handle;
    if (shmq_ring_nth(&s->rings[p], &n, &handle) != SHMQ_OK)
        return UINT64_MAX;
    int rc;
    shmq_area_t *a = shmq_seg_area(q, shmq_handle_area(handle), &rc);
    if (!a || shmq_handle_idx(handle) >= a->n_desc) /* untrusted */
        return UINT64_MAX;
    return shmq_load_relaxed(&shmq_q_desc(a, shmq_handle_idx(handle))->timestamp_ns);
}

/* Aging: the level whose head has waited longest, if longer than max_wait; else top. */
static uint32_t aged_level(shmq_seg_t *q, prio_state_t *s, uint64_t bits, uint32_t top)
{
    uint64_t now = shmq_now_wall_coarse_ns(), best_t = UINT64_MAX;
    uint32_t best = top;
    for (uint64_t b = bits; b; b &= b - 1) {
        uint32_t p = (uint32_t)__builtin_ctzll(b);
        uint64_t t = head_time(q, s, p);
        if (t < best_t) {
            best_t = t;
            best = p;
        }
    }
    return best_t != UINT64_MAX && now > best_t && now - best_t > s->max_wait_ns ? best : top;
}

static int prio_take(shmq_seg_t *q, shmq_take_fn take, void *ctx, uint64_t *handle)
{
    prio_state_t *s = P(q);
    /* untrusted: bounded; a sane bitmap needs a round per level at most (plus lost races) */
    for (uint32_t tries = 0; tries < 4 * s->levels + 16; tries++) {
        uint64_t bits = shmq_load_seq(&s->hdr->bits) & s->mask;
        if (!bits) {
            if (!bits_rescue(s))
                return SHMQ_EMPTY;
            continue;
        }
        uint32_t p = 63u - (uint32_t)__builtin_clzll(bits);
        if (SHMQ_UNLIKELY(s->max_wait_ns != 0) && (bits & (bits - 1)))
            p = aged_level(q, s, bits, p);
        int rc = shmq_ring_get_mpmc(&s->rings[p], take, ctx, handle);
        if (rc == SHMQ_OK)
            return SHMQ_OK;
        if (rc == SHMQ_EMPTY) {
            bit_clear_if_empty(s, p);
            continue;
        }
        return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc;
    }
    return SHMQ_EMPTY;
}

static uint64_t prio_count(shmq_seg_t *q)
{
    prio_state_t *s = P(q);
    uint64_t n = 0;
    for (uint32_t p = 0; p < s->levels; p++)
        n += shmq_ring_count(&s->rings[p]);
    return n;
}

static void prio_foreach(shmq_seg_t *q, void (*visit)(void *ctx, uint64_t handle), void *ctx)
{
    prio_state_t *s = P(q);
    for (uint32_t p = 0; p < s->levels; p++)
        shmq_ring_foreach(&s->rings[p], visit, ctx);
}

/* Delivery order under strict priority: the highest level first (aging not applied). */
static int prio_nth(shmq_seg_t *q, uint64_t *n, uint64_t *handle)
{
    prio_state_t *s = P(q);
    for (uint32_t p = s->levels; p-- > 0;) {
        int rc = shmq_ring_nth(&s->rings[p], n, handle);
        if (rc != SHMQ_EMPTY)
            return rc;
    }
    return SHMQ_EMPTY;
}

static void prio_repair(shmq_seg_t *q) { bits_rescue(P(q)); }

static const shmq_ready_ops_t prio_ops = {
    .name = "priority",
    .publish = prio_publish,
    .room = prio_room,
    .take = prio_take,
    .count = prio_count,
    .foreach = prio_foreach,
    .nth = prio_nth,
    .repair = prio_repair,
};

int shmq_prio_bind(shmq_seg_t *q)
{
    uint64_t size;
    shmq_prio_hdr_t *h = (shmq_prio_hdr_t *)shmq_seg_region(q, SHMQ_REGION_PRIO, &size);
    if (!h)
        return SHMQ_ECORRUPT;
    /* untrusted and shared: validate a private copy of the geometry and use only the copy (a
     * writer changing levels or cells_log2 after the check cannot widen the rings past the region) */
    shmq_prio_hdr_t copy;
    memset(&copy, 0, sizeof copy);
    memcpy(&copy, h, offsetof(shmq_prio_hdr_t, _pad0)); /* the options block, not the live bitmap */
    if (region_check(q, &copy, size) != SHMQ_OK)
        return SHMQ_ECORRUPT;
    prio_state_t *s = calloc(1, sizeof *s);
    if (!s)
        return SHMQ_ENOMEM;
    s->hdr = h;
    s->levels = copy.levels; /* validated above; the copy is what every bound uses from now on */
    s->mask = s->levels == 64 ? ~0ull : (1ull << s->levels) - 1;
    s->max_wait_ns = copy.max_wait_ns;
    rings_of(h, s->levels, copy.cells_log2, s->rings);
    for (uint32_t p = 0; p < s->levels; p++)
        if (!shmq_ring_valid(&s->rings[p])) {
            free(s);
            return SHMQ_ECORRUPT;
        }
    q->ready_state = s;
    q->ready = &prio_ops;
    return SHMQ_OK;
}

void shmq_prio_unbind(shmq_seg_t *q)
{
    if (q->ready == &prio_ops) {
        free(q->ready_state);
        q->ready_state = NULL;
        q->ready = NULL;
    }
}

int shmq_put_prio(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint32_t priority,
                  uint64_t deadline_ns, uint64_t *id_out)
{
    if (q->ready != &prio_ops || priority >= P(q)->levels || shmq_q_hooks(q)->put != NULL)
        return SHMQ_EINVAL; /* an at-least-once priority queue puts through shmq_send (priority in its options) */
    shmq_put_ext_t x = {.priority = priority};
    return shmq_q_put(q, iov, n, kind, deadline_ns, id_out, &x);
}

uint32_t shmq_prio_levels(shmq_seg_t *q) { return q->ready == &prio_ops ? P(q)->levels : 0; }

uint32_t shmq_prio_counts(shmq_seg_t *q, uint64_t *counts, uint32_t cap)
{
    if (q->ready != &prio_ops)
        return 0;
    prio_state_t *s = P(q);
    uint32_t n = s->levels < cap ? s->levels : cap;
    for (uint32_t p = 0; p < n; p++)
        counts[p] = shmq_ring_count(&s->rings[p]);
    return n;
}

uint64_t shmq_prio_max_wait_ns(shmq_seg_t *q) { return q->ready == &prio_ops ? P(q)->max_wait_ns : 0; }
