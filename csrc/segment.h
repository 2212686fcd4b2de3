/* segment.h - the shared-memory segment of one queue: header, participant table, areas.
 *
 * File: /dev/shm/shmq.<name> (tmpfs, the same files shm_open uses). Layout v2:
 *
 *   0        shmq_header_t  (4 KiB: identity, options, wait words, counters, area table, region table)
 *   4096     participant table: max_slots x shmq_slot_t (64 B each)
 *   R0..     the kind's regions (64 B aligned, in table order): e.g. the at-least-once block + dedup table
 *   A0       area 0 (page aligned): area header, ring cells, descriptors, arena metadata, arena
 *   A1..     areas 1.. appended to the same file when an unbounded queue grows
 *
 * Areas are appended to the one file (posix_fallocate beyond EOF) rather than kept in separate
 * files: a process that holds the file open (even after unlink) can always reach every area,
 * and unlink removes everything at once. Each process maps each area on demand.
 *
 * Creation (no wedge window): the creator builds the whole file unnamed (O_TMPFILE) or, where
 * that is refused, under an unguessable temporary name ("shmq.<name>~c<pid>.<random>": '~' is
 * outside the name alphabet; guard.h), fchmod()s it, sets init_state = READY, then links it
 * into place; EEXIST means another creator won and we open theirs. An opener therefore never
 * sees a half-built segment under the real name.
 *
 * Participants (participants.h): each attached handle owns one slot; liveness is an OFD lock
 * on byte 2^40 + slot. This file knows no kind of queue: a kind registers its hooks (shmq_ops_t)
 * and its regions, and the region table lets each kind keep its own state (DESIGN §1).
 *
 * Concurrency: the header's immutable part is written once before link(); the rest is atomics.
 * Crash windows: creation - a dead creator leaves nothing (O_TMPFILE) or a temp file (shmq gc);
 * attach - a process killed between taking its lock byte and writing its slot leaves a slot
 * whose byte is free again: the next attacher re-initialises it; growth - see shmq_seg_grow.
 * Everything read from the file is untrusted and validated in shmq_seg_validate / at use.
 */
#ifndef SHMQ_SEGMENT_H
#define SHMQ_SEGMENT_H

#include "common.h"
#include "ring.h"
#include "wait.h"

#define SHMQ_MAGIC 0x3176514d48530a7fULL /* "\x7f\nSHMQv1" little-endian (the magic of every layout version) */
#define SHMQ_AREA_MAGIC 0x61657261514d4853ULL /* "SHMQarea" */
#define SHMQ_LAYOUT_VERSION 3u /* 3: FREE descriptors may keep a parked chunk (arena.h): a v2 process's
                                * rebuild would hand such a chunk out twice, so v2 must refuse v3 files.
                                * 2: region table (1: a fixed at-least-once block in the header) */
#define SHMQ_READY 0x52454459u /* init_state once fully built */

#define SHMQ_KIND_QUEUE 1u
#define SHMQ_KIND_PRIORITY 2u
#define SHMQ_KIND_TOPIC 3u

#define SHMQ_F_GROWABLE 0x1u  /* unbounded: areas are appended when full */
#define SHMQ_F_RAW 0x2u       /* bytes-like bodies only */
#define SHMQ_F_ANONYMOUS 0x4u /* unlinked by its creator at close/exit */
#define SHMQ_F_JOINABLE 0x8u  /* task_done/join accounting */
#define SHMQ_F_ACK 0x10u      /* at-least-once: leases, redelivery, dead letters (lease.h) */
#define SHMQ_F_GROUPS 0x40u   /* at-least-once with a message-group table (group.h) */

#define SHMQ_HEADER_SIZE 4096u
#define SHMQ_MAX_AREAS 64u
#define SHMQ_MAX_AREA_RINGS 64u /* rings per grown area (a priority queue's levels) */
#define SHMQ_DEFAULT_SLOTS 1023u
#define SHMQ_LOCK_BYTE_BASE (1ull << 40)
#define SHMQ_AREA_HDR_SIZE 1024u
#define SHMQ_DESC_SIZE 128u
#define SHMQ_ARENA_UNIT 64u
#define SHMQ_ARENA_MAX_ORDERS 40u
#define SHMQ_MIN_AREA_SIZE (64u * 1024u)
#define SHMQ_MAX_AREA_GROW (1ull << 30) /* doubling stops at 1 GiB per area (unless a message needs more) */

