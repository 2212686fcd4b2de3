#define _GNU_SOURCE
#include "topic.h"

#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "crashpoint.h"
#include "lock.h"
#include "participants.h"
#include "queue_int.h"
#include "wait.h"

#define LOCK_WAIT_NS (1000ull * 1000 * 1000) /* subscribe/unsubscribe wait this long for a (stopped?) lock holder */

static const shmq_queue_hooks_t topic_hooks;
static inline shmq_topic_t *T(shmq_seg_t *t) { return t->kstate; }
shmq_topic_t *shmq_topic_of(shmq_seg_t *t) { return t && t->ops == &topic_hooks.ops ? t->kstate : NULL; }

/* ---------------------------------------------------------------- geometry */

typedef struct {
    uint32_t n_entries, max_subs, max_slots;
    uint64_t ents_off, subs_off, members_off, leases_off, data_off, data_size, total;
} geo_t;

/* The one layout rule, used by the creator and checked by every opener. */
static void geometry(uint32_t n_entries, uint32_t max_subs, uint32_t max_slots, uint32_t n_leases, uint64_t data_size,
                     geo_t *g)
{
    g->n_entries = n_entries;
    g->max_subs = max_subs;
    g->max_slots = max_slots;
    g->ents_off = sizeof(shmq_topic_hdr_t);
    g->subs_off = g->ents_off + (uint64_t)n_entries * sizeof(shmq_topic_ent_t);
    g->members_off = g->subs_off + (uint64_t)max_subs * sizeof(shmq_topic_sub_t);
    g->leases_off = SHMQ_ALIGN_UP(g->members_off + 8ull * max_slots, 64);
    g->data_off = g->leases_off + (uint64_t)n_leases * sizeof(shmq_topic_lease_t);
    g->data_size = data_size;
    g->total = g->data_off + data_size;
}

static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    (void)size; /* sized by shmq_topic_region */
    const shmq_topic_hdr_t *p = ctx;
    memcpy(base, p, sizeof(shmq_topic_hdr_t)); /* the rest is zero (posix_fallocate'd) */
    shmq_topic_lease_t *l = (shmq_topic_lease_t *)(base + p->leases_off);
    for (uint32_t i = 0; i < p->n_leases; i++)
        l[i].seq = SHMQ_TL_NO_SEQ;
}

int shmq_topic_region(uint64_t capacity, uint64_t max_message, uint64_t retention_ns, uint32_t max_slots,
                      shmq_region_req_t *req)
{
    /* Sizing rule (docs/guide/topics.md): one 32-byte entry per 256 bytes of capacity (a power
     * of two, at least 64), the subscription table and membership words, the rest data. */
    static __thread shmq_topic_hdr_t proto; /* read by region_init during this thread's create */
    if (max_slots == 0)
        max_slots = SHMQ_DEFAULT_SLOTS;
    if (capacity < 64 * 1024 || capacity > (1ull << 40) || max_slots > SHMQ_MAX_SLOTS)
        return SHMQ_EINVAL;
    uint32_t n = 64;
    while ((uint64_t)n * 2 * 256 <= capacity && n < (1u << 26))
        n *= 2;
    /* leases: one per KiB of capacity, from 64 to SHMQ_TOPIC_LEASES (messages in flight at once) */
    uint64_t nl = capacity / 1024;
    uint32_t n_leases = nl < 64 ? 64 : nl > SHMQ_TOPIC_LEASES ? SHMQ_TOPIC_LEASES : (uint32_t)nl;
    geo_t g;
    geometry(n, SHMQ_TOPIC_MAX_SUBS, max_slots, n_leases, 0, &g);
    if (g.data_off + 4096 > capacity)
        return SHMQ_EINVAL;
    uint64_t data = (capacity - g.data_off) & ~63ull;
    if (max_message == 0)
        max_message = data / 4;
    if (max_message > data / 2 || max_message > UINT32_MAX)
        return SHMQ_ETOOBIG;
    geometry(n, SHMQ_TOPIC_MAX_SUBS, max_slots, n_leases, data, &g);
    memset(&proto, 0, sizeof proto);
    proto.magic = SHMQ_TOPIC_MAGIC;
    proto.version = SHMQ_TOPIC_VERSION;
    proto.max_subs = g.max_subs;
    proto.n_entries = g.n_entries;
    proto.max_slots = max_slots;
    proto.data_size = g.data_size;
    proto.retention_ns = retention_ns;
    proto.max_message = max_message;
    proto.ents_off = g.ents_off;
    proto.subs_off = g.subs_off;
    proto.members_off = g.members_off;
    proto.data_off = g.data_off;
    proto.leases_off = g.leases_off;
    proto.n_leases = n_leases;
    proto.head_seq = 1;
    proto.tail_seq = 1;
    proto.gate_seq = UINT64_MAX;
    req->kind = SHMQ_REGION_TOPIC;
    req->size = g.total;
    req->init = region_init;
    req->ctx = &proto;
    return SHMQ_OK;
}

void shmq_topic_hist_region(const shmq_region_req_t *topic_req, uint32_t max_slots, shmq_region_req_t *req)
{
    const shmq_topic_hdr_t *p = topic_req->ctx;
    shmq_hist_region_topic(max_slots, p->max_subs, p->n_entries, p->n_leases, req);
}

int shmq_topic_sub_hist(shmq_seg_t *t, uint32_t idx, shmq_hist_sum_t *out)
{
    shmq_topic_t *k = T(t);
    if (k == NULL || !k->hist.subs || idx >= k->max_subs) {
        memset(out, 0, sizeof *out);
        return SHMQ_EINVAL;
    }
    return shmq_hist_read_block(&k->hist.subs[idx], out);
}

/* untrusted: the region's header must describe exactly the layout the rule gives. */
static int check_region(shmq_seg_t *t, shmq_topic_hdr_t *th, uint64_t size)
{
    if (size < sizeof(shmq_topic_hdr_t) || th->magic != SHMQ_TOPIC_MAGIC || th->version != SHMQ_TOPIC_VERSION)
        return SHMQ_ECORRUPT;
    uint32_t n = th->n_entries;
    if (n < 64 || n > (1u << 26) || (n & (n - 1)) || th->max_subs == 0 || th->max_subs > SHMQ_TOPIC_MAX_SUBS ||
        th->max_slots != t->hdr->max_slots || th->max_slots > SHMQ_MAX_SLOTS)
        return SHMQ_ECORRUPT;
    if (th->data_size < 4096 || th->data_size % 64 || th->data_size > (1ull << 40) || th->max_message > th->data_size / 2)
        return SHMQ_ECORRUPT;
    geo_t g;
    if (th->n_leases < 64 || th->n_leases > SHMQ_TOPIC_LEASES)
        return SHMQ_ECORRUPT;
    geometry(n, th->max_subs, th->max_slots, th->n_leases, th->data_size, &g);
    if (th->ents_off != g.ents_off || th->subs_off != g.subs_off || th->members_off != g.members_off ||
        th->data_off != g.data_off || th->leases_off != g.leases_off ||
        g.total > size)
        return SHMQ_ECORRUPT;
    return SHMQ_OK;
}

