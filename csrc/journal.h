/* journal.h - a write-ahead journal of a named queue: framed records in preallocated segment
 * files, group commit, consumer-gated retention, recovery (DESIGN §7, docs/internals/journal.md).
 *
 * Records: 8-byte aligned frames  len:u32 | crc32c:u32 | lsn:u64 | salt:u32 | type:u16 | flags:u16
 * | payload, where crc covers len and every byte after the crc field up to len. salt is the one
 * of the segment file's incarnation (its header), so the records an old incarnation of a recycled
 * file left behind never validate; lsn strictly increases over the whole journal (data records).
 *
 * Files: DIR/<16 hex seg>.wal, seg_size bytes each, zero-filled once at creation (so a later
 * fdatasync flushes data, not extent metadata), a 4096-byte header, records from there. A file
 * whose records all belong to removed messages is renamed to <seg>.spare (header invalidated
 * first) and reused as the next segment; the directory is fsynced after every create, rename and
 * remove. Every segment starts with a CHECKPOINT record (the next message id at that moment) and
 * ends with an END record written before the next segment takes over.
 *
 * Shared state: the region SHMQ_REGION_JOURNAL (shmq_jblk_t) in the queue segment: the append
 * position, the durable position, the sync lock and the counters. Process-local state: struct
 * shmq_journal, reached from seg->journal, which is NULL on queues without a journal (the hot
 * paths of queue.c and lease.c pay one predictable branch for it).
 *
 * Who may call what concurrently: any thread of any attached process. Appends are serialised by
 * the robust append lock (lock.h: never held across a wait for another party except the
 * rotation's file creation, which is rare); syncs by the robust sync lock.
 *
 * Group commit (fsync="always"): a sender's record ends at position E; it waits until
 * durable_pos >= E. A waiter that finds the sync lock free takes it (try, no waiting) and becomes
 * the flusher: it reads the append position W, fdatasyncs, publishes durable_pos = W, bumps
 * sync_seq and wakes every waiter: one sync covers every record appended before it started.
 * A waiter that finds the lock held sleeps on sync_seq (2 ms slices) and looks again; after a
 * slice without a publish it waits on the lock itself (lock.h), which steals the lock of a dead
 * flusher. A flusher killed mid-sync: the next waiter steals the lock and syncs again, and since
 * durable_pos moves only after a successful fdatasync, nothing is confirmed that was not synced.
 * An fdatasync error is sticky (failed_errno): every later durable commit fails (fsyncgate).
 *
 * Crash windows (SIGKILL at the named point; who finishes):
 *   journal_mid_append      a record half written above write_pos: the next append overwrites it;
 *                           recovery sees a torn tail (crc) and truncates it
 *   journal_mid_sync        sync lock held, durable_pos not advanced: the next waiter syncs again
 *   journal_rotate_prepared next segment file exists, empty; END not written: the next append
 *                           rotates again (the file is reused); recovery drops empty files
 *   journal_rotate_ended    END written and synced, write_pos still in the old segment: the next
 *                           append overwrites END (it lies at write_pos) and rotates again
 *   journal_rotate_switched switched, old segments not yet retired: the next rotation retires them
 *   journal_mid_recycle     a retired file's header invalidated, not yet renamed .spare: recovery
 *                           ignores a file whose header does not validate
 */
#ifndef SHMQ_JOURNAL_H
#define SHMQ_JOURNAL_H

#include "desc.h"
#include "segment.h"

#define SHMQ_REGION_JOURNAL 5u
#define SHMQ_F_JOURNAL 0x20u
#define SHMQ_JOURNAL_DIR_MAX 1024u

#define SHMQ_JMODE_ALWAYS 1u
#define SHMQ_JMODE_BATCH 2u
#define SHMQ_JMODE_NEVER 3u

#define SHMQ_JSTATE_RECOVERING 1u /* the creator is replaying the journal: openers wait */
#define SHMQ_JSTATE_READY 2u

