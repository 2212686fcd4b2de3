/* queue.h - a work queue: descriptors + arena + ring per area, composed; waiting and repair.
 *
 * Who may call what concurrently: any number of producers (shmq_put) and consumers
 * (shmq_get_begin/shmq_get_end) in any processes and threads, through attached handles.
 * A handle (shmq_seg_t) may be shared by the threads of one process.
 *
 * Progress: put and get are lock-free on the hot path (CASes on descriptor words and ring
 * cells); the arena lock is taken only for payloads that do not fit inline (72 bytes), and
 * growth takes the grow lock. Blocking calls wait on futex words with absolute monotonic
 * deadlines: after a bounded spin (only when another participant is running on another CPU
 * and we may use more than one CPU) they sleep, and return SHMQ_EINTR on a signal.
 *
 * Put, step by step (crash point names in brackets):
 *   1. claim a FREE descriptor of the newest area: CAS -> WRITING(me)      [after_desc_claim]
 *   2. large payload: arena block recorded in the descriptor (arena lock)  [after_alloc]
 *   3. copy the payload                                                    [mid_copy]
 *   4. fill id/time/size; WRITING -> READY
 *   5. publish the handle with one 16-byte CAS on a ring cell             [after_claim, before_commit]
 *   6. wake a sleeping consumer if the waiter count says one sleeps        [after_commit]
 *   A crash before 5 leaves a WRITING descriptor stamped with the dead owner: repair frees it
 *   (the put had not returned). After 5 the message is queued.
 * Get: take a FULL cell and claim its descriptor READY -> READING(me) [mid_get, after_take];
 *   copy out; return the chunk and free the descriptor [before_free]. A crash between take and
 *   free loses that one message (at-most-once); repair frees its descriptor and chunk.
 */
#ifndef SHMQ_QUEUE_H
#define SHMQ_QUEUE_H

#include "desc.h"
#include "inspect.h"
#include "segment.h"

typedef struct {
    const void *ptr;
    uint64_t len;
} shmq_iov_t;

typedef struct {
    uint64_t handle;      /* receive: the lease token (area, index, this delivery's generation) */
    shmq_area_t *area;
    shmq_desc_t *d;
    uint64_t word;        /* the descriptor word our take installed */
    const uint8_t *hdr;   /* at-least-once header block (hdr_size bytes) */
    const uint8_t *data;  /* body, valid until shmq_get_end / shmq_receive_end */
    uint64_t size;
    uint64_t id;
    uint64_t timestamp_ns;
    uint32_t kind;
    uint32_t delivery_count;
    uint32_t hdr_size;
    uint32_t priority;
    const uint8_t *group; /* at-least-once: the message group key, NULL for an ungrouped message */
    uint32_t group_len;
    uint32_t group_type;  /* 0 = str (UTF-8), 1 = bytes */
} shmq_msg_t;

/* Why a put returned SHMQ_FULL, in seg->full_why: written only on the failing path (the put that
 * succeeds pays nothing), read by the caller after SHMQ_FULL. Threads sharing one handle may
 * overwrite each other's reason between the return and the read: any of them is then a reason
 * the queue had no room. */
enum {
    SHMQ_WHY_NONE = 0,
    SHMQ_WHY_MAXSIZE = 1, /* maxsize items are queued (or reserved by puts under way) */
    SHMQ_WHY_SLOTS = 2,   /* every message slot (descriptor, ring cell) holds a message */
    SHMQ_WHY_BYTES = 3,   /* no free arena block large enough for this message */
    SHMQ_WHY_BUSY = 4,    /* another process held the arena or grow lock past our wait (stopped?) */
    SHMQ_WHY_GROUPS = 5,  /* the message-group table has no entry for another group (group.h) */
};

/* deadline_ns: 0 = do not wait, SHMQ_NO_DEADLINE = wait forever, else absolute monotonic. */
/* SHMQ_OK, SHMQ_FULL/SHMQ_TIMEOUT (no room in time), SHMQ_ETOOBIG, SHMQ_EINTR, SHMQ_ENOMEM, SHMQ_ESYS. */
int shmq_put(shmq_seg_t *q, const shmq_iov_t *iov, uint32_t n, uint32_t kind, uint64_t deadline_ns, uint64_t *id_out);
/* SHMQ_OK (m filled, call shmq_get_end), SHMQ_EMPTY/SHMQ_TIMEOUT, SHMQ_EINTR. */
int shmq_get_begin(shmq_seg_t *q, shmq_msg_t *m, uint64_t deadline_ns);
void shmq_get_end(shmq_seg_t *q, shmq_msg_t *m);
uint64_t shmq_depth(shmq_seg_t *q);
/* JoinableQueue: SHMQ_OK, SHMQ_EINVAL (called more often than put). */
int shmq_task_done(shmq_seg_t *q);
/* SHMQ_OK when every put was task_done'd, SHMQ_TIMEOUT, SHMQ_EINTR. */
int shmq_join(shmq_seg_t *q, uint64_t deadline_ns);
/* Mark this handle closing and wake every sleeper of the queue: this handle's blocked calls
 * return SHMQ_ECLOSED (other processes' sleepers wake, find nothing and sleep again). */
void shmq_wake_all(shmq_seg_t *q);
/* Watchers: a binding's waiter thread sleeps for many waiting callers (an event loop's
 * coroutines) that take or put themselves, in their own thread, without blocking (asyncio).
 * dir SHMQ_WATCH_GET waits on not_empty, SHMQ_WATCH_PUT on not_full. The protocol is the
 * lost-wake-up rule of wait.h split over calls: begin (count as a sleeper), then per round:
 * token (clear the pending wake-up, read the word), the callers' non-blocking tries, and if
 * they all failed sleep(token) - which returns at once if anything changed since the token.
 * end when nobody waits (a getter's end passes a wake-up on while messages remain). Counted
 * in the slot (repair undoes a dead watcher) and in the handle (shmq_close undoes the rest).
 * One thread of the handle's process may call these at a time per direction (the binding
 * serialises them under its lock). */
#define SHMQ_WATCH_GET 0
#define SHMQ_WATCH_PUT 1
int shmq_watch_begin(shmq_seg_t *q, int dir);   /* SHMQ_OK, SHMQ_EINVAL (bad dir) */
uint32_t shmq_watch_token(shmq_seg_t *q, int dir);
/* SHMQ_OK (the word changed: look again), SHMQ_EAGAIN (a liveness slice elapsed: dead
 * participants were swept; look again), SHMQ_TIMEOUT (deadline), SHMQ_ECLOSED (the handle is
 * closing), SHMQ_EINTR (a signal), SHMQ_EINVAL. The kind's timers (wake_at) end the sleep too. */
int shmq_watch_sleep(shmq_seg_t *q, int dir, uint32_t token, uint64_t deadline_ns);
void shmq_watch_end(shmq_seg_t *q, int dir);
void shmq_watch_end_all(shmq_seg_t *q);
/* Repair every dead participant this process can elect itself for; returns how many. Blocking
 * calls run it every liveness slice while asleep; `shmq_check` callers run it first. */
int shmq_repair_dead(shmq_seg_t *q);
/* Spin budget for blocking gets (ns); 0 disables spinning. Process-wide. */
void shmq_set_spin_ns(uint64_t ns);
uint64_t shmq_get_spin_ns(void);

#endif
