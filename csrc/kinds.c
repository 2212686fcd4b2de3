#include "kinds.h"

#include "hist.h"
#include "lease.h"
#include "participants.h"
#include "queue.h"

/* The kind's hooks and state, from the validated header (before the handle attaches). */
static int bind_kind(shmq_seg_t *seg)
{
    if (seg->hdr->flags & SHMQ_F_ACK)
        return shmq_ack_bind(seg);
    shmq_queue_bind(seg);
    return SHMQ_OK;
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
    if (o->flags & SHMQ_F_ACK) {
        int rc = shmq_ack_region(o, &req[n++]);
        if (rc != SHMQ_OK)
            return rc;
    }
    /* every kind: latency histograms and error counters (hist.h) */
    shmq_create_opts_t ho = *o;
    ho.flags |= SHMQ_F_HIST;
    shmq_hist_region(o->max_slots, &req[n++]);
    return bound(seg, shmq_seg_create(seg, &ho, req, n, exist_ok, created));
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
    return rc;
}

int shmq_validate(shmq_seg_t *seg)
{
    int rc = shmq_seg_validate(seg);
    if (rc == SHMQ_OK && (seg->hdr->flags & SHMQ_F_ACK))
        rc = shmq_ack_valid(seg);
    return rc;
}

void shmq_close(shmq_seg_t *seg)
{
    shmq_watch_end_all(seg); /* a watcher left registered would make every put pay a wake-up forever */
    if (seg->ops && seg->ops->detach && seg->slot != UINT32_MAX)
        seg->ops->detach(seg);
    if (seg->ops && seg->ops->close)
        seg->ops->close(seg);
    seg->ops = NULL;
    seg->hist_blk = NULL;
    shmq_seg_close(seg);
}