int shmq_topic_valid(shmq_seg_t *t)
{
    uint64_t size = 0;
    shmq_topic_hdr_t *th = (shmq_topic_hdr_t *)shmq_seg_region(t, SHMQ_REGION_TOPIC, &size);
    if (th == NULL)
        return SHMQ_ECORRUPT;
    int rc = check_region(t, th, size);
    if (rc != SHMQ_OK)
        return rc;
    uint64_t head = shmq_load_acquire(&th->head_seq), tail = shmq_load_acquire(&th->tail_seq);
    if (head == 0 || tail == 0 || tail > head)
        return SHMQ_ECORRUPT;
    return SHMQ_OK;
}

static void topic_close(shmq_seg_t *t)
{
    free(t->kstate);
    t->kstate = NULL;
}

/* A member's slot stops counting as a consumer of anything. */
static void clear_members(shmq_seg_t *t, uint32_t slot)
{
    if (slot < T(t)->max_slots)
        shmq_store_seq(&T(t)->members[slot], 0);
}

static void topic_detach(shmq_seg_t *t) { clear_members(t, t->slot); }

static void leases_repair(shmq_seg_t *t, uint32_t dead);

static void topic_repair_owner(shmq_seg_t *t, uint32_t dead)
{
    leases_repair(t, dead); /* ack=True: its deliveries go back to its group */
    /* A dead reader held no message and no cursor (read, then claim): only its membership. A
     * dead publisher's lock is stolen by the next publisher (nothing to rebuild, topic.h). */
    clear_members(t, shmq_owner_slot(dead));
}

static const shmq_queue_hooks_t topic_hooks = {
    .ops = {.name = "topic", .repair_owner = topic_repair_owner, .close = topic_close, .detach = topic_detach},
};

int shmq_topic_bind(shmq_seg_t *t)
{
    uint64_t size = 0;
    shmq_topic_hdr_t *th = (shmq_topic_hdr_t *)shmq_seg_region(t, SHMQ_REGION_TOPIC, &size);
    if (th == NULL || check_region(t, th, size) != SHMQ_OK)
        return SHMQ_ECORRUPT;
    uint64_t head = shmq_load_acquire(&th->head_seq), tail = shmq_load_acquire(&th->tail_seq);
    if (head == 0 || tail == 0 || tail > head || head >= (1ull << 62))
        return SHMQ_ECORRUPT; /* untrusted: cursors a publisher never writes */
    shmq_topic_t *k = calloc(1, sizeof *k);
    if (k == NULL) {
        t->err = 12; /* ENOMEM */
        return SHMQ_ESYS;
    }
    uint8_t *base = (uint8_t *)th;
    /* process-local copies of the validated geometry: every index below is bounded by these */
    k->th = th;
    k->n_entries = th->n_entries;
    k->max_subs = th->max_subs;
    k->max_slots = th->max_slots;
    k->data_size = th->data_size;
    k->max_message = th->max_message;
    k->retention_ns = th->retention_ns;
    k->ents = (shmq_topic_ent_t *)(base + th->ents_off);
    k->subs = (shmq_topic_sub_t *)(base + th->subs_off);
    k->members = (uint64_t *)(base + th->members_off);
    k->data = base + th->data_off;
    k->leases = (shmq_topic_lease_t *)(base + th->leases_off);
    k->n_leases = th->n_leases;
    /* latency parts: optional (a segment made before them has none), sized by this geometry */
    (void)shmq_hist_topic_parts(t, k->max_subs, k->n_entries, k->n_leases, &k->hist);
    t->kstate = k;
    t->ops = &topic_hooks.ops;
    return SHMQ_OK;
}

uint64_t shmq_topic_head(shmq_seg_t *t) { return shmq_load_acquire(&T(t)->th->head_seq); }
uint64_t shmq_topic_tail(shmq_seg_t *t) { return shmq_load_acquire(&T(t)->th->tail_seq); }

/* ---------------------------------------------------------------- waiting */

typedef int (*tcheck_fn)(shmq_seg_t *t, void *ctx);
typedef struct {
    shmq_seg_t *t;
    tcheck_fn check;
    void *ctx;
} tcheck_ctx;

static int run_tcheck(void *v)
{
    tcheck_ctx *c = v;
    return c->check(c->t, c->ctx);
}

static void liveness_slice(void *ctx)
{
    shmq_seg_t *t = ctx;
    if (shmq_now_mono_ns() - t->last_liveness_ns >= SHMQ_LIVENESS_SLICE_NS) {
        t->last_liveness_ns = shmq_now_mono_ns();
        if (t->slot != UINT32_MAX)
            shmq_part_repair_dead(t);
    }
}

static int sleep_on(shmq_seg_t *t, shmq_waitq_t *wq, uint32_t unit, tcheck_fn check, void *ctx, uint64_t deadline_ns)
{
    shmq_slot_t *sl = t->slot != UINT32_MAX ? &t->slots[t->slot] : NULL;
    shmq_sleeper_t who = {.slot_waiting = sl ? &sl->waiting : NULL, .slot_unit = unit,
                          .run_state = sl ? &sl->run_state : NULL, .on_slice = liveness_slice, .slice_ctx = t,
                          .closing = &t->closing, .poll_signals = t->poll_signals};
    tcheck_ctx c = {t, check, ctx};
    /* the header's wait queues: participants.c folds a dead sleeper's count out of them */
    return shmq_waitq_sleep(wq, 1, run_tcheck, &c, &who, deadline_ns);
}

static inline void wake_readers(shmq_seg_t *t) { shmq_waitq_wake(&t->hdr->not_empty, INT32_MAX, 1); }
static inline void wake_publishers(shmq_seg_t *t) { shmq_waitq_wake(&t->hdr->not_full, INT32_MAX, 1); }

/* lease words (topic.h: lease pool) */
static inline uint64_t lw(uint32_t lgen, uint32_t sub, uint32_t state, uint32_t owner)
{
    return ((uint64_t)(lgen & 0x3fffffu) << 42) | ((uint64_t)(sub & 63u) << 36) | ((uint64_t)(state & 15u) << 32) | owner;
}
static inline uint32_t lw_gen(uint64_t w) { return (uint32_t)(w >> 42) & 0x3fffffu; }
static inline uint32_t lw_sub(uint64_t w) { return (uint32_t)(w >> 36) & 63u; }
static inline uint32_t lw_state(uint64_t w) { return (uint32_t)(w >> 32) & 15u; }
static inline uint32_t lw_owner(uint64_t w) { return (uint32_t)w; }
static inline uint64_t token_make(uint32_t i, uint32_t lgen) { return ((uint64_t)lgen << 32) | i; }

/* Give entry l (held by us: CLAIM or SETTLING) back to the pool. */
static void lease_free(shmq_topic_lease_t *l, uint64_t held)
{
    shmq_store_relaxed(&l->seq, SHMQ_TL_NO_SEQ);
    shmq_store_seq(&l->word, lw(lw_gen(held) + 1, 0, SHMQ_TL_FREE, 0)); /* seq_cst: after the seq it voids */
}

/* ---------------------------------------------------------------- publish */

/* Lowest cursor of the live block subscriptions, never below tail (a cursor behind the tail
 * holds nothing: its reader skips and counts). UINT64_MAX: none. */
