/* test_core.c - unit tests of the C core: segment, ring, arena, queue. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../arena.h"
#include "../crashpoint.h"
#include "../lock.h"
#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "../wait.h"
#include "tharness.h"

static shmq_create_opts_t opts(const char *path, uint64_t cap, uint32_t flags, uint64_t maxsize)
{
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_QUEUE, .flags = flags, .capacity = cap,
                            .max_message = 0, .maxsize = maxsize, .mode = 0600, .max_slots = 0};
    return o;
}

static int put_bytes(shmq_seg_t *q, const void *p, uint64_t n, uint64_t deadline)
{
    shmq_iov_t iov = {p, n};
    return shmq_put(q, &iov, 1, 1, deadline, NULL);
}

static int get_bytes(shmq_seg_t *q, void *out, uint64_t cap, uint64_t *n, uint64_t deadline)
{
    shmq_msg_t m;
    int rc = shmq_get_begin(q, &m, deadline);
    if (rc != SHMQ_OK)
        return rc;
    *n = m.size;
    memcpy(out, m.data, m.size < cap ? m.size : cap);
    shmq_get_end(q, &m);
    return SHMQ_OK;
}

static void test_create_open_roundtrip(void)
{
    char path[128];
    th_path(path, sizeof path, "rt");
    shmq_create_opts_t o = opts(path, 1 << 20, 0, 0);
    shmq_seg_t a, b;
    int created;
    CHECK_EQ(shmq_create(&a, &o, 0, &created), SHMQ_OK);
    CHECK(created);
    CHECK_EQ(shmq_attach(&a), SHMQ_OK);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(st.st_mode & 0777, 0600);
    CHECK_EQ(shmq_create(&b, &o, 0, &created), SHMQ_ESYS); /* EEXIST */
    CHECK_EQ(b.err, EEXIST);
    CHECK_EQ(shmq_open(&b, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_attach(&b), SHMQ_OK);
    CHECK(a.slot != b.slot);
    CHECK(shmq_part_owner_alive(&a, b.owner));
    const char msg[] = "hello";
    CHECK_EQ(put_bytes(&a, msg, sizeof msg, 0), SHMQ_OK);
    char out[64];
    uint64_t n;
    CHECK_EQ(get_bytes(&b, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, sizeof msg);
    CHECK(memcmp(out, msg, n) == 0);
    CHECK_EQ(get_bytes(&b, out, sizeof out, &n, 0), SHMQ_EMPTY);
    uint32_t b_owner = b.owner;
    shmq_close(&b);
    CHECK(!shmq_part_owner_alive(&a, b_owner));
    CHECK_EQ(shmq_validate(&a), SHMQ_OK);
    shmq_close(&a);
    unlink(path);
}

static void test_fifo_and_sizes(void)
{
    char path[128];
    th_path(path, sizeof path, "fifo");
    shmq_create_opts_t o = opts(path, 4 << 20, 0, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    static uint8_t buf[300000], out[300000];
    uint64_t sizes[] = {0, 1, 71, 72, 73, 128, 129, 4096, 65536, 299999};
    for (int round = 0; round < 50; round++) {
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            for (uint64_t k = 0; k < sizes[i]; k++)
                buf[k] = (uint8_t)(k * 7 + i + round);
            CHECK_EQ(put_bytes(&q, buf, sizes[i], 0), SHMQ_OK);
        }
        for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            uint64_t n;
            CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_OK);
            CHECK_EQ(n, sizes[i]);
            for (uint64_t k = 0; k < n; k++)
                if (out[k] != (uint8_t)(k * 7 + i + round)) {
                    CHECK(!"payload mismatch");
                }
        }
    }
    shmq_stats_t st;
    shmq_stats(&q, &st);
    CHECK_EQ(st.depth, 0);
    CHECK_EQ(st.bytes_used, 0); /* every chunk came back and coalesced */
    CHECK_EQ(st.enqueued, 500);
    CHECK_EQ(st.dequeued, 500);
    shmq_close(&q);
    unlink(path);
}

static void test_too_big_and_full(void)
{
    char path[128];
    th_path(path, sizeof path, "full");
    shmq_create_opts_t o = opts(path, 256 << 10, 0, 3);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    static uint8_t big[1 << 20];
    CHECK_EQ(put_bytes(&q, big, q.hdr->max_message + 1, 0), SHMQ_ETOOBIG);
    CHECK_EQ(put_bytes(&q, "a", 1, 0), SHMQ_OK);
    CHECK_EQ(put_bytes(&q, "b", 1, 0), SHMQ_OK);
    CHECK_EQ(put_bytes(&q, "c", 1, 0), SHMQ_OK);
    CHECK_EQ(put_bytes(&q, "d", 1, 0), SHMQ_FULL); /* maxsize 3 */
    uint64_t t0 = shmq_now_mono_ns();
    CHECK_EQ(put_bytes(&q, "d", 1, t0 + 20 * 1000 * 1000), SHMQ_FULL); /* waits, then gives up */
    CHECK(shmq_now_mono_ns() - t0 >= 19 * 1000 * 1000);
    char out[8];
    uint64_t n;
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(put_bytes(&q, "d", 1, 0), SHMQ_OK);
    shmq_close(&q);
    unlink(path);
}

