/* forward.h - one pipeline step: ack a received message and send a new one to another
 * at-least-once queue, crash-atomically in effect.
 *
 * Step by step (crash point names in brackets):
 *   1. hold the delivery: INFLIGHT(g) -> SETTLING(us), as nack claims it; a stale token is
 *      SHMQ_ESTALE and nothing is sent                                        [forward_after_hold]
 *   2. send the new message to dest with the dedup key hash("fwd", source name, message id),
 *      so a second send for the same received message returns the first one's id and
 *      enqueues nothing                                                       [forward_after_send]
 *   3. finish the hold as an ack (SETTLING -> READING -> FREE), then drop the key from dest's
 *      dedup table: once the source message is acked no second forward of it can come, so the
 *      table holds only the keys of forwards in progress or interrupted by a crash.
 * Who may call: any participant holding the delivery's token; dest may be the source itself.
 * Progress: that of a send with a dedup key (dedup lock, the put's waits up to deadline_ns);
 * while it waits the held delivery is nobody else's (its lease cannot expire under us).
 * A failed send (no room in time, ...) gives the delivery back as it was (still ours).
 * Crash windows: killed in 1-2: repair counts a failed delivery and the message comes back;
 * nothing was sent (neither). Killed in 2-3, or inside the send after its put: the new message
 * is in dest and the received one comes back; its next forward (the consumer's retry of that
 * delivery) finds the dedup key and sends nothing new, then acks: both, exactly once. Killed
 * in 3: READING(dead) is freed by repair: both. The guarantee lasts as long as dest remembers
 * an interrupted forward's key (its dedup window, from the first send): a redelivery later than
 * that would send a second copy.
 */
#ifndef SHMQ_FORWARD_H
#define SHMQ_FORWARD_H

#include "lease.h"

/* SHMQ_OK (*new_id: the new message's id; *dup = 1 when a previous forward of this message had
 * sent it), SHMQ_ESTALE (lease lost: nothing sent), SHMQ_EINVAL (not at-least-once queues, or
 * o->dedup_key set), and the send's errors (the delivery is then still held by the caller). */
int shmq_forward(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_seg_t *dest, const shmq_iov_t *iov, uint32_t n,
                 uint32_t kind, const shmq_send_opts_t *o, uint64_t deadline_ns, uint64_t *new_id, int *dup);
/* The dedup key a forward of message id from the queue called name uses. */
void shmq_forward_key(const char *name, uint64_t id, uint8_t key[16]);

#endif