static uint64_t scan_gate(shmq_topic_t *k, uint64_t tail)
{
    uint64_t g = UINT64_MAX;
    for (uint32_t i = 0; i < k->max_subs; i++) {
        shmq_topic_sub_t *s = &k->subs[i];
        if (shmq_load_acquire(&s->state) != SHMQ_TSUB_LIVE || !(shmq_load_relaxed(&s->flags) & SHMQ_TSUB_BLOCK))
            continue;
        uint64_t c = shmq_load_acquire(&s->cursor);
        if (c < tail)
            c = tail;
        if (c < g)
            g = c;
    }
    /* a message held under a lease of a block subscription is not consumed yet */
    for (uint32_t i = 0; i < k->n_leases; i++) {
        uint64_t w = shmq_load_acquire(&k->leases[i].word);
        if (lw_state(w) == SHMQ_TL_FREE)
            continue;
        shmq_topic_sub_t *s = &k->subs[lw_sub(w) % k->max_subs];
        uint64_t seq = shmq_load_relaxed(&k->leases[i].seq);
        if (seq == SHMQ_TL_NO_SEQ || !(shmq_load_relaxed(&s->flags) & SHMQ_TSUB_BLOCK) ||
            shmq_load_relaxed(&k->leases[i].sub_gen) != shmq_load_relaxed(&s->gen))
            continue;
        if (seq < tail)
            seq = tail;
        if (seq < g)
            g = seq;
    }
    return g;
}

static inline uint64_t iov_bytes(const shmq_topic_pub_t *m)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < m->n_iov; i++)
        n += m->iov[i].len;
    return n;
}

/* Under pub_lock: publish as many of msgs as the gate allows. *gated = 1 if it stopped there. */
static int publish_locked(shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint32_t *done, int *gated,
                          uint64_t *seqs)
{
    shmq_topic_t *k = T(t);
    shmq_topic_hdr_t *th = k->th;
    const uint64_t D = k->data_size, mask = k->n_entries - 1;
    uint64_t h = shmq_load_relaxed(&th->head_seq), tail = shmq_load_relaxed(&th->tail_seq);
    uint64_t dh = shmq_load_relaxed(&th->data_head), ts = shmq_load_relaxed(&th->last_ts);
    uint64_t gate = shmq_load_relaxed(&th->gate_seq);
    if (tail > h || tail == 0) /* untrusted: forged cursors; a tail past the head would hide every message */
        tail = h;
    uint64_t now = shmq_now_wall_coarse_ns();
    if (now > ts)
        ts = now;
    uint64_t *ticks = k->hist.ticks;
    uint64_t tk = ticks ? shmq_ticks() : 0; /* the wait histograms' clock (hist.h), one per batch */
    int rc = SHMQ_OK;
    uint32_t i = 0;
    *gated = 0;
    for (; i < n; i++) {
        uint64_t size = iov_bytes(&msgs[i]);
        if (size > k->max_message || msgs[i].hdr_size > size || msgs[i].hdr_size > 0xffffu) {
            rc = size > k->max_message ? SHMQ_ETOOBIG : SHMQ_EINVAL;
            break;
        }
        uint64_t len = SHMQ_ALIGN_UP(size, SHMQ_TOPIC_ALIGN);
        uint64_t pos = dh;
        if (pos % D + len > D)
            pos += D - pos % D; /* a payload never wraps: skip the ring's end */
        uint64_t end = pos + len;
        /* the oldest message that may stay: its entry is not ours and its bytes are not reused */
        uint64_t need = tail;
        if (h + 1 > k->n_entries && need < h + 1 - k->n_entries)
            need = h + 1 - k->n_entries;
        while (need < h && end > D && shmq_load_relaxed(&k->ents[need & mask].pos) < end - D)
            need++; /* untrusted pos: the loop is bounded by h - need <= n_entries */
        uint64_t expired = tail;
        if (k->retention_ns && now > k->retention_ns)
            while (expired < h && shmq_load_relaxed(&k->ents[expired & mask].timestamp_ns) + k->retention_ns < now)
                expired++;
        if (need > gate && need > expired) {
            gate = scan_gate(k, tail);
            shmq_store_relaxed(&th->gate_seq, gate);
            if (need > gate && need > expired) {
                *gated = 1;
                rc = SHMQ_FULL;
                break;
            }
        }
        uint64_t nt = need > expired ? need : expired;
        if (nt > tail) {
            shmq_store_seq(&th->tail_seq, nt);
            shmq_store_relaxed(&th->dropped, shmq_load_relaxed(&th->dropped) + (nt - tail));
            tail = nt;
            /* the tail's move is visible before any overwrite below (seqlock); TSan builds cannot
             * express the fence and keep the seq_cst store alone (as inspect.c does) */
#if !defined(__SANITIZE_THREAD__)
            __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
        }
        shmq_topic_ent_t *e = &k->ents[h & mask];
        uint8_t *dst = k->data + pos % D;
        for (uint32_t j = 0; j < msgs[i].n_iov; j++) {
            memcpy(dst, msgs[i].iov[j].ptr, msgs[i].iov[j].len);
            dst += msgs[i].iov[j].len;
            if (j == 0)
                SHMQ_CRASH_POINT(topic_mid_publish);
        }
        e->pos = pos;
        e->size = (uint32_t)size;
        e->hdr_size = (uint16_t)msgs[i].hdr_size;
        e->kind = (uint8_t)msgs[i].kind;
        e->flags = 0;
        e->timestamp_ns = ts;
        if (ticks)
            shmq_store_relaxed(&ticks[h & mask], tk);
        shmq_store_relaxed(&e->seq, h);
        if (seqs)
            seqs[i] = h;
        dh = end;
        h++;
    }
    *done = i;
    if (i > 0) {
        shmq_store_relaxed(&th->data_head, dh);
        shmq_store_relaxed(&th->last_ts, ts);
        shmq_store_relaxed(&th->published, shmq_load_relaxed(&th->published) + i);
        SHMQ_CRASH_POINT(topic_before_commit);
        shmq_store_seq(&th->head_seq, h); /* the commit; seq_cst: before the waiter count's load (wait.h) */
        SHMQ_CRASH_POINT(topic_after_commit);
        wake_readers(t);
    }
    return rc;
}

typedef struct {
    uint64_t gate;
} gate_wait_t;

static int gate_check(shmq_seg_t *t, void *ctx)
{
    gate_wait_t *w = ctx;
    shmq_topic_t *k = T(t);
    return scan_gate(k, shmq_load_acquire(&k->th->tail_seq)) != w->gate ? SHMQ_OK : SHMQ_EAGAIN;
}

int shmq_topic_publish(shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                       uint32_t *done, uint64_t *first)
{
    return shmq_topic_publish_seqs(t, msgs, n, deadline_ns, done, first, NULL);
}

