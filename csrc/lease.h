/* lease.h - at-least-once delivery on a queue created with SHMQ_F_ACK: send, receive with a
 * lease, ack / nack / extend, redelivery, delays, TTLs, dead letters, deduplication.
 *
 * Everything is a state change of the message's descriptor (desc.h), never a copy, except the
 * move to the dead-letter queue (another segment). A delivery's stamp is the descriptor
 * generation: receive bumps it (READY(g) -> INFLIGHT(g+1)), so the token (area, index, g+1)
 * and the message id name exactly one delivery. ack/nack/extend succeed iff the descriptor
 * still carries that stamp: INFLIGHT(g+1), or READY(g+1) when the lease expired and the
 * message was put back but not yet delivered again (expiry is applied lazily). After the next
 * delivery the stamp is g+2 and the old token gets SHMQ_ESTALE, changing nothing.
 *
 * Who may call what concurrently: anyone, any thread; a settle (ack, nack, extend, timer scan,
 * repair) first claims the descriptor by one CAS (-> READING or SETTLING(us)), so two parties
 * never settle the same delivery. Progress: lock-free except the arena lock on frees of
 * chunked payloads, the dedup lock (sends with a dedup key) and the dead-letter queue's put.
 *
 * Timers (lease ends, delays, TTLs) live in the descriptors; the header keeps a lower bound of
 * the earliest one (timer_hint_ns). When it passes, one participant (a try-lock; a dead
 * holder's is taken over) scans the descriptors: O(descriptors) per scan, at most one scan per
 * millisecond, and none while nothing is due. Consumers run it when they look for messages,
 * and sleeping consumers wake for the hint.
 *
 * Payload of an at-least-once message: shmq_ack_meta_t (first/last delivery time), then the
 * header block, then the body. Header block: entries of
 *     u16 key_len | u8 type (0 = UTF-8 str, 1 = bytes) | u8 0 | u32 value_len | key | value
 * (little-endian, unpadded); the dead-letter move appends its x-dead-letter-* entries.
 *
 * Crash windows (a process killed at the named point; who finishes the job):
 *   after_lease  INFLIGHT(dead): repair puts it back (a failed delivery) or dead-letters it
 *   mid_ack      READING(dead): repair frees it (the ack had not returned; the result is the same)
 *   mid_nack, mid_expire  SETTLING(dead): repair counts a failed delivery: back, or DLQ
 *   before_move, mid_move MOVING(dead): repair sends the copy again; the dead-letter queue's
 *                dedup on (source, id) makes the second copy a no-op, then repair frees it.
 *   requeue between READY and the ring publish: repair publishes the orphan (queue.c)
 *   mid_dedup    dedup.h
 * Never lost: a message leaves only by an ack, a dead-letter move that completed, or (queues
 * without a dead-letter queue) a TTL/rejection drop that is counted.
 */
#ifndef SHMQ_LEASE_H
#define SHMQ_LEASE_H

#include "queue.h"

/* The at-least-once region (SHMQ_REGION_ACK): this block, then the dedup table (dedup.h) at
 * offset SHMQ_ACK_BLOCK, dedup_slots entries. Validated by shmq_ack_valid before any use. */
typedef struct {
    /* --- options: written once before the file is linked into place --- */
    uint64_t visibility_ns;     /* lease length given by receive */
    uint64_t default_delay_ns;  /* send without delay= */
    uint64_t default_ttl_ns;    /* send without ttl= (0 = none) */
    uint64_t dedup_window_ns;   /* how long a dedup_id is remembered from its first send */
    uint64_t _pad_opt;
    uint32_t dedup_slots;       /* table entries, a power of two */
    uint32_t max_deliveries;    /* a message is delivered at most this often, then dead-lettered */
    char dead_letter[SHMQ_DLQ_NAME_MAX]; /* dead-letter queue name; "" = none (this is a DLQ) */
    /* --- timer scan (lease ends, delays, TTLs): rare writers --- */
    uint64_t timer_hint_ns;     /* no deadline earlier than this is pending (monotonic; a lower bound) */
    uint32_t timer_lock;        /* owner-stamped lock: one scanner at a time (nothing to rebuild) */
    uint32_t _pad0;
    uint64_t timer_lock_ns;     /* monotonic time the scan lock was taken: a holder past the bound is bypassed */
    uint8_t _pad1[128 - 24];
    /* --- dedup table lock (dedup.h) --- */
    uint32_t dedup_lock;
    uint32_t dedup_used;        /* entries not EMPTY (guarded by dedup_lock) */
    uint8_t _pad2[128 - 8];
    /* --- counters (shared atomics: settle paths only, never the put/get hot path) --- */
    uint64_t acked;
    uint64_t redelivered;       /* failed deliveries put back (lease expiry, nack, consumer death) */
    uint64_t dead_lettered;     /* moved to the dead-letter queue (or dropped by a queue without one) */
    uint64_t expired;           /* TTL expiries (also counted in dead_lettered when moved) */
    uint64_t dead_letter_failed;/* moves refused by a full dead-letter queue (retried later) */
    uint64_t dedup_hits;        /* sends answered with the original id */
    uint8_t _pad3[128 - 48];
} shmq_ack_hdr_t;
_Static_assert(sizeof(shmq_ack_hdr_t) == 640, "ack block layout");
_Static_assert(offsetof(shmq_ack_hdr_t, timer_hint_ns) == 256, "timer block");
#define SHMQ_ACK_BLOCK ((uint64_t)sizeof(shmq_ack_hdr_t))

struct shmq_dedup_ent;
struct shmq_group;

