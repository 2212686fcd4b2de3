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
    int growable;         /* level p's ring chain: area lhead[p]'s ring p .. area_tail's ring p */
    uint64_t mask;        /* bits of valid levels (untrusted: garbage bits beyond are ignored) */
    uint64_t max_wait_ns;
    uint64_t rescue_ticks; /* process-local: shmq_ticks() of this handle's last bits_rescue scan */
    shmq_ring_t rings[SHMQ_PRIO_MAX_LEVELS]; /* area 0's level rings (in the region) */
} prio_state_t;

static inline prio_state_t *P(shmq_seg_t *q) { return q->ready_state; }

#define CURSORS_OFF 512u
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
    memset(h->lhead, 0, sizeof h->lhead); /* every level starts in area 0 (the region's rings) */
    shmq_ring_t rings[SHMQ_PRIO_MAX_LEVELS];
    rings_of(h, h->levels, h->cells_log2, rings);
    for (uint32_t p = 0; p < h->levels; p++)
        shmq_ring_init(&rings[p]);
}

int shmq_prio_region(const shmq_create_opts_t *o, shmq_region_req_t *req)
{
    if (o->levels == 0 || o->levels > SHMQ_PRIO_MAX_LEVELS)
        return SHMQ_EINVAL;
    if ((o->flags & SHMQ_F_GROWABLE) && o->area_rings != o->levels)
        return SHMQ_EINVAL; /* a grown area carries one ring per level (kinds.c sets area_rings) */
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
    if ((q->hdr->flags & SHMQ_F_GROWABLE) && q->area_rings != h->levels)
        return SHMQ_ECORRUPT; /* a grown area must hold a ring per level */
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

/* ---------------------------------------------------------------- level ring chains */

/* Ring p of area k: area 0's is in the region, a grown area's in the area (segment.h,
 * shmq_area_ring). NULL if area k is not there (retired and unmapped, or garbage). */
static inline const shmq_ring_t *ring_at(shmq_seg_t *q, prio_state_t *s, uint32_t k, uint32_t p, shmq_ring_t *tmp)
{
    if (SHMQ_LIKELY(k == 0))
        return &s->rings[p];
    int rc;
    shmq_area_t *a = shmq_seg_area(q, k, &rc);
    if (!a || !shmq_area_ring(a, p, tmp))
        return NULL;
    return tmp;
}

/* The first area of level p's chain (growable; untrusted: never past area_tail). */
static inline uint32_t lhead_of(shmq_seg_t *q, prio_state_t *s, uint32_t p, uint32_t *tail)
{
    uint32_t k = shmq_load_acquire(&s->hdr->lhead[p]);
    *tail = shmq_load_acquire(&q->hdr->area_tail); /* after lhead: lhead <= tail always holds */
    if (*tail >= q->max_areas)
        *tail = q->max_areas - 1;
    if (SHMQ_LIKELY(k <= *tail))
        return k;
    /* untrusted: past the tail is garbage. Back to area_head (the rings from there to the true
     * head are sealed and drained: takes skip them), so no level's messages are stranded. */
    uint32_t ah = shmq_load_acquire(&q->hdr->area_head);
    if (ah > *tail)
        ah = *tail;
    shmq_cas_acq_rel(&s->hdr->lhead[p], &k, ah);
    return ah;
}

/* Messages queued at level p: every ring of its chain. */
static uint64_t level_count(shmq_seg_t *q, prio_state_t *s, uint32_t p)
{
    if (SHMQ_LIKELY(!s->growable))
        return shmq_ring_count(&s->rings[p]);
    uint32_t tail, k = lhead_of(q, s, p, &tail);
    uint64_t n = 0;
    for (; k <= tail; k++) {
        shmq_ring_t tmp;
        const shmq_ring_t *r = ring_at(q, s, k, p, &tmp);
        if (r)
            n += shmq_ring_count(r);
    }
    return n;
}

/* Move area_head past areas whose every level ring is drained: seal the empty rings of idle
 * levels there (as a FIFO consumer seals its drained area) and advance each lhead, then
 * area_head = the lowest lhead. segment.c gives the memory of areas below area_head back once
 * their descriptors are free (retire_drained). Bounded; stops at the first level still holding
 * a message in the head area. */
static void heads_advance(shmq_seg_t *q, prio_state_t *s)
{
    shmq_header_t *h = q->hdr;
    for (uint32_t round = 0; round < q->max_areas; round++) {
        uint32_t ah = shmq_load_acquire(&h->area_head), tail = shmq_load_acquire(&h->area_tail);
        if (ah >= tail || tail >= q->max_areas)
            return;
        for (uint32_t p = 0; p < s->levels; p++) {
            uint32_t t, k = lhead_of(q, s, p, &t); /* untrusted: garbage past the tail is reset */
            if (k > ah)
                continue;
            shmq_ring_t tmp;
            const shmq_ring_t *r = ring_at(q, s, ah, p, &tmp);
            if (!r || shmq_ring_seal_mpmc((shmq_ring_t *)r) != SHMQ_OK)
                return; /* level p still has messages in area ah (or it is not there: stop) */
            SHMQ_CRASH_POINT(prio_after_seal);
            shmq_cas_acq_rel(&s->hdr->lhead[p], &k, ah + 1);
        }
        SHMQ_CRASH_POINT(prio_before_head);
        shmq_cas_acq_rel(&h->area_head, &ah, ah + 1);
    }
}

/* ---------------------------------------------------------------- bitmap */

/* The 16-byte CAS over {bits, seq} (cmpxchg16b: a full barrier, as ring.c's cell CAS). */
static inline int pair_cas(shmq_prio_hdr_t *h, uint64_t obits, uint64_t oseq, uint64_t nbits, uint64_t nseq)
{
    prio_u128 old = ((prio_u128)oseq << 64) | obits, nw = ((prio_u128)nseq << 64) | nbits;
    return __sync_bool_compare_and_swap((prio_u128 *)&h->bits, old, nw);
}

/* seq: bit 0 is CLEARING (a consumer announced a clear and is looking at a level), bits 1..
 * a sequence that every change of the pair bumps (prio.h: bitmap rule). */
#define CLEARING 1ull

/* After a publish into ring p: make sure bit p is set and no clear in progress misses the
 * message. The common case writes nothing: the bit is set and nobody is clearing, so the line
 * stays shared with the consumers that read it. seq is read before bits (a clear that announces
 * after our read of seq looks at the ring after our publish and sees the message). */
static void bit_set(prio_state_t *s, uint32_t p)
{
    shmq_prio_hdr_t *h = s->hdr;
    uint64_t sq = shmq_load_seq(&h->seq); /* seq_cst, after the ring's publishing CAS */
    uint64_t b = shmq_load_seq(&h->bits);
    if (SHMQ_LIKELY(!(sq & CLEARING) && (b & (1ull << p))))
        return;
    /* set the bit, or bump seq under a clear in progress so its final CAS fails */
    while (!pair_cas(h, b, sq, b | (1ull << p), sq + 2)) {
        sq = shmq_load_seq(&h->seq);
        b = shmq_load_seq(&h->bits);
    }
}

/* Take CLEARING back (a clear that found a message, or lost its CAS): any change of seq is
 * safe here, it only makes a racing clear look again. Bounded. */
static void clearing_withdraw(shmq_prio_hdr_t *h)
{
    for (int tries = 0; tries < 4; tries++) {
        uint64_t sq = shmq_load_seq(&h->seq), b = shmq_load_seq(&h->bits);
        if (!(sq & CLEARING) || pair_cas(h, b, sq, b, sq + 1))
            return;
    }
}

/* Clear bit p if level p is empty and nobody published since we looked (prio.h: bitmap rule):
 * announce (CLEARING, seq bumped), look, then clear with a CAS that fails if any put bumped seq
 * since the announce. Bounded: a failed CAS means another publish or clear moved the pair. */
static void bit_clear_if_empty(shmq_seg_t *q, prio_state_t *s, uint32_t p)
{
    shmq_prio_hdr_t *h = s->hdr;
    for (int tries = 0; tries < 4; tries++) {
        uint64_t sq = shmq_load_seq(&h->seq), b = shmq_load_seq(&h->bits);
        if (!(b & (1ull << p)))
            return;
        uint64_t ann = (sq | CLEARING) + 2;
        if (!pair_cas(h, b, sq, b, ann))
            continue; /* announce: from here every put bumps seq (it sees CLEARING) */
        if (level_count(q, s, p) != 0)
            break; /* a message (or a stale cell, which the next take skips) is there */
        SHMQ_CRASH_POINT(prio_mid_clear);
        if (pair_cas(h, b, ann, b & ~(1ull << p), ann + 1))
            return; /* cleared, CLEARING taken back with it */
    }
    clearing_withdraw(h);
}

/* Set the bit of every non-empty level whose bit is clear (a producer died before its bit). 1 if any. */
static int bits_rescue(shmq_seg_t *q, prio_state_t *s)
{
    int any = 0;
    uint64_t b = shmq_load_seq(&s->hdr->bits);
    for (uint32_t p = 0; p < s->levels; p++)
        if (!(b & (1ull << p)) && level_count(q, s, p) != 0) {
            bit_set(s, p);
            any = 1;
        }
    return any;
}

/* A consumer that finds no bit set scans the levels for a dead producer's message at most once
 * per this many TSC ticks (~1 ms at 3 GHz): an idle or spinning consumer would otherwise read
 * every level's cursors (lines the producers write) on each poll. */
#define RESCUE_TICKS (3ull * 1000 * 1000)

/* ---------------------------------------------------------------- ready ops */

static inline uint32_t level_of(prio_state_t *s, uint32_t priority)
{
    return priority < s->levels ? priority : 0; /* untrusted: a descriptor's priority byte */
}

static int prio_publish(shmq_seg_t *q, uint64_t handle, uint32_t priority, uint64_t grow_deadline_ns)
{
    prio_state_t *s = P(q);
    uint32_t p = level_of(s, priority);
    int rc;
    if (SHMQ_LIKELY(!s->growable)) {
        rc = shmq_ring_put_mpmc(&s->rings[p], handle);
        if (rc != SHMQ_OK)
            return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc; /* untrusted: a fixed level ring is never sealed */
    } else {
        /* As a FIFO put into area_tail's ring (queue.c put_commit): the tail area's ring p. */
        shmq_header_t *h = q->hdr;
        for (uint32_t tries = 0;; tries++) {
            if (tries > 4 * SHMQ_MAX_AREAS)
                return SHMQ_ECORRUPT; /* untrusted: a sane segment needs a few rounds */
            uint32_t k = shmq_load_acquire(&h->area_tail);
            shmq_ring_t tmp;
            const shmq_ring_t *r = k < q->max_areas ? ring_at(q, s, k, p, &tmp) : NULL;
            if (!r) {
                if (shmq_load_acquire(&h->area_tail) != k)
                    continue; /* retired since we read the index: read it again */
                return SHMQ_ECORRUPT;
            }
            rc = shmq_ring_put_mpmc((shmq_ring_t *)r, handle);
            if (SHMQ_LIKELY(rc == SHMQ_OK)) {
                /* seq_cst, after the publishing CAS: a stale tail may name an area given back
                 * (its sealed cell read as empty once zeroed). Nobody takes there: again. */
                if (SHMQ_UNLIKELY(k != 0 && shmq_load_seq(&h->areas[k].state) != 1))
                    continue;
                break;
            }
            if (rc == SHMQ_ESEALED) {
                if (shmq_load_acquire(&h->area_tail) != k)
                    continue; /* consumers sealed it after producers moved on: move on too */
                return SHMQ_ECORRUPT; /* untrusted: the tail's rings are never sealed */
            }
            /* level p's ring of the tail area is full (older areas' messages queued there too):
             * grow, as a FIFO put whose ring is full */
            rc = shmq_seg_grow(q, k, 0, grow_deadline_ns);
            if (rc != SHMQ_OK)
                return rc == SHMQ_ENOMEM ? SHMQ_FULL : rc;
        }
    }
    SHMQ_CRASH_POINT(prio_before_bit);
    bit_set(s, p);
    return SHMQ_OK;
}

static int prio_room(shmq_seg_t *q, uint32_t priority)
{
    prio_state_t *s = P(q);
    uint32_t p = level_of(s, priority);
    if (SHMQ_LIKELY(!s->growable))
        return shmq_ring_room(&s->rings[p]);
    uint32_t k = shmq_load_acquire(&q->hdr->area_tail);
    shmq_ring_t tmp;
    const shmq_ring_t *r = k < q->max_areas ? ring_at(q, s, k, p, &tmp) : NULL;
    return r ? shmq_ring_room(r) : 0;
}

/* Take from level p: its chain's first ring; a drained ring below the tail area is sealed and
 * the level moves on (as a FIFO consumer moves area_head). SHMQ_OK, SHMQ_EMPTY, SHMQ_ECORRUPT. */
static int level_take(shmq_seg_t *q, prio_state_t *s, uint32_t p, shmq_take_fn take, void *ctx, uint64_t *handle)
{
    if (SHMQ_LIKELY(!s->growable)) {
        int rc = shmq_ring_get_mpmc(&s->rings[p], take, ctx, handle);
        return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc;
    }
    for (uint32_t tries = 0; tries < 2 * SHMQ_MAX_AREAS + 8; tries++) {
        uint32_t tail, k = lhead_of(q, s, p, &tail);
        shmq_ring_t tmp;
        const shmq_ring_t *r = ring_at(q, s, k, p, &tmp);
        if (!r) { /* retired (lhead has moved past it, or was garbage): move on */
            if (k < tail)
                shmq_cas_acq_rel(&s->hdr->lhead[p], &k, k + 1);
            continue;
        }
        int rc = shmq_ring_get_mpmc((shmq_ring_t *)r, take, ctx, handle);
        if (rc == SHMQ_OK)
            return SHMQ_OK;
        if (rc == SHMQ_EMPTY && k >= tail)
            return SHMQ_EMPTY;
        if (rc == SHMQ_EMPTY && shmq_ring_seal_mpmc((shmq_ring_t *)r) != SHMQ_OK)
            continue; /* a message arrived meanwhile: take it */
        if (rc != SHMQ_EMPTY && rc != SHMQ_ESEALED)
            return rc;
        if (k >= tail)
            return SHMQ_ECORRUPT; /* untrusted: the tail area's ring is never sealed */
        /* sealed and drained (by us now, or by a consumer that died before moving lhead) */
        SHMQ_CRASH_POINT(prio_after_seal);
        shmq_cas_acq_rel(&s->hdr->lhead[p], &k, k + 1);
        heads_advance(q, s);
    }
    return SHMQ_EMPTY;
}

/* The head message's put time of a level, or UINT64_MAX (a racy look: only a hint). */
static uint64_t head_time(shmq_seg_t *q, prio_state_t *s, uint32_t p)
{
    uint64_t n = 0, handle;
    uint32_t tail, k = s->growable ? lhead_of(q, s, p, &tail) : 0;
    shmq_ring_t tmp;
    const shmq_ring_t *r = ring_at(q, s, k, p, &tmp);
    if (!r || shmq_ring_nth(r, &n, &handle) != SHMQ_OK)
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
    int rescued = 0;
    /* untrusted: bounded; a sane bitmap needs a round per level at most (plus lost races) */
    for (uint32_t tries = 0; tries < 4 * s->levels + 16; tries++) {
        uint64_t bits = shmq_load_seq(&s->hdr->bits) & s->mask;
        if (!bits) {
            /* a dead producer's message may sit under a clear bit: look, but not on every poll */
            uint64_t now = shmq_ticks();
            if (rescued || now - s->rescue_ticks < RESCUE_TICKS)
                return SHMQ_EMPTY;
            s->rescue_ticks = now;
            rescued = 1;
            if (!bits_rescue(q, s))
                return SHMQ_EMPTY;
            continue;
        }
        uint32_t p = 63u - (uint32_t)__builtin_clzll(bits);
        if (SHMQ_UNLIKELY(s->max_wait_ns != 0) && (bits & (bits - 1)))
            p = aged_level(q, s, bits, p);
        int rc = level_take(q, s, p, take, ctx, handle);
        if (rc == SHMQ_OK)
            return SHMQ_OK;
        if (rc == SHMQ_EMPTY) {
            bit_clear_if_empty(q, s, p);
            continue;
        }
        return rc;
    }
    return SHMQ_EMPTY;
}

static uint64_t prio_count(shmq_seg_t *q)
{
    prio_state_t *s = P(q);
    uint64_t n = 0;
    for (uint32_t p = 0; p < s->levels; p++)
        n += level_count(q, s, p);
    return n;
}

static void prio_foreach(shmq_seg_t *q, void (*visit)(void *ctx, uint64_t handle), void *ctx)
{
    prio_state_t *s = P(q);
    uint32_t tail = s->growable ? shmq_load_acquire(&q->hdr->area_tail) : 0;
    if (tail >= q->max_areas)
        tail = q->max_areas - 1; /* untrusted */
    /* every live area's rings (not only from lhead: a snapshot for repair errs on the safe side) */
    for (uint32_t k = 0; k <= tail; k++) {
        int rc;
        if (k != 0 && !shmq_seg_area_live(q, k, &rc))
            continue;
        for (uint32_t p = 0; p < s->levels; p++) {
            shmq_ring_t tmp;
            const shmq_ring_t *r = ring_at(q, s, k, p, &tmp);
            if (r)
                shmq_ring_foreach(r, visit, ctx);
        }
    }
}

/* Delivery order under strict priority: the highest level first (aging not applied). */
static int prio_nth(shmq_seg_t *q, uint64_t *n, uint64_t *handle)
{
    prio_state_t *s = P(q);
    for (uint32_t p = s->levels; p-- > 0;) {
        uint32_t tail = 0, k = s->growable ? lhead_of(q, s, p, &tail) : 0;
        for (; k <= tail; k++) {
            shmq_ring_t tmp;
            const shmq_ring_t *r = ring_at(q, s, k, p, &tmp);
            int rc = r ? shmq_ring_nth(r, n, handle) : SHMQ_EMPTY;
            if (rc != SHMQ_EMPTY)
                return rc;
        }
    }
    return SHMQ_EMPTY;
}

/* After a dead participant's repair: the bits it may have left clear, and the heads it may have
 * left behind (killed between sealing a level's ring and moving the level or area_head on). */
static void prio_repair(shmq_seg_t *q)
{
    prio_state_t *s = P(q);
    if (s->growable) {
        /* untrusted: a level head moved past a ring that still holds messages (only garbage
         * does that: a ring is sealed drained) would strand them; move it back to that ring */
        uint32_t ah = shmq_load_acquire(&q->hdr->area_head), tail;
        for (uint32_t p = 0; p < s->levels; p++) {
            uint32_t k = lhead_of(q, s, p, &tail);
            for (uint32_t j = ah; j < k; j++) {
                shmq_ring_t tmp;
                const shmq_ring_t *r = ring_at(q, s, j, p, &tmp);
                if (r && shmq_ring_count(r) != 0) {
                    shmq_cas_acq_rel(&s->hdr->lhead[p], &k, j);
                    break;
                }
            }
        }
        heads_advance(q, s);
    }
    bits_rescue(q, s);
}

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
    s->growable = (q->hdr->flags & SHMQ_F_GROWABLE) != 0;
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
        counts[p] = level_count(q, s, p);
    return n;
}

uint64_t shmq_prio_max_wait_ns(shmq_seg_t *q) { return q->ready == &prio_ops ? P(q)->max_wait_ns : 0; }
