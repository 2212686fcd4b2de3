#define _GNU_SOURCE
#include "group.h"

#include <stdlib.h>
#include <string.h>

#include "atomic.h"
#include "crashpoint.h"
#include "dedup.h"
#include "lock.h"
#include "participants.h"

#define GROUP_SETTLE_WAIT_NS (1000ull * 1000 * 1000) /* a settle waits this long for the lock, then defers */
#define GROUP_LINK_MIN_WAIT_NS (50ull * 1000 * 1000) /* a non-blocking send still waits this long for the lock */

/* payload offset of a member's block: meta block, then the dedup key when it has one */
static inline uint32_t blk_off(const shmq_desc_t *d)
{
    return SHMQ_ACK_META + ((d->flags & SHMQ_DF_DEDUP) ? 16u : 0u);
}

/* untrusted: the member's payload holds a whole block with a sane key; NULL otherwise */
static shmq_group_blk_t *member_blk(shmq_area_t *a, shmq_desc_t *d)
{
    if (!(d->flags & SHMQ_DF_GROUP) || !shmq_q_payload_valid(a, d) || (uint64_t)blk_off(d) + SHMQ_GROUP_BLOCK > d->size)
        return NULL;
    shmq_group_blk_t *b = shmq_group_blk(a, d, blk_off(d));
    if (b->key_len > SHMQ_GROUP_KEY_MAX || b->key_type > 1)
        return NULL;
    return b;
}

static void key_hash(const shmq_group_blk_t *b, uint64_t *k0, uint64_t *k1)
{
    uint8_t raw[1 + SHMQ_GROUP_KEY_MAX], out[16];
    uint32_t len = b->key_len > SHMQ_GROUP_KEY_MAX ? SHMQ_GROUP_KEY_MAX : b->key_len; /* untrusted */
    raw[0] = b->key_type;
    memcpy(raw + 1, b->key, len);
    shmq_hash128(raw, 1 + len, out);
    memcpy(k0, out, 8);
    memcpy(k1, out + 8, 8);
}

static inline uint32_t h_make(uint32_t area, uint32_t idx) { return (area << 24) | (idx & 0xffffffu); }

/* untrusted: the descriptor a chain handle names, or NULL */
static shmq_desc_t *h_desc(shmq_seg_t *q, uint32_t h, shmq_area_t **ap)
{
    int rc;
    shmq_area_t *a = shmq_seg_area_live(q, h >> 24, &rc);
    if (!a || (h & 0xffffffu) >= a->n_desc)
        return NULL;
    *ap = a;
    return shmq_q_desc(a, h & 0xffffffu);
}

int shmq_group_blk_init(shmq_group_blk_t *b, const uint8_t *key, uint32_t len, uint32_t type, uint64_t not_before_ns)
{
    if (len > SHMQ_GROUP_KEY_MAX || type > 1)
        return SHMQ_EINVAL;
    memset(b, 0, sizeof *b);
    b->key_type = (uint8_t)type;
    b->key_len = (uint8_t)len;
    memcpy(b->key, key, len);
    b->not_before_ns = not_before_ns;
    return SHMQ_OK;
}

/* ---------------------------------------------------------------- the table (lock held) */

/* The entry of (k0, k1); with insert, a new one (reusing the first tombstone) when absent.
 * NULL: absent (no insert) or no room. */
static shmq_group_ent_t *find_locked(shmq_group_t *g, uint64_t k0, uint64_t k1, int insert)
{
    uint32_t mask = g->slots - 1, i = (uint32_t)k0 & mask;
    shmq_group_ent_t *tomb = NULL;
    for (uint32_t n = 0; n < g->slots; n++, i = (i + 1) & mask) {
        shmq_group_ent_t *e = &g->tab[i];
        if (e->state == SHMQ_GROUP_EMPTY) {
            if (!insert)
                return NULL;
            if (!tomb) {
                if (g->hdr->used + 1 >= g->slots)
                    return NULL; /* keep one EMPTY entry: it ends every probe */
                g->hdr->used++;
                tomb = e;
            }
            break;
        }
        if (e->state == SHMQ_GROUP_USED && e->k0 == k0 && e->k1 == k1)
            return e;
        if (e->state != SHMQ_GROUP_USED && !tomb)
            tomb = e; /* DELETED (or garbage): reusable */
    }
    if (!tomb)
        return NULL;
    memset(tomb, 0, sizeof *tomb);
    tomb->k0 = k0;
    tomb->k1 = k1;
    tomb->next_seq = 1;
    tomb->state = SHMQ_GROUP_USED;
    g->hdr->live++;
    return tomb;
}

