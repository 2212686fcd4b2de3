/* wait.h - futex waiting on 32-bit sequence words in shared memory, and the spin policy.
 *
 * Contract: any process may wait or wake on any word concurrently. Waits take an absolute
 * CLOCK_MONOTONIC deadline (FUTEX_WAIT_BITSET), never sleep longer than one liveness slice
 * (SHMQ_LIVENESS_SLICE_NS) so a sleeper notices deaths while everyone sleeps, and return
 * SHMQ_EINTR on a signal so the caller can run Python signal handlers (Ctrl-C). Futexes are
 * the shared (not _PRIVATE) kind because the words live in MAP_SHARED memory. Nothing here
 * holds state across a crash: a sleeper killed mid-wait leaves only its waiter count, which the
 * owner of that count repairs through the sleeper's per-slot entry (shmq_sleeper_t).
 *
 * Wait queue (shmq_waitq_t {seq, waiters}): the reusable sleep/wake protocol every waiter of
 * the core uses (the queue's getters, putters and join; later kinds' own waiters).
 *
 * Lost-wake-up rule: the waiter reads seq, then increments the waiter
 * count, then re-checks the condition, then sleeps on seq; the waker changes the condition,
 * then (seq_cst fence) reads the waiter count and, if non-zero, bumps seq and wakes. Both
 * sides are sequentially consistent, so at least one side sees the other.
 *
 * Coalesced wake-ups (a wait queue used with coalesced = 1): bit 0 of seq = "a wake-up is pending".
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

/* spin-policy run states a sleeper publishes in its slot */
#define SHMQ_RUN_RUNNING 0u
#define SHMQ_RUN_SLEEPING 1u

/* A wait queue in shared memory: the futex word and the number of its registered sleepers. */
typedef struct {
    uint32_t seq;     /* futex word; coalesced queues: bit 0 = a wake-up is pending */
    uint32_t waiters; /* sleepers registered now */
} shmq_waitq_t;
_Static_assert(sizeof(shmq_waitq_t) == 8, "wait queue layout");

/* What a sleeper tells the wait queue about itself (every field optional). */
typedef struct {
    uint32_t *slot_waiting;      /* its per-slot entry: repair of a dead sleeper undoes its count */
    uint32_t slot_unit;          /* what it adds there while registered */
    uint32_t *run_state;         /* spin policy: SLEEPING while asleep */
    void (*on_slice)(void *ctx); /* after a whole liveness slice asleep (a dead-participant sweep) */
    void *slice_ctx;
    const int *closing;          /* process-local: set when the handle closes: SHMQ_ECLOSED */
    int poll_signals;            /* SHMQ_EINTR after each slice, so a binding can run signal handlers */
} shmq_sleeper_t;

/* check(): run once registered; SHMQ_EAGAIN = still nothing, sleep; anything else is returned. */
typedef int (*shmq_wait_check_fn)(void *ctx);
/* Register, check, sleep until woken, a slice or the deadline, unregister. Returns check's
 * result, SHMQ_EAGAIN ("look again": woken, a slice, the word changed), SHMQ_TIMEOUT,
 * SHMQ_EINTR, SHMQ_ECLOSED. */
int shmq_waitq_sleep(shmq_waitq_t *wq, int coalesced, shmq_wait_check_fn check, void *ctx,
                     const shmq_sleeper_t *who, uint64_t deadline_ns);
/* After the condition changed: wake up to n sleepers if any are registered (coalesced: skipped
 * while a wake-up is pending). Inline: on every put and get, usually one load. */
void shmq_waitq_wake_slow(shmq_waitq_t *wq, int n, int coalesced);
static inline void shmq_waitq_wake(shmq_waitq_t *wq, int n, int coalesced)
{
    /* seq_cst: the caller's change (a locked CAS or seq_cst store) precedes this load (lost-wake-up rule) */
    if (SHMQ_UNLIKELY(__atomic_load_n(&wq->waiters, __ATOMIC_SEQ_CST) != 0))
        shmq_waitq_wake_slow(wq, n, coalesced);
}
/* Wake every sleeper unconditionally (closing, or "choose your wake-up time again"). */
void shmq_waitq_wake_all(shmq_waitq_t *wq);
/* Clear the pending bit of a coalesced queue (a dead sleeper may have taken a wake with it). */
void shmq_waitq_clear_pending(shmq_waitq_t *wq);

/* Sleep while *word == expected, until woken, deadline (absolute monotonic ns) or one slice.
 * Returns SHMQ_OK (woken or the value had changed), SHMQ_EAGAIN (a slice elapsed),
 * SHMQ_TIMEOUT, SHMQ_EINTR. */
int shmq_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline_ns);
/* Wake up to n waiters on word (INT32_MAX for all). */
void shmq_futex_wake(uint32_t *word, int n);

/* CPUs online on the machine (cached). */
int shmq_cpus_online(void);
/* Current CPU or -1. */
int shmq_current_cpu(void);

#endif