static void test_bytes_full(void)
{
    /* A bounded-capacity queue refuses (FULL) when out of bytes, and accepts again after a get. */
    char path[128];
    th_path(path, sizeof path, "bytes");
    shmq_create_opts_t o = opts(path, 256 << 10, 0, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    static uint8_t blk[16384];
    int n = 0;
    while (put_bytes(&q, blk, sizeof blk, 0) == SHMQ_OK)
        n++;
    CHECK(n >= 8);
    CHECK_EQ(put_bytes(&q, blk, sizeof blk, 0), SHMQ_FULL);
    static uint8_t out[16384];
    uint64_t len;
    CHECK_EQ(get_bytes(&q, out, sizeof out, &len, 0), SHMQ_OK);
    CHECK_EQ(put_bytes(&q, blk, sizeof blk, 0), SHMQ_OK);
    shmq_close(&q);
    unlink(path);
}

static void test_growable(void)
{
    char path[128];
    th_path(path, sizeof path, "grow");
    shmq_create_opts_t o = opts(path, 1 << 20, SHMQ_F_GROWABLE, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    /* many small messages: more than area 0's ring holds */
    for (uint32_t i = 0; i < 20000; i++)
        CHECK_EQ(put_bytes(&q, &i, sizeof i, 0), SHMQ_OK);
    /* a message larger than the first area */
    static uint8_t big[3 << 20];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)k;
    CHECK_EQ(put_bytes(&q, big, sizeof big, 0), SHMQ_OK);
    CHECK(q.hdr->area_tail > 0);
    for (uint32_t i = 0; i < 20000; i++) {
        uint32_t v;
        uint64_t n;
        CHECK_EQ(get_bytes(&q, &v, sizeof v, &n, 0), SHMQ_OK);
        CHECK_EQ(v, i);
    }
    static uint8_t out[3 << 20];
    uint64_t n;
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, sizeof big);
    CHECK(memcmp(out, big, n) == 0);
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_EMPTY);
    /* another process maps the new areas on demand */
    shmq_seg_t r;
    CHECK_EQ(shmq_open(&r, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_validate(&r), SHMQ_OK);
    CHECK_EQ(shmq_attach(&r), SHMQ_OK);
    CHECK_EQ(put_bytes(&r, "x", 1, 0), SHMQ_OK);
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, 1);
    shmq_close(&r);
    shmq_close(&q);
    unlink(path);
}

static void test_growable_gives_drained_areas_back(void)
{
    char path[128];
    th_path(path, sizeof path, "retire");
    shmq_create_opts_t o = opts(path, 256 << 10, SHMQ_F_GROWABLE, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    static uint8_t blk[20000], out[20000];
    uint64_t n;
    /* grow a few times, drain, grow again: the drained areas are retired (memory returned) */
    for (int round = 0, count = 100; round < 4; round++, count *= 2) {
        for (int i = 0; i < count; i++)
            CHECK_EQ(put_bytes(&q, blk, sizeof blk, 0), SHMQ_OK);
        for (int i = 0; i < count; i++)
            CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_OK);
    }
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, 0), SHMQ_EMPTY);
    uint32_t retired = 0;
    for (uint32_t i = 0; i < q.hdr->area_tail; i++)
        retired += q.hdr->areas[i].state == SHMQ_AREA_RETIRED;
    CHECK(retired >= 1);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK((uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size); /* punched: less memory than size */
    shmq_check_t ck;
    shmq_check(&q, &ck);
    CHECK_EQ(ck.bad_areas, 0);
    CHECK_EQ(ck.owned_desc, 0);
    CHECK_EQ(shmq_validate(&q), SHMQ_OK);
    shmq_seg_t r;
    CHECK_EQ(shmq_open(&r, path, -1), SHMQ_OK); /* a new opener accepts retired areas */
    shmq_close(&r);
    shmq_close(&q);
    unlink(path);
}

