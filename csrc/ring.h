/* ring.h - bounded MPMC ring of 8-byte message handles (Vyukov's ring, adapted for crashes).
 *
 * Layout: 2^k cells of 16 bytes {word, handle}; head and tail are u64 positions, each on its
 * own 128-byte block (written by consumers resp. producers only). A cell word is
 *     lap:32 | state:2 | 0:30        state: EMPTY, FULL, SEALED
 * where lap = position >> k. Cell "ready for the producer of lap L" is EMPTY(L); "holds the
 * message of lap L" is FULL(L); a consumer that takes it writes EMPTY(L+1).
 *
 * Who may call what concurrently: any number of producers (shmq_ring_put_mpmc) and consumers
 * (shmq_ring_get_mpmc, shmq_ring_seal_mpmc) in any processes.
 *
 * Progress: lock-free. A producer publishes with ONE 16-byte CAS that writes the FULL word and
 * the handle together (cmpxchg16b). There is no "claimed but not yet published" state, so a
 * producer that dies or is SIGSTOPped at any instant leaves no hole: consumers never wait on
 * a producer. (DESIGN §4 suggests stamped claims + skip records; the single wide CAS removes
 * the hole instead of repairing it, see docs/internals/ring.md.) Head and tail are advanced
 * with helping CASes: whoever sees the cell at tail FULL (or head consumed) moves the index,
 * so a process that dies between its cell CAS and its index CAS blocks nobody.
 *
 * Consumers take a message in two steps: claim the descriptor the handle names (a CAS on the
 * descriptor word, done by the caller through the take callback) and then advance the cell.
 * A consumer killed between the two leaves the cell FULL with its descriptor already claimed:
 * the next consumer's claim fails, it advances the cell for the dead one and moves on; the
 * descriptor carries the dead owner's stamp and is freed by repair.
 *
 * Crash windows: after the 16-byte CAS the message is in the queue (put returned or not);
 * before it, nothing in the ring changed. Laps are compared by 32-bit difference and CASes
 * compare the handle too (both publish and advance are 16-byte CASes), so a process stalled
 * for 2^32 laps cannot act on a cell that came back with the same word: the handle differs
 * (it carries the descriptor generation). Index helping CASes are plain 64-bit positions.
 */
#ifndef SHMQ_RING_H
#define SHMQ_RING_H

#include "common.h"

#define SHMQ_CELL_EMPTY 0u
#define SHMQ_CELL_FULL 2u
#define SHMQ_CELL_SEALED 3u

typedef struct {
    uint64_t word;   /* lap:32 | state:2 | 0:30 */
    uint64_t handle; /* valid while word is FULL(lap) */
} __attribute__((aligned(16))) shmq_cell_t;
_Static_assert(sizeof(shmq_cell_t) == 16, "cell must be 16 bytes for cmpxchg16b");

typedef struct {
    uint64_t *head;      /* consumers' position */
    uint64_t *tail;      /* producers' position */
    shmq_cell_t *cells;
    uint32_t log2;
    uint64_t mask;
} shmq_ring_t;

static inline uint64_t shmq_cell_word(uint32_t lap, uint32_t state) { return ((uint64_t)lap << 32) | ((uint64_t)state << 30); }
static inline uint32_t shmq_cell_lap(uint64_t w) { return (uint32_t)(w >> 32); }
static inline uint32_t shmq_cell_state(uint64_t w) { return (uint32_t)((w >> 30) & 3u); }

/* Take callback: try to claim the descriptor a handle names. Returns SHMQ_OK if the caller now
 * owns it, anything else if it is not ours to take (another consumer has it, or the handle is
 * garbage): the ring then advances past the cell anyway. */
typedef int (*shmq_take_fn)(void *ctx, uint64_t handle);

void shmq_ring_init(shmq_ring_t *r);  /* cells EMPTY(0), head = tail = 0; single caller, before publication */
/* SHMQ_OK, SHMQ_FULL (no free cell now), SHMQ_ESEALED (no put may ever land here again). */
int shmq_ring_put_mpmc(shmq_ring_t *r, uint64_t handle);
/* SHMQ_OK with *handle taken through take(), SHMQ_EMPTY, SHMQ_ESEALED (sealed and drained). */
int shmq_ring_get_mpmc(shmq_ring_t *r, shmq_take_fn take, void *ctx, uint64_t *handle);
/* Seal an empty ring so no producer can publish into it any more. SHMQ_OK (sealed, also if it
 * already was), SHMQ_EAGAIN (not empty: drain first). */
int shmq_ring_seal_mpmc(shmq_ring_t *r);
/* 1 if a put could land now: the cell at tail is EMPTY (a consumer freed it), else 0. */
int shmq_ring_room(const shmq_ring_t *r);
/* Call visit(ctx, handle) for every cell holding a message (FULL), in cell order: a snapshot
 * while others run (a cell may be taken or filled meanwhile). Bounded by the ring's size. */
void shmq_ring_foreach(const shmq_ring_t *r, void (*visit)(void *ctx, uint64_t handle), void *ctx);
/* The *n-th message queued from head (0 = the next one delivered): SHMQ_OK with *handle;
 * SHMQ_EMPTY past the last (then *n has been reduced by the messages seen, so a caller can go on
 * in the next ring); SHMQ_EAGAIN if a cell changed while it was read (call again). */
int shmq_ring_nth(const shmq_ring_t *r, uint64_t *n, uint64_t *handle);
/* Messages published and not yet taken (approximate while others run). */
uint64_t shmq_ring_count(const shmq_ring_t *r);
/* untrusted: check that the cursors of a mapped ring are plausible (tail - head <= size). */
int shmq_ring_valid(const shmq_ring_t *r);

#endif
