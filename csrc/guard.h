/* guard.h - defences against other processes on the host: a temporary file nobody can take
 * first (issue 11 item 9), and a SIGBUS from a segment truncated under us (item 7).
 *
 * Temporary files. Contract: shmq_tmp_create opens a new, empty file in the directory of `path` that no other
 * process can have opened or pre-created: an unnamed O_TMPFILE file (tmpfs supports it), or,
 * where the kernel or file system refuses O_TMPFILE, a file created with O_EXCL under
 * "<path>~c<pid>.<64 random bits>" (retried on EEXIST, so a squatter who guessed names cannot
 * make creation fail). shmq_tmp_publish links it to `path` (EEXIST: another creator won).
 * Thread-safe, no shared state. Crash windows: a process killed before publishing leaves
 * nothing with O_TMPFILE (the kernel frees an unnamed file at its last close) and one temp
 * file otherwise (`shmq gc` removes those of dead creators).
 */
#ifndef SHMQ_GUARD_H
#define SHMQ_GUARD_H

#include <stddef.h>

struct shmq_seg;

/* Returns an fd (O_RDWR | O_CLOEXEC, mode 0600) or -1 with errno set. tmp receives the temp
 * name ("" for an unnamed file); tmpcap is its capacity. */
int shmq_tmp_create(const char *path, char *tmp, size_t tmpcap);
/* Give the file its real name. Returns 0 or an errno value (EEXIST: the name exists). The temp
 * name, if any, is removed whatever the outcome. */
int shmq_tmp_publish(int fd, const char *tmp, const char *path);
/* Drop a file that will not be published (removes the temp name, if any). */
void shmq_tmp_discard(const char *tmp);

/* Truncation guard. A segment file shrunk (ftruncate) by another process turns every access to
 * the missing pages into SIGBUS, which would kill this interpreter. A binding registers each
 * open segment with a fault word; a process-wide SIGBUS handler (SA_SIGINFO, installed or put
 * back on top at each registration, chaining to the handler it displaced) checks whether the
 * fault is BUS_ADRERR at an address inside a registered segment's mappings (header, slots,
 * areas). If so it maps a private zero page over the faulting page (so the access completes,
 * reading zeros, which every reader treats as untrusted data anyway), sets the fault word and
 * the segment's `closing` flag (blocked waits of that handle return), and returns. The binding
 * checks the word after each call and turns it into CorruptQueueError, closing the handle. Any
 * other SIGBUS goes to the displaced handler (or the default action) exactly as before.
 * Thread-safety: register/unregister may run in any thread (entries are published with
 * atomics); the handler only reads. Limits: at most SHMQ_GUARD_MAX segments are protected at
 * once (registration fails beyond that and the handle is unprotected); a handler installed
 * later by someone else that does not chain (or that re-raises with raise(), as faulthandler
 * does when enabled after us) hides ours until the next registration puts ours back. */
#define SHMQ_GUARD_MAX 4096
/* 0, or -1 when the table is full or the handler could not be installed. */
int shmq_guard_register(struct shmq_seg *seg, volatile int *fault_word);
void shmq_guard_unregister(struct shmq_seg *seg);

#endif
