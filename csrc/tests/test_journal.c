/* test_journal.c - the write-ahead journal: records, rotation and recycling, recovery, torn
 * tails, corruption, stale recycled files, group commit under SIGKILL of the flusher. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "tharness.h"
#include "../journal.h"

#define SEG (64u * 1024u)

static char jdir[256];

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void fresh_dir(void)
{
    if (jdir[0])
        rm_dir(jdir);
    snprintf(jdir, sizeof jdir, "/tmp/shmq-ctest-journal-%d-%d", (int)getpid(), th_seq++);
    mkdir(jdir, 0700);
}

static int count_files(const char *ext)
{
    DIR *d = opendir(jdir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += strstr(e->d_name, ext) != NULL && e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* A journaled queue: create, recover from jdir (rep), start appending. */
static shmq_seg_t *jq(const char *path, uint32_t flags, uint32_t mode, shmq_jreport_t *rep, uint32_t scan_flags, int *rc_out)
{
    shmq_journal_opts_t jo = {.dir = jdir, .mode = mode, .seg_size = SEG, .interval_ns = 10 * TH_MS};
    shmq_create_opts_t o = flags & SHMQ_F_ACK ? th_ack_opts(path, 1 << 20, 1000 * TH_MS, 5, NULL) : th_opts(path, 1 << 20, 0, 0);
    o.flags |= SHMQ_F_JOURNAL;
    o.journal = &jo;
    shmq_seg_t *q = th_create(&o);
    if (!q)
        return NULL;
    shmq_jreport_t r;
    int rc = shmq_journal_scan(jdir, scan_flags | SHMQ_JSCAN_REPAIR, q, rep ? rep : &r, NULL, NULL);
    if (rc_out)
        *rc_out = rc;
    if (rc != SHMQ_OK)
        return NULL;
    rc = shmq_journal_start(q, (rep ? rep : &r)->last_seg, (rep ? rep : &r)->next_lsn);
    if (rc != SHMQ_OK) {
        if (rc_out)
            *rc_out = rc;
        return NULL;
    }
    return q;
}

static void put_n(shmq_seg_t *q, int from, int to, int size)
{
    char buf[4096];
    for (int i = from; i < to; i++) {
        memset(buf, 'a' + i % 26, sizeof buf);
        snprintf(buf, sizeof buf, "%d", i);
        if (th_put_bytes(q, buf, (uint64_t)size, 0) != SHMQ_OK)
            return;
    }
}

static int get_num(shmq_seg_t *q)
{
    char buf[4096];
    uint64_t n;
    if (th_get_bytes(q, buf, sizeof buf - 1, &n, 0) != SHMQ_OK)
        return -1;
    buf[n < sizeof buf - 1 ? n : sizeof buf - 1] = 0;
    return atoi(buf);
}

static void test_recover_sent_minus_removed(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jr");
    shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_NEVER, NULL, 0, NULL);
    CHECK(q != NULL);
    put_n(q, 0, 100, 100);
    for (int i = 0; i < 40; i++)
        CHECK_EQ(get_num(q), i);
    uint64_t next = q->hdr->next_id;
    shmq_close(q);
    unlink(path);
    shmq_jreport_t rep;
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, 0, NULL);
    CHECK(q != NULL);
    CHECK_EQ(rep.live, 60);
    CHECK_EQ(rep.replayed, 60);
    CHECK_EQ(rep.torn, 0);
    CHECK_EQ(q->hdr->next_id, next);
    for (int i = 40; i < 100; i++)
        CHECK_EQ(get_num(q), i);
    CHECK_EQ(get_num(q), -1);
    /* a second life, then a second recovery: both lives' records count */
    put_n(q, 100, 110, 50);
    CHECK_EQ(get_num(q), 100);
    shmq_close(q);
    unlink(path);
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, 0, NULL);
    CHECK(q != NULL);
    CHECK_EQ(rep.live, 9);
    CHECK_EQ(rep.corrupt, 0);
    for (int i = 101; i < 110; i++)
        CHECK_EQ(get_num(q), i);
}