/* record types */
#define SHMQ_JREC_PUT 1u        /* shmq_jput_t + payload (the kind's blocks, headers, body) */
#define SHMQ_JREC_REMOVE 2u     /* u64 id: got, acked, dead-lettered, dropped */
#define SHMQ_JREC_DELIVER 3u    /* u64 id: delivered under a lease (delivery count) */
#define SHMQ_JREC_CHECKPOINT 4u /* shmq_jckpt_t: first record of every segment */
#define SHMQ_JREC_END 5u        /* the segment is complete: the next one holds what follows */
#define SHMQ_JREC_PAD 6u        /* bytes recovery skipped (journal_recovery="skip"): ignored */
#define SHMQ_JREC_SUBPOS 7u     /* reserved: a topic's named subscription position (u64 seq, u16 len, name) */
#define SHMQ_JREC_MAX 7u

#define SHMQ_JREC_HDR 24u
#define SHMQ_JFILE_HDR 4096u
#define SHMQ_JFILE_MAGIC 0x314e524a514d4853ull /* "SHMQJRN1" */
#define SHMQ_JSPARE_MAGIC 0x3150534a514d4853ull /* "SHMQJSP1": a retired file waiting for reuse */
#define SHMQ_JOURNAL_VERSION 1u
#define SHMQ_JOURNAL_MIN_SEG (64u * 1024u)
#define SHMQ_JOURNAL_CKPT_RING 256u

typedef struct {
    uint32_t len;   /* header + payload bytes (the frame occupies len rounded up to 8) */
    uint32_t crc;   /* crc32c of len, then of bytes [8, len) */
    uint64_t lsn;   /* strictly increasing over the journal (0 for END and PAD) */
    uint32_t salt;  /* the file's incarnation */
    uint16_t type;
    uint16_t flags; /* 0 */
} shmq_jrec_t;
_Static_assert(sizeof(shmq_jrec_t) == SHMQ_JREC_HDR, "record header layout");

typedef struct {
    uint64_t id;
    uint64_t timestamp_ns;   /* wall clock of the put */
    uint64_t due_wall_ns;    /* delayed until (wall clock), 0 = ready at once */
    uint64_t expire_wall_ns; /* TTL end (wall clock), 0 = none */
    uint32_t size;           /* payload bytes that follow */
    uint16_t hdr_size;
    uint8_t kind;
    uint8_t priority;        /* kept for every kind (PriorityQueue replays it as the level) */
    uint8_t flags;           /* the descriptor's flags at put (SHMQ_DF_DEDUP) */
    uint8_t _pad0[7];
} shmq_jput_t;
_Static_assert(sizeof(shmq_jput_t) == 48, "put record layout");

typedef struct {
    uint64_t next_id;  /* every message put in an earlier segment has a smaller id */
    uint64_t wall_ns;
    uint32_t qkind;    /* the queue's kind and flags (SHMQ_F_ACK...): recovery refuses another layout */
    uint32_t qflags;
} shmq_jckpt_t;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t salt;
    uint64_t seg_no;
    uint64_t seg_size;
    uint64_t created_ns;
    uint32_t crc;      /* crc32c of the 40 bytes before it */
    uint32_t _pad0;
} shmq_jfile_hdr_t;
_Static_assert(sizeof(shmq_jfile_hdr_t) == 48, "file header layout");

