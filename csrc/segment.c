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
#include "desc.h"
#include "guard.h"
#include "lock.h"
#include "participants.h"
#include "wait.h"

static const char *const rc_names[] = {
    "ok", "empty", "full", "timed out", "interrupted", "message too big", "corrupt segment",
    "incompatible layout version", "system error", "participant table full", "sealed",
    "invalid argument", "cannot grow", "closed", "retry", "stale delivery", "dedup table full",
    "journal error",
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
    shmq_area_geometry_ex(size, SHMQ_GEO_DEFAULT, cells_log2, n_desc, meta_off, arena_off, arena_units);
}

void shmq_area_geometry_ex(uint64_t size, uint32_t geo, uint32_t *cells_log2, uint32_t *n_desc, uint64_t *meta_off,
                           uint64_t *arena_off, uint64_t *arena_units)
{
    shmq_area_geometry_r(size, geo, 1, cells_log2, n_desc, meta_off, arena_off, arena_units);
}

/* Bytes from the first ring's cells to the descriptors: the rings' cells and extra cursor blocks. */
static uint64_t rings_bytes(uint64_t cells, uint32_t rings)
{
    if (rings == 0)
        rings = 1;
    return cells * 16 + (uint64_t)(rings - 1) * (2 * SHMQ_CURSOR_PAD + cells * 16);
}

void shmq_area_geometry_r(uint64_t size, uint32_t geo, uint32_t rings, uint32_t *cells_log2, uint32_t *n_desc,
                          uint64_t *meta_off, uint64_t *arena_off, uint64_t *arena_units)
{
    /* Sizing rule (docs/internals/segment-layout.md): a quarter (dense: seven eighths) of the
     * area for cells and descriptors (144 bytes per message slot; 128 + 16 per ring with several
     * rings), the rest for the arena and its metadata. */
    if (rings == 0 || rings > SHMQ_MAX_AREA_RINGS)
        rings = 1; /* callers pass validated counts; never index past the table below */
    uint64_t share = geo == SHMQ_GEO_DENSE ? size / 8 * 7 : size / 4;
    uint64_t fixed = (uint64_t)(rings - 1) * 2 * SHMQ_CURSOR_PAD;
    uint64_t cells = share > fixed ? pow2floor((share - fixed) / (16ull * rings + SHMQ_DESC_SIZE)) : 0;
    if (cells < 16)
        cells = 16;
    if (cells > (1u << 22))
        cells = 1u << 22;
    uint32_t lg = 0;
    while ((1ull << lg) < cells)
        lg++;
    uint64_t desc_off = SHMQ_AREA_HDR_SIZE + rings_bytes(cells, rings);
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

int shmq_area_ring(const shmq_area_t *a, uint32_t j, shmq_ring_t *r)
{
    if (j >= a->n_rings)
        return 0;
    if (j == 0) {
        *r = a->ring;
        return 1;
    }
    uint64_t cells = 1ull << a->ring.log2;
    uint8_t *blk = (uint8_t *)a->ring.cells + cells * 16 + (uint64_t)(j - 1) * (2 * SHMQ_CURSOR_PAD + cells * 16);
    r->head = (uint64_t *)blk;
    r->tail = (uint64_t *)(blk + SHMQ_CURSOR_PAD);
    r->cells = (shmq_cell_t *)(blk + 2 * SHMQ_CURSOR_PAD);
    r->log2 = a->ring.log2;
    r->mask = a->ring.mask;
    return 1;
}

static uint32_t max_order_for(uint64_t units)
{
    uint32_t o = 0;
    while (o + 1 < SHMQ_ARENA_MAX_ORDERS && (2ull << o) <= units)
        o++;
    return units ? o : 0;
}

uint64_t shmq_area_max_payload(uint64_t size) { return shmq_area_max_payload_ex(size, SHMQ_GEO_DEFAULT); }

uint64_t shmq_area_max_payload_ex(uint64_t size, uint32_t geo) { return shmq_area_max_payload_r(size, geo, 1); }

uint64_t shmq_area_max_payload_r(uint64_t size, uint32_t geo, uint32_t rings)
{
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    shmq_area_geometry_r(size, geo, rings, &lg, &nd, &mo, &ao, &units);
    if (!units)
        return SHMQ_INLINE_MAX;
    return (1ull << max_order_for(units)) * SHMQ_ARENA_UNIT;
}

static void area_bind(shmq_area_t *a, uint8_t *base, uint64_t size, uint32_t rings)
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
    a->n_rings = rings;
}