int shmq_topic_publish_seqs(shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                            uint32_t *done, uint64_t *first, uint64_t *seqs)
{
    shmq_topic_t *k = T(t);
    *done = 0;
    *first = 0;
    if (k == NULL || t->slot == UINT32_MAX)
        return SHMQ_EINVAL;
    if (t->closing)
        return SHMQ_ECLOSED;
    if (n == 0)
        return SHMQ_OK;
    shmq_part_set_role(t, SHMQ_ROLE_PRODUCER);
    for (;;) {
        int rc = shmq_lock_try_once(t, &k->th->pub_lock, &k->pub_busy);
        if (rc != SHMQ_OK) {
            rc = shmq_lock_acquire(t, &k->th->pub_lock, &k->pub_busy, deadline_ns);
            if (rc == SHMQ_TIMEOUT)
                return deadline_ns == 0 ? SHMQ_FULL : SHMQ_TIMEOUT;
            /* SHMQ_EAGAIN: a dead publisher's lock; nothing to rebuild (head_seq is the commit) */
        }
        if (*done == 0)
            *first = shmq_load_relaxed(&k->th->head_seq);
        uint32_t got = 0;
        int gated = 0;
        rc = publish_locked(t, msgs + *done, n - *done, &got, &gated, seqs ? seqs + *done : NULL);
        uint64_t gate = shmq_load_relaxed(&k->th->gate_seq);
        shmq_lock_release(t, &k->th->pub_lock, &k->pub_busy);
        *done += got;
        if (t->slot < t->max_slots)
            t->slots[t->slot].enqueued += got; /* single-writer counter of our slot */
        if (!gated)
            return rc;
        if (deadline_ns == 0)
            return SHMQ_FULL;
        gate_wait_t w = {gate};
        rc = sleep_on(t, &t->hdr->not_full, 1u << 16, gate_check, &w, deadline_ns);
        if (rc == SHMQ_TIMEOUT || rc == SHMQ_EINTR || rc == SHMQ_ECLOSED)
            return rc;
    }
}

/* ---------------------------------------------------------------- read */

/* Copy messages from seq `from` on. SHMQ_OK (*n >= 1), SHMQ_EMPTY (nothing published past it),
 * SHMQ_EAGAIN (*skip_to: the messages before it are gone - overrun or expired), SHMQ_ECORRUPT. */
static int copy_from(shmq_topic_t *k, uint64_t from, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out,
                     uint32_t max, uint32_t *n, uint64_t *skip_to)
{
    const uint64_t D = k->data_size, mask = k->n_entries - 1;
    *n = 0;
    uint64_t head = shmq_load_acquire(&k->th->head_seq); /* acquire: the entries and payloads it commits */
    if (from >= head)
        return SHMQ_EMPTY;
    uint64_t tail = shmq_load_acquire(&k->th->tail_seq);
    if (from < tail) {
        *skip_to = tail;
        return SHMQ_EAGAIN;
    }
    uint64_t now = k->retention_ns ? shmq_now_wall_coarse_ns() : 0;
    uint64_t used = 0, s = from;
    uint32_t got = 0;
    int odd = 0, expired = 0;
    for (; s < head && got < max; s++) {
        shmq_topic_ent_t *e = &k->ents[s & mask];
        uint64_t seq = shmq_load_relaxed(&e->seq), pos = e->pos, ts = e->timestamp_ns;
        uint32_t size = e->size, hs = e->hdr_size, kind = e->kind;
        if (seq != s || size > k->max_message || hs > size || pos % D + size > D) {
            odd = 1; /* untrusted: overwritten under us, or garbage (told apart below) */
            break;
        }
        if (now && ts + k->retention_ns < now && now > k->retention_ns) {
            if (got)
                break;
            expired = 1; /* a prefix of the log is past retention: skip it */
            continue;
        }
        if (expired)
            break;
        uint64_t len = SHMQ_ALIGN_UP(size, SHMQ_TOPIC_ALIGN);
        if (used + len > bufsize) {
            if (got == 0)
                return SHMQ_EINVAL; /* the caller's buffer is smaller than max_message */
            break;
        }
        memcpy(buf + used, k->data + pos % D, size);
        out[got] = (shmq_topic_msg_t){.seq = s, .timestamp_ns = ts, .data = buf + used, .size = size,
                                      .hdr_size = hs, .kind = kind,
                                      .ticks = k->hist.ticks ? shmq_load_relaxed(&k->hist.ticks[s & mask]) : 0};
        used += len;
        got++;
    }
    /* acquire fence: the copies above happen before the tail's re-read (seqlock; skipped under TSan) */
#if !defined(__SANITIZE_THREAD__)
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
    uint64_t t2 = shmq_load_relaxed(&k->th->tail_seq);
    if (t2 > from) {
        *skip_to = t2;
        return SHMQ_EAGAIN;
    }
    if (expired) {
        *skip_to = s;
        return SHMQ_EAGAIN;
    }
    if (got == 0)
        return odd ? SHMQ_ECORRUPT : SHMQ_EMPTY;
    *n = got;
    return SHMQ_OK;
}

/* Record the waits (publish -> this delivery) of m[0..n): a private reader's in its slot's
 * block (one writer), a named subscription's in the subscription's block (its group: atomic). */
static void record_waits(shmq_seg_t *t, shmq_topic_t *k, uint32_t sub, const shmq_topic_msg_t *m, uint32_t n)
{
    shmq_hist_block_t *b = sub == UINT32_MAX ? t->hist_blk : k->hist.subs ? &k->hist.subs[sub] : NULL;
    if (b == NULL)
        return;
    uint64_t now = shmq_ticks();
    for (uint32_t i = 0; i < n; i++) {
        uint64_t ns = shmq_hist_wait_ticks(m[i].ticks, now, m[i].timestamp_ns);
        if (sub == UINT32_MAX)
            shmq_hist_add(b->wait, &b->wait_sum_ns, ns);
        else
            shmq_hist_add_shared(b->wait, &b->wait_sum_ns, ns);
    }
}

typedef struct {
    shmq_topic_reader_t *r;
} read_wait_t;

static inline int sub_current(shmq_topic_t *k, const shmq_topic_reader_t *r)
{
    shmq_topic_sub_t *s = &k->subs[r->sub];
    return shmq_load_acquire(&s->state) == SHMQ_TSUB_LIVE && shmq_load_relaxed(&s->gen) == r->gen;
}

static inline uint64_t reader_pos(shmq_topic_t *k, const shmq_topic_reader_t *r)
{
    return r->sub == UINT32_MAX ? r->cursor : shmq_load_acquire(&k->subs[r->sub].cursor);
}

static int read_check(shmq_seg_t *t, void *ctx)
{
    read_wait_t *w = ctx;
    shmq_topic_t *k = T(t);
    if (w->r->sub != UINT32_MAX && !sub_current(k, w->r))
        return SHMQ_ECLOSED;
    return reader_pos(k, w->r) < shmq_load_acquire(&k->th->head_seq) ? SHMQ_OK : SHMQ_EAGAIN;
}

