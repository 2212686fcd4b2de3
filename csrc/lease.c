#define _GNU_SOURCE
#include "lease.h"
#include "journal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "participants.h"
#include "crashpoint.h"
#include "dedup.h"
#include "group.h"
#include "hist.h"
#include "segment.h"
#include "queue_int.h"
#include "wait.h"

#define SETTLE_WAIT_NS (100ull * 1000 * 1000) /* how long a settle waits for another holder's moment */
#define DLQ_RETRY_NS (1000ull * 1000 * 1000)  /* a move refused by a full dead-letter queue: again in 1 s */
/* At most one timer scan per this interval; sleepers never wake for timers sooner than it. */
#define SHMQ_TIMER_GAP_NS (1000ull * 1000)
/* A scan holding the scan lock longer than this is presumed stopped (a scan takes well under
 * 1 ms per 64k descriptors): another participant scans anyway. Two scanners are safe (every
 * change is a CAS-claim of one descriptor); the lock only saves duplicate work. */
#define SHMQ_TIMER_STEAL_NS (100ull * 1000 * 1000)

static const shmq_queue_hooks_t ack_hooks;
/* The clock read of a take, shared by its two hooks (one clock read per receive, as before the
 * hooks): before_take runs first in the same thread, within the same try of the take. */
static __thread uint64_t take_now;
static void shmq_lease_timers_maybe(shmq_seg_t *q, uint64_t now);
static int group_link(shmq_seg_t *q, uint64_t h, uint64_t deadline_ns);

shmq_ack_t *shmq_ack_of(shmq_seg_t *q) { return q->ops == &ack_hooks.ops ? q->kstate : NULL; }
static inline shmq_ack_t *K(shmq_seg_t *q) { return q->kstate; } /* an at-least-once handle's (checked at the entry points) */
static inline int has_dlq(shmq_seg_t *q) { return K(q)->blk->dead_letter[0] != 0; }

/* Payload of an at-least-once message: meta block, [dedup key], [group block], header block, body. */
static inline uint64_t key_bytes(const shmq_desc_t *d) { return (d->flags & SHMQ_DF_DEDUP) ? 16 : 0; }
static inline uint64_t group_bytes(const shmq_desc_t *d) { return (d->flags & SHMQ_DF_GROUP) ? SHMQ_GROUP_BLOCK : 0; }
static uint64_t body_skip(const shmq_desc_t *d) { return SHMQ_ACK_META + key_bytes(d) + group_bytes(d) + (uint64_t)d->hdr_size; }

/* The message is leaving the queue (acked, taken by a plain get, dead-lettered or dropped): if
 * it was sent with a dedup key, settle the key's entry now, before the descriptor is freed, so a
 * sender that died before its own dedup_finish cannot have its entry resolved as "never put"
 * once the message is gone (dedup.h). The payload was validated by the caller. */
static void settle_dedup(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d)
{
    if (d->flags & SHMQ_DF_DEDUP)
        shmq_dedup_settle(q, shmq_q_payload(a, d) + SHMQ_ACK_META, d->id);
}

/* group hook (group.h): a grouped message is leaving the queue (we hold its descriptor): its
 * group's next member becomes the head. */
static inline void settle_group(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d)
{
    if (SHMQ_UNLIKELY(d->flags & SHMQ_DF_GROUP) && K(q)->grp)
        shmq_group_settle(q, K(q)->grp, a, d);
}

/* Lower the timer hint to t (CAS-min); sleepers choose their wake-up again when it moved earlier. */
static void timer_hint(shmq_seg_t *q, uint64_t t)
{
    uint64_t *hp = &K(q)->blk->timer_hint_ns;
    uint64_t v = shmq_load_relaxed(hp);
    while (t < v) {
        if (shmq_cas_seq(hp, &v, t)) { /* seq_cst: ordered after the descriptor change it announces */
            shmq_q_rewake_getters(q);
            return;
        }
    }
}

static inline void count(uint64_t *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }

/* untrusted: a token names an area, a descriptor and a generation; NULL if the first two are
 * not valid (a forged or garbage token). */
static shmq_desc_t *token_desc(shmq_seg_t *q, uint64_t token, shmq_area_t **ap)
{
    int rc;
    shmq_area_t *a = shmq_seg_area_live(q, shmq_handle_area(token), &rc);
    if (!a || shmq_handle_idx(token) >= a->n_desc)
        return NULL;
    *ap = a;
    return shmq_q_desc(a, shmq_handle_idx(token));
}

/* ---------------------------------------------------------------- send */

