#define _GNU_SOURCE
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arena.h"
#include "atomic.h"
#include "crashpoint.h"
#include "dedup.h"
#include "desc.h"
#include "guard.h"
#include "lock.h"
#include "wait.h"

/* Implemented in queue.c: return a dead participant's claims to the queue. The caller holds
 * the slot's lock byte, so it is the only repairer of that slot. */
void shmq_queue_repair_slot(shmq_seg_t *seg, uint32_t s);
void shmq_queue_repair_owner(shmq_seg_t *seg, uint32_t dead);

static const char *const rc_names[] = {
    "ok", "empty", "full", "timed out", "interrupted", "message too big", "corrupt segment",
    "incompatible layout version", "system error", "participant table full", "sealed",
    "invalid argument", "cannot grow", "closed", "retry", "stale delivery", "dedup table full",
};

const char *shmq_strerror(int rc)
{
    int i = -rc;
    return (i >= 0 && i < (int)(sizeof rc_names / sizeof rc_names[0])) ? rc_names[i] : "unknown error";
}

static uint64_t pow2floor(uint64_t x)
{
    uint64_t p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

void shmq_area_geometry(uint64_t size, uint32_t *cells_log2, uint32_t *n_desc, uint64_t *meta_off,
                        uint64_t *arena_off, uint64_t *arena_units)
{
    /* Sizing rule (docs/internals/segment-layout.md): a quarter of the area for cells and
     * descriptors (144 bytes per message slot), the rest for the arena and its metadata. */
    uint64_t cells = pow2floor((size / 4) / (16 + SHMQ_DESC_SIZE));
    if (cells < 16)
        cells = 16;
    if (cells > (1u << 22))
        cells = 1u << 22;
    uint32_t lg = 0;
    while ((1ull << lg) < cells)
        lg++;
    uint64_t desc_off = SHMQ_AREA_HDR_SIZE + cells * 16;
    uint64_t moff = desc_off + cells * SHMQ_DESC_SIZE;
    uint64_t units = 0;
    if (size > moff + 128)
        units = (size - moff - 128) / (SHMQ_ARENA_UNIT + 1);
    uint64_t aoff = SHMQ_ALIGN_UP(moff + units, SHMQ_ARENA_UNIT);
    while (units && aoff + units * SHMQ_ARENA_UNIT > size)
        units--;
    if (units > UINT32_MAX - 1)
        units = UINT32_MAX - 1;
    *cells_log2 = lg;
    *n_desc = (uint32_t)cells;
    *meta_off = moff;
    *arena_off = aoff;
    *arena_units = units;
}

static uint32_t max_order_for(uint64_t units)
{
    uint32_t o = 0;
    while (o + 1 < SHMQ_ARENA_MAX_ORDERS && (2ull << o) <= units)
        o++;
    return units ? o : 0;
}

uint64_t shmq_area_max_payload(uint64_t size)
{
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    shmq_area_geometry(size, &lg, &nd, &mo, &ao, &units);
    if (!units)
        return SHMQ_INLINE_MAX;
    return (1ull << max_order_for(units)) * SHMQ_ARENA_UNIT;
}

static void area_bind(shmq_area_t *a, uint8_t *base, uint64_t size)
{
    shmq_area_hdr_t *h = (shmq_area_hdr_t *)base;
    a->base = base;
    a->size = size;
    a->hdr = h;
    a->ring.head = &h->ring_head;
    a->ring.tail = &h->ring_tail;
    a->ring.cells = (shmq_cell_t *)(base + h->cells_off);
    a->ring.log2 = h->cells_log2;
    a->ring.mask = (1ull << h->cells_log2) - 1;
    a->desc = base + h->desc_off;
    a->meta = base + h->meta_off;
    a->arena = base + h->arena_off;
    a->n_desc = h->n_desc;
    a->arena_units = h->arena_units;
    a->arena_max_order = h->arena_max_order;
}

/* Build an area in place (zeroed memory not assumed: a dead grower may have left bytes). */
static void area_init(shmq_area_t *a, uint8_t *base, uint64_t size, uint32_t index)
{
    shmq_area_hdr_t *h = (shmq_area_hdr_t *)base;
    memset(h, 0, sizeof *h);
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    shmq_area_geometry(size, &lg, &nd, &mo, &ao, &units);
    h->index = index;
    h->cells_log2 = lg;
    h->n_desc = nd;
    h->size = size;
    h->cells_off = SHMQ_AREA_HDR_SIZE;
    h->desc_off = SHMQ_AREA_HDR_SIZE + ((uint64_t)1 << lg) * 16;
    h->meta_off = mo;
    h->arena_off = ao;
    h->arena_units = units;
    h->arena_max_order = max_order_for(units);
    area_bind(a, base, size);
    memset(a->desc, 0, (uint64_t)nd * SHMQ_DESC_SIZE);
    for (uint32_t i = 0; i < nd; i++)
        ((shmq_desc_t *)(a->desc + (uint64_t)i * SHMQ_DESC_SIZE))->chunk = SHMQ_NO_CHUNK;
    shmq_ring_init(&a->ring);
    shmq_arena_rebuild_locked(a); /* not yet shared: no lock needed */
    shmq_store_release(&h->magic, SHMQ_AREA_MAGIC);
}

/* untrusted: an area header must match the geometry its size implies. */
static int area_check(const shmq_area_hdr_t *h, uint64_t size, uint32_t index)
{
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    shmq_area_geometry(size, &lg, &nd, &mo, &ao, &units);
    if (h->magic != SHMQ_AREA_MAGIC || h->index != index || h->size != size)
        return 0;
    if (h->cells_log2 != lg || h->n_desc != nd || h->meta_off != mo || h->arena_off != ao || h->arena_units != units)
        return 0;
    if (h->cells_off != SHMQ_AREA_HDR_SIZE || h->desc_off != SHMQ_AREA_HDR_SIZE + ((uint64_t)1 << lg) * 16)
        return 0;
    if (h->arena_max_order != max_order_for(units))
        return 0;
    return 1;
}

static int set_err(shmq_seg_t *seg, int e)
{
    seg->err = e;
    return SHMQ_ESYS;
}

static uint64_t file_size_of(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return 0;
    return (uint64_t)st.st_size;
}

/* untrusted: every header field that sizes or places something is checked here. */
static int header_check(const shmq_header_t *h, uint64_t fsize)
{
    if (h->magic != SHMQ_MAGIC)
        return SHMQ_ECORRUPT;
    if (h->version != SHMQ_LAYOUT_VERSION)
        return SHMQ_EINCOMPAT;
    if (h->init_state != SHMQ_READY || h->header_size != SHMQ_HEADER_SIZE)
        return SHMQ_ECORRUPT;
    if (h->kind < SHMQ_KIND_QUEUE || h->kind > SHMQ_KIND_TOPIC)
        return SHMQ_ECORRUPT;
    if (h->max_slots == 0 || h->max_slots > SHMQ_MAX_SLOTS || h->slots_off != SHMQ_HEADER_SIZE)
        return SHMQ_ECORRUPT;
    if (h->max_areas == 0 || h->max_areas > SHMQ_MAX_AREAS)
        return SHMQ_ECORRUPT;
    const shmq_area_ent_t *a0 = &h->areas[0];
    if (a0->state != 1 || a0->off % 4096 || a0->off < h->slots_off + (uint64_t)h->max_slots * sizeof(shmq_slot_t))
        return SHMQ_ECORRUPT;
    if (a0->size < SHMQ_MIN_AREA_SIZE || a0->size > fsize || a0->off + a0->size > fsize)
        return SHMQ_ECORRUPT;
    if (h->area_tail >= h->max_areas || h->area_head > h->area_tail)
        return SHMQ_ECORRUPT;
    if (!(h->flags & SHMQ_F_GROWABLE) && h->area_tail != 0)
        return SHMQ_ECORRUPT;
    if (h->flags & SHMQ_F_ACK) {
        const shmq_ack_hdr_t *k = &h->ack;
        uint64_t slots_end = h->slots_off + (uint64_t)h->max_slots * sizeof(shmq_slot_t);
        /* untrusted: the dedup table must lie between the slots and area 0 */
        if (k->dedup_slots == 0 || (k->dedup_slots & (k->dedup_slots - 1)) || k->dedup_slots > (1u << 24))
            return SHMQ_ECORRUPT;
        if (k->dedup_off < slots_end || k->dedup_off % 64 ||
            k->dedup_off + (uint64_t)k->dedup_slots * SHMQ_DEDUP_ENT_SIZE > a0->off)
            return SHMQ_ECORRUPT;
        if (k->max_deliveries == 0 || k->max_deliveries > 65535 || k->visibility_ns == 0)
            return SHMQ_ECORRUPT;
        if (memchr(k->dead_letter, 0, sizeof k->dead_letter) == NULL)
            return SHMQ_ECORRUPT;
    }
    return SHMQ_OK;
}

/* Process-local copies of the at-least-once options (from a validated header). */
static void ack_bind(shmq_seg_t *seg, const shmq_header_t *h)
{
    if (!(h->flags & SHMQ_F_ACK))
        return;
    seg->dedup = (shmq_dedup_ent_t *)(seg->map0 + h->ack.dedup_off);
    seg->dedup_slots = h->ack.dedup_slots;
    seg->max_deliveries = h->ack.max_deliveries;
    seg->visibility_ns = h->ack.visibility_ns;
}

static void seg_reset(shmq_seg_t *seg)
{
    memset(seg, 0, sizeof *seg);
    seg->fd = -1;
    seg->slot = UINT32_MAX;
}

static int map_main(shmq_seg_t *seg)
{
    uint64_t fsize = file_size_of(seg->fd);
    /* untrusted: a file smaller than its header is refused before any access (no SIGBUS). */
    if (fsize < SHMQ_HEADER_SIZE)
        return SHMQ_ECORRUPT;
    void *p = mmap(NULL, SHMQ_HEADER_SIZE, PROT_READ, MAP_SHARED, seg->fd, 0);
    if (p == MAP_FAILED)
        return set_err(seg, errno);
    shmq_header_t copy;
    memcpy(&copy, p, sizeof copy); /* validate a private copy: the file may change under us */
    munmap(p, SHMQ_HEADER_SIZE);
    int rc = header_check(&copy, fsize);
    if (rc != SHMQ_OK)
        return rc;
    uint64_t len = copy.areas[0].off + copy.areas[0].size;
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, 0);
    if (p == MAP_FAILED)
        return set_err(seg, errno);
    seg->map0 = p;
    seg->map0_len = len;
    seg->hdr = (shmq_header_t *)p;
    /* Re-check the live header against what we validated (a writer racing the check is hostile). */
    if (memcmp(seg->hdr, &copy, offsetof(shmq_header_t, _pad0)) != 0 || header_check(seg->hdr, fsize) != SHMQ_OK)
        return SHMQ_ECORRUPT;
    seg->max_slots = copy.max_slots;
    seg->slots = (shmq_slot_t *)((uint8_t *)p + copy.slots_off);
    ack_bind(seg, &copy);
    int arc;
    if (!shmq_seg_area(seg, 0, &arc))
        return arc;
    return SHMQ_OK;
}

