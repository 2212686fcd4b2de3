/* lock.h - owner-stamped robust lock on a 32-bit word in shared memory (cold paths only).
 *
 * Word: 0 = free, else the holder's owner id (common.h: slot+1 in 10 bits, generation in 21)
 * | CONTENDED (bit 31). A word whose owner part is 0 is free.
 * Who may call: any participant; not re-entrant. Used for the arena free lists and growth,
 * never held across a payload copy or a wait for another party.
 *
 * Progress: blocks up to the deadline. A waiter spins briefly, then sleeps on the word
 * (futex, shared) in slices; after each slice it checks whether the holder is still alive
 * (its participant slot's OFD lock byte, and the slot generation). If the holder is dead the
 * waiter steals the lock by CAS and gets SHMQ_EAGAIN: it now holds the lock and must rebuild
 * the guarded state before using it (the holder may have died halfway through an update).
 * A holder that was merely slow cannot lose the lock this way: liveness comes from the kernel.
 *
 * Threads of one process share the owner id; they also take the lock's own process-local flag
 * (`local`, one per lock per handle) around the shared lock, so "the word names us" while we
 * hold the flag means a stale or forged stamp. Locks compose: a handle may hold two at once
 * (the timer scan holds its lock and takes arena locks), each guarded by its own flag.
 * Deadlines: every wait honours the caller's deadline (0 = one attempt, no waiting), the local
 * flag's included, so a put_nowait never waits for a stopped holder.
 *
 * Crash windows: dying while holding leaves the stamp: repaired by the next acquirer as above.
 * Dying while waiting leaves at most the CONTENDED bit: the next release does one extra wake.
 */
#ifndef SHMQ_LOCK_H
#define SHMQ_LOCK_H

#include "segment.h"

#define SHMQ_LOCK_CONTENDED 0x80000000u

/* SHMQ_OK (acquired), SHMQ_EAGAIN (acquired from a dead holder: rebuild), SHMQ_TIMEOUT. */
int shmq_lock_acquire(shmq_seg_t *seg, uint32_t *word, int *local, uint64_t deadline_ns);
void shmq_lock_release(shmq_seg_t *seg, uint32_t *word, int *local);
/* One attempt, no waiting: SHMQ_OK (held) or SHMQ_EAGAIN (someone holds it, maybe a stopped
 * process; the caller defers its work instead of waiting). */
int shmq_lock_try(shmq_seg_t *seg, uint32_t *word, int *local);
/* One CAS, no spinning: SHMQ_OK (held, nothing to rebuild) or SHMQ_EAGAIN (then call
 * shmq_lock_acquire, which handles contention, dead holders and stale stamps). The fast path of
 * a lock that is usually free, without reading the clock for a deadline. */
int shmq_lock_try_once(shmq_seg_t *seg, uint32_t *word, int *local);

#endif