/* Rings of area `index` (validated copy; area 0 always one). */
static uint32_t rings_of_area(const shmq_seg_t *seg, uint32_t index)
{
    return index == 0 || seg->area_rings == 0 ? 1 : seg->area_rings;
}

/* Build an area in place (zeroed memory not assumed: a dead grower may have left bytes). */
static void area_init(shmq_area_t *a, uint8_t *base, uint64_t size, uint32_t index, uint32_t geo, uint32_t rings)
{
    shmq_area_hdr_t *h = (shmq_area_hdr_t *)base;
    memset(h, 0, sizeof *h);
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    shmq_area_geometry_r(size, geo, rings, &lg, &nd, &mo, &ao, &units);
    h->geometry = geo;
    h->index = index;
    h->cells_log2 = lg;
    h->n_desc = nd;
    h->size = size;
    h->cells_off = SHMQ_AREA_HDR_SIZE;
    h->desc_off = SHMQ_AREA_HDR_SIZE + rings_bytes(1ull << lg, rings);
    h->meta_off = mo;
    h->arena_off = ao;
    h->arena_units = units;
    h->arena_max_order = max_order_for(units);
    area_bind(a, base, size, rings);
    memset(a->desc, 0, (uint64_t)nd * SHMQ_DESC_SIZE);
    for (uint32_t i = 0; i < nd; i++)
        ((shmq_desc_t *)(a->desc + (uint64_t)i * SHMQ_DESC_SIZE))->chunk = SHMQ_NO_CHUNK;
    for (uint32_t j = 0; j < rings; j++) {
        shmq_ring_t r;
        if (shmq_area_ring(a, j, &r))
            shmq_ring_init(&r);
    }
    shmq_arena_rebuild_locked(a); /* not yet shared: no lock needed */
    shmq_store_release(&h->magic, SHMQ_AREA_MAGIC);
}

/* untrusted: an area header must match the geometry its size implies. */
static int area_check(const shmq_area_hdr_t *h, uint64_t size, uint32_t index, uint32_t geo, uint32_t rings)
{
    uint32_t lg, nd;
    uint64_t mo, ao, units;
    if (geo > SHMQ_GEO_DENSE || (index == 0 && geo != SHMQ_GEO_DEFAULT))
        return 0;
    shmq_area_geometry_r(size, geo, rings, &lg, &nd, &mo, &ao, &units);
    if (h->magic != SHMQ_AREA_MAGIC || h->index != index || h->size != size || h->geometry != geo)
        return 0;
    if (h->cells_log2 != lg || h->n_desc != nd || h->meta_off != mo || h->arena_off != ao || h->arena_units != units)
        return 0;
    if (h->cells_off != SHMQ_AREA_HDR_SIZE || h->desc_off != SHMQ_AREA_HDR_SIZE + rings_bytes(1ull << lg, rings))
        return 0;
    if (mo > size)
        return 0; /* the geometry never gives this; a size too small for its rings is refused */
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
    if (h->max_areas == 0 || h->max_areas > SHMQ_MAX_AREAS || h->maxsize > UINT32_MAX - 1)
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
    if (h->area_rings > SHMQ_MAX_AREA_RINGS || (h->area_rings > 1 && !(h->flags & SHMQ_F_GROWABLE)))
        return SHMQ_ECORRUPT;
    /* untrusted: regions lie between the slots and area 0, aligned, in order, not overlapping;
     * unused entries follow the used ones and are zero */
    uint64_t end = h->slots_off + (uint64_t)h->max_slots * sizeof(shmq_slot_t);
    int unused = 0;
    for (uint32_t i = 0; i < SHMQ_MAX_REGIONS; i++) {
        const shmq_region_t *r = &h->regions[i];
        if (r->kind == 0) {
            if (r->off || r->size)
                return SHMQ_ECORRUPT;
            unused = 1;
            continue;
        }
        if (unused || r->kind > SHMQ_REGION_KIND_MAX || r->off % SHMQ_REGION_ALIGN || r->off < end ||
            r->size == 0 || r->size > a0->off || r->off > a0->off - r->size)
            return SHMQ_ECORRUPT;
        for (uint32_t j = 0; j < i; j++)
            if (h->regions[j].kind == r->kind)
                return SHMQ_ECORRUPT; /* one region per kind */
        end = r->off + r->size;
    }
    return SHMQ_OK;
}

