/* test_queue.c - queue.h: put/get FIFO and sizes, bounds (maxsize, bytes, too big), growth
 * and retirement of drained areas, peek/purge, JoinableQueue accounting. */
#define _GNU_SOURCE
#include <sys/stat.h>

#include "../arena.h"
#include "../inspect.h"
#include "../lock.h"
#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"

static void test_fifo_and_sizes(void)
{
    char path[128];
    th_path(path, sizeof path, "fifo");
    shmq_create_opts_t o = th_opts(path, 4 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t buf[300000], out[300000];
    uint64_t sizes[] = {0, 1, 71, 72, 73, 128, 129, 4096, 65536, 299999};
    for (int round = 0; round < 50; round++) {
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            for (uint64_t k = 0; k < sizes[i]; k++)
                buf[k] = (uint8_t)(k * 7 + i + round);
            CHECK_EQ(th_put_bytes(q, buf, sizes[i], 0), SHMQ_OK);
        }
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            uint64_t n;
            CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
            CHECK_EQ(n, sizes[i]);
            for (uint64_t k = 0; k < n; k++)
                if (out[k] != (uint8_t)(k * 7 + i + round)) {
                    CHECK(!"payload mismatch");
                }
        }
    }
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.bytes_used, 0); /* every chunk came back and coalesced */
    CHECK_EQ(st.enqueued, 500);
    CHECK_EQ(st.dequeued, 500);
}

static void test_ids_increase_and_iov_gathers(void)
{
    char path[128];
    th_path(path, sizeof path, "ids");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    uint64_t last = 0;
    for (int i = 0; i < 10; i++) {
        shmq_iov_t iov[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
        uint64_t id = 0;
        CHECK_EQ(shmq_put(q, iov, 3, 7, 0, &id), SHMQ_OK);
        CHECK(id > last);
        last = id;
    }
    shmq_msg_t m;
    CHECK_EQ(shmq_get_begin(q, &m, 0), SHMQ_OK);
    CHECK_EQ(m.size, 5);
    CHECK(memcmp(m.data, "abcde", 5) == 0);
    CHECK_EQ(m.kind, 7);
    CHECK(m.id > 0 && m.id < last);
    shmq_get_end(q, &m);
}

static void test_too_big_and_full(void)
{
    char path[128];
    th_path(path, sizeof path, "full");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 3);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t big[1 << 20];
    CHECK_EQ(th_put_bytes(q, big, th_max_message(q) + 1, 0), SHMQ_ETOOBIG);
    CHECK_EQ(th_put_bytes(q, "a", 1, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, "b", 1, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, "c", 1, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, "d", 1, 0), SHMQ_FULL); /* maxsize 3 */
    CHECK_EQ(q->full_why, SHMQ_WHY_MAXSIZE);
    q->full_why = SHMQ_WHY_NONE;
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(th_put_bytes(q, "d", 1, t0 + 20 * 1000 * 1000), SHMQ_FULL); /* waits, then gives up */
    CHECK_EQ(q->full_why, SHMQ_WHY_MAXSIZE);
    CHECK(shmq_now_mono_ns() - t0 >= 19 * 1000 * 1000);
    char out[8];
    uint64_t n;
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, "d", 1, 0), SHMQ_OK);
}

static void test_bytes_full(void)
{
    /* A bounded-capacity queue refuses (FULL) when out of bytes or slots, saying which, and
     * accepts again once drained. */
    static uint8_t out[16384];
    uint64_t len;
    char path[128];
    th_path(path, sizeof path, "bytes");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t blk[16384];
    int n = 0;
    while (th_put_bytes(q, blk, sizeof blk, 0) == SHMQ_OK)
        n++;
    CHECK(n >= 8);
    CHECK_EQ(th_put_bytes(q, blk, sizeof blk, 0), SHMQ_FULL);
    CHECK_EQ(q->full_why, SHMQ_WHY_BYTES);
    /* small messages: the descriptors (message slots) run out, not the bytes */
    while (th_put_bytes(q, "s", 1, 0) == SHMQ_OK)
        ;
    CHECK_EQ(q->full_why, SHMQ_WHY_SLOTS);
    while (th_get_bytes(q, out, sizeof out, &len, 0) == SHMQ_OK)
        ;
    CHECK_EQ(th_put_bytes(q, blk, sizeof blk, 0), SHMQ_OK); /* drained: accepted again */
}

