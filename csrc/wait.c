#define _GNU_SOURCE
#include "wait.h"

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

static int cpus_cached = 0;

int shmq_cpus_allowed(void)
{
    int c = __atomic_load_n(&cpus_cached, __ATOMIC_RELAXED);
    if (c > 0)
        return c;
    cpu_set_t set;
    CPU_ZERO(&set);
    c = (sched_getaffinity(0, sizeof set, &set) == 0) ? CPU_COUNT(&set) : 1;
    if (c < 1)
        c = 1;
    __atomic_store_n(&cpus_cached, c, __ATOMIC_RELAXED);
    return c;
}

void shmq_cpus_allowed_reset(void) { __atomic_store_n(&cpus_cached, 0, __ATOMIC_RELAXED); }

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