static void test_rotation_and_retention(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jrot");
    shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_BATCH, NULL, 0, NULL);
    CHECK(q != NULL);
    /* consumed as it goes: segments are retired, the files stay few (one spare recycled) */
    for (int round = 0; round < 40; round++) {
        put_n(q, round * 50, round * 50 + 50, 1000);
        for (int i = 0; i < 50; i++)
            CHECK_EQ(get_num(q), round * 50 + i);
    }
    CHECK(shmq_journal_sync(q, th_after_ms(5000)) == SHMQ_OK);
    CHECK(count_files(".wal") <= 3);
    CHECK(q->jstate->blk->segments_created < 12); /* recycled, not created afresh each time */
    /* not consumed: every segment is kept */
    put_n(q, 5000, 5300, 1000);
    int kept = count_files(".wal");
    CHECK(kept >= 4);
    shmq_close(q);
    unlink(path);
    shmq_jreport_t rep;
    q = jq(path, 0, SHMQ_JMODE_BATCH, &rep, 0, NULL);
    CHECK(q != NULL);
    CHECK_EQ(rep.live, 300);
    for (int i = 5000; i < 5300; i++)
        CHECK_EQ(get_num(q), i);
}

static void test_torn_tail_and_bitflip(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jtorn");
    shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_NEVER, NULL, 0, NULL);
    CHECK(q != NULL);
    put_n(q, 0, 20, 200);
    uint64_t W = q->jstate->blk->write_pos;
    uint64_t seg = W / SEG, off = W % SEG;
    shmq_close(q);
    unlink(path);
    char f[600];
    snprintf(f, sizeof f, "%s/%016llx.wal", jdir, (unsigned long long)seg);
    int fd = open(f, O_RDWR);
    CHECK(fd >= 0);
    /* a torn last record: cut 100 bytes off its end */
    uint8_t z[100] = {0};
    CHECK(pwrite(fd, z, sizeof z, (off_t)(off - 104)) == (ssize_t)sizeof z);
    shmq_jreport_t rep;
    CHECK(shmq_journal_scan(jdir, 0, NULL, &rep, NULL, NULL) == SHMQ_OK);
    CHECK_EQ(rep.torn, 1);
    CHECK_EQ(rep.live, 19);
    /* a bit flip in the 3rd record: corruption before the tail */
    uint8_t byte;
    off_t at = SHMQ_JFILE_HDR + 300;
    CHECK(pread(fd, &byte, 1, at) == 1);
    byte ^= 0x10;
    CHECK(pwrite(fd, &byte, 1, at) == 1);
    close(fd);
    CHECK(shmq_journal_scan(jdir, 0, NULL, &rep, NULL, NULL) == SHMQ_ECORRUPT);
    CHECK_EQ(rep.corrupt_seg, seg);
    CHECK(rep.corrupt_off > SHMQ_JFILE_HDR && rep.corrupt_off <= (uint64_t)at);
    int rc = 0;
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, 0, &rc);
    CHECK(q == NULL);
    CHECK_EQ(rc, SHMQ_ECORRUPT);
    shmq_close(&th_segs[th_nsegs - 1]);
    unlink(path);
    /* skip: the damaged record is dropped, the rest recovered; a later recovery is clean */
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, SHMQ_JSCAN_SKIP, &rc);
    CHECK(q != NULL);
    CHECK_EQ(rep.corrupt, 1);
    CHECK(rep.skipped_bytes > 0);
    CHECK_EQ(rep.live, 18);
    shmq_close(q);
    unlink(path);
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, 0, &rc);
    CHECK(q != NULL);
    CHECK_EQ(rep.corrupt, 0);
    CHECK_EQ(rep.live, 18);
}