int shmq_send(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, const shmq_send_opts_t *o,
              uint64_t deadline_ns, uint64_t *id, int *dup)
{
    *dup = 0;
    shmq_ack_t *k = shmq_ack_of(q);
    if (!k || o->hdr_size > SHMQ_HDR_MAX || n > 64)
        return SHMQ_EINVAL;
    shmq_lease_timers_maybe(q, shmq_now_mono_ns()); /* producers apply due expiries too */
    shmq_put_ext_t x;
    memset(&x, 0, sizeof x);
    x.delay_ns = o->delay_ns == SHMQ_USE_DEFAULT ? k->blk->default_delay_ns : o->delay_ns;
    uint64_t ttl = o->ttl_ns == SHMQ_USE_DEFAULT ? k->blk->default_ttl_ns : o->ttl_ns;
    x.expire_ns = ttl ? shmq_now_mono_ns() + ttl : 0;
    x.hdr_size = o->hdr_size;
    x.priority = o->priority;
    x.flags = o->dedup_key ? SHMQ_DF_DEDUP : 0;
    /* payload layout: meta block (never delivered yet), [dedup key], [group block], header block, body */
    static const shmq_ack_meta_t fresh = {0, 0};
    shmq_iov_t v[68];
    uint32_t nv = 0;
    v[nv++] = (shmq_iov_t){&fresh, SHMQ_ACK_META};
    if (o->dedup_key)
        v[nv++] = (shmq_iov_t){o->dedup_key, 16};
    /* group hook (group.h): a member is put PARKED and linked after the put */
    shmq_group_blk_t gb;
    uint64_t gh = 0;
    if (SHMQ_UNLIKELY(o->group != NULL)) {
        if (!k->grp || shmq_group_blk_init(&gb, o->group, o->group_len, o->group_type,
                                           x.delay_ns ? shmq_now_mono_ns() + x.delay_ns : 0) != SHMQ_OK)
            return SHMQ_EINVAL;
        v[nv++] = (shmq_iov_t){&gb, SHMQ_GROUP_BLOCK};
        x.flags |= SHMQ_DF_GROUP;
        x.delay_ns = SHMQ_GROUP_PARK;
        x.handle_out = &gh;
    }
    if (o->hdr_size)
        v[nv++] = (shmq_iov_t){o->hdr, o->hdr_size};
    for (uint32_t i = 0; i < n; i++)
        v[nv++] = iov[i];
    if (o->dedup_key) {
        int d = 0, rc = shmq_dedup_begin(q, o->dedup_key, deadline_ns, &x.id, &d);
        if (rc == SHMQ_FULL)
            return SHMQ_EDEDUPFULL;
        if (rc != SHMQ_OK)
            return rc;
        if (d) {
            *id = x.id;
            *dup = 1;
            return SHMQ_OK;
        }
    }
    int rc = shmq_q_put(q, v, nv, kind, deadline_ns, id, &x);
    if (SHMQ_UNLIKELY(o->group != NULL) && rc == SHMQ_OK)
        rc = group_link(q, gh, deadline_ns);
    if (o->dedup_key) {
        if (rc == SHMQ_OK)
            SHMQ_CRASH_POINT(before_dedup_finish);
        shmq_dedup_finish(q, o->dedup_key, rc == SHMQ_OK);
    }
    return rc;
}

/* group hook (group.h): link a member put PARKED as handle h; on failure it is taken out again
 * (nobody else touches a parked, unlinked member of a live sender). */
static int group_link(shmq_seg_t *q, uint64_t h, uint64_t deadline_ns)
{
    SHMQ_CRASH_POINT(group_after_put);
    int rc = shmq_group_link(q, K(q)->grp, shmq_handle_area(h), shmq_handle_idx(h), deadline_ns);
    if (rc == SHMQ_OK)
        return rc;
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, h, &a);
    uint64_t w = d ? shmq_load_acquire(&d->word) : 0;
    if (d && shmq_desc_state(w) == SHMQ_D_DELAYED && shmq_desc_dgen(w) == shmq_handle_dgen(h) &&
        shmq_cas_acq_rel(&d->word, &w, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_READING, q->owner)))
        shmq_q_release_owned(q, a, d);
    if (rc == SHMQ_FULL)
        q->full_why = SHMQ_WHY_GROUPS;
    return rc;
}

/* A plain put on an at-least-once queue: a send with the queue's defaults. */
static int ack_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns, uint64_t *id_out)
{
    shmq_send_opts_t o = {.delay_ns = SHMQ_USE_DEFAULT, .ttl_ns = SHMQ_USE_DEFAULT};
    uint64_t id;
    int dup;
    int rc = shmq_send(q, iov, n, kind, &o, deadline_ns, &id, &dup);
    if (rc == SHMQ_OK && id_out)
        *id_out = id;
    return rc;
}

/* ---------------------------------------------------------------- receive */

int shmq_receive_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns)
{
    if (!shmq_ack_of(q))
        return SHMQ_EINVAL;
    return shmq_q_take(q, m, deadline_ns, 1);
}

int shmq_receive_end(shmq_seg_t *q, shmq_msg_t *m)
{
    /* acquire fence: the caller's copy happens before the re-check (as in shmq_peek) */
#if !defined(__SANITIZE_THREAD__)
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
    int ok = shmq_load_relaxed(&m->d->word) == m->word;
    m->d = NULL;
    if (!ok)
        return SHMQ_ESTALE;
    if (q->slot != UINT32_MAX)
        shmq_fetch_add_relaxed(&q->slots[q->slot].dequeued, 1);
    return SHMQ_OK;
}

/* ---------------------------------------------------------------- settle */

/* Claim the delivery a token names: INFLIGHT(g) (or READY(g): expired and put back, not yet
 * delivered again) -> `to`(us). Waits out another party's SETTLING moment (repairing a dead
 * one). SHMQ_OK with *wp = the word we replaced. */
static int claim(shmq_seg_t *q, uint64_t token, uint64_t id, uint32_t to, shmq_area_t **ap, shmq_desc_t **dp, uint64_t *wp)
{
    if (!shmq_ack_of(q))
        return SHMQ_EINVAL;
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, token, &a);
    if (!d)
        return SHMQ_ESTALE;
    uint32_t g = shmq_handle_dgen(token) & SHMQ_DGEN_MASK;
    uint64_t give_up = 0;
    for (;;) {
        uint64_t w = shmq_load_acquire(&d->word);
        uint32_t st = shmq_desc_state(w);
        if (shmq_desc_dgen(w) != g)
            return SHMQ_ESTALE;
        if (st == SHMQ_D_SETTLING) {
            /* someone holds it for a moment (a scan checking its lease, an extend) */
            uint64_t now = shmq_now_mono_ns();
            if (!give_up)
                give_up = now + SETTLE_WAIT_NS;
            if (now >= give_up)
                return SHMQ_TIMEOUT;
            if (!shmq_part_owner_alive(q, shmq_desc_owner(w)))
                shmq_repair_dead(q);
            sched_yield();
            continue;
        }
        if (st != SHMQ_D_INFLIGHT && st != SHMQ_D_READY)
            return SHMQ_ESTALE;
        /* the id is read after the word: if the descriptor was re-used since, the CAS fails */
        if (d->id != id)
            return SHMQ_ESTALE;
        if (shmq_cas_acq_rel(&d->word, &w, shmq_desc_word(g, to, q->owner))) {
            *ap = a;
            *dp = d;
            *wp = w;
            return SHMQ_OK;
        }
    }
}