static void test_arena_rebuild(void)
{
    /* A rebuild from descriptors restores exactly the free space the lists had. */
    char path[128];
    th_path(path, sizeof path, "rebuild");
    shmq_create_opts_t o = opts(path, 1 << 20, 0, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    static uint8_t blk[5000];
    for (int i = 0; i < 20; i++)
        CHECK_EQ(put_bytes(&q, blk, 100 + i * 200, 0), SHMQ_OK);
    shmq_area_t *a = &q.areas[0];
    uint64_t before = shmq_arena_free_units(a);
    a->hdr->free_head[3] = 12345678; /* garbage in the lists */
    shmq_arena_rebuild_locked(a);
    CHECK_EQ(shmq_arena_free_units(a), before);
    uint64_t n;
    for (int i = 0; i < 20; i++)
        CHECK_EQ(get_bytes(&q, blk, sizeof blk, &n, 0), SHMQ_OK);
    CHECK_EQ(shmq_arena_free_units(a), a->arena_units);
    shmq_close(&q);
    unlink(path);
}

static void test_corrupt_header_refused(void)
{
    char path[128];
    th_path(path, sizeof path, "corrupt");
    shmq_create_opts_t o = opts(path, 256 << 10, 0, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    shmq_close(&q);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint32_t v = 99;
    CHECK(pwrite(fd, &v, 4, offsetof(shmq_header_t, version)) == 4);
    CHECK_EQ(shmq_open(&q, path, -1), SHMQ_EINCOMPAT);
    v = 0;
    CHECK(pwrite(fd, &v, 4, 0) == 4);
    CHECK_EQ(shmq_open(&q, path, -1), SHMQ_ECORRUPT);
    CHECK(ftruncate(fd, 100) == 0);
    CHECK_EQ(shmq_open(&q, path, -1), SHMQ_ECORRUPT);
    close(fd);
    unlink(path);
}

static void test_dead_slot_repaired(void)
{
    /* A child attaches, claims a descriptor mid-put and dies: the next attacher of that slot
     * repairs it, and no descriptor or chunk stays leaked. */
    char path[128];
    th_path(path, sizeof path, "dead");
    shmq_create_opts_t o = opts(path, 1 << 20, 0, 0);
    o.max_slots = 2; /* the re-attacher must take the dead slot */
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    pid_t pid = fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        uint32_t idx = 0;
        shmq_area_t *a = &c.areas[0];
        shmq_desc_t *d = (shmq_desc_t *)(a->desc);
        (void)idx;
        /* emulate a put killed after its chunk was allocated */
        d->word = shmq_desc_word(1, SHMQ_D_WRITING, c.owner);
        shmq_lock_acquire(&c, &a->hdr->arena_lock, &a->arena_busy, SHMQ_NO_DEADLINE);
        shmq_arena_alloc_locked(a, d, 10000);
        shmq_lock_release(&c, &a->hdr->arena_lock, &a->arena_busy);
        _exit(0); /* no detach: like a SIGKILL */
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    shmq_area_t *a = &q.areas[0];
    CHECK(shmq_arena_free_units(a) < a->arena_units);
    shmq_seg_t r;
    CHECK_EQ(shmq_open(&r, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_attach(&r), SHMQ_OK); /* takes the dead slot and repairs it */
    CHECK_EQ(q.hdr->repairs, 1);
    CHECK_EQ(shmq_arena_free_units(a), a->arena_units);
    CHECK_EQ(shmq_desc_state(((shmq_desc_t *)a->desc)->word), SHMQ_D_FREE);
    shmq_close(&r);
    shmq_close(&q);
    unlink(path);
}

static void test_blocking_get_wakes(void)
{
    char path[128];
    th_path(path, sizeof path, "wake");
    shmq_create_opts_t o = opts(path, 1 << 20, 0, 0);
    shmq_seg_t q;
    int created;
    CHECK_EQ(shmq_create(&q, &o, 0, &created), SHMQ_OK);
    CHECK_EQ(shmq_attach(&q), SHMQ_OK);
    pid_t pid = fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        usleep(100 * 1000);
        _exit(put_bytes(&c, "wake", 4, 0) == SHMQ_OK ? 0 : 3);
    }
    char out[8];
    uint64_t n;
    uint64_t t0 = shmq_now_mono_ns();
    int rc = get_bytes(&q, out, sizeof out, &n, t0 + 5ull * 1000 * 1000 * 1000);
    int status;
    waitpid(pid, &status, 0);
    CHECK_EQ(rc, SHMQ_OK);
    CHECK(memcmp(out, "wake", 4) == 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* a timed-out get returns EMPTY after (not before) its deadline */
    t0 = shmq_now_mono_ns();
    CHECK_EQ(get_bytes(&q, out, sizeof out, &n, t0 + 30 * 1000 * 1000), SHMQ_EMPTY);
    CHECK(shmq_now_mono_ns() - t0 >= 29 * 1000 * 1000);
    shmq_close(&q);
    unlink(path);
}

static void test_crash_table(void)
{
    CHECK(shmq_crash_count() >= 10);
    for (int i = 0; i < shmq_crash_count(); i++)
        CHECK(shmq_crash_name(i) && shmq_crash_where(i));
    CHECK(shmq_crash_name(shmq_crash_count()) == NULL);
}

int main(void)
{
    RUN(test_create_open_roundtrip);
    RUN(test_fifo_and_sizes);
    RUN(test_too_big_and_full);
    RUN(test_bytes_full);
    RUN(test_growable);
    RUN(test_growable_gives_drained_areas_back);
    RUN(test_arena_rebuild);
    RUN(test_corrupt_header_refused);
    RUN(test_dead_slot_repaired);
    RUN(test_blocking_get_wakes);
    RUN(test_crash_table);
    TH_SUMMARY();
}