static void ent_delete_locked(shmq_group_t *g, shmq_group_ent_t *e)
{
    e->state = SHMQ_GROUP_DELETED;
    e->count = 0;
    if (g->hdr->live)
        g->hdr->live--;
}

typedef struct {
    uint64_t k0, k1, seq, id;
    uint32_t h;
    uint32_t active; /* not parked: delivered, ready, in flight, delayed for a retry, being settled */
} member_t;

static int member_cmp(const void *x, const void *y)
{
    const member_t *a = x, *b = y;
    if (a->k0 != b->k0)
        return a->k0 < b->k0 ? -1 : 1;
    if (a->k1 != b->k1)
        return a->k1 < b->k1 ? -1 : 1;
    if (a->active != b->active)
        return a->active ? -1 : 1; /* the member out of the queue's hands stays the head */
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Rebuild the table and every chain from the descriptors. Members: grouped descriptors that
 * are not FREE, WRITING or RETURNING, whose block is sane and has not left, except READING ones
 * of a dead owner (being freed: acked or lost) and unlinked ones (seq 0) of a live sender (it
 * links them itself). A dead sender's unlinked member is appended to its group. */
static void rebuild_locked(shmq_seg_t *q, shmq_group_t *g)
{
    uint32_t cap = 256, n = 0;
    member_t *m = malloc(cap * sizeof *m);
    if (!m) {
        shmq_store_relaxed(&g->hdr->dirty, 1u); /* again at the next lock */
        return;
    }
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++)
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint64_t w = shmq_load_acquire(&d->word);
            uint32_t st = shmq_desc_state(w);
            if (st == SHMQ_D_FREE || st == SHMQ_D_WRITING || st == SHMQ_D_RETURNING || !(d->flags & SHMQ_DF_GROUP))
                continue;
            shmq_group_blk_t *b = member_blk(a, d);
            if (!b && shmq_group_parked(d, w)) {
                /* untrusted: a parked member whose block is garbage has no group to wait for:
                 * delivered as if ungrouped rather than parked forever */
                static const shmq_group_blk_t none;
                g->release(q, a, d, &none);
                continue;
            }
            if (!b || b->seq == SHMQ_GROUP_LEFT)
                continue;
            if (st == SHMQ_D_READING && !shmq_part_owner_alive(q, shmq_desc_owner(w)))
                continue;
            int parked = shmq_group_parked(d, w);
            if (b->seq == 0 && (!parked || shmq_part_owner_alive(q, shmq_desc_owner(w))))
                continue;
            if (n == cap) {
                member_t *nm = realloc(m, (size_t)cap * 2 * sizeof *m);
                if (!nm) {
                    free(m);
                    shmq_store_relaxed(&g->hdr->dirty, 1u);
                    return;
                }
                m = nm;
                cap *= 2;
            }
            member_t *e = &m[n++];
            key_hash(b, &e->k0, &e->k1);
            e->seq = b->seq ? b->seq : UINT64_MAX - 1; /* unlinked: after the linked ones */
            e->id = d->id;
            e->h = h_make(i, k);
            e->active = !parked;
        }
    qsort(m, n, sizeof *m, member_cmp);
    memset(g->tab, 0, (size_t)g->slots * sizeof *g->tab);
    g->hdr->used = 0;
    g->hdr->live = 0;
    for (uint32_t s = 0; s < n;) {
        uint32_t e = s;
        while (e < n && m[e].k0 == m[s].k0 && m[e].k1 == m[s].k1)
            e++;
        shmq_group_ent_t *ent = find_locked(g, m[s].k0, m[s].k1, 1);
        uint64_t seq = 0;
        for (uint32_t j = s; j < e; j++)
            if (m[j].seq != UINT64_MAX - 1 && m[j].seq > seq)
                seq = m[j].seq;
        for (uint32_t j = s; j < e; j++) {
            shmq_area_t *ma;
            shmq_desc_t *md = h_desc(q, m[j].h, &ma);
            shmq_group_blk_t *b = md ? member_blk(ma, md) : NULL;
            if (!b)
                continue;
            if (m[j].seq == UINT64_MAX - 1)
                m[j].seq = ++seq;
            b->seq = m[j].seq;
            b->next_h = j + 1 < e ? m[j + 1].h : 0;
            b->next_id = j + 1 < e ? m[j + 1].id : 0;
        }
        if (ent) {
            ent->head_id = m[s].id;
            ent->head_h = m[s].h;
            ent->tail_id = m[e - 1].id;
            ent->tail_h = m[e - 1].h;
            ent->count = e - s;
            ent->next_seq = seq + 1;
        }
        if (!m[s].active) {
            /* nobody holds the group: its first member becomes deliverable */
            shmq_area_t *ha;
            shmq_desc_t *hd = h_desc(q, m[s].h, &ha);
            shmq_group_blk_t *hb = hd ? member_blk(ha, hd) : NULL;
            if (hb)
                g->release(q, ha, hd, hb);
        }
        s = e;
    }
    free(m);
    shmq_store_relaxed(&g->hdr->dirty, 0u);
    __atomic_fetch_add(&g->hdr->rebuilds, 1, __ATOMIC_RELAXED);
}