/* Per-handle state of an at-least-once queue (the segment handle's kstate). */
typedef struct {
    shmq_ack_hdr_t *blk;          /* the region's block, in the mapping */
    struct shmq_dedup_ent *dedup; /* dedup table, in the mapping */
    uint32_t dedup_slots;         /* process-local copies of validated options */
    uint32_t max_deliveries;
    uint64_t visibility_ns;
    struct shmq_seg *dlq;         /* attached dead-letter queue, or NULL (shmq_ack_set_dlq) */
    int timer_busy;               /* process-local guard of timer_lock (lock.h) */
    int dedup_busy;               /* process-local guard of dedup_lock (lock.h) */
    char name[SHMQ_DLQ_NAME_MAX]; /* this queue's name, for dead-letter headers */
    struct shmq_group *grp;       /* the message-group table (group.h), NULL without one */
} shmq_ack_t;

/* The state of an at-least-once handle, NULL for any other kind. */
shmq_ack_t *shmq_ack_of(shmq_seg_t *q);
/* kinds.c: the region a create asks for; bind an opened segment (validates the region). */
int shmq_ack_region(const shmq_create_opts_t *o, shmq_region_req_t *req); /* SHMQ_EINVAL: bad options */
int shmq_ack_bind(shmq_seg_t *q);
/* untrusted: check the region's block and table against the header. */
int shmq_ack_valid(shmq_seg_t *q);

#define SHMQ_USE_DEFAULT UINT64_MAX
#define SHMQ_HDR_MAX 65535u

typedef struct {
    uint64_t delay_ns;          /* SHMQ_USE_DEFAULT: the queue's default */
    uint64_t ttl_ns;            /* SHMQ_USE_DEFAULT: the queue's default; 0 = none */
    const void *hdr;            /* header block, hdr_size bytes */
    uint32_t hdr_size;
    uint32_t priority;
    const uint8_t *dedup_key;   /* 16 bytes, or NULL */
    const uint8_t *group;       /* message group key (group.h), or NULL */
    uint32_t group_len;         /* <= SHMQ_GROUP_KEY_MAX bytes */
    uint32_t group_type;        /* 0 = str (UTF-8), 1 = bytes */
} shmq_send_opts_t;

/* SHMQ_OK (*dup = 1: a duplicate, *id = the original's id), put's errors, SHMQ_EINVAL (not an
 * at-least-once queue, header block too large), SHMQ_EDEDUPFULL, SHMQ_TIMEOUT (dedup wait). */
int shmq_send(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, const shmq_send_opts_t *o,
              uint64_t deadline_ns, uint64_t *id, int *dup);
/* Take a message under a lease: m->handle is the token. Then copy out and call
 * shmq_receive_end: SHMQ_OK if the delivery was still ours during the copy, SHMQ_ESTALE if it
 * was lost meanwhile (a lease shorter than the copy): discard the copy and receive again. */
int shmq_receive_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns);
int shmq_receive_end(shmq_seg_t *q, shmq_msg_t *m);
/* SHMQ_OK, SHMQ_ESTALE, SHMQ_TIMEOUT (another party held the delivery for 100 ms: stopped?). */
int shmq_ack(shmq_seg_t *q, uint64_t token, uint64_t id);
/* Zero-copy receive (views pin the payload): ack now (counted, never delivered again) but keep
 * the storage, READING(us), until shmq_ack_release; a holder that dies leaves READING(dead),
 * which repair frees (the mid_ack window). release ignores a token that is no longer ours. */
int shmq_ack_keep(shmq_seg_t *q, uint64_t token, uint64_t id);
void shmq_ack_release(shmq_seg_t *q, uint64_t token);
int shmq_nack(shmq_seg_t *q, uint64_t token, uint64_t id, int requeue, uint64_t delay_ns);
int shmq_extend(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t ns);
/* The attached dead-letter queue and this queue's name (for its headers); dlq may be NULL. */
void shmq_ack_set_dlq(shmq_seg_t *q, shmq_seg_t *dlq, const char *name);
/* Run the timer scan now (whatever the hint says); returns the descriptors it changed. */
int shmq_timers_run(shmq_seg_t *q);

/* Forward (forward.h) holds a delivery while it sends: claim it (SETTLING, *held = the word it
 * replaced; SHMQ_ESTALE as ack), give it back as it was, or finish it as an ack. */
int shmq_ack_hold(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t *held);
void shmq_ack_unhold(shmq_seg_t *q, uint64_t token, uint64_t held);
void shmq_ack_held_finish(shmq_seg_t *q, uint64_t token);

/* Where a sent message is now, for a sender that waits on its outcome (request-reply). */
#define SHMQ_PROBE_GONE 0u     /* settled (acked, dead-lettered, expired) or never here */
#define SHMQ_PROBE_READY 1u    /* waiting for a consumer */
#define SHMQ_PROBE_DELAYED 2u
#define SHMQ_PROBE_INFLIGHT 3u /* delivered under a lease: see owner_alive */
#define SHMQ_PROBE_BUSY 4u     /* being settled or moved right now: look again */
typedef struct {
    uint32_t state;
    uint32_t owner_alive;      /* INFLIGHT: the lease holder's slot is alive */
    uint32_t delivery_count;
} shmq_probe_t;
/* The token of the descriptor holding message id (a walk of the descriptors: once per message
 * a sender looks after); SHMQ_ESTALE if none holds it. */
int shmq_ack_find(shmq_seg_t *q, uint64_t id, uint64_t *token);
/* O(1): the state of message id, held by the descriptor token names (from shmq_ack_find). */
int shmq_ack_probe(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_probe_t *p);

#endif
