/* queue_int.h - queue internals shared with lease.c and dedup.c (not part of the C API). */
#ifndef SHMQ_QUEUE_INT_H
#define SHMQ_QUEUE_INT_H

#include "desc.h"
#include "queue.h"

static inline shmq_desc_t *shmq_q_desc(shmq_area_t *a, uint32_t i) { return (shmq_desc_t *)(a->desc + (uint64_t)i * SHMQ_DESC_SIZE); }

static inline uint8_t *shmq_q_payload(shmq_area_t *a, shmq_desc_t *d)
{
    return d->chunk == SHMQ_NO_CHUNK ? d->inline_data : a->arena + (uint64_t)d->chunk * SHMQ_ARENA_UNIT;
}

/* The next live (mapped, not retired) area at index >= *i up to area_tail, *i set to its index;
 * NULL after the last. Every walk over the areas:
 *     shmq_area_t *a;
 *     for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) ... */
shmq_area_t *shmq_q_area_next(shmq_seg_t *q, uint32_t *i);

/* untrusted: the payload of a descriptor we own lies inside it or its arena block. */
int shmq_q_payload_valid(shmq_area_t *a, shmq_desc_t *d);
/* Units of area a held as parked chunks by FREE descriptors (arena.h); a scan, 0 at once for an
 * area that never parked one. For stats and the consistency walk. */
uint64_t shmq_q_parked_units(shmq_area_t *a);

/* What a kind layered over the queue adds to a put (lease.c: sends). */
typedef struct {
    uint64_t id;        /* 0: assign the next id; else this pre-reserved one (dedup) */
    uint64_t delay_ns;  /* > 0: DELAYED until now + delay_ns, not published (the kind's timers publish it) */
    uint64_t expire_ns; /* monotonic TTL deadline, 0 = none */
    uint32_t hdr_size;  /* recorded in the descriptor: header bytes the kind put in front of the body */
    uint32_t priority;
    uint32_t flags;     /* the descriptor's initial flags byte (the kind's) */
    uint64_t *handle_out; /* delayed puts: where to write the new message's handle, or NULL (group.h) */
    uint32_t delivery_count; /* journal recovery: deliveries the message had before (0 for a new put) */
} shmq_put_ext_t;

/* The hooks a kind layered over the queue registers (DESIGN §1): the queue calls them and knows
 * nothing else of the kind. A kind's ops start with these (ops is their first member), so
 * q->ops of any queue kind reads as shmq_queue_hooks_t. NULL hooks are skipped. */
typedef struct shmq_queue_hooks {
    shmq_ops_t ops;
    /* bytes before the body of this message: the kind's blocks and the header block (peek) */
    uint64_t (*body_skip)(const shmq_desc_t *d);
    int keep_orphans;   /* repair publishes a dead producer's unpublished READY message, never drops it */
    /* a plain put on this kind: the kind supplies its defaults and layout (returns put's codes) */
    int (*put)(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns, uint64_t *id_out);
    /* before a consumer looks for messages: the kind's timers and liveness */
    void (*before_take)(shmq_seg_t *q);
    /* a message was claimed (READING, or mode 1: INFLIGHT with a new generation) and m filled as a
     * plain queue sees it: adjust m (body past the kind's blocks, lease token); SHMQ_OK delivers,
     * SHMQ_EAGAIN means the kind disposed of it (TTL passed) and the consumer looks again */
    int (*taken)(shmq_seg_t *q, shmq_msg_t *m, int mode);
    /* the earliest monotonic time a sleeping consumer must look again (timers), or SHMQ_NO_DEADLINE */
    uint64_t (*wake_at)(shmq_seg_t *q);
    /* a deadline the kind must act on (a delayed or expiring put) */
    void (*timer)(shmq_seg_t *q, uint64_t t);
    /* repair: a dead owner's descriptor in a state the queue does not own (the kind's states) */
    void (*repair_desc)(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w);
    /* stats: the kind's figures (after the queue's) */
    void (*stats)(shmq_seg_t *q, shmq_stats_t *st);
} shmq_queue_hooks_t;