/* Take the lock; rebuild first when it was taken over from a dead holder or marked dirty. */
static int lock_table_r(shmq_seg_t *q, shmq_group_t *g, uint64_t deadline_ns, int *rebuilt)
{
    int rc = shmq_lock_acquire(q, &g->hdr->lock, &g->busy, deadline_ns);
    if (rc == SHMQ_TIMEOUT)
        return rc;
    if (rc == SHMQ_EAGAIN || shmq_load_relaxed(&g->hdr->dirty)) {
        rebuild_locked(q, g);
        *rebuilt = 1;
    }
    return SHMQ_OK;
}

static int lock_table(shmq_seg_t *q, shmq_group_t *g, uint64_t deadline_ns)
{
    int rebuilt = 0;
    return lock_table_r(q, g, deadline_ns, &rebuilt);
}

static void unlock_table(shmq_seg_t *q, shmq_group_t *g) { shmq_lock_release(q, &g->hdr->lock, &g->busy); }

/* ---------------------------------------------------------------- link, settle, rebuild */

int shmq_group_link(shmq_seg_t *q, shmq_group_t *g, uint32_t area, uint32_t idx, uint64_t deadline_ns)
{
    shmq_area_t *a;
    shmq_desc_t *d = h_desc(q, h_make(area, idx), &a);
    shmq_group_blk_t *b = d ? member_blk(a, d) : NULL;
    if (!b)
        return SHMQ_ECORRUPT;
    uint64_t now = shmq_now_mono_ns();
    if (deadline_ns < now + GROUP_LINK_MIN_WAIT_NS)
        deadline_ns = now + GROUP_LINK_MIN_WAIT_NS;
    int rc = lock_table(q, g, deadline_ns);
    if (rc != SHMQ_OK)
        return rc;
    uint64_t k0, k1;
    key_hash(b, &k0, &k1);
    rc = SHMQ_OK;
    for (int tries = 0;; tries++) {
        if (b->seq != 0)
            break; /* a rebuild linked it already */
        shmq_group_ent_t *e = find_locked(g, k0, k1, 1);
        if (!e) {
            if (tries == 0) {
                rebuild_locked(q, g); /* drops the tombstones */
                continue;
            }
            rc = SHMQ_FULL;
            break;
        }
        if (e->count == 0) {
            e->head_id = e->tail_id = d->id;
            e->head_h = e->tail_h = h_make(area, idx);
            e->count = 1;
            b->seq = e->next_seq++;
            SHMQ_CRASH_POINT(group_mid_link);
            g->release(q, a, d, b);
            break;
        }
        shmq_area_t *ta;
        shmq_desc_t *td = h_desc(q, e->tail_h, &ta);
        shmq_group_blk_t *tb = td ? member_blk(ta, td) : NULL;
        uint32_t tst = td ? shmq_desc_state(shmq_load_acquire(&td->word)) : SHMQ_D_FREE;
        if (!tb || td->id != e->tail_id || tb->seq == SHMQ_GROUP_LEFT || tst == SHMQ_D_FREE || tst == SHMQ_D_WRITING) {
            /* untrusted/inconsistent: the tail left without settling (purged, corrupt) */
            if (tries == 0) {
                rebuild_locked(q, g);
                continue;
            }
            e->count = 0; /* still wrong after a rebuild: start the group afresh with us */
            continue;
        }
        tb->next_h = h_make(area, idx);
        tb->next_id = d->id;
        b->seq = e->next_seq++;
        e->tail_id = d->id;
        e->tail_h = h_make(area, idx);
        e->count++;
        break;
    }
    unlock_table(q, g);
    return rc;
}