int shmq_topic_read(shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out,
                    uint32_t max, uint32_t *n, uint64_t deadline_ns)
{
    shmq_topic_t *k = T(t);
    *n = 0;
    if (k == NULL || max == 0 || (r->sub != UINT32_MAX && r->sub >= k->max_subs))
        return SHMQ_EINVAL;
    shmq_topic_sub_t *s = r->sub != UINT32_MAX ? &k->subs[r->sub] : NULL;
    uint64_t spin_until = 0;
    for (;;) {
        if (t->closing)
            return SHMQ_ECLOSED;
        if (s && !sub_current(k, r))
            return SHMQ_ECLOSED; /* unsubscribed (perhaps created again: a new subscription) */
        uint64_t c = reader_pos(k, r), skip = 0;
        uint32_t got = 0;
        int rc = copy_from(k, c, buf, bufsize, out, max, &got, &skip);
        if (rc == SHMQ_EAGAIN) {
            if (skip <= c)
                continue;
            if (!s) {
                r->cursor = skip;
                r->missed += skip - c;
            } else if (shmq_cas_seq(&s->cursor, &c, skip)) {
                shmq_fetch_add_seq(&s->missed, skip - c); /* only the CAS winner counts: exact */
                if (shmq_load_relaxed(&s->flags) & SHMQ_TSUB_BLOCK)
                    wake_publishers(t);
            }
            continue;
        }
        if (rc == SHMQ_OK) {
            if (!s) {
                r->cursor = c + got;
            } else {
                SHMQ_CRASH_POINT(topic_before_advance);
                if (!shmq_cas_seq(&s->cursor, &c, c + got))
                    continue; /* another member delivered them: look again */
                shmq_fetch_add_relaxed(&s->delivered, got);
                if (shmq_load_relaxed(&s->flags) & SHMQ_TSUB_BLOCK)
                    wake_publishers(t); /* seq_cst CAS above: before the waiter count's load */
            }
            if (t->slot < t->max_slots)
                t->slots[t->slot].dequeued += got;
            record_waits(t, k, s ? r->sub : UINT32_MAX, out, got);
            *n = got;
            return SHMQ_OK;
        }
        if (rc != SHMQ_EMPTY)
            return rc;
        if (deadline_ns == 0)
            return SHMQ_EMPTY;
        /* bounded spin before parking, only where another CPU can publish meanwhile */
        uint64_t spin = shmq_get_spin_ns();
        if (spin && shmq_cpus_online() > 1) {
            uint64_t now = shmq_now_mono_ns();
            if (spin_until == 0)
                spin_until = now + spin;
            if (now < spin_until) {
                for (int i = 0; i < 64; i++) {
                    if (reader_pos(k, r) < shmq_load_acquire(&k->th->head_seq))
                        break;
                    shmq_cpu_relax();
                }
                continue;
            }
        }
        if (deadline_ns != SHMQ_NO_DEADLINE && shmq_now_mono_ns() >= deadline_ns)
            return SHMQ_TIMEOUT;
        read_wait_t w = {r};
        rc = sleep_on(t, &t->hdr->not_empty, 1, read_check, &w, deadline_ns);
        if (rc == SHMQ_TIMEOUT || rc == SHMQ_EINTR || rc == SHMQ_ECLOSED)
            return rc;
        spin_until = 0;
    }
}

int shmq_topic_peek(shmq_seg_t *t, uint64_t seq, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out)
{
    shmq_topic_t *k = T(t);
    if (k == NULL)
        return SHMQ_EINVAL;
    uint32_t got = 0;
    uint64_t skip = 0;
    int rc = copy_from(k, seq, buf, bufsize, out, 1, &got, &skip);
    return rc == SHMQ_EAGAIN ? SHMQ_EMPTY : rc;
}

/* ---------------------------------------------------------------- subscriptions */

static int lock_both(shmq_seg_t *t, int pub)
{
    shmq_topic_t *k = T(t);
    uint64_t dl = shmq_now_mono_ns() + LOCK_WAIT_NS;
    if (shmq_lock_acquire(t, &k->th->sub_lock, &k->sub_busy, dl) == SHMQ_TIMEOUT)
        return SHMQ_TIMEOUT; /* EAGAIN (a dead holder): entries are written state last, nothing to rebuild */
    if (pub && shmq_lock_acquire(t, &k->th->pub_lock, &k->pub_busy, dl) == SHMQ_TIMEOUT) {
        shmq_lock_release(t, &k->th->sub_lock, &k->sub_busy);
        return SHMQ_TIMEOUT;
    }
    return SHMQ_OK;
}

static int find_sub(shmq_topic_t *k, const char *name, uint32_t len)
{
    for (uint32_t i = 0; i < k->max_subs; i++) {
        shmq_topic_sub_t *s = &k->subs[i];
        if (shmq_load_acquire(&s->state) == SHMQ_TSUB_LIVE && s->name_len == len && memcmp(s->name, name, len) == 0)
            return (int)i;
    }
    return -1;
}

static int name_ok(const char *name, uint32_t len)
{
    if (len == 0 || len > SHMQ_TOPIC_NAME_MAX)
        return 0;
    for (uint32_t i = 0; i < len; i++)
        if (name[i] == 0)
            return 0;
    return 1;
}

/* Under pub_lock: the first seq of a new subscription. */
static uint64_t start_seq(shmq_topic_t *k, uint32_t start, uint64_t arg)
{
    uint64_t head = shmq_load_relaxed(&k->th->head_seq), tail = shmq_load_relaxed(&k->th->tail_seq);
    if (tail > head)
        tail = head; /* untrusted */
    switch (start) {
    case SHMQ_TSTART_EARLIEST:
        return tail;
    case SHMQ_TSTART_SEQ:
        return arg ? arg : 1;
    case SHMQ_TSTART_TIME: {
        /* timestamps never go back (publish keeps them monotonic): the first at or after arg */
        uint64_t s = tail;
        while (s < head && k->ents[s & (k->n_entries - 1)].timestamp_ns < arg)
            s++;
        return s;
    }
    default:
        return head;
    }
}

int shmq_topic_subscribe(shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                         uint64_t arg, uint32_t *idx, uint32_t *gen, int *created)
{
    shmq_topic_t *k = T(t);
    *created = 0;
    if (k == NULL || t->slot == UINT32_MAX || !name_ok(name, name_len) || (flags & ~(SHMQ_TSUB_BLOCK | SHMQ_TSUB_ACK)) ||
        ((flags & SHMQ_TSUB_ACK) && (k->pend_vis == 0 || k->pend_maxd == 0)))
        return SHMQ_EINVAL;
    if (lock_both(t, 1) != SHMQ_OK)
        return SHMQ_TIMEOUT;
    int rc = SHMQ_OK;
    int i = find_sub(k, name, name_len);
    if (i >= 0) {
        *idx = (uint32_t)i;
        *gen = shmq_load_relaxed(&k->subs[i].gen);
        if (shmq_load_relaxed(&k->subs[i].flags) != flags)
            rc = SHMQ_EINCOMPAT;
    } else {
        for (uint32_t j = 0; j < k->max_subs && i < 0; j++)
            if (shmq_load_acquire(&k->subs[j].state) == SHMQ_TSUB_FREE)
                i = (int)j;
        if (i < 0) {
            rc = SHMQ_FULL;
        } else {
            shmq_topic_sub_t *s = &k->subs[i];
            uint64_t c = start_seq(k, start, arg);
            memset(s->name, 0, sizeof s->name);
            memcpy(s->name, name, name_len);
            s->name_len = name_len;
            s->flags = flags;
            s->created_ns = shmq_now_wall_ns();
            if (k->hist.subs)
                shmq_hist_clear(&k->hist.subs[i]); /* a new subscription's figures start at zero */
            shmq_store_relaxed(&s->cursor, c);
            shmq_store_relaxed(&s->missed, 0);
            shmq_store_relaxed(&s->delivered, 0);
            s->visibility_ns = (flags & SHMQ_TSUB_ACK) ? k->pend_vis : 0;
            s->max_deliveries = (flags & SHMQ_TSUB_ACK) ? k->pend_maxd : 0;
            shmq_store_relaxed(&s->acked, 0);
            shmq_store_relaxed(&s->redelivered, 0);
            shmq_store_relaxed(&s->dead_lettered, 0);
            uint32_t g = shmq_load_relaxed(&s->gen) + 1;
            shmq_store_relaxed(&s->gen, g);
            if (flags & SHMQ_TSUB_BLOCK) {
                uint64_t tail = shmq_load_relaxed(&k->th->tail_seq);
                uint64_t gc = c < tail ? tail : c;
                if (gc < shmq_load_relaxed(&k->th->gate_seq))
                    shmq_store_relaxed(&k->th->gate_seq, gc); /* under pub_lock: publishers see it */
            }
            SHMQ_CRASH_POINT(topic_mid_subscribe);
            shmq_store_seq(&s->state, SHMQ_TSUB_LIVE); /* last: a half-made entry stays FREE */
            *idx = (uint32_t)i;
            *gen = g;
            *created = 1;
        }
    }
    shmq_lock_release(t, &k->th->pub_lock, &k->pub_busy);
    if (rc == SHMQ_OK && t->slot < k->max_slots) {
        shmq_part_set_role(t, SHMQ_ROLE_CONSUMER);
        shmq_fetch_or_seq(&k->members[t->slot], 1ull << *idx);
    }
    shmq_lock_release(t, &k->th->sub_lock, &k->sub_busy);
    return rc;
}

