# Extern declarations of the C core (csrc/*.h); names are identical to the C names.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef extern from "common.h" nogil:
    enum:
        SHMQ_OK
        SHMQ_EMPTY
        SHMQ_FULL
        SHMQ_TIMEOUT
        SHMQ_EINTR
        SHMQ_ETOOBIG
        SHMQ_ECORRUPT
        SHMQ_EINCOMPAT
        SHMQ_ESYS
        SHMQ_ESLOTS
        SHMQ_ESEALED
        SHMQ_EINVAL
        SHMQ_ENOMEM
        SHMQ_ECLOSED
        SHMQ_EAGAIN
        SHMQ_ESTALE
        SHMQ_EDEDUPFULL
        SHMQ_EJOURNAL
    const char *shmq_strerror(int rc)
    uint64_t shmq_now_mono_ns()
    uint64_t SHMQ_NO_DEADLINE

cdef extern from "crashpoint.h" nogil:
    int shmq_crash_count()
    const char *shmq_crash_name(int i)
    const char *shmq_crash_where(int i)

cdef extern from "segment.h" nogil:
    enum:
        SHMQ_KIND_QUEUE
        SHMQ_KIND_PRIORITY
        SHMQ_KIND_TOPIC
        SHMQ_F_GROWABLE
        SHMQ_F_RAW
        SHMQ_F_ANONYMOUS
        SHMQ_F_JOINABLE
        SHMQ_F_ACK
        SHMQ_F_GROUPS
        SHMQ_LAYOUT_VERSION
        SHMQ_ROLE_PRODUCER
        SHMQ_ROLE_CONSUMER
        SHMQ_MIN_AREA_SIZE
    ctypedef struct shmq_header_t:
        uint32_t flags
        uint32_t max_slots
        uint64_t maxsize
        uint64_t max_message
        int64_t creator_pid
        uint32_t kind
    ctypedef struct shmq_seg_t:
        int fd
        shmq_header_t *hdr
        uint32_t slot
        int err
        int full_why
        int poll_signals
        void *journal
        void *jstate
    ctypedef struct shmq_create_opts_t:
        const char *path
        uint32_t kind
        uint32_t flags
        uint64_t capacity
        uint64_t max_message
        uint64_t maxsize
        uint32_t mode
        uint32_t max_slots
        uint64_t visibility_ns
        uint64_t default_delay_ns
        uint64_t default_ttl_ns
        uint64_t dedup_window_ns
        uint32_t max_deliveries
        uint32_t dedup_slots
        const char *dead_letter
        uint64_t retention_ns
        uint32_t levels
        uint64_t max_wait_ns
        const void *journal

cdef extern from "kinds.h" nogil:
    int shmq_create(shmq_seg_t *seg, const shmq_create_opts_t *o, int exist_ok, int *created)
    int shmq_open(shmq_seg_t *seg, const char *path, int fd)
    int shmq_attach(shmq_seg_t *seg)
    void shmq_close(shmq_seg_t *seg)
    int shmq_after_fork(shmq_seg_t *seg)
    int shmq_validate(shmq_seg_t *seg)

