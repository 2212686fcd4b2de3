/* arena.h - payload arena of one area: a buddy allocator over 64-byte units.
 *
 * Blocks are 2^order units, aligned to their size. Metadata: one byte per unit, set on a
 * block's first unit only: FREE|order or USED|order. Free blocks of each order form a
 * doubly linked list through their first 8 bytes {next, prev} (unit numbers).
 *
 * Who may call: any participant, always under the area's arena lock (lock.h); the lock is
 * held for O(log n) list operations, never across a payload copy.
 *
 * The invariant at every lock release: each block is free (in its list) or recorded in a
 * descriptor (shmq_desc_t.chunk/chunk_order), in any state, FREE included. alloc writes the
 * block into the descriptor and free clears the descriptor's reference inside the same critical
 * section, so a crash right after either leaves nothing unaccounted for.
 *
 * Parked chunks (the hot path off this lock, docs/internals/arena.md): a descriptor that goes
 * back to FREE keeps its chunk. The next put that claims it (a CAS on the descriptor word, no
 * lock) reuses the chunk when its order is the one the payload needs; otherwise it returns the
 * chunk and allocates under the lock (queue.c reserve_room). A put that finds the arena full
 * takes the parked chunks of FREE descriptors back (FREE -> WRITING(us) by CAS, free, FREE).
 * A block changes hands only with the descriptor that records it, so a parked chunk is never
 * unaccounted for: the rebuild, the consistency walker and stats count it (stats as free room).
 *
 * Crash windows: a holder killed with the lists half updated: the next acquirer steals the
 * lock (lock.h) and calls shmq_arena_rebuild, which recomputes every list from the
 * descriptors. Lists read from shared memory are untrusted: any inconsistency found during
 * alloc/free also triggers a rebuild instead of a wild access.
 */
#ifndef SHMQ_ARENA_H
#define SHMQ_ARENA_H

#include "desc.h"
#include "segment.h"

#define SHMQ_META_FREE 0x80u
#define SHMQ_META_USED 0x40u
#define SHMQ_META_ORDER 0x3fu

/* Order needed for bytes (>= 1). */
uint32_t shmq_arena_order_for(uint64_t bytes);
/* Lock held. Allocate a block for d->size bytes and record it in d. SHMQ_OK or SHMQ_FULL. */
int shmq_arena_alloc_locked(shmq_area_t *a, shmq_desc_t *d, uint64_t bytes);
/* Lock held. Return d's block (if any) and clear d's reference. */
void shmq_arena_free_locked(shmq_area_t *a, shmq_desc_t *d);
/* Lock held. Rebuild the free lists from the descriptors (those not FREE that hold a valid,
 * non-overlapping block); descriptors with garbage references lose them. */
void shmq_arena_rebuild_locked(shmq_area_t *a);
/* Free units (relaxed). */
uint64_t shmq_arena_free_units(shmq_area_t *a);
/* untrusted: 1 if a block reference fits the area. */
int shmq_arena_ref_valid(const shmq_area_t *a, uint32_t unit, uint32_t order);

#endif