void shmq_topic_leave(shmq_seg_t *t, uint32_t idx)
{
    shmq_topic_t *k = T(t);
    if (k && idx < k->max_subs && t->slot < k->max_slots)
        __atomic_fetch_and(&k->members[t->slot], ~(1ull << idx), __ATOMIC_SEQ_CST);
}

int shmq_topic_unsubscribe(shmq_seg_t *t, const char *name, uint32_t name_len)
{
    shmq_topic_t *k = T(t);
    if (k == NULL || t->slot == UINT32_MAX || !name_ok(name, name_len))
        return SHMQ_EINVAL;
    if (lock_both(t, 0) != SHMQ_OK)
        return SHMQ_TIMEOUT;
    int i = find_sub(k, name, name_len);
    if (i >= 0) {
        shmq_topic_sub_t *s = &k->subs[i];
        shmq_store_seq(&s->state, SHMQ_TSUB_FREE);
        shmq_store_seq(&s->gen, shmq_load_relaxed(&s->gen) + 1);
        for (uint32_t j = 0; j < k->max_slots; j++)
            if (shmq_load_relaxed(&k->members[j]) & (1ull << i))
                __atomic_fetch_and(&k->members[j], ~(1ull << i), __ATOMIC_SEQ_CST);
        for (uint32_t j = 0; j < k->n_leases; j++) { /* its deliveries end (their acks: stale) */
            uint64_t w = shmq_load_acquire(&k->leases[j].word);
            while (lw_state(w) != SHMQ_TL_FREE && lw_sub(w) == (uint32_t)i) {
                uint64_t h = lw(lw_gen(w), lw_sub(w), SHMQ_TL_SETTLING, t->owner);
                if (shmq_cas_seq(&k->leases[j].word, &w, h)) {
                    lease_free(&k->leases[j], h);
                    break;
                }
            }
        }
    }
    shmq_lock_release(t, &k->th->sub_lock, &k->sub_busy);
    if (i < 0)
        return SHMQ_EMPTY;
    shmq_waitq_wake_all(&t->hdr->not_full);  /* the gate may have risen */
    shmq_waitq_wake_all(&t->hdr->not_empty); /* its members' reads end (SHMQ_ECLOSED) */
    return SHMQ_OK;
}

int shmq_topic_subinfo(shmq_seg_t *t, uint32_t i, shmq_topic_subinfo_t *out)
{
    shmq_topic_t *k = T(t);
    if (k == NULL || i >= k->max_subs)
        return SHMQ_EINVAL;
    shmq_topic_sub_t *s = &k->subs[i];
    if (shmq_load_acquire(&s->state) != SHMQ_TSUB_LIVE)
        return SHMQ_EMPTY;
    memset(out, 0, sizeof *out);
    out->idx = i;
    out->gen = shmq_load_relaxed(&s->gen);
    out->flags = shmq_load_relaxed(&s->flags);
    uint32_t len = s->name_len;
    if (len > SHMQ_TOPIC_NAME_MAX)
        len = SHMQ_TOPIC_NAME_MAX; /* untrusted */
    memcpy(out->name, s->name, len);
    out->name[len] = 0;
    out->cursor = shmq_load_acquire(&s->cursor);
    out->missed = shmq_load_relaxed(&s->missed);
    out->delivered = shmq_load_relaxed(&s->delivered);
    out->created_ns = s->created_ns;
    out->acked = shmq_load_relaxed(&s->acked);
    out->redelivered = shmq_load_relaxed(&s->redelivered);
    out->dead_lettered = shmq_load_relaxed(&s->dead_lettered);
    out->visibility_ns = s->visibility_ns;
    out->max_deliveries = s->max_deliveries;
    if (out->flags & SHMQ_TSUB_ACK)
        out->in_flight = shmq_topic_in_flight(t, i);
    uint64_t head = shmq_load_acquire(&k->th->head_seq), tail = shmq_load_acquire(&k->th->tail_seq);
    uint64_t from = out->cursor > tail ? out->cursor : tail;
    out->lag = head > from ? head - from : 0;
    uint32_t hwm = shmq_load_relaxed(&t->hdr->slot_hwm);
    if (hwm > k->max_slots)
        hwm = k->max_slots; /* untrusted */
    for (uint32_t j = 0; j < hwm; j++)
        if ((shmq_load_relaxed(&k->members[j]) & (1ull << i)) && shmq_part_slot_alive(t, j))
            out->consumers++;
    return SHMQ_OK;
}

void shmq_topic_stats(shmq_seg_t *t, shmq_topic_stats_t *st)
{
    shmq_topic_t *k = T(t);
    memset(st, 0, sizeof *st);
    if (k == NULL)
        return;
    st->head_seq = shmq_load_acquire(&k->th->head_seq);
    st->tail_seq = shmq_load_acquire(&k->th->tail_seq);
    st->published = shmq_load_relaxed(&k->th->published);
    st->dropped = shmq_load_relaxed(&k->th->dropped);
    st->data_size = k->data_size;
    st->n_entries = k->n_entries;
    st->max_message = k->max_message;
    st->retention_ns = k->retention_ns;
    st->max_subs = k->max_subs;
    if (st->tail_seq < st->head_seq) {
        uint64_t p = shmq_load_relaxed(&k->ents[st->tail_seq & (k->n_entries - 1)].pos);
        uint64_t dh = shmq_load_relaxed(&k->th->data_head);
        st->data_used = dh > p && dh - p <= k->data_size ? dh - p : 0;
    }
    for (uint32_t i = 0; i < k->max_subs; i++)
        if (shmq_load_acquire(&k->subs[i].state) == SHMQ_TSUB_LIVE)
            st->subs++;
}

/* ---------------------------------------------------------------- ack=True subscriptions */

int shmq_topic_subscribe_ack(shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                             uint64_t arg, uint64_t visibility_ns, uint32_t max_deliveries, uint32_t *idx,
                             uint32_t *gen, int *created)
{
    shmq_topic_t *k = T(t);
    if (k == NULL || (flags & ~(SHMQ_TSUB_BLOCK | SHMQ_TSUB_ACK)) || !(flags & SHMQ_TSUB_ACK) || visibility_ns == 0 ||
        max_deliveries == 0)
        return SHMQ_EINVAL;
    /* the ack options go in before the entry turns LIVE: shmq_topic_subscribe reads them from here */
    k->pend_vis = visibility_ns;
    k->pend_maxd = max_deliveries;
    int rc = shmq_topic_subscribe(t, name, name_len, flags, start, arg, idx, gen, created);
    k->pend_vis = 0;
    k->pend_maxd = 0;
    return rc;
}