int shmq_seg_open(shmq_seg_t *seg, const char *path, int fd)
{
    seg_reset(seg);
    if (fd >= 0) {
        /* A fresh open file description of our own: the lock bytes we take must not be shared
         * with whoever handed us this descriptor. */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        seg->fd = open(proc, O_RDWR | O_CLOEXEC);
    } else {
        seg->fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    }
    if (seg->fd < 0) {
        int e = errno;
        seg_reset(seg);
        return set_err(seg, e);
    }
    int rc = map_main(seg);
    if (rc != SHMQ_OK) {
        int e = seg->err;
        shmq_seg_close(seg);
        seg->err = e;
    }
    return rc;
}

int shmq_seg_create(shmq_seg_t *seg, const shmq_create_opts_t *o, int exist_ok, int *created)
{
    seg_reset(seg);
    *created = 0;
    uint32_t slots = o->max_slots ? o->max_slots : SHMQ_DEFAULT_SLOTS;
    if (slots > SHMQ_MAX_SLOTS || o->kind < SHMQ_KIND_QUEUE || o->kind > SHMQ_KIND_TOPIC)
        return SHMQ_EINVAL;
    uint64_t slots_end = SHMQ_HEADER_SIZE + (uint64_t)slots * sizeof(shmq_slot_t);
    uint32_t dedup_slots = 0;
    if (o->flags & SHMQ_F_ACK) {
        dedup_slots = o->dedup_slots ? o->dedup_slots : SHMQ_DEDUP_DEFAULT_SLOTS;
        if ((dedup_slots & (dedup_slots - 1)) || dedup_slots > (1u << 24) || o->max_deliveries == 0 ||
            o->max_deliveries > 65535 || o->visibility_ns == 0 ||
            (o->dead_letter && strlen(o->dead_letter) >= SHMQ_DLQ_NAME_MAX))
            return SHMQ_EINVAL;
    }
    uint64_t dedup_off = SHMQ_ALIGN_UP(slots_end, 64);
    uint64_t a0off = SHMQ_ALIGN_UP(dedup_off + (uint64_t)dedup_slots * SHMQ_DEDUP_ENT_SIZE, 4096);
    uint64_t a0size = SHMQ_ALIGN_UP(o->capacity, 4096);
    if (a0size > a0off + SHMQ_MIN_AREA_SIZE && (o->flags & SHMQ_F_GROWABLE))
        a0size -= a0off; /* growable: the whole first file is `capacity` bytes */
    if (a0size < SHMQ_MIN_AREA_SIZE)
        a0size = SHMQ_MIN_AREA_SIZE;
    uint64_t maxpay = shmq_area_max_payload(a0size);
    uint64_t max_message = o->max_message;
    if (o->flags & SHMQ_F_GROWABLE) {
        if (!max_message)
            max_message = UINT32_MAX; /* any size: the queue grows to fit */
    } else {
        if (!max_message)
            max_message = a0size / 4 < maxpay ? a0size / 4 : maxpay;
        if (max_message > maxpay)
            return SHMQ_ETOOBIG;
    }
    if (max_message > UINT32_MAX)
        max_message = UINT32_MAX;
    uint64_t total = a0off + a0size;

    /* issue 11 item 9: an unnamed (or unguessable) temporary file, so nobody can take it first */
    char tmp[512];
    int fd = shmq_tmp_create(o->path, tmp, sizeof tmp);
    if (fd < 0)
        return errno == ENAMETOOLONG ? SHMQ_EINVAL : set_err(seg, errno);
    seg->fd = fd;
    int e;
    if (fchmod(fd, o->mode) != 0) { /* exact mode, whatever the umask */
        e = errno;
        goto fail;
    }
    e = posix_fallocate(fd, 0, (off_t)total); /* returns the error; a full /dev/shm fails here, not as SIGBUS later */
    if (e)
        goto fail;
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        e = errno;
        goto fail;
    }
    seg->map0 = p;
    seg->map0_len = total;
    seg->hdr = (shmq_header_t *)p;
    seg->max_slots = slots;
    seg->slots = (shmq_slot_t *)((uint8_t *)p + SHMQ_HEADER_SIZE);
    shmq_header_t *h = seg->hdr;
    memset(h, 0, sizeof *h);
    h->magic = SHMQ_MAGIC;
    h->version = SHMQ_LAYOUT_VERSION;
    h->kind = o->kind;
    h->header_size = SHMQ_HEADER_SIZE;
    h->flags = o->flags;
    h->max_slots = slots;
    h->capacity = (o->flags & SHMQ_F_GROWABLE) ? 0 : a0size;
    h->max_message = max_message;
    h->maxsize = o->maxsize;
    h->slots_off = SHMQ_HEADER_SIZE;
    h->creator_pid = getpid();
    h->created_at_ns = shmq_now_wall_ns();
    h->mode = o->mode;
    h->max_areas = (o->flags & SHMQ_F_GROWABLE) ? SHMQ_MAX_AREAS : 1;
    h->first_area_size = a0size;
    h->file_size = total;
    h->next_id = 1;
    h->areas[0].off = a0off;
    h->areas[0].size = a0size;
    h->areas[0].state = 1;
    if (o->flags & SHMQ_F_ACK) {
        shmq_ack_hdr_t *k = &h->ack;
        k->visibility_ns = o->visibility_ns;
        k->default_delay_ns = o->default_delay_ns;
        k->default_ttl_ns = o->default_ttl_ns;
        k->dedup_window_ns = o->dedup_window_ns;
        k->dedup_off = dedup_off;
        k->dedup_slots = dedup_slots;
        k->max_deliveries = o->max_deliveries;
        if (o->dead_letter)
            strcpy(k->dead_letter, o->dead_letter); /* length checked above */
        k->timer_hint_ns = SHMQ_NO_DEADLINE;
        /* the table itself is zero (EMPTY entries): posix_fallocate'd pages read as zeros */
        ack_bind(seg, h);
    }
    area_init(&seg->areas[0], (uint8_t *)p + a0off, a0size, 0);
    shmq_store_release(&h->init_state, SHMQ_READY); /* release: everything above is visible first */
    e = shmq_tmp_publish(fd, tmp, o->path);
    if (e != 0) {
        shmq_seg_close(seg);
        if (e == EEXIST && exist_ok)
            return shmq_seg_open(seg, o->path, -1);
        return set_err(seg, e);
    }
    *created = 1;
    return SHMQ_OK;
