/* hist.h - latency histograms and error counters in shared memory: time in queue (enqueue ->
 * first delivery) and processing time (receive -> ack), per participant, summed by readers.
 *
 * Region SHMQ_REGION_HIST (header flag SHMQ_F_HIST): a 64-byte region header, then n_blocks
 * blocks of shmq_hist_block_t. Participant slot s writes block s % n_blocks (n_blocks =
 * min(max_slots, SHMQ_HIST_MAX_BLOCKS)), so up to 32 participants each have a block of their
 * own and more share one. A block belongs to its slot index, not to one process: when a
 * participant dies or detaches, its samples stay in the block, the next owner of the slot adds
 * to them, and readers sum every block. Nothing has to be folded, so there is no crash window
 * where a fold could count twice or lose samples ("folded in by repair" holds by construction).
 *
 * Buckets: bucket 0 counts samples < 2^SHMQ_HIST_BASE_LOG2 ns (1.024 us); bucket b counts
 * [2^(b+9), 2^(b+10)) ns; the last one everything from 2^40 ns (~18 min) up.
 * Powers of two: the bucket of a sample is one leading-zero count, and the upper bounds are
 * fixed numbers of seconds (the `le` labels of the Prometheus histogram never change).
 *
 * Clocks. Wait: the put stores its TSC reading (shmq_ticks, the one it already took for the
 * spin policy) in the READY descriptor's deadline_ns, unused while READY, and sets SHMQ_DF_TICKS;
 * the first take reads the TSC again and converts the difference with a per-process calibration
 * (hist.c: against CLOCK_MONOTONIC, from the library's load; ~1e-5 exact after 10 ms). One
 * rdtsc (~10 ns) per get and none extra per put, against ~19 ns per CLOCK_MONOTONIC read; the
 * coarse wall clock of timestamp_ns (one kernel tick, 1-4 ms) would make every wait below a tick
 * read as 0 or a whole tick. Messages without the flag (a delay, a timer's publish) and the
 * first 10 ms of a process fall back to the coarse wall clock against timestamp_ns.
 * Process: wall clock (CLOCK_REALTIME) of the receive (the ack meta's last_delivery_ns, which
 * receive writes anyway) against the ack's: ~20 ns each, on paths that cost microseconds.
 * Redeliveries are not waits: only a first delivery (delivery_count 0 at the take) is sampled.
 * A delayed message's wait counts from its send (its delay included). deadline_ns 0 or 1 (the
 * ack layer's parked orphans) is no tick reading: those samples take the fallback too.
 *
 * Concurrency: writers add with relaxed loads and stores, no lock prefix: one writer per block
 * in the common case (threads of one handle, or participants past the 32nd sharing a block, may
 * now and then lose an increment: these are figures, not accounting). Readers read relaxed and
 * may see a sample's bucket before its sum. Progress: wait-free.
 * untrusted: the region header is checked against the region's size at bind and at every read;
 * block contents are counts only (garbage gives garbage figures, saturated, never a wild access).
 */
#ifndef SHMQ_HIST_H
#define SHMQ_HIST_H

#include "atomic.h"
#include "desc.h"
#include "segment.h"

#define SHMQ_REGION_HIST 6u  /* reserved number: stats/histograms */
#define SHMQ_F_HIST 0x80u    /* header flag: the segment has the histogram region */
#define SHMQ_DF_TICKS 0x40u  /* descriptor flag: READY with the put's shmq_ticks() in deadline_ns */

#define SHMQ_HIST_MAGIC 0x74736968514d4853ULL /* "SHMQhist" */
#define SHMQ_HIST_BUCKETS 32u
#define SHMQ_HIST_BASE_LOG2 10u
#define SHMQ_HIST_MAX_BLOCKS 32u /* 18.5 KiB per queue; more participants share blocks */

