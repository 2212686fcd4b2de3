#include "ring.h"

#include "atomic.h"
#include "crashpoint.h"

typedef unsigned __int128 shmq_u128;

static inline shmq_u128 cell_pack(uint64_t word, uint64_t handle) { return ((shmq_u128)handle << 64) | word; }

/* Every write of a cell is this one 16-byte CAS (cmpxchg16b: a full barrier). Under
 * ThreadSanitizer the builtin becomes the runtime's emulation of 16-byte atomics (a lock around
 * plain accesses), which is not atomic against the hardware and lost cell updates in the thread
 * stress (a stranded message, consumers spinning): there the CAS is the instruction itself, in a
 * function the sanitizer does not instrument. Production builds use the builtin. */
#if defined(__SANITIZE_THREAD__) && defined(__x86_64__)
__attribute__((no_sanitize_thread, noinline)) static int cell_cas(shmq_cell_t *c, shmq_u128 old, shmq_u128 new)
{
    uint64_t olo = (uint64_t)old, ohi = (uint64_t)(old >> 64);
    uint8_t ok;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(ok), "+m"(*c), "+a"(olo), "+d"(ohi)
                         : "b"((uint64_t)new), "c"((uint64_t)(new >> 64))
                         : "memory", "cc");
    return ok;
}
#else
static inline int cell_cas(shmq_cell_t *c, shmq_u128 old, shmq_u128 new)
{
    return __sync_bool_compare_and_swap((shmq_u128 *)c, old, new);
}
#endif

void shmq_ring_init(shmq_ring_t *r)
{
    uint64_t n = r->mask + 1;
    for (uint64_t i = 0; i < n; i++) {
        r->cells[i].word = shmq_cell_word(0, SHMQ_CELL_EMPTY);
        r->cells[i].handle = 0;
    }
    shmq_store_release(r->head, 0);
    shmq_store_release(r->tail, 0);
}

/* untrusted: every loop over cells is bounded. A consistent ring needs at most a lap of helping
 * moves (plus the retries of lost CASes); a hostile word that keeps it going longer is garbage. */
static inline uint64_t loop_bound(const shmq_ring_t *r) { return 4 * (r->mask + 1) + 4096; }

int shmq_ring_put_mpmc(shmq_ring_t *r, uint64_t handle)
{
    for (uint64_t n = loop_bound(r); n; n--) {
        uint64_t t = shmq_load_acquire(r->tail); /* acquire: pairs with the index CAS of the last publisher */
        shmq_cell_t *c = &r->cells[t & r->mask];
        uint32_t lap = (uint32_t)(t >> r->log2);
        uint64_t w = shmq_load_acquire(&c->word); /* acquire: see the consumer's release of this cell */
        int32_t d = (int32_t)(shmq_cell_lap(w) - lap);
        uint32_t st = shmq_cell_state(w);
        if (d == 0 && st == SHMQ_CELL_EMPTY) {
            uint64_t h_old = shmq_load_relaxed(&c->handle);
            SHMQ_CRASH_POINT(after_claim);
            /* The publication: state and handle in one 16-byte CAS (full barrier), so the cell
             * is never seen FULL with a stale handle and no claimed-but-empty cell exists. */
            if (cell_cas(c, cell_pack(w, h_old),
                                             cell_pack(shmq_cell_word(lap, SHMQ_CELL_FULL), handle))) {
                SHMQ_CRASH_POINT(before_commit);
                uint64_t exp = t;
                shmq_cas_acq_rel(r->tail, &exp, t + 1); /* help: failure means someone already moved it */
                return SHMQ_OK;
            }
            continue;
        }
        if (d == 0 && st == SHMQ_CELL_SEALED)
            return SHMQ_ESEALED;
        if (d >= 0) {
            /* FULL at our lap (published, tail not moved yet) or a later lap: tail is stale. */
            uint64_t exp = t;
            shmq_cas_acq_rel(r->tail, &exp, t + 1);
            continue;
        }
        if (d == -1 && st == SHMQ_CELL_FULL) {
            /* The previous lap's message is still there: full, unless tail moved meanwhile. */
            if (shmq_load_acquire(r->tail) == t)
                return SHMQ_FULL;
            continue;
        }
        /* Only a tail read older than the cell can get here; reload. */
        if (shmq_load_acquire(r->tail) == t)
            return SHMQ_FULL;
    }
    return SHMQ_ECORRUPT;
}