extern const shmq_queue_hooks_t shmq_q_no_hooks;
static inline const shmq_queue_hooks_t *shmq_q_hooks(const shmq_seg_t *q)
{
    return SHMQ_LIKELY(q->ops != NULL) ? (const shmq_queue_hooks_t *)q->ops : &shmq_q_no_hooks;
}

int shmq_q_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns,
               uint64_t *id_out, const shmq_put_ext_t *x);
/* Take the next ready message: mode 0 = READING (get), 1 = INFLIGHT with a new generation
 * (receive). Blocking like shmq_get_begin. */
int shmq_q_take(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns, int mode);
/* Publish a READY descriptor's handle without waiting: SHMQ_OK, SHMQ_FULL (ring full). */
int shmq_q_publish(shmq_seg_t *q, uint64_t handle);
/* Return a descriptor we own (its chunk, then FREE) and the maxsize unit; wakes putters. */
void shmq_q_release_owned(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d);
/* 1 if some descriptor that will be (or was) delivered carries message id. */
int shmq_q_id_present(shmq_seg_t *q, uint64_t id);
/* Return RETURNING chunks of every area whose arena lock is free now (no waiting). */
void shmq_q_reclaim_try(shmq_seg_t *q);
/* Per area, a bitmap of the descriptors a FULL ring cell references (for the generation it
 * names); NULL when out of memory. Free with shmq_q_free_maps. */
uint8_t **shmq_q_referenced_map(shmq_seg_t *q);
void shmq_q_free_maps(uint8_t **maps);
/* Make every sleeping consumer choose its wake-up time again (a timer moved earlier). */
void shmq_q_rewake_getters(shmq_seg_t *q);
/* The queue's own repair of a dead owner (kinds over the queue reuse it as their ops' repair). */
void shmq_q_repair_owner(shmq_seg_t *q, uint32_t dead);
/* Bind a kind's hooks (their ops first) to an opened segment. */
void shmq_q_bind_hooks(shmq_seg_t *q, const shmq_queue_hooks_t *hk);

/* A kind's ready structure (DESIGN §1: the queue calls it through seg->ready and knows nothing
 * else of it): where READY handles are published and taken from instead of the areas' rings.
 * The priority kind's is prio.c's (a ring per level); NULL keeps the areas' rings. Every other
 * part of the queue (descriptors, arena, repair, lease.c's leases and timers) is shared. */
typedef struct shmq_ready_ops {
    const char *name;
    /* publish a READY handle of this priority: SHMQ_OK, SHMQ_FULL (no cell now). A growable
     * queue may grow to make room (grow lock waited for until grow_deadline_ns, as shmq_seg_grow). */
    int (*publish)(shmq_seg_t *q, uint64_t handle, uint32_t priority, uint64_t grow_deadline_ns);
    /* 1 if a publish of this priority could land now */
    int (*room)(shmq_seg_t *q, uint32_t priority);
    /* take the next handle to deliver through take (ring.h's callback): SHMQ_OK, SHMQ_EMPTY */
    int (*take)(shmq_seg_t *q, shmq_take_fn take, void *ctx, uint64_t *handle);
    /* handles queued (approximate while others run) */
    uint64_t (*count)(shmq_seg_t *q);
    /* visit every queued handle (a snapshot; repair's referenced map) */
    void (*foreach)(shmq_seg_t *q, void (*visit)(void *ctx, uint64_t handle), void *ctx);
    /* the *n-th handle in delivery order (peek): as shmq_ring_nth */
    int (*nth)(shmq_seg_t *q, uint64_t *n, uint64_t *handle);
    /* after a dead participant's repair: rebuild what a death can leave stale (bitmap bits) */
    void (*repair)(shmq_seg_t *q);
} shmq_ready_ops_t;

#endif
