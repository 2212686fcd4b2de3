#define _GNU_SOURCE
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static uint64_t random64(void)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r)
        return r;
    /* no entropy yet (early boot): still unguessable enough to need many tries, and each
     * EEXIST is retried with a new value */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    static uint64_t mix = 0x9e3779b97f4a7c15ull;
    mix += 0x9e3779b97f4a7c15ull;
    r = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 40) ^ mix;
    r ^= r >> 31;
    r *= 0xbf58476d1ce4e5b9ull;
    return r ^ (r >> 29);
}

int shmq_tmp_create(const char *path, char *tmp, size_t tmpcap)
{
    const char *slash = strrchr(path, '/');
    char dir[512];
    size_t dl = slash ? (size_t)(slash - path) : 0;
    if (dl == 0 && slash) /* a file in "/" */
        dl = 1;
    if (dl >= sizeof dir || tmpcap == 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (slash)
        memcpy(dir, path, dl);
    else
        dir[dl++] = '.';
    dir[dl] = '\0';
    tmp[0] = '\0';
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL && errno != ENOENT)
        return -1; /* e.g. EACCES, ENOSPC: the named path would fail the same way */
    for (int tries = 0; tries < 32; tries++) {
        int n = snprintf(tmp, tmpcap, "%s~c%d.%llu", path, (int)getpid(), (unsigned long long)random64());
        if (n < 0 || (size_t)n >= tmpcap) {
            tmp[0] = '\0';
            errno = ENAMETOOLONG;
            return -1;
        }
        fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0)
            return fd;
        if (errno != EEXIST)
            break;
    }
    int e = errno;
    tmp[0] = '\0';
    errno = e;
    return -1;
}

int shmq_tmp_publish(int fd, const char *tmp, const char *path)
{
    if (tmp[0]) {
        int rc = link(tmp, path) == 0 ? 0 : errno;
        unlink(tmp);
        return rc;
    }
    /* An unnamed file gets its name through /proc (no privilege needed), else AT_EMPTY_PATH
     * (needs CAP_DAC_READ_SEARCH). */
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    int e = errno;
    if (e == ENOENT && access("/proc/self/fd", F_OK) != 0) {
        if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0)
            return 0;
        e = errno;
    }
    return e;
}

void shmq_tmp_discard(const char *tmp)
{
    if (tmp[0])
        unlink(tmp);
}
