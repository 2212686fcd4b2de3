#define _GNU_SOURCE
#include "lease.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "crashpoint.h"
#include "dedup.h"
#include "queue_int.h"
#include "wait.h"

#define SETTLE_WAIT_NS (100ull * 1000 * 1000) /* how long a settle waits for another holder's moment */
#define DLQ_RETRY_NS (1000ull * 1000 * 1000)  /* a move refused by a full dead-letter queue: again in 1 s */

static inline int has_dlq(shmq_seg_t *q) { return q->hdr->ack.dead_letter[0] != 0; }

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
    shmq_header_t *h = q->hdr;
    *dup = 0;
    if (!(h->flags & SHMQ_F_ACK) || o->hdr_size > SHMQ_HDR_MAX)
        return SHMQ_EINVAL;
    shmq_lease_timers_maybe(q, shmq_now_mono_ns()); /* producers apply due expiries too */
    shmq_put_ext_t x;
    memset(&x, 0, sizeof x);
    x.delay_ns = o->delay_ns == SHMQ_USE_DEFAULT ? h->ack.default_delay_ns : o->delay_ns;
    uint64_t ttl = o->ttl_ns == SHMQ_USE_DEFAULT ? h->ack.default_ttl_ns : o->ttl_ns;
    x.expire_ns = ttl ? shmq_now_mono_ns() + ttl : 0;
    x.hdr = o->hdr;
    x.hdr_size = o->hdr_size;
    x.priority = o->priority;
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
    int rc = shmq_q_put(q, iov, n, kind, deadline_ns, id, &x);
    if (o->dedup_key)
        shmq_dedup_finish(q, o->dedup_key, rc == SHMQ_OK);
    return rc;
}

/* ---------------------------------------------------------------- receive */

int shmq_receive_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns)
{
    if (!(q->hdr->flags & SHMQ_F_ACK))
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
            if (!shmq_seg_owner_alive(q, shmq_desc_owner(w)))
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
        shmq_q_timer_hint(q, 1);
}

/* d is SETTLING(g, us) or MOVING(g, us) with its reason in d->flags: copy it into the
 * dead-letter queue (dedup on source + id), then free it. */
static void move_finish(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g)
{
    shmq_header_t *h = q->hdr;
    uint32_t reason = d->flags;
    if (!has_dlq(q)) {
        /* a queue without a dead-letter queue (itself one): dropped, counted */
        shmq_q_release_owned(q, a, d);
        count(reason == SHMQ_DL_EXPIRED ? &h->ack.expired : &h->ack.dead_lettered);
        return;
    }
    uint64_t size = d->size, skip = SHMQ_ACK_META + (uint64_t)d->hdr_size;
    if (!shmq_q_payload_valid(a, d) || skip > size) { /* untrusted: garbage is not forwarded */
        __atomic_fetch_add(&h->corrupt_skipped, 1, __ATOMIC_RELAXED);
        d->chunk = SHMQ_NO_CHUNK;
        shmq_q_release_owned(q, a, d);
        return;
    }
    if (!q->dlq)
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
        case 0: vl = snprintf(val, sizeof val, "%s", q->name); break;
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
    memcpy(hdr, p + SHMQ_ACK_META, orig);
    memcpy(hdr + orig, extra, xl);
    char keysrc[SHMQ_DLQ_NAME_MAX + 16];
    size_t nl = strnlen(q->name, SHMQ_DLQ_NAME_MAX - 1);
    memcpy(keysrc, "dlq", 4);
    memcpy(keysrc + 4, q->name, nl);
    memcpy(keysrc + 4 + nl, &d->id, 8);
    uint8_t key[16];
    shmq_hash128(keysrc, 4 + nl + 8, key);
    shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .hdr = hdr, .hdr_size = orig + (uint32_t)xl,
                          .priority = d->priority, .dedup_key = key};
    shmq_iov_t iov = {p + skip, size - skip};
    uint64_t nid;
    int dup;
    int rc = shmq_send(q->dlq, &iov, 1, d->kind, &o, 0, &nid, &dup);
    free(hdr);
    if (rc != SHMQ_OK)
        goto refused;
    SHMQ_CRASH_POINT(mid_move);
    shmq_q_release_owned(q, a, d);
    count(&h->ack.dead_lettered);
    if (reason == SHMQ_DL_EXPIRED)
        count(&h->ack.expired);
    return;
refused:
    /* The message stays here, counted, and is tried again later. */
    count(&h->ack.dead_letter_failed);
    d->deadline_ns = shmq_now_mono_ns() + DLQ_RETRY_NS;
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_DELAYED, q->owner));
    shmq_q_timer_hint(q, d->deadline_ns);
}

/* d is SETTLING(g, us): dead-letter it for `reason`. */
static void dead_letter(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g, uint32_t reason)
{
    d->flags = (uint8_t)reason;
    /* release: the reason before the MOVING state a repairer acts on */
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_MOVING, q->owner));
    SHMQ_CRASH_POINT(before_move);
    move_finish(q, a, d, g);
}

/* d is SETTLING(g, us) after a failed delivery: back to ready (or delayed), or, past
 * max_deliveries, to the dead-letter queue. */