static void publish_or_park(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g)
{
    uint32_t idx = (uint32_t)(((uint8_t *)d - a->desc) / SHMQ_DESC_SIZE);
    /* release: the fields above before the READY a consumer's CAS acquires */
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_READY, q->owner));
    if (shmq_q_publish(q, shmq_handle_make((uint32_t)(a - q->areas), idx, g)) == SHMQ_OK)
        return;
    /* No ring room now (stale cells fill a bounded ring): park it as an expired lease owned by
     * nobody, which the next timer scan puts back. Nobody else could have taken it: it is in
     * no ring. */
    uint64_t w = shmq_desc_word(g, SHMQ_D_READY, q->owner);
    shmq_store_release(&d->deadline_ns, 1);
    if (shmq_cas_acq_rel(&d->word, &w, shmq_desc_word(g, SHMQ_D_INFLIGHT, 0)))
        timer_hint(q, 1);
}

/* group hook (group.h): a parked member becomes its group's head (the table's lock is held):
 * published now, or delayed until its send's delay has passed. */
static void group_release(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, const shmq_group_blk_t *b)
{
    uint64_t w = shmq_load_acquire(&d->word);
    if (!shmq_group_parked(d, w))
        return;
    uint32_t g = shmq_desc_dgen(w);
    if (!shmq_cas_acq_rel(&d->word, &w, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)))
        return; /* purged meanwhile */
    uint64_t nb = b->not_before_ns, now = shmq_now_mono_ns();
    if (nb > now && nb < SHMQ_GROUP_PARK) {
        shmq_store_release(&d->deadline_ns, nb);
        shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_DELAYED, q->owner));
        timer_hint(q, nb);
        return;
    }
    shmq_store_release(&d->deadline_ns, 0);
    publish_or_park(q, a, d, g);
}

/* d is SETTLING(g, us) or MOVING(g, us) with its reason in d->flags: copy it into the
 * dead-letter queue (dedup on source + id), then free it. */
static void move_finish(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g)
{
    shmq_header_t *h = q->hdr;
    uint32_t reason = d->flags & SHMQ_DL_REASON_MASK;
    uint64_t size = d->size, skip = body_skip(d);
    if (!shmq_q_payload_valid(a, d) || skip > size) { /* untrusted: garbage is not forwarded */
        __atomic_fetch_add(&h->corrupt_skipped, 1, __ATOMIC_RELAXED);
        settle_group(q, a, d); /* finds no sane block: schedules a rebuild */
        d->chunk = SHMQ_NO_CHUNK;
        shmq_q_release_owned(q, a, d);
        return;
    }
    if (!has_dlq(q)) {
        /* a queue without a dead-letter queue (itself one): dropped, counted */
        settle_dedup(q, a, d);
        settle_group(q, a, d);
        shmq_q_release_owned(q, a, d);
        count(reason == SHMQ_DL_EXPIRED ? &K(q)->blk->expired : &K(q)->blk->dead_lettered);
        return;
    }
    if (!K(q)->dlq)
        goto refused; /* this handle has no dead-letter queue attached (a C-level user) */
    const uint8_t *p = shmq_q_payload(a, d);
    shmq_ack_meta_t mt;
    memcpy(&mt, p, sizeof mt);
    static const char *reasons[] = {"", "max_deliveries", "expired", "rejected"};
    char extra[1024];
    size_t xl = 0;
    char val[256];
    const char *keys[] = {"x-dead-letter-source", "x-dead-letter-reason", "x-delivery-count", "x-first-delivery",
                          "x-last-delivery", "x-original-id", "x-original-timestamp"};
    for (int k = 0; k < 7; k++) {
        int vl = 0;
        switch (k) {
        case 0: vl = snprintf(val, sizeof val, "%s", K(q)->name); break;
        case 1: vl = snprintf(val, sizeof val, "%s", reasons[reason < 4 ? reason : 0]); break;
        case 2: vl = snprintf(val, sizeof val, "%u", (unsigned)d->delivery_count); break;
        case 3: vl = snprintf(val, sizeof val, "%.6f", mt.first_delivery_ns / 1e9); break;
        case 4: vl = snprintf(val, sizeof val, "%.6f", mt.last_delivery_ns / 1e9); break;
        case 5: vl = snprintf(val, sizeof val, "%llu", (unsigned long long)d->id); break;
        case 6: vl = snprintf(val, sizeof val, "%.6f", d->timestamp_ns / 1e9); break;
        }
        if (vl < 0 || (size_t)vl >= sizeof val)
            vl = 0;
        uint16_t kl = (uint16_t)strlen(keys[k]);
        uint32_t vl32 = (uint32_t)vl;
        if (xl + 8 + kl + vl32 > sizeof extra)
            break;
        memcpy(extra + xl, &kl, 2);
        extra[xl + 2] = 0; /* str */
        extra[xl + 3] = 0;
        memcpy(extra + xl + 4, &vl32, 4);
        memcpy(extra + xl + 8, keys[k], kl);
        memcpy(extra + xl + 8 + kl, val, vl32);
        xl += 8 + kl + vl32;
    }
    uint32_t orig = d->hdr_size;
    if (orig + xl > SHMQ_HDR_MAX)
        orig = 0; /* the original headers do not fit beside ours: ours win (the body is kept) */
    uint8_t *hdr = malloc(orig + xl);
    if (!hdr)
        goto refused;
    memcpy(hdr, p + SHMQ_ACK_META + key_bytes(d) + group_bytes(d), orig);
    memcpy(hdr + orig, extra, xl);
    char keysrc[SHMQ_DLQ_NAME_MAX + 16];
    size_t nl = strnlen(K(q)->name, SHMQ_DLQ_NAME_MAX - 1);
    memcpy(keysrc, "dlq", 4);
    memcpy(keysrc + 4, K(q)->name, nl);
    memcpy(keysrc + 4 + nl, &d->id, 8);
    uint8_t key[16];
    shmq_hash128(keysrc, 4 + nl + 8, key);
    shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .hdr = hdr, .hdr_size = orig + (uint32_t)xl,
                          .priority = d->priority, .dedup_key = key};
    shmq_iov_t iov = {p + skip, size - skip};
    uint64_t nid;
    int dup;
    int rc = shmq_send(K(q)->dlq, &iov, 1, d->kind, &o, 0, &nid, &dup);
    free(hdr);
    if (rc != SHMQ_OK)
        goto refused;
    SHMQ_CRASH_POINT(mid_move);
    settle_dedup(q, a, d);
    settle_group(q, a, d);
    shmq_q_release_owned(q, a, d);
    count(&K(q)->blk->dead_lettered);
    if (reason == SHMQ_DL_EXPIRED)
        count(&K(q)->blk->expired);
    return;
