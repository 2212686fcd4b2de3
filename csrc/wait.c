#define _GNU_SOURCE
#include "wait.h"

#include "atomic.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

int shmq_futex_wait(uint32_t *word, uint32_t expected, uint64_t deadline_ns)
{
    uint64_t now = shmq_now_mono_ns();
    if (deadline_ns != SHMQ_NO_DEADLINE && now >= deadline_ns)
        return SHMQ_TIMEOUT;
    uint64_t until = now + SHMQ_LIVENESS_SLICE_NS;
    int is_deadline = 0;
    if (deadline_ns != SHMQ_NO_DEADLINE && deadline_ns <= until) {
        until = deadline_ns;
        is_deadline = 1;
    }
    struct timespec ts = {.tv_sec = (time_t)(until / 1000000000ull), .tv_nsec = (long)(until % 1000000000ull)};
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time (no FUTEX_CLOCK_REALTIME). */
    long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, &ts, NULL, FUTEX_BITSET_MATCH_ANY);
    if (r == 0)
        return SHMQ_OK;
    if (errno == EAGAIN)
        return SHMQ_OK; /* the value had already changed */
    if (errno == EINTR)
        return SHMQ_EINTR;
    if (errno == ETIMEDOUT)
        return is_deadline ? SHMQ_TIMEOUT : SHMQ_EAGAIN; /* one liveness slice elapsed */
    return SHMQ_ESYS;
}

void shmq_futex_wake(uint32_t *word, int n)
{
    syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ---------------------------------------------------------------- wait queue */

/* Clear the pending bit; returns the (even) value now in seq. Every sleeper of a coalesced queue
 * does this before it registers and after each futex return, and looks after it. */
static uint32_t clear_pending(uint32_t *seqw)
{
    for (;;) {
        uint32_t v = shmq_load_seq(seqw); /* seq_cst: a waker that saw the bit set is ordered before our clear */
        if (!(v & 1u))
            return v;
        if (shmq_cas_seq(seqw, &v, v + 1)) /* seq_cst: our later looks come after the clear */
            return v + 1;
    }
}

void shmq_waitq_clear_pending(shmq_waitq_t *wq) { clear_pending(&wq->seq); }

int shmq_waitq_sleep(shmq_waitq_t *wq, int coalesced, shmq_wait_check_fn check, void *ctx,
                     const shmq_sleeper_t *who, uint64_t deadline_ns)
{
    uint32_t seq = coalesced ? clear_pending(&wq->seq) : shmq_load_seq(&wq->seq);
    shmq_fetch_add_seq(&wq->waiters, 1);
    if (who->slot_waiting && who->slot_unit)
        shmq_fetch_add_seq(who->slot_waiting, who->slot_unit); /* lets repair undo our count if we die asleep */
    if (who->run_state)
        shmq_store_relaxed(who->run_state, SHMQ_RUN_SLEEPING);
    int rc = check(ctx);
    if (rc == SHMQ_EAGAIN) {
        rc = shmq_futex_wait(&wq->seq, seq, deadline_ns);
        if (coalesced)
            clear_pending(&wq->seq); /* the wake may have been ours: clear it before the caller looks */
        if (rc == SHMQ_EAGAIN) {
            /* A whole slice asleep: the owner looks for dead participants (they may hold what
             * we wait for). A signal that arrived before we slept (while spinning) did not
             * interrupt the futex: a binding that asked for it comes up for air. */
            if (who->on_slice)
                who->on_slice(who->slice_ctx);
            if (who->poll_signals)
                rc = SHMQ_EINTR;
        } else if (rc == SHMQ_OK) {
            rc = SHMQ_EAGAIN;
        }
        if (who->closing && __atomic_load_n(who->closing, __ATOMIC_SEQ_CST))
            rc = SHMQ_ECLOSED; /* the handle is being closed by another thread */
    }
    if (who->run_state)
        shmq_store_relaxed(who->run_state, SHMQ_RUN_RUNNING);
    if (who->slot_waiting && who->slot_unit)
        __atomic_fetch_sub(who->slot_waiting, who->slot_unit, __ATOMIC_SEQ_CST);
    __atomic_fetch_sub(&wq->waiters, 1, __ATOMIC_SEQ_CST);
    return rc;
}

void shmq_waitq_wake_slow(shmq_waitq_t *wq, int n, int coalesced)
{
    if (!coalesced) {
        shmq_fetch_add_seq(&wq->seq, 1);
        shmq_futex_wake(&wq->seq, n);
        return;
    }
    uint32_t v = shmq_load_seq(&wq->seq);
    do {
        if (v & 1u)
            return; /* pending: the sleeper that clears it looks after our change */
    } while (!shmq_cas_seq(&wq->seq, &v, v + 1)); /* seq_cst: sets the bit and changes the word sleepers wait on */
    shmq_futex_wake(&wq->seq, n);
}

void shmq_waitq_wake_all(shmq_waitq_t *wq)
{
    shmq_fetch_add_seq(&wq->seq, 2); /* 2: bit 0 stays what it was (the pending flag of coalesced queues) */
    shmq_futex_wake(&wq->seq, INT32_MAX);
}

int shmq_cpus_online(void)
{
    static int n = 0;
    int c = __atomic_load_n(&n, __ATOMIC_RELAXED);
    if (c <= 0) {
        c = (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (c < 1)
            c = 1;
        __atomic_store_n(&n, c, __ATOMIC_RELAXED);
    }
    return c;
}

int shmq_current_cpu(void) { return sched_getcpu(); }