/* participant slot states */
#define SHMQ_SLOT_FREE 0u
#define SHMQ_SLOT_ATTACHED 1u
/* role bits */
#define SHMQ_ROLE_PRODUCER 1u
#define SHMQ_ROLE_CONSUMER 2u

typedef struct {
    uint32_t state;     /* FREE / ATTACHED */
    uint32_t gen;       /* bumped at each attach; owner ids carry its low 21 bits */
    int32_t pid;        /* informational: liveness is the OFD lock, never the pid */
    uint32_t role;      /* ROLE_* bits, set on first put/get */
    uint32_t cpu;       /* CPU of the last operation (spin policy) */
    uint32_t run_state; /* RUNNING / SLEEPING (spin policy) */
    uint32_t waiting;   /* this slot's entries in the waiter counts: get in low 16 bits, put in high 16 */
    uint32_t unit_busy; /* maxsize: > 0 while this slot is between a unit and its descriptor (queue.c) */
    uint64_t attach_ns; /* wall clock at attach */
    uint64_t enqueued;  /* single-writer counters (this slot only); readers sum, repair folds */
    uint64_t dequeued;
    uint64_t last_put;  /* shmq_ticks() of the last put (spin policy: "is a producer active?") */
} shmq_slot_t;
_Static_assert(sizeof(shmq_slot_t) == 64, "slot must be one cache line");

#define SHMQ_AREA_RETIRING 2u
#define SHMQ_AREA_RETIRED 3u
typedef struct {
    uint64_t off;   /* byte offset of the area in the file (page aligned) */
    uint64_t size;  /* bytes */
    uint32_t state; /* 0 absent, 1 ready (written last, release), 2 retiring, 3 retired (memory given back) */
    uint32_t geometry; /* SHMQ_GEO_*: how the area splits into slots and arena (before state, release) */
    uint64_t _pad1; /* 32-byte entries */
} shmq_area_ent_t;
_Static_assert(sizeof(shmq_area_ent_t) == 32, "area entry layout");

/* Region table: each feature that needs state of its own in the segment (the at-least-once
 * block and dedup table today; priority bitmaps, topic cursors later) gets a region, placed by
 * the creator between the participant table and area 0 and described here. segment.c checks
 * only that the table is well formed (untrusted: in bounds, aligned, in order, no overlap);
 * the feature validates its region's content with its own valid(). Unused entries are zero. */
#define SHMQ_MAX_REGIONS 8u
#define SHMQ_REGION_ACK 1u /* lease.h: at-least-once block + dedup table */
/* 2: SHMQ_REGION_PRIO (prio.h): the priority levels' rings and bitmap */
#define SHMQ_REGION_GROUP 3u /* group.h: message-group table */
#define SHMQ_REGION_TOPIC 4u /* topic.h: log entries, subscriptions, membership, data ring */
#define SHMQ_REGION_KIND_MAX 16u
#define SHMQ_REGION_ALIGN 64u
typedef struct {
    uint32_t kind;  /* SHMQ_REGION_*, 0 = unused */
    uint32_t _pad0;
    uint64_t off;   /* byte offset in the file */
    uint64_t size;  /* bytes */
    uint64_t _pad1; /* 32-byte entries */
} shmq_region_t;
_Static_assert(sizeof(shmq_region_t) == 32, "region entry layout");

/* A region the creator asks for: its size, and how to build it before the file is linked. */
typedef struct {
    uint32_t kind;
    uint64_t size;
    void (*init)(void *ctx, uint8_t *base, uint64_t size);
    void *ctx;
} shmq_region_req_t;