refused:
    /* The message stays here, counted, and is tried again later. */
    count(&K(q)->blk->dead_letter_failed);
    d->deadline_ns = shmq_now_mono_ns() + DLQ_RETRY_NS;
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_DELAYED, q->owner));
    timer_hint(q, d->deadline_ns);
}

/* d is SETTLING(g, us): dead-letter it for `reason`. */
static void dead_letter(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g, uint32_t reason)
{
    d->flags = (uint8_t)((d->flags & ~SHMQ_DL_REASON_MASK) | reason);
    /* release: the reason before the MOVING state a repairer acts on */
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_MOVING, q->owner));
    SHMQ_CRASH_POINT(before_move);
    move_finish(q, a, d, g);
}

/* d is SETTLING(g, us) after a failed delivery: back to ready (or delayed), or, past
 * max_deliveries, to the dead-letter queue. */
static void fail_delivery(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g, uint64_t delay_ns, int counted)
{
    if (has_dlq(q) && d->delivery_count >= K(q)->max_deliveries) {
        dead_letter(q, a, d, g, SHMQ_DL_MAX_DELIVERIES);
        return;
    }
    if (!counted)
        count(&K(q)->blk->redelivered);
    d->flags &= (uint8_t)~SHMQ_DL_REASON_MASK; /* no dead-letter reason: a plain redelivery */
    if (delay_ns) {
        d->deadline_ns = shmq_now_mono_ns() + delay_ns;
        shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_DELAYED, q->owner));
        timer_hint(q, d->deadline_ns);
        return;
    }
    shmq_store_release(&d->deadline_ns, 0);
    publish_or_park(q, a, d, g);
}

static int ack_impl(shmq_seg_t *q, uint64_t token, uint64_t id, int keep);
int shmq_ack(shmq_seg_t *q, uint64_t token, uint64_t id) { return ack_impl(q, token, id, 0); }
int shmq_ack_keep(shmq_seg_t *q, uint64_t token, uint64_t id) { return ack_impl(q, token, id, 1); }

void shmq_ack_release(shmq_seg_t *q, uint64_t token)
{
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, token, &a);
    if (!d)
        return;
    /* only what our ack_keep left: READING(us) of this delivery (repair frees it if we die first) */
    uint64_t w = shmq_load_acquire(&d->word);
    if (shmq_desc_state(w) != SHMQ_D_READING || shmq_desc_owner(w) != q->owner ||
        shmq_desc_dgen(w) != (shmq_handle_dgen(token) & SHMQ_DGEN_MASK))
        return;
    shmq_q_release_owned(q, a, d);
}

static int ack_impl(shmq_seg_t *q, uint64_t token, uint64_t id, int keep)
{
    shmq_area_t *a;
    shmq_desc_t *d;
    uint64_t w;
    int rc = claim(q, token, id, SHMQ_D_READING, &a, &d, &w);
    if (rc != SHMQ_OK)
        return rc;
    /* Counted as soon as the claim is ours: from here the message is gone whatever happens (a
     * process killed below leaves READING(dead), which repair frees), so a kill during the
     * release cannot leave an ack uncounted (it could, a few hundred ns wide, when the count came
     * after the release); the window left is this one instruction after the CAS. */
    count(&K(q)->blk->acked);
    SHMQ_CRASH_POINT(mid_ack);
    if (shmq_q_payload_valid(a, d) && body_skip(d) <= d->size) { /* untrusted: the key lies inside */
        if (q->hist_blk) { /* processing time: receive -> ack (hist.h) */
            uint64_t got = ((const shmq_ack_meta_t *)shmq_q_payload(a, d))->last_delivery_ns, now = shmq_now_wall_ns();
            shmq_hist_process(q, now > got ? now - got : 0);
        }
        settle_dedup(q, a, d);
    }
    settle_group(q, a, d); /* the group's next member goes out at the ack, kept storage or not */
    if (!keep)
        shmq_q_release_owned(q, a, d);
    return SHMQ_OK;
}

int shmq_ack_hold(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t *held)
{
    shmq_area_t *a;
    shmq_desc_t *d;
    return claim(q, token, id, SHMQ_D_SETTLING, &a, &d, held);
}

void shmq_ack_unhold(shmq_seg_t *q, uint64_t token, uint64_t held)
{
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, token, &a);
    if (d) /* ours since the hold: as it was */
        shmq_store_release(&d->word, held);
}

void shmq_ack_held_finish(shmq_seg_t *q, uint64_t token)
{
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, token, &a);
    if (!d)
        return;
    /* SETTLING(us) -> READING(us): from here it is an ack (repair frees a READING(dead) one) */
    shmq_store_release(&d->word, shmq_desc_word(shmq_handle_dgen(token), SHMQ_D_READING, q->owner));
    count(&K(q)->blk->acked);
    if (shmq_q_payload_valid(a, d) && body_skip(d) <= d->size)
        settle_dedup(q, a, d);
    settle_group(q, a, d);
    shmq_q_release_owned(q, a, d);
}

