#define _GNU_SOURCE
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "segment.h"

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

/* ---------------------------------------------------------------- truncation guard */

typedef struct {
    shmq_seg_t *seg;          /* NULL: free entry (published last, cleared first) */
    volatile int *fault_word;
} guard_ent_t;

static guard_ent_t guards[SHMQ_GUARD_MAX];
#define GUARD_CLAIMED ((shmq_seg_t *)1) /* an entry being filled in */
static struct sigaction displaced; /* the SIGBUS handler ours replaced */
static long page_size;

static int covers(const shmq_seg_t *seg, uintptr_t addr)
{
    /* the handler reads process-local views only: base pointers go from NULL to a mapping */
    uintptr_t b = (uintptr_t)seg->map0;
    if (b && addr - b < seg->map0_len)
        return 1;
    for (uint32_t i = 0; i < SHMQ_MAX_AREAS; i++) {
        b = (uintptr_t)seg->areas[i].base;
        if (b && addr - b < seg->areas[i].size)
            return 1;
    }
    return 0;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    if (si && si->si_code == BUS_ADRERR) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        for (int i = 0; i < SHMQ_GUARD_MAX; i++) {
            shmq_seg_t *seg = __atomic_load_n(&guards[i].seg, __ATOMIC_ACQUIRE);
            if (!seg || seg == GUARD_CLAIMED || !covers(seg, addr))
                continue;
            void *page = (void *)(addr & ~(uintptr_t)(page_size - 1));
            /* mmap is a plain system call: safe here although POSIX does not list it */
            if (mmap(page, (size_t)page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                MAP_FAILED)
                break;
            volatile int *fw = __atomic_load_n(&guards[i].fault_word, __ATOMIC_ACQUIRE);
            if (fw)
                *fw = 1;
            __atomic_store_n(&seg->closing, 1, __ATOMIC_SEQ_CST); /* its blocked waits return */
            errno = saved;
            return; /* the access is retried and reads the zero page */
        }
    }
    /* Not ours: what would have happened without us. */
    if ((displaced.sa_flags & SA_SIGINFO) && displaced.sa_sigaction) {
        displaced.sa_sigaction(sig, si, uc);
    } else if (displaced.sa_handler != SIG_DFL && displaced.sa_handler != SIG_IGN) {
        displaced.sa_handler(sig);
    } else {
        signal(SIGBUS, SIG_DFL); /* the faulting access is retried and kills, as without us */
    }
    errno = saved;
}

static int ensure_handler(void)
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) != 0)
        return -1;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
        return 0;
    if (!page_size)
        page_size = sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    displaced = cur;
    return sigaction(SIGBUS, &sa, NULL);
}

int shmq_guard_register(shmq_seg_t *seg, volatile int *fault_word)
{
    if (ensure_handler() != 0)
        return -1;
    for (int i = 0; i < SHMQ_GUARD_MAX; i++) {
        shmq_seg_t *none = NULL;
        if (__atomic_load_n(&guards[i].seg, __ATOMIC_RELAXED) != NULL)
            continue;
        /* claim the entry with a placeholder, fill it, then publish the seg (release) */
        if (!__atomic_compare_exchange_n(&guards[i].seg, &none, GUARD_CLAIMED, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&guards[i].fault_word, fault_word, __ATOMIC_RELAXED);
        __atomic_store_n(&guards[i].seg, seg, __ATOMIC_RELEASE);
        return 0;
    }
    return -1;
}

void shmq_guard_unregister(shmq_seg_t *seg)
{
    for (int i = 0; i < SHMQ_GUARD_MAX; i++) {
        shmq_seg_t *s = seg;
        if (__atomic_compare_exchange_n(&guards[i].seg, &s, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return;
    }
}