typedef struct {
    /* --- identity and options: written once before the file is linked into place --- */
    uint64_t magic;
    uint32_t version;
    uint32_t kind;
    uint32_t init_state;
    uint32_t header_size;
    uint32_t flags;
    uint32_t max_slots;
    uint64_t capacity;     /* bytes requested (0 = unbounded) */
    uint64_t max_message;  /* largest body+header accepted */
    uint64_t maxsize;      /* 0 = no item bound */
    uint64_t slots_off;
    int64_t creator_pid;
    uint64_t created_at_ns; /* wall clock */
    uint32_t mode;
    uint32_t max_areas;
    uint64_t first_area_size;
    uint32_t area_rings;   /* rings per grown area (0 or 1: the area's own; a growable priority queue: one per level) */
    uint8_t _pad0[128 - 100]; /* identity in its own 128-byte block: read-mostly */
    /* --- growth (producers, rare) --- */
    uint64_t file_size;    /* bytes the areas cover; grows under grow_lock */
    uint32_t grow_lock;    /* owner-stamped lock (lock.h) */
    uint32_t area_tail;    /* newest area: producers put here */
    uint32_t slot_hwm;     /* 1 + highest slot ever attached: bounds the spin-policy scan */
    uint8_t _pad1[128 - 20];
    /* --- consumers' area cursor --- */
    uint32_t area_head;    /* oldest area that may hold messages */
    uint8_t _pad2[128 - 4];
    /* --- not-empty wait words (written by producers when someone sleeps) --- */
    shmq_waitq_t not_empty; /* getters sleep here (coalesced wake-ups) */
    uint8_t _pad3[128 - 8];
    /* --- not-full wait words (written by consumers when someone sleeps) --- */
    shmq_waitq_t not_full;  /* putters sleep here (coalesced wake-ups) */
    uint8_t _pad4[128 - 8];
    /* --- shared counters (only touched when the option needs them) --- */
    uint64_t count;        /* maxsize queues: op sequence:32 | units:32 (items reserved; queue.c) */
    uint64_t next_id;      /* message ids: unique, increasing */
    uint64_t unfinished;   /* JoinableQueue: put minus task_done */
    shmq_waitq_t join;     /* join() sleeps here */
    uint8_t _pad5[128 - 32];
    /* --- totals folded in from detached/dead slots --- */
    uint64_t enq_folded;
    uint64_t deq_folded;
    uint64_t repairs;
    uint64_t last_repair_ns;
    uint64_t corrupt_skipped;
    uint8_t _pad6[128 - 40];
    shmq_area_ent_t areas[SHMQ_MAX_AREAS]; /* 2048 bytes */
    shmq_region_t regions[SHMQ_MAX_REGIONS]; /* 256 bytes: written once before the file is linked */
    uint8_t _pad7[SHMQ_HEADER_SIZE - 128 * 7 - 32 * SHMQ_MAX_AREAS - 32 * SHMQ_MAX_REGIONS];
} shmq_header_t;
_Static_assert(sizeof(shmq_header_t) == SHMQ_HEADER_SIZE, "header is one page");
_Static_assert(offsetof(shmq_header_t, file_size) == 128, "growth block");
_Static_assert(offsetof(shmq_header_t, area_head) == 256, "area head block");
_Static_assert(offsetof(shmq_header_t, not_empty) == 384, "not-empty block");
_Static_assert(offsetof(shmq_header_t, not_full) == 512, "not-full block");
_Static_assert(offsetof(shmq_header_t, count) == 640, "counters block");
_Static_assert(offsetof(shmq_header_t, areas) == 896, "area table");
_Static_assert(offsetof(shmq_header_t, regions) == 896 + 32 * SHMQ_MAX_AREAS, "region table");