cdef extern from "queue.h" nogil:
    enum:
        SHMQ_WHY_NONE
        SHMQ_WHY_MAXSIZE
        SHMQ_WHY_SLOTS
        SHMQ_WHY_BYTES
        SHMQ_WHY_BUSY
        SHMQ_WHY_GROUPS
    ctypedef struct shmq_iov_t:
        const void *ptr
        uint64_t len
    ctypedef struct shmq_msg_t:
        uint64_t handle
        const uint8_t *hdr
        uint32_t hdr_size
        uint32_t priority
        const uint8_t *data
        uint64_t size
        uint64_t id
        uint64_t timestamp_ns
        uint32_t kind
        uint32_t delivery_count
        const uint8_t *group
        uint32_t group_len
        uint32_t group_type
    ctypedef struct shmq_stats_t:
        uint64_t depth
        uint64_t bytes_used
        uint64_t capacity
        uint64_t file_size
        uint64_t max_message
        uint64_t maxsize
        uint64_t enqueued
        uint64_t dequeued
        uint64_t repairs
        uint64_t corrupt_skipped
        uint64_t last_repair_ns
        uint64_t unfinished
        int64_t creator_pid
        uint64_t created_at_ns
        uint32_t attached
        uint32_t producers
        uint32_t consumers
        uint32_t areas
        uint32_t flags
        uint32_t kind
        uint32_t mode
        uint32_t max_slots
        uint64_t in_flight
        uint64_t delayed
        uint64_t oldest_ready_ns
        uint64_t acked
        uint64_t redelivered
        uint64_t dead_lettered
        uint64_t expired
        uint64_t dead_letter_failed
        uint64_t dedup_hits
        uint64_t visibility_ns
        uint64_t default_delay_ns
        uint64_t default_ttl_ns
        uint64_t dedup_window_ns
        uint32_t max_deliveries
        uint32_t dedup_slots
        char dead_letter[208]
    ctypedef struct shmq_check_t:
        uint64_t free_desc
        uint64_t ready_desc
        uint64_t owned_desc
        uint64_t dead_owned
        uint64_t orphan_ready
        uint64_t bad_chunks
        uint64_t arena_mismatch
        uint64_t bad_areas
        uint64_t queued
        uint64_t parked_chunks
    ctypedef struct shmq_peek_t:
        uint64_t id
        uint64_t timestamp_ns
        uint64_t size
        uint64_t copied
        uint32_t kind
        uint32_t delivery_count
        uint32_t state
        uint32_t hdr_size
        uint32_t priority
    enum:
        SHMQ_PEEK_HEADERS
    int shmq_peek(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap)
    int shmq_peek_ex(shmq_seg_t *q, uint64_t n, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags)
    int shmq_peek_held(shmq_seg_t *q, uint64_t *pos, shmq_peek_t *out, void *buf, uint64_t cap, uint32_t flags)
    uint64_t shmq_purge(shmq_seg_t *q)
    uint64_t shmq_purge_held(shmq_seg_t *q)
    int shmq_repair_dead(shmq_seg_t *q)
    void shmq_check(shmq_seg_t *q, shmq_check_t *out)
    int shmq_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns, uint64_t *id_out)
    int shmq_get_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns)
    void shmq_get_end(shmq_seg_t *q, shmq_msg_t *m)
    uint64_t shmq_depth(shmq_seg_t *q)
    void shmq_stats(shmq_seg_t *q, shmq_stats_t *st)
    int shmq_task_done(shmq_seg_t *q)
    int shmq_join(shmq_seg_t *q, uint64_t deadline_ns)
    void shmq_wake_all(shmq_seg_t *q)
    int shmq_watch_begin(shmq_seg_t *q, int dir)
    uint32_t shmq_watch_token(shmq_seg_t *q, int dir)
    int shmq_watch_sleep(shmq_seg_t *q, int dir, uint32_t token, uint64_t deadline_ns)
    void shmq_watch_end(shmq_seg_t *q, int dir)
    void shmq_set_spin_ns(uint64_t ns)
    uint64_t shmq_get_spin_ns()

cdef extern from "lease.h" nogil:
    uint64_t SHMQ_USE_DEFAULT
    enum:
        SHMQ_HDR_MAX
    ctypedef struct shmq_send_opts_t:
        uint64_t delay_ns
        uint64_t ttl_ns
        const void *hdr
        uint32_t hdr_size
        uint32_t priority
        const uint8_t *dedup_key
        const uint8_t *group
        uint32_t group_len
        uint32_t group_type
    int shmq_send(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, const shmq_send_opts_t *o,
                  uint64_t deadline_ns, uint64_t *id, int *dup)
    int shmq_receive_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns)
    int shmq_receive_end(shmq_seg_t *q, shmq_msg_t *m)
    int shmq_ack(shmq_seg_t *q, uint64_t token, uint64_t id)
    int shmq_ack_keep(shmq_seg_t *q, uint64_t token, uint64_t id)
    void shmq_ack_release(shmq_seg_t *q, uint64_t token)
    int shmq_nack(shmq_seg_t *q, uint64_t token, uint64_t id, int requeue, uint64_t delay_ns)
    int shmq_extend(shmq_seg_t *q, uint64_t token, uint64_t id, uint64_t ns)
    void shmq_ack_set_dlq(shmq_seg_t *q, shmq_seg_t *dlq, const char *name)
    int shmq_timers_run(shmq_seg_t *q)
    enum:
        SHMQ_PROBE_GONE
        SHMQ_PROBE_READY
        SHMQ_PROBE_DELAYED
        SHMQ_PROBE_INFLIGHT
        SHMQ_PROBE_BUSY
    ctypedef struct shmq_probe_t:
        uint32_t state
        uint32_t owner_alive
        uint32_t delivery_count
    int shmq_ack_find(shmq_seg_t *q, uint64_t id, uint64_t *token)
    int shmq_ack_probe(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_probe_t *p)

cdef extern from "participants.h" nogil:
    uint32_t shmq_part_consumers(shmq_seg_t *seg, int alive)
    void shmq_part_set_role(shmq_seg_t *seg, uint32_t role)