fail:
    shmq_tmp_discard(tmp);
    shmq_seg_close(seg);
    return set_err(seg, e);
}

static shmq_area_t *area_map_locked(shmq_seg_t *seg, uint32_t i, int *rc);

shmq_area_t *shmq_seg_area_live(shmq_seg_t *seg, uint32_t i, int *rc)
{
    /* Only RETIRED is gone: a RETIRING area is intact and may still be in use (the retirer
     * then finds a busy descriptor and gives up). */
    if (i < SHMQ_MAX_AREAS && shmq_load_acquire(&seg->hdr->areas[i].state) == SHMQ_AREA_RETIRED) {
        *rc = SHMQ_ESEALED;
        return NULL;
    }
    return shmq_seg_area(seg, i, rc);
}

shmq_area_t *shmq_seg_area_map(shmq_seg_t *seg, uint32_t i, int *rc)
{
    *rc = SHMQ_ECORRUPT;
    if (i >= SHMQ_MAX_AREAS || i >= seg->hdr->max_areas) /* untrusted: index from a handle or cursor */
        return NULL;
    shmq_area_t *a = &seg->areas[i];
    if (SHMQ_LIKELY(a->base != NULL))
        return a;
    while (__atomic_exchange_n(&seg->map_busy, 1, __ATOMIC_ACQUIRE)) /* threads of this process only */
        sched_yield();
    shmq_area_t *r = area_map_locked(seg, i, rc);
    __atomic_store_n(&seg->map_busy, 0, __ATOMIC_RELEASE);
    return r;
}

