#define _GNU_SOURCE
#include "dedup.h"

#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "participants.h"
#include "crashpoint.h"
#include "lock.h"
#include "queue_int.h"

static inline void key_words(const uint8_t key[16], uint64_t *k0, uint64_t *k1)
{
    memcpy(k0, key, 8);
    memcpy(k1, key + 8, 8);
}

/* A live entry still answers for its key: PENDING (a send in progress or a dead sender's, to be
 * resolved) or COMMITTED within its window. */
static inline int ent_live(const shmq_dedup_ent_t *e, uint32_t st, uint64_t now)
{
    return st == SHMQ_DEDUP_PENDING || (st == SHMQ_DEDUP_COMMITTED && e->expires_ns > now);
}

/* Lock held. Recount the used entries (after the lock was stolen from a dead holder). */
static void recount_locked(shmq_seg_t *q)
{
    shmq_ack_t *k = q->kstate;
    uint32_t used = 0;
    for (uint32_t i = 0; i < k->dedup_slots; i++)
        used += shmq_load_relaxed(&k->dedup[i].state) != SHMQ_DEDUP_EMPTY;
    shmq_store_relaxed(&k->blk->dedup_used, used);
}

/* Lock held. A PENDING entry whose sender died: did its put get far enough to be delivered? */
static void resolve_dead_pending_locked(shmq_seg_t *q, shmq_dedup_ent_t *e)
{
    if (shmq_q_id_present(q, e->id))
        shmq_store_release(&e->state, SHMQ_DEDUP_COMMITTED);
    else
        shmq_store_release(&e->state, SHMQ_DEDUP_DELETED);
}

/* Lock held. Drop expired and deleted entries by re-inserting the live ones into a cleared
 * table. Returns the live count. A crash half-way loses keys (dedup.h, known limit). */
static uint32_t compact_locked(shmq_seg_t *q, uint64_t now)
{
    shmq_ack_t *k = q->kstate;
    uint32_t n = k->dedup_slots, mask = n - 1, live = 0;
    shmq_dedup_ent_t *keep = malloc((size_t)n * sizeof *keep);
    if (!keep)
        return shmq_load_relaxed(&k->blk->dedup_used);
    for (uint32_t i = 0; i < n; i++) {
        shmq_dedup_ent_t *e = &k->dedup[i];
        uint32_t st = shmq_load_relaxed(&e->state);
        if (st == SHMQ_DEDUP_PENDING && !shmq_part_owner_alive(q, e->owner))
            resolve_dead_pending_locked(q, e), st = shmq_load_relaxed(&e->state);
        if (ent_live(e, st, now)) {
            keep[live] = *e;
            keep[live].state = st;
            live++;
        }
    }
    memset(k->dedup, 0, (size_t)n * sizeof *k->dedup);
    for (uint32_t j = 0; j < live; j++) {
        uint32_t i = (uint32_t)keep[j].k0 & mask;
        while (k->dedup[i].state != SHMQ_DEDUP_EMPTY)
            i = (i + 1) & mask;
        k->dedup[i] = keep[j];
    }
    free(keep);
    shmq_store_relaxed(&k->blk->dedup_used, live);
    return live;
}

/* Lock held. Find key: the live entry, or where to insert (first reusable slot of the chain,
 * else the EMPTY that ends it, else NULL when the table has neither). */
static shmq_dedup_ent_t *find_locked(shmq_seg_t *q, uint64_t k0, uint64_t k1, uint64_t now, shmq_dedup_ent_t **slot)
{
    shmq_ack_t *k = q->kstate;
    uint32_t n = k->dedup_slots, mask = n - 1;
    *slot = NULL;
    for (uint32_t p = 0, i = (uint32_t)k0 & mask; p < n; p++, i = (i + 1) & mask) {
        shmq_dedup_ent_t *e = &k->dedup[i];
        uint32_t st = shmq_load_relaxed(&e->state);
        if (st == SHMQ_DEDUP_EMPTY) {
            if (!*slot)
                *slot = e;
            return NULL;
        }
        /* untrusted: any other value is garbage and is treated as a reusable slot */
        if (!ent_live(e, st, now) || st > SHMQ_DEDUP_DELETED) {
            if (!*slot)
                *slot = e;
            continue;
        }
        if (e->k0 == k0 && e->k1 == k1)
            return e;
    }
    return NULL;
}

static int lock_table(shmq_seg_t *q)
{
    shmq_ack_t *k = q->kstate;
    int rc = shmq_lock_acquire(q, &k->blk->dedup_lock, &k->dedup_busy, SHMQ_NO_DEADLINE);
    if (rc == SHMQ_EAGAIN)
        recount_locked(q); /* stolen from a dead holder: it may have been mid-insert or compacting */
    return rc == SHMQ_EAGAIN ? SHMQ_OK : rc;
}