typedef struct {
    uint64_t magic;
    uint32_t n_blocks;
    uint32_t n_buckets;  /* SHMQ_HIST_BUCKETS */
    uint32_t base_log2;  /* SHMQ_HIST_BASE_LOG2 */
    uint32_t block_size; /* sizeof(shmq_hist_block_t) */
    /* topics only (0 for every other kind; segments made before them read 0 here too): */
    uint32_t n_subs;     /* subscription blocks after the slot blocks, one per subscription entry */
    uint32_t n_ticks;    /* u64 publish TSC readings after those, one per log entry */
    uint32_t n_lticks;   /* u64 delivery times (monotonic ns) after those, one per lease entry */
    uint32_t _pad1;
    uint8_t _pad0[64 - 40];
} shmq_hist_region_t;
_Static_assert(sizeof(shmq_hist_region_t) == 64, "hist region header");

typedef struct {
    uint64_t wait[SHMQ_HIST_BUCKETS];    /* time in queue: samples per bucket */
    uint64_t process[SHMQ_HIST_BUCKETS]; /* receive -> ack: samples per bucket */
    uint64_t wait_sum_ns;
    uint64_t process_sum_ns;
    uint64_t nacks;        /* nack() calls that took effect (requeue or reject) */
    uint64_t late_replies; /* request-reply: replies that came after their request gave up */
    uint64_t _pad0[4];     /* 9 cache lines, room for counters to come */
} shmq_hist_block_t;
_Static_assert(sizeof(shmq_hist_block_t) == 576, "hist block layout");

/* Counters a binding may bump in its own block (shmq_hist_count). */
#define SHMQ_HIST_NACKS 0
#define SHMQ_HIST_LATE_REPLIES 1

/* The summed figures of every block. */
typedef struct {
    uint64_t wait[SHMQ_HIST_BUCKETS];
    uint64_t process[SHMQ_HIST_BUCKETS];
    uint64_t wait_sum_ns;
    uint64_t process_sum_ns;
    uint64_t nacks;
    uint64_t late_replies;
    uint32_t blocks_read;
} shmq_hist_sum_t;

/* kinds.c: the region a create asks for (every kind: one block per slot, up to 32). */
void shmq_hist_region(uint32_t max_slots, shmq_region_req_t *req);
/* A topic's (topic.c): the slot blocks (its private subscriptions' figures), then n_subs
 * subscription blocks, n_ticks publish tick words and n_lticks lease delivery times. */
void shmq_hist_region_topic(uint32_t max_slots, uint32_t n_subs, uint32_t n_ticks, uint32_t n_lticks,
                            shmq_region_req_t *req);

/* A topic's parts of the region, bounds-checked (shmq_hist_topic_parts): NULL pointers when the
 * segment has none (made before them, or a bad header) or its counts are not the expected ones. */
typedef struct {
    shmq_hist_block_t *subs; /* [n_subs] */
    uint64_t *ticks;         /* [n_ticks]: the publish's shmq_ticks() of log entry i */
    uint64_t *lticks;        /* [n_lticks]: monotonic ns of lease i's latest delivery */
} shmq_hist_topic_t;
/* SHMQ_OK with every part, SHMQ_EINVAL (none: out zeroed). untrusted: the header's counts must
 * equal the caller's (from the validated topic header) and fit the region. */
int shmq_hist_topic_parts(shmq_seg_t *seg, uint32_t n_subs, uint32_t n_ticks, uint32_t n_lticks,
                          shmq_hist_topic_t *out);
/* Sum one subscription block (as shmq_hist_read does the slot blocks): SHMQ_EINVAL when the
 * segment has no such block. */
int shmq_hist_read_block(const shmq_hist_block_t *b, shmq_hist_sum_t *out);
/* Clear a block (a subscription entry being created anew: its figures start at zero). */
void shmq_hist_clear(shmq_hist_block_t *b);
/* After attach (and the attach of a forked child): point seg->hist_blk at this slot's block,
 * or NULL (no region, a bad one, or not attached). Cheap; idempotent. */
