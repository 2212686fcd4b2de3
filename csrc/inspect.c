#include "inspect.h"

#include <string.h>

#include "arena.h"
#include "atomic.h"
#include "dedup.h"
#include "group.h"
#include "lease.h"
#include "participants.h"
#include "queue_int.h"

void shmq_stats(shmq_seg_t *q, shmq_stats_t *st)
{
    if (q->slot != UINT32_MAX)
        shmq_q_reclaim_try(q); /* attached handles only: inspectors (`shmq ls`) change nothing */
    shmq_header_t *h = q->hdr;
    memset(st, 0, sizeof *st);
    st->depth = shmq_depth(q);
    uint64_t used = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        st->areas++;
        /* parked chunks (arena.h) are room any put reuses or takes back: counted as free */
        uint64_t fu = shmq_arena_free_units(a) + shmq_q_parked_units(a);
        used += (a->arena_units > fu ? a->arena_units - fu : 0) * SHMQ_ARENA_UNIT;
    }
    st->bytes_used = used + st->depth * SHMQ_DESC_SIZE;
    st->capacity = h->capacity;
    st->file_size = shmq_load_relaxed(&h->file_size);
    st->max_message = h->max_message;
    st->maxsize = h->maxsize;
    st->enqueued = shmq_load_relaxed(&h->enq_folded);
    st->dequeued = shmq_load_relaxed(&h->deq_folded);
    uint32_t hwm = shmq_load_relaxed(&h->slot_hwm);
    for (uint32_t s = 0; s < hwm && s < q->max_slots; s++) {
        st->enqueued += shmq_load_relaxed(&q->slots[s].enqueued);
        st->dequeued += shmq_load_relaxed(&q->slots[s].dequeued);
    }
    st->repairs = shmq_load_relaxed(&h->repairs);
    st->corrupt_skipped = shmq_load_relaxed(&h->corrupt_skipped);
    st->last_repair_ns = shmq_load_relaxed(&h->last_repair_ns);
    st->unfinished = shmq_load_relaxed(&h->unfinished);
    st->creator_pid = h->creator_pid;
    st->created_at_ns = h->created_at_ns;
    st->flags = h->flags;
    st->kind = h->kind;
    st->mode = h->mode;
    st->max_slots = h->max_slots;
    shmq_part_count(q, &st->attached, &st->producers, &st->consumers);
    if (shmq_q_hooks(q)->stats)
        shmq_q_hooks(q)->stats(q, st);
}

/* Copy the message of descriptor d (in area da) whose word was dw when its caller chose it;
 * re-checks the word after the copy. SHMQ_OK, SHMQ_EAGAIN (it changed), SHMQ_ECORRUPT. */
static int peek_copy(shmq_seg_t *q, shmq_area_t *da, shmq_desc_t *d, uint64_t dw, shmq_peek_t *out, void *buf,
                     uint64_t cap, uint32_t flags)
{
    uint64_t size = d->size;
    uint32_t chunk = d->chunk, order = d->chunk_order, hs = 0;
    if (chunk == SHMQ_NO_CHUNK ? size > SHMQ_INLINE_MAX
                               : (!shmq_arena_ref_valid(da, chunk, order) || size > ((uint64_t)SHMQ_ARENA_UNIT << order)))
        /* fields read while a getter took and freed the message are not garbage: look again */
        return shmq_load_acquire(&d->word) != dw ? SHMQ_EAGAIN : SHMQ_ECORRUPT;
    const uint8_t *src = chunk == SHMQ_NO_CHUNK ? d->inline_data : da->arena + (uint64_t)chunk * SHMQ_ARENA_UNIT;
    if (shmq_q_hooks(q)->body_skip) { /* the body only: past the kind's and the header blocks */
        uint64_t skip = shmq_q_hooks(q)->body_skip(d);
        hs = d->hdr_size;
        if (skip > size || hs > skip) /* untrusted: the blocks lie inside the payload */
            return shmq_load_acquire(&d->word) != dw ? SHMQ_EAGAIN : SHMQ_ECORRUPT;
        src += skip;
        size -= skip;
    }
    out->id = d->id;
    out->timestamp_ns = d->timestamp_ns;
    out->kind = d->kind;
    out->delivery_count = d->delivery_count;
    out->state = shmq_desc_state(dw);
    out->priority = d->priority;
    out->hdr_size = hs;
    out->size = size;
    if (flags & SHMQ_PEEK_HEADERS) { /* the header block sits right before the body */
        src -= hs;
        size += hs;
    }
    out->copied = size < cap ? size : cap;
    memcpy(buf, src, out->copied);
    /* acquire fence: the copy above happens before the re-check below (x86 does not
     * reorder loads with loads; TSan builds cannot express the fence and skip it) */
#if !defined(__SANITIZE_THREAD__)
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
    if (shmq_load_relaxed(&d->word) != dw)
        return SHMQ_EAGAIN; /* taken (and maybe re-used) while we copied */
    return SHMQ_OK;
}

