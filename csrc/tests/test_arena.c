/* test_arena.c - arena.h: the buddy allocator of an area (orders, bounds, split and coalesce,
 * running out, rebuild of the free lists from the descriptors). */
#define _GNU_SOURCE
#include "../arena.h"
#include "../lock.h"
#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "../queue_int.h"
#include "../inspect.h"
#include "tharness.h"

static int put_bytes(shmq_seg_t *q, const void *p, uint64_t n)
{
    shmq_iov_t iov = {p, n};
    return shmq_put(q, &iov, 1, 1, 0, NULL);
}

static int get_bytes(shmq_seg_t *q, void *out, uint64_t cap)
{
    shmq_msg_t m;
    int rc = shmq_get_begin(q, &m, 0);
    if (rc != SHMQ_OK)
        return rc;
    memcpy(out, m.data, m.size < cap ? m.size : cap);
    shmq_get_end(q, &m);
    return SHMQ_OK;
}

static void test_order_for_and_ref_valid(void)
{
    CHECK_EQ(shmq_arena_order_for(1), 0);
    CHECK_EQ(shmq_arena_order_for(64), 0);
    CHECK_EQ(shmq_arena_order_for(65), 1);
    CHECK_EQ(shmq_arena_order_for(128), 1);
    CHECK_EQ(shmq_arena_order_for(129), 2);
    CHECK_EQ(shmq_arena_order_for(64ull << 10), 10);
    CHECK_EQ(shmq_arena_order_for((64ull << 10) + 1), 11);
    char path[128];
    th_path(path, sizeof path, "refs");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_area_t *a = th_area0(q);
    CHECK(shmq_arena_ref_valid(a, 0, 0));
    CHECK(shmq_arena_ref_valid(a, 2, 1));
    CHECK(!shmq_arena_ref_valid(a, 1, 1));                            /* misaligned for its order */
    CHECK(!shmq_arena_ref_valid(a, (uint32_t)a->arena_units, 0));     /* past the end */
    CHECK(!shmq_arena_ref_valid(a, (uint32_t)a->arena_units - 1, 1)); /* straddles the end */
    CHECK(!shmq_arena_ref_valid(a, 0, a->arena_max_order + 1));        /* order out of range */
    CHECK(!shmq_arena_ref_valid(a, SHMQ_NO_CHUNK, 0));
}

static void test_alloc_until_full_then_coalesce(void)
{
    char path[128];
    th_path(path, sizeof path, "alloc");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_area_t *a = th_area0(q);
    uint64_t total = a->arena_units;
    CHECK_EQ(shmq_arena_free_units(a), total);
    enum { N = 4096 };
    static shmq_desc_t d[N];
    memset(d, 0, sizeof d);
    int n = 0, rc;
    CHECK_EQ(shmq_lock_acquire(q, &a->hdr->arena_lock, th_lock_flag(q, &a->hdr->arena_lock), th_after_ms(1000)), SHMQ_OK);
    /* mixed sizes: 1, 3, 9 units ... until the arena refuses */
    for (; n < N; n++) {
        uint64_t bytes = 64ull * (1 + (n % 3) * 4 + (n % 7));
        d[n].size = (uint32_t)bytes;
        if ((rc = shmq_arena_alloc_locked(a, &d[n], bytes)) != SHMQ_OK)
            break;
        CHECK(d[n].chunk != SHMQ_NO_CHUNK);
        CHECK(shmq_arena_ref_valid(a, d[n].chunk, d[n].chunk_order));
        CHECK((1ull << d[n].chunk_order) * SHMQ_ARENA_UNIT >= bytes);
    }
    CHECK(n > 8 && n < N);
    CHECK_EQ(rc, SHMQ_FULL);
    uint64_t used = 0;
    for (int i = 0; i < n; i++)
        used += 1ull << d[i].chunk_order;
    CHECK_EQ(shmq_arena_free_units(a), total - used);
    /* no two blocks overlap */
    static uint8_t owner[1 << 16];
    CHECK(total <= sizeof owner);
    memset(owner, 0, sizeof owner);
    for (int i = 0; i < n; i++)
        for (uint64_t u = 0; u < (1ull << d[i].chunk_order); u++) {
            CHECK_EQ(owner[d[i].chunk + u], 0);
            owner[d[i].chunk + u] = 1;
        }
    /* free every other one, then the rest: everything coalesces back into the whole arena */
    for (int i = 0; i < n; i += 2)
        shmq_arena_free_locked(a, &d[i]);
    for (int i = 1; i < n; i += 2)
        shmq_arena_free_locked(a, &d[i]);
    for (int i = 0; i < n; i++)
        CHECK_EQ(d[i].chunk, SHMQ_NO_CHUNK); /* free clears the descriptor's reference */
    CHECK_EQ(shmq_arena_free_units(a), total);
    /* the largest block is whole again */
    shmq_desc_t big;
    memset(&big, 0, sizeof big);
    uint64_t max = 1ull << a->arena_max_order;
    if (max > total)
        max = total;
    CHECK_EQ(shmq_arena_alloc_locked(a, &big, max * SHMQ_ARENA_UNIT / 2), SHMQ_OK);
    shmq_arena_free_locked(a, &big);
    shmq_lock_release(q, &a->hdr->arena_lock, th_lock_flag(q, &a->hdr->arena_lock));
    CHECK_EQ(shmq_arena_free_units(a), total);
}