/* The region (shared). Written once before the segment is linked: dir .. salt_base. */
typedef struct {
    char dir[SHMQ_JOURNAL_DIR_MAX]; /* absolute, NUL-terminated */
    uint32_t mode;
    uint32_t state;                 /* SHMQ_JSTATE_* */
    uint64_t seg_size;
    uint64_t interval_ns;           /* batch: background sync period */
    uint32_t salt_base;
    uint32_t _pad0;
    uint8_t _pad1[128 - 32];        /* options in their own blocks: read-mostly */
    /* --- append block (append lock holders) --- */
    uint32_t append_lock;
    uint32_t _pad2;
    uint64_t write_pos;             /* seg * seg_size + offset of the next record (release, after the copy) */
    uint64_t next_lsn;
    uint64_t oldest_seg;            /* oldest file still needed */
    uint64_t spare_seg;             /* a .spare file to reuse (its old number), 0 = none */
    uint64_t records;
    uint64_t bytes;
    uint64_t segments_created;
    uint32_t spare_lock;            /* one process builds a spare file ahead of need at a time */
    uint32_t _pad6;
    uint8_t _pad3[128 - 72];
    /* --- sync block --- */
    uint32_t sync_lock;
    int32_t failed_errno;           /* sticky: an fdatasync failed; nothing after it is confirmed */
    uint64_t durable_pos;           /* everything before it is on disk (release, after fdatasync) */
    uint64_t sync_count;
    uint64_t fsync_errors;
    uint64_t last_sync_ns;          /* monotonic (system-wide) */
    uint32_t sync_seq;              /* futex word: bumped after each published sync; waiters sleep on it */
    uint32_t _pad5;
    uint8_t _pad4[128 - 48];
    uint64_t ckpt_next_id[SHMQ_JOURNAL_CKPT_RING]; /* per segment (seg % ring): its checkpoint's next_id */
} shmq_jblk_t;
_Static_assert(offsetof(shmq_jblk_t, append_lock) % 128 == 0, "append block alone");
_Static_assert(offsetof(shmq_jblk_t, sync_lock) % 128 == 0, "sync block alone");

struct shmq_journal;
typedef struct shmq_journal_hooks {
    /* put_commit, descriptor filled and still WRITING: SHMQ_OK or an error the put returns */
    int (*put)(shmq_seg_t *q, const shmq_desc_t *d, const uint8_t *payload, uint64_t delay_ns);
    /* the message leaves the queue (its descriptor is being freed) */
    void (*remove)(shmq_seg_t *q, uint64_t id);
    /* a delivery under a lease */
    void (*deliver)(shmq_seg_t *q, uint64_t id);
} shmq_journal_hooks_t;

/* Process-local. hk first: queue.c and lease.c call through it and know nothing else. */
typedef struct shmq_journal {
    const shmq_journal_hooks_t *hk;
    shmq_jblk_t *blk;
    char dir[SHMQ_JOURNAL_DIR_MAX];
    uint64_t seg_size;
    uint32_t mode;
    int append_busy;   /* lock.h local flags */
    int sync_busy;
    int spare_busy;
    int dir_fd;
    uint64_t map_seg;  /* segment mapped for appends (append lock holders), 0 = none */
    int map_fd;
    uint8_t *map;
    uint64_t sync_seg; /* segment whose fd the flusher holds (sync lock holders) */
    int sync_fd;
    int err;           /* errno of the last failure */
} shmq_journal_t;

typedef struct {
    const char *dir;
    uint32_t mode;
    uint64_t seg_size;
    uint64_t interval_ns;
} shmq_journal_opts_t;

/* kinds.c: the region a create asks for (SHMQ_EINVAL: bad options); bind at open. */
int shmq_journal_region(const shmq_journal_opts_t *o, shmq_region_req_t *req);
/* untrusted: validates the region; allocates the process-local state but leaves seg->journal
 * NULL until shmq_journal_enable (a creator replays first). */
int shmq_journal_bind(shmq_seg_t *q);
void shmq_journal_close(shmq_seg_t *q);
shmq_journal_t *shmq_journal_of(shmq_seg_t *q);  /* the bound state (enabled or not), or NULL */
/* Start appending: the first segment after `last_seg` (recovery's), checkpoint, state READY. */
int shmq_journal_start(shmq_seg_t *q, uint64_t last_seg, uint64_t next_lsn);
/* Appends of this handle go to the journal from now on (openers: once the state is READY). */
void shmq_journal_enable(shmq_seg_t *q);
uint32_t shmq_journal_state(shmq_seg_t *q);
/* The creator, before recovery: no other process may have this journal directory open (an
 * exclusive flock on the directory; every attached handle holds a shared one). SHMQ_OK, or
 * SHMQ_EJOURNAL with q->err = EWOULDBLOCK when another live queue uses it. */
