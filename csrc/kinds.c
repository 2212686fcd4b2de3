#include "kinds.h"

#include "group.h"
#include "journal.h"
#include "hist.h"
#include "lease.h"
#include "participants.h"
#include "prio.h"
#include "queue.h"
#include "topic.h"

/* The kind's hooks and state, from the validated header (before the handle attaches). */
static int bind_kind(shmq_seg_t *seg)
{
    int rc = SHMQ_OK;
    if (seg->hdr->kind == SHMQ_KIND_TOPIC)
        return shmq_topic_bind(seg);
    if (seg->hdr->flags & SHMQ_F_JOURNAL) {
        rc = shmq_journal_bind(seg); /* journal.h: enabled once the journal is READY */
        if (rc != SHMQ_OK)
            return rc;
    }
    if (seg->hdr->flags & SHMQ_F_ACK)
        rc = shmq_ack_bind(seg);
    else
        shmq_queue_bind(seg);
    if (rc == SHMQ_OK && seg->hdr->kind == SHMQ_KIND_PRIORITY)
        rc = shmq_prio_bind(seg); /* the queue (or lease.c) over a ring per level (prio.h) */
    return rc;
}

static int bound(shmq_seg_t *seg, int rc)
{
    if (rc == SHMQ_OK)
        rc = bind_kind(seg);
    if (rc != SHMQ_OK) {
        int e = seg->err;
        shmq_close(seg);
        seg->err = e;
    }
    return rc;
}

int shmq_create(shmq_seg_t *seg, const shmq_create_opts_t *o, int exist_ok, int *created)
{
    shmq_region_req_t req[SHMQ_MAX_REGIONS];
    uint32_t n = 0;
    *created = 0;
    if (o->kind == SHMQ_KIND_TOPIC) {
        /* the log lives in its region; area 0 (unused by a topic) is the smallest one */
        shmq_create_opts_t to = *o;
        int rc = shmq_topic_region(o->capacity, o->max_message, o->retention_ns, o->max_slots, &req[n++]);
        if (rc != SHMQ_OK || (o->flags & (SHMQ_F_ACK | SHMQ_F_GROWABLE)))
            return rc != SHMQ_OK ? rc : SHMQ_EINVAL;
        to.capacity = SHMQ_MIN_AREA_SIZE;
        to.max_message = 0;
        /* latency histograms: the private subscriptions' per slot, the named ones' per entry */
        to.flags |= SHMQ_F_HIST;
        shmq_topic_hist_region(&req[0], o->max_slots, &req[n++]);
        return bound(seg, shmq_seg_create(seg, &to, req, n, exist_ok, created));
    }
    shmq_create_opts_t oo = *o;
    if (o->flags & SHMQ_F_ACK) {
        int rc = shmq_ack_region(o, &req[n++]);
        if (rc != SHMQ_OK)
            return rc;
        /* every at-least-once queue can carry message groups (group.h) */
        oo.flags |= SHMQ_F_GROUPS;
        if ((rc = shmq_group_region(o, &req[n++])) != SHMQ_OK)
            return rc;
    }
    if (o->kind == SHMQ_KIND_PRIORITY) {
        if (o->flags & SHMQ_F_GROWABLE)
            oo.area_rings = o->levels; /* a grown area carries a ring per level (prio.h) */
        int rc = shmq_prio_region(&oo, &req[n++]);
        if (rc != SHMQ_OK)
            return rc;
    }
    if (o->flags & SHMQ_F_JOURNAL) {
        int rc = o->journal ? shmq_journal_region(o->journal, &req[n++]) : SHMQ_EINVAL;
        if (rc != SHMQ_OK)
            return rc;
    }
    /* every other kind: latency histograms and error counters (hist.h) */
    oo.flags |= SHMQ_F_HIST;
    shmq_hist_region(o->max_slots, &req[n++]);
    return bound(seg, shmq_seg_create(seg, &oo, req, n, exist_ok, created));
}

int shmq_open(shmq_seg_t *seg, const char *path, int fd) { return bound(seg, shmq_seg_open(seg, path, fd)); }

int shmq_attach(shmq_seg_t *seg)
{
    int rc = shmq_part_attach(seg);
    if (rc == SHMQ_OK)
        shmq_hist_bind(seg);
    return rc;
}

int shmq_after_fork(shmq_seg_t *seg)
{
    int rc = shmq_seg_after_fork(seg);
    seg->hist_blk = NULL; /* the parent's slot's block: the child binds its own when it attaches */
    shmq_hist_bind(seg);  /* (if shmq_seg_after_fork attached it already) */
    if (rc == SHMQ_OK && seg->ops && seg->ops->after_fork)
        seg->ops->after_fork(seg);
    if (rc == SHMQ_OK && seg->jstate) { /* the parent's threads' lock flags are not ours */
        seg->jstate->append_busy = 0;
        seg->jstate->sync_busy = 0;
        seg->jstate->spare_busy = 0;
    }
    return rc;
}

int shmq_validate(shmq_seg_t *seg)
{
    int rc = shmq_seg_validate(seg);
    if (rc == SHMQ_OK && (seg->hdr->flags & SHMQ_F_ACK))
        rc = shmq_ack_valid(seg);
    if (rc == SHMQ_OK && (seg->hdr->flags & SHMQ_F_ACK))
        rc = shmq_group_valid(seg);
    if (rc == SHMQ_OK && seg->hdr->kind == SHMQ_KIND_TOPIC)
        rc = shmq_topic_valid(seg);
    if (rc == SHMQ_OK && seg->hdr->kind == SHMQ_KIND_PRIORITY)
        rc = shmq_prio_valid(seg);
    return rc;
}

void shmq_close(shmq_seg_t *seg)
{
    shmq_watch_end_all(seg); /* a watcher left registered would make every put pay a wake-up forever */
    if (seg->ops && seg->ops->detach && seg->slot != UINT32_MAX)
        seg->ops->detach(seg);
    if (seg->ops && seg->ops->close)
        seg->ops->close(seg);
    shmq_prio_unbind(seg);
    seg->ops = NULL;
    shmq_journal_close(seg);
    seg->hist_blk = NULL;
    shmq_seg_close(seg);
}