static shmq_area_t *area_map_locked(shmq_seg_t *seg, uint32_t i, int *rc)
{
    shmq_area_t *a = &seg->areas[i];
    if (a->base != NULL)
        return a;
    shmq_area_ent_t *e = &seg->hdr->areas[i];
    uint32_t st = shmq_load_acquire(&e->state); /* acquire: the area was built before state = 1 */
    if (st == SHMQ_AREA_RETIRED) {
        *rc = SHMQ_ESEALED; /* drained and given back: nothing of it is in use */
        return NULL;
    }
    if (st != 1 && st != SHMQ_AREA_RETIRING) /* RETIRING: intact, maybe about to be restored */
        return NULL;
    uint64_t off = e->off, size = e->size;
    uint64_t fsize = file_size_of(seg->fd);
    /* untrusted: the area must lie inside the file and be page aligned */
    if (off % 4096 || size < SHMQ_MIN_AREA_SIZE || off + size < off || off + size > fsize)
        return NULL;
    uint8_t *base;
    if (i == 0) {
        if (off + size > seg->map0_len)
            return NULL;
        base = seg->map0 + off;
    } else {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, (off_t)off);
        if (p == MAP_FAILED) {
            seg->err = errno;
            *rc = SHMQ_ESYS;
            return NULL;
        }
        base = p;
    }
    if (!area_check((shmq_area_hdr_t *)base, size, i)) {
        if (i != 0)
            munmap(base, size);
        return NULL;
    }
    shmq_area_t tmp;
    memset(&tmp, 0, sizeof tmp);
    area_bind(&tmp, base, size);
    if (!shmq_ring_valid(&tmp.ring)) {
        if (i != 0)
            munmap(base, size);
        return NULL;
    }
    *a = tmp;
    *rc = SHMQ_OK;
    return a;
}