static void test_growable(void)
{
    char path[128];
    th_path(path, sizeof path, "grow");
    shmq_create_opts_t o = th_opts(path, 1 << 20, SHMQ_F_GROWABLE, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    /* many small messages: more than area 0's ring holds */
    for (uint32_t i = 0; i < 20000; i++)
        CHECK_EQ(th_put_bytes(q, &i, sizeof i, 0), SHMQ_OK);
    /* a message larger than the first area */
    static uint8_t big[3 << 20];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)k;
    CHECK_EQ(th_put_bytes(q, big, sizeof big, 0), SHMQ_OK);
    CHECK(th_area_tail(q) > 0);
    for (uint32_t i = 0; i < 20000; i++) {
        uint32_t v;
        uint64_t n;
        CHECK_EQ(th_get_bytes(q, &v, sizeof v, &n, 0), SHMQ_OK);
        CHECK_EQ(v, i);
    }
    static uint8_t out[3 << 20];
    uint64_t n;
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, sizeof big);
    CHECK(memcmp(out, big, n) == 0);
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_EMPTY);
    /* another process maps the new areas on demand */
    shmq_seg_t *r = th_seg();
    CHECK(r != NULL);
    CHECK_EQ(shmq_open(r, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_validate(r), SHMQ_OK);
    CHECK_EQ(shmq_attach(r), SHMQ_OK);
    CHECK_EQ(th_put_bytes(r, "x", 1, 0), SHMQ_OK);
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, 1);
}

static void test_growable_gives_drained_areas_back(void)
{
    char path[128];
    th_path(path, sizeof path, "retire");
    shmq_create_opts_t o = th_opts(path, 256 << 10, SHMQ_F_GROWABLE, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t blk[20000], out[20000];
    uint64_t n;
    /* grow a few times, drain, grow again: the drained areas are retired (memory returned) */
    for (int round = 0, count = 100; round < 4; round++, count *= 2) {
        for (int i = 0; i < count; i++)
            CHECK_EQ(th_put_bytes(q, blk, sizeof blk, 0), SHMQ_OK);
        for (int i = 0; i < count; i++)
            CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    }
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_EMPTY);
    CHECK(th_areas_retired(q) >= 1);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK((uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size); /* punched: less memory than size */
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.bad_areas, 0);
    CHECK_EQ(ck.owned_desc, 0);
    CHECK_EQ(shmq_validate(q), SHMQ_OK);
    shmq_seg_t r;
    CHECK_EQ(shmq_open(&r, path, -1), SHMQ_OK); /* a new opener accepts retired areas */
    shmq_close(&r);
}

static void test_peek_purge_check(void)
{
    char path[128];
    th_path(path, sizeof path, "peek");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t big[5000];
    memset(big, 'z', sizeof big);
    CHECK_EQ(th_put_bytes(q, "first", 5, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, big, sizeof big, 0), SHMQ_OK);
    shmq_peek_t pk;
    char buf[16];
    CHECK_EQ(shmq_peek(q, 0, &pk, buf, sizeof buf), SHMQ_OK);
    CHECK_EQ(pk.size, 5);
    CHECK_EQ(pk.copied, 5);
    CHECK(memcmp(buf, "first", 5) == 0);
    CHECK_EQ(shmq_peek(q, 1, &pk, buf, sizeof buf), SHMQ_OK);
    CHECK_EQ(pk.size, sizeof big);
    CHECK_EQ(pk.copied, sizeof buf); /* a prefix when the buffer is smaller */
    CHECK_EQ(buf[15], 'z');
    CHECK_EQ(shmq_peek(q, 2, &pk, buf, sizeof buf), SHMQ_EMPTY);
    CHECK_EQ(shmq_depth(q), 2); /* peek takes nothing */
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.ready_desc, 2);
    CHECK_EQ(ck.queued, 2);
    CHECK_EQ(ck.orphan_ready + ck.bad_chunks + ck.arena_mismatch + ck.bad_areas + ck.owned_desc, 0);
    CHECK_EQ(shmq_purge(q), 2);
    CHECK_EQ(shmq_depth(q), 0);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.bytes_used, 0);
}

