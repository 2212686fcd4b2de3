#define _GNU_SOURCE
#include "forward.h"

#include <string.h>

#include "crashpoint.h"
#include "dedup.h"

void shmq_forward_key(const char *name, uint64_t id, uint8_t key[16])
{
    char src[4 + SHMQ_DLQ_NAME_MAX + 8];
    size_t nl = strnlen(name, SHMQ_DLQ_NAME_MAX - 1);
    memcpy(src, "fwd", 4); /* with its NUL: never equal to a dead-letter key ("dlq") */
    memcpy(src + 4, name, nl);
    memcpy(src + 4 + nl, &id, 8);
    shmq_hash128(src, 4 + nl + 8, key);
}

int shmq_forward(shmq_seg_t *q, uint64_t token, uint64_t id, shmq_seg_t *dest, const shmq_iov_t *iov, uint32_t n,
                 uint32_t kind, const shmq_send_opts_t *o, uint64_t deadline_ns, uint64_t *new_id, int *dup)
{
    *dup = 0;
    shmq_ack_t *k = shmq_ack_of(q);
    if (!k || !shmq_ack_of(dest) || o->dedup_key)
        return SHMQ_EINVAL;
    uint64_t held;
    int rc = shmq_ack_hold(q, token, id, &held);
    if (rc != SHMQ_OK)
        return rc;
    SHMQ_CRASH_POINT(forward_after_hold);
    uint8_t key[16];
    shmq_forward_key(k->name, id, key);
    shmq_send_opts_t so = *o;
    so.dedup_key = key;
    rc = shmq_send(dest, iov, n, kind, &so, deadline_ns, new_id, dup);
    if (rc != SHMQ_OK) {
        shmq_ack_unhold(q, token, held);
        return rc;
    }
    SHMQ_CRASH_POINT(forward_after_send);
    shmq_ack_held_finish(q, token);
    /* m is acked: no second forward of it can come, so dest need not remember the key for its
     * whole window (a pipeline would fill dest's dedup table in 16k steps otherwise). A kill
     * before this leaves the entry to expire with its window: harmless. */
    shmq_dedup_forget(dest, key, *new_id);
    return SHMQ_OK;
}
