#define _GNU_SOURCE
#include "queue.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "atomic.h"
#include "crashpoint.h"
#include "hist.h"
#include "lock.h"
#include "participants.h"
#include "queue_int.h"
#include "journal.h"
#include "wait.h"

static uint64_t spin_ns = SHMQ_SPIN_NS_DEFAULT;
#define SHMQ_DEFER_AFTER_NS (1000ull * 1000) /* get waits this long for an arena lock, then defers */
void shmq_set_spin_ns(uint64_t ns) { __atomic_store_n(&spin_ns, ns, __ATOMIC_RELAXED); }
uint64_t shmq_get_spin_ns(void) { return __atomic_load_n(&spin_ns, __ATOMIC_RELAXED); }

#define desc_at shmq_q_desc
#define payload_ptr shmq_q_payload

int shmq_q_payload_valid(shmq_area_t *a, shmq_desc_t *d)
{
    uint64_t size = d->size;
    return d->chunk == SHMQ_NO_CHUNK ? size <= SHMQ_INLINE_MAX
                                     : (shmq_arena_ref_valid(a, d->chunk, d->chunk_order) &&
                                        size <= ((uint64_t)SHMQ_ARENA_UNIT << d->chunk_order));
}

/* Whether FREE descriptor d would serve a put of chunk order want (UINT32_MAX: inline) without
 * the arena lock: a hint read without owning d (parked_fits re-checks once it is ours). */
static inline int desc_warm(shmq_desc_t *d, uint32_t want)
{
    uint32_t ch = shmq_load_relaxed(&d->chunk);
    if (want == UINT32_MAX)
        return ch == SHMQ_NO_CHUNK;
    return ch != SHMQ_NO_CHUNK && shmq_load_relaxed(&d->chunk_order) == want;
}

/* Claim FREE descriptor i (its word was w); the cursor moves to next. */
static int desc_try(shmq_seg_t *q, shmq_area_t *a, uint32_t i, uint32_t next, uint64_t w, uint32_t *idx, uint32_t *dgen)
{
    shmq_desc_t *d = desc_at(a, i);
    uint32_t g = (shmq_desc_dgen(w) + 1) & SHMQ_DGEN_MASK;
    /* seq_cst: acquire for the previous owner's writes (chunk reference); ordered before
     * our later load of the area's state (retire_drained's handshake, segment.c) */
    if (!shmq_cas_seq(&d->word, &w, shmq_desc_word(g, SHMQ_D_WRITING, q->owner)))
        return 0;
    __atomic_store_n(&a->desc_cursor, next, __ATOMIC_RELAXED);
    *idx = i;
    *dgen = g;
    return 1;
}

#define SHMQ_WARM_PROBES 8u

/* Claim a FREE descriptor: a scan from this process's cursor. Frees happen in roughly FIFO
 * order, so the next descriptor after the last one claimed is usually free. Parked chunks
 * (arena.h): when that descriptor is cold for this payload (no parked chunk of its order, or a
 * chunk an inline payload would have to return), up to SHMQ_WARM_PROBES others are tried first:
 * for a chunk, those at the start of the table (the cursor goes back there, so a steady flow
 * cycles over a working set as deep as the queue, whose chunks stay parked: without this the
 * cursor laps the whole table and the arena runs out of parked room before it comes round), for
 * an inline payload the next ones. Bounded: at most 8 extra loads per cold claim. */
static int desc_claim(shmq_seg_t *q, shmq_area_t *a, uint32_t want, uint32_t *idx, uint32_t *dgen)
{
    uint32_t n = a->n_desc;
    uint32_t start = __atomic_load_n(&a->desc_cursor, __ATOMIC_RELAXED);
    int probed = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = start + k;
        if (i >= n)
            i -= n;
        shmq_desc_t *d = desc_at(a, i);
        uint64_t w = shmq_load_relaxed(&d->word);
        if (shmq_desc_state(w) != SHMQ_D_FREE)
            continue;
        if (SHMQ_UNLIKELY(!probed && !desc_warm(d, want))) {
            probed = 1;
            uint32_t base = want == UINT32_MAX ? i + 1 : 0;
            for (uint32_t j = 0; j < SHMQ_WARM_PROBES && j < n; j++) {
                uint32_t pi = (base + j) % n;
                shmq_desc_t *pd = desc_at(a, pi);
                uint64_t pw = shmq_load_relaxed(&pd->word);
                if (pi != i && shmq_desc_state(pw) == SHMQ_D_FREE && desc_warm(pd, want) &&
                    desc_try(q, a, pi, pi, pw, idx, dgen)) /* next claim starts here: freed again by then? */
                    return SHMQ_OK;
            }
        }
        if (desc_try(q, a, i, i + 1 < n ? i + 1 : 0, w, idx, dgen))
            return SHMQ_OK;
    }
    return SHMQ_FULL;
}

static uint32_t reclaim_returning_locked(shmq_seg_t *q, shmq_area_t *a);

/* Release a descriptor we own (WRITING or READING) back to FREE. Its chunk, if any, stays
 * recorded in it: parked for the next put that claims the descriptor (arena.h), so neither side
 * of a put/get takes the arena lock when sizes repeat. No lock here: a stopped process holds no
 * chunk that another cannot reach. */
static void desc_release(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d)
{
    (void)q;
    if (d->chunk != SHMQ_NO_CHUNK && SHMQ_UNLIKELY(!shmq_load_relaxed(&a->hdr->parked_hint)))
        shmq_store_relaxed(&a->hdr->parked_hint, 1u);
    uint64_t w = shmq_load_relaxed(&d->word);
    /* exchange (a full barrier on x86): our reads of the payload are done before anyone may
     * reuse the chunk, and the free is visible before we read the put-waiter count
     * (lost-wake-up rule, wait.h). */
    shmq_exchange_seq(&d->word, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_FREE, 0));
}

/* Arena lock held. Take back the parked chunks of area a's FREE descriptors (the arena is full
 * for a put): each descriptor is first won by CAS (FREE -> WRITING(us), the same dgen), so a
 * put claiming it at the same moment either gets it with its chunk or not at all. How many. */
static uint32_t unpark_locked(shmq_seg_t *q, shmq_area_t *a)
{
    uint32_t n = 0;
    if (!shmq_load_relaxed(&a->hdr->parked_hint))
        return 0;
    for (uint32_t k = 0; k < a->n_desc; k++) {
        shmq_desc_t *d = desc_at(a, k);
        uint64_t w = shmq_load_relaxed(&d->word);
        if (shmq_desc_state(w) != SHMQ_D_FREE || shmq_load_relaxed(&d->chunk) == SHMQ_NO_CHUNK)
            continue;
        uint64_t exp = w;
        if (!shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_WRITING, q->owner)))
            continue;
        /* killed here: the lock is stolen and rebuilt (the descriptor still records its chunk),
         * and repair frees the descriptor we hold (queue_repair_owner: WRITING of a dead owner) */
        SHMQ_CRASH_POINT(chunk_mid_unpark);
        if (d->chunk != SHMQ_NO_CHUNK)
            shmq_arena_free_locked(a, d);
        shmq_exchange_seq(&d->word, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_FREE, 0));
        n++;
    }
    return n;
}

/* Repair only (cold): release a dead owner's descriptor and give its chunk back to the arena
 * itself, not parked, so a repaired slot leaves its room in the free lists. */
static void desc_release_to_arena(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d)
{
    if (d->chunk != SHMQ_NO_CHUNK) {
        int rc = shmq_lock_acquire(q, &a->hdr->arena_lock, &a->arena_busy, SHMQ_NO_DEADLINE);
        if (rc == SHMQ_EAGAIN)
            shmq_arena_rebuild_locked(a); /* the previous holder died mid-update */
        shmq_arena_free_locked(a, d);
        shmq_lock_release(q, &a->hdr->arena_lock, &a->arena_busy);
    }
    desc_release(q, a, d);
}

/* 1 if the chunk parked in d (just claimed by us) is a sane block of the order we need.
 * untrusted: in the arena, aligned, and the metadata agrees it is a used block of that order
 * (nobody else changes the metadata of a block a descriptor we hold records). */
static inline int parked_fits(shmq_area_t *a, shmq_desc_t *d, uint32_t want)
{
    uint32_t unit = d->chunk, order = d->chunk_order;
    return order == want && shmq_arena_ref_valid(a, unit, order) && a->meta[unit] == (SHMQ_META_USED | order);
}