int shmq_dedup_begin(shmq_seg_t *q, const uint8_t key[16], uint64_t deadline_ns, uint64_t *id, int *dup)
{
    shmq_ack_t *k = q->kstate; /* an at-least-once handle: the caller (lease.c) checked */
    if (!k || !k->dedup)
        return SHMQ_EINVAL;
    uint64_t k0, k1;
    key_words(key, &k0, &k1);
    uint64_t give_up = deadline_ns;
    if (give_up == 0 || give_up - shmq_now_mono_ns() > 1000000000ull)
        give_up = shmq_now_mono_ns() + 1000000000ull; /* a live sender's put never takes longer than this */
    for (;;) {
        int rc = lock_table(q);
        if (rc != SHMQ_OK)
            return rc;
        uint64_t now = shmq_now_mono_ns();
        shmq_dedup_ent_t *slot, *e = find_locked(q, k0, k1, now, &slot);
        if (e && e->state == SHMQ_DEDUP_PENDING && !shmq_part_owner_alive(q, e->owner)) {
            resolve_dead_pending_locked(q, e);
            if (e->state == SHMQ_DEDUP_DELETED)
                e = NULL, slot = NULL, e = find_locked(q, k0, k1, now, &slot);
        }
        if (e && e->state == SHMQ_DEDUP_COMMITTED) {
            *id = e->id;
            *dup = 1;
            shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
            __atomic_fetch_add(&k->blk->dedup_hits, 1, __ATOMIC_RELAXED);
            return SHMQ_OK;
        }
        if (e) { /* PENDING of a live sender: its put finishes soon */
            shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
            if (shmq_now_mono_ns() >= give_up)
                return SHMQ_TIMEOUT;
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
            continue;
        }
        uint32_t used = shmq_load_relaxed(&k->blk->dedup_used);
        int fresh = slot && shmq_load_relaxed(&slot->state) == SHMQ_DEDUP_EMPTY;
        if (!slot || (fresh && (uint64_t)(used + 1) * 4 > (uint64_t)k->dedup_slots * 3)) {
            compact_locked(q, now);
            find_locked(q, k0, k1, now, &slot);
            used = shmq_load_relaxed(&k->blk->dedup_used);
            fresh = slot && shmq_load_relaxed(&slot->state) == SHMQ_DEDUP_EMPTY;
            if (!slot || (fresh && (uint64_t)(used + 1) * 4 > (uint64_t)k->dedup_slots * 3)) {
                shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
                return SHMQ_FULL;
            }
        }
        if (fresh)
            shmq_store_relaxed(&k->blk->dedup_used, used + 1);
        slot->k0 = k0;
        slot->k1 = k1;
        slot->id = shmq_fetch_add_relaxed(&q->hdr->next_id, 1);
        slot->expires_ns = now + k->blk->dedup_window_ns;
        slot->owner = q->owner;
        shmq_store_release(&slot->state, SHMQ_DEDUP_PENDING); /* release: the fields above first */
        *id = slot->id;
        *dup = 0;
        shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
        SHMQ_CRASH_POINT(mid_dedup);
        return SHMQ_OK;
    }
}

void shmq_dedup_finish(shmq_seg_t *q, const uint8_t key[16], int committed)
{
    shmq_ack_t *k = q->kstate; /* an at-least-once handle: the caller (lease.c) checked */
    uint64_t k0, k1;
    key_words(key, &k0, &k1);
    if (!k || !k->dedup || lock_table(q) != SHMQ_OK)
        return;
    shmq_dedup_ent_t *slot, *e = find_locked(q, k0, k1, shmq_now_mono_ns(), &slot);
    if (e && e->state == SHMQ_DEDUP_PENDING && e->owner == q->owner)
        shmq_store_release(&e->state, committed ? SHMQ_DEDUP_COMMITTED : SHMQ_DEDUP_DELETED);
    shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
}

void shmq_dedup_settle(shmq_seg_t *q, const uint8_t key[16], uint64_t id)
{
    shmq_ack_t *k = q->kstate; /* an at-least-once handle: the caller (lease.c) checked */
    uint64_t k0, k1;
    key_words(key, &k0, &k1);
    if (!k->dedup || lock_table(q) != SHMQ_OK)
        return;
    shmq_dedup_ent_t *slot, *e = find_locked(q, k0, k1, shmq_now_mono_ns(), &slot);
    /* only the entry this message was sent under (its id): a later send of the key is another */
    if (e && e->state == SHMQ_DEDUP_PENDING && e->id == id)
        shmq_store_release(&e->state, SHMQ_DEDUP_COMMITTED);
    shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
}

void shmq_dedup_forget(shmq_seg_t *q, const uint8_t key[16], uint64_t id)
{
    shmq_ack_t *k = q->kstate; /* an at-least-once handle: the caller (forward.c) checked */
    uint64_t k0, k1;
    key_words(key, &k0, &k1);
    if (!k || !k->dedup || lock_table(q) != SHMQ_OK)
        return;
    shmq_dedup_ent_t *slot, *e = find_locked(q, k0, k1, shmq_now_mono_ns(), &slot);
    if (e && e->id == id && (e->state == SHMQ_DEDUP_COMMITTED || e->state == SHMQ_DEDUP_PENDING))
        shmq_store_release(&e->state, SHMQ_DEDUP_DELETED); /* compaction drops it */
    shmq_lock_release(q, &k->blk->dedup_lock, &k->dedup_busy);
}

void shmq_hash128(const void *data, size_t len, uint8_t out[16])
{
    const uint8_t *p = data;
    uint64_t a = 0xcbf29ce484222325ull, b = 0x84222325cbf29ce4ull ^ (uint64_t)len;
    for (size_t i = 0; i < len; i++) {
        a = (a ^ p[i]) * 0x100000001b3ull;
        b = (b ^ p[i]) * 0x00000100000001b3ull + 0x9e3779b97f4a7c15ull;
    }
    /* finalise both lanes (murmur3's fmix64) and mix them into each other */
    uint64_t v[2] = {a ^ (b >> 29), b ^ (a << 17)};
    for (int k = 0; k < 2; k++) {
        uint64_t x = v[k];
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ull;
        x ^= x >> 33;
        v[k] = x;
    }
    memcpy(out, &v[0], 8);
    memcpy(out + 8, &v[1], 8);
}