static void fail_delivery(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint32_t g, uint64_t delay_ns, int counted)
{
    if (has_dlq(q) && d->delivery_count >= q->max_deliveries) {
        dead_letter(q, a, d, g, SHMQ_DL_MAX_DELIVERIES);
        return;
    }
    if (!counted)
        count(&q->hdr->ack.redelivered);
    d->flags = 0; /* no dead-letter reason: a plain redelivery */
    if (delay_ns) {
        d->deadline_ns = shmq_now_mono_ns() + delay_ns;
        shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_DELAYED, q->owner));
        shmq_q_timer_hint(q, d->deadline_ns);
        return;
    }
    shmq_store_release(&d->deadline_ns, 0);
    publish_or_park(q, a, d, g);
}

int shmq_ack(shmq_seg_t *q, uint64_t token, uint64_t id)
{
    shmq_area_t *a;
    shmq_desc_t *d;
    uint64_t w;
    int rc = claim(q, token, id, SHMQ_D_READING, &a, &d, &w);
    if (rc != SHMQ_OK)
        return rc;
    SHMQ_CRASH_POINT(mid_ack);
    shmq_q_release_owned(q, a, d);
    count(&q->hdr->ack.acked);
    return SHMQ_OK;
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
    shmq_q_timer_hint(q, dl);
    return SHMQ_OK;
}

void shmq_ack_set_dlq(shmq_seg_t *q, shmq_seg_t *dlq, const char *name)
{
    q->dlq = dlq;
    snprintf(q->name, sizeof q->name, "%s", name ? name : "");
}

/* ---------------------------------------------------------------- hooks from queue.c */

void shmq_lease_expire_taken(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w)
{
    uint32_t g = shmq_desc_dgen(w);
    shmq_store_release(&d->word, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)); /* ours already */
    dead_letter(q, a, d, g, SHMQ_DL_EXPIRED);
}

void shmq_lease_repair_desc(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w)
{
    uint32_t g = shmq_desc_dgen(w), st = shmq_desc_state(w);
    uint64_t exp = w;
    if (st == SHMQ_D_MOVING) {
        if (shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_MOVING, q->owner)))
            move_finish(q, a, d, g); /* sends again: the copy is de-duplicated by the DLQ */
        return;
    }
    /* INFLIGHT (the dead consumer's delivery) or SETTLING (a settle it had begun): a failed
     * delivery, within the repair bound rather than after the visibility timeout */
    if (shmq_cas_acq_rel(&d->word, &exp, shmq_desc_word(g, SHMQ_D_SETTLING, q->owner)))
        fail_delivery(q, a, d, g, 0, 0);
}

/* ---------------------------------------------------------------- timers */

/* One scanner at a time, without lock.c: the scan takes the arena lock (frees) and lock.c's
 * per-process flag would make that self-deadlock. A dead scanner's stamp is taken over. */
static int timer_try(shmq_seg_t *q)
{
    uint32_t *wd = &q->hdr->ack.timer_lock;
    uint32_t exp = 0;
    if (shmq_cas_acq_rel(wd, &exp, q->owner))
        return 1;
    if (exp != q->owner && !shmq_seg_owner_alive(q, exp) && shmq_cas_acq_rel(wd, &exp, q->owner))
        return 1;
    return 0;
}

static int timers_scan(shmq_seg_t *q, uint64_t now)
{
    shmq_header_t *h = q->hdr;
    if (!timer_try(q))
        return 0;
    /* seq_cst: before we look at any descriptor, so a deadline written after our look lowers
     * the hint again after this store */
    shmq_store_seq(&h->ack.timer_hint_ns, SHMQ_NO_DEADLINE);
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
            uint64_t dl = shmq_load_acquire(&d->deadline_ns), ex = shmq_load_relaxed(&d->expire_ns);
            uint64_t due;
            if (st == SHMQ_D_INFLIGHT)
                due = dl ? dl : SHMQ_NO_DEADLINE; /* 0: a receiver is writing it (and lowers the hint) */
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
                SHMQ_CRASH_POINT(mid_expire);
                fail_delivery(q, a, d, g, 0, 0);
            } else if (ex && ex <= now) {
                dead_letter(q, a, d, g, SHMQ_DL_EXPIRED);
            } else if (d->flags >= SHMQ_DL_MAX_DELIVERIES && d->flags <= SHMQ_DL_REJECTED) {
                dead_letter(q, a, d, g, d->flags); /* a move the dead-letter queue refused: again */
            } else { /* a delay came due */
                shmq_store_release(&d->deadline_ns, 0);
                publish_or_park(q, a, d, g);
            }
        }
    }
    shmq_store_release(&h->ack.timer_lock, 0);
    if (next != SHMQ_NO_DEADLINE && next < now + SHMQ_TIMER_GAP_NS)
        next = now + SHMQ_TIMER_GAP_NS;
    shmq_q_timer_hint(q, next);
    return changed;
}

void shmq_lease_timers_maybe(shmq_seg_t *q, uint64_t now)
{
    if (SHMQ_UNLIKELY(now - q->last_liveness_ns >= SHMQ_LIVENESS_SLICE_NS) && q->slot != UINT32_MAX) {
        /* consumers that never sleep still notice a dead one (its leases come back promptly) */
        q->last_liveness_ns = now;
        shmq_repair_dead(q);
    }
    if (SHMQ_UNLIKELY(now >= shmq_load_relaxed(&q->hdr->ack.timer_hint_ns)) && q->slot != UINT32_MAX)
        timers_scan(q, now);
}

int shmq_timers_run(shmq_seg_t *q)
{
    if (!(q->hdr->flags & SHMQ_F_ACK) || q->slot == UINT32_MAX)
        return 0;
    return timers_scan(q, shmq_now_mono_ns());
}