/* The arena lock stayed held (a stopped holder): claim a FREE descriptor that needs no lock for
 * this payload, one parking a fitting chunk (or, for an inline payload, none). A scan of the
 * area's descriptors: only when the lock is unavailable. */
static int claim_fit(shmq_seg_t *q, shmq_area_t *a, uint32_t want, uint32_t *idx, uint32_t *dgen)
{
    for (uint32_t k = 0; k < a->n_desc; k++) {
        shmq_desc_t *d = desc_at(a, k);
        uint64_t w = shmq_load_relaxed(&d->word);
        if (shmq_desc_state(w) != SHMQ_D_FREE)
            continue;
        uint32_t ch = shmq_load_relaxed(&d->chunk);
        if (want == UINT32_MAX ? ch != SHMQ_NO_CHUNK : (ch == SHMQ_NO_CHUNK || shmq_load_relaxed(&d->chunk_order) != want))
            continue;
        uint32_t g = (shmq_desc_dgen(w) + 1) & SHMQ_DGEN_MASK;
        if (!shmq_cas_seq(&d->word, &w, shmq_desc_word(g, SHMQ_D_WRITING, q->owner)))
            continue;
        /* re-check now that it is ours (it may have changed hands in between) */
        if (want == UINT32_MAX ? d->chunk == SHMQ_NO_CHUNK : parked_fits(a, d, want)) {
            *idx = k;
            *dgen = g;
            return SHMQ_OK;
        }
        shmq_exchange_seq(&d->word, shmq_desc_word(g, SHMQ_D_FREE, 0));
    }
    return SHMQ_FULL;
}

uint64_t shmq_q_parked_units(shmq_area_t *a)
{
    uint64_t n = 0;
    if (!shmq_load_relaxed(&a->hdr->parked_hint))
        return 0;
    for (uint32_t k = 0; k < a->n_desc; k++) {
        shmq_desc_t *d = desc_at(a, k);
        if (shmq_desc_state(shmq_load_acquire(&d->word)) != SHMQ_D_FREE)
            continue;
        uint32_t unit = shmq_load_relaxed(&d->chunk);
        uint32_t order = shmq_load_relaxed(&d->chunk_order);
        if (unit != SHMQ_NO_CHUNK && shmq_arena_ref_valid(a, unit, order))
            n += 1ull << order;
    }
    return n;
}

/* Publish the CPU we run on (spin policy of the other side). sched_getcpu is a TLS read with
 * rseq (glibc >= 2.35); the slot line is written only when the CPU changed. */
static inline void note_cpu(shmq_seg_t *q)
{
    if (q->slot == UINT32_MAX)
        return;
    uint32_t cpu = (uint32_t)shmq_current_cpu();
    uint32_t *w = &q->slots[q->slot].cpu;
    if (shmq_load_relaxed(w) != cpu)
        shmq_store_relaxed(w, cpu);
}

/* The queue's three wait queues (wait.h): not_empty and not_full with coalesced wake-ups (a
 * getter that leaves a sleep with messages still queued passes the wake on; putters are all
 * woken, since they wait for different amounts of room), join without. */
static inline void wake_getters(shmq_seg_t *q) { shmq_waitq_wake(&q->hdr->not_empty, 1, 1); }
static inline void wake_putters(shmq_seg_t *q) { shmq_waitq_wake(&q->hdr->not_full, INT32_MAX, 1); }

void shmq_wake_all(shmq_seg_t *q)
{
    shmq_header_t *h = q->hdr;
    __atomic_store_n(&q->closing, 1, __ATOMIC_SEQ_CST);
    shmq_waitq_wake_all(&h->not_empty);
    shmq_waitq_wake_all(&h->not_full);
    shmq_waitq_wake_all(&h->join);
}

/* A whole slice asleep: look for dead participants and repair them (they may hold the room or
 * descriptors we wait for); at most one sweep per slice per handle. */
static void liveness_slice(void *ctx)
{
    shmq_seg_t *q = ctx;
    if (shmq_now_mono_ns() - q->last_liveness_ns >= SHMQ_LIVENESS_SLICE_NS) {
        q->last_liveness_ns = shmq_now_mono_ns();
        shmq_repair_dead(q);
    }
}

typedef int (*check_fn)(shmq_seg_t *q, void *ctx);
typedef struct {
    shmq_seg_t *q;
    check_fn check;
    void *ctx;
} check_ctx;

static int run_check(void *vctx)
{
    check_ctx *c = vctx;
    return c->check(c->q, c->ctx);
}

/* Sleep on one of the queue's wait queues as this handle's slot (wait.h: shmq_waitq_sleep).
 * slot_unit: what the sleeper adds to its slot's waiting entry (repair undoes it if it dies). */
static int sleep_until(shmq_seg_t *q, shmq_waitq_t *wq, int coalesced, uint32_t slot_unit, check_fn check,
                       void *ctx, uint64_t deadline_ns)
{
    shmq_slot_t *sl = q->slot != UINT32_MAX ? &q->slots[q->slot] : NULL;
    shmq_sleeper_t who = {.slot_waiting = sl ? &sl->waiting : NULL, .slot_unit = slot_unit,
                          .run_state = sl ? &sl->run_state : NULL, .on_slice = liveness_slice, .slice_ctx = q,
                          .closing = &q->closing, .poll_signals = q->poll_signals};
    check_ctx c = {q, check, ctx};
    return shmq_waitq_sleep(wq, coalesced, run_check, &c, &who, deadline_ns);
}

shmq_area_t *shmq_q_area_next(shmq_seg_t *q, uint32_t *i)
{
    shmq_header_t *h = q->hdr;
    uint32_t tail = shmq_load_acquire(&h->area_tail);
    for (; *i <= tail && *i < q->max_areas; (*i)++) {
        int rc;
        shmq_area_t *a = shmq_seg_area_live(q, *i, &rc);
        if (a)
            return a;
    }
    return NULL;
}

/* ---------------------------------------------------------------- put */

/* maxsize units. h->count = op sequence:32 | units:32: every take and give bumps the sequence,
 * so a recount's CAS fails if anything changed since it read the word (no ABA).
 * A unit and the descriptor that holds it change in two steps; a slot between them says so in
 * its unit_busy (taker: from the take until its descriptor is claimed; giver: from freeing the
 * descriptor until the give). A process killed between the steps leaks its unit; a recount
 * (units_recount, run when a put finds the queue full and a sweep found nothing to repair)
 * sets units to the number of descriptors that hold one, when no live slot is between steps.
 * Units only ever go down to what the descriptors hold: never below a live holder's unit. */
#define UNITS(c) ((uint32_t)(c))
#define UNIT_SEQ (1ull << 32)

static inline void unit_busy(shmq_seg_t *q, int d)
{
    if (q->slot != UINT32_MAX) /* seq_cst: ordered before the recount's look at the slots */
        __atomic_fetch_add(&q->slots[q->slot].unit_busy, (uint32_t)d, __ATOMIC_SEQ_CST);
}

static int units_take(shmq_header_t *h)
{
    uint64_t c = shmq_load_relaxed(&h->count);
    for (;;) {
        if (UNITS(c) >= h->maxsize)
            return SHMQ_FULL;
        if (shmq_cas_seq(&h->count, &c, c + UNIT_SEQ + 1))
            return SHMQ_OK;
    }
}

static void units_give(shmq_header_t *h)
{
    uint64_t c = shmq_load_relaxed(&h->count);
    for (;;) {
        if (UNITS(c) == 0)
            return; /* untrusted: nothing to give back (a recount already took it) */
        if (shmq_cas_seq(&h->count, &c, c + UNIT_SEQ - 1))
            return;
    }
}

/* Return a descriptor we own and its unit (maxsize queues): the two steps inside unit_busy. */
static void release_with_unit(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, void (*release)(shmq_seg_t *, shmq_area_t *, shmq_desc_t *))
{
    if (SHMQ_UNLIKELY(q->journal != NULL))
        q->journal->hk->remove(q, d->id); /* the message leaves the queue (journal.h) */
    if (!q->hdr->maxsize) {
        release(q, a, d);
        return;
    }
    unit_busy(q, 1);
    release(q, a, d);
    units_give(q->hdr);
    unit_busy(q, -1);
}

static int any_unit_busy(shmq_seg_t *q)
{
    uint32_t hwm = shmq_load_relaxed(&q->hdr->slot_hwm);
    if (hwm > q->max_slots)
        hwm = q->max_slots; /* untrusted */
    for (uint32_t s = 0; s < hwm; s++)
        if (shmq_load_seq(&q->slots[s].state) == SHMQ_SLOT_ATTACHED && shmq_load_seq(&q->slots[s].unit_busy))
            return 1;
    return 0;
}