void shmq_group_settle(shmq_seg_t *q, shmq_group_t *g, shmq_area_t *a, shmq_desc_t *d)
{
    shmq_group_blk_t *b = member_blk(a, d);
    if (!b) {
        shmq_store_relaxed(&g->hdr->dirty, 1u); /* untrusted: cannot follow its chain; rebuild */
        return;
    }
    if (b->seq == SHMQ_GROUP_LEFT)
        return;
    if (lock_table(q, g, shmq_now_mono_ns() + GROUP_SETTLE_WAIT_NS) != SHMQ_OK) {
        /* a stopped lock holder: leave, and let the next holder rebuild (releases the next) */
        shmq_store_release(&b->seq, SHMQ_GROUP_LEFT);
        shmq_store_relaxed(&g->hdr->dirty, 1u);
        return;
    }
    if (b->seq == SHMQ_GROUP_LEFT) { /* the rebuild found it gone already (should not happen) */
        unlock_table(q, g);
        return;
    }
    uint64_t k0, k1;
    key_hash(b, &k0, &k1);
    uint32_t ai = (uint32_t)(a - q->areas), idx = (uint32_t)(((uint8_t *)d - a->desc) / SHMQ_DESC_SIZE);
    shmq_group_ent_t *e = find_locked(g, k0, k1, 0);
    b->seq = SHMQ_GROUP_LEFT;
    if (!e || e->head_id != d->id || e->head_h != h_make(ai, idx)) {
        rebuild_locked(q, g); /* not its group's head: the table is wrong; we no longer count */
        unlock_table(q, g);
        return;
    }
    if (e->count)
        e->count--;
    if (b->next_id == 0) {
        if (e->count)
            rebuild_locked(q, g); /* members the chain lost */
        else
            ent_delete_locked(g, e);
        unlock_table(q, g);
        return;
    }
    shmq_area_t *na;
    shmq_desc_t *nd = h_desc(q, b->next_h, &na);
    shmq_group_blk_t *nb = nd ? member_blk(na, nd) : NULL;
    if (!nb || nd->id != b->next_id || !shmq_group_parked(nd, shmq_load_acquire(&nd->word))) {
        rebuild_locked(q, g);
        unlock_table(q, g);
        return;
    }
    e->head_id = nd->id;
    e->head_h = b->next_h;
    SHMQ_CRASH_POINT(group_mid_settle);
    g->release(q, na, nd, nb);
    unlock_table(q, g);
}

