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

#define SHMQ_USE_DEFAULT UINT64_MAX
#define SHMQ_HDR_MAX 65535u

typedef struct {
    uint64_t delay_ns;          /* SHMQ_USE_DEFAULT: the queue's default */
    uint64_t ttl_ns;            /* SHMQ_USE_DEFAULT: the queue's default; 0 = none */
    const void *hdr;            /* header block, hdr_size bytes */
    uint32_t hdr_size;
    uint32_t priority;
    const uint8_t *dedup_key;   /* 16 bytes, or NULL */
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
int shmq_nack(shmq_seg_t *q, uint64_t token, uint64_t id, int requeue, uint64_t delay_ns);
int shmq_extend(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t ns);
/* The attached dead-letter queue and this queue's name (for its headers); dlq may be NULL. */
void shmq_ack_set_dlq(shmq_seg_t *q, shmq_seg_t *dlq, const char *name);
/* Run the timer scan now (whatever the hint says); returns the descriptors it changed. */
int shmq_timers_run(shmq_seg_t *q);

#endif
