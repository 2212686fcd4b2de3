#include "arena.h"

#include <string.h>

#include "atomic.h"
#include "crashpoint.h"

#define NIL UINT32_MAX

typedef struct {
    uint32_t next;
    uint32_t prev;
} link_t;

static inline link_t *link_at(shmq_area_t *a, uint32_t unit) { return (link_t *)(a->arena + (uint64_t)unit * SHMQ_ARENA_UNIT); }

uint32_t shmq_arena_order_for(uint64_t bytes)
{
    uint64_t units = (bytes + SHMQ_ARENA_UNIT - 1) / SHMQ_ARENA_UNIT;
    uint32_t o = 0;
    while ((1ull << o) < units)
        o++;
    return o;
}

int shmq_arena_ref_valid(const shmq_area_t *a, uint32_t unit, uint32_t order)
{
    /* untrusted: order in range, block aligned to its size and inside the arena */
    if (order > a->arena_max_order || unit == NIL)
        return 0;
    uint64_t n = 1ull << order;
    return (unit & (n - 1)) == 0 && (uint64_t)unit + n <= a->arena_units;
}

static void list_push(shmq_area_t *a, uint32_t unit, uint32_t order)
{
    shmq_area_hdr_t *h = a->hdr;
    uint32_t head = h->free_head[order];
    /* untrusted: a head that is not a free block of this order is garbage. Drop that list (its
     * blocks come back at the rebuild the caller runs once its own update is complete). */
    if (head != NIL && (head >= a->arena_units || a->meta[head] != (SHMQ_META_FREE | order))) {
        a->arena_corrupt = 1;
        head = NIL;
    }
    link_t *l = link_at(a, unit);
    l->next = head;
    l->prev = NIL;
    if (head != NIL)
        link_at(a, head)->prev = unit;
    h->free_head[order] = unit;
    a->meta[unit] = (uint8_t)(SHMQ_META_FREE | order);
}

/* Returns 0 if the lists are inconsistent (caller rebuilds). */
static int list_remove(shmq_area_t *a, uint32_t unit, uint32_t order)
{
    shmq_area_hdr_t *h = a->hdr;
    link_t *l = link_at(a, unit);
    uint32_t nx = l->next, pv = l->prev;
    /* untrusted: neighbours must be free heads of the same order */
    if (nx != NIL && (nx >= a->arena_units || a->meta[nx] != (SHMQ_META_FREE | order)))
        return 0;
    if (pv != NIL && (pv >= a->arena_units || a->meta[pv] != (SHMQ_META_FREE | order)))
        return 0;
    if (pv == NIL) {
        if (h->free_head[order] != unit)
            return 0;
        h->free_head[order] = nx;
    } else {
        link_at(a, pv)->next = nx;
    }
    if (nx != NIL)
        link_at(a, nx)->prev = pv;
    a->meta[unit] = 0;
    return 1;
}

int shmq_arena_alloc_locked(shmq_area_t *a, shmq_desc_t *d, uint64_t bytes)
{
    uint32_t want = shmq_arena_order_for(bytes);
    if (want > a->arena_max_order)
        return SHMQ_FULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        uint32_t o = want;
        while (o <= a->arena_max_order && a->hdr->free_head[o] == NIL)
            o++;
        if (o > a->arena_max_order)
            return SHMQ_FULL;
        uint32_t unit = a->hdr->free_head[o];
        /* untrusted: the head must be a free block of this order */
        if (!shmq_arena_ref_valid(a, unit, o) || a->meta[unit] != (SHMQ_META_FREE | o) || !list_remove(a, unit, o)) {
            shmq_arena_rebuild_locked(a);
            continue;
        }
        SHMQ_CRASH_POINT(arena_locked);
        while (o > want) {
            o--;
            list_push(a, unit + (1u << o), o); /* upper half stays free */
        }
        a->meta[unit] = (uint8_t)(SHMQ_META_USED | want);
        d->chunk = unit;
        d->chunk_order = (uint8_t)want;
        shmq_store_relaxed(&a->hdr->arena_free_units, a->hdr->arena_free_units - (1ull << want));
        if (a->arena_corrupt) { /* d already holds its block, so the rebuild keeps it */
            a->arena_corrupt = 0;
            shmq_arena_rebuild_locked(a);
        }
        return SHMQ_OK;
    }
    return SHMQ_FULL;
}