/* The delivery of lease i we now hold (word held = SETTLING or CLAIM by us): copy its message. */
static int lease_copy(shmq_topic_t *k, shmq_topic_lease_t *l, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out)
{
    uint32_t got = 0;
    uint64_t skip = 0;
    return copy_from(k, shmq_load_relaxed(&l->seq), buf, bufsize, out, 1, &got, &skip);
}

typedef struct {
    shmq_topic_reader_t *r;
    uint64_t now;
} ack_wait_t;

/* A lease of sub (gen) that may be delivered again now; *next = the earliest lease end ahead. */
static int lease_due(shmq_topic_t *k, uint32_t sub, uint32_t gen, uint64_t now, uint64_t *next)
{
    for (uint32_t i = 0; i < k->n_leases; i++) {
        uint64_t w = shmq_load_acquire(&k->leases[i].word);
        uint32_t st = lw_state(w);
        if (st == SHMQ_TL_FREE || lw_sub(w) != sub || shmq_load_relaxed(&k->leases[i].sub_gen) != gen)
            continue;
        if (st == SHMQ_TL_READY)
            return (int)i;
        if (st == SHMQ_TL_INFLIGHT) {
            uint64_t d = shmq_load_relaxed(&k->leases[i].deadline_ns);
            if (d <= now)
                return (int)i;
            if (next && d < *next)
                *next = d;
        }
    }
    return -1;
}

static int ack_check(shmq_seg_t *t, void *ctx)
{
    ack_wait_t *w = ctx;
    shmq_topic_t *k = T(t);
    if (!sub_current(k, w->r))
        return SHMQ_ECLOSED;
    if (shmq_load_acquire(&k->subs[w->r->sub].cursor) < shmq_load_acquire(&k->th->head_seq))
        return SHMQ_OK;
    return lease_due(k, w->r->sub, w->r->gen, shmq_now_mono_ns(), NULL) >= 0 ? SHMQ_OK : SHMQ_EAGAIN;
}

int shmq_topic_receive(shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out,
                       uint64_t *token, uint32_t *deliveries, int *dead, uint64_t deadline_ns)
{
    shmq_topic_t *k = T(t);
    *dead = 0;
    if (k == NULL || t->slot == UINT32_MAX || r->sub >= k->max_subs)
        return SHMQ_EINVAL;
    shmq_topic_sub_t *s = &k->subs[r->sub];
    if (!(shmq_load_relaxed(&s->flags) & SHMQ_TSUB_ACK))
        return SHMQ_EINVAL;
    uint64_t vis = shmq_load_relaxed(&s->visibility_ns);
    uint32_t maxd = shmq_load_relaxed(&s->max_deliveries);
    const uint32_t me = t->owner;
    for (;;) {
        if (t->closing)
            return SHMQ_ECLOSED;
        if (!sub_current(k, r))
            return SHMQ_ECLOSED;
        uint64_t now = shmq_now_mono_ns(), next = SHMQ_NO_DEADLINE;
        /* 1. a delivery due again (nacked, expired, or its member died) */
        int i = lease_due(k, r->sub, r->gen, now, &next);
        if (i >= 0) {
            shmq_topic_lease_t *l = &k->leases[i];
            uint64_t w = shmq_load_acquire(&l->word);
            uint32_t st = lw_state(w);
            if (lw_sub(w) != r->sub || (st != SHMQ_TL_READY && !(st == SHMQ_TL_INFLIGHT && l->deadline_ns <= now)))
                continue;
            uint64_t held = lw(lw_gen(w), r->sub, SHMQ_TL_SETTLING, me);
            if (!shmq_cas_seq(&l->word, &w, held))
                continue; /* someone else took it */
            uint32_t n = l->deliveries + 1;
            l->deliveries = n;
            if (n <= maxd)
                shmq_fetch_add_relaxed(&s->redelivered, 1); /* past it: counted as dead-lettered at its ack */
            int rc = lease_copy(k, l, buf, bufsize, out);
            if (rc != SHMQ_OK) { /* the log no longer holds it (drop_oldest, retention): missed */
                shmq_fetch_add_seq(&s->missed, 1);
                lease_free(l, held);
                if (rc == SHMQ_ECORRUPT)
                    return rc;
                continue;
            }
            uint32_t g = lw_gen(w) + 1;
            l->deadline_ns = now + vis;
            if (k->hist.lticks)
                shmq_store_relaxed(&k->hist.lticks[i], now); /* the processing time counts from here */
            shmq_store_seq(&l->word, lw(g, r->sub, n > maxd ? SHMQ_TL_DEAD : SHMQ_TL_INFLIGHT, me));
            *dead = n > maxd;
            *token = token_make((uint32_t)i, g & 0x3fffffu);
            *deliveries = n;
            return SHMQ_OK;
        }
        /* 2. the group's next message, claimed with a lease reserved first */
        uint64_t c = shmq_load_acquire(&s->cursor);
        uint64_t head = shmq_load_acquire(&k->th->head_seq);
        if (c < head) {
            int f = -1;
            uint64_t w = 0;
            for (uint32_t j = 0; j < k->n_leases; j++) {
                w = shmq_load_relaxed(&k->leases[j].word);
                if (lw_state(w) == SHMQ_TL_FREE &&
                    shmq_cas_seq(&k->leases[j].word, &w, lw(lw_gen(w) + 1, r->sub, SHMQ_TL_CLAIM, me))) {
                    f = (int)j;
                    break;
                }
            }
            if (f < 0) {
                if (deadline_ns == 0)
                    return SHMQ_EMPTY; /* every lease in use: settle some */
                if (deadline_ns != SHMQ_NO_DEADLINE && shmq_now_mono_ns() >= deadline_ns)
                    return SHMQ_TIMEOUT;
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
                continue;
            }
            shmq_topic_lease_t *l = &k->leases[f];
            uint64_t held = lw(lw_gen(w) + 1, r->sub, SHMQ_TL_CLAIM, me);
            l->sub_gen = r->gen;
            l->deliveries = 0;
            shmq_store_seq(&l->seq, c); /* before the cursor CAS: repair reads it to decide */
            uint32_t got = 0;
            uint64_t skip = 0;
            int rc = copy_from(k, c, buf, bufsize, out, 1, &got, &skip);
            if (rc == SHMQ_EAGAIN) {
                lease_free(l, held);
                if (skip > c && shmq_cas_seq(&s->cursor, &c, skip))
                    shmq_fetch_add_seq(&s->missed, skip - c);
                continue;
            }
            if (rc != SHMQ_OK) {
                lease_free(l, held);
                if (rc == SHMQ_EMPTY)
                    continue;
                return rc;
            }
            SHMQ_CRASH_POINT(topic_ack_claimed);
            if (!shmq_cas_seq(&s->cursor, &c, c + 1)) {
                lease_free(l, held);
                continue;
            }
            shmq_fetch_add_relaxed(&s->delivered, 1);
            l->deliveries = 1;
            uint64_t dnow = shmq_now_mono_ns();
            l->deadline_ns = dnow + vis;
            if (k->hist.lticks)
                shmq_store_relaxed(&k->hist.lticks[f], dnow);
            record_waits(t, k, r->sub, out, 1);
            uint32_t g = lw_gen(held);
            shmq_store_seq(&l->word, lw(g, r->sub, maxd < 1 ? SHMQ_TL_DEAD : SHMQ_TL_INFLIGHT, me));
            *dead = maxd < 1;
            *token = token_make((uint32_t)f, g);
            *deliveries = 1;
            if (t->slot < t->max_slots)
                t->slots[t->slot].dequeued += 1;
            return SHMQ_OK;
        }
        if (deadline_ns == 0)
            return SHMQ_EMPTY;
        if (deadline_ns != SHMQ_NO_DEADLINE && shmq_now_mono_ns() >= deadline_ns)
            return SHMQ_TIMEOUT;
        ack_wait_t aw = {r, now};
        uint64_t until = next < deadline_ns ? next : deadline_ns; /* a lease end wakes us to redeliver */
        int rc = sleep_on(t, &t->hdr->not_empty, 1, ack_check, &aw, until);
        if (rc == SHMQ_TIMEOUT && until < deadline_ns)
            continue;
        if (rc == SHMQ_TIMEOUT || rc == SHMQ_EINTR || rc == SHMQ_ECLOSED)
            return rc;
    }
}