/* Give the memory of drained areas back to tmpfs (grow lock held). An area below area_head whose
 * descriptors are all FREE holds nothing: no producer allocates there any more (they allocate
 * in area_tail), and consumers have sealed it. A producer stalled since it read an old
 * area_tail could still claim a descriptor there, so: we mark the area RETIRING, then scan;
 * a producer claims, then checks the mark (both seq_cst): one of us sees the other. Zeroing
 * also erases the area's SEALED cell, so a producer that publishes into a ring re-checks the
 * ring's area afterwards and publishes again in the current tail (queue.c). */
static void retire_drained(shmq_seg_t *seg)
{
    shmq_header_t *h = seg->hdr;
    uint32_t head = shmq_load_acquire(&h->area_head);
    /* Area 0 shares the first mapping with the header and is small: it is kept. */
    for (uint32_t i = 1; i < head && i < h->max_areas; i++) {
        shmq_area_ent_t *e = &h->areas[i];
        if (shmq_load_acquire(&e->state) != 1)
            continue;
        int rc;
        shmq_area_t *a = shmq_seg_area(seg, i, &rc);
        if (!a)
            continue;
        shmq_store_seq(&e->state, SHMQ_AREA_RETIRING);
        int busy = 0;
        for (uint32_t k = 0; k < a->n_desc && !busy; k++) {
            shmq_desc_t *d = (shmq_desc_t *)(a->desc + (uint64_t)k * SHMQ_DESC_SIZE);
            busy = shmq_desc_state(shmq_load_seq(&d->word)) != SHMQ_D_FREE;
        }
        if (busy) {
            shmq_store_seq(&e->state, 1);
            continue;
        }
        /* The mapping stays valid (reads give zeros); only the memory goes back. */
        fallocate(seg->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)e->off, (off_t)e->size);
        shmq_store_seq(&e->state, SHMQ_AREA_RETIRED);
    }
}

