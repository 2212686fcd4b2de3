/* atomic.h - the few atomic operations the core uses, named by their memory order.
 *
 * Contract: thin wrappers over the GCC __atomic builtins on naturally aligned 32/64-bit words
 * in shared memory. They are lock-free on every supported target (static_assert below), which
 * is what makes them safe between processes: a lock-based fallback would be process-private.
 */
#ifndef SHMQ_ATOMIC_H
#define SHMQ_ATOMIC_H

#include <stdint.h>

_Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics must be lock-free to be shared between processes");
_Static_assert(__atomic_always_lock_free(4, 0), "32-bit atomics must be lock-free to be shared between processes");

#define shmq_load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define shmq_load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define shmq_load_seq(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define shmq_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define shmq_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define shmq_store_seq(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define shmq_fetch_add_seq(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#define shmq_fetch_add_relaxed(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define shmq_fetch_or_seq(p, v) __atomic_fetch_or((p), (v), __ATOMIC_SEQ_CST)
#define shmq_exchange_seq(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
/* Strong CAS; on failure *expected receives the current value. */
#define shmq_cas_acq_rel(p, expected, desired) \
    __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define shmq_cas_seq(p, expected, desired) \
    __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define shmq_fence_seq() __atomic_thread_fence(__ATOMIC_SEQ_CST)

#endif