static void test_stale_recycled_records_never_validate(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jstale");
    shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_NEVER, NULL, 0, NULL);
    CHECK(q != NULL);
    /* fill segments with messages consumed at once, so files are recycled with old bytes inside */
    for (int round = 0; round < 30; round++) {
        put_n(q, round * 60, round * 60 + 60, 900);
        for (int i = 0; i < 60; i++)
            CHECK_EQ(get_num(q), round * 60 + i);
    }
    CHECK(q->jstate->blk->segments_created < 10);
    put_n(q, 9000, 9002, 10); /* the live ones: the only ones that may come back */
    shmq_close(q);
    unlink(path);
    shmq_jreport_t rep;
    q = jq(path, 0, SHMQ_JMODE_NEVER, &rep, 0, NULL);
    CHECK(q != NULL);
    CHECK_EQ(rep.corrupt, 0);
    CHECK_EQ(rep.live, 2);
    CHECK_EQ(get_num(q), 9000);
    CHECK_EQ(get_num(q), 9001);
    CHECK_EQ(get_num(q), -1);
}

static void test_ack_inflight_and_dedup(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jack");
    shmq_seg_t *q = jq(path, SHMQ_F_ACK, SHMQ_JMODE_ALWAYS, NULL, 0, NULL);
    CHECK(q != NULL);
    uint8_t key[16] = {1, 2, 3};
    shmq_send_opts_t so = {.delay_ns = SHMQ_USE_DEFAULT, .ttl_ns = SHMQ_USE_DEFAULT, .dedup_key = key};
    shmq_iov_t v = {"hello", 5};
    uint64_t id1, id2, id3;
    int dup;
    CHECK(shmq_send(q, &v, 1, 1, &so, 0, &id1, &dup) == SHMQ_OK && !dup);
    CHECK(shmq_journal_commit(q, th_after_ms(5000)) == SHMQ_OK);
    so.dedup_key = NULL;
    CHECK(shmq_send(q, &v, 1, 1, &so, 0, &id2, &dup) == SHMQ_OK);
    CHECK(shmq_send(q, &v, 1, 1, &so, 0, &id3, &dup) == SHMQ_OK);
    CHECK(shmq_journal_commit(q, th_after_ms(5000)) == SHMQ_OK);
    CHECK(q->jstate->blk->durable_pos == q->jstate->blk->write_pos);
    shmq_msg_t m;
    CHECK(shmq_receive_begin(q, &m, 0) == SHMQ_OK); /* id1: in flight at the "crash" */
    CHECK_EQ(m.id, id1);
    CHECK(shmq_receive_end(q, &m) == SHMQ_OK);
    shmq_msg_t m2;
    CHECK(shmq_receive_begin(q, &m2, 0) == SHMQ_OK); /* id2: acked */
    CHECK(shmq_receive_end(q, &m2) == SHMQ_OK);
    CHECK(shmq_ack(q, m2.handle, m2.id) == SHMQ_OK);
    shmq_close(q);
    unlink(path);
    shmq_jreport_t rep;
    q = jq(path, SHMQ_F_ACK, SHMQ_JMODE_ALWAYS, &rep, 0, NULL);
    CHECK(q != NULL);
    CHECK_EQ(rep.live, 2);
    CHECK_EQ(rep.dedup_restored, 1);
    CHECK(shmq_receive_begin(q, &m, 0) == SHMQ_OK);
    CHECK_EQ(m.id, id1);
    CHECK_EQ(m.delivery_count, 2); /* in flight at the crash: a failed delivery */
    CHECK(shmq_receive_end(q, &m) == SHMQ_OK);
    CHECK(shmq_receive_begin(q, &m2, 0) == SHMQ_OK);
    CHECK_EQ(m2.id, id3);
    CHECK_EQ(m2.delivery_count, 1);
    CHECK(shmq_receive_end(q, &m2) == SHMQ_OK);
    /* the dedup id survived: a resend returns the original id */
    so.dedup_key = key;
    uint64_t again;
    CHECK(shmq_send(q, &v, 1, 1, &so, 0, &again, &dup) == SHMQ_OK);
    CHECK(dup);
    CHECK_EQ(again, id1);
    /* ids continue */
    so.dedup_key = NULL;
    CHECK(shmq_send(q, &v, 1, 1, &so, 0, &again, &dup) == SHMQ_OK);
    CHECK(again > id3);
}