/* Give back units no descriptor holds (leaked by deaths between the two steps). 1 if it did. */
static int units_recount(shmq_seg_t *q)
{
    shmq_header_t *h = q->hdr;
    uint64_t c0 = shmq_load_seq(&h->count);
    if (!h->maxsize || UNITS(c0) < h->maxsize || any_unit_busy(q))
        return 0;
    uint64_t held = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            uint32_t st = shmq_desc_state(shmq_load_seq(&shmq_q_desc(a, k)->word));
            held += st != SHMQ_D_FREE && st != SHMQ_D_RETURNING; /* RETURNING: its unit went back at get_end */
        }
    if (held >= UNITS(c0) || any_unit_busy(q))
        return 0;
    /* seq_cst CAS: fails if any take or give happened since c0 */
    return shmq_cas_seq(&h->count, &c0, (c0 & ~0xffffffffull) + UNIT_SEQ + held);
}

typedef struct {
    const shmq_iov_t *iov;
    uint32_t n;
    uint64_t total;
    uint32_t kind;
    int counted;     /* maxsize reservation held */
    shmq_area_t *a;  /* descriptor held in this area */
    uint32_t idx;
    uint32_t dgen;
    const shmq_put_ext_t *x; /* a kind's additions (lease.c), or NULL */
    uint64_t deadline_ns;    /* the caller's: lock waits honour it */
} put_ctx;

/* How long a put waits for the arena or grow lock: at most one liveness slice (then it reports
 * "no room now" and the caller sleeps, interruptibly, before it tries again), never past the
 * caller's deadline, and 1 ms for a put that may not wait at all: a stopped holder costs a
 * put_nowait 1 ms and a Full, not a hang (issue 11 item 4). */
static uint64_t lock_until_for(uint64_t deadline_ns, uint64_t nowait_ns)
{
    uint64_t now = shmq_now_mono_ns();
    if (deadline_ns == 0)
        return now + nowait_ns;
    if (deadline_ns <= now)
        return now; /* passed: one attempt */
    return deadline_ns - now > SHMQ_LIVENESS_SLICE_NS ? now + SHMQ_LIVENESS_SLICE_NS : deadline_ns;
}
/* The arena lock is held for a few list operations: 1 ms is long. A grow legitimately holds its
 * lock while the kernel zeroes a new area (up to 1 GiB): a put that may not wait gives a live
 * grower 1 s before it reports no room, so only a stopped grower makes put_nowait raise Full. */
#define SHMQ_GROW_NOWAIT_NS (1000ull * 1000 * 1000)
static inline uint64_t lock_until(uint64_t deadline_ns) { return lock_until_for(deadline_ns, SHMQ_DEFER_AFTER_NS); }
static inline uint64_t grow_until(uint64_t deadline_ns) { return lock_until_for(deadline_ns, SHMQ_GROW_NOWAIT_NS); }

static void put_undo(shmq_seg_t *q, put_ctx *c)
{
    unit_busy(q, 1); /* between the descriptor's release and the unit's */
    if (c->a) {
        desc_release(q, c->a, desc_at(c->a, c->idx));
        c->a = NULL;
    }
    if (c->counted) {
        units_give(q->hdr);
        c->counted = 0;
    }
    unit_busy(q, -1);
}

static int reserve_room(shmq_seg_t *q, put_ctx *c);

/* One non-blocking attempt to get room: unit (maxsize), descriptor (+chunk) held on success;
 * nothing held on failure (a producer waiting for room holds no unit while it sleeps). */
static int put_reserve(shmq_seg_t *q, put_ctx *c)
{
    shmq_header_t *h = q->hdr;
    if (!h->maxsize)
        return reserve_room(q, c);
    unit_busy(q, 1); /* from the take until the descriptor holds the unit */
    int rc = units_take(h);
    if (rc != SHMQ_OK)
        q->full_why = SHMQ_WHY_MAXSIZE;
    if (rc == SHMQ_OK) {
        rc = reserve_room(q, c);
        if (rc == SHMQ_OK)
            c->counted = 1;
        else
            units_give(h);
    }
    unit_busy(q, -1);
    return rc;
}

static int reserve_room(shmq_seg_t *q, put_ctx *c)
{
    shmq_header_t *h = q->hdr;
    for (int tries = 0;; tries++) {
        if (tries > 256)
            return SHMQ_ECORRUPT; /* untrusted: a sane segment needs a few rounds (grow, retire races) */
        uint32_t ai = shmq_load_acquire(&h->area_tail);
        int rc;
        shmq_area_t *a = shmq_seg_area(q, ai, &rc);
        if (!a) {
            if (rc == SHMQ_ESEALED && shmq_load_acquire(&h->area_tail) != ai)
                continue; /* retired since we read the index: read it again */
            return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc;
        }
        uint32_t want = c->total <= SHMQ_INLINE_MAX ? UINT32_MAX : shmq_arena_order_for(c->total);
        if (desc_claim(q, a, want, &c->idx, &c->dgen) == SHMQ_OK) {
            SHMQ_CRASH_POINT(after_desc_claim);
            shmq_desc_t *d = desc_at(a, c->idx);
            /* seq_cst, pairs with retire_drained: a stale area_tail may name an area being given
             * back; then let go of the descriptor and look again. */
            if (SHMQ_UNLIKELY(shmq_load_seq(&h->areas[ai].state) != 1)) {
                shmq_exchange_seq(&d->word, shmq_desc_word(c->dgen, SHMQ_D_FREE, 0));
                continue;
            }
            c->a = a;
            if (d->chunk == SHMQ_NO_CHUNK) {
                if (want == UINT32_MAX)
                    return SHMQ_OK;
            } else if (SHMQ_LIKELY(parked_fits(a, d, want))) {
                /* the descriptor's parked chunk fits: the hot path, no arena lock */
                SHMQ_CRASH_POINT(chunk_reused);
                return SHMQ_OK;
            } else if (!shmq_arena_ref_valid(a, d->chunk, d->chunk_order)) {
                d->chunk = SHMQ_NO_CHUNK; /* untrusted: garbage is never handed to the arena */
                if (want == UINT32_MAX)
                    return SHMQ_OK;
            }
            /* a free lock is the common case: no clock read for a deadline unless we must wait */
            rc = shmq_lock_try_once(q, &a->hdr->arena_lock, &a->arena_busy);
            if (rc != SHMQ_OK)
                rc = shmq_lock_acquire(q, &a->hdr->arena_lock, &a->arena_busy, lock_until(c->deadline_ns));
            if (rc == SHMQ_TIMEOUT) { /* held (by a stopped process?) */
                desc_release(q, a, d); /* a parked chunk stays with the descriptor */
                c->a = NULL;
                if (claim_fit(q, a, want, &c->idx, &c->dgen) == SHMQ_OK) {
                    /* another FREE descriptor parks what we need: no lock needed */
                    if (SHMQ_LIKELY(shmq_load_seq(&h->areas[ai].state) == 1)) {
                        c->a = a;
                        return SHMQ_OK;
                    }
                    desc_release(q, a, desc_at(a, c->idx)); /* being given back (see above) */
                }
                q->full_why = SHMQ_WHY_BUSY; /* no room now */
                return SHMQ_FULL;
            }
            if (rc == SHMQ_EAGAIN)
                shmq_arena_rebuild_locked(a);
            if (SHMQ_UNLIKELY(shmq_load_relaxed(&a->hdr->returning)))
                reclaim_returning_locked(q, a);
            if (d->chunk != SHMQ_NO_CHUNK) {
                /* a parked chunk of another size: swap it (one lock round instead of two) */
                shmq_arena_free_locked(a, d);
                SHMQ_CRASH_POINT(chunk_mid_swap);
            }
            rc = SHMQ_OK;
            if (want != UINT32_MAX) {
                rc = shmq_arena_alloc_locked(a, d, c->total);
                if (rc == SHMQ_FULL && reclaim_returning_locked(q, a))
                    rc = shmq_arena_alloc_locked(a, d, c->total); /* room consumers left to return */
                if (rc == SHMQ_FULL && unpark_locked(q, a))
                    rc = shmq_arena_alloc_locked(a, d, c->total); /* room parked in FREE descriptors */
            }
            shmq_lock_release(q, &a->hdr->arena_lock, &a->arena_busy);
            if (rc == SHMQ_OK) {
                if (want != UINT32_MAX)
                    SHMQ_CRASH_POINT(after_alloc);
                return SHMQ_OK;
            }
            desc_release(q, a, d);
            c->a = NULL;
            q->full_why = SHMQ_WHY_BYTES;
        } else {
            q->full_why = SHMQ_WHY_SLOTS;
        }
        if (!(h->flags & SHMQ_F_GROWABLE))
            return SHMQ_FULL;
        rc = shmq_seg_grow(q, ai, c->total, grow_until(c->deadline_ns));
        if (rc == SHMQ_FULL)
            q->full_why = SHMQ_WHY_BUSY; /* the grow lock stayed held */
        if (rc != SHMQ_OK)
            return rc;
    }
}

