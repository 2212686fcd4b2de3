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

/* What an at-least-once send adds to a put. */
typedef struct {
    uint64_t id;        /* 0: assign the next id; else this pre-reserved one (dedup) */
    uint64_t delay_ns;  /* > 0: DELAYED until now + delay_ns, not published */
    uint64_t expire_ns; /* monotonic TTL deadline, 0 = none */
    const void *hdr;    /* header block written after the meta block */
    uint32_t hdr_size;
    uint32_t priority;
} shmq_put_ext_t;

int shmq_q_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns,
               uint64_t *id_out, const shmq_put_ext_t *x);
/* Take the next ready message: mode 0 = READING (get), 1 = INFLIGHT with a new generation
 * (receive). Blocking like shmq_get_begin. */
int shmq_q_take(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns, int mode);
/* Publish a READY descriptor's handle without waiting: SHMQ_OK, SHMQ_FULL (ring full). */
int shmq_q_publish(shmq_seg_t *q, uint64_t handle);
/* Return a descriptor we own (its chunk, then FREE) and the maxsize unit; wakes putters. */
void shmq_q_release_owned(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d);
void shmq_q_wake_getters(shmq_seg_t *q);
/* 1 if some descriptor that will be (or was) delivered carries message id. */
int shmq_q_id_present(shmq_seg_t *q, uint64_t id);
/* Lower the timer hint to t (CAS-min); wakes sleepers when it moved earlier. */
void shmq_q_timer_hint(shmq_seg_t *q, uint64_t t);

/* At most one timer scan per this interval; sleepers never wake for timers sooner than it. */
#define SHMQ_TIMER_GAP_NS (1000ull * 1000)

/* lease.c hooks called by the queue */
/* A taken message (mode 1 claimed INFLIGHT, mode 0 READING) whose TTL passed: dead-letter or drop. */
void shmq_lease_expire_taken(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w);
/* Repair: handle a dead owner's at-least-once states (INFLIGHT, SETTLING, MOVING). */
void shmq_lease_repair_desc(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, uint64_t w);
/* Run due timers if the hint says some are due (cheap check first). */
void shmq_lease_timers_maybe(shmq_seg_t *q, uint64_t now);

#endif
