/* tharness.h - the harness of the C core tests (no dependencies beyond libc).
 *
 * CHECK / CHECK_EQ fail the current test function (and return from it); RUN runs one and
 * prints "ok NAME" or "FAIL NAME"; TH_SUMMARY prints the closing "N passed, N failed" line
 * that tests/test_c_core.py looks for, and is main's exit code.
 *
 * Cleanup that holds on failure too (a failed CHECK returns early): th_path registers the
 * segment path it builds and th_fork the child it starts; after every RUN the harness closes
 * the handles it made (th_seg), kills and reaps the children still running and unlinks the
 * registered paths, and it does the same at exit and on the watchdog alarm (TH_TIMEOUT_S,
 * default 120 s per binary), so a hung or failed test leaves nothing in /dev/shm.
 *
 * Child roles: a test that needs a process armed with a crash point (SHMQ_CRASH_AT is read
 * once at load, so a plain fork cannot arm it) re-executes this binary with th_spawn(); main
 * calls th_child_dispatch(argc, argv, table) first, which runs the named role and exits.
 *
 * The only place that knows internals of the core is the "internals" block at the end.
 *
 * Adding a test: a new csrc/tests/test_<what>.c with a main() of RUN(...)s and TH_SUMMARY()
 * is built (ASan+UBSan, -Werror) and run by tests/test_c_core.py without further wiring.
 */
#ifndef SHMQ_THARNESS_H
#define SHMQ_THARNESS_H
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../dedup.h"
#include "../desc.h"
#include "../kinds.h"
#include "../lease.h"
#include "../participants.h"
#include "../segment.h"

/* helpers may go unused in a given test file */
#define TH_FN static __attribute__((unused))

static int th_failed = 0, th_passed = 0;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            th_failed++;                                                             \
            return;                                                                  \
        }                                                                            \
    } while (0)