int shmq_seg_grow(shmq_seg_t *seg, uint32_t from, uint64_t need)
{
    shmq_header_t *h = seg->hdr;
    if (!(h->flags & SHMQ_F_GROWABLE))
        return SHMQ_FULL;
    shmq_lock_acquire(seg, &h->grow_lock, SHMQ_NO_DEADLINE); /* a dead holder's work is redone below */
    int rc = SHMQ_OK;
    uint32_t k = from + 1;
    if (shmq_load_acquire(&h->area_tail) != from)
        goto out; /* another process grew meanwhile */
    if (k >= h->max_areas) {
        rc = SHMQ_ENOMEM;
        goto out;
    }
    SHMQ_CRASH_POINT(grow_locked);
    uint64_t size = h->areas[from].size * 2;
    if (size > SHMQ_MAX_AREA_GROW)
        size = SHMQ_MAX_AREA_GROW;
    while (shmq_area_max_payload(size) < need + 64)
        size *= 2;
    uint64_t off = SHMQ_ALIGN_UP(h->file_size, 4096);
    retire_drained(seg);
    int e;
    for (;;) {
        e = posix_fallocate(seg->fd, (off_t)off, (off_t)size);
        /* /dev/shm full: a smaller area may still fit (drained ones were just given back). */
        uint64_t smaller = size / 2;
        if (e != ENOSPC || smaller < SHMQ_MIN_AREA_SIZE || shmq_area_max_payload(smaller) < need + 64)
            break;
        size = smaller;
    }
    if (e) {
        seg->err = e;
        rc = SHMQ_ESYS;
        goto out;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, (off_t)off);
    if (p == MAP_FAILED) {
        seg->err = errno;
        rc = SHMQ_ESYS;
        goto out;
    }
    if (seg->areas[k].base) /* a stale local view from a grower that died: drop it */
        munmap(seg->areas[k].base, seg->areas[k].size);
    memset(&seg->areas[k], 0, sizeof seg->areas[k]);
    area_init(&seg->areas[k], p, size, k);
    h->areas[k].off = off;
    h->areas[k].size = size;
    shmq_store_release(&h->areas[k].state, 1);
    shmq_store_release(&h->file_size, off + size);
    shmq_store_seq(&h->area_tail, k); /* producers move on; consumers follow once area `from` drains */
out:
    shmq_lock_release(seg, &h->grow_lock);
    return rc;
}

static int lock_byte(int fd, uint32_t s, short type, int cmd, struct flock *out)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)(SHMQ_LOCK_BYTE_BASE + s);
    fl.l_len = 1;
    int r = fcntl(fd, cmd, &fl);
    if (out)
        *out = fl;
    return r;
}

