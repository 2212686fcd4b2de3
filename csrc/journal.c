#define _GNU_SOURCE
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "atomic.h"
#include "crashpoint.h"
#include "crc32c.h"
#include "dedup.h"
#include "lease.h"
#include "lock.h"
#include "wait.h"
#include "queue_int.h"

#define JALIGN(x) SHMQ_ALIGN_UP((x), 8)
#define END_ROOM ((uint64_t)SHMQ_JREC_HDR)
#define LOCK_WAIT_NS (10ull * 1000000000ull) /* an append lock held this long: a stopped holder */

/* ------------------------------------------------------------ fault layer (tests) */
/* Read once at first bind. SHMQ_JOURNAL_EIO_AT=N: the N-th fdatasync of this process fails with
 * EIO. SHMQ_JOURNAL_ENOSPC_FILE=path: while path exists, creating a segment file fails with
 * ENOSPC. SHMQ_JOURNAL_SHADOW=dir: a simulated disk: before each fdatasync the file's bytes are
 * copied to dir (what a power loss would keep); SHMQ_JOURNAL_SHADOW_NOSYNC=1 skips the copies
 * (the negative control: a "sync" that syncs nothing). SHMQ_JOURNAL_SYNC_DELAY_US=N: a slow disk:
 * every fdatasync of a journal file (spares included) takes N microseconds more, which widens
 * every window that contains one (the spare race test). */
static int fault_ready;
static long fault_delay_us;
static long fault_eio_at;
static long fault_syncs;
static const char *fault_enospc;
static const char *fault_shadow;
static int fault_shadow_nosync;

static void fault_init(void)
{
    if (__atomic_load_n(&fault_ready, __ATOMIC_ACQUIRE))
        return;
    const char *s = getenv("SHMQ_JOURNAL_EIO_AT");
    fault_eio_at = s ? strtol(s, NULL, 10) : 0;
    fault_enospc = getenv("SHMQ_JOURNAL_ENOSPC_FILE");
    fault_shadow = getenv("SHMQ_JOURNAL_SHADOW");
    s = getenv("SHMQ_JOURNAL_SHADOW_NOSYNC");
    fault_shadow_nosync = s && *s == '1';
    s = getenv("SHMQ_JOURNAL_SYNC_DELAY_US");
    fault_delay_us = s ? strtol(s, NULL, 10) : 0;
    if (fault_delay_us < 0 || fault_delay_us > 1000000)
        fault_delay_us = 0;
    __atomic_store_n(&fault_ready, 1, __ATOMIC_RELEASE); /* release: the settings before the flag */
}

/* The simulated disk keeps bytes [0, limit) of the file as they are now; what lies past limit
 * stays as the previous sync left it (never covered by a completed sync). */
static void shadow_copy(int fd, const char *name, uint64_t limit)
{
    if (!fault_shadow)
        return;
    char dst[4096];
    snprintf(dst, sizeof dst, "%s/%s", fault_shadow, name);
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    int out = open(dst, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0)
        return;
    if (ftruncate(out, st.st_size) != 0) {
        close(out);
        return;
    }
    if (limit > (uint64_t)st.st_size)
        limit = (uint64_t)st.st_size;
    static __thread uint8_t buf[1 << 16];
    for (uint64_t off = 0; off < limit;) {
        size_t want = limit - off < sizeof buf ? (size_t)(limit - off) : sizeof buf;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n <= 0 || pwrite(out, buf, (size_t)n, (off_t)off) != n)
            break;
        off += (uint64_t)n;
    }
    close(out);
}

static void shadow_remove(const char *name)
{
    if (!fault_shadow)
        return;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", fault_shadow, name);
    unlink(p);
}

/* fdatasync through the fault layer. limit: the bytes this sync covers (UINT64_MAX: all);
 * flush: a sync of appended records (the negative control leaves those out of the shadow). */