int shmq_nack(shmq_seg_t *q, uint64_t token, uint64_t id, int requeue, uint64_t delay_ns)
{
    shmq_area_t *a;
    shmq_desc_t *d;
    uint64_t w;
    int rc = claim(q, token, id, SHMQ_D_SETTLING, &a, &d, &w);
    if (rc != SHMQ_OK)
        return rc;
    uint32_t g = shmq_desc_dgen(w);
    if (shmq_desc_state(w) == SHMQ_D_READY && requeue && !delay_ns) {
        shmq_store_release(&d->word, w); /* already put back by its lease's expiry: as it was */
        return SHMQ_OK;
    }
    SHMQ_CRASH_POINT(mid_nack);
    shmq_hist_count(q, SHMQ_HIST_NACKS, 1);
    if (!requeue)
        dead_letter(q, a, d, g, SHMQ_DL_REJECTED);
    else /* from READY: the lease's expiry counted this failure already */
        fail_delivery(q, a, d, g, delay_ns, shmq_desc_state(w) == SHMQ_D_READY);
    return SHMQ_OK;
}

int shmq_extend(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t ns)
{
    shmq_area_t *a;
    shmq_desc_t *d;
    uint64_t w;
    int rc = claim(q, token, id, SHMQ_D_SETTLING, &a, &d, &w);
    if (rc != SHMQ_OK)
        return rc;
    uint64_t dl = shmq_now_mono_ns() + ns;
    shmq_store_release(&d->deadline_ns, dl);
    /* An expired lease put back but not delivered again is taken back (its ring cell goes stale). */
    uint32_t owner = shmq_desc_state(w) == SHMQ_D_INFLIGHT ? shmq_desc_owner(w) : q->owner;
    shmq_store_release(&d->word, shmq_desc_word(shmq_desc_dgen(w), SHMQ_D_INFLIGHT, owner));
    timer_hint(q, dl);
    return SHMQ_OK;
}

void shmq_ack_set_dlq(shmq_seg_t *q, shmq_seg_t *dlq, const char *name)
{
    shmq_ack_t *k = shmq_ack_of(q);
    if (!k)
        return;
    k->dlq = dlq;
    snprintf(k->name, sizeof k->name, "%s", name ? name : "");
}

/* ---------------------------------------------------------------- hooks the queue calls */

/* A message was claimed: READING (get) or INFLIGHT(g+1) (receive). */
static int ack_taken(shmq_seg_t *q, shmq_msg_t *m, int mode)
{
    shmq_desc_t *d = m->d;
    uint64_t size = m->size, skip = body_skip(d);
    if (skip > size) { /* untrusted: the meta and header blocks lie inside the payload */
        __atomic_fetch_add(&q->hdr->corrupt_skipped, 1, __ATOMIC_RELAXED);
        settle_group(q, m->area, d); /* finds no sane block: schedules a rebuild */
        shmq_q_release_owned(q, m->area, d);
        return SHMQ_EAGAIN;
    }
    uint64_t now = take_now;
    uint32_t g = shmq_desc_dgen(m->word);
    if (d->expire_ns && d->expire_ns <= now) { /* its TTL passed while it waited */
        shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)); /* ours already */
        dead_letter(q, m->area, d, g, SHMQ_DL_EXPIRED);
        return SHMQ_EAGAIN;
    }
    uint8_t *p = (uint8_t *)m->data;
    if (mode) { /* the lease: deadline after the CAS (a 0 deadline is skipped by scans) */
        shmq_ack_meta_t *mt = (shmq_ack_meta_t *)p;
        uint64_t wall = shmq_now_wall_ns(); /* fine: the ack measures processing time from it (hist.h) */
        d->deadline_ns = now + K(q)->visibility_ns;
        /* the deadline is a lease end from here: a scan reads it once the ticks flag is gone (release) */
        shmq_store_release(&d->flags, (uint8_t)(d->flags & ~SHMQ_DF_TICKS));
        d->delivery_count++;
        if (SHMQ_UNLIKELY(q->journal != NULL))
            q->journal->hk->deliver(q, d->id); /* the delivery count survives a restart */
        if (!mt->first_delivery_ns)
            mt->first_delivery_ns = wall;
        mt->last_delivery_ns = wall;
        timer_hint(q, d->deadline_ns);
        SHMQ_CRASH_POINT(after_lease);
        m->handle = shmq_handle_make((uint32_t)(m->area - q->areas), shmq_handle_idx(m->handle), g);
        m->delivery_count = d->delivery_count;
    } else {
        settle_dedup(q, m->area, d); /* a plain get: the message leaves the queue now */
        settle_group(q, m->area, d);
    }
    m->group = NULL;
    m->group_len = m->group_type = 0;
    if (d->flags & SHMQ_DF_GROUP) {
        const shmq_group_blk_t *gb = (const shmq_group_blk_t *)(p + SHMQ_ACK_META + key_bytes(d));
        uint32_t gl = gb->key_len; /* untrusted: clamped (a plain get's copy may be freed later, not now) */
        m->group = gb->key;
        m->group_len = gl > SHMQ_GROUP_KEY_MAX ? SHMQ_GROUP_KEY_MAX : gl;
        m->group_type = gb->key_type ? 1u : 0u;
    }
    m->hdr = p + SHMQ_ACK_META + key_bytes(d) + group_bytes(d);
    m->hdr_size = d->hdr_size;
    m->data = p + skip;
    m->size = size - skip;
    return SHMQ_OK;
}