int shmq_ring_get_mpmc(shmq_ring_t *r, shmq_take_fn take, void *ctx, uint64_t *handle)
{
    for (uint64_t n = loop_bound(r); n; n--) {
        uint64_t hd = shmq_load_acquire(r->head);
        shmq_cell_t *c = &r->cells[hd & r->mask];
        uint32_t lap = (uint32_t)(hd >> r->log2);
        uint64_t w = shmq_load_acquire(&c->word); /* acquire: pairs with the publishing CAS */
        int32_t d = (int32_t)(shmq_cell_lap(w) - lap);
        uint32_t st = shmq_cell_state(w);
        if (d == 0 && st == SHMQ_CELL_FULL) {
            uint64_t h = shmq_load_relaxed(&c->handle);
            /* Re-read the word: if it is still FULL(lap) the handle belongs to it (the handle
             * only changes through a CAS that requires the word to be EMPTY). */
            if (shmq_load_acquire(&c->word) != w)
                continue;
            int rc = take(ctx, h);
            SHMQ_CRASH_POINT(mid_get);
            /* Advance the cell whether or not the take was ours: a consumer that died after
             * its take must not block the ring. A 16-byte CAS (word and handle): after a stall
             * of 2^32 laps the same word could be back with another message, never with the
             * same handle, so a stalled consumer cannot advance past a message it did not see. */
            cell_cas(c, cell_pack(w, h), cell_pack(shmq_cell_word(lap + 1, SHMQ_CELL_EMPTY), h));
            uint64_t exp = hd;
            shmq_cas_acq_rel(r->head, &exp, hd + 1); /* help: failure means someone already moved it */
            if (rc == SHMQ_OK) {
                *handle = h;
                return SHMQ_OK;
            }
            continue;
        }
        if (d == 0 && st == SHMQ_CELL_EMPTY) {
            if (shmq_load_acquire(r->head) != hd)
                continue;
            return SHMQ_EMPTY;
        }
        if (d == 0 && st == SHMQ_CELL_SEALED)
            return SHMQ_ESEALED;
        if (d > 0) {
            /* Already consumed at this lap: head is stale, help it along. */
            uint64_t exp = hd;
            shmq_cas_acq_rel(r->head, &exp, hd + 1);
            continue;
        }
        /* d < 0: our head read is newer than the cell can be, or the cell is garbage. */
        if (shmq_load_acquire(r->head) == hd)
            return SHMQ_EMPTY;
    }
    return SHMQ_ECORRUPT;
}

int shmq_ring_seal_mpmc(shmq_ring_t *r)
{
    for (uint64_t n = loop_bound(r); n; n--) {
        uint64_t t = shmq_load_acquire(r->tail);
        shmq_cell_t *c = &r->cells[t & r->mask];
        uint32_t lap = (uint32_t)(t >> r->log2);
        uint64_t w = shmq_load_acquire(&c->word);
        int32_t d = (int32_t)(shmq_cell_lap(w) - lap);
        uint32_t st = shmq_cell_state(w);
        if (d == 0 && st == SHMQ_CELL_SEALED)
            return SHMQ_OK;
        if (d == 0 && st == SHMQ_CELL_EMPTY) {
            if (shmq_load_acquire(r->head) != t)
                return SHMQ_EAGAIN; /* messages remain before tail */
            uint64_t h = shmq_load_relaxed(&c->handle);
            /* The same 16-byte CAS as every other write of a cell (the handle is kept): a 64-bit
             * CAS on the word alone is atomic against cmpxchg16b on x86, but not where 16-byte
             * atomics are emulated under a lock (ThreadSanitizer's runtime), where it lost
             * updates against a concurrent publish or advance and stranded a message. */
            if (cell_cas(c, cell_pack(w, h), cell_pack(shmq_cell_word(lap, SHMQ_CELL_SEALED), h)))
                return SHMQ_OK;
            continue;
        }
        if (d >= 0) {
            uint64_t exp = t;
            shmq_cas_acq_rel(r->tail, &exp, t + 1);
            continue;
        }
        return SHMQ_EAGAIN;
    }
    return SHMQ_ECORRUPT;
}