static int put_check(shmq_seg_t *q, void *ctx)
{
    int rc = put_reserve(q, (put_ctx *)ctx);
    return rc == SHMQ_FULL ? SHMQ_EAGAIN : rc;
}

/* Room in a ring (for a producer that already holds its descriptor). */
static int ring_room_check(shmq_seg_t *q, void *ctx)
{
    (void)q;
    shmq_area_t *a = ctx;
    return shmq_ring_room(&a->ring) ? SHMQ_OK : SHMQ_EAGAIN;
}

/* The grow lock stayed held for a whole wait while we hold a READY descriptor: wait again unless
 * the caller's deadline passed (*rc = SHMQ_FULL) or signals are to be checked (*rc = SHMQ_EINTR:
 * the put is undone and the binding calls again). Each round waited up to a slice: no spin. */
static int grow_wait_again(shmq_seg_t *q, uint64_t deadline_ns, int *rc)
{
    q->full_why = SHMQ_WHY_BUSY;
    if (deadline_ns == 0)
        return 0; /* *rc stays SHMQ_FULL: a put that may not wait reports no room */
    if (q->poll_signals) {
        *rc = SHMQ_EINTR;
        return 0;
    }
    return deadline_ns != 0 && shmq_now_mono_ns() < deadline_ns;
}

typedef struct {
    uint64_t handle;
    uint32_t priority;
} ready_ctx;

static int ready_room_check(shmq_seg_t *q, void *ctx)
{
    ready_ctx *r = ctx;
    return q->ready->room(q, r->priority) ? SHMQ_OK : SHMQ_EAGAIN;
}

/* Publish into the kind's ready structure (seg->ready): as a bounded ring, wait for room. */
static int ready_publish_wait(shmq_seg_t *q, uint64_t handle, uint32_t priority, uint64_t deadline_ns)
{
    ready_ctx r = {handle, priority};
    for (;;) {
        int rc = q->ready->publish(q, handle, priority, grow_until(deadline_ns));
        if (rc != SHMQ_FULL)
            return rc;
        rc = deadline_ns == 0 ? SHMQ_TIMEOUT
                              : sleep_until(q, &q->hdr->not_full, 1, 1u << 16, ready_room_check, &r, deadline_ns);
        if (rc == SHMQ_TIMEOUT) {
            q->full_why = SHMQ_WHY_SLOTS;
            return SHMQ_FULL;
        }
        if (rc != SHMQ_OK && rc != SHMQ_EAGAIN)
            return rc;
    }
}

static int put_commit(shmq_seg_t *q, put_ctx *c, uint64_t deadline_ns, uint64_t *id_out)
{
    shmq_header_t *h = q->hdr;
    shmq_area_t *a = c->a;
    shmq_desc_t *d = desc_at(a, c->idx);
    uint8_t *dst = payload_ptr(a, d);
    uint64_t off = 0;
    const shmq_put_ext_t *x = c->x;
    for (uint32_t i = 0; i < c->n; i++) {
        uint64_t len = c->iov[i].len, half = i == 0 ? len / 2 : 0;
        if (half) /* the first piece in two halves, so the crash point lies inside the payload */
            memcpy(dst + off, c->iov[i].ptr, half);
        if (i == 0)
            SHMQ_CRASH_POINT(mid_copy);
        if (len - half)
            memcpy(dst + off + half, (const uint8_t *)c->iov[i].ptr + half, len - half);
        off += len;
    }
    uint64_t id = x && x->id ? x->id : shmq_fetch_add_relaxed(&h->next_id, 1);
    d->id = id;
    d->timestamp_ns = shmq_now_wall_coarse_ns();
    d->deadline_ns = 0;
    d->size = (uint32_t)c->total;
    d->kind = (uint8_t)c->kind;
    d->priority = x ? (uint8_t)x->priority : 0;
    d->flags = x ? (uint8_t)x->flags : 0;
    d->delivery_count = 0;
    d->hdr_size = x ? (uint16_t)x->hdr_size : 0;
    d->expire_ns = x ? x->expire_ns : 0;
    if (SHMQ_UNLIKELY(x && x->delivery_count))
        d->delivery_count = (uint16_t)x->delivery_count; /* journal recovery */
    if (SHMQ_UNLIKELY(q->journal != NULL)) {
        /* the record before READY, so it precedes any remove of this message in the journal */
        int jrc = q->journal->hk->put(q, d, dst, x ? x->delay_ns : 0);
        if (jrc != SHMQ_OK)
            return jrc; /* still WRITING and not counted: the caller undoes the rest */
    }
    if (x && x->delay_ns) {
        /* Delayed: not published; the kind's timers publish it when due. */
        d->deadline_ns = shmq_now_mono_ns() + x->delay_ns;
        shmq_store_release(&d->word, shmq_desc_word(c->dgen, SHMQ_D_DELAYED, q->owner));
        if (h->flags & SHMQ_F_JOINABLE)
            shmq_fetch_add_seq(&h->unfinished, 1);
        shmq_q_hooks(q)->timer(q, d->expire_ns && d->expire_ns < d->deadline_ns ? d->expire_ns : d->deadline_ns);
        if (q->slot != UINT32_MAX)
            shmq_fetch_add_relaxed(&q->slots[q->slot].enqueued, 1);
        if (id_out)
            *id_out = id;
        if (x->handle_out)
            *x->handle_out = shmq_handle_make((uint32_t)(a - q->areas), c->idx, c->dgen);
        c->a = NULL;
        c->counted = 0;
        return SHMQ_OK;
    }
    if (x && x->expire_ns)
        shmq_q_hooks(q)->timer(q, x->expire_ns);
    uint64_t put_ticks = shmq_ticks(); /* time in queue starts here (hist.h); also the spin policy's */
    d->deadline_ns = put_ticks;        /* unused while READY: the first take reads it (hist.h) */
    d->flags |= SHMQ_DF_TICKS;
    /* release: payload and fields before the READY state a consumer's CAS acquires */
    shmq_store_release(&d->word, shmq_desc_word(c->dgen, SHMQ_D_READY, q->owner));
    /* After READY: repair counts a READY descriptor of a dead producer as counted (wait.h). */
    if (h->flags & SHMQ_F_JOINABLE)
        shmq_fetch_add_seq(&h->unfinished, 1);
    uint64_t handle = shmq_handle_make((uint32_t)(a - q->areas), c->idx, c->dgen);
    int rc;
    if (SHMQ_UNLIKELY(q->ready != NULL)) {
        rc = ready_publish_wait(q, handle, d->priority, deadline_ns); /* the kind's ready structure */
        if (rc != SHMQ_OK)
            goto unpublish;
    } else
    for (;;) {
        uint32_t ai = shmq_load_acquire(&h->area_tail);
        shmq_area_t *ta = shmq_seg_area(q, ai, &rc);
        if (!ta) {
            if (rc == SHMQ_ESEALED && shmq_load_acquire(&h->area_tail) != ai)
                continue; /* retired since we read the index: read it again */
            if (rc == SHMQ_ESEALED)
                rc = SHMQ_ECORRUPT;
            goto unpublish;
        }
        rc = shmq_ring_put_mpmc(&ta->ring, handle);
        if (SHMQ_LIKELY(rc == SHMQ_OK)) {
            /* seq_cst, after the publishing CAS: with a stale area_tail we may have published
             * into an area whose memory was given back (its SEALED cell read as EMPTY once
             * zeroed). Nobody consumes there: publish again in the current tail. */
            if (SHMQ_UNLIKELY(shmq_load_seq(&h->areas[ai].state) != 1))
                continue;
            break;
        }
        if (rc == SHMQ_ESEALED) {
            if (!(h->flags & SHMQ_F_GROWABLE)) {
                rc = SHMQ_ECORRUPT; /* untrusted: a bounded queue is never sealed */
                goto unpublish;
            }
            /* consumers sealed this area after producers moved on: move on too */
            if (shmq_load_acquire(&h->area_tail) == ai) {
                rc = shmq_seg_grow(q, ai, 0, grow_until(deadline_ns));
                if (rc == SHMQ_FULL && grow_wait_again(q, deadline_ns, &rc))
                    continue;
                if (rc != SHMQ_OK)
                    goto unpublish;
            }
            continue;
        }
        /* ring full while we hold a descriptor: grow, or wait for a consumer (bounded) */
        if (h->flags & SHMQ_F_GROWABLE) {
            rc = shmq_seg_grow(q, ai, 0, grow_until(deadline_ns));
            if (rc == SHMQ_FULL && grow_wait_again(q, deadline_ns, &rc))
                continue;
            if (rc != SHMQ_OK)
                goto unpublish;
            continue;
        }
        rc = deadline_ns == 0 ? SHMQ_TIMEOUT
                              : sleep_until(q, &h->not_full, 1, 1u << 16, ring_room_check, ta, deadline_ns);
        if (rc == SHMQ_TIMEOUT || rc == SHMQ_EINTR || rc == SHMQ_ECLOSED) {
            if (rc == SHMQ_TIMEOUT) {
                rc = SHMQ_FULL;
                q->full_why = SHMQ_WHY_SLOTS; /* every ring cell holds a message */
            }
            goto unpublish;
        }
    }
    SHMQ_CRASH_POINT(after_commit);
    if (q->slot != UINT32_MAX) {
        shmq_fetch_add_relaxed(&q->slots[q->slot].enqueued, 1);
        shmq_store_relaxed(&q->slots[q->slot].last_put, put_ticks); /* same line as the counter */
    }
    note_cpu(q);
    if (id_out)
        *id_out = id;
    c->a = NULL;
    c->counted = 0;
    wake_getters(q);
    return SHMQ_OK;
unpublish:
    if (SHMQ_UNLIKELY(q->journal != NULL))
        q->journal->hk->remove(q, id); /* recorded as put: record that it never was */
    /* Not published, so nobody else can hold it: back to WRITING, the caller undoes the rest. */
    if (h->flags & SHMQ_F_JOINABLE)
        __atomic_fetch_sub(&h->unfinished, 1, __ATOMIC_SEQ_CST);
    shmq_store_release(&d->word, shmq_desc_word(c->dgen, SHMQ_D_WRITING, q->owner));
    return rc;
}