void shmq_arena_free_locked(shmq_area_t *a, shmq_desc_t *d)
{
    uint32_t unit = d->chunk, order = d->chunk_order;
    d->chunk = SHMQ_NO_CHUNK;
    /* untrusted: only a block the metadata agrees is ours is returned */
    if (!shmq_arena_ref_valid(a, unit, order) || a->meta[unit] != (SHMQ_META_USED | order)) {
        shmq_arena_rebuild_locked(a);
        return;
    }
    shmq_store_relaxed(&a->hdr->arena_free_units, a->hdr->arena_free_units + (1ull << order));
    a->meta[unit] = 0;
    while (order < a->arena_max_order) {
        uint32_t buddy = unit ^ (1u << order);
        if ((uint64_t)buddy + (1ull << order) > a->arena_units || a->meta[buddy] != (SHMQ_META_FREE | order))
            break;
        if (!list_remove(a, buddy, order)) {
            shmq_arena_rebuild_locked(a);
            return;
        }
        unit = unit < buddy ? unit : buddy;
        order++;
    }
    list_push(a, unit, order);
    if (a->arena_corrupt) {
        a->arena_corrupt = 0;
        shmq_arena_rebuild_locked(a);
    }
}

/* Carve [u, end) into maximal aligned free blocks. */
static uint64_t carve(shmq_area_t *a, uint64_t u, uint64_t end)
{
    uint64_t freed = 0;
    while (u < end) {
        uint32_t o = 0;
        while (o < a->arena_max_order && (u & ((2ull << o) - 1)) == 0 && u + (2ull << o) <= end)
            o++;
        list_push(a, (uint32_t)u, o);
        freed += 1ull << o;
        u += 1ull << o;
    }
    return freed;
}

void shmq_arena_rebuild_locked(shmq_area_t *a)
{
    shmq_area_hdr_t *h = a->hdr;
    a->arena_corrupt = 0;
    for (uint32_t o = 0; o < SHMQ_ARENA_MAX_ORDERS; o++)
        h->free_head[o] = NIL;
    memset(a->meta, 0, a->arena_units);
    /* Mark every unit of each referenced block USED; the first unit carries the order. */
    for (uint32_t i = 0; i < a->n_desc; i++) {
        shmq_desc_t *d = (shmq_desc_t *)(a->desc + (uint64_t)i * SHMQ_DESC_SIZE);
        /* every state, FREE too: a FREE descriptor may keep a parked chunk (arena.h) */
        if (d->chunk == NIL)
            continue;
        uint32_t unit = d->chunk, order = d->chunk_order;
        int ok = shmq_arena_ref_valid(a, unit, order);
        for (uint64_t k = 0; ok && k < (1ull << order); k++)
            ok = a->meta[unit + k] == 0; /* untrusted: overlapping references are garbage */
        if (!ok) {
            d->chunk = NIL;
            continue;
        }
        for (uint64_t k = 1; k < (1ull << order); k++)
            a->meta[unit + k] = SHMQ_META_USED; /* interior marker, order 0, cleared below */
        a->meta[unit] = (uint8_t)(SHMQ_META_USED | order | 0x80u); /* temporary: head mark */
    }
    uint64_t freed = 0, u = 0;
    while (u < a->arena_units) {
        if (a->meta[u] & SHMQ_META_USED) {
            uint64_t start = u;
            uint32_t order = a->meta[u] & SHMQ_META_ORDER;
            a->meta[u] = (uint8_t)(SHMQ_META_USED | order);
            for (uint64_t k = 1; k < (1ull << order); k++)
                a->meta[start + k] = 0;
            u = start + (1ull << order);
            continue;
        }
        uint64_t end = u;
        while (end < a->arena_units && !(a->meta[end] & SHMQ_META_USED))
            end++;
        freed += carve(a, u, end);
        u = end;
    }
    shmq_store_relaxed(&h->arena_free_units, freed);
}

uint64_t shmq_arena_free_units(shmq_area_t *a) { return shmq_load_relaxed(&a->hdr->arena_free_units); }