/* child: send forever in always mode, printing each id once its commit returned */
static int role_sender(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    q.fd = -1;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    while (shmq_journal_state(&q) != SHMQ_JSTATE_READY)
        th_sleep_ms(1);
    shmq_journal_enable(&q);
    int out = atoi(argv[1]);
    for (int i = 0;; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%d", i);
        uint64_t id;
        if (shmq_put(&q, &(shmq_iov_t){buf, (uint64_t)n}, 1, 1, 0, &id) != SHMQ_OK)
            continue;
        if (shmq_journal_commit(&q, th_after_ms(5000)) != SHMQ_OK)
            return 3;
        uint64_t rec[1] = {id};
        if (write(out, rec, sizeof rec) != sizeof rec)
            return 4;
    }
}

static void test_flusher_killed_mid_sync(void)
{
    fresh_dir();
    char path[128];
    th_path(path, sizeof path, "jkill");
    shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_ALWAYS, NULL, 0, NULL);
    CHECK(q != NULL);
    int p[2];
    CHECK(pipe(p) == 0);
    char wfd[16];
    snprintf(wfd, sizeof wfd, "%d", p[1]);
    pid_t kid = th_spawn("journal_mid_sync:20", "sender", path, wfd, NULL, NULL);
    CHECK(kid > 0);
    int st = th_wait(kid, 30000);
    close(p[1]);
    CHECK(th_killed(st));
    uint64_t confirmed = 0, id, last = 0;
    while (read(p[0], &id, sizeof id) == sizeof id) {
        confirmed++;
        last = id;
    }
    close(p[0]);
    CHECK(confirmed >= 18);
    /* the lock is stamped by the dead flusher: our sync steals it and covers everything */
    CHECK(shmq_journal_sync(q, th_after_ms(5000)) == SHMQ_OK);
    CHECK(q->jstate->blk->durable_pos == q->jstate->blk->write_pos);
    /* every confirmed message is in the journal */
    shmq_close(q);
    unlink(path);
    shmq_jreport_t rep;
    CHECK(shmq_journal_scan(jdir, 0, NULL, &rep, NULL, NULL) == SHMQ_OK);
    CHECK(rep.live >= confirmed);
    CHECK(rep.last_id >= last);
}

/* child: cycles of put (commit) + get on a small-segment journal, so appends, syncs, rotations
 * and recycling all happen; writes 'p'+id after each put's commit returned and 'g'+id after each get */