void shmq_hist_bind(shmq_seg_t *seg);
/* Sum every block (those of slots below slot_hwm). SHMQ_EINVAL: the segment has no histogram
 * region; SHMQ_ECORRUPT: its header is garbage. Lock-free, changes nothing. */
int shmq_hist_read(shmq_seg_t *seg, shmq_hist_sum_t *out);
/* Add n to counter `which` (SHMQ_HIST_*) of this handle's block; nothing if it has none. */
void shmq_hist_count(shmq_seg_t *seg, int which, uint64_t n);
/* Record a processing time (ns) in this handle's block. */
void shmq_hist_process(shmq_seg_t *seg, uint64_t ns);

/* Out of line: the calibration and the coarse-clock fallback. */
uint64_t shmq_hist_wait_slow(const shmq_desc_t *d);
uint64_t shmq_hist_wait_coarse(uint64_t put_wall_coarse_ns); /* the same from a timestamp */
extern uint64_t shmq_hist_mult; /* ns per tick << 32, 0 until calibrated (hist.c) */

static inline uint32_t shmq_hist_bucket(uint64_t ns)
{
    if (ns < (1ull << SHMQ_HIST_BASE_LOG2))
        return 0;
    uint32_t b = 63u - (uint32_t)__builtin_clzll(ns) - (SHMQ_HIST_BASE_LOG2 - 1u);
    return b < SHMQ_HIST_BUCKETS ? b : SHMQ_HIST_BUCKETS - 1u;
}

static inline void shmq_hist_add(uint64_t *buckets, uint64_t *sum, uint64_t ns)
{
    uint64_t *c = &buckets[shmq_hist_bucket(ns)];
    /* relaxed, no lock prefix: this block has one writer (see the contract above) */
    shmq_store_relaxed(c, shmq_load_relaxed(c) + 1);
    shmq_store_relaxed(sum, shmq_load_relaxed(sum) + ns);
}

/* A take claimed d (READY -> READING/INFLIGHT): record its time in queue if this is its first
 * delivery. untrusted: deadline_ns and the flags are only arithmetic inputs here. */
static inline void shmq_hist_on_take(shmq_seg_t *q, const shmq_desc_t *d)
{
    shmq_hist_block_t *b = (shmq_hist_block_t *)q->hist_blk;
    if (b == NULL || d->delivery_count != 0)
        return;
    uint64_t ns, put = d->deadline_ns, now;
    uint64_t mult = shmq_load_relaxed(&shmq_hist_mult);
    if (SHMQ_LIKELY((d->flags & SHMQ_DF_TICKS) && mult && put > 1 && (now = shmq_ticks()) - put < (1ull << 50)))
        ns = (uint64_t)(((unsigned __int128)(now - put) * mult) >> 32);
    else
        ns = shmq_hist_wait_slow(d); /* put after the take (TSC skew), garbage, or no ticks */
    shmq_hist_add(b->wait, &b->wait_sum_ns, ns);
}

/* A topic's wait: put = the publish's tick reading (0: none), now = ours (one per read batch),
 * ts = the entry's coarse wall-clock timestamp (the fallback). */
static inline uint64_t shmq_hist_wait_ticks(uint64_t put, uint64_t now, uint64_t ts)
{
    uint64_t mult = shmq_load_relaxed(&shmq_hist_mult);
    if (SHMQ_LIKELY(mult && put > 1 && now - put < (1ull << 50)))
        return (uint64_t)(((unsigned __int128)(now - put) * mult) >> 32);
    return shmq_hist_wait_coarse(ts);
}

/* Add a sample to a block several processes write (a topic subscription's group): atomic adds. */
static inline void shmq_hist_add_shared(uint64_t *buckets, uint64_t *sum, uint64_t ns)
{
    shmq_fetch_add_relaxed(&buckets[shmq_hist_bucket(ns)], 1);
    shmq_fetch_add_relaxed(sum, ns);
}

#endif