int shmq_peek(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap)
{
    return shmq_peek_ex(q, n, out, buf, cap, 0);
}

int shmq_peek_ex(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags)
{
    shmq_header_t *h = q->hdr;
    uint32_t head = shmq_load_acquire(&h->area_head), tail = shmq_load_acquire(&h->area_tail);
    for (uint32_t ai = head; ai <= tail && ai < q->max_areas; ai++) {
        int rc;
        shmq_area_t *a = shmq_seg_area_live(q, ai, &rc);
        if (!a)
            return rc;
        uint64_t handle;
        if (q->ready != NULL) { /* the kind's ready structure holds every queued handle */
            if (ai != head)
                return SHMQ_EMPTY;
            rc = q->ready->nth(q, &n, &handle);
            if (rc == SHMQ_EMPTY)
                return rc;
        } else
            rc = shmq_ring_nth(&a->ring, &n, &handle);
        if (rc == SHMQ_EMPTY)
            continue; /* n now counts on from this ring's end: the next area */
        if (rc != SHMQ_OK)
            return rc;
        /* untrusted: the handle and the descriptor are checked like a consumer checks them */
        shmq_area_t *da = shmq_seg_area(q, shmq_handle_area(handle), &rc);
        if (!da || shmq_handle_idx(handle) >= da->n_desc)
            return SHMQ_ECORRUPT;
        shmq_desc_t *d = shmq_q_desc(da, shmq_handle_idx(handle));
        uint64_t dw = shmq_load_acquire(&d->word);
        if (shmq_desc_state(dw) != SHMQ_D_READY || shmq_desc_dgen(dw) != (shmq_handle_dgen(handle) & SHMQ_DGEN_MASK))
            return SHMQ_EAGAIN;
        return peek_copy(q, da, d, dw, out, buf, cap, flags);
    }
    return SHMQ_EMPTY;
}

static int held_state(uint32_t st) { return st == SHMQ_D_INFLIGHT || st == SHMQ_D_SETTLING || st == SHMQ_D_DELAYED; }

int shmq_peek_held(shmq_seg_t *q, uint64_t *pos, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags)
{
    if (!shmq_ack_of(q))
        return SHMQ_EMPTY; /* only at-least-once queues hold messages outside their rings */
    uint32_t i = (uint32_t)(*pos >> 32), k = (uint32_t)*pos;
    shmq_area_t *a;
    for (; (a = shmq_q_area_next(q, &i)) != NULL; i++, k = 0) {
        for (; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t dw = shmq_load_acquire(&d->word);
            if (!held_state(shmq_desc_state(dw)))
                continue;
            *pos = ((uint64_t)i << 32) | (k + 1);
            int rc = peek_copy(q, a, d, dw, out, buf, cap, flags);
            if (rc == SHMQ_EAGAIN)
                *pos -= 1; /* this one again */
            return rc;
        }
    }
    return SHMQ_EMPTY;
}