static void fault_slow_disk(void)
{
    if (fault_delay_us > 0) {
        struct timespec ts = {fault_delay_us / 1000000, (fault_delay_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

static int j_fdatasync_ex(int fd, const char *name, uint64_t limit, int flush)
{
    fault_slow_disk();
    if (!(flush && fault_shadow_nosync))
        shadow_copy(fd, name, limit);
    if (fault_eio_at > 0 && __atomic_add_fetch(&fault_syncs, 1, __ATOMIC_SEQ_CST) == fault_eio_at) {
        errno = EIO;
        return -1;
    }
    return fdatasync(fd);
}

static int j_fdatasync(int fd, const char *name) { return j_fdatasync_ex(fd, name, UINT64_MAX, 0); }

/* ------------------------------------------------------------ files */
static void seg_name(char *out, size_t n, uint64_t seg, const char *ext) { snprintf(out, n, "%016llx.%s", (unsigned long long)seg, ext); }

static int dir_sync(shmq_journal_t *j)
{
    if (j->dir_fd < 0) {
        errno = j->err ? j->err : ENOENT;
        return -1;
    }
    return fsync(j->dir_fd);
}

static uint32_t salt_of(uint32_t base, uint64_t seg)
{
    uint32_t s = shmq_crc32c(base, &seg, sizeof seg);
    return s ? s : 1;
}

static void file_hdr(shmq_jfile_hdr_t *h, uint64_t magic, uint32_t salt, uint64_t seg, uint64_t size)
{
    memset(h, 0, sizeof *h);
    h->magic = magic;
    h->version = SHMQ_JOURNAL_VERSION;
    h->salt = salt;
    h->seg_no = seg;
    h->seg_size = size;
    h->created_ns = shmq_now_wall_ns();
    h->crc = shmq_crc32c(0, h, offsetof(shmq_jfile_hdr_t, crc));
}

static int write_all(int fd, const void *p, size_t n, off_t off)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = pwrite(fd, b, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* The next segment's file, ready to take records: a spare renamed, else a new zero-filled file
 * built under a temporary name. Nothing changes on failure (errno set). */
static int prepare_file(shmq_journal_t *j, uint64_t seg)
{
    shmq_jblk_t *b = j->blk;
    char name[64], path[SHMQ_JOURNAL_DIR_MAX + 80], tmp[SHMQ_JOURNAL_DIR_MAX + 80];
    seg_name(name, sizeof name, seg, "wal");
    snprintf(path, sizeof path, "%s/%s", j->dir, name);
    shmq_jfile_hdr_t h;
    file_hdr(&h, SHMQ_JFILE_MAGIC, salt_of(b->salt_base, seg), seg, j->seg_size);
    uint64_t spare = shmq_load_relaxed(&b->spare_seg);
    if (spare) {
        char sname[64];
        seg_name(sname, sizeof sname, spare, "spare");
        snprintf(tmp, sizeof tmp, "%s/%s", j->dir, sname);
        int fd = open(tmp, O_RDWR | O_CLOEXEC);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size == j->seg_size) {
            if (write_all(fd, &h, sizeof h, 0) == 0 && j_fdatasync(fd, sname) == 0 && rename(tmp, path) == 0) {
                shadow_remove(sname);
                shadow_copy(fd, name, UINT64_MAX);
                close(fd);
                shmq_store_relaxed(&b->spare_seg, 0);
                return dir_sync(j);
            }
        }
        if (fd >= 0)
            close(fd);
        unlink(tmp); /* a spare we cannot use: build a new file */
        shmq_store_relaxed(&b->spare_seg, 0);
    }
    if (fault_enospc && access(fault_enospc, F_OK) == 0) {
        errno = ENOSPC;
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s/.%016llx.tmp", j->dir, (unsigned long long)seg);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    static __thread uint8_t zeros[1 << 16];
    int rc = 0;
    for (uint64_t off = 0; off < j->seg_size && rc == 0; off += sizeof zeros) {
        uint64_t n = j->seg_size - off < sizeof zeros ? j->seg_size - off : sizeof zeros;
        rc = write_all(fd, zeros, n, (off_t)off); /* written once: later syncs flush data only */
    }
    if (rc == 0)
        rc = write_all(fd, &h, sizeof h, 0);
    if (rc == 0)
        rc = j_fdatasync(fd, name);
    if (rc == 0)
        rc = rename(tmp, path);
    int e = errno;
    close(fd);
    if (rc != 0) {
        unlink(tmp);
        errno = e;
        return -1;
    }
    shmq_fetch_add_relaxed(&b->segments_created, 1);
    SHMQ_CRASH_POINT(journal_rotate_prepared);
    return dir_sync(j);
}

static int map_segment(shmq_journal_t *j, uint64_t seg)
{
    if (j->map_seg == seg && j->map)
        return 0;
    if (j->map) {
        munmap(j->map, j->seg_size);
        close(j->map_fd);
        j->map = NULL;
        j->map_seg = 0;
    }
    char path[SHMQ_JOURNAL_DIR_MAX + 80];
    snprintf(path, sizeof path, "%s/%016llx.wal", j->dir, (unsigned long long)seg);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < j->seg_size) { /* untrusted: a file shorter than its size */
        close(fd);
        errno = EINVAL;
        return -1;
    }
    void *m = mmap(NULL, j->seg_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        close(fd);
        return -1;
    }
    j->map = m;
    j->map_fd = fd;
    j->map_seg = seg;
    return 0;
}

/* ------------------------------------------------------------ records */
static void put_rec(uint8_t *at, uint32_t salt, uint64_t lsn, uint16_t type, const void *a, uint32_t alen,
                    const void *bb, uint64_t blen)
{
    shmq_jrec_t *r = (shmq_jrec_t *)at;
    uint32_t len = (uint32_t)(SHMQ_JREC_HDR + alen + blen);
    r->lsn = lsn;
    r->salt = salt;
    r->type = type;
    r->flags = 0;
    if (alen)
        memcpy(at + SHMQ_JREC_HDR, a, alen);
    if (blen) {
        uint64_t half = blen / 2;
        memcpy(at + SHMQ_JREC_HDR + alen, bb, half);
        SHMQ_CRASH_POINT(journal_mid_append);
        memcpy(at + SHMQ_JREC_HDR + alen + half, (const uint8_t *)bb + half, blen - half);
    }
    r->len = len;
    uint32_t c = shmq_crc32c(0, &len, 4);
    r->crc = shmq_crc32c(c, at + 8, len - 8);
}

static int rec_crc_ok(const uint8_t *at, uint32_t len)
{
    uint32_t c = shmq_crc32c(0, &len, 4);
    return shmq_crc32c(c, at + 8, len - 8) == ((const shmq_jrec_t *)at)->crc;
}

static __thread uint64_t t_last_end; /* end position of this thread's last appended record */

/* Lowest id any descriptor still holds (consumer-gated retention); UINT64_MAX when empty. */
static uint64_t min_live_id(shmq_seg_t *q)
{
    uint64_t m = UINT64_MAX;
    shmq_area_t *a;
    for (uint32_t i = 0; (a = shmq_q_area_next(q, &i)) != NULL; i++) {
        for (uint32_t k = 0; k < a->n_desc; k++) {
            shmq_desc_t *d = shmq_q_desc(a, k);
            uint32_t st = shmq_desc_state(shmq_load_acquire(&d->word));
            if (st == SHMQ_D_FREE || st == SHMQ_D_RETURNING)
                continue;
            uint64_t id = shmq_load_relaxed(&d->id); /* a WRITING one's may be stale: smaller keeps more */
            if (id < m)
                m = id;
        }
    }
    return m;
}

/* Retire the segments before `cur` whose messages are all gone: the first becomes the spare,
 * the others are removed. Append lock held. */
static void retire(shmq_seg_t *q, shmq_journal_t *j, uint64_t cur)
{
    shmq_jblk_t *b = j->blk;
    uint64_t live = min_live_id(q);
    int changed = 0;
    for (uint64_t k = b->oldest_seg; k && k < cur; k++) {
        if (cur - k >= SHMQ_JOURNAL_CKPT_RING)
            break;
        uint64_t c = b->ckpt_next_id[(k + 1) % SHMQ_JOURNAL_CKPT_RING];
        if (c == 0 || c > live)
            break; /* a message put in segment k may still be here (or we do not know) */
        char name[64], path[SHMQ_JOURNAL_DIR_MAX + 80];
        seg_name(name, sizeof name, k, "wal");
        snprintf(path, sizeof path, "%s/%s", j->dir, name);
        int spare_done = 0;
        if (!b->spare_seg) {
            int fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                shmq_jfile_hdr_t h;
                file_hdr(&h, SHMQ_JSPARE_MAGIC, 0, k, j->seg_size); /* invalidate first: never replayed again */
                char sname[64], spath[SHMQ_JOURNAL_DIR_MAX + 80];
                seg_name(sname, sizeof sname, k, "spare");
                snprintf(spath, sizeof spath, "%s/%s", j->dir, sname);
                if (write_all(fd, &h, sizeof h, 0) == 0 && j_fdatasync(fd, name) == 0) {
                    SHMQ_CRASH_POINT(journal_mid_recycle);
                    if (rename(path, spath) == 0) {
                        shadow_remove(name);
                        b->spare_seg = k;
                        spare_done = 1;
                    }
                }
                close(fd);
            }
        }
        if (!spare_done) {
            if (unlink(path) != 0 && errno != ENOENT)
                break;
            shadow_remove(name);
        }
        b->oldest_seg = k + 1;
        changed = 1;
    }
    if (changed)
        dir_sync(j);
}

/* Move appends to segment seg+1. Append lock held; W is write_pos (in segment seg). */
static int rotate(shmq_seg_t *q, shmq_journal_t *j, uint64_t W)
{
    shmq_jblk_t *b = j->blk;
    uint64_t seg = W / j->seg_size, off = W % j->seg_size, next = seg + 1;
    if (prepare_file(j, next) != 0)
        return -1;
    /* END at write_pos: until write_pos moves it is scratch space, as every byte past it */
    put_rec(j->map + off, salt_of(b->salt_base, seg), 0, SHMQ_JREC_END, NULL, 0, NULL, 0);
    char name[64];
    seg_name(name, sizeof name, seg, "wal");
    if (j_fdatasync_ex(j->map_fd, name, UINT64_MAX, 1) != 0) { /* the old segment is complete on disk before the switch */
        int e = errno;
        __atomic_store_n(&b->failed_errno, e, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&b->fsync_errors, 1, __ATOMIC_RELAXED);
        errno = e;
        return -1;
    }
    SHMQ_CRASH_POINT(journal_rotate_ended);
    if (map_segment(j, next) != 0)
        return -1;
    shmq_jckpt_t ck = {.next_id = shmq_load_acquire(&q->hdr->next_id), .wall_ns = shmq_now_wall_ns(),
                       .qkind = q->hdr->kind, .qflags = q->hdr->flags};
    b->ckpt_next_id[next % SHMQ_JOURNAL_CKPT_RING] = ck.next_id;
    put_rec(j->map + SHMQ_JFILE_HDR, salt_of(b->salt_base, next), b->next_lsn++, SHMQ_JREC_CHECKPOINT, &ck, sizeof ck,
            NULL, 0);
    uint64_t nw = next * j->seg_size + SHMQ_JFILE_HDR + JALIGN(SHMQ_JREC_HDR + sizeof ck);
    shmq_store_release(&b->write_pos, nw); /* release: the checkpoint before the position past it */
    SHMQ_CRASH_POINT(journal_rotate_switched);
    retire(q, j, next);
    return 0;
}

static int lock_append(shmq_seg_t *q, shmq_journal_t *j)
{
    int rc = shmq_lock_try_once(q, &j->blk->append_lock, &j->append_busy);
    if (rc != SHMQ_OK)
        rc = shmq_lock_acquire(q, &j->blk->append_lock, &j->append_busy, shmq_now_mono_ns() + LOCK_WAIT_NS);
    /* SHMQ_EAGAIN (a dead holder): nothing to rebuild; whatever it wrote lies at or past write_pos */
    return rc == SHMQ_EAGAIN ? SHMQ_OK : rc;
}

/* Append one record (a: fixed part, b: payload). SHMQ_OK, SHMQ_EJOURNAL (q->err), SHMQ_ETOOBIG, SHMQ_TIMEOUT. */
static int append(shmq_seg_t *q, shmq_journal_t *j, uint16_t type, const void *a, uint32_t alen, const void *bb,
                  uint64_t blen)
{
    shmq_jblk_t *b = j->blk;
    uint64_t need = JALIGN(SHMQ_JREC_HDR + alen + blen);
    if (need + END_ROOM + SHMQ_JFILE_HDR + 64 > j->seg_size || need > UINT32_MAX)
        return SHMQ_ETOOBIG;
    int e = __atomic_load_n(&b->failed_errno, __ATOMIC_ACQUIRE);
    if (SHMQ_UNLIKELY(e)) {
        q->err = e;
        return SHMQ_EJOURNAL;
    }
    int rc = lock_append(q, j);
    if (rc != SHMQ_OK)
        return rc;
    uint64_t W = shmq_load_relaxed(&b->write_pos);
    uint64_t seg = W / j->seg_size, off = W % j->seg_size;
    /* untrusted: a position outside a segment's record space */
    if (off < SHMQ_JFILE_HDR || off + END_ROOM > j->seg_size) {
        rc = SHMQ_ECORRUPT;
        goto out;
    }
    if (map_segment(j, seg) != 0)
        goto sys;
    if (off + need + END_ROOM > j->seg_size) {
        if (rotate(q, j, W) != 0)
            goto sys;
        W = shmq_load_relaxed(&b->write_pos);
        seg = W / j->seg_size;
        off = W % j->seg_size;
    }
    put_rec(j->map + off, salt_of(b->salt_base, seg), b->next_lsn++, type, a, alen, bb, blen);
    b->records++;
    b->bytes += need;
    shmq_store_release(&b->write_pos, W + need); /* release: the record before the position past it */
    t_last_end = W + need;
    rc = SHMQ_OK;
    goto out;
sys:
    q->err = errno;
    j->err = errno;
    rc = SHMQ_EJOURNAL;
out:
    shmq_lock_release(q, &b->append_lock, &j->append_busy);
    return rc;
}

/* ------------------------------------------------------------ hooks */
static int hook_put(shmq_seg_t *q, const shmq_desc_t *d, const uint8_t *payload, uint64_t delay_ns)
{
    shmq_journal_t *j = q->journal;
    shmq_jput_t p;
    memset(&p, 0, sizeof p);
    uint64_t wall = shmq_now_wall_ns();
    p.id = d->id;
    p.timestamp_ns = d->timestamp_ns;
    p.due_wall_ns = delay_ns ? wall + delay_ns : 0;
    if (d->expire_ns) {
        uint64_t mono = shmq_now_mono_ns();
        p.expire_wall_ns = wall + (d->expire_ns > mono ? d->expire_ns - mono : 0) + 1;
    }
    p.size = d->size;
    p.hdr_size = d->hdr_size;
    p.kind = d->kind;
    p.priority = d->priority;
    p.flags = d->flags;
    return append(q, j, SHMQ_JREC_PUT, &p, sizeof p, payload, d->size);
}

static void hook_remove(shmq_seg_t *q, uint64_t id)
{
    /* a remove that cannot be recorded (a failed journal) only brings the message back after a
     * crash: at-least-once, never a loss */
    (void)append(q, q->journal, SHMQ_JREC_REMOVE, &id, sizeof id, NULL, 0);
}

static void hook_deliver(shmq_seg_t *q, uint64_t id) { (void)append(q, q->journal, SHMQ_JREC_DELIVER, &id, sizeof id, NULL, 0); }

static const shmq_journal_hooks_t hooks = {.put = hook_put, .remove = hook_remove, .deliver = hook_deliver};

/* ------------------------------------------------------------ region, bind */
static void region_init(void *ctx, uint8_t *base, uint64_t size)
{
    const shmq_journal_opts_t *o = ctx;
    shmq_jblk_t *b = (shmq_jblk_t *)base;
    (void)size;
    snprintf(b->dir, sizeof b->dir, "%s", o->dir);
    b->mode = o->mode;
    b->state = SHMQ_JSTATE_RECOVERING;
    b->seg_size = o->seg_size;
    b->interval_ns = o->interval_ns;
    uint32_t salt = 0;
    if (getrandom(&salt, sizeof salt, 0) != sizeof salt)
        salt = (uint32_t)shmq_now_wall_ns() ^ (uint32_t)getpid();
    b->salt_base = salt;
}

int shmq_journal_region(const shmq_journal_opts_t *o, shmq_region_req_t *req)
{
    if (!o->dir || o->dir[0] != '/' || strlen(o->dir) >= SHMQ_JOURNAL_DIR_MAX || o->mode < SHMQ_JMODE_ALWAYS ||
        o->mode > SHMQ_JMODE_NEVER || o->seg_size < SHMQ_JOURNAL_MIN_SEG || (o->seg_size % 4096) != 0)
        return SHMQ_EINVAL;
    req->kind = SHMQ_REGION_JOURNAL;
    req->size = SHMQ_ALIGN_UP(sizeof(shmq_jblk_t), 64);
    req->init = region_init;
    req->ctx = (void *)o;
    return SHMQ_OK;
}

shmq_journal_t *shmq_journal_of(shmq_seg_t *q) { return q->jstate; }

const char *shmq_journal_dir_of(shmq_seg_t *q) { return q->jstate ? q->jstate->dir : NULL; }

int shmq_journal_bind(shmq_seg_t *q)
{
    uint64_t size;
    uint8_t *base = shmq_seg_region(q, SHMQ_REGION_JOURNAL, &size);
    if (!base || size < sizeof(shmq_jblk_t))
        return SHMQ_ECORRUPT;
    shmq_jblk_t *b = (shmq_jblk_t *)base;
    /* untrusted: options read once into private copies and checked */
    uint64_t seg_size = b->seg_size;
    uint32_t mode = b->mode;
    if (memchr(b->dir, 0, sizeof b->dir) == NULL || b->dir[0] != '/' || mode < SHMQ_JMODE_ALWAYS ||
        mode > SHMQ_JMODE_NEVER || seg_size < SHMQ_JOURNAL_MIN_SEG || seg_size % 4096 || seg_size > (1ull << 40))
        return SHMQ_ECORRUPT;
    fault_init();
    shmq_journal_t *j = calloc(1, sizeof *j);
    if (!j)
        return SHMQ_ENOMEM;
    j->hk = &hooks;
    j->blk = b;
    memcpy(j->dir, b->dir, sizeof j->dir);
    j->dir[sizeof j->dir - 1] = 0;
    j->seg_size = seg_size;
    j->mode = mode;
    j->map_fd = -1;
    j->sync_fd = -1;
    /* A directory removed under a live queue does not stop an inspector (shmq ls) from opening
     * it: dir_fd stays -1 and every directory operation (rotation, claim) fails with its errno. */
    j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    j->err = j->dir_fd < 0 ? errno : 0;
    if (j->dir_fd >= 0)
        (void)flock(j->dir_fd, LOCK_SH | LOCK_NB); /* "in use": the creator's claim checks it (released at close) */
    q->jstate = j;
    return SHMQ_OK;
}

int shmq_journal_claim(shmq_seg_t *q)
{
    shmq_journal_t *j = q->jstate;
    if (!j)
        return SHMQ_EINVAL;
    if (j->dir_fd < 0) {
        q->err = j->err ? j->err : ENOENT;
        return SHMQ_EJOURNAL;
    }
    if (flock(j->dir_fd, LOCK_EX | LOCK_NB) != 0) {
        q->err = errno;
        return SHMQ_EJOURNAL;
    }
    return SHMQ_OK;
}

void shmq_journal_enable(shmq_seg_t *q) { q->journal = q->jstate; }

uint32_t shmq_journal_state(shmq_seg_t *q)
{
    shmq_journal_t *j = q->jstate;
    return j ? shmq_load_acquire(&j->blk->state) : 0;
}

void shmq_journal_close(shmq_seg_t *q)
{
    shmq_journal_t *j = q->jstate;
    q->journal = NULL;
    q->jstate = NULL;
    if (!j)
        return;
    if (j->map)
        munmap(j->map, j->seg_size);
    if (j->map_fd >= 0)
        close(j->map_fd);
    if (j->sync_fd >= 0)
        close(j->sync_fd);
    if (j->dir_fd >= 0)
        close(j->dir_fd);
    free(j);
}

int shmq_journal_start(shmq_seg_t *q, uint64_t last_seg, uint64_t next_lsn)
{
    shmq_journal_t *j = q->jstate;
    if (!j)
        return SHMQ_EINVAL;
    shmq_jblk_t *b = j->blk;
    uint64_t seg = last_seg + 1;
    if (prepare_file(j, seg) != 0 || map_segment(j, seg) != 0) {
        q->err = errno;
        return SHMQ_EJOURNAL;
    }
    shmq_jckpt_t ck = {.next_id = shmq_load_acquire(&q->hdr->next_id), .wall_ns = shmq_now_wall_ns(),
                       .qkind = q->hdr->kind, .qflags = q->hdr->flags};
    b->next_lsn = next_lsn ? next_lsn : 1;
    b->ckpt_next_id[seg % SHMQ_JOURNAL_CKPT_RING] = ck.next_id;
    put_rec(j->map + SHMQ_JFILE_HDR, salt_of(b->salt_base, seg), b->next_lsn++, SHMQ_JREC_CHECKPOINT, &ck, sizeof ck,
            NULL, 0);
    uint64_t W = seg * j->seg_size + SHMQ_JFILE_HDR + JALIGN(SHMQ_JREC_HDR + sizeof ck);
    b->oldest_seg = b->oldest_seg ? b->oldest_seg : seg;
    for (uint64_t k = b->oldest_seg; k < seg && seg - k < SHMQ_JOURNAL_CKPT_RING; k++)
        if (!b->ckpt_next_id[k % SHMQ_JOURNAL_CKPT_RING]) /* a number no file has: bound it by ours (keeps more) */
            b->ckpt_next_id[k % SHMQ_JOURNAL_CKPT_RING] = ck.next_id;
    b->write_pos = W;
    char name[64];
    seg_name(name, sizeof name, seg, "wal");
    if (j_fdatasync(j->map_fd, name) != 0) {
        q->err = errno;
        return SHMQ_EJOURNAL;
    }
    b->durable_pos = W;
    (void)flock(j->dir_fd, LOCK_SH | LOCK_NB); /* from the claim's exclusive lock back to shared */
    shmq_store_release(&b->state, SHMQ_JSTATE_READY); /* release: everything above before READY */
    q->journal = j;
    return SHMQ_OK;
}

/* ------------------------------------------------------------ sync */
#define SYNC_SLICE_NS 2000000ull /* a waiter looks at the flusher again after this long without a publish */

/* One flush: sync lock held. SHMQ_OK or SHMQ_EJOURNAL (sticky failure recorded). */
static int flush_locked(shmq_seg_t *q, shmq_journal_t *j)
{
    shmq_jblk_t *b = j->blk;
    uint64_t W = shmq_load_acquire(&b->write_pos); /* acquire: the records before W are complete */
    uint64_t seg = W / j->seg_size;
    char name[64];
    seg_name(name, sizeof name, seg, "wal");
    if (j->sync_seg != seg || j->sync_fd < 0) {
        if (j->sync_fd >= 0)
            close(j->sync_fd);
        char path[SHMQ_JOURNAL_DIR_MAX + 80];
        snprintf(path, sizeof path, "%s/%s", j->dir, name);
        j->sync_fd = open(path, O_RDWR | O_CLOEXEC);
        j->sync_seg = j->sync_fd >= 0 ? seg : 0;
        if (j->sync_fd < 0) {
            q->err = errno;
            return SHMQ_EJOURNAL;
        }
    }
    SHMQ_CRASH_POINT(journal_mid_sync);
    /* earlier segments were synced by the rotation that left them */
    if (j_fdatasync_ex(j->sync_fd, name, W % j->seg_size, 1) != 0) {
        int err = errno;
        __atomic_store_n(&b->failed_errno, err, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&b->fsync_errors, 1, __ATOMIC_RELAXED);
        q->err = err;
        return SHMQ_EJOURNAL;
    }
    if (W > shmq_load_relaxed(&b->durable_pos))
        shmq_store_release(&b->durable_pos, W); /* release: only after fdatasync returned 0 */
    __atomic_fetch_add(&b->sync_count, 1, __ATOMIC_RELAXED);
    shmq_store_relaxed(&b->last_sync_ns, shmq_now_mono_ns());
    return SHMQ_OK;
}

static int sync_to(shmq_seg_t *q, shmq_journal_t *j, uint64_t target, uint64_t deadline_ns)
{
    shmq_jblk_t *b = j->blk;
    for (;;) {
        int e = __atomic_load_n(&b->failed_errno, __ATOMIC_ACQUIRE);
        if (e) {
            q->err = e;
            return SHMQ_EJOURNAL; /* never a success after a failed sync (fsyncgate) */
        }
        if (shmq_load_acquire(&b->durable_pos) >= target)
            return SHMQ_OK;
        uint32_t seq = shmq_load_seq(&b->sync_seq); /* before the try: a publish after it changes the word */
        int rc = shmq_lock_try_once(q, &b->sync_lock, &j->sync_busy);
        if (rc != SHMQ_OK) {
            /* someone is flushing: wait for its publish */
            uint64_t now = shmq_now_mono_ns();
            if (deadline_ns != SHMQ_NO_DEADLINE && now >= deadline_ns)
                return SHMQ_TIMEOUT;
            uint64_t until = now + SYNC_SLICE_NS;
            if (deadline_ns < until)
                until = deadline_ns;
            int w = shmq_futex_wait(&b->sync_seq, seq, until);
            if (w == SHMQ_EINTR && q->poll_signals)
                return SHMQ_EINTR;
            if (shmq_load_seq(&b->sync_seq) != seq || shmq_load_acquire(&b->durable_pos) >= target)
                continue; /* published (or covered): look again */
            /* a slice without a publish: wait on the lock itself, which takes a dead flusher's */
            rc = shmq_lock_acquire(q, &b->sync_lock, &j->sync_busy, shmq_now_mono_ns() + SYNC_SLICE_NS);
            if (rc == SHMQ_TIMEOUT)
                continue;
            /* SHMQ_OK, or SHMQ_EAGAIN (stolen from a dead flusher: nothing to rebuild) */
        }
        if (shmq_load_acquire(&b->durable_pos) >= target || __atomic_load_n(&b->failed_errno, __ATOMIC_ACQUIRE)) {
            shmq_lock_release(q, &b->sync_lock, &j->sync_busy);
            continue;
        }
        rc = flush_locked(q, j);
        shmq_fetch_add_seq(&b->sync_seq, 1);     /* seq_cst: after durable_pos, before the wake */
        shmq_lock_release(q, &b->sync_lock, &j->sync_busy);
        shmq_futex_wake(&b->sync_seq, INT32_MAX);
        if (rc != SHMQ_OK)
            return rc;
    }
}

static __thread int t_defer;
void shmq_journal_defer(int defer) { t_defer = defer; }
int shmq_journal_deferred(void) { return t_defer; }
uint64_t shmq_journal_last_end(void) { return t_last_end; }

int shmq_journal_wait(shmq_seg_t *q, uint64_t pos, uint64_t deadline_ns)
{
    shmq_journal_t *j = q->jstate;
    if (!j)
        return SHMQ_EINVAL;
    return sync_to(q, j, pos, deadline_ns == 0 ? SHMQ_NO_DEADLINE : deadline_ns);
}

int shmq_journal_commit(shmq_seg_t *q, uint64_t deadline_ns)
{
    shmq_journal_t *j = q->journal;
    if (!j || t_defer)
        return SHMQ_OK;
    int e = __atomic_load_n(&j->blk->failed_errno, __ATOMIC_ACQUIRE);
    if (e) {
        q->err = e;
        return SHMQ_EJOURNAL;
    }
    if (j->mode != SHMQ_JMODE_ALWAYS)
        return SHMQ_OK;
    return sync_to(q, j, t_last_end, deadline_ns == 0 ? SHMQ_NO_DEADLINE : deadline_ns);
}

int shmq_journal_sync(shmq_seg_t *q, uint64_t deadline_ns)
{
    shmq_journal_t *j = q->jstate;
    if (!j)
        return SHMQ_EINVAL;
    return sync_to(q, j, shmq_load_acquire(&j->blk->write_pos), deadline_ns);
}

void shmq_journal_stats(shmq_seg_t *q, shmq_journal_stats_t *st)
{
    memset(st, 0, sizeof *st);
    shmq_journal_t *j = q->jstate;
    if (!j)
        return;
    shmq_jblk_t *b = j->blk;
    st->write_pos = shmq_load_acquire(&b->write_pos);
    st->durable_pos = shmq_load_acquire(&b->durable_pos);
    st->sync_count = shmq_load_relaxed(&b->sync_count);
    st->fsync_errors = shmq_load_relaxed(&b->fsync_errors);
    st->last_sync_ns = shmq_load_relaxed(&b->last_sync_ns);
    st->records = shmq_load_relaxed(&b->records);
    st->failed_errno = __atomic_load_n(&b->failed_errno, __ATOMIC_ACQUIRE);
    st->mode = j->mode;
    st->interval_ns = b->interval_ns;
    uint64_t oldest = shmq_load_relaxed(&b->oldest_seg), cur = st->write_pos / j->seg_size;
    st->segments = cur >= oldest && oldest ? cur - oldest + 1 : 0;
    st->bytes = st->segments * j->seg_size;
}

int shmq_journal_prepare_spare(shmq_seg_t *q)
{
    shmq_journal_t *j = q->jstate;
    if (!j || j->dir_fd < 0)
        return SHMQ_OK;
    shmq_jblk_t *b = j->blk;
    uint64_t W = shmq_load_acquire(&b->write_pos);
    if (shmq_load_relaxed(&b->spare_seg) || W % j->seg_size < j->seg_size / 2 ||
        shmq_load_acquire(&b->state) != SHMQ_JSTATE_READY)
        return SHMQ_OK;
    int lrc = shmq_lock_acquire(q, &b->spare_lock, &j->spare_busy, shmq_now_mono_ns() + 1000000ull);
    if (lrc == SHMQ_TIMEOUT)
        return SHMQ_OK; /* another process builds one; a dead builder's lock is taken (SHMQ_EAGAIN) */
    if (shmq_load_relaxed(&b->spare_seg)) { /* built by the holder we waited for */
        shmq_lock_release(q, &b->spare_lock, &j->spare_busy);
        return SHMQ_OK;
    }
    uint64_t n = W / j->seg_size + 1; /* named after the segment it will most likely become */
    char tmp[SHMQ_JOURNAL_DIR_MAX + 80], path[SHMQ_JOURNAL_DIR_MAX + 80];
    /* its own temporary name: a rotation may be building .<n>.tmp at the same time */
    snprintf(tmp, sizeof tmp, "%s/.%016llx.spt", j->dir, (unsigned long long)n);
    snprintf(path, sizeof path, "%s/%016llx.spare", j->dir, (unsigned long long)n);
    int rc = SHMQ_OK;
    int fd = (fault_enospc && access(fault_enospc, F_OK) == 0) ? (errno = ENOSPC, -1)
                                                                : open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        static __thread uint8_t zeros[1 << 16];
        int w = 0;
        for (uint64_t off = 0; off < j->seg_size && w == 0; off += sizeof zeros) {
            uint64_t k = j->seg_size - off < sizeof zeros ? j->seg_size - off : sizeof zeros;
            w = write_all(fd, zeros, k, (off_t)off);
        }
        shmq_jfile_hdr_t h;
        file_hdr(&h, SHMQ_JSPARE_MAGIC, 0, n, j->seg_size);
        if (w == 0)
            w = write_all(fd, &h, sizeof h, 0);
        if (w == 0) {
            fault_slow_disk();
            w = fdatasync(fd);
        }
        int e = errno;
        close(fd);
        if (w != 0) {
            unlink(tmp);
            errno = e;
            fd = -1;
        }
    }
    if (fd < 0) {
        q->err = errno;
        rc = SHMQ_EJOURNAL;
    } else if (lock_append(q, j) == SHMQ_OK) {
        /* Rename and publish under the append lock, never outside it. The file was built slowly
         * (a zero fill and an fdatasync), and meanwhile appends may have moved past segment n,
         * retired it, and made it the spare under the name n.spare: a rename outside the lock
         * could replace that file while a rotation holds it open to rewrite its header, and the
         * rotation's rename would then put this file, still marked spare, in place as the live
         * segment, whose records recovery would ignore. Rotation and retirement touch spare
         * files only under the append lock, so here nothing else does. */
        SHMQ_CRASH_POINT(journal_spare_built);
        if (!b->spare_seg && rename(tmp, path) == 0) {
            b->spare_seg = n;
            shmq_fetch_add_relaxed(&b->segments_created, 1);
        } else {
            unlink(tmp); /* a retired file became the spare meanwhile (or the rename failed) */
        }
        shmq_lock_release(q, &b->append_lock, &j->append_busy);
        dir_sync(j);
    } else {
        unlink(tmp);
    }
    shmq_lock_release(q, &b->spare_lock, &j->spare_busy);
    return rc;
}

uint32_t shmq_journal_stats_mode(shmq_seg_t *q) { return q->jstate ? q->jstate->mode : 0; }

int shmq_journal_on_tmpfs(const char *dir)
{
    struct statfs s;
    if (statfs(dir, &s) != 0)
        return -1;
    return s.f_type == 0x01021994 /* TMPFS_MAGIC */ || s.f_type == 0x858458f6 /* RAMFS_MAGIC */;
}

/* ------------------------------------------------------------ scan and recovery */
typedef struct {
    uint64_t id;
    const shmq_jput_t *put; /* the first PUT record seen for this id */
    const uint8_t *payload;
    uint32_t deliveries;
    uint8_t removed;
} jent_t;

/* The messages of a scan, by id. Entries are made by PUT records only: a message's put precedes
 * every REMOVE and DELIVER of it in lsn order (queue.c appends the put before READY), so one of
 * those for an id without an entry is about a message put in a retired segment, and is dropped.
 * Ids are dense and mostly rising (next_id order, give or take producers that waited for the
 * append lock), so a direct window dmap[id - dbase] finds almost every id, with no hashing and
 * with the locality of the journal's own order, and walking the window gives id order without a
 * sort. Ids outside the window (below its base, or so far above it that growing it would not be
 * dense: an id put by a producer stalled a long time, or garbage that passed the CRC) go to an
 * open-addressing hash, sorted on their own and merged at the walk. */
#define DWIN_SLACK 65536u /* ids this far below the first put still fit the window */

typedef struct {
    jent_t *ents; /* first-seen order */
    uint64_t n, cap;
    uint32_t *dmap; /* entry index + 1, 0 = none */
    uint64_t dbase, dcap;
    int dset;
    uint64_t *slots; /* the hash: entry index + 1, 0 = empty */
    uint64_t nslots, nhash;
} jtab_t;

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static void hash_put(uint64_t *s, uint64_t ns, const jtab_t *t, uint64_t idx)
{
    uint64_t h = hash64(t->ents[idx].id) & (ns - 1);
    while (s[h])
        h = (h + 1) & (ns - 1);
    s[h] = idx + 1;
}

static int hash_grow(jtab_t *t)
{
    uint64_t ns = t->nslots ? t->nslots * 2 : 1024;
    uint64_t *s = calloc(ns, sizeof *s);
    if (!s)
        return -1;
    for (uint64_t i = 0; i < t->nslots; i++)
        if (t->slots[i])
            hash_put(s, ns, t, t->slots[i] - 1);
    free(t->slots);
    t->slots = s;
    t->nslots = ns;
    return 0;
}

static jent_t *tab_find(const jtab_t *t, uint64_t id)
{
    if (t->dset && id >= t->dbase && id - t->dbase < t->dcap) {
        uint32_t k = t->dmap[id - t->dbase];
        if (k)
            return &t->ents[k - 1];
    }
    if (t->nhash) {
        uint64_t h = hash64(id) & (t->nslots - 1);
        while (t->slots[h]) {
            jent_t *e = &t->ents[t->slots[h] - 1];
            if (e->id == id)
                return e;
            h = (h + 1) & (t->nslots - 1);
        }
    }
    return NULL;
}

/* The entry of id, made if new. NULL: out of memory. */
static jent_t *tab_add(jtab_t *t, uint64_t id)
{
    jent_t *e = tab_find(t, id);
    if (e)
        return e;
    if (t->n == t->cap) {
        uint64_t nc = t->cap ? t->cap * 2 : 1024;
        if (nc >= UINT32_MAX)
            return NULL;
        jent_t *ne = realloc(t->ents, nc * sizeof *ne);
        if (!ne)
            return NULL;
        t->ents = ne;
        t->cap = nc;
    }
    if (!t->dset) {
        t->dbase = id > DWIN_SLACK ? id - DWIN_SLACK : 0;
        t->dset = 1;
    }
    uint64_t idx = t->n;
    int direct = 0;
    if (id >= t->dbase) {
        uint64_t off = id - t->dbase;
        /* dense enough: the window stays within a few times the entries (4 bytes per id) */
        if (off < t->dcap)
            direct = 1;
        else if (off < 8 * (t->n + DWIN_SLACK)) {
            uint64_t nc = t->dcap ? t->dcap : 2 * DWIN_SLACK;
            while (nc <= off)
                nc *= 2;
            uint32_t *nd = realloc(t->dmap, nc * sizeof *nd);
            if (!nd)
                return NULL;
            memset(nd + t->dcap, 0, (nc - t->dcap) * sizeof *nd);
            t->dmap = nd;
            t->dcap = nc;
            direct = 1;
        }
    }
    if (!direct && (t->nhash + 1) * 2 > t->nslots && hash_grow(t) != 0)
        return NULL;
    e = &t->ents[idx];
    memset(e, 0, sizeof *e);
    e->id = id;
    t->n++;
    if (direct)
        t->dmap[id - t->dbase] = (uint32_t)(idx + 1);
    else {
        hash_put(t->slots, t->nslots, t, idx);
        t->nhash++;
    }
    return e;
}

static int cmp_ent_id(const void *a, const void *b, void *ctx)
{
    const jent_t *ents = ctx;
    uint64_t x = ents[*(const uint32_t *)a].id, y = ents[*(const uint32_t *)b].id;
    return x < y ? -1 : x > y;
}

/* Every entry's index in id order (*out, t->n of them, to free). -1: out of memory. */
static int tab_order(const jtab_t *t, uint32_t **out)
{
    uint32_t *ord = malloc((t->n ? t->n : 1) * sizeof *ord), *hs = NULL;
    if (!ord)
        return -1;
    uint64_t nh = 0, k = 0, hi = 0;
    if (t->nhash) {
        hs = malloc(t->nhash * sizeof *hs);
        if (!hs) {
            free(ord);
            return -1;
        }
        for (uint64_t i = 0; i < t->nslots; i++)
            if (t->slots[i])
                hs[nh++] = (uint32_t)(t->slots[i] - 1);
        qsort_r(hs, nh, sizeof *hs, cmp_ent_id, t->ents);
    }
    for (uint64_t d = 0; d < t->dcap; d++) {
        uint32_t x = t->dmap[d];
        if (!x)
            continue;
        uint64_t id = t->dbase + d;
        while (hi < nh && t->ents[hs[hi]].id < id) /* merge: the hashed ids below this one */
            ord[k++] = hs[hi++];
        ord[k++] = x - 1;
    }
    while (hi < nh)
        ord[k++] = hs[hi++];
    free(hs);
    *out = ord;
    return 0;
}

typedef struct {
    uint64_t seg;
    int fd;
    uint8_t *map;
    uint64_t size;
    uint32_t salt;
    int valid;          /* header validated */
    uint64_t end_off;   /* where the valid records end (the END record's offset, or the first bad byte) */
    int has_end;
    uint64_t nrecs;
} jfile_t;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}


/* untrusted: a record at off of file f that validates (bounds, salt, crc, type). */
static int rec_at(const jfile_t *f, uint64_t off, const shmq_jrec_t **out)
{
    if (off + SHMQ_JREC_HDR > f->size)
        return 0;
    const shmq_jrec_t *r = (const shmq_jrec_t *)(f->map + off);
    if (r->len < SHMQ_JREC_HDR || r->len > f->size - off || r->salt != f->salt || r->type == 0 ||
        r->type > SHMQ_JREC_MAX || r->flags != 0)
        return 0;
    if (!rec_crc_ok(f->map + off, r->len))
        return 0;
    *out = r;
    return 1;
}

/* The next offset >= off in f where a valid record starts, or 0. */
_Static_assert(offsetof(shmq_jrec_t, len) == 0, "resync's zero skip: a record starts with its len");

static uint64_t resync(const jfile_t *f, uint64_t off)
{
    const shmq_jrec_t *r;
    off = JALIGN(off);
    for (;;) {
        /* A record's first 4 bytes, its len, are never 0: when the 64 bytes at off are all
         * zero, no record starts in them, and they are skipped at once (the unused tail of the
         * last segment is most of a scan's bytes otherwise). */
        while (off % 64 == 0 && off + 64 + SHMQ_JREC_HDR <= f->size) {
            const uint64_t *w = (const uint64_t *)(f->map + off);
            uint64_t any = 0;
            for (int k = 0; k < 8; k++)
                any |= w[k];
            if (any)
                break;
            off += 64;
        }
        if (off + SHMQ_JREC_HDR > f->size)
            break;
        const shmq_jrec_t *c = (const shmq_jrec_t *)(f->map + off);
        if (c->salt == f->salt && rec_at(f, off, &r)) /* the salt first: a cheap filter */
            return off;
        off += 8;
    }
    return 0;
}

static void patch_rec(jfile_t *f, uint64_t off, uint16_t type, uint64_t span)
{
    /* recovery's own write into an old segment (through pwrite: the scan's mapping is read-only) */
    uint8_t buf[SHMQ_JREC_HDR];
    shmq_jrec_t *r = (shmq_jrec_t *)buf;
    uint32_t len = (uint32_t)(type == SHMQ_JREC_PAD ? span : SHMQ_JREC_HDR);
    if (type == SHMQ_JREC_PAD) {
        /* a PAD covers span bytes of garbage: its crc covers them as they are now */
        r->len = len;
        r->lsn = 0;
        r->salt = f->salt;
        r->type = type;
        r->flags = 0;
        uint32_t c = shmq_crc32c(0, &len, 4);
        c = shmq_crc32c(c, buf + 8, SHMQ_JREC_HDR - 8);
        c = shmq_crc32c(c, f->map + off + SHMQ_JREC_HDR, span - SHMQ_JREC_HDR);
        r->crc = c;
    } else {
        memset(buf, 0, sizeof buf);
        put_rec(buf, f->salt, 0, type, NULL, 0, NULL, 0);
    }
    write_all(f->fd, buf, sizeof buf, (off_t)off);
}

int shmq_journal_scan(const char *dir, uint32_t flags, shmq_seg_t *q, shmq_jreport_t *rep, shmq_jprogress_fn progress,
                      void *ctx)
{
    uint64_t t0 = shmq_now_mono_ns();
    memset(rep, 0, sizeof *rep);
    DIR *d = opendir(dir);
    if (!d) {
        rep->err = errno;
        return SHMQ_ESYS;
    }
    uint64_t *segs = NULL, nseg = 0, capseg = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (strlen(n) == 20 && strcmp(n + 16, ".wal") == 0 && strspn(n, "0123456789abcdef") == 16) {
            if (nseg == capseg) {
                capseg = capseg ? capseg * 2 : 64;
                uint64_t *ns = realloc(segs, capseg * sizeof *ns);
                if (!ns) {
                    free(segs);
                    closedir(d);
                    return SHMQ_ENOMEM;
                }
                segs = ns;
            }
            segs[nseg++] = strtoull(n, NULL, 16);
        } else if ((flags & SHMQ_JSCAN_REPAIR) && strlen(n) == 22 && strcmp(n + 16, ".spare") == 0) {
            unlinkat(dirfd(d), n, 0); /* a spare of the previous life: the new one starts without */
        } else if ((flags & SHMQ_JSCAN_REPAIR) && n[0] == '.' && strlen(n) == 21 &&
                   (strcmp(n + 17, ".tmp") == 0 || strcmp(n + 17, ".spt") == 0)) {
            unlinkat(dirfd(d), n, 0); /* a segment file a rotation did not finish building */
        }
    }
    closedir(d);
    if (nseg)
        qsort(segs, nseg, sizeof *segs, cmp_u64);
    jfile_t *files = calloc(nseg ? nseg : 1, sizeof *files);
    jtab_t tab = {0};
    uint32_t *order = NULL;
    int rc = SHMQ_OK;
    if (!files) {
        free(segs);
        return SHMQ_ENOMEM;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < nseg; i++) {
        jfile_t *f = &files[i];
        f->seg = segs[i];
        f->fd = -1;
        char path[SHMQ_JOURNAL_DIR_MAX + 80];
        snprintf(path, sizeof path, "%s/%016llx.wal", dir, (unsigned long long)f->seg);
        f->fd = open(path, ((flags & SHMQ_JSCAN_REPAIR) ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        struct stat st;
        if (f->fd < 0 || fstat(f->fd, &st) != 0) {
            rep->err = errno;
            rc = SHMQ_ESYS;
            goto done;
        }
        f->size = (uint64_t)st.st_size;
        if (f->size < SHMQ_JFILE_HDR + SHMQ_JREC_HDR)
            continue; /* untrusted: too short to be ours */
        f->map = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            rep->err = errno;
            rc = SHMQ_ESYS;
            goto done;
        }
        const shmq_jfile_hdr_t *h = (const shmq_jfile_hdr_t *)f->map;
        /* untrusted: magic, crc, version, the name it was given, and its size */
        if (h->magic == SHMQ_JFILE_MAGIC && h->version == SHMQ_JOURNAL_VERSION &&
            h->crc == shmq_crc32c(0, h, offsetof(shmq_jfile_hdr_t, crc)) && h->seg_no == f->seg &&
            h->seg_size == f->size) {
            f->valid = 1;
            f->salt = h->salt;
            total += f->size;
        } else {
            rep->files_ignored++;
        }
    }
    uint64_t prev_lsn = 0, done_bytes = 0, last_progress = 0;
    for (uint64_t i = 0; i < nseg; i++) {
        jfile_t *f = &files[i];
        if (!f->valid)
            continue;
        uint64_t off = SHMQ_JFILE_HDR;
        for (;;) {
            const shmq_jrec_t *r;
            int ok = rec_at(f, off, &r);
            if (ok && r->type != SHMQ_JREC_END && r->type != SHMQ_JREC_PAD && r->lsn <= prev_lsn)
                ok = 0; /* untrusted: out of order (a stale record that passed the other checks) */
            if (!ok) {
                /* the end of what validates here: a tail, or corruption when valid records follow */
                uint64_t at = resync(f, off + 8), later_seg = 0;
                if (!at) {
                    for (uint64_t k = i + 1; k < nseg && !later_seg; k++) {
                        const shmq_jrec_t *r2;
                        if (files[k].valid && rec_at(&files[k], SHMQ_JFILE_HDR, &r2) && r2->type != SHMQ_JREC_END)
                            later_seg = k + 1;
                    }
                }
                if (!at && !later_seg) { /* the torn tail: cut here */
                    f->end_off = off;
                    /* a torn record of this incarnation (its salt), not zeros or an older one's bytes */
                    const shmq_jrec_t *t = (const shmq_jrec_t *)(f->map + off);
                    if (off + SHMQ_JREC_HDR <= f->size && (t->salt == f->salt || t->len != 0)) {
                        uint64_t span = t->len >= SHMQ_JREC_HDR && t->len <= f->size - off ? t->len : SHMQ_JREC_HDR;
                        if (t->salt == f->salt || t->lsn == prev_lsn + 1) {
                            rep->torn++;
                            rep->torn_off = off;
                            rep->torn_seg = f->seg;
                            rep->truncated_bytes += span;
                        }
                    }
                    if ((flags & SHMQ_JSCAN_REPAIR) && off + SHMQ_JREC_HDR <= f->size) {
                        patch_rec(f, off, SHMQ_JREC_END, 0);
                        f->has_end = 1;
                    }
                    break;
                }
                rep->corrupt++;
                if (!rep->corrupt_seg) {
                    rep->corrupt_seg = f->seg;
                    rep->corrupt_off = off;
                }
                if (!(flags & SHMQ_JSCAN_SKIP)) {
                    rc = SHMQ_ECORRUPT;
                    goto done;
                }
                if (at) {
                    rep->skipped_bytes += at - off;
                    if ((flags & SHMQ_JSCAN_REPAIR) && at - off >= SHMQ_JREC_HDR)
                        patch_rec(f, off, SHMQ_JREC_PAD, at - off);
                    off = at;
                    continue;
                }
                rep->skipped_bytes += f->size - off; /* the rest of this file */
                f->end_off = off;
                if ((flags & SHMQ_JSCAN_REPAIR) && off + SHMQ_JREC_HDR <= f->size) {
                    patch_rec(f, off, SHMQ_JREC_END, 0);
                    f->has_end = 1;
                }
                break;
            }
            const uint8_t *p = (const uint8_t *)r + SHMQ_JREC_HDR;
            uint64_t plen = r->len - SHMQ_JREC_HDR;
            if (r->type == SHMQ_JREC_END) {
                f->end_off = off;
                f->has_end = 1;
                break;
            }
            if (r->type != SHMQ_JREC_PAD) {
                prev_lsn = r->lsn;
                rep->records++;
                f->nrecs++;
            }
            rep->bytes += JALIGN(r->len);
            jent_t *e;
            switch (r->type) {
            case SHMQ_JREC_PUT: {
                const shmq_jput_t *pp = (const shmq_jput_t *)p;
                if (plen < sizeof *pp || plen - sizeof *pp != pp->size) /* untrusted */
                    break;
                rep->puts++;
                e = tab_add(&tab, pp->id);
                if (!e) {
                    rc = SHMQ_ENOMEM;
                    goto done;
                }
                if (!e->put) {
                    e->put = pp;
                    e->payload = p + sizeof *pp;
                }
                if (pp->id >= rep->next_id)
                    rep->next_id = pp->id + 1;
                break;
            }
            case SHMQ_JREC_REMOVE:
            case SHMQ_JREC_DELIVER: {
                uint64_t id;
                if (plen < 8)
                    break;
                memcpy(&id, p, 8);
                e = tab_find(&tab, id); /* NULL: its put lay in a retired segment */
                if (r->type == SHMQ_JREC_REMOVE) {
                    rep->removes++;
                    if (e)
                        e->removed = 1;
                } else {
                    rep->delivers++;
                    if (e)
                        e->deliveries++;
                }
                if (id >= rep->next_id)
                    rep->next_id = id + 1;
                break;
            }
            case SHMQ_JREC_CHECKPOINT: {
                shmq_jckpt_t ck;
                if (plen < sizeof ck)
                    break;
                memcpy(&ck, p, sizeof ck);
                if (ck.next_id > rep->next_id)
                    rep->next_id = ck.next_id;
                rep->qkind = ck.qkind;
                rep->qflags = ck.qflags;
                break;
            }
            default:
                break; /* SUBPOS (reserved) and PAD: nothing for a queue */
            }
            off += JALIGN(r->len);
        }
        rep->segments++;
        if (!rep->first_seg)
            rep->first_seg = f->seg;
        rep->last_seg = f->seg;
        done_bytes += f->size;
        if (progress && done_bytes - last_progress >= (64u << 20)) {
            progress(ctx, done_bytes, total);
            last_progress = done_bytes;
        }
    }
    rep->next_lsn = prev_lsn + 1;
    if (nseg)
        rep->last_seg = segs[nseg - 1] > rep->last_seg ? segs[nseg - 1] : rep->last_seg;
    /* live messages, in id order */
    if (tab_order(&tab, &order) != 0) {
        rc = SHMQ_ENOMEM;
        goto done;
    }
    free(tab.slots);
    tab.slots = NULL;
    free(tab.dmap);
    tab.dmap = NULL;
    for (uint64_t i = 0; i < tab.n; i++) {
        jent_t *e = &tab.ents[order[i]];
        if (e->put && !e->removed) {
            if (!rep->live)
                rep->first_id = e->id;
            rep->live++;
            rep->last_id = e->id;
        }
    }
    if (q) {
        uint64_t now_wall = shmq_now_wall_ns(), now_mono = shmq_now_mono_ns();
        shmq_ack_t *k = shmq_ack_of(q);
        uint64_t window = k ? k->blk->dedup_window_ns : 0;
        for (uint64_t i = 0; i < tab.n && rc == SHMQ_OK; i++) {
            jent_t *e = &tab.ents[order[i]];
            const shmq_jput_t *pp = e->put;
            if (!pp)
                continue;
            int dedup = k && (pp->flags & SHMQ_DF_DEDUP) && pp->size >= SHMQ_ACK_META + 16;
            const uint8_t *key = dedup ? e->payload + SHMQ_ACK_META : NULL;
            if (dedup && pp->timestamp_ns + window > now_wall) { /* its dedup id is still remembered */
                uint64_t nid = 0;
                int dup = 0;
                shmq_store_relaxed(&q->hdr->next_id, e->id);
                if (shmq_dedup_begin(q, key, 0, &nid, &dup) == SHMQ_OK && !dup) {
                    shmq_dedup_finish(q, key, 1);
                    if (e->removed)
                        shmq_dedup_settle(q, key, nid);
                    rep->dedup_restored++;
                }
            }
            if (e->removed)
                continue;
            shmq_put_ext_t x;
            memset(&x, 0, sizeof x);
            x.id = e->id;
            x.priority = pp->priority;
            x.flags = pp->flags & SHMQ_DF_DEDUP;
            x.hdr_size = pp->hdr_size;
            x.delivery_count = e->deliveries > 65535 ? 65535 : e->deliveries;
            if (pp->due_wall_ns > now_wall)
                x.delay_ns = pp->due_wall_ns - now_wall;
            if (pp->expire_wall_ns)
                x.expire_ns = now_mono + (pp->expire_wall_ns > now_wall ? pp->expire_wall_ns - now_wall : 1);
            shmq_iov_t v = {e->payload, pp->size};
            uint64_t got = 0;
            int prc = shmq_q_put(q, &v, 1, pp->kind, 0, &got, &x);
            if (prc != SHMQ_OK) {
                rc = prc == SHMQ_TIMEOUT ? SHMQ_FULL : prc;
                break;
            }
            rep->replayed++;
        }
        if (rep->next_id > shmq_load_relaxed(&q->hdr->next_id) || rc == SHMQ_OK)
            shmq_store_relaxed(&q->hdr->next_id, rep->next_id > 1 ? rep->next_id : 1);
        if (rc == SHMQ_OK && (flags & SHMQ_JSCAN_REPAIR)) {
            /* the files that will stay: from the first with a record; fsync what we patched */
            for (uint64_t i = 0; i < nseg; i++) {
                jfile_t *f = &files[i];
                char name[64];
                seg_name(name, sizeof name, f->seg, "wal");
                if (!f->valid || f->nrecs == 0) {
                    char path[SHMQ_JOURNAL_DIR_MAX + 80];
                    snprintf(path, sizeof path, "%s/%s", dir, name);
                    unlink(path); /* empty or stale: nothing in it is needed */
                    shadow_remove(name);
                    continue;
                }
                j_fdatasync(f->fd, name);
            }
            shmq_journal_t *j = q->jstate;
            if (j) {
                fsync(j->dir_fd);
                for (uint64_t i = 0; i < nseg; i++) {
                    jfile_t *f = &files[i];
                    if (!f->valid || f->nrecs == 0)
                        continue;
                    if (!j->blk->oldest_seg)
                        j->blk->oldest_seg = f->seg;
                    /* the file's checkpoint: its first record */
                    const shmq_jrec_t *r;
                    if (rec_at(f, SHMQ_JFILE_HDR, &r) && r->type == SHMQ_JREC_CHECKPOINT) {
                        shmq_jckpt_t ck;
                        memcpy(&ck, (const uint8_t *)r + SHMQ_JREC_HDR, sizeof ck);
                        j->blk->ckpt_next_id[f->seg % SHMQ_JOURNAL_CKPT_RING] = ck.next_id;
                    }
                }
            }
        }
    }
done:
    if (progress && total)
        progress(ctx, total, total);
    for (uint64_t i = 0; i < nseg; i++) {
        if (files[i].map)
            munmap(files[i].map, files[i].size);
        if (files[i].fd >= 0)
            close(files[i].fd);
    }
    free(files);
    free(segs);
    free(tab.ents);
    free(tab.slots);
    free(tab.dmap);
    free(order);
    rep->elapsed_ns = shmq_now_mono_ns() - t0;
    return rc;
}