/* Area header: at the start of each area. */
typedef struct {
    uint64_t magic;
    uint32_t index;
    uint32_t cells_log2;
    uint32_t n_desc;
    uint32_t arena_max_order;
    uint64_t size;        /* whole area, bytes */
    uint64_t cells_off;   /* offsets relative to the area start */
    uint64_t desc_off;
    uint64_t meta_off;
    uint64_t arena_off;
    uint64_t arena_units; /* arena size in 64-byte units */
    uint32_t geometry;    /* SHMQ_GEO_*, the same as the area entry's */
    uint32_t parked_hint; /* 1 once a FREE descriptor of this area kept its chunk (arena.h: parked
                           * chunks); never reset; lets stats skip the descriptor scan otherwise */
    uint8_t _pad0[128 - 80];
    /* --- arena: lock, accounting and free lists (lock holders only) --- */
    uint32_t arena_lock;
    uint32_t returning;       /* RETURNING descriptors to reclaim: a hint, reset by the reclaimer */
    uint64_t arena_free_units;
    uint32_t free_head[SHMQ_ARENA_MAX_ORDERS]; /* first free block of each order, UINT32_MAX = none */
    uint8_t _pad2[384 - 128 - 16 - 4 * SHMQ_ARENA_MAX_ORDERS];
    /* --- ring cursors, each alone on a 128-byte block (consumers vs producers) --- */
    uint64_t ring_head;
    uint8_t _pad3[SHMQ_CURSOR_PAD - 8];
    uint64_t ring_tail;
    uint8_t _pad4[SHMQ_CURSOR_PAD - 8];
    /* --- descriptors in use (for stats; relaxed) --- */
    uint8_t _pad5[SHMQ_AREA_HDR_SIZE - 384 - 2 * SHMQ_CURSOR_PAD];
} shmq_area_hdr_t;
_Static_assert(sizeof(shmq_area_hdr_t) == SHMQ_AREA_HDR_SIZE, "area header size");
_Static_assert(offsetof(shmq_area_hdr_t, ring_head) % SHMQ_CURSOR_PAD == 0, "head alone");
_Static_assert(offsetof(shmq_area_hdr_t, ring_tail) % SHMQ_CURSOR_PAD == 0, "tail alone");

/* Process-local view of one mapped area. */
typedef struct {
    uint8_t *base;            /* NULL until mapped */
    uint64_t size;
    shmq_area_hdr_t *hdr;
    shmq_ring_t ring;
    uint8_t *desc;            /* n_desc x SHMQ_DESC_SIZE */
    uint8_t *meta;            /* arena metadata, 1 byte per unit */
    uint8_t *arena;
    uint32_t n_desc;
    uint32_t n_rings;         /* rings of this area (1, or the segment's area_rings for a grown area) */
    uint64_t arena_units;
    uint32_t arena_max_order;
    uint32_t desc_cursor;     /* allocation hint, process-local */
    int arena_corrupt;        /* process-local: garbage seen in the free lists during this operation */
    int arena_busy;           /* process-local guard of this area's arena_lock (lock.h) */
} shmq_area_t;

#define SHMQ_DLQ_NAME_MAX 208u

typedef struct {
    const char *path;        /* full path under /dev/shm */
    uint32_t kind;
    uint32_t flags;
    uint64_t capacity;       /* bytes of area 0 (growable: the first area's size) */
    uint64_t max_message;    /* 0 = default */
    uint64_t maxsize;
    uint32_t mode;
    uint32_t max_slots;      /* 0 = default */
    /* SHMQ_F_ACK only */
    uint64_t visibility_ns;
    uint64_t default_delay_ns;
    uint64_t default_ttl_ns;
    uint64_t dedup_window_ns;
    uint32_t max_deliveries;
    uint32_t dedup_slots;    /* 0 = default */
    const char *dead_letter; /* NULL or "" = none */
    /* SHMQ_KIND_TOPIC only (topic.h): capacity is the log region's bytes */
    uint64_t retention_ns;   /* 0 = keep what fits */
    /* SHMQ_KIND_PRIORITY only (prio.h) */
    uint32_t levels;         /* 1..64 */
    uint64_t max_wait_ns;    /* aging, 0 = strict priority */
    uint32_t area_rings;     /* rings per grown area (0 = 1; segment.h: shmq_area_ring) */
    const void *journal;     /* NULL, or the journal's options (journal.h shmq_journal_opts_t) */
} shmq_create_opts_t;

