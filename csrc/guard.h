/* guard.h - creating a segment file under a name nobody can predict or take first.
 *
 * Contract: shmq_tmp_create opens a new, empty file in the directory of `path` that no other
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

/* Returns an fd (O_RDWR | O_CLOEXEC, mode 0600) or -1 with errno set. tmp receives the temp
 * name ("" for an unnamed file); tmpcap is its capacity. */
int shmq_tmp_create(const char *path, char *tmp, size_t tmpcap);
/* Give the file its real name. Returns 0 or an errno value (EEXIST: the name exists). The temp
 * name, if any, is removed whatever the outcome. */
int shmq_tmp_publish(int fd, const char *tmp, const char *path);
/* Drop a file that will not be published (removes the temp name, if any). */
void shmq_tmp_discard(const char *tmp);

#endif
