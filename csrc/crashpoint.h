/* crashpoint.h - named points where a test makes the process SIGKILL itself.
 *
 * Contract: every build carries the points as one never-taken branch on a process-global
 * flag, armed once at load time from SHMQ_CRASH_AT=<point>[:<n>[:stop]] (kill at the n-th hit,
 * default 1; with ":stop" the process stops there instead, holding whatever it holds, so a
 * test can act while it sits at the point and then kill or continue it). Unarmed cost: one predictable load and branch. The table below is the single
 * list of points; tests/crash/ must kill a process at every one (a lint test checks).
 */
#ifndef SHMQ_CRASHPOINT_H
#define SHMQ_CRASHPOINT_H

#include "common.h"

/* X(name, where) */
#define SHMQ_CRASH_POINTS(X)                                                                  \
    X(after_desc_claim, "put: descriptor claimed (WRITING), payload not yet written")        \
    X(after_alloc, "put: arena chunk recorded in the descriptor, payload not yet written")    \
    X(chunk_reused, "put: claimed a FREE descriptor whose parked chunk fits, payload not yet written") \
    X(chunk_mid_swap, "put: arena lock held, the claimed descriptor's parked chunk returned, new one not yet allocated") \
    X(chunk_mid_unpark, "put (arena full): a FREE descriptor with a parked chunk taken over (WRITING), chunk not yet returned") \
    X(mid_copy, "put: half of the payload written")                                           \
    X(after_claim, "put: descriptor READY, the publishing 16-byte CAS on the cell not yet done") \
    X(before_commit, "put: published by the cell CAS, tail index not yet advanced")           \
    X(after_commit, "put: published and tail advanced, wake-up not yet sent")                 \
    X(mid_get, "get: descriptor claimed READING, cell not yet advanced")                      \
    X(after_take, "get: descriptor READING, payload not yet copied out")                      \
    X(before_free, "get: payload copied, descriptor and chunk not yet freed")                 \
    X(arena_locked, "arena lock held, free lists half updated")                               \
    X(grow_locked, "grow lock held, new area being initialised")                              \
    X(attach_locked, "attach: slot lock taken, slot not yet initialised")                     \
    X(mid_repair, "repair: a dead owner's descriptor taken over (WRITING by the repairer), not yet freed") \
    X(after_lease, "receive: descriptor INFLIGHT with its lease written, payload not yet copied out") \
    X(mid_ack, "ack: delivery claimed (READING), descriptor and chunk not yet freed")           \
    X(mid_nack, "nack: delivery claimed (SETTLING), not yet requeued, delayed or dead-lettered") \
    X(mid_expire, "timer scan: an expired lease claimed (SETTLING), not yet requeued")         \
    X(before_move, "dead-letter: descriptor MOVING, copy not yet sent to the dead-letter queue") \
    X(mid_move, "dead-letter: copy in the dead-letter queue, source descriptor not yet freed") \
    X(mid_dedup, "send: dedup entry PENDING with its id, message not yet put")              \
    X(before_dedup_finish, "send: message put (the send would return its id), dedup entry still PENDING") \
    X(mid_close_return, "close: an unacked delivery of the closing handle claimed (SETTLING), not yet requeued") \
    X(group_after_put, "group send: message put PARKED, not yet linked into its group") \
    X(group_mid_link, "group send: linked as its idle group's head, not yet published") \
    X(group_mid_settle, "group settle: the next member made the head, not yet published") \
    X(forward_after_hold, "forward: received message held (SETTLING), new message not yet sent") \
    X(forward_after_send, "forward: new message sent to the destination, received message not yet acked") \
    X(topic_mid_publish, "topic publish: lock held, tail moved, part of a payload written, head not yet advanced") \
    X(topic_before_commit, "topic publish: entries and payloads written, head_seq (the commit) not yet stored") \
    X(topic_after_commit, "topic publish: committed, lock held, sleeping readers not yet woken") \
    X(topic_before_advance, "topic read: a named subscription's messages copied, its cursor not yet advanced") \
    X(topic_mid_subscribe, "topic subscribe: both locks held, the new entry filled, its state not yet LIVE") \
    X(topic_ack_claimed, "topic receive (ack=True): lease reserved with its seq, message copied, group cursor not yet advanced") \
    X(prio_before_bit, "priority put: published in its level's ring, the level's bitmap bit not yet set") \
    X(prio_mid_clear, "priority get: a level found empty, its clear announced (CLEARING), its bitmap bit not yet cleared") \
    X(prio_after_seal, "growable priority get: a level's drained ring below the tail area sealed, the level's head area not yet moved on") \
    X(prio_before_head, "growable priority get: every level's head past the head area, area_head not yet moved on") \
    X(journal_mid_append, "journal: half of a record's payload written past write_pos, crc not yet written") \
    X(journal_mid_sync, "journal: sync lock held, fdatasync not yet returned, durable position not advanced") \
    X(journal_rotate_prepared, "journal rotation: next segment file built and renamed into place, END not yet written") \
    X(journal_rotate_ended, "journal rotation: END written and synced, appends not yet moved to the next segment") \
    X(journal_rotate_switched, "journal rotation: appends moved on, old segments not yet retired") \
    X(journal_mid_recycle, "journal retention: a retired file's header invalidated, not yet renamed .spare") \
    X(journal_spare_built, "journal spare: a spare file built and synced under its temporary name, append lock held, not yet renamed .spare")

extern int shmq_crash_armed;
void shmq_crash_hit(const char *name);
/* Number of points and their names, for the lint test and the docs table. */
int shmq_crash_count(void);
const char *shmq_crash_name(int i);
const char *shmq_crash_where(int i);

#define SHMQ_CRASH_POINT(name)                          \
    do {                                                \
        if (SHMQ_UNLIKELY(shmq_crash_armed))            \
            shmq_crash_hit(#name);                      \
    } while (0)

#endif
