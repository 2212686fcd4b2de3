/* common.h - result codes, fixed-width types, owner ids and the clock.
 *
 * Contract: pure definitions, no state. Everything that lives in shared memory is built
 * from fixed-width integers and offsets (never pointers), so any process may map it at any
 * address. Every value read back from shared memory is untrusted: the helpers here make the
 * bounds checks short enough to be written at every use (grep "untrusted:").
 */
#ifndef SHMQ_COMMON_H
#define SHMQ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if !defined(__x86_64__) && !defined(__aarch64__)
#warning "shmq is tested on x86_64 only"
#endif

/* One result-code enum for the whole core: 0 is success, errors are negative. */
typedef enum {
    SHMQ_OK = 0,
    SHMQ_EMPTY = -1,        /* nothing to take now */
    SHMQ_FULL = -2,         /* no room now (ring, descriptors, bytes or maxsize) */
    SHMQ_TIMEOUT = -3,      /* the deadline passed while waiting */
    SHMQ_EINTR = -4,        /* a signal arrived while waiting: the caller checks it and retries */
    SHMQ_ETOOBIG = -5,      /* the message can never fit this queue */
    SHMQ_ECORRUPT = -6,     /* shared memory failed validation */
    SHMQ_EINCOMPAT = -7,    /* a valid segment of another layout version */
    SHMQ_ESYS = -8,         /* a system call failed: errno says which */
    SHMQ_ESLOTS = -9,       /* the participant table is full */
    SHMQ_ESEALED = -10,     /* ring sealed (an unbounded queue moved on to a newer area) */
    SHMQ_EINVAL = -11,      /* bad argument */
    SHMQ_ENOMEM = -12,      /* the queue cannot grow any further */
    SHMQ_ECLOSED = -13,     /* the queue was closed */
    SHMQ_EAGAIN = -14,      /* a transient state was seen: retry */
    SHMQ_ESTALE = -15,      /* a delivery's stamp is no longer current (lease expired and delivered again) */
    SHMQ_EDEDUPFULL = -16,  /* the deduplication table holds only live keys */
    SHMQ_EJOURNAL = -17,    /* the journal could not record or sync (errno in seg->err; journal.h) */
} shmq_rc;

const char *shmq_strerror(int rc);

#define SHMQ_CACHELINE 64
/* Cursors written by different parties sit 128 bytes apart: adjacent-line prefetching on
 * x86 pulls pairs of lines, so 64 bytes of separation still false-shares. */
#define SHMQ_CURSOR_PAD 128
#define SHMQ_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((uint64_t)(a) - 1))

#define SHMQ_LIKELY(x) __builtin_expect(!!(x), 1)
#define SHMQ_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Owner id: who holds a claim. 31 bits = participant slot + 1 (10 bits, so 0 means "nobody")
 * and the slot's generation (21 bits; a slot re-used by a new process has a new generation,
 * so a recycled pid or slot is never taken for the old owner). Bit 31 is left to the users
 * (the lock uses it as its "contended" flag). */
#define SHMQ_OWNER_SLOT_BITS 10
#define SHMQ_OWNER_GEN_BITS 21
#define SHMQ_OWNER_GEN_MASK ((1u << SHMQ_OWNER_GEN_BITS) - 1)
#define SHMQ_MAX_SLOTS ((1u << SHMQ_OWNER_SLOT_BITS) - 1)
static inline uint32_t shmq_owner_make(uint32_t slot, uint32_t gen)
{
    return ((slot + 1) << SHMQ_OWNER_GEN_BITS) | (gen & SHMQ_OWNER_GEN_MASK);
}
static inline uint32_t shmq_owner_slot(uint32_t owner) /* returns UINT32_MAX for "nobody" */
{
    uint32_t s = (owner & 0x7fffffffu) >> SHMQ_OWNER_GEN_BITS;
    return s ? s - 1 : UINT32_MAX;
}
static inline uint32_t shmq_owner_gen(uint32_t owner) { return owner & SHMQ_OWNER_GEN_MASK; }

static inline uint64_t shmq_now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline uint64_t shmq_now_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* Wall clock to one kernel tick (1-4 ms): ~5 ns instead of ~30 ns for CLOCK_REALTIME, which
 * was a third of a 64-byte put. For the enqueue timestamp only (never for deadlines). */
static inline uint64_t shmq_now_wall_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* Deadlines are absolute CLOCK_MONOTONIC nanoseconds; this value means "no deadline". */
#define SHMQ_NO_DEADLINE UINT64_MAX

/* A cheap, roughly monotonic tick count comparable across CPUs: the TSC on x86 (invariant and
 * synchronised on the CPUs we support), nanoseconds elsewhere. Only used for heuristics. */
static inline uint64_t shmq_ticks(void)
{
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return shmq_now_mono_ns();
#endif
}

static inline void shmq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