/* Hold the delivery token names (INFLIGHT or DEAD, this lgen) as SETTLING: 0, or SHMQ_ESTALE. */
static int settle_begin(shmq_seg_t *t, uint64_t token, shmq_topic_lease_t **lp, uint64_t *held)
{
    shmq_topic_t *k = T(t);
    uint32_t i = (uint32_t)token, g = (uint32_t)(token >> 32);
    if (k == NULL || i >= k->n_leases)
        return SHMQ_ESTALE;
    shmq_topic_lease_t *l = &k->leases[i];
    uint64_t w = shmq_load_acquire(&l->word);
    for (;;) {
        uint32_t st = lw_state(w);
        if (lw_gen(w) != g || (st != SHMQ_TL_INFLIGHT && st != SHMQ_TL_DEAD))
            return SHMQ_ESTALE;
        uint64_t h = lw(g, lw_sub(w), SHMQ_TL_SETTLING, t->owner);
        if (shmq_cas_seq(&l->word, &w, h)) {
            *lp = l;
            *held = h;
            return SHMQ_OK;
        }
    }
}

int shmq_topic_ack(shmq_seg_t *t, uint64_t token)
{
    shmq_topic_lease_t *l;
    uint64_t held;
    int rc = settle_begin(t, token, &l, &held);
    if (rc != SHMQ_OK)
        return rc;
    shmq_topic_t *k = T(t);
    uint32_t sub = lw_sub(held) % k->max_subs;
    shmq_topic_sub_t *s = &k->subs[sub];
    int was_dead = l->deliveries > shmq_load_relaxed(&s->max_deliveries);
    /* receive -> ack, read while we hold the entry (SETTLING): untrusted, arithmetic only */
    uint64_t t0 = k->hist.lticks && !was_dead ? shmq_load_relaxed(&k->hist.lticks[(uint32_t)token]) : 0;
    lease_free(l, held);
    if (t0) {
        uint64_t now = shmq_now_mono_ns();
        shmq_hist_block_t *b = &k->hist.subs[sub];
        shmq_hist_add_shared(b->process, &b->process_sum_ns, now > t0 ? now - t0 : 0);
    }
    shmq_fetch_add_relaxed(was_dead ? &s->dead_lettered : &s->acked, 1);
    if (shmq_load_relaxed(&s->flags) & SHMQ_TSUB_BLOCK)
        wake_publishers(t);
    return SHMQ_OK;
}

int shmq_topic_nack(shmq_seg_t *t, uint64_t token)
{
    shmq_topic_lease_t *l;
    uint64_t held;
    int rc = settle_begin(t, token, &l, &held);
    if (rc != SHMQ_OK)
        return rc;
    shmq_store_seq(&l->word, lw(lw_gen(held) + 1, lw_sub(held), SHMQ_TL_READY, 0));
    shmq_waitq_wake_all(&t->hdr->not_empty); /* a member may take it now */
    return SHMQ_OK;
}

int shmq_topic_extend(shmq_seg_t *t, uint64_t *token, uint64_t ns)
{
    shmq_topic_lease_t *l;
    uint64_t held;
    int rc = settle_begin(t, *token, &l, &held);
    if (rc != SHMQ_OK)
        return rc;
    l->deadline_ns = shmq_now_mono_ns() + ns;
    uint32_t g = lw_gen(held) + 1; /* a new stamp: a receiver that read the old deadline cannot take it */
    shmq_store_seq(&l->word, lw(g, lw_sub(held), SHMQ_TL_INFLIGHT, t->owner));
    *token = token_make((uint32_t)*token, g & 0x3fffffu);
    return SHMQ_OK;
}

uint32_t shmq_topic_in_flight(shmq_seg_t *t, uint32_t idx)
{
    shmq_topic_t *k = T(t);
    uint32_t n = 0;
    if (k == NULL)
        return 0;
    for (uint32_t i = 0; i < k->n_leases; i++) {
        uint64_t w = shmq_load_relaxed(&k->leases[i].word);
        if (lw_state(w) != SHMQ_TL_FREE && lw_sub(w) == idx)
            n++;
    }
    return n;
}

/* Repair: what a dead member held goes back to its group. */
static void leases_repair(shmq_seg_t *t, uint32_t dead)
{
    shmq_topic_t *k = T(t);
    int woke = 0;
    for (uint32_t i = 0; i < k->n_leases; i++) {
        shmq_topic_lease_t *l = &k->leases[i];
        uint64_t w = shmq_load_acquire(&l->word);
        uint32_t st = lw_state(w);
        if (st == SHMQ_TL_FREE || st == SHMQ_TL_READY || lw_owner(w) != dead)
            continue;
        uint64_t seq = shmq_load_acquire(&l->seq);
        uint32_t sub = lw_sub(w) % k->max_subs;
        if (st == SHMQ_TL_CLAIM && (seq == SHMQ_TL_NO_SEQ || shmq_load_acquire(&k->subs[sub].cursor) <= seq)) {
            uint64_t h = w;
            if (shmq_cas_seq(&l->word, &w, lw(lw_gen(h), lw_sub(h), SHMQ_TL_SETTLING, t->owner)))
                lease_free(l, lw(lw_gen(h), lw_sub(h), SHMQ_TL_SETTLING, t->owner)); /* its cursor CAS never happened */
            continue;
        }
        /* CLAIM past the cursor (its CAS may have won), INFLIGHT, SETTLING, DEAD: redeliver */
        if (st == SHMQ_TL_CLAIM && l->deliveries == 0)
            l->deliveries = 1; /* a member's death counts a failed delivery (the dead one writes nothing more) */
        if (shmq_cas_seq(&l->word, &w, lw(lw_gen(w) + 1, lw_sub(w), SHMQ_TL_READY, 0)))
            woke = 1;
    }
    if (woke)
        shmq_waitq_wake_all(&t->hdr->not_empty);
}
