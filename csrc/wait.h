/* wait.h - futex waiting on 32-bit sequence words in shared memory, and the spin policy.
 *
 * Contract: any process may wait or wake on any word concurrently. Waits take an absolute
 * CLOCK_MONOTONIC deadline (FUTEX_WAIT_BITSET), never sleep longer than one liveness slice
 * (SHMQ_LIVENESS_SLICE_NS) so a sleeper notices deaths while everyone sleeps, and return
 * SHMQ_EINTR on a signal so the caller can run Python signal handlers (Ctrl-C). Futexes are
 * the shared (not _PRIVATE) kind because the words live in MAP_SHARED memory. Nothing here
 * holds state across a crash: a waiter killed mid-wait leaves only its waiter count, which
 * the owner of that count (queue.c) repairs through the slot's waiting field.
 *
 * Lost-wake-up rule (used by queue.c): the waiter reads seq, then increments the waiter
 * count, then re-checks the condition, then sleeps on seq; the waker changes the condition,
 * then (seq_cst fence) reads the waiter count and, if non-zero, bumps seq and wakes. Both
 * sides are sequentially consistent, so at least one side sees the other.
 *
 * Coalesced wake-ups (not_empty_seq, not_full_seq): bit 0 of the word = "a wake-up is pending".
 * A waker that finds the bit set skips its bump and system call; else it sets it by CAS (which
 * also changes the word) and wakes (one getter / every putter). Waiters clear the bit (CAS)
 * before they register and after every futex return, and look (check) after clearing. A waker
 * that saw the bit set read it before that clear (seq_cst), so its change is visible to the
 * clearer's look. A getter that leaves its sleep (with a message or not) while messages remain
 * wakes again (a plain waker: skips if another wake is pending), so a skipped wake never
 * strands a second sleeper; repair of a dead slot does the same for a getter killed after its
 * wake. Putters are all woken, so none needs to pass it on. A producer sharing the getter's CPU
 * thus makes one system call per batch of puts instead of one per put (and the same for gets).
 */
#ifndef SHMQ_WAIT_H
#define SHMQ_WAIT_H

#include "common.h"

#define SHMQ_LIVENESS_SLICE_NS (50ull * 1000 * 1000) /* 50 ms: the bound on noticing a death while asleep */
#define SHMQ_SPIN_NS_DEFAULT (20ull * 1000)          /* 20 us: longer than a Python round trip on the other side */

/* Sleep while *word == expected, until woken, deadline (absolute monotonic ns) or one slice.
 * Returns SHMQ_OK (woken or the value had changed), SHMQ_EAGAIN (a slice elapsed),
 * SHMQ_TIMEOUT, SHMQ_EINTR. */
int shmq_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline_ns);
/* Wake up to n waiters on word (INT32_MAX for all). */
void shmq_futex_wake(uint32_t *word, int n);

/* How many CPUs this process may run on (cached after the first call; refreshed after fork). */
int shmq_cpus_allowed(void);
void shmq_cpus_allowed_reset(void);
/* CPUs online on the machine (cached). */
int shmq_cpus_online(void);
/* Current CPU or -1. */
int shmq_current_cpu(void);

#endif