static int role_cycler(int argc, char **argv)
{
    (void)argc;
    shmq_seg_t q;
    memset(&q, 0, sizeof q);
    q.fd = -1;
    if (shmq_open(&q, argv[0], -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        return 2;
    shmq_journal_enable(&q);
    int out = atoi(argv[1]);
    char buf[2048];
    memset(buf, 'c', sizeof buf);
    for (int i = 0; i < 20000; i++) {
        uint64_t id;
        if (shmq_put(&q, &(shmq_iov_t){buf, 900}, 1, 1, 0, &id) != SHMQ_OK || shmq_journal_commit(&q, 0) != SHMQ_OK)
            return 3;
        uint8_t rec[9] = {'p'};
        memcpy(rec + 1, &id, 8);
        if (write(out, rec, 9) != 9)
            return 4;
        if (i % 50 == 49 && shmq_journal_prepare_spare(&q) != SHMQ_OK) /* what the maintenance thread does */
            return 7;
        if (i % 4 == 3)
            continue; /* some stay: retention keeps their segments */
        shmq_msg_t m;
        if (shmq_get_begin(&q, &m, 0) != SHMQ_OK)
            return 5;
        id = m.id;
        shmq_get_end(&q, &m);
        rec[0] = 'g';
        memcpy(rec + 1, &id, 8);
        if (write(out, rec, 9) != 9)
            return 4;
    }
    return 6; /* the crash point was never hit */
}

static void test_kill_at_every_journal_point(void)
{
    const char *pts[] = {"journal_mid_append", "journal_mid_sync", "journal_rotate_prepared", "journal_rotate_ended",
                         "journal_rotate_switched", "journal_mid_recycle", "journal_spare_built"};
    for (unsigned i = 0; i < sizeof pts / sizeof pts[0]; i++) {
        fresh_dir();
        char path[128];
        th_path(path, sizeof path, "jpt");
        shmq_seg_t *q = jq(path, 0, SHMQ_JMODE_ALWAYS, NULL, 0, NULL);
        CHECK(q != NULL);
        int p[2];
        CHECK(pipe(p) == 0);
        char wfd[16];
        snprintf(wfd, sizeof wfd, "%d", p[1]);
        pid_t kid = th_spawn(pts[i], "cycler", path, wfd, NULL, NULL);
        CHECK(kid > 0);
        int st = th_wait(kid, 60000);
        close(p[1]);
        if (!th_killed(st))
            fprintf(stderr, "%s: child status %d\n", pts[i], st);
        CHECK(th_killed(st));
        static uint8_t state[1 << 16]; /* by id: 1 put returned, 2 got */
        memset(state, 0, sizeof state);
        uint8_t rec[9];
        while (read(p[0], rec, 9) == 9) {
            uint64_t id;
            memcpy(&id, rec + 1, 8);
            CHECK(id < sizeof state);
            state[id] = rec[0] == 'p' ? 1 : 2;
        }
        close(p[0]);
        /* survivors go on: the dead holder's locks are taken over, rotation finishes */
        put_n(q, 0, 200, 900);
        for (int k = 0; k < 150; k++) {
            shmq_msg_t g;
            CHECK(shmq_get_begin(q, &g, 0) == SHMQ_OK);
            if (g.id < sizeof state)
                state[g.id] = 2; /* ours now: gone */
            shmq_get_end(q, &g);
        }
        CHECK(shmq_journal_sync(q, th_after_ms(5000)) == SHMQ_OK);
        shmq_close(q);
        unlink(path);
        shmq_jreport_t rep;
        q = jq(path, 0, SHMQ_JMODE_ALWAYS, &rep, 0, NULL);
        CHECK(q != NULL);
        CHECK_EQ(rep.corrupt, 0);
        static uint8_t live[1 << 16];
        memset(live, 0, sizeof live);
        shmq_msg_t m;
        while (shmq_get_begin(q, &m, 0) == SHMQ_OK) {
            CHECK(live[m.id < sizeof live ? m.id : 0] == 0); /* nothing twice */
            if (m.id < sizeof live)
                live[m.id] = 1;
            shmq_get_end(q, &m);
        }
        for (uint64_t id = 0; id < sizeof state; id++) {
            if (state[id] == 1 && !live[id])
                fprintf(stderr, "%s: id %llu lost (%llu live, torn %llu)\n", pts[i], (unsigned long long)id,
                        (unsigned long long)rep.live, (unsigned long long)rep.torn);
            if (state[id] == 1)
                CHECK(live[id]); /* every put whose commit returned and that was not got */
            if (state[id] == 2)
                CHECK(!live[id]); /* every get is gone */
        }
        shmq_close(q);
        unlink(path);
    }
}

static const th_role_t roles[] = {{"sender", role_sender}, {"cycler", role_cycler}, {NULL, NULL}};

int main(int argc, char **argv)
{
    th_child_dispatch(argc, argv, roles);
    RUN(test_recover_sent_minus_removed);
    RUN(test_rotation_and_retention);
    RUN(test_torn_tail_and_bitflip);
    RUN(test_stale_recycled_records_never_validate);
    RUN(test_ack_inflight_and_dedup);
    RUN(test_flusher_killed_mid_sync);
    RUN(test_kill_at_every_journal_point);
    if (jdir[0])
        rm_dir(jdir);
    TH_SUMMARY();
}