int shmq_seg_lock_slot(shmq_seg_t *seg, uint32_t s)
{
    if (s >= seg->max_slots)
        return SHMQ_EINVAL;
    return lock_byte(seg->fd, s, F_WRLCK, F_OFD_SETLK, NULL) == 0 ? SHMQ_OK : SHMQ_EAGAIN;
}

void shmq_seg_unlock_slot(shmq_seg_t *seg, uint32_t s)
{
    if (s < seg->max_slots && s != seg->slot)
        lock_byte(seg->fd, s, F_UNLCK, F_OFD_SETLK, NULL);
}

int shmq_seg_slot_alive(shmq_seg_t *seg, uint32_t s)
{
    if (s >= seg->max_slots)
        return 0;
    if (s == seg->slot)
        return 1; /* our own lock never conflicts with ourselves: GETLK would say "free" */
    struct flock fl;
    if (lock_byte(seg->fd, s, F_WRLCK, F_OFD_GETLK, &fl) != 0)
        return 1; /* cannot tell: assume alive (never steal on doubt) */
    return fl.l_type != F_UNLCK;
}

int shmq_seg_owner_alive(shmq_seg_t *seg, uint32_t owner)
{
    if (owner == 0)
        return 1; /* nobody: nothing to steal */
    uint32_t s = shmq_owner_slot(owner);
    if (s == UINT32_MAX)
        return 0; /* untrusted: a non-zero stamp naming no slot is garbage */
    if (s >= seg->max_slots) /* untrusted: a stamp naming no slot cannot be alive */
        return 0;
    shmq_slot_t *sl = &seg->slots[s];
    if (shmq_load_acquire(&sl->state) != SHMQ_SLOT_ATTACHED)
        return 0;
    if ((shmq_load_acquire(&sl->gen) & SHMQ_OWNER_GEN_MASK) != shmq_owner_gen(owner))
        return 0; /* the slot was re-used since: the owner is gone */
    return shmq_seg_slot_alive(seg, s);
}

static void fold_slot(shmq_seg_t *seg, shmq_slot_t *sl);

static int try_take_slot(shmq_seg_t *seg, uint32_t s)
{
    if (lock_byte(seg->fd, s, F_WRLCK, F_OFD_SETLK, NULL) != 0)
        return 0; /* held by a live participant (or one attaching right now) */
    SHMQ_CRASH_POINT(attach_locked);
    shmq_slot_t *sl = &seg->slots[s];
    /* The lock byte was free: a slot that says ATTACHED belonged to a process that died. */
    int was_dead = shmq_load_acquire(&sl->state) == SHMQ_SLOT_ATTACHED;
    uint32_t old_gen = shmq_load_relaxed(&sl->gen);
    if (was_dead)
        fold_slot(seg, sl); /* its counters and waiter entries, before we reset them */
    uint32_t gen = (old_gen + 1) & SHMQ_OWNER_GEN_MASK;
    if (gen == 0)
        gen = 1;
    shmq_store_relaxed(&sl->pid, (int32_t)getpid());
    sl->role = 0;
    sl->cpu = (uint32_t)shmq_current_cpu();
    sl->run_state = SHMQ_RUN_RUNNING;
    sl->waiting = 0;
    sl->attach_ns = shmq_now_wall_ns();
    sl->enqueued = 0;
    sl->dequeued = 0;
    sl->last_put = 0;
    shmq_store_release(&sl->gen, gen);
    shmq_store_seq(&sl->state, SHMQ_SLOT_ATTACHED);
    seg->slot = s;
    seg->owner = shmq_owner_make(s, gen);
    uint32_t hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    while (hwm < s + 1 && !shmq_cas_acq_rel(&seg->hdr->slot_hwm, &hwm, s + 1))
        ;
    /* Repair after attaching: the dead owner (s, old_gen) now differs from us (s, gen) in
     * generation, so its stamps read as dead and we act under our own live id. */
    if (was_dead)
        shmq_queue_repair_owner(seg, shmq_owner_make(s, old_gen));
    return 1;
}