/* Repair: a dead owner's INFLIGHT, SETTLING or MOVING descriptor. */
static void ack_repair_desc(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w)
{
    uint32_t g = shmq_desc_dgen(w), st = shmq_desc_state(w);
    uint64_t exp = w;
    if (st == SHMQ_D_MOVING) {
        if (shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_MOVING, q->owner)))
            move_finish(q, a, d, g); /* sends again: the copy is de-duplicated by the DLQ */
        return;
    }
    if (st != SHMQ_D_INFLIGHT && st != SHMQ_D_SETTLING)
        return; /* DELAYED: owned by nobody in particular; the timer scan publishes it */
    /* INFLIGHT (the dead consumer's delivery) or SETTLING (a settle it had begun): a failed
     * delivery, within the repair bound rather than after the visibility timeout */
    if (shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)))
        fail_delivery(q, a, d, g, 0, 0);
}

static void ack_before_take(shmq_seg_t *q)
{
    take_now = shmq_now_mono_ns();
    shmq_lease_timers_maybe(q, take_now);
}

/* Sleepers wake for the next due timer (a delay or lease ending) as well, but not sooner than the
 * scans' own rate limit: a hint that stays in the past then costs 1000 wake-ups a second, not a spin. */
static uint64_t ack_wake_at(shmq_seg_t *q)
{
    uint64_t hint = shmq_load_relaxed(&K(q)->blk->timer_hint_ns), floor = shmq_now_mono_ns() + SHMQ_TIMER_GAP_NS;
    return hint < floor ? floor : hint;
}

/* stats: count descriptors by state (exact when quiescent, whatever crashed) and read the settle
 * counters. The ring count overstates the ready messages (stale cells). */
static void ack_stats(shmq_seg_t *q, shmq_stats_t *st)
{
    shmq_ack_hdr_t *b = K(q)->blk;
    uint64_t ready = 0, oldest = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint32_t s = shmq_desc_state(shmq_load_acquire(&d->word));
            if (s == SHMQ_D_READY) {
                ready++;
                uint64_t ts = d->timestamp_ns;
                if (ts && (!oldest || ts < oldest))
                    oldest = ts;
            } else if (s == SHMQ_D_INFLIGHT || s == SHMQ_D_SETTLING) {
                st->in_flight++;
            } else if (s == SHMQ_D_DELAYED && d->deadline_ns >= SHMQ_GROUP_PARK && (d->flags & SHMQ_DF_GROUP)) {
                ready++; /* a group member waiting for its turn: queued, not delayed */
            } else if (s == SHMQ_D_DELAYED) {
                st->delayed++;
            }
        }
    }
    st->depth = ready;
    st->oldest_ready_ns = oldest;
    st->acked = shmq_load_relaxed(&b->acked);
    st->redelivered = shmq_load_relaxed(&b->redelivered);
    st->dead_lettered = shmq_load_relaxed(&b->dead_lettered);
    st->expired = shmq_load_relaxed(&b->expired);
    st->dead_letter_failed = shmq_load_relaxed(&b->dead_letter_failed);
    st->dedup_hits = shmq_load_relaxed(&b->dedup_hits);
    st->visibility_ns = b->visibility_ns;
    st->max_deliveries = b->max_deliveries;
    st->default_delay_ns = b->default_delay_ns;
    st->default_ttl_ns = b->default_ttl_ns;
    st->dedup_window_ns = b->dedup_window_ns;
    st->dedup_slots = b->dedup_slots;
    memcpy(st->dead_letter, b->dead_letter, sizeof st->dead_letter);
    st->dead_letter[sizeof st->dead_letter - 1] = 0; /* untrusted: terminated */
}

static void ack_close(shmq_seg_t *q)
{
    if (q->kstate)
        free(K(q)->grp);
    free(q->kstate);
    q->kstate = NULL;
}

/* A forked child has one thread: a timer scan or dedup lookup a parent thread was inside at
 * the fork is not the child's (its flags would keep the child out of those locks forever). */
static void ack_after_fork(shmq_seg_t *q)
{
    shmq_ack_t *k = q->kstate;
    if (k) {
        k->timer_busy = 0;
        k->dedup_busy = 0;
    }
}

/* The handle closes (close(), the exit hook, a worker leaving through an exception or
 * sys.exit): its unacked deliveries go back now, each a failed delivery as a dead consumer's
 * are, instead of waiting out their leases (issue 13 item 2). The binding closes only when no
 * call of the handle is running, so every INFLIGHT descriptor stamped with our owner id is a
 * delivery the application still held. A kill during this is a death: repair finishes it. */
static void ack_detach(shmq_seg_t *q)
{
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word), exp = w;
            if (shmq_desc_state(w) != SHMQ_D_INFLIGHT || shmq_desc_owner(w) != q->owner)
                continue;
            uint32_t g = shmq_desc_dgen(w);
            if (!shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)))
                continue; /* its lease ended and the timer scan took it meanwhile */
            SHMQ_CRASH_POINT(mid_close_return);
            fail_delivery(q, a, d, g, 0, 0);
        }
}

/* Repair of a dead participant: the group table first (group.h: it stops counting what the dead
 * one was settling, links what it had put, releases groups nobody holds), then the queue's. */
static void ack_repair_owner(shmq_seg_t *q, uint32_t dead)
{
    if (K(q) && K(q)->grp)
        shmq_group_rebuild(q, K(q)->grp);
    shmq_q_repair_owner(q, dead);
}

static const shmq_queue_hooks_t ack_hooks = {
    .ops = {.name = "ack", .repair_owner = ack_repair_owner, .close = ack_close, .after_fork = ack_after_fork,
            .detach = ack_detach},
    .body_skip = body_skip,
    .keep_orphans = 1,
    .put = ack_put,
    .before_take = ack_before_take,
    .taken = ack_taken,
    .wake_at = ack_wake_at,
    .timer = timer_hint,
    .repair_desc = ack_repair_desc,
    .stats = ack_stats,
};

/* ---------------------------------------------------------------- region */

static uint32_t dedup_slots_of(const shmq_create_opts_t *o) { return o->dedup_slots ? o->dedup_slots : SHMQ_DEDUP_DEFAULT_SLOTS; }