cdef extern from "guard.h" nogil:
    int shmq_guard_register(shmq_seg_t *seg, int *fault_word)
    void shmq_guard_unregister(shmq_seg_t *seg)

cdef extern from "forward.h" nogil:
    int shmq_forward(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_seg_t *dest, const shmq_iov_t *iov, uint32_t n,
                     uint32_t kind, const shmq_send_opts_t *o, uint64_t deadline_ns, uint64_t *new_id, int *dup)
cdef extern from "prio.h" nogil:
    enum:
        SHMQ_PRIO_MAX_LEVELS
    int shmq_put_prio(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint32_t priority,
                      uint64_t deadline_ns, uint64_t *id_out)
    uint32_t shmq_prio_levels(shmq_seg_t *q)
    uint32_t shmq_prio_counts(shmq_seg_t *q, uint64_t *counts, uint32_t cap)
    uint64_t shmq_prio_max_wait_ns(shmq_seg_t *q)
cdef extern from "journal.h" nogil:
    enum:
        SHMQ_F_JOURNAL
        SHMQ_JMODE_ALWAYS
        SHMQ_JMODE_BATCH
        SHMQ_JMODE_NEVER
        SHMQ_JSTATE_RECOVERING
        SHMQ_JSTATE_READY
        SHMQ_JSCAN_SKIP
        SHMQ_JSCAN_REPAIR
        SHMQ_JOURNAL_DIR_MAX
        SHMQ_JOURNAL_MIN_SEG
        SHMQ_JREC_HDR
    ctypedef struct shmq_journal_opts_t:
        const char *dir
        uint32_t mode
        uint64_t seg_size
        uint64_t interval_ns
    ctypedef struct shmq_journal_stats_t:
        uint64_t bytes, segments, durable_pos, write_pos, sync_count, fsync_errors, last_sync_ns, records
        uint64_t interval_ns
        int failed_errno
        uint32_t mode
    ctypedef struct shmq_jreport_t:
        uint64_t records, bytes, segments, puts, removes, delivers, live, first_id, last_id, next_id
        uint64_t first_seg, last_seg, next_lsn, files_ignored
        uint64_t torn, torn_off, torn_seg, truncated_bytes
        uint64_t corrupt, corrupt_off, corrupt_seg, skipped_bytes
        uint64_t replayed, dedup_restored, elapsed_ns
        uint32_t qkind, qflags
        int err
    ctypedef void (*shmq_jprogress_fn)(void *ctx, uint64_t done, uint64_t total)
    int shmq_journal_start(shmq_seg_t *q, uint64_t last_seg, uint64_t next_lsn)
    void shmq_journal_enable(shmq_seg_t *q)
    uint32_t shmq_journal_state(shmq_seg_t *q)
    int shmq_journal_claim(shmq_seg_t *q)
    int shmq_journal_commit(shmq_seg_t *q, uint64_t deadline_ns)
    int shmq_journal_sync(shmq_seg_t *q, uint64_t deadline_ns)
    void shmq_journal_defer(int defer)
    int shmq_journal_deferred()
    int shmq_journal_prepare_spare(shmq_seg_t *q)
    uint32_t shmq_journal_stats_mode(shmq_seg_t *q)
    uint64_t shmq_journal_last_end()
    int shmq_journal_wait(shmq_seg_t *q, uint64_t pos, uint64_t deadline_ns)
    void shmq_journal_stats(shmq_seg_t *q, shmq_journal_stats_t *st)
    int shmq_journal_scan(const char *dir, uint32_t flags, shmq_seg_t *q, shmq_jreport_t *rep,
                          shmq_jprogress_fn progress, void *ctx)
    int shmq_journal_on_tmpfs(const char *dir)
    const char *shmq_journal_dir_of(shmq_seg_t *q)
cdef extern from "hist.h" nogil:
    enum:
        SHMQ_F_HIST
        SHMQ_HIST_BUCKETS
        SHMQ_HIST_BASE_LOG2
        SHMQ_HIST_NACKS
        SHMQ_HIST_LATE_REPLIES
    ctypedef struct shmq_hist_sum_t:
        uint64_t wait[32]
        uint64_t process[32]
        uint64_t wait_sum_ns
        uint64_t process_sum_ns
        uint64_t nacks
        uint64_t late_replies
        uint32_t blocks_read
    int shmq_hist_read(shmq_seg_t *seg, shmq_hist_sum_t *out)
    void shmq_hist_count(shmq_seg_t *seg, int which, uint64_t n)
