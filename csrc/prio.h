/* prio.h - priority levels: one MPMC handle ring per level plus a non-empty bitmap (DESIGN §4).
 *
 * The priority kind (SHMQ_KIND_PRIORITY) is a work queue (queue.c, or lease.c with SHMQ_F_ACK)
 * whose ready structure is this one instead of the area's ring: descriptors, arena, leases,
 * timers, dead letters, dedup are the queue's and lease.c's, unchanged. queue.c reaches us only
 * through the shmq_ready_ops_t the handle carries (seg->ready), so no call goes upward.
 *
 * Region SHMQ_REGION_PRIO (2), 64-byte aligned:
 *   0     shmq_prio_hdr_t: magic, levels, cells_log2, max_wait_ns      (written once, before link)
 *   128   {bits, seq}: the non-empty bitmap and its sequence            (16-byte CAS, own block)
 *   256   lhead[64]: growable queues, the area whose ring of level p consumers take from
 *   512   levels x {head block 128 B, tail block 128 B}               (area 0's level rings)
 *   ...   levels x 2^cells_log2 cells of 16 B                          (ring cells, ring.h)
 * Area 0's level rings have as many cells as area 0 has descriptors, so a fixed-capacity queue's
 * level never fills before the descriptors do.
 *
 * Growth (SHMQ_F_GROWABLE): every grown area carries a ring per level (the header's area_rings =
 * levels; segment.h shmq_area_ring). Level p is a chain of rings: ring p of areas lhead[p] ..
 * area_tail. Producers publish into the tail area's ring p (a full one grows the queue, as a
 * FIFO put whose ring is full); consumers take from area lhead[p]'s, and a drained ring below
 * the tail area is sealed and lhead[p] moved on (as a FIFO consumer moves area_head). area_head
 * follows the lowest lhead (heads_advance seals the empty rings of idle levels too), so
 * segment.c's retire_drained gives the memory of drained areas back as for a FIFO queue.
 *
 * Bitmap rule (so a get never skips a level holding a message whose put returned): seq's bit 0
 * is CLEARING, the rest a sequence every change of the pair bumps.
 *   put:  publish into its ring (ring.h), then read seq, then bits: if the bit is set and no
 *         clear is announced, nothing is written (the common case); else CAS16 {bits | 1<<p,
 *         seq + 2} (under CLEARING this bump makes the clear's last CAS fail). Returns after.
 *   get:  p = highest bit; take from level p. Found empty: CAS16 {bits, seq} -> {bits,
 *         (seq|CLEARING)+2} (announce), look at the level (empty?), then CAS16 {bits & ~(1<<p),
 *         that seq + 1} (clears CLEARING too). It fails if any put saw CLEARING and bumped.
 *   Why: a put that read seq before the announce published before it, so the look sees its
 *   message; a put that read it after sees CLEARING and bumps, so the clear fails.
 * A consumer that finds no bit set scans the levels for a dead producer's message (bits_rescue)
 * at most once per ~1 ms per handle (a spinning consumer would otherwise read every level's
 * cursors on each poll); the dead producer's repair scans at once.
 * Aging (max_wait_ns > 0): before taking, the head message of each non-empty level is looked at;
 * the oldest one ready (by its put's wall-clock timestamp) for longer than max_wait is served first.
 *
 * Who may call what concurrently: any number of producers and consumers in any processes.
 * Progress: lock-free (the rings' CASes and the bitmap's CAS16; no lock anywhere).
 * Crash windows (crash point names in brackets):
 *   - a producer killed between its ring publish and the bitmap CAS [prio_before_bit]: the
 *     message is queued but its bit may be clear. Its put never returned, so no ordering promise
 *     covers it; a consumer that finds the bitmap empty scans the levels and sets the bits of
 *     non-empty ones, and the dead producer's repair (shmq_prio_repair) does the same.
 *   - a consumer killed between its announce and its clearing CAS [prio_mid_clear]: the bit
 *     stays set and CLEARING too; puts take the CAS path until the next clear (or withdraw)
 *     resets it; the next consumer that finds the level empty clears the bit.
 *   - growable, a consumer killed between sealing a drained ring and moving lhead[p] on
 *     [prio_after_seal]: the next consumer finds the ring SEALED and moves lhead[p] itself;
 *     killed before moving area_head [prio_before_head]: the next seal or the dead consumer's
 *     repair (shmq_prio_repair -> heads_advance) moves it.
 *   - inside a ring: ring.h's windows (after_claim, before_commit, mid_get), repaired as there.
 * untrusted: every field of the region is checked at open (shmq_prio_valid) and at use (levels
 * mask, descriptor priority clamped, lhead clamped to area_tail, handles checked by the
 * queue's take callback; every loop over levels, areas and cells is bounded).
 */
