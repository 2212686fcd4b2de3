#include "lock.h"

#include <sched.h>

#include "atomic.h"
#include "participants.h"
#include "wait.h"

/* Threads of one process share an owner id: they take turns on the lock's own process-local
 * flag first, so that while we hold it, a shared lock stamped with our own id can only be a
 * stale or forged stamp. One flag per lock: a thread may hold two different locks. */
static int local_enter(int *local, uint64_t deadline_ns)
{
    for (unsigned i = 0; __atomic_exchange_n(local, 1, __ATOMIC_ACQUIRE); i++) {
        if ((i & 63) == 63 && deadline_ns != SHMQ_NO_DEADLINE && shmq_now_mono_ns() >= deadline_ns)
            return SHMQ_TIMEOUT;
        sched_yield();
    }
    return SHMQ_OK;
}

static void local_leave(int *local) { __atomic_store_n(local, 0, __ATOMIC_RELEASE); }

static int acquire(shmq_seg_t *seg, uint32_t *word, uint64_t deadline_ns);

/* Take the lock if its holder is dead, or if the stamp is our own (which, while we hold the
 * local flag, can only be stale or forged). 1 if we now hold it: the caller rebuilds. */
static int steal_if_stale(shmq_seg_t *seg, uint32_t *word, uint32_t me)
{
    uint32_t cur = shmq_load_acquire(word);
    uint32_t holder = cur & ~SHMQ_LOCK_CONTENDED;
    if (cur == 0 || (holder != me && shmq_part_owner_alive(seg, holder)))
        return 0;
    return shmq_cas_acq_rel(word, &cur, me | SHMQ_LOCK_CONTENDED);
}

int shmq_lock_acquire(shmq_seg_t *seg, uint32_t *word, int *local, uint64_t deadline_ns)
{
    if (local_enter(local, deadline_ns) != SHMQ_OK)
        return SHMQ_TIMEOUT;
    int rc = acquire(seg, word, deadline_ns);
    if (rc == SHMQ_TIMEOUT)
        local_leave(local);
    return rc;
}

static int acquire(shmq_seg_t *seg, uint32_t *word, uint64_t deadline_ns)
{
    uint32_t me = seg->owner;
    uint32_t exp = 0;
    if (shmq_cas_acq_rel(word, &exp, me)) /* acquire: the guarded state written by the last holder */
        return SHMQ_OK;
    if ((exp & ~SHMQ_LOCK_CONTENDED) == me) {
        /* untrusted: "held by us" while no thread of ours holds it: stale stamp, take over */
        if (shmq_cas_acq_rel(word, &exp, me | SHMQ_LOCK_CONTENDED))
            return SHMQ_EAGAIN;
    }
    if (deadline_ns == 0)
        return SHMQ_TIMEOUT; /* no waiting at all */
    for (int i = 0; i < 200; i++) {
        shmq_cpu_relax();
        exp = 0;
        if (shmq_load_relaxed(word) == 0 && shmq_cas_acq_rel(word, &exp, me))
            return SHMQ_OK;
    }
    for (;;) {
        uint32_t v = shmq_load_acquire(word);
        if ((v & ~SHMQ_LOCK_CONTENDED) == 0) {
            /* Free (a bare CONTENDED bit, left by a waiter that died or written by garbage, is
             * free too). Take it marked contended: others may be asleep, the release wakes them. */
            exp = v;
            if (shmq_cas_acq_rel(word, &exp, me | SHMQ_LOCK_CONTENDED))
                return SHMQ_OK;
            continue;
        }
        if (!(v & SHMQ_LOCK_CONTENDED)) {
            exp = v;
            if (!shmq_cas_acq_rel(word, &exp, v | SHMQ_LOCK_CONTENDED))
                continue;
            v |= SHMQ_LOCK_CONTENDED;
        }
        int rc = shmq_futex_wait(word, v, deadline_ns);
        /* After a slice, a wake-up or the deadline: a dead holder's lock is ours to take. */
        if (steal_if_stale(seg, word, me))
            return SHMQ_EAGAIN;
        if (rc == SHMQ_TIMEOUT)
            return SHMQ_TIMEOUT; /* (EINTR and slices: look again; lock holds are short) */
    }
}

void shmq_lock_release(shmq_seg_t *seg, uint32_t *word, int *local)
{
    (void)seg;
    uint32_t old = shmq_exchange_seq(word, 0); /* release: publishes the guarded state */
    if (old & SHMQ_LOCK_CONTENDED)
        shmq_futex_wake(word, 1);
    local_leave(local);
}

int shmq_lock_try_once(shmq_seg_t *seg, uint32_t *word, int *local)
{
    if (__atomic_exchange_n(local, 1, __ATOMIC_ACQUIRE))
        return SHMQ_EAGAIN; /* another thread of ours holds this lock */
    uint32_t exp = 0;
    if (shmq_cas_acq_rel(word, &exp, seg->owner)) /* acquire: the guarded state of the last holder */
        return SHMQ_OK;
    local_leave(local);
    return SHMQ_EAGAIN;
}

int shmq_lock_try(shmq_seg_t *seg, uint32_t *word, int *local)
{
    if (__atomic_exchange_n(local, 1, __ATOMIC_ACQUIRE))
        return SHMQ_EAGAIN; /* another thread of ours holds this lock */
    for (int i = 0; i < 64; i++) {
        uint32_t exp = 0;
        if (shmq_load_relaxed(word) == 0 && shmq_cas_acq_rel(word, &exp, seg->owner))
            return SHMQ_OK;
        shmq_cpu_relax();
    }
    local_leave(local);
    return SHMQ_EAGAIN;
}