#define CHECK_EQ(a, b)                                                                                   \
    do {                                                                                                 \
        long long _a = (long long)(a), _b = (long long)(b);                                              \
        if (_a != _b) {                                                                                  \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", __FILE__, __LINE__, #a, _a, #b, _b); \
            th_failed++;                                                                                 \
            return;                                                                                      \
        }                                                                                                \
    } while (0)

/* ---------------------------------------------------------------- cleanup registry */

#define TH_MAX_PATHS 64
#define TH_MAX_KIDS 64
#define TH_MAX_SEGS 32
static char th_paths[TH_MAX_PATHS][128];
static int th_npaths = 0;
static pid_t th_kids[TH_MAX_KIDS];
static int th_nkids = 0;
static shmq_seg_t th_segs[TH_MAX_SEGS];
static int th_nsegs = 0;
static pid_t th_main_pid = 0;
static int th_seq = 0;

TH_FN void th_forget_kid(pid_t pid)
{
    for (int i = 0; i < th_nkids; i++)
        if (th_kids[i] == pid) {
            th_kids[i] = th_kids[--th_nkids];
            return;
        }
}

/* Async-signal-safe enough for the watchdog: kill, waitpid and unlink only. */
TH_FN void th_cleanup_files_and_kids(void)
{
    if (getpid() != th_main_pid)
        return; /* a child never cleans up the parent's files */
    for (int i = 0; i < th_nkids; i++) {
        kill(th_kids[i], SIGKILL);
        waitpid(th_kids[i], NULL, 0);
    }
    th_nkids = 0;
    for (int i = 0; i < th_npaths; i++)
        unlink(th_paths[i]);
    th_npaths = 0;
}

TH_FN void th_cleanup(void)
{
    if (getpid() != th_main_pid)
        return;
    for (int i = 0; i < th_nsegs; i++)
        shmq_close(&th_segs[i]); /* idempotent: a test may have closed it already */
    th_nsegs = 0;
    th_cleanup_files_and_kids();
}

TH_FN void th_on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "tharness: watchdog timeout, killing children and removing segments\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    th_cleanup_files_and_kids();
    _exit(3);
}

TH_FN void th_init(void)
{
    if (th_main_pid)
        return;
    th_main_pid = getpid();
    setvbuf(stdout, NULL, _IONBF, 0);
    atexit(th_cleanup);
    signal(SIGALRM, th_on_alarm);
    const char *t = getenv("TH_TIMEOUT_S");
    alarm(t && atoi(t) > 0 ? (unsigned)atoi(t) : 120u);
}

#define RUN(fn)                                  \
    do {                                         \
        th_init();                               \
        int _before = th_failed;                 \
        fn();                                    \
        th_cleanup();                            \
        if (th_failed == _before) {              \
            th_passed++;                         \
            printf("ok   %s\n", #fn);            \
        } else {                                 \
            printf("FAIL %s\n", #fn);            \
        }                                        \
    } while (0)
#define TH_SUMMARY()                                          \
    do {                                                      \
        printf("%d passed, %d failed\n", th_passed, th_failed); \
        return th_failed ? 1 : 0;                             \
    } while (0)

/* A unique segment path for this test, removed after the test whatever happens. */
TH_FN void th_path(char *buf, size_t n, const char *tag)
{
    th_init();
    snprintf(buf, n, "/dev/shm/shmq.ctest-%s-%d-%d", tag, (int)getpid(), th_seq++);
    if (getpid() == th_main_pid && th_npaths < TH_MAX_PATHS)
        snprintf(th_paths[th_npaths++], sizeof th_paths[0], "%s", buf);
}

/* fork(), the child registered for killing at the end of the test. The child must leave with
 * _exit (never return into the test). */
TH_FN pid_t th_fork(void)
{
    th_init();
    pid_t pid = fork();
    if (pid > 0 && th_nkids < TH_MAX_KIDS)
        th_kids[th_nkids++] = pid;
    return pid;
}

/* Wait for a child up to timeout_ms; on timeout it is killed. Returns its wait status, or -1. */
TH_FN int th_wait(pid_t pid, int timeout_ms)
{
    int st = -1;
    for (int waited = 0;; waited++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            st = -1;
            break;
        }
        if (waited >= timeout_ms) {
            fprintf(stderr, "tharness: child %d still running after %d ms: killed\n", (int)pid, timeout_ms);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            st = -1;
            break;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    th_forget_kid(pid);
    return st;
}

TH_FN int th_exited_ok(int st) { return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0; }
TH_FN int th_killed(int st) { return st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL; }

/* Re-execute this binary as child `role` with up to four arguments (NULL ends them early), with
 * SHMQ_CRASH_AT=crash_at when crash_at is not NULL. */
TH_FN pid_t th_spawn(const char *crash_at, const char *role, const char *a1, const char *a2, const char *a3,
                     const char *a4)
{
    pid_t pid = th_fork();
    if (pid == 0) {
        if (crash_at)
            setenv("SHMQ_CRASH_AT", crash_at, 1);
        else
            unsetenv("SHMQ_CRASH_AT");
        char *argv[] = {"child", "--th-child", (char *)role, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    return pid;
}

typedef struct {
    const char *role;
    int (*fn)(int argc, char **argv); /* argv[0] = the first argument after the role */
} th_role_t;

/* In main, before anything else: runs a child role (th_spawn) and exits with its result. */
TH_FN void th_child_dispatch(int argc, char **argv, const th_role_t *roles)
{
    if (argc < 3 || strcmp(argv[1], "--th-child") != 0)
        return;
    for (const th_role_t *r = roles; r->role; r++)
        if (strcmp(r->role, argv[2]) == 0)
            _exit(r->fn(argc - 3, argv + 3));
    _exit(126);
}

TH_FN void th_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#define TH_MS (1000ull * 1000)
TH_FN inline uint64_t th_after_ms(uint64_t ms) { return shmq_now_mono_ns() + ms * TH_MS; }

/* ---------------------------------------------------------------- handles (the factory) */

/* A handle closed by the harness after the test (NULL when the pool is exhausted). */
TH_FN shmq_seg_t *th_seg(void)
{
    if (th_nsegs >= TH_MAX_SEGS)
        return NULL;
    shmq_seg_t *s = &th_segs[th_nsegs++];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    return s;
}

/* Create a segment with these options and attach to it; NULL on failure (printed). */
TH_FN shmq_seg_t *th_create(const shmq_create_opts_t *o)
{
    shmq_seg_t *s = th_seg();
    int created = 0, rc;
    if (!s)
        return NULL;
    if ((rc = shmq_create(s, o, 0, &created)) != SHMQ_OK || !created || (rc = shmq_attach(s)) != SHMQ_OK) {
        fprintf(stderr, "tharness: create/attach %s failed: %s (%d), errno %d\n", o->path, shmq_strerror(rc), rc, s->err);
        return NULL;
    }
    return s;
}

/* Open and attach another handle to an existing segment; NULL on failure (printed). */
TH_FN shmq_seg_t *th_open(const char *path)
{
    shmq_seg_t *s = th_seg();
    int rc;
    if (!s)
        return NULL;
    if ((rc = shmq_open(s, path, -1)) != SHMQ_OK || (rc = shmq_attach(s)) != SHMQ_OK) {
        fprintf(stderr, "tharness: open/attach %s failed: %s (%d)\n", path, shmq_strerror(rc), rc);
        return NULL;
    }
    return s;
}

/* Plain queue options (kind QUEUE, mode 0600). */
TH_FN inline shmq_create_opts_t th_opts(const char *path, uint64_t cap, uint32_t flags, uint64_t maxsize)
{
    shmq_create_opts_t o;
    memset(&o, 0, sizeof o);
    o.path = path;
    o.kind = SHMQ_KIND_QUEUE;
    o.flags = flags;
    o.capacity = cap;
    o.maxsize = maxsize;
    o.mode = 0600;
    return o;
}

/* At-least-once queue options: lease visibility_ns, max_deliveries, dead-letter queue name
 * (NULL = none, as a dead-letter queue itself is), a dedup window of one second. */
TH_FN inline shmq_create_opts_t th_ack_opts(const char *path, uint64_t cap, uint64_t visibility_ns, uint32_t max_deliveries,
                                             const char *dead_letter)
{
    shmq_create_opts_t o = th_opts(path, cap, SHMQ_F_ACK, 0);
    o.visibility_ns = visibility_ns;
    o.max_deliveries = max_deliveries;
    o.dead_letter = dead_letter;
    o.dedup_window_ns = 1000 * TH_MS;
    return o;
}

/* ---------------------------------------------------------------- internals
 * Everything below reads structures that are not part of the public C API (segment.h
 * internals). Keep test files off these fields: call these helpers instead. */

/* The largest message this queue accepts (body + at-least-once blocks). */
TH_FN inline uint64_t th_max_message(shmq_seg_t *q) { return q->hdr->max_message; }
/* Index of the newest area (> 0 once a growable queue grew). */
TH_FN inline uint32_t th_area_tail(shmq_seg_t *q) { return q->hdr->area_tail; }
/* Number of retired areas (memory given back). */
TH_FN inline uint32_t th_areas_retired(shmq_seg_t *q)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->hdr->area_tail && i < SHMQ_MAX_AREAS; i++)
        n += q->hdr->areas[i].state == SHMQ_AREA_RETIRED;
    return n;
}
/* Area 0 of a queue (its arena, descriptors and ring live there). */
TH_FN inline shmq_area_t *th_area0(shmq_seg_t *q) { return &q->areas[0]; }
/* The live descriptor (not FREE) carrying message id, in any mapped area; NULL if none.
 * For tests that write garbage into shared memory on purpose. */
TH_FN shmq_desc_t *th_desc_by_id(shmq_seg_t *q, uint64_t id)
{
    for (uint32_t i = 0; i < SHMQ_MAX_AREAS; i++) {
        shmq_area_t *a = &q->areas[i];
        for (uint32_t k = 0; a->base && k < a->n_desc; k++) {
            shmq_desc_t *d = (shmq_desc_t *)(a->desc + (uint64_t)k * SHMQ_DESC_SIZE);
            if (d->id == id && shmq_desc_state(d->word) != SHMQ_D_FREE)
                return d;
        }
    }
    return NULL;
}
/* The dedup table of an at-least-once queue (dedup.h defines the entries); NULL if none. */
TH_FN shmq_dedup_ent_t *th_dedup_table(shmq_seg_t *q, uint32_t *n)
{
    shmq_ack_t *k = shmq_ack_of(q);
    *n = k ? k->dedup_slots : 0;
    return k ? k->dedup : NULL;
}
/* The process-local guard of a lock word (lock.h: one per lock per handle): an area's arena lock
 * has the area's, any other word (the grow lock, a test's own word) the handle's grow guard. */
TH_FN int *th_lock_flag(shmq_seg_t *q, uint32_t *word)
{
    for (uint32_t i = 0; i < SHMQ_MAX_AREAS; i++)
        if (q->areas[i].base && word == &q->areas[i].hdr->arena_lock)
            return &q->areas[i].arena_busy;
    return &q->grow_busy;
}
/* Put n bytes as one message (kind 1); shmq_put's result. */
TH_FN int th_put_bytes(shmq_seg_t *q, const void *p, uint64_t n, uint64_t deadline)
{
    shmq_iov_t iov = {p, n};
    return shmq_put(q, &iov, 1, 1, deadline, NULL);
}
/* Take one message: its size in *n, up to cap bytes of it copied to out. */
TH_FN int th_get_bytes(shmq_seg_t *q, void *out, uint64_t cap, uint64_t *n, uint64_t deadline)
{
    shmq_msg_t m;
    int rc = shmq_get_begin(q, &m, deadline);
    if (rc != SHMQ_OK)
        return rc;
    *n = m.size;
    memcpy(out, m.data, m.size < cap ? m.size : cap);
    shmq_get_end(q, &m);
    return SHMQ_OK;
}
/* The repair counter of the header. */
TH_FN inline uint64_t th_repairs(shmq_seg_t *q) { return q->hdr->repairs; }
#endif