struct shmq_seg;

/* What a kind of queue registers with the layers below it (DESIGN §1: calls go downward only):
 * the participant table calls repair_owner when it finds a dead owner; close frees the kind's
 * per-handle state (kstate). Set once at open by kinds.c, before the handle attaches. */
typedef struct shmq_ops {
    const char *name;
    void (*repair_owner)(struct shmq_seg *seg, uint32_t dead); /* return what a dead owner held */
    void (*close)(struct shmq_seg *seg);                        /* free kstate; may be NULL */
    void (*after_fork)(struct shmq_seg *seg); /* forked child: void the parent threads' flags; may be NULL */
    void (*detach)(struct shmq_seg *seg);     /* an attached handle closes: give back what it holds; may be NULL */
} shmq_ops_t;

typedef struct shmq_seg {
    const shmq_ops_t *ops;    /* the kind's hooks (kinds.c); NULL for a bare segment */
    void *kstate;             /* the kind's per-handle state, owned by ops->close */
    int fd;                   /* private open file description: holds our slot's lock byte */
    uint8_t *map0;            /* header + slots (+ area 0 if it follows) */
    uint64_t map0_len;
    shmq_header_t *hdr;
    shmq_slot_t *slots;
    uint32_t max_slots;
    uint32_t max_areas;       /* open-time copy (validated <= SHMQ_MAX_AREAS): every area loop's bound */
    uint32_t area_rings;      /* open-time copy (validated <= SHMQ_MAX_AREA_RINGS; 0 read as 1) */
    uint32_t slot;            /* UINT32_MAX when not attached (inspector) */
    uint32_t owner;           /* shmq_owner_make(slot, gen) */
    shmq_area_t areas[SHMQ_MAX_AREAS];
    int err;                  /* errno of the last SHMQ_ESYS */
    int full_why;             /* process-local: why this handle's last put found no room (SHMQ_WHY_*, queue.h) */
    int map_busy;             /* process-local: serialises first mappings of an area between threads */
    int closing;              /* process-local: set by close so this handle's blocked waits return SHMQ_ECLOSED */
    int grow_busy;            /* process-local guard of grow_lock (lock.h) */
    int poll_signals;         /* set by a binding: blocking calls return SHMQ_EINTR after each slice asleep */
    uint64_t last_liveness_ns; /* process-local: last dead-participant sweep of this handle */
    uint64_t last_stale_ns;   /* process-local: last sweep for owners whose slot is FREE or reused */
    uint32_t watching[2];     /* process-local: watchers registered (shmq_watch_begin) per direction, undone at close */
    const struct shmq_ready_ops *ready; /* the kind's ready structure (prio.h); NULL = the areas' rings */
    void *ready_state;        /* its per-handle state, freed by the kind at close */
    struct shmq_journal *journal; /* process-local: appends go here (journal.h); NULL = no journal: one branch */
    struct shmq_journal *jstate;  /* process-local: the bound journal state, enabled or not (journal.h) */
    void *hist_blk;           /* process-local: this slot's latency block (hist.h), NULL if none or not attached */
} shmq_seg_t;

/* Create (exist_ok: open an existing one instead of failing with EEXIST in seg->err), with the
 * regions the kind asked for (built by their init before the file is linked into place). */
int shmq_seg_create(shmq_seg_t *seg, const shmq_create_opts_t *o, const shmq_region_req_t *regions, uint32_t n_regions,
                    int exist_ok, int *created);
/* The region of this kind in an opened segment (its size in *size), or NULL. */
uint8_t *shmq_seg_region(shmq_seg_t *seg, uint32_t kind, uint64_t *size);
/* Open an existing segment by path, or adopt an already open fd (fd >= 0, path may be NULL). */
int shmq_seg_open(shmq_seg_t *seg, const char *path, int fd);
/* Detach (slot freed, lock released) and unmap everything. Idempotent. */
void shmq_seg_close(shmq_seg_t *seg);
/* After fork in the child: forget the parent's slot and lock (the child must not release or
 * hold them), reopen a private open file description, and attach under a new slot. */