int shmq_seg_attach(shmq_seg_t *seg)
{
    if (seg->slot != UINT32_MAX)
        return SHMQ_OK;
    /* First the slots that look free (no system call on the live ones), then the rest. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t s = 0; s < seg->max_slots; s++) {
            uint32_t st = shmq_load_acquire(&seg->slots[s].state);
            if ((pass == 0) != (st == SHMQ_SLOT_FREE))
                continue;
            if (try_take_slot(seg, s))
                return SHMQ_OK;
        }
    }
    seg->slot = UINT32_MAX;
    return SHMQ_ESLOTS;
}

static void fold_slot(shmq_seg_t *seg, shmq_slot_t *sl)
{
    shmq_header_t *h = seg->hdr;
    __atomic_fetch_add(&h->enq_folded, shmq_load_relaxed(&sl->enqueued), __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->deq_folded, shmq_load_relaxed(&sl->dequeued), __ATOMIC_RELAXED);
    shmq_store_relaxed(&sl->enqueued, 0);
    shmq_store_relaxed(&sl->dequeued, 0);
    uint32_t w = shmq_exchange_seq(&sl->waiting, 0);
    if (w & 0xffffu)
        __atomic_fetch_sub(&h->waiters_get, w & 0xffffu, __ATOMIC_SEQ_CST);
    if (w >> 16)
        __atomic_fetch_sub(&h->waiters_put, w >> 16, __ATOMIC_SEQ_CST);
}

void shmq_seg_fold_slot(shmq_seg_t *seg, uint32_t s) { fold_slot(seg, &seg->slots[s]); }

static void detach(shmq_seg_t *seg)
{
    if (seg->slot == UINT32_MAX || !seg->slots)
        return;
    shmq_slot_t *sl = &seg->slots[seg->slot];
    fold_slot(seg, sl);
    shmq_store_seq(&sl->state, SHMQ_SLOT_FREE);
    lock_byte(seg->fd, seg->slot, F_UNLCK, F_OFD_SETLK, NULL);
    seg->slot = UINT32_MAX;
    seg->owner = 0;
}

void shmq_seg_close(shmq_seg_t *seg)
{
    if (seg->hdr)
        detach(seg);
    for (uint32_t i = 1; i < SHMQ_MAX_AREAS; i++)
        if (seg->areas[i].base)
            munmap(seg->areas[i].base, seg->areas[i].size);
    if (seg->map0)
        munmap(seg->map0, seg->map0_len);
    if (seg->fd >= 0)
        close(seg->fd);
    seg_reset(seg);
}

int shmq_seg_after_fork(shmq_seg_t *seg)
{
    if (seg->fd < 0)
        return SHMQ_ECLOSED;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", seg->fd);
    int nfd = open(proc, O_RDWR | O_CLOEXEC);
    if (nfd < 0)
        return set_err(seg, errno);
    /* Closing our copy of the parent's descriptor does not release the parent's lock (the parent
     * still holds the description) unless the parent is gone, which is then correct. */
    close(seg->fd);
    seg->fd = nfd;
    seg->slot = UINT32_MAX;
    seg->owner = 0;
    seg->lock_busy = 0; /* the child has one thread: a flag held by another parent thread is void */
    seg->map_busy = 0;
    shmq_cpus_allowed_reset();
    return shmq_seg_attach(seg);
}

void shmq_seg_participants(shmq_seg_t *seg, uint32_t *attached, uint32_t *producers, uint32_t *consumers)
{
    uint32_t a = 0, p = 0, c = 0;
    for (uint32_t s = 0; s < seg->max_slots; s++) {
        shmq_slot_t *sl = &seg->slots[s];
        if (shmq_load_acquire(&sl->state) != SHMQ_SLOT_ATTACHED || !shmq_seg_slot_alive(seg, s))
            continue;
        a++;
        uint32_t r = shmq_load_relaxed(&sl->role);
        p += (r & SHMQ_ROLE_PRODUCER) != 0;
        c += (r & SHMQ_ROLE_CONSUMER) != 0;
    }
    *attached = a;
    *producers = p;
    *consumers = c;
}

int shmq_seg_validate(shmq_seg_t *seg)
{
    int rc = header_check(seg->hdr, file_size_of(seg->fd));
    if (rc != SHMQ_OK)
        return rc;
    uint32_t tail = shmq_load_acquire(&seg->hdr->area_tail);
    for (uint32_t i = 0; i <= tail; i++)
        if (!shmq_seg_area_live(seg, i, &rc) && rc != SHMQ_ESEALED)
            return rc;
    return SHMQ_OK;
}
