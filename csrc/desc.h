/* desc.h - message descriptors: one 128-byte record per message in an area.
 *
 * Word (the only field others CAS): dgen:28 | state:4 | owner:32.
 *   FREE     -> WRITING(owner)   producer claims (CAS), bumps dgen
 *   WRITING  -> READY            producer, after the payload is written, before the ring publish
 *   READY    -> READING(owner)   consumer claims the handle it took from the ring (CAS, checks dgen)
 *   READING  -> FREE             consumer, after copying out; the chunk stays recorded ("parked",
 *                                arena.h): the next put that claims it reuses it, no arena lock
 *   RETURNING(owner)             no longer entered (before parking: a consumer that found the arena
 *                                lock held > 1 ms); still reclaimed by arena-lock holders and repair
 * At-least-once queues (SHMQ_F_ACK, lease.h) add:
 *   READY    -> INFLIGHT(g+1, owner) receive: the generation is bumped, so every delivery has
 *                                its own stamp; deadline_ns = lease end
 *   INFLIGHT -> READING(acker)   ack (then FREE as above); also READY(g) -> READING for an
 *                                expired lease requeued but not yet delivered again
 *   INFLIGHT/READY/DELAYED -> SETTLING(x)  someone (consumer, timer scan, repairer) holds it for
 *                                a moment to change it: requeue, delay, extend, expire
 *   SETTLING -> READY (published again) | DELAYED | INFLIGHT (extended) | MOVING
 *   MOVING(x)                    being copied to the dead-letter queue, then FREE
 *   WRITING  -> DELAYED          send with a delay: not published until deadline_ns
 * A handle = area:8 | index:24 | dgen:32 (28 used); a stale handle fails the dgen check.
 * Crash windows: a descriptor in WRITING or READING whose owner is dead is freed by repair
 * (the put had not returned / at-most-once: the dead consumer's message is the one lost).
 * Payload: inline if it fits, else one arena block (chunk, chunk_order). A FREE descriptor may
 * still record a block (parked, arena.h): chunk is meaningful in every state.
 * untrusted: size, chunk and chunk_order are checked against the area before every use.
 */
#ifndef SHMQ_DESC_H
#define SHMQ_DESC_H

#include "common.h"

#define SHMQ_D_FREE 0u
#define SHMQ_D_WRITING 1u
#define SHMQ_D_READY 2u
#define SHMQ_D_READING 3u
#define SHMQ_D_INFLIGHT 4u
#define SHMQ_D_DELAYED 5u
#define SHMQ_D_RETURNING 6u /* taken and consumed; its chunk is to be returned by any arena-lock holder */
#define SHMQ_D_SETTLING 7u  /* held for a moment by owner to change a delivery (lease.h) */
#define SHMQ_D_MOVING 8u    /* being moved to the dead-letter queue by owner (lease.h) */

/* flags byte: low nibble = why a message is being dead-lettered (set while SETTLING/MOVING) */
#define SHMQ_DL_MAX_DELIVERIES 1u
#define SHMQ_DL_EXPIRED 2u
#define SHMQ_DL_REJECTED 3u
#define SHMQ_DL_REASON_MASK 0x0fu
/* flags bit: the payload carries the 16-byte dedup key of its send after the meta block
 * (lease.c: whoever removes the message first settles the key's entry, dedup.h) */
#define SHMQ_DF_DEDUP 0x10u
/* flags bit: a member of a message group; its payload carries a group block after the dedup key
 * (group.h) */
#define SHMQ_DF_GROUP 0x20u

#define SHMQ_NO_CHUNK UINT32_MAX
#define SHMQ_DGEN_MASK ((1u << 28) - 1)

typedef struct {
    uint64_t word;          /* dgen:28 | state:4 | owner:32 */
    uint64_t id;            /* unique, increasing per queue */
    uint64_t timestamp_ns;  /* wall clock at put, to one kernel tick (coarse clock) */
    uint64_t deadline_ns;   /* monotonic: lease end (INFLIGHT) or due time (DELAYED); 0 otherwise */
    uint32_t size;          /* payload bytes */
    uint32_t chunk;         /* first arena unit, or SHMQ_NO_CHUNK when inline */
    uint8_t chunk_order;
    uint8_t kind;           /* payload kind tag of the Python layer */
    uint8_t priority;
    uint8_t flags;          /* SHMQ_DL_* reason while being dead-lettered */
    uint16_t delivery_count;/* deliveries made so far (at-least-once) */
    uint16_t hdr_size;      /* header block bytes after the ack meta block (at-least-once) */
    uint64_t expire_ns;     /* monotonic TTL deadline, 0 = none (at-least-once) */
    uint8_t inline_data[72];
} shmq_desc_t;
_Static_assert(sizeof(shmq_desc_t) == 128, "descriptor is two cache lines");
#define SHMQ_INLINE_MAX ((uint32_t)sizeof(((shmq_desc_t *)0)->inline_data))

/* At-least-once payloads start with this block, written by whoever owns the descriptor:
 * then hdr_size bytes of headers (lease.h: encoding), then the body. */
typedef struct {
    uint64_t first_delivery_ns; /* wall clock of the first delivery, 0 = never delivered */
    uint64_t last_delivery_ns;  /* wall clock of the latest delivery */
} shmq_ack_meta_t;
#define SHMQ_ACK_META ((uint32_t)sizeof(shmq_ack_meta_t))

static inline uint64_t shmq_desc_word(uint32_t dgen, uint32_t state, uint32_t owner)
{
    return ((uint64_t)(dgen & SHMQ_DGEN_MASK) << 36) | ((uint64_t)(state & 15u) << 32) | owner;
}
static inline uint32_t shmq_desc_dgen(uint64_t w) { return (uint32_t)(w >> 36) & SHMQ_DGEN_MASK; }
static inline uint32_t shmq_desc_state(uint64_t w) { return (uint32_t)(w >> 32) & 15u; }
static inline uint32_t shmq_desc_owner(uint64_t w) { return (uint32_t)w; }

static inline uint64_t shmq_handle_make(uint32_t area, uint32_t idx, uint32_t dgen)
{
    return ((uint64_t)area << 56) | ((uint64_t)(idx & 0xffffffu) << 32) | dgen;
}
static inline uint32_t shmq_handle_area(uint64_t h) { return (uint32_t)(h >> 56); }
static inline uint32_t shmq_handle_idx(uint64_t h) { return (uint32_t)(h >> 32) & 0xffffffu; }
static inline uint32_t shmq_handle_dgen(uint64_t h) { return (uint32_t)h; }

#endif