int shmq_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns, uint64_t *id_out)
{
    const shmq_queue_hooks_t *hk = shmq_q_hooks(q);
    if (SHMQ_UNLIKELY(hk->put != NULL))
        return hk->put(q, iov, n, kind, deadline_ns, id_out); /* the kind's defaults and layout */
    return shmq_q_put(q, iov, n, kind, deadline_ns, id_out, NULL);
}

int shmq_q_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns,
               uint64_t *id_out, const shmq_put_ext_t *x)
{
    shmq_header_t *h = q->hdr;
    put_ctx c = {.iov = iov, .n = n, .total = 0, .kind = kind, .x = x, .deadline_ns = deadline_ns};
    for (uint32_t i = 0; i < n; i++)
        c.total += iov[i].len;
    if (c.total > h->max_message)
        return SHMQ_ETOOBIG;
    int rc = put_reserve(q, &c);
    if (rc == SHMQ_FULL && shmq_now_mono_ns() - q->last_liveness_ns >= SHMQ_LIVENESS_SLICE_NS) {
        /* No room: a dead participant may hold it. Sweep (at most once per slice). */
        q->last_liveness_ns = shmq_now_mono_ns();
        if (shmq_repair_dead(q) | units_recount(q)) /* both: a leaked unit may be all that is missing */
            rc = put_reserve(q, &c);
    }
    while (rc == SHMQ_FULL) {
        if (deadline_ns == 0)
            break;
        rc = sleep_until(q, &h->not_full, 1, 1u << 16, put_check, &c, deadline_ns);
        if (rc == SHMQ_EAGAIN)
            rc = put_reserve(q, &c);
        else if (rc == SHMQ_TIMEOUT) {
            rc = SHMQ_FULL;
            break;
        }
    }
    if (rc != SHMQ_OK) {
        put_undo(q, &c);
        return rc;
    }
    if (q->slot != UINT32_MAX && !(q->slots[q->slot].role & SHMQ_ROLE_PRODUCER))
        __atomic_fetch_or(&q->slots[q->slot].role, SHMQ_ROLE_PRODUCER, __ATOMIC_RELAXED);
    rc = put_commit(q, &c, deadline_ns, id_out);
    if (rc != SHMQ_OK)
        put_undo(q, &c);
    return rc;
}

/* ---------------------------------------------------------------- get */

typedef struct {
    shmq_seg_t *q;
    shmq_area_t *a;
    shmq_desc_t *d;
    uint64_t w;   /* the word we installed */
    int mode;     /* 0: READING (get), 1: INFLIGHT with the next generation (receive) */
} take_ctx;

static int take_cb(void *vctx, uint64_t handle)
{
    take_ctx *t = vctx;
    int rc;
    /* untrusted: the handle names an area, a descriptor and a generation; check all three */
    shmq_area_t *a = shmq_seg_area(t->q, shmq_handle_area(handle), &rc);
    if (!a || shmq_handle_idx(handle) >= a->n_desc) {
        __atomic_fetch_add(&t->q->hdr->corrupt_skipped, 1, __ATOMIC_RELAXED);
        return SHMQ_ECORRUPT;
    }
    shmq_desc_t *d = desc_at(a, shmq_handle_idx(handle));
    uint64_t w = shmq_load_acquire(&d->word);
    if (shmq_desc_state(w) != SHMQ_D_READY || shmq_desc_dgen(w) != (shmq_handle_dgen(handle) & SHMQ_DGEN_MASK))
        return SHMQ_EAGAIN; /* another consumer has it (or it is stale) */
    /* receive: a new generation, so this delivery's stamp differs from every earlier one */
    uint64_t nw = t->mode ? shmq_desc_word(shmq_desc_dgen(w) + 1, SHMQ_D_INFLIGHT, t->q->owner)
                          : shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_READING, t->q->owner);
    if (!shmq_cas_acq_rel(&d->word, &w, nw))
        return SHMQ_EAGAIN;
    t->a = a;
    t->d = d;
    t->w = nw;
    return SHMQ_OK;
}

static int try_get(shmq_seg_t *q, shmq_msg_t *m, int mode)
{
    shmq_header_t *h = q->hdr;
    const shmq_queue_hooks_t *hk = shmq_q_hooks(q);
    if (SHMQ_UNLIKELY(hk->before_take != NULL))
        hk->before_take(q);
    for (;;) {
        uint32_t ai = shmq_load_acquire(&h->area_head);
        int rc;
        shmq_area_t *a = shmq_seg_area(q, ai, &rc);
        if (!a) {
            /* retired since we read the index (it moved on): read it again */
            if (rc == SHMQ_ESEALED && shmq_load_acquire(&h->area_head) != ai)
                continue;
            return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc;
        }
        take_ctx t = {q, NULL, NULL, 0, mode};
        uint64_t handle;
        if (SHMQ_UNLIKELY(q->ready != NULL)) /* the kind's ready structure (prio.c: seals its own rings) */
            rc = q->ready->take(q, take_cb, &t, &handle);
        else
            rc = shmq_ring_get_mpmc(&a->ring, take_cb, &t, &handle);
        if (rc == SHMQ_OK) {
            SHMQ_CRASH_POINT(after_take);
            shmq_desc_t *d = t.d;
            /* untrusted: the payload must lie inside the descriptor or its arena block */
            if (!shmq_q_payload_valid(t.a, d)) {
                __atomic_fetch_add(&h->corrupt_skipped, 1, __ATOMIC_RELAXED);
                d->chunk = SHMQ_NO_CHUNK; /* do not hand a garbage block to the arena */
                desc_release(q, t.a, d);
                continue;
            }
            uint8_t *p = payload_ptr(t.a, d);
            m->handle = handle;
            m->area = t.a;
            m->d = d;
            m->word = t.w;
            m->hdr = p;
            m->hdr_size = 0;
            m->data = p;
            m->size = d->size;
            m->id = d->id;
            m->timestamp_ns = d->timestamp_ns;
            m->kind = d->kind;
            m->delivery_count = d->delivery_count;
            m->priority = d->priority;
            shmq_hist_on_take(q, d);
            if (SHMQ_UNLIKELY(hk->taken != NULL) && hk->taken(q, m, mode) != SHMQ_OK)
                continue; /* the kind disposed of it (its TTL passed while it waited) */
            return SHMQ_OK;
        }
        if (SHMQ_UNLIKELY(q->ready != NULL))
            return rc; /* the kind's structure moves its own heads (prio.c); the area rings are not ours */
        if (rc == SHMQ_ESEALED) {
            uint32_t exp = ai;
            shmq_cas_acq_rel(&h->area_head, &exp, ai + 1); /* help: the next area is where messages are */
            continue;
        }
        if (rc == SHMQ_EMPTY && shmq_load_acquire(&h->area_tail) > ai) {
            /* Producers moved on: seal this drained area so no late put lands here. */
            if (shmq_ring_seal_mpmc(&a->ring) == SHMQ_OK) {
                uint32_t exp = ai;
                shmq_cas_acq_rel(&h->area_head, &exp, ai + 1);
            }
            continue;
        }
        return rc;
    }
}