static void test_joinable(void)
{
    char path[128];
    th_path(path, sizeof path, "join");
    shmq_create_opts_t o = th_opts(path, 256 << 10, SHMQ_F_JOINABLE, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    CHECK_EQ(shmq_join(q, 0), SHMQ_OK); /* nothing put: done */
    CHECK_EQ(shmq_task_done(q), SHMQ_EINVAL); /* more task_done than puts */
    CHECK_EQ(th_put_bytes(q, "a", 1, 0), SHMQ_OK);
    CHECK_EQ(th_put_bytes(q, "b", 1, 0), SHMQ_OK);
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(shmq_join(q, t0 + 20 * TH_MS), SHMQ_TIMEOUT);
    CHECK(shmq_now_mono_ns() - t0 >= 19 * TH_MS);
    char out[4];
    uint64_t n;
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(th_get_bytes(q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(shmq_task_done(q), SHMQ_OK);
    CHECK_EQ(shmq_join(q, 0), SHMQ_TIMEOUT); /* one still unfinished; 0 = do not wait */
    CHECK_EQ(shmq_task_done(q), SHMQ_OK);
    CHECK_EQ(shmq_join(q, th_after_ms(1000)), SHMQ_OK);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.unfinished, 0);
}

/* Parked chunks (arena.h): once a size's chunks are parked, puts and gets of that size take
 * no arena lock, so a holder that never lets go (stopped) stalls neither side; a put of another
 * size gets no room while the lock is held, and does once it is free. The walker agrees
 * throughout. */
static int put_bytes(shmq_seg_t *q, const uint8_t *p, uint64_t n) { return th_put_bytes(q, p, n, 0); }
static int64_t get_bytes(shmq_seg_t *q, uint8_t *out, uint64_t cap)
{
    uint64_t n;
    return th_get_bytes(q, out, cap, &n, 0) == SHMQ_OK ? (int64_t)n : -1;
}

static void test_parked_chunks_need_no_lock(void)
{
    char path[128];
    th_path(path, sizeof path, "parked");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_seg_t *holder = th_open(path);
    CHECK(holder != NULL);
    static uint8_t buf[20000], out[20000];
    for (int i = 0; i < 16; i++)
        CHECK_EQ(put_bytes(q, buf, 1000), SHMQ_OK);
    for (int i = 0; i < 16; i++)
        CHECK_EQ(get_bytes(q, out, sizeof out), 1000);
    shmq_area_t *a = th_area0(q);
    shmq_area_t *ha = &holder->areas[0];
    CHECK_EQ(shmq_lock_acquire(holder, &ha->hdr->arena_lock, th_lock_flag(holder, &ha->hdr->arena_lock), SHMQ_NO_DEADLINE),
             SHMQ_OK);
    uint64_t free_before = shmq_arena_free_units(a);
    for (int i = 0; i < 5000; i++) { /* depth 1..3, the same size: always a parked chunk at hand */
        memset(buf, i & 0xff, 1000);
        CHECK_EQ(put_bytes(q, buf, 1000), SHMQ_OK);
        if (i % 3 == 2) {
            for (int k = 0; k < 3; k++)
                CHECK_EQ(get_bytes(q, out, sizeof out), 1000);
            CHECK_EQ(out[0], i & 0xff);
        }
    }
    while (get_bytes(q, out, sizeof out) > 0)
        ;
    CHECK_EQ(shmq_arena_free_units(a), free_before); /* no list operation happened */
    CHECK_EQ(put_bytes(q, buf, 20000), SHMQ_FULL); /* another order needs the lock: no room now */
    shmq_lock_release(holder, &ha->hdr->arena_lock, th_lock_flag(holder, &ha->hdr->arena_lock));
    CHECK_EQ(put_bytes(q, buf, 20000), SHMQ_OK);
    CHECK_EQ(get_bytes(q, out, sizeof out), 20000);
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK(ck.parked_chunks >= 2);
    CHECK_EQ(ck.arena_mismatch + ck.bad_chunks + ck.owned_desc + ck.ready_desc, 0);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.bytes_used, 0);
    shmq_close(holder);
    shmq_close(q);
    CHECK_EQ(unlink(path), 0);
}

int main(void)
{
    RUN(test_fifo_and_sizes);
    RUN(test_ids_increase_and_iov_gathers);
    RUN(test_too_big_and_full);
    RUN(test_bytes_full);
    RUN(test_growable);
    RUN(test_growable_gives_drained_areas_back);
    RUN(test_peek_purge_check);
    RUN(test_joinable);
    RUN(test_parked_chunks_need_no_lock);
    TH_SUMMARY();
}