void shmq_group_rebuild(shmq_seg_t *q, shmq_group_t *g)
{
    int rebuilt = 0;
    if (lock_table_r(q, g, shmq_now_mono_ns() + GROUP_SETTLE_WAIT_NS, &rebuilt) != SHMQ_OK) {
        shmq_store_relaxed(&g->hdr->dirty, 1u);
        return;
    }
    if (!rebuilt)
        rebuild_locked(q, g);
    unlock_table(q, g);
}

int shmq_group_hold(shmq_seg_t *q, shmq_group_t *g)
{
    return lock_table(q, g, shmq_now_mono_ns() + GROUP_SETTLE_WAIT_NS);
}

void shmq_group_drop_locked(shmq_group_t *g, shmq_area_t *a, shmq_desc_t *d)
{
    (void)g;
    shmq_group_blk_t *b = member_blk(a, d);
    if (b)
        b->seq = SHMQ_GROUP_LEFT;
}

void shmq_group_unhold(shmq_seg_t *q, shmq_group_t *g)
{
    rebuild_locked(q, g);
    unlock_table(q, g);
}

void shmq_group_counts(shmq_group_t *g, uint64_t *groups, uint64_t *rebuilds)
{
    *groups = g ? shmq_load_relaxed(&g->hdr->live) : 0;
    *rebuilds = g ? shmq_load_relaxed(&g->hdr->rebuilds) : 0;
}

/* ---------------------------------------------------------------- region */

static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    (void)ctx;
    shmq_group_hdr_t *h = (shmq_group_hdr_t *)base;
    h->slots = (uint32_t)((size - sizeof *h) / sizeof(shmq_group_ent_t));
    /* the entries are zero (EMPTY): posix_fallocate'd pages read as zeros */
}

int shmq_group_region(const shmq_create_opts_t *o, shmq_region_req_t *req)
{
    (void)o;
    req->kind = SHMQ_REGION_GROUP;
    req->size = sizeof(shmq_group_hdr_t) + (uint64_t)SHMQ_GROUP_DEFAULT_SLOTS * sizeof(shmq_group_ent_t);
    req->init = region_init;
    req->ctx = NULL;
    return SHMQ_OK;
}

/* untrusted: the table's size against the region */
static int region_check(const shmq_group_hdr_t *h, uint64_t size)
{
    uint32_t n = h->slots;
    if (size < sizeof *h || n < 2 || (n & (n - 1)) || n > (1u << 24) ||
        sizeof *h + (uint64_t)n * sizeof(shmq_group_ent_t) > size)
        return SHMQ_ECORRUPT;
    return SHMQ_OK;
}

int shmq_group_valid(shmq_seg_t *q)
{
    if (!(q->hdr->flags & SHMQ_F_GROUPS))
        return SHMQ_OK;
    uint64_t size;
    uint8_t *base = shmq_seg_region(q, SHMQ_REGION_GROUP, &size);
    return base ? region_check((const shmq_group_hdr_t *)base, size) : SHMQ_ECORRUPT;
}

int shmq_group_bind(shmq_seg_t *q, shmq_group_t **out, shmq_group_release_fn release)
{
    *out = NULL;
    if (!(q->hdr->flags & SHMQ_F_GROUPS))
        return SHMQ_OK;
    uint64_t size;
    uint8_t *base = shmq_seg_region(q, SHMQ_REGION_GROUP, &size);
    if (!base)
        return SHMQ_ECORRUPT; /* the flag says groups, the region table has none */
    shmq_group_hdr_t copy;
    memcpy(&copy, base, sizeof copy); /* validate a private copy: the file may change under us */
    int rc = region_check(&copy, size);
    if (rc != SHMQ_OK)
        return rc;
    shmq_group_t *g = calloc(1, sizeof *g);
    if (!g)
        return SHMQ_ENOMEM;
    g->hdr = (shmq_group_hdr_t *)base;
    g->tab = (shmq_group_ent_t *)(base + sizeof(shmq_group_hdr_t));
    g->slots = copy.slots;
    g->release = release;
    *out = g;
    return SHMQ_OK;
}