typedef struct {
    shmq_msg_t *m;
    int mode;
} get_ctx;

static int get_check(shmq_seg_t *q, void *ctx)
{
    get_ctx *g = ctx;
    int rc = try_get(q, g->m, g->mode);
    return rc == SHMQ_EMPTY ? SHMQ_EAGAIN : rc;
}

/* Spin only if a producer is active on another CPU than ours: it put something within the
 * last ~1 ms (so it is likely to put again soon), it is not asleep in shmq, and its last CPU is
 * not ours (so the spin cannot take CPU time from it). An idle attached process (a parent in
 * join(), say) does not count. A process pinned to one CPU may still spin against a producer
 * pinned to another; on a one-CPU machine nobody spins. */
#define SHMQ_ACTIVE_TICKS (3ull * 1000 * 1000) /* ~1 ms of TSC at 3 GHz (ns elsewhere: 3 ms) */
static int worth_spinning(shmq_seg_t *q)
{
    if (shmq_get_spin_ns() == 0 || shmq_cpus_online() < 2 || q->slot == UINT32_MAX)
        return 0;
    int me = shmq_current_cpu();
    note_cpu(q);
    uint32_t hwm = shmq_load_relaxed(&q->hdr->slot_hwm);
    if (hwm > q->max_slots)
        hwm = q->max_slots; /* untrusted */
    uint64_t now = shmq_ticks();
    for (uint32_t s = 0; s < hwm; s++) {
        if (s == q->slot)
            continue;
        shmq_slot_t *sl = &q->slots[s];
        if (shmq_load_relaxed(&sl->state) == SHMQ_SLOT_ATTACHED && shmq_load_relaxed(&sl->run_state) == SHMQ_RUN_RUNNING &&
            (int)shmq_load_relaxed(&sl->cpu) != me && now - shmq_load_relaxed(&sl->last_put) < SHMQ_ACTIVE_TICKS)
            return 1;
    }
    return 0;
}

int shmq_get_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns)
{
    return shmq_q_take(q, m, deadline_ns, 0);
}

int shmq_q_take(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns, int mode)
{
    shmq_header_t *h = q->hdr;
    int rc = try_get(q, m, mode);
    if (SHMQ_LIKELY(rc != SHMQ_EMPTY))
        goto done;
    if (deadline_ns == 0)
        return SHMQ_EMPTY;
    if (worth_spinning(q)) {
        uint64_t until = shmq_now_mono_ns() + shmq_get_spin_ns();
        if (until > deadline_ns)
            until = deadline_ns;
        for (unsigned i = 1;; i++) {
            for (int k = 0; k < 16; k++)
                shmq_cpu_relax();
            rc = try_get(q, m, mode);
            if (rc != SHMQ_EMPTY)
                goto done;
            if ((i & 7) == 0 && shmq_now_mono_ns() >= until)
                break;
        }
    }
    get_ctx gc = {m, mode};
    for (;;) {
        uint64_t until = deadline_ns;
        if (shmq_q_hooks(q)->wake_at) {
            uint64_t t = shmq_q_hooks(q)->wake_at(q); /* the kind's next timer (a delay, a lease end) */
            if (t < until)
                until = t;
        }
        rc = sleep_until(q, &h->not_empty, 1, 1u, get_check, &gc, until);
        if (rc == SHMQ_TIMEOUT && until != deadline_ns)
            rc = SHMQ_EAGAIN; /* a timer came due, not our deadline */
        if (rc == SHMQ_EAGAIN) {
            rc = try_get(q, m, mode);
            if (rc == SHMQ_EMPTY)
                continue;
        }
        /* We may have cleared a wake-up that stood for several puts (or was meant for another
         * sleeper): whatever we leave with, pass it on while messages remain (wait.h). */
        if (shmq_depth(q) > 0)
            wake_getters(q);
        if (rc == SHMQ_TIMEOUT || rc == SHMQ_EINTR)
            return rc == SHMQ_TIMEOUT ? SHMQ_EMPTY : SHMQ_EINTR;
        goto done; /* SHMQ_OK (from the check or the try), or an error */
    }
done:
    if (rc == SHMQ_OK && q->slot != UINT32_MAX && !(q->slots[q->slot].role & SHMQ_ROLE_CONSUMER))
        __atomic_fetch_or(&q->slots[q->slot].role, SHMQ_ROLE_CONSUMER, __ATOMIC_RELAXED);
    return rc;
}

/* ---------------------------------------------------------------- watchers (queue.h) */

static shmq_waitq_t *watch_wq(shmq_seg_t *q, int dir)
{
    return dir == SHMQ_WATCH_GET ? &q->hdr->not_empty : &q->hdr->not_full;
}

/* what a watcher adds to its slot's waiting entry: the units sleep_until uses per direction */
static uint32_t watch_unit(int dir) { return dir == SHMQ_WATCH_GET ? 1u : 1u << 16; }

int shmq_watch_begin(shmq_seg_t *q, int dir)
{
    if (dir != SHMQ_WATCH_GET && dir != SHMQ_WATCH_PUT)
        return SHMQ_EINVAL;
    shmq_waitq_t *wq = watch_wq(q, dir);
    shmq_waitq_clear_pending(wq); /* wait.h: clear, register, then look (the first token clears again) */
    if (q->slot != UINT32_MAX)
        shmq_fetch_add_seq(&q->slots[q->slot].waiting, watch_unit(dir)); /* repair undoes it if we die */
    shmq_fetch_add_seq(&wq->waiters, 1); /* seq_cst: from here on every waker bumps seq (lost-wake-up rule) */
    q->watching[dir]++;
    return SHMQ_OK;
}

uint32_t shmq_watch_token(shmq_seg_t *q, int dir)
{
    /* Registered since begin: a change after this read bumps seq or finds the pending bit set,
     * which only a clear after this one removes: the sleep on this token sees the change. */
    shmq_waitq_t *wq = watch_wq(q, dir);
    uint32_t v;
    for (;;) {
        v = shmq_load_seq(&wq->seq); /* seq_cst: our callers' looks come after this read */
        if (!(v & 1u))
            return v;
        if (shmq_cas_seq(&wq->seq, &v, v + 1)) /* seq_cst: clear the pending wake-up, which was for us */
            return v + 1;
    }
}

int shmq_watch_sleep(shmq_seg_t *q, int dir, uint32_t token, uint64_t deadline_ns)
{
    if (dir != SHMQ_WATCH_GET && dir != SHMQ_WATCH_PUT)
        return SHMQ_EINVAL;
    if (__atomic_load_n(&q->closing, __ATOMIC_SEQ_CST))
        return SHMQ_ECLOSED;
    uint64_t until = deadline_ns;
    if (dir == SHMQ_WATCH_GET && shmq_q_hooks(q)->wake_at) {
        uint64_t t = shmq_q_hooks(q)->wake_at(q); /* a delayed message comes due, a lease ends */
        if (t < until)
            until = t;
    }
    int rc = shmq_futex_wait(&watch_wq(q, dir)->seq, token, until);
    if (rc == SHMQ_TIMEOUT && until != deadline_ns)
        rc = SHMQ_OK; /* a timer of the kind, not our deadline: look again */
    if (rc == SHMQ_EAGAIN)
        liveness_slice(q); /* a whole slice asleep: dead participants may hold what we wait for */
    if (__atomic_load_n(&q->closing, __ATOMIC_SEQ_CST))
        rc = SHMQ_ECLOSED; /* woken by close */
    return rc;
}

