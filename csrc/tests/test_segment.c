/* test_segment.c - segment.h: create, open, validate, attach/detach, the participant table,
 * repair of a dead participant's slot. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>

#include "../arena.h"
#include "../lock.h"
#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"
#include "tharness.h"

static void test_create_open_roundtrip(void)
{
    char path[128];
    th_path(path, sizeof path, "rt");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    shmq_seg_t *a = th_create(&o), *b = th_seg();
    CHECK(a && b);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(st.st_mode & 0777, 0600);
    int created;
    CHECK_EQ(shmq_create(b, &o, 0, &created), SHMQ_ESYS); /* EEXIST */
    CHECK_EQ(b->err, EEXIST);
    CHECK_EQ(shmq_open(b, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_attach(b), SHMQ_OK);
    CHECK(a->slot != b->slot);
    CHECK(shmq_part_owner_alive(a, b->owner));
    const char msg[] = "hello";
    CHECK_EQ(th_put_bytes(a, msg, sizeof msg, 0), SHMQ_OK);
    char out[64];
    uint64_t n;
    CHECK_EQ(th_get_bytes(b, out, sizeof out, &n, 0), SHMQ_OK);
    CHECK_EQ(n, sizeof msg);
    CHECK(memcmp(out, msg, n) == 0);
    CHECK_EQ(th_get_bytes(b, out, sizeof out, &n, 0), SHMQ_EMPTY);
    uint32_t b_owner = b->owner;
    shmq_close(b);
    CHECK(!shmq_part_owner_alive(a, b_owner));
    CHECK_EQ(shmq_validate(a), SHMQ_OK);
    shmq_close(a);
    CHECK_EQ(unlink(path), 0);
}

static void test_exist_ok_and_mode(void)
{
    /* exist_ok opens the existing segment (created = 0); the mode on disk is exactly the one asked */
    char path[128];
    th_path(path, sizeof path, "mode");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    o.mode = 0640;
    mode_t old = umask(077);
    shmq_seg_t *a = th_create(&o);
    umask(old);
    CHECK(a != NULL);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(st.st_mode & 0777, 0640);
    shmq_seg_t *b = th_seg();
    int created = 1;
    CHECK_EQ(shmq_create(b, &o, 1, &created), SHMQ_OK);
    CHECK_EQ(created, 0);
    CHECK_EQ(shmq_attach(b), SHMQ_OK);
    CHECK_EQ(th_put_bytes(a, "x", 1, 0), SHMQ_OK);
    CHECK_EQ(shmq_depth(b), 1);
    shmq_seg_t c;
    CHECK_EQ(shmq_open(&c, "/dev/shm/shmq.ctest-no-such-queue", -1), SHMQ_ESYS);
    CHECK_EQ(c.err, ENOENT);
}

static void test_slot_table_full_and_reused(void)
{
    char path[128];
    th_path(path, sizeof path, "slots");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    o.max_slots = 2;
    shmq_seg_t *a = th_create(&o), *b = th_open(path), *c = th_seg();
    CHECK(a && b && c);
    CHECK_EQ(shmq_open(c, path, -1), SHMQ_OK);
    CHECK_EQ(shmq_attach(c), SHMQ_ESLOTS); /* a full table is a clear error */
    uint32_t slot = b->slot;
    shmq_close(b);
    CHECK_EQ(shmq_attach(c), SHMQ_OK); /* the detached slot is reused */
    CHECK_EQ(c->slot, slot);
    shmq_stats_t st;
    shmq_stats(a, &st);
    CHECK_EQ(st.attached, 2);
    CHECK_EQ(st.max_slots, 2);
}

static void test_corrupt_header_refused(void)
{
    char path[128];
    th_path(path, sizeof path, "corrupt");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
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
}

static void test_dead_slot_repaired(void)
{
    /* A child attaches, claims a descriptor mid-put and dies: the next attacher of that slot
     * repairs it, and no descriptor or chunk stays leaked. */
    char path[128];
    th_path(path, sizeof path, "dead");
    shmq_create_opts_t o = th_opts(path, 1 << 20, 0, 0);
    o.max_slots = 2; /* the re-attacher must take the dead slot */
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        shmq_area_t *a = &c.areas[0];
        shmq_desc_t *d = (shmq_desc_t *)(a->desc);
        /* emulate a put killed after its chunk was allocated */
        d->word = shmq_desc_word(1, SHMQ_D_WRITING, c.owner);
        shmq_lock_acquire(&c, &a->hdr->arena_lock, th_lock_flag(&c, &a->hdr->arena_lock), SHMQ_NO_DEADLINE);
        shmq_arena_alloc_locked(a, d, 10000);
        shmq_lock_release(&c, &a->hdr->arena_lock, th_lock_flag(&c, &a->hdr->arena_lock));
        _exit(0); /* no detach: like a SIGKILL */
    }
    int status = th_wait(pid, 10000);
    CHECK(th_exited_ok(status));
    shmq_area_t *a = &q->areas[0];
    CHECK(shmq_arena_free_units(a) < a->arena_units);
    shmq_seg_t *r = th_open(path); /* takes the dead slot and repairs it */
    CHECK(r != NULL);
    CHECK_EQ(th_repairs(q), 1);
    CHECK_EQ(shmq_arena_free_units(a), a->arena_units);
    CHECK_EQ(shmq_desc_state(((shmq_desc_t *)a->desc)->word), SHMQ_D_FREE);
}

static void test_dead_owner_not_alive_after_kill(void)
{
    /* Liveness comes from the kernel (the OFD lock byte): SIGKILL makes the owner dead at once,
     * and shmq_repair_dead elects this process for the slot. */
    char path[128];
    th_path(path, sizeof path, "kill");
    shmq_create_opts_t o = th_opts(path, 256 << 10, 0, 0);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK)
            _exit(2);
        uint32_t owner = c.owner;
        if (write(fds[1], &owner, sizeof owner) != sizeof owner)
            _exit(3);
        pause();
        _exit(0);
    }
    close(fds[1]);
    uint32_t owner = 0;
    CHECK(read(fds[0], &owner, sizeof owner) == sizeof owner);
    close(fds[0]);
    CHECK(shmq_part_owner_alive(q, owner));
    kill(pid, SIGKILL);
    CHECK(th_killed(th_wait(pid, 10000)));
    CHECK(!shmq_part_owner_alive(q, owner));
    CHECK(shmq_repair_dead(q) >= 1);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.attached, 1);
}

int main(void)
{
    RUN(test_create_open_roundtrip);
    RUN(test_exist_ok_and_mode);
    RUN(test_slot_table_full_and_reused);
    RUN(test_corrupt_header_refused);
    RUN(test_dead_slot_repaired);
    RUN(test_dead_owner_not_alive_after_kill);
    TH_SUMMARY();
}