int shmq_seg_after_fork(shmq_seg_t *seg);
/* untrusted: full validation of the header and the mapped areas. */
int shmq_seg_validate(shmq_seg_t *seg);
/* Map area i if needed; validates it. NULL on failure (seg->err / rc in *rc). */
shmq_area_t *shmq_seg_area_map(shmq_seg_t *seg, uint32_t i, int *rc);
/* Inline fast path (an already mapped area, every put and get: 3-4 calls per message); the
 * out-of-line mapping path would otherwise make every call save and restore 5 registers. */
static inline shmq_area_t *shmq_seg_area(shmq_seg_t *seg, uint32_t i, int *rc)
{
    /* untrusted: index from a handle or cursor */
    if (SHMQ_LIKELY(i < seg->max_areas && seg->areas[i].base != NULL))
        return &seg->areas[i];
    return shmq_seg_area_map(seg, i, rc);
}
/* The same for loops over every area: NULL with *rc = SHMQ_ESEALED for a retired one (its
 * memory was given back; a mapping of it reads zeros). Hot paths use head/tail areas, which
 * are never retired, through shmq_seg_area. */
shmq_area_t *shmq_seg_area_live(shmq_seg_t *seg, uint32_t i, int *rc);
/* Append a new area able to hold a message of need bytes, after area `from` filled up.
 * Returns SHMQ_OK also if another process grew meanwhile; SHMQ_FULL if the grow lock stayed
 * held until lock_deadline_ns (absolute monotonic; SHMQ_NO_DEADLINE waits). */
int shmq_seg_grow(shmq_seg_t *seg, uint32_t from, uint64_t need, uint64_t lock_deadline_ns);
/* Area sizing rules (docs/guide/sizing.md). SHMQ_GEO_DEFAULT: a quarter of the area for ring
 * cells and descriptors (144 B per message slot), the rest arena. SHMQ_GEO_DENSE: seven eighths
 * for cells and descriptors; a growable queue appends a dense area when the one before ran out
 * of message slots with most of its arena unused (small messages), so 10^6 small messages cost
 * ~4x less memory. Area 0 is always DEFAULT. */
#define SHMQ_GEO_DEFAULT 0u
#define SHMQ_GEO_DENSE 1u
void shmq_area_geometry_ex(uint64_t size, uint32_t geo, uint32_t *cells_log2, uint32_t *n_desc, uint64_t *meta_off,
                           uint64_t *arena_off, uint64_t *arena_units);
void shmq_area_geometry(uint64_t size, uint32_t *cells_log2, uint32_t *n_desc, uint64_t *meta_off,
                        uint64_t *arena_off, uint64_t *arena_units);
/* Several rings per area (a growable priority queue: one per level, header's area_rings). Areas
 * 1.. of such a segment carry `rings` rings of 2^cells_log2 cells each: ring 0 is the area's own
 * (cursors in the area header), ring j >= 1 follows ring 0's cells as a 256-byte cursor block
 * (head, tail) and its cells; then the descriptors. Every message slot costs 128 + 16 * rings
 * bytes of the share. rings = 1 is shmq_area_geometry_ex. Area 0 always has one ring. */
void shmq_area_geometry_r(uint64_t size, uint32_t geo, uint32_t rings, uint32_t *cells_log2, uint32_t *n_desc,
                          uint64_t *meta_off, uint64_t *arena_off, uint64_t *arena_units);
/* Ring j of a mapped area (0 <= j < a->n_rings): 1 with *r filled, 0 if j is out of range. */
int shmq_area_ring(const shmq_area_t *a, uint32_t j, shmq_ring_t *r);
/* Largest payload an area of this size (and geometry) can hold in one arena block. */
uint64_t shmq_area_max_payload(uint64_t size);
uint64_t shmq_area_max_payload_ex(uint64_t size, uint32_t geo);
uint64_t shmq_area_max_payload_r(uint64_t size, uint32_t geo, uint32_t rings);

#endif