uint8_t *shmq_seg_region(shmq_seg_t *seg, uint32_t kind, uint64_t *size)
{
    /* the table was validated at open against the mapping (map_main's re-check) */
    for (uint32_t i = 0; i < SHMQ_MAX_REGIONS; i++) {
        const shmq_region_t *r = &seg->hdr->regions[i];
        if (r->kind == kind && r->off + r->size <= seg->map0_len) {
            *size = r->size;
            return seg->map0 + r->off;
        }
    }
    *size = 0;
    return NULL;
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
    if (rc == SHMQ_EINCOMPAT)
        seg->err = (int)(copy.version & 0x7fffffff); /* the version found, for the message naming both */
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
    seg->max_areas = copy.max_areas; /* untrusted: loops use this copy, never the live word */
    seg->area_rings = copy.area_rings; /* validated by header_check */
    seg->slots = (shmq_slot_t *)((uint8_t *)p + copy.slots_off);
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

int shmq_seg_create(shmq_seg_t *seg, const shmq_create_opts_t *o, const shmq_region_req_t *regions, uint32_t n_regions,
                    int exist_ok, int *created)
{
    seg_reset(seg);
    *created = 0;
    uint32_t slots = o->max_slots ? o->max_slots : SHMQ_DEFAULT_SLOTS;
    if (slots > SHMQ_MAX_SLOTS || o->kind < SHMQ_KIND_QUEUE || o->kind > SHMQ_KIND_TOPIC ||
        o->maxsize > UINT32_MAX - 1) /* units are 32 bits of h->count (queue.c) */
        return SHMQ_EINVAL;
    if (n_regions > SHMQ_MAX_REGIONS || o->area_rings > SHMQ_MAX_AREA_RINGS)
        return SHMQ_EINVAL;
    uint64_t reg_off[SHMQ_MAX_REGIONS];
    uint64_t end = SHMQ_HEADER_SIZE + (uint64_t)slots * sizeof(shmq_slot_t);
    for (uint32_t i = 0; i < n_regions; i++) {
        if (regions[i].kind == 0 || regions[i].kind > SHMQ_REGION_KIND_MAX || regions[i].size == 0 ||
            regions[i].size > (1ull << 40))
            return SHMQ_EINVAL;
        reg_off[i] = SHMQ_ALIGN_UP(end, SHMQ_REGION_ALIGN);
        end = reg_off[i] + regions[i].size;
    }
    uint64_t a0off = SHMQ_ALIGN_UP(end, 4096);
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
    seg->max_areas = (o->flags & SHMQ_F_GROWABLE) ? SHMQ_MAX_AREAS : 1;
    seg->area_rings = (o->flags & SHMQ_F_GROWABLE) ? o->area_rings : 0;
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
    h->area_rings = seg->area_rings;
    h->file_size = total;
    h->next_id = 1;
    h->areas[0].off = a0off;
    h->areas[0].size = a0size;
    h->areas[0].state = 1;
    for (uint32_t i = 0; i < n_regions; i++) {
        h->regions[i].kind = regions[i].kind;
        h->regions[i].off = reg_off[i];
        h->regions[i].size = regions[i].size;
        /* the region's pages are zero (posix_fallocate'd); its owner builds the rest */
        if (regions[i].init)
            regions[i].init(regions[i].ctx, (uint8_t *)p + reg_off[i], regions[i].size);
    }
    area_init(&seg->areas[0], (uint8_t *)p + a0off, a0size, 0, SHMQ_GEO_DEFAULT, 1);
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
    if (i >= seg->max_areas) /* untrusted: index from a handle or cursor; bound copied at open */
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
    uint32_t geo = e->geometry;
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
    uint32_t rings = rings_of_area(seg, i);
    if (!area_check((shmq_area_hdr_t *)base, size, i, geo, rings)) {
        if (i != 0)
            munmap(base, size);
        /* an area given back while we mapped it reads as zeros: that is retired, not corrupt
         * (acquire: the retirer's RETIRED store follows its punch-hole) */
        uint32_t now_st = shmq_load_acquire(&e->state);
        if (now_st == SHMQ_AREA_RETIRED || now_st == SHMQ_AREA_RETIRING)
            *rc = SHMQ_ESEALED;
        return NULL;
    }
    shmq_area_t tmp;
    memset(&tmp, 0, sizeof tmp);
    area_bind(&tmp, base, size, rings);
    int rings_ok = 1;
    for (uint32_t j = 0; j < rings && rings_ok; j++) {
        shmq_ring_t r;
        rings_ok = shmq_area_ring(&tmp, j, &r) && shmq_ring_valid(&r);
    }
    if (!rings_ok) {
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
    for (uint32_t i = 1; i < head && i < seg->max_areas; i++) {
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

int shmq_seg_grow(shmq_seg_t *seg, uint32_t from, uint64_t need, uint64_t lock_deadline_ns)
{
    shmq_header_t *h = seg->hdr;
    if (!(h->flags & SHMQ_F_GROWABLE))
        return SHMQ_FULL;
    /* a dead holder's work is redone below; a live one that holds it past our deadline: FULL */
    if (shmq_lock_acquire(seg, &h->grow_lock, &seg->grow_busy, lock_deadline_ns) == SHMQ_TIMEOUT)
        return SHMQ_FULL;
    int rc = SHMQ_OK;
    uint32_t k = from + 1;
    if (shmq_load_acquire(&h->area_tail) != from)
        goto out; /* another process grew meanwhile */
    if (k >= seg->max_areas || from >= seg->max_areas) {
        rc = SHMQ_ENOMEM;
        goto out;
    }
    SHMQ_CRASH_POINT(grow_locked);
    uint64_t size = shmq_load_relaxed(&h->areas[from].size) * 2;
    if (size < SHMQ_MIN_AREA_SIZE)
        size = SHMQ_MIN_AREA_SIZE; /* untrusted: a zeroed size would never double */
    if (size > SHMQ_MAX_AREA_GROW)
        size = SHMQ_MAX_AREA_GROW;
    /* Small messages ran the area out of slots with most of its arena unused: a dense area. */
    uint32_t geo = SHMQ_GEO_DEFAULT;
    shmq_area_t *prev = from < seg->max_areas && seg->areas[from].base ? &seg->areas[from] : NULL;
    if (need <= SHMQ_INLINE_MAX && prev && shmq_arena_free_units(prev) * 4 >= prev->arena_units * 3)
        geo = SHMQ_GEO_DENSE;
    uint32_t rings = rings_of_area(seg, k);
    while (shmq_area_max_payload_r(size, geo, rings) < need + 64) {
        if (size >= (1ull << 40)) {
            rc = SHMQ_ENOMEM;
            goto out;
        }
        size *= 2;
    }
    uint64_t off = SHMQ_ALIGN_UP(h->file_size, 4096);
    retire_drained(seg);
    int e;
    for (;;) {
        e = posix_fallocate(seg->fd, (off_t)off, (off_t)size);
        /* /dev/shm full: a smaller area may still fit (drained ones were just given back). */
        uint64_t smaller = size / 2;
        if (e != ENOSPC || smaller < SHMQ_MIN_AREA_SIZE || shmq_area_max_payload_r(smaller, geo, rings) < need + 64)
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
    area_init(&seg->areas[k], p, size, k, geo, rings);
    h->areas[k].off = off;
    h->areas[k].size = size;
    h->areas[k].geometry = geo;
    shmq_store_release(&h->areas[k].state, 1);
    shmq_store_release(&h->file_size, off + size);
    shmq_store_seq(&h->area_tail, k); /* producers move on; consumers follow once area `from` drains */
out:
    shmq_lock_release(seg, &h->grow_lock, &seg->grow_busy);
    return rc;
}

void shmq_seg_close(shmq_seg_t *seg)
{
    if (seg->hdr)
        shmq_part_detach(seg);
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
    /* the child has one thread: a flag held by another parent thread is void */
    seg->grow_busy = 0;
    for (uint32_t i = 0; i < SHMQ_MAX_AREAS; i++)
        seg->areas[i].arena_busy = 0;
    seg->map_busy = 0;
    /* the parent's watchers are counted in the parent's slot: the parent undoes them */
    seg->watching[0] = seg->watching[1] = 0;
    /* No slot yet: the child takes one when it first uses the handle (shmq_part_attach), so a
     * pool of forked workers that never touch an inherited queue takes none of its slots. */
    return SHMQ_OK;
}

int shmq_seg_validate(shmq_seg_t *seg)
{
    int rc = header_check(seg->hdr, file_size_of(seg->fd));
    if (rc != SHMQ_OK)
        return rc;
    uint32_t tail = shmq_load_acquire(&seg->hdr->area_tail);
    for (uint32_t i = 0; i <= tail && i < seg->max_areas; i++)
        if (!shmq_seg_area_live(seg, i, &rc) && rc != SHMQ_ESEALED)
            return rc;
    return SHMQ_OK;
}