static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    const shmq_create_opts_t *o = ctx;
    shmq_ack_hdr_t *b = (shmq_ack_hdr_t *)base;
    (void)size;
    b->visibility_ns = o->visibility_ns;
    b->default_delay_ns = o->default_delay_ns;
    b->default_ttl_ns = o->default_ttl_ns;
    b->dedup_window_ns = o->dedup_window_ns;
    b->dedup_slots = dedup_slots_of(o);
    b->max_deliveries = o->max_deliveries;
    if (o->dead_letter)
        snprintf(b->dead_letter, sizeof b->dead_letter, "%s", o->dead_letter);
    b->timer_hint_ns = SHMQ_NO_DEADLINE;
    /* the dedup table is zero (EMPTY entries): posix_fallocate'd pages read as zeros */
}

int shmq_ack_region(const shmq_create_opts_t *o, shmq_region_req_t *req)
{
    uint32_t n = dedup_slots_of(o);
    if ((n & (n - 1)) || n > (1u << 24) || o->max_deliveries == 0 || o->max_deliveries > 65535 ||
        o->visibility_ns == 0 || (o->dead_letter && strlen(o->dead_letter) >= SHMQ_DLQ_NAME_MAX))
        return SHMQ_EINVAL;
    req->kind = SHMQ_REGION_ACK;
    req->size = SHMQ_ACK_BLOCK + (uint64_t)dedup_slots_of(o) * SHMQ_DEDUP_ENT_SIZE;
    req->init = region_init;
    req->ctx = (void *)o;
    return SHMQ_OK;
}

/* untrusted: the block's options and the table's size against the region. */
static int region_check(const shmq_ack_hdr_t *b, uint64_t size)
{
    uint32_t n = b->dedup_slots;
    if (size < SHMQ_ACK_BLOCK || n == 0 || (n & (n - 1)) || n > (1u << 24) ||
        SHMQ_ACK_BLOCK + (uint64_t)n * SHMQ_DEDUP_ENT_SIZE > size)
        return SHMQ_ECORRUPT;
    if (b->max_deliveries == 0 || b->max_deliveries > 65535 || b->visibility_ns == 0)
        return SHMQ_ECORRUPT;
    if (memchr(b->dead_letter, 0, sizeof b->dead_letter) == NULL)
        return SHMQ_ECORRUPT;
    return SHMQ_OK;
}

int shmq_ack_valid(shmq_seg_t *q)
{
    uint64_t size;
    uint8_t *base = shmq_seg_region(q, SHMQ_REGION_ACK, &size);
    return base ? region_check((const shmq_ack_hdr_t *)base, size) : SHMQ_ECORRUPT;
}

int shmq_ack_bind(shmq_seg_t *q)
{
    uint64_t size;
    uint8_t *base = shmq_seg_region(q, SHMQ_REGION_ACK, &size);
    if (!base)
        return SHMQ_ECORRUPT; /* an at-least-once queue without its region */
    shmq_ack_hdr_t copy;
    memcpy(&copy, base, sizeof copy); /* validate a private copy: the file may change under us */
    int rc = region_check(&copy, size);
    if (rc != SHMQ_OK)
        return rc;
    shmq_ack_t *k = calloc(1, sizeof *k);
    if (!k)
        return SHMQ_ENOMEM;
    k->blk = (shmq_ack_hdr_t *)base;
    k->dedup = (shmq_dedup_ent_t *)(base + SHMQ_ACK_BLOCK);
    k->dedup_slots = copy.dedup_slots;
    k->max_deliveries = copy.max_deliveries;
    k->visibility_ns = copy.visibility_ns;
    rc = shmq_group_bind(q, &k->grp, group_release);
    if (rc != SHMQ_OK) {
        free(k);
        return rc;
    }
    q->kstate = k;
    shmq_q_bind_hooks(q, &ack_hooks);
    return SHMQ_OK;
}

/* ---------------------------------------------------------------- timers */

/* One scanner at a time as a rule, never as a wait: a try-lock whose dead holder's stamp is taken
 * over, and whose live holder is bypassed once it held it past SHMQ_TIMER_STEAL_NS (stopped or
 * descheduled): no single stopped process stops time for everyone. Process-local flag first (a
 * thread of ours scanning now is no reason to steal). */
static int timer_try(shmq_seg_t *q, uint64_t now)
{
    shmq_ack_t *k = K(q);
    uint32_t *wd = &k->blk->timer_lock;
    if (__atomic_exchange_n(&k->timer_busy, 1, __ATOMIC_ACQUIRE))
        return 0;
    uint32_t exp = 0;
    if (shmq_cas_acq_rel(wd, &exp, q->owner))
        goto held;
    uint64_t since = shmq_load_acquire(&k->blk->timer_lock_ns);
    if ((exp == q->owner || !shmq_part_owner_alive(q, exp) || (now > since && now - since > SHMQ_TIMER_STEAL_NS)) &&
        shmq_cas_acq_rel(wd, &exp, q->owner))
        goto held;
    __atomic_store_n(&k->timer_busy, 0, __ATOMIC_RELEASE);
    return 0;
held:
    shmq_store_release(&k->blk->timer_lock_ns, now);
    return 1;
}

static void timer_release(shmq_seg_t *q)
{
    uint32_t me = q->owner;
    /* CAS, not a store: a holder that was bypassed must not release its successor's lock */
    shmq_cas_acq_rel(&K(q)->blk->timer_lock, &me, 0);
    __atomic_store_n(&K(q)->timer_busy, 0, __ATOMIC_RELEASE);
}