#ifndef SHMQ_PRIO_H
#define SHMQ_PRIO_H

#include "queue.h"
#include "queue_int.h"
#include "segment.h"

#define SHMQ_REGION_PRIO 2u
#define SHMQ_PRIO_MAX_LEVELS 64u
#define SHMQ_PRIO_MAGIC 0x32697250514d4853ULL /* "SHMQPri2" (2: the level-head block of growth) */

typedef struct {
    uint64_t magic;
    uint32_t levels;      /* 1..64 */
    uint32_t cells_log2;  /* cells per level ring = 2^cells_log2 */
    uint64_t max_wait_ns; /* aging: 0 = strict priority */
    uint8_t _pad0[128 - 24]; /* read-mostly block apart from the bitmap every put writes */
    uint64_t bits;        /* bit p: level p may hold a message (CAS16 with seq) */
    uint64_t seq;         /* bumped by every publish: a clear fails if anyone published since its look */
    uint8_t _pad1[128 - 16]; /* the bitmap alone on its block (producers and consumers write it) */
    uint32_t lhead[SHMQ_PRIO_MAX_LEVELS]; /* growable: the area whose ring of level p consumers take from */
} shmq_prio_hdr_t;
_Static_assert(sizeof(shmq_prio_hdr_t) == 512, "priority header");
_Static_assert(offsetof(shmq_prio_hdr_t, bits) % 16 == 0, "bits+seq are one 16-byte CAS");

/* Region size for these options (levels in 1..64); 0 if they are invalid. */
uint64_t shmq_prio_region_size(uint32_t levels, uint32_t cells_log2);
/* The region request of a creation (kinds.c): SHMQ_OK, SHMQ_EINVAL (levels out of range, or a
 * growable queue whose area_rings is not its levels). */
int shmq_prio_region(const shmq_create_opts_t *o, shmq_region_req_t *req);
/* untrusted: the region is well formed (magic, levels, sizes, ring cursors). */
int shmq_prio_valid(shmq_seg_t *q);
/* Bind the ready structure to an opened priority segment (seg->ready, seg->ready_state). */
int shmq_prio_bind(shmq_seg_t *q);
/* Free the per-handle state (kinds.c: at close). */
void shmq_prio_unbind(shmq_seg_t *q);
/* A put at a priority (the binding's PriorityQueue.put): SHMQ_EINVAL for priority >= levels,
 * else shmq_put's codes. */
int shmq_put_prio(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint32_t priority,
                  uint64_t deadline_ns, uint64_t *id_out);
/* Levels of this handle's queue (0 when it is not a priority queue). */
uint32_t shmq_prio_levels(shmq_seg_t *q);
/* Ready messages per level (counts[0..levels-1]; approximate while others run): returns levels. */
uint32_t shmq_prio_counts(shmq_seg_t *q, uint64_t *counts, uint32_t cap);
/* max_wait in ns (0 = strict). */
uint64_t shmq_prio_max_wait_ns(shmq_seg_t *q);

#endif