int shmq_journal_claim(shmq_seg_t *q);
/* The journal directory this queue was created with (its process-local copy), or NULL. */
const char *shmq_journal_dir_of(shmq_seg_t *q);

/* After a put/send returned SHMQ_OK: always-mode waits until this thread's last record is
 * durable (deadline_ns as put's); other modes return at once. SHMQ_OK, SHMQ_EJOURNAL (seg->err:
 * the sync's errno), SHMQ_TIMEOUT, SHMQ_EINTR. */
int shmq_journal_commit(shmq_seg_t *q, uint64_t deadline_ns);
/* This thread's commits return at once while defer is set (put_many, asyncio's sends: they wait
 * once for the last record instead); the end position of this thread's last record, for
 * shmq_journal_wait. Thread-local. */
void shmq_journal_defer(int defer);
int shmq_journal_deferred(void);
uint64_t shmq_journal_last_end(void);
/* Wait until everything before pos is durable, syncing if nobody else does (group commit). */
int shmq_journal_wait(shmq_seg_t *q, uint64_t pos, uint64_t deadline_ns);
/* Make everything appended so far durable (q.sync(), the batch timer). */
int shmq_journal_sync(shmq_seg_t *q, uint64_t deadline_ns);
/* Maintenance (the background thread): when no spare file exists and the current segment is
 * past half full, build one now, outside the append lock, so the rotation that needs it only
 * renames it. SHMQ_OK (built or not needed), SHMQ_EJOURNAL (q->err). */
int shmq_journal_prepare_spare(shmq_seg_t *q);

typedef struct {
    uint64_t bytes, segments, durable_pos, write_pos, sync_count, fsync_errors, last_sync_ns, records;
    uint64_t interval_ns;
    int32_t failed_errno;
    uint32_t mode;
} shmq_journal_stats_t;
void shmq_journal_stats(shmq_seg_t *q, shmq_journal_stats_t *st);
uint32_t shmq_journal_stats_mode(shmq_seg_t *q); /* SHMQ_JMODE_*, 0 without a journal */

/* ---- scanning and recovery (a journal whose queue is not open) ---- */
typedef struct {
    uint64_t records, bytes, segments, puts, removes, delivers, live, first_id, last_id, next_id;
    uint64_t first_seg, last_seg, next_lsn, files_ignored;
    uint64_t torn, torn_off, torn_seg, truncated_bytes;      /* the tail cut (count, where) */
    uint64_t corrupt, corrupt_off, corrupt_seg, skipped_bytes; /* before the tail */
    uint64_t replayed, dedup_restored, elapsed_ns;
    uint32_t qkind, qflags;  /* of the latest checkpoint (0: none seen) */
    int err;
} shmq_jreport_t;
/* progress(ctx, done, total) in bytes; may be NULL. */
typedef void (*shmq_jprogress_fn)(void *ctx, uint64_t done, uint64_t total);
#define SHMQ_JSCAN_SKIP 1u    /* corruption before the tail is skipped and reported, not an error */
#define SHMQ_JSCAN_REPAIR 2u  /* recovery: cut the torn tail (END), pad skipped ranges, drop empty files */
/* Scan dir; with q != NULL replay the live messages into it (empty, nobody else attached yet).
 * SHMQ_OK, SHMQ_ECORRUPT (rep->corrupt_seg/off), SHMQ_ESYS (rep->err), SHMQ_FULL (the queue cannot
 * hold what the journal holds), SHMQ_ENOMEM. */
int shmq_journal_scan(const char *dir, uint32_t flags, shmq_seg_t *q, shmq_jreport_t *rep, shmq_jprogress_fn progress,
                      void *ctx);
/* 1 if dir is on tmpfs (does not survive a reboot), 0 if not, -1 on error. */
int shmq_journal_on_tmpfs(const char *dir);

#endif