static int timers_scan(shmq_seg_t *q, uint64_t now)
{
    if (!timer_try(q, now))
        return 0;
    /* seq_cst: before we look at any descriptor, so a deadline written after our look lowers
     * the hint again after this store */
    shmq_store_seq(&K(q)->blk->timer_hint_ns, SHMQ_NO_DEADLINE);
    uint64_t next = SHMQ_NO_DEADLINE;
    int changed = 0;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            uint32_t st = shmq_desc_state(w), g = shmq_desc_dgen(w);
            if (st != SHMQ_D_INFLIGHT && st != SHMQ_D_DELAYED && st != SHMQ_D_READY)
                continue;
            uint8_t fl = shmq_load_acquire(&d->flags); /* before the deadline: see the INFLIGHT case */
            uint64_t dl = shmq_load_acquire(&d->deadline_ns), ex = shmq_load_relaxed(&d->expire_ns);
            if (st == SHMQ_D_DELAYED && dl >= SHMQ_GROUP_PARK && (d->flags & SHMQ_DF_GROUP))
                continue; /* group hook: a parked member waits for its group (TTL applied at its turn) */
            uint64_t due;
            if (st == SHMQ_D_INFLIGHT) /* 0, or the put's ticks (hist.h) still there: a receiver is writing it */
                due = dl && !(fl & SHMQ_DF_TICKS) ? dl : SHMQ_NO_DEADLINE;
            else if (st == SHMQ_D_DELAYED)
                due = ex && ex < dl ? ex : dl;
            else
                due = ex ? ex : SHMQ_NO_DEADLINE;
            if (due > now) {
                if (due < next)
                    next = due;
                continue;
            }
            uint64_t exp = w;
            if (!shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)))
                continue;
            changed++;
            if (st == SHMQ_D_INFLIGHT) {
                /* untrusted/racy: re-read under our claim (extend claims first, so this holds) */
                if (shmq_load_acquire(&d->deadline_ns) > now) {
                    shmq_store_release(&d->word, w);
                    continue;
                }
                if (shmq_desc_owner(w) == 0) {
                    /* parked (no ring room when it was put back, or a dead producer's orphan):
                     * no delivery failed here, and its failure, if any, was counted already */
                    shmq_store_release(&d->deadline_ns, 0);
                    publish_or_park(q, a, d, g);
                    continue;
                }
                SHMQ_CRASH_POINT(mid_expire);
                fail_delivery(q, a, d, g, 0, 0);
            } else if (ex && ex <= now) {
                dead_letter(q, a, d, g, SHMQ_DL_EXPIRED);
            } else if ((d->flags & SHMQ_DL_REASON_MASK) >= SHMQ_DL_MAX_DELIVERIES &&
                       (d->flags & SHMQ_DL_REASON_MASK) <= SHMQ_DL_REJECTED) {
                dead_letter(q, a, d, g, d->flags & SHMQ_DL_REASON_MASK); /* a move the DLQ refused: again */
            } else { /* a delay came due */
                shmq_store_release(&d->deadline_ns, 0);
                publish_or_park(q, a, d, g);
            }
        }
    }
    timer_release(q);
    if (next != SHMQ_NO_DEADLINE && next < now + SHMQ_TIMER_GAP_NS)
        next = now + SHMQ_TIMER_GAP_NS;
    timer_hint(q, next);
    return changed;
}

static void shmq_lease_timers_maybe(shmq_seg_t *q, uint64_t now)
{
    if (SHMQ_UNLIKELY(now - q->last_liveness_ns >= SHMQ_LIVENESS_SLICE_NS) && q->slot != UINT32_MAX) {
        /* consumers that never sleep still notice a dead one (its leases come back promptly) */
        q->last_liveness_ns = now;
        shmq_repair_dead(q);
    }
    if (SHMQ_UNLIKELY(now >= shmq_load_relaxed(&K(q)->blk->timer_hint_ns)) && q->slot != UINT32_MAX)
        timers_scan(q, now);
}

int shmq_timers_run(shmq_seg_t *q)
{
    if (!shmq_ack_of(q) || q->slot == UINT32_MAX)
        return 0;
    return timers_scan(q, shmq_now_mono_ns());
}

/* ---------------------------------------------------------------- probes (request-reply) */

int shmq_ack_find(shmq_seg_t *q, uint64_t id, uint64_t *token)
{
    if (!shmq_ack_of(q))
        return SHMQ_EINVAL;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            uint32_t st = shmq_desc_state(w);
            if (st == SHMQ_D_FREE || st == SHMQ_D_WRITING || d->id != id)
                continue;
            if (shmq_load_acquire(&d->word) != w)
                continue; /* re-used while we read the id */
            *token = shmq_handle_make(i, k, shmq_desc_dgen(w));
            return SHMQ_OK;
        }
    return SHMQ_ESTALE;
}

int shmq_ack_probe(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_probe_t *p)
{
    memset(p, 0, sizeof *p);
    if (!shmq_ack_of(q))
        return SHMQ_EINVAL;
    shmq_area_t *a;
    shmq_desc_t *d = token_desc(q, token, &a);
    if (!d)
        return SHMQ_OK; /* untrusted token, or its area is gone: GONE */
    uint64_t w = shmq_load_acquire(&d->word);
    uint32_t st = shmq_desc_state(w), count = d->delivery_count;
    /* By id, not by the token's generation: each delivery stamps a new generation (so a stale
     * delivery cannot settle), while ids are never reused within a queue. */
    if (d->id != id || shmq_load_acquire(&d->word) != w)
        return SHMQ_OK; /* re-used: ours was settled */
    p->delivery_count = count;
    switch (st) {
    case SHMQ_D_READY:
        p->state = SHMQ_PROBE_READY;
        break;
    case SHMQ_D_DELAYED:
        p->state = SHMQ_PROBE_DELAYED;
        break;
    case SHMQ_D_INFLIGHT:
        p->state = SHMQ_PROBE_INFLIGHT;
        p->owner_alive = (uint32_t)shmq_part_owner_alive(q, shmq_desc_owner(w));
        break;
    case SHMQ_D_SETTLING:
    case SHMQ_D_MOVING:
    case SHMQ_D_READING:
        p->state = SHMQ_PROBE_BUSY;
        p->owner_alive = (uint32_t)shmq_part_owner_alive(q, shmq_desc_owner(w));
        break;
    default:
        break; /* FREE, WRITING (a new put): ours is gone */
    }
    return SHMQ_OK;
}
