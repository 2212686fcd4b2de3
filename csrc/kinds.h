/* kinds.h - the top of the C core: opening a segment as the kind of queue it holds.
 *
 * Contract: these are the entry points a binding uses to create, open, attach, fork and close
 * a handle. Each one does the segment-level work (segment.c, participants.c) and binds the
 * kind's hooks (shmq_ops_t) and per-handle state, chosen from the validated header's kind and
 * flags, before the handle attaches: a dead participant found while attaching is repaired by
 * its own kind. Nothing below this file knows which kinds exist (DESIGN §1).
 * Concurrency and crash windows: those of the functions it calls (segment.h, participants.h).
 */
#ifndef SHMQ_KINDS_H
#define SHMQ_KINDS_H

#include "segment.h"

/* Create (exist_ok: open an existing one instead of failing with EEXIST in seg->err). */
int shmq_create(shmq_seg_t *seg, const shmq_create_opts_t *o, int exist_ok, int *created);
/* Open an existing segment by path, or adopt an already open fd (fd >= 0, path may be NULL). */
int shmq_open(shmq_seg_t *seg, const char *path, int fd);
/* Attach as a participant (takes a slot and its lock byte). */
int shmq_attach(shmq_seg_t *seg);
/* After fork in the child: reopen a private description and void the parent threads' flags.
 * The child holds no slot until it attaches (shmq_attach, at its first use of the handle). */
int shmq_after_fork(shmq_seg_t *seg);
/* untrusted: full validation of the header, the mapped areas and the kind's regions. */
int shmq_validate(shmq_seg_t *seg);
/* Detach, free the kind's state, unmap. Idempotent. */
void shmq_close(shmq_seg_t *seg);

#endif