static void test_arena_rebuild(void)
{
    /* A rebuild from descriptors restores exactly the free space the lists had. */
    char path[128];
    th_path(path, sizeof path, "rebuild");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    static uint8_t blk[5000];
    for (int i = 0; i < 20; i++)
        CHECK_EQ(put_bytes(q, blk, 100 + i * 200), SHMQ_OK);
    shmq_area_t *a = th_area0(q);
    uint64_t before = shmq_arena_free_units(a);
    a->hdr->free_head[3] = 12345678; /* garbage in the lists */
    shmq_arena_rebuild_locked(a);
    CHECK_EQ(shmq_arena_free_units(a), before);
    for (int i = 0; i < 20; i++)
        CHECK_EQ(get_bytes(q, blk, sizeof blk), SHMQ_OK);
    /* the chunks stay parked in their FREE descriptors (arena.h): room, but not in the lists */
    uint64_t parked = shmq_q_parked_units(a);
    CHECK(parked > 0);
    CHECK_EQ(shmq_arena_free_units(a) + parked, a->arena_units);
    /* a rebuild keeps parked chunks out of the free lists: a put reusing one and a put given
     * the same block from the lists would share it */
    a->hdr->free_head[3] = 12345678;
    shmq_arena_rebuild_locked(a);
    CHECK_EQ(shmq_arena_free_units(a) + parked, a->arena_units);
    shmq_check_t ck;
    shmq_check(q, &ck);
    CHECK_EQ(ck.parked_chunks, 20);
    CHECK_EQ(ck.arena_mismatch, 0);
    CHECK_EQ(ck.bad_chunks, 0);
    /* a real leak is still reported: a block marked used that no descriptor records */
    shmq_desc_t stray;
    memset(&stray, 0, sizeof stray);
    CHECK_EQ(shmq_arena_alloc_locked(a, &stray, 4096), SHMQ_OK);
    shmq_check(q, &ck);
    CHECK_EQ(ck.arena_mismatch, 1);
    shmq_arena_rebuild_locked(a); /* nobody records it: the rebuild takes it back */
    shmq_check(q, &ck);
    CHECK_EQ(ck.arena_mismatch, 0);
}

static void test_garbage_free_list_survives_puts(void)
{
    /* untrusted lists: garbage found during alloc triggers a rebuild, never a wild access */
    char path[128];
    th_path(path, sizeof path, "garbage");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    shmq_area_t *a = th_area0(q);
    for (uint32_t k = 0; k < SHMQ_ARENA_MAX_ORDERS; k++)
        a->hdr->free_head[k] = 0xdeadbeefu - k;
    static uint8_t blk[3000];
    for (int i = 0; i < 10; i++)
        CHECK_EQ(put_bytes(q, blk, sizeof blk), SHMQ_OK);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(get_bytes(q, blk, sizeof blk), SHMQ_OK);
    CHECK_EQ(shmq_arena_free_units(a) + shmq_q_parked_units(a), a->arena_units); /* parked: arena.h */
}

int main(void)
{
    RUN(test_order_for_and_ref_valid);
    RUN(test_alloc_until_full_then_coalesce);
    RUN(test_arena_rebuild);
    RUN(test_garbage_free_list_survives_puts);
    TH_SUMMARY();
}
