#include "lock.h"

#include "atomic.h"
#include "wait.h"

int shmq_lock_acquire(shmq_seg_t *seg, uint32_t *word, uint64_t deadline_ns)
{
    uint32_t me = seg->owner;
    uint32_t exp = 0;
    if (shmq_cas_acq_rel(word, &exp, me)) /* acquire: the guarded state written by the last holder */
        return SHMQ_OK;
    for (int i = 0; i < 200; i++) {
        shmq_cpu_relax();
        exp = 0;
        if (shmq_load_relaxed(word) == 0 && shmq_cas_acq_rel(word, &exp, me))
            return SHMQ_OK;
    }
    for (;;) {
        uint32_t v = shmq_load_acquire(word);
        if (v == 0) {
            exp = 0;
            /* Take it marked contended: others may be asleep, the release must wake them. */
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
        if (rc == SHMQ_TIMEOUT)
            return SHMQ_TIMEOUT;
        /* A slice passed or we were woken: if the holder died, steal. */
        uint32_t cur = shmq_load_acquire(word);
        if (cur != 0 && !shmq_seg_owner_alive(seg, cur & ~SHMQ_LOCK_CONTENDED)) {
            exp = cur;
            if (shmq_cas_acq_rel(word, &exp, me | SHMQ_LOCK_CONTENDED))
                return SHMQ_EAGAIN;
        }
    }
}

void shmq_lock_release(shmq_seg_t *seg, uint32_t *word)
{
    (void)seg;
    uint32_t old = shmq_exchange_seq(word, 0); /* release: publishes the guarded state */
    if (old & SHMQ_LOCK_CONTENDED)
        shmq_futex_wake(word, 1);
}