void shmq_watch_end(shmq_seg_t *q, int dir)
{
    if ((dir != SHMQ_WATCH_GET && dir != SHMQ_WATCH_PUT) || q->watching[dir] == 0)
        return;
    shmq_waitq_t *wq = watch_wq(q, dir);
    q->watching[dir]--;
    __atomic_fetch_sub(&wq->waiters, 1, __ATOMIC_SEQ_CST);
    if (q->slot != UINT32_MAX)
        __atomic_fetch_sub(&q->slots[q->slot].waiting, watch_unit(dir), __ATOMIC_SEQ_CST);
    /* Our tokens cleared wake-ups that may have stood for other sleepers too (wait.h): pass
     * one on while messages remain. Putters are all woken by every waker: nothing to pass. */
    if (dir == SHMQ_WATCH_GET && shmq_depth(q) > 0)
        wake_getters(q);
}

void shmq_watch_end_all(shmq_seg_t *q)
{
    if (!q->hdr)
        return;
    for (int dir = 0; dir < 2; dir++)
        while (q->watching[dir])
            shmq_watch_end(q, dir);
}

/* Return the chunks of RETURNING descriptors of area a (its arena lock held); how many. A
 * descriptor is first taken over by CAS (RETURNING(x) -> WRITING(us)), so two returners never
 * free the same chunk. */
static uint32_t reclaim_returning_locked(shmq_seg_t *q, shmq_area_t *a)
{
    uint32_t n = 0;
    /* Reset the hint before the scan: a descriptor marked after our reset counts again, and one
     * marked before it is stored before its increment, so the scan sees it. */
    shmq_exchange_seq(&a->hdr->returning, 0);
    for (uint32_t k = 0; k < a->n_desc; k++) {
        shmq_desc_t *d = desc_at(a, k);
        uint64_t w = shmq_load_acquire(&d->word);
        if (shmq_desc_state(w) != SHMQ_D_RETURNING)
            continue;
        uint64_t exp = w;
        if (!shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_WRITING, q->owner)))
            continue;
        shmq_arena_free_locked(a, d);
        shmq_exchange_seq(&d->word, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_FREE, 0));
        n++;
    }
    return n;
}

/* Free a taken message's descriptor: its chunk stays parked in it (desc_release), so a
 * consumer never waits for the arena lock, even when its holder is stopped. */
static void release_taken(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d) { desc_release(q, a, d); }

void shmq_get_end(shmq_seg_t *q, shmq_msg_t *m)
{
    shmq_header_t *h = q->hdr;
    SHMQ_CRASH_POINT(before_free);
    release_with_unit(q, m->area, m->d, release_taken);
    if (q->slot != UINT32_MAX)
        shmq_fetch_add_relaxed(&q->slots[q->slot].dequeued, 1);
    note_cpu(q);
    if (!(h->flags & SHMQ_F_GROWABLE) || h->maxsize)
        wake_putters(q);
    m->d = NULL;
}

void shmq_q_release_owned(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d)
{
    shmq_header_t *h = q->hdr;
    release_with_unit(q, a, d, release_taken);
    if (!(h->flags & SHMQ_F_GROWABLE) || h->maxsize)
        wake_putters(q);
}

int shmq_q_publish(shmq_seg_t *q, uint64_t handle)
{
    shmq_header_t *h = q->hdr;
    if (SHMQ_UNLIKELY(q->ready != NULL)) {
        /* the kind's ready structure, at the priority the descriptor carries (a message keeps it) */
        int rc;
        shmq_area_t *a = shmq_seg_area(q, shmq_handle_area(handle), &rc);
        if (!a || shmq_handle_idx(handle) >= a->n_desc) /* untrusted */
            return SHMQ_ECORRUPT;
        rc = q->ready->publish(q, handle, desc_at(a, shmq_handle_idx(handle))->priority, grow_until(0));
        if (rc == SHMQ_OK)
            wake_getters(q);
        return rc;
    }
    for (int tries = 0; tries < 64; tries++) {
        uint32_t ai = shmq_load_acquire(&h->area_tail);
        int rc;
        shmq_area_t *ta = shmq_seg_area(q, ai, &rc);
        if (!ta) {
            if (rc == SHMQ_ESEALED && shmq_load_acquire(&h->area_tail) != ai)
                continue;
            return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : rc;
        }
        rc = shmq_ring_put_mpmc(&ta->ring, handle);
        if (rc == SHMQ_OK) {
            if (SHMQ_UNLIKELY(shmq_load_seq(&h->areas[ai].state) != 1))
                continue; /* published into an area being given back: again (see put_commit) */
            wake_getters(q);
            return SHMQ_OK;
        }
        if (!(h->flags & SHMQ_F_GROWABLE))
            return rc == SHMQ_ESEALED ? SHMQ_ECORRUPT : SHMQ_FULL;
        if (rc == SHMQ_ESEALED && shmq_load_acquire(&h->area_tail) != ai)
            continue;
        rc = shmq_seg_grow(q, ai, 0, grow_until(0));
        if (rc != SHMQ_OK)
            return rc == SHMQ_ENOMEM ? SHMQ_FULL : rc;
    }
    return SHMQ_FULL;
}

int shmq_q_id_present(shmq_seg_t *q, uint64_t id)
{
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = desc_at(a, k);
            uint32_t st = shmq_desc_state(shmq_load_acquire(&d->word));
            if (st != SHMQ_D_FREE && st != SHMQ_D_WRITING && d->id == id)
                return 1;
        }
    }
    return 0;
}

void shmq_q_rewake_getters(shmq_seg_t *q)
{
    if (shmq_load_seq(&q->hdr->not_empty.waiters))
        shmq_waitq_wake_all(&q->hdr->not_empty);
}

uint64_t shmq_depth(shmq_seg_t *q)
{
    shmq_header_t *h = q->hdr;
    uint32_t head = shmq_load_acquire(&h->area_head), tail = shmq_load_acquire(&h->area_tail);
    uint64_t n = 0;
    if (SHMQ_UNLIKELY(q->ready != NULL))
        return q->ready->count(q);
    for (uint32_t i = head; i <= tail && i < q->max_areas; i++) {
        int rc;
        shmq_area_t *a = shmq_seg_area_live(q, i, &rc);
        if (a)
            n += shmq_ring_count(&a->ring);
    }
    return n;
}

/* Return RETURNING chunks of every area whose arena lock is free now (no waiting): stats and
 * sweeps do it, so the room comes back even when no producer needs it yet. */
void shmq_q_reclaim_try(shmq_seg_t *q)
{
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        if (!shmq_load_relaxed(&a->hdr->returning) || shmq_lock_try(q, &a->hdr->arena_lock, &a->arena_busy) != SHMQ_OK)
            continue;
        reclaim_returning_locked(q, a);
        shmq_lock_release(q, &a->hdr->arena_lock, &a->arena_busy);
    }
}

/* ---------------------------------------------------------------- join */

int shmq_task_done(shmq_seg_t *q)
{
    shmq_header_t *h = q->hdr;
    uint64_t u = shmq_load_relaxed(&h->unfinished);
    do {
        if (u == 0)
            return SHMQ_EINVAL;
    } while (!shmq_cas_acq_rel(&h->unfinished, &u, u - 1));
    if (u == 1)
        shmq_waitq_wake(&h->join, INT32_MAX, 0);
    return SHMQ_OK;
}

static int join_check(shmq_seg_t *q, void *ctx)
{
    (void)ctx;
    return shmq_load_seq(&q->hdr->unfinished) == 0 ? SHMQ_OK : SHMQ_EAGAIN;
}

int shmq_join(shmq_seg_t *q, uint64_t deadline_ns)
{
    shmq_header_t *h = q->hdr;
    for (;;) {
        int rc = sleep_until(q, &h->join, 0, 0, join_check, NULL, deadline_ns);
        if (rc != SHMQ_EAGAIN)
            return rc;
    }
}

/* ---------------------------------------------------------------- repair */

typedef struct {
    shmq_seg_t *q;
    uint8_t **maps;
} ref_ctx;

static void mark_referenced(void *vctx, uint64_t hd)
{
    ref_ctx *rc = vctx;
    shmq_seg_t *q = rc->q;
    uint32_t ai = shmq_handle_area(hd), idx = shmq_handle_idx(hd);
    /* a cell counts only for the generation it names: at-least-once queues leave stale cells
     * behind (a requeued message acked before it was taken again) */
    if (ai < q->max_areas && rc->maps[ai] && q->areas[ai].base && idx < q->areas[ai].n_desc &&
        shmq_desc_dgen(shmq_load_acquire(&desc_at(&q->areas[ai], idx)->word)) == (shmq_handle_dgen(hd) & SHMQ_DGEN_MASK))
        rc->maps[ai][idx / 8] |= (uint8_t)(1u << (idx % 8));
}

