/* inspect.h - looking at a queue without being part of its traffic: stats, peek, purge and
 * the consistency walk (inspect.c, over queue.c's descriptors and rings).
 *
 * Contract: any process with an open handle may call these concurrently with producers and
 * consumers. stats and peek take no lock and change nothing but RETURNING chunks an attached
 * handle may reclaim (stats); peek copies a message and re-checks its descriptor's generation
 * afterwards, so a message taken meanwhile is never half-reported; purge is a loop of gets;
 * check is meant for a quiescent queue (tests, `shmq stat --check`). Crash windows: none of their
 * own (a process killed in purge is a consumer killed in get: at-most-once).
 * untrusted: every handle and descriptor is checked as a consumer checks them.
 */
#ifndef SHMQ_INSPECT_H
#define SHMQ_INSPECT_H

#include "segment.h"

typedef struct {
    uint64_t depth;
    uint64_t bytes_used;
    uint64_t capacity;
    uint64_t file_size;
    uint64_t max_message;
    uint64_t maxsize;
    uint64_t enqueued;
    uint64_t dequeued;
    uint64_t repairs;
    uint64_t corrupt_skipped;
    uint64_t last_repair_ns;
    uint64_t unfinished;
    int64_t creator_pid;
    uint64_t created_at_ns;
    uint32_t attached;
    uint32_t producers;
    uint32_t consumers;
    uint32_t areas;
    uint32_t flags;
    uint32_t kind;
    uint32_t mode;
    uint32_t max_slots;
    /* at-least-once queues (zero otherwise) */
    uint64_t in_flight;
    uint64_t delayed;
    uint64_t oldest_ready_ns; /* wall clock of the oldest ready message, 0 = none */
    uint64_t acked;
    uint64_t redelivered;
    uint64_t dead_lettered;
    uint64_t expired;
    uint64_t dead_letter_failed;
    uint64_t dedup_hits;
    uint64_t visibility_ns;
    uint64_t default_delay_ns;
    uint64_t default_ttl_ns;
    uint64_t dedup_window_ns;
    uint32_t max_deliveries;
    uint32_t dedup_slots;
    char dead_letter[208];
} shmq_stats_t;

typedef struct {
    uint64_t free_desc;
    uint64_t ready_desc;
    uint64_t owned_desc;    /* WRITING/READING (in someone's hands) */
    uint64_t dead_owned;    /* ... of which the owner is dead (repair pending) */
    uint64_t orphan_ready;  /* READY but referenced by no ring cell */
    uint64_t bad_chunks;    /* descriptor chunk references outside the arena */
    uint64_t arena_mismatch;/* areas whose free + referenced units != arena size */
    uint64_t bad_areas;     /* areas that fail validation */
    uint64_t queued;        /* ring count over all areas */
    uint64_t parked_chunks; /* FREE descriptors keeping a chunk for reuse (arena.h): counted as referenced */
} shmq_check_t;

/* Bind the plain queue's hooks (repair) to an opened segment (kinds.c). */
void shmq_queue_bind(shmq_seg_t *q);

void shmq_stats(shmq_seg_t *q, shmq_stats_t *st);
typedef struct {
    uint64_t id;
    uint64_t timestamp_ns;
    uint64_t size;      /* full payload size */
    uint64_t copied;    /* bytes copied into the caller's buffer (a prefix when it is smaller) */
    uint32_t kind;
    uint32_t delivery_count;
    uint32_t state;     /* SHMQ_D_READY, SHMQ_D_INFLIGHT, SHMQ_D_DELAYED... (desc.h) */
    uint32_t hdr_size;  /* header block bytes (at-least-once); copied first with SHMQ_PEEK_HEADERS */
    uint32_t priority;  /* the message's priority (a priority queue's level) */
} shmq_peek_t;

/* shmq_peek_ex flag: copy the header block (out->hdr_size bytes), then the body, into buf. */
#define SHMQ_PEEK_HEADERS 1u

/* Copy the n-th queued message (0 = next to be delivered) without taking it. Re-checks the
 * descriptor's generation after the copy, so a message taken meanwhile is never half-reported.
 * SHMQ_OK, SHMQ_EMPTY (fewer than n+1 messages), SHMQ_EAGAIN (the queue moved: call again). */
int shmq_peek(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap);
int shmq_peek_ex(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags);
/* The messages no ring holds (at-least-once: in flight or delayed), found by walking the
 * descriptors: the first one at position >= *pos (area << 32 | index) in state INFLIGHT,
 * SETTLING (counted as in flight) or DELAYED, copied as shmq_peek_ex copies; *pos is set past it.
 * SHMQ_OK, SHMQ_EMPTY (no more), SHMQ_EAGAIN (it changed while we copied: call again). */
int shmq_peek_held(shmq_seg_t *q, uint64_t *pos, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags);
/* Take and discard every message queued now; returns how many. */
uint64_t shmq_purge(shmq_seg_t *q);
/* Discard what shmq_purge leaves of an at-least-once queue: the in-flight and delayed messages
 * (their leases end: a later ack or nack of one is SHMQ_ESTALE); returns how many. A message
 * someone is settling at that moment (SETTLING, MOVING) is left alone. 0 on other queues. */
uint64_t shmq_purge_held(shmq_seg_t *q);
/* Consistency walk (quiescent queue): counts of what is where; see shmq_check_t. */
void shmq_check(shmq_seg_t *q, shmq_check_t *out);

#endif