int shmq_ring_room(const shmq_ring_t *r)
{
    uint64_t t = shmq_load_acquire(r->tail);
    uint64_t w = shmq_load_acquire(&r->cells[t & r->mask].word); /* acquire: the consumer's release of it */
    return shmq_cell_state(w) == SHMQ_CELL_EMPTY;
}

void shmq_ring_foreach(const shmq_ring_t *r, void (*visit)(void *ctx, uint64_t handle), void *ctx)
{
    uint64_t n = r->mask + 1;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t w = shmq_load_acquire(&r->cells[k].word); /* acquire: pairs with the publishing CAS */
        if (shmq_cell_state(w) != SHMQ_CELL_FULL)
            continue;
        uint64_t h = shmq_load_relaxed(&r->cells[k].handle);
        if (shmq_load_acquire(&r->cells[k].word) == w) /* the handle belongs to this word */
            visit(ctx, h);
    }
}

int shmq_ring_nth(const shmq_ring_t *r, uint64_t *n, uint64_t *handle)
{
    uint64_t hd = shmq_load_acquire(r->head), t = shmq_load_acquire(r->tail);
    /* t + 1: a producer that died between its publishing CAS and its tail CAS left one there;
     * untrusted: never more than one lap of cells */
    for (uint64_t pos = hd; pos < t + 1 && pos < hd + r->mask + 1; pos++) {
        shmq_cell_t *c = &r->cells[pos & r->mask];
        uint64_t w = shmq_load_acquire(&c->word);
        if (shmq_cell_state(w) != SHMQ_CELL_FULL || shmq_cell_lap(w) != (uint32_t)(pos >> r->log2))
            continue;
        uint64_t h = shmq_load_relaxed(&c->handle);
        if (shmq_load_acquire(&c->word) != w)
            return SHMQ_EAGAIN;
        if ((*n)-- > 0)
            continue;
        *handle = h;
        return SHMQ_OK;
    }
    return SHMQ_EMPTY;
}

uint64_t shmq_ring_count(const shmq_ring_t *r)
{
    uint64_t hd = shmq_load_acquire(r->head);
    uint64_t t = shmq_load_acquire(r->tail);
    /* A producer that died between its publishing CAS and its tail CAS leaves the message at
     * `tail` with tail not moved: count it too. */
    uint64_t w = shmq_load_acquire(&r->cells[t & r->mask].word);
    if (shmq_cell_state(w) == SHMQ_CELL_FULL && shmq_cell_lap(w) == (uint32_t)(t >> r->log2))
        t++;
    return t > hd ? t - hd : 0;
}

int shmq_ring_valid(const shmq_ring_t *r)
{
    uint64_t hd = shmq_load_acquire(r->head);
    uint64_t t = shmq_load_acquire(r->tail);
    /* untrusted: a consistent ring has head - 1 <= tail <= head + size + 1. A producer that
     * died between its publishing CAS and its tail CAS leaves tail one behind; consumers may
     * then take that cell and move head one past tail until the next producer helps. */
    return t + 1 >= hd && t <= hd + r->mask + 2;
}