/* Mark, per area, the descriptors referenced by a FULL cell of any ring (bitmap, 1 bit each).
 * untrusted: handles naming no valid descriptor are ignored. Caller frees. */
uint8_t **shmq_q_referenced_map(shmq_seg_t *q)
{
    uint8_t **maps = calloc(SHMQ_MAX_AREAS, sizeof *maps);
    if (!maps)
        return NULL;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        maps[i] = calloc((a->n_desc + 7) / 8, 1);
    ref_ctx rc = {q, maps};
    if (q->ready != NULL)
        q->ready->foreach(q, mark_referenced, &rc);
    else
        for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
            shmq_ring_foreach(&a->ring, mark_referenced, &rc);
    return maps;
}

void shmq_q_free_maps(uint8_t **maps)
{
    if (!maps)
        return;
    for (uint32_t i = 0; i < SHMQ_MAX_AREAS; i++)
        free(maps[i]);
    free(maps);
}

static void free_dead_desc(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w, int was_ready)
{
    shmq_header_t *h = q->hdr;
    uint64_t exp = w;
    /* First win the descriptor (a live consumer may take a READY one at the same moment), then
     * return its chunk: nobody else can reach a descriptor we moved to WRITING(us). */
    if (!shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_WRITING, q->owner)))
        return;
    /* A repairer killed here leaves the descriptor stamped with its own (now dead) id: the
     * repair of the repairer frees it. Nothing is lost that was not already lost. */
    SHMQ_CRASH_POINT(mid_repair);
    release_with_unit(q, a, d, desc_release_to_arena);
    if (was_ready && (h->flags & SHMQ_F_JOINABLE))
        __atomic_fetch_sub(&h->unfinished, 1, __ATOMIC_SEQ_CST);
}

static void queue_repair_owner(shmq_seg_t *q, uint32_t dead);
/* The owner's kind's repair (a kind over the queue may extend it). */
static void queue_repair_owner_via_ops(shmq_seg_t *q, uint32_t dead)
{
    if (q->ops && q->ops->repair_owner)
        q->ops->repair_owner(q, dead);
    else
        queue_repair_owner(q, dead);
}

/* Free everything the dead owner id still holds. Idempotent; any live participant may run it. */
static void queue_repair_owner(shmq_seg_t *q, uint32_t dead)
{
    shmq_header_t *h = q->hdr;
    uint64_t t0 = shmq_now_mono_ns();
    uint32_t tail = shmq_load_acquire(&h->area_tail);
    int any_ready = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = desc_at(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            if (shmq_desc_owner(w) != dead)
                continue;
            uint32_t st = shmq_desc_state(w);
            if (st == SHMQ_D_WRITING || st == SHMQ_D_READING || st == SHMQ_D_RETURNING)
                /* WRITING: the dead put had not returned. READING: the message the dead
                 * consumer had taken, the one at-most-once delivery may lose (or acked). */
                free_dead_desc(q, a, d, w, 0);
            else if (st == SHMQ_D_READY)
                any_ready = 1;
            else if (st != SHMQ_D_FREE && shmq_q_hooks(q)->repair_desc)
                shmq_q_hooks(q)->repair_desc(q, a, d, w); /* the kind's states (deliveries go back) */
        }
    }
    if (any_ready) {
        /* READY but in no ring: the producer died between READY and its publishing CAS. A dead
         * producer can publish nothing more, so "not referenced now" means never. */
        uint8_t **maps = shmq_q_referenced_map(q);
        for (uint32_t i = 0; maps && i <= tail && i < q->max_areas; i++) {
            shmq_area_t *a = q->areas[i].base ? &q->areas[i] : NULL;
            if (!a || !maps[i] || shmq_load_acquire(&h->areas[i].state) == SHMQ_AREA_RETIRED)
                continue;
            for (uint32_t k = 0; k < a->n_desc; k++) {
                shmq_desc_t *d = desc_at(a, k);
                uint64_t w = shmq_load_acquire(&d->word);
                if (shmq_desc_owner(w) != dead || shmq_desc_state(w) != SHMQ_D_READY || (maps[i][k / 8] & (1u << (k % 8))))
                    continue;
                if (shmq_q_hooks(q)->keep_orphans) {
                    /* At-least-once: a message made READY (sent, requeued or promoted) is
                     * never dropped: publish it for the dead one (take it over first). */
                    uint64_t exp = w, mine = shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_READY, q->owner);
                    if (shmq_cas_acq_rel(&d->word, &exp, mine) &&
                        shmq_q_publish(q, shmq_handle_make(i, k, shmq_desc_dgen(w))) != SHMQ_OK) {
                        /* no ring room now: an expired lease owned by nobody; the scan retries */
                        d->deadline_ns = 1;
                        shmq_store_release(&d->word, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_INFLIGHT, 0));
                        shmq_q_hooks(q)->timer(q, 1);
                    }
                    continue;
                }
                free_dead_desc(q, a, d, w, 1);
            }
        }
        shmq_q_free_maps(maps);
    }
    if (q->ready != NULL && q->ready->repair)
        q->ready->repair(q); /* what the dead one left half done in the kind's ready structure */
    __atomic_fetch_add(&h->repairs, 1, __ATOMIC_RELAXED);
    shmq_store_relaxed(&h->last_repair_ns, shmq_now_mono_ns() - t0);
    wake_putters(q);
    /* The dead one may have been a getter woken by a coalesced wake it never passed on. */
    shmq_waitq_clear_pending(&h->not_empty);
    if (shmq_depth(q) > 0)
        wake_getters(q);
}

static const shmq_queue_hooks_t queue_hooks = {.ops = {.name = "queue", .repair_owner = queue_repair_owner}};
const shmq_queue_hooks_t shmq_q_no_hooks = {.ops = {.name = "segment"}};

void shmq_queue_bind(shmq_seg_t *q) { q->ops = &queue_hooks.ops; }

void shmq_q_bind_hooks(shmq_seg_t *q, const shmq_queue_hooks_t *hk) { q->ops = &hk->ops; }

/* The queue's repair, for kinds whose ops reuse it (lease.c). */
void shmq_q_repair_owner(shmq_seg_t *q, uint32_t dead) { queue_repair_owner(q, dead); }

/* Descriptors held by an owner whose slot is FREE (it detached while a thread of it still held
 * a message) or was reused since (another generation): no slot repair will ever visit them, so
 * they are repaired here, as the owner's death (issue 11 item 1). O(descriptors), so at most
 * once a second per handle. READY and RETURNING are not held by their stamp's owner. */
#define SHMQ_STALE_SWEEP_NS (1000ull * 1000 * 1000)
static int repair_stale_owners(shmq_seg_t *q)
{
    uint64_t now = shmq_now_mono_ns();
    if (now - q->last_stale_ns < SHMQ_STALE_SWEEP_NS)
        return 0;
    q->last_stale_ns = now;
    int n = 0, nd = 0;
    uint32_t done[16];
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            uint64_t w = shmq_load_acquire(&desc_at(a, k)->word);
            uint32_t st = shmq_desc_state(w), owner = shmq_desc_owner(w), s = shmq_owner_slot(owner);
            if (st == SHMQ_D_FREE || st == SHMQ_D_READY || st == SHMQ_D_RETURNING || owner == 0 || owner == q->owner)
                continue;
            if (s < q->max_slots && shmq_load_acquire(&q->slots[s].state) == SHMQ_SLOT_ATTACHED &&
                (shmq_load_acquire(&q->slots[s].gen) & SHMQ_OWNER_GEN_MASK) == shmq_owner_gen(owner))
                continue; /* its slot's own (alive, or dead and elected for repair by slot) */
            int seen = 0;
            for (int j = 0; j < nd && !seen; j++)
                seen = done[j] == owner;
            if (seen)
                continue; /* one repair of an owner covers all its descriptors */
            queue_repair_owner_via_ops(q, owner);
            if (nd < 16)
                done[nd++] = owner;
            n++;
        }
    return n;
}

int shmq_repair_dead(shmq_seg_t *q)
{
    if (q->slot == UINT32_MAX)
        return 0; /* an inspector has no owner id to act under */
    shmq_q_reclaim_try(q);
    int n = shmq_part_repair_dead(q);
    n += repair_stale_owners(q);
    units_recount(q); /* after the repairs: units leaked by a death between a unit and its descriptor */
    return n;
}

