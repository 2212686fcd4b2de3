/* dedup.h - the deduplication table of an at-least-once queue: dedup key -> message id.
 *
 * What it is: an open-addressing table (linear probing, a power-of-two size) in the segment
 * file between the participant table and area 0. A key is 128 bits (the binding hashes the
 * user's dedup_id with BLAKE2b; the dead-letter move hashes (source queue, message id) with
 * shmq_hash128). An entry is remembered for the queue's window from its first send, acked or
 * not. Expired and deleted entries are reused by inserts and dropped by compaction.
 *
 * Who may call what: any participant; every lookup/insert/finish holds dedup_lock (a robust
 * owner-stamped lock, lock.h): sends with a dedup id only, never the plain put/get path.
 *
 * Send with a key, step by step:
 *   1. begin: under the lock, a live entry for the key answers "duplicate" with its id; else
 *      an entry PENDING(us) is written with a freshly reserved message id      [mid_dedup]
 *   2. the put itself, with that id
 *   3. finish: PENDING -> COMMITTED (put done) or DELETED (put failed)
 * A second sender of the same key meeting PENDING(live owner) waits for it (bounded); meeting
 * PENDING(dead owner) it looks for a message with the entry's id in the queue: present (the
 * put got as far as READY) means COMMITTED, absent means the put never happened and the
 * entry is taken over. A message that leaves the queue (ack, plain get, dead-letter move, drop)
 * carries its key (after its meta block) and settles a PENDING entry for its id first, before
 * its descriptor is freed: so "absent" really means "never put", even when the sender died
 * after its put returned and the message was acked before anyone resolved the entry. So a
 * sender killed at any instant causes neither a loss nor a second copy. Remaining limit: an
 * acker killed between claiming the message and settling (a few instructions, mid_ack) while
 * the sender is dead before finishing too: repair frees the message unsettled, and a retry of
 * that key may enqueue a second copy (a duplicate after two deaths, never a loss). Known limit: a process killed while compacting (holding the lock) leaves the table
 * partly rebuilt; the next holder recounts it, and keys lost that way can be sent again once
 * (a duplicate only after a death, never a loss).
 */
#ifndef SHMQ_DEDUP_H
#define SHMQ_DEDUP_H

#include "lease.h"

#define SHMQ_DEDUP_EMPTY 0u
#define SHMQ_DEDUP_PENDING 1u
#define SHMQ_DEDUP_COMMITTED 2u
#define SHMQ_DEDUP_DELETED 3u
#define SHMQ_DEDUP_ENT_SIZE 48u
#define SHMQ_DEDUP_DEFAULT_SLOTS 16384u

typedef struct shmq_dedup_ent shmq_dedup_ent_t;
struct shmq_dedup_ent {
    uint64_t k0, k1;     /* the 128-bit key */
    uint64_t id;         /* the message id this key stands for */
    uint64_t expires_ns; /* monotonic: forgotten after this */
    uint32_t state;      /* EMPTY, PENDING, COMMITTED, DELETED; written last (release) */
    uint32_t owner;      /* PENDING: the sender's owner id */
    uint64_t _pad0;      /* 48 bytes: three entries never straddle more than two lines */
};
_Static_assert(sizeof(struct shmq_dedup_ent) == SHMQ_DEDUP_ENT_SIZE, "dedup entry layout");

/* SHMQ_OK: *dup = 1 and *id = the original id (nothing to send), or *dup = 0 and *id = the id
 * to send with, a PENDING entry of ours waiting for shmq_dedup_finish. SHMQ_FULL: the table
 * holds only live keys. SHMQ_TIMEOUT: another live sender of this key did not finish in time. */
int shmq_dedup_begin(shmq_seg_t *q, const uint8_t key[16], uint64_t deadline_ns, uint64_t *id, int *dup);
void shmq_dedup_finish(shmq_seg_t *q, const uint8_t key[16], int committed);
/* The message sent under key with this id is leaving the queue (ack, get, dead-letter, drop):
 * a PENDING entry for it becomes COMMITTED (its sender may have died before finishing). */
void shmq_dedup_settle(shmq_seg_t *q, const uint8_t key[16], uint64_t id);
/* The key's entry for id is no longer needed (forward.h: its source message was acked, so no
 * second send of it can come): deleted now instead of held for the window. */
void shmq_dedup_forget(shmq_seg_t *q, const uint8_t key[16], uint64_t id);
/* A 128-bit non-cryptographic hash (FNV-1a in two lanes, finalised): dead-letter keys. */
void shmq_hash128(const void *data, size_t len, uint8_t out[16]);

#endif