uint64_t shmq_purge(shmq_seg_t *q)
{
    uint64_t n = 0;
    shmq_msg_t m;
    while (shmq_get_begin(q, &m, 0) == SHMQ_OK) {
        shmq_get_end(q, &m);
        n++;
    }
    return n;
}

uint64_t shmq_purge_held(shmq_seg_t *q)
{
    if (!shmq_ack_of(q))
        return 0;
    uint64_t n = 0;
    shmq_area_t *a;
    /* group hook (group.h): hold the group table so no send links to a member being freed */
    shmq_group_t *grp = shmq_ack_of(q)->grp;
    int held = grp && shmq_group_hold(q, grp) == SHMQ_OK;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            uint32_t st = shmq_desc_state(w);
            if (st != SHMQ_D_INFLIGHT && st != SHMQ_D_DELAYED)
                continue; /* SETTLING/MOVING: someone's moment; the rest are not held messages */
            if ((d->flags & SHMQ_DF_GROUP) && grp && !held)
                continue; /* the table is held by a stopped process: grouped ones stay */
            /* acq_rel: claimed like an ack claims it, so no settle of the old lease gets it too */
            if (!shmq_cas_acq_rel(&d->word, &w, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_READING, q->owner)))
                continue; /* settled meanwhile */
            /* untrusted: the dedup key lies inside the payload (lease.c settles it the same way) */
            if ((d->flags & SHMQ_DF_DEDUP) && shmq_q_payload_valid(a, d)
                && shmq_q_hooks(q)->body_skip(d) <= d->size)
                shmq_dedup_settle(q, shmq_q_payload(a, d) + SHMQ_ACK_META, d->id);
            if ((d->flags & SHMQ_DF_GROUP) && held)
                shmq_group_drop_locked(grp, a, d);
            shmq_q_release_owned(q, a, d);
            n++;
        }
    }
    if (held)
        shmq_group_unhold(q, grp); /* rebuilt from what is left: the groups go on */
    return n;
}

/* Consistency walk for tests and `shmq stat --check`: call while no one else operates. */
void shmq_check(shmq_seg_t *q, shmq_check_t *out)
{
    shmq_header_t *h = q->hdr;
    memset(out, 0, sizeof *out);
    uint8_t **maps = shmq_q_referenced_map(q);
    uint32_t tail = shmq_load_acquire(&h->area_tail);
    for (uint32_t i = 0; i <= tail && i < q->max_areas; i++) {
        int rc;
        shmq_area_t *a = shmq_seg_area_live(q, i, &rc);
        if (!a) {
            out->bad_areas += rc != SHMQ_ESEALED; /* a retired area is fine */
            continue;
        }
        uint64_t used = 0;
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            uint32_t st = shmq_desc_state(w);
            if (st == SHMQ_D_FREE) {
                out->free_desc++;
                if (d->chunk != SHMQ_NO_CHUNK) { /* a parked chunk (arena.h): held, not leaked */
                    if (shmq_arena_ref_valid(a, d->chunk, d->chunk_order)) {
                        used += 1ull << d->chunk_order;
                        out->parked_chunks++;
                    } else {
                        out->bad_chunks++;
                    }
                }
                continue;
            }
            if (st == SHMQ_D_READY) {
                out->ready_desc++;
                if (maps && maps[i] && !(maps[i][k / 8] & (1u << (k % 8))))
                    out->orphan_ready++;
            } else {
                out->owned_desc++;
                if (!shmq_part_owner_alive(q, shmq_desc_owner(w)))
                    out->dead_owned++;
            }
            if (d->chunk != SHMQ_NO_CHUNK) {
                if (shmq_arena_ref_valid(a, d->chunk, d->chunk_order))
                    used += 1ull << d->chunk_order;
                else
                    out->bad_chunks++;
            }
        }
        uint64_t fu = shmq_arena_free_units(a);
        if (used + fu != a->arena_units)
            out->arena_mismatch++;
        out->queued += q->ready != NULL ? 0 : shmq_ring_count(&a->ring);
    }
    if (q->ready != NULL)
        out->queued = q->ready->count(q);
    shmq_q_free_maps(maps);
}
