#include "crashpoint.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int shmq_crash_armed = 0;
static char crash_name[64];
static long crash_countdown = 1;
static int crash_signal = SIGKILL; /* ":stop": SIGSTOP instead, to hold a process at the point */

#define SHMQ_X_NAME(n, w) #n,
#define SHMQ_X_WHERE(n, w) w,
static const char *const crash_names[] = {SHMQ_CRASH_POINTS(SHMQ_X_NAME)};
static const char *const crash_wheres[] = {SHMQ_CRASH_POINTS(SHMQ_X_WHERE)};

int shmq_crash_count(void) { return (int)(sizeof crash_names / sizeof crash_names[0]); }
const char *shmq_crash_name(int i) { return (i >= 0 && i < shmq_crash_count()) ? crash_names[i] : NULL; }
const char *shmq_crash_where(int i) { return (i >= 0 && i < shmq_crash_count()) ? crash_wheres[i] : NULL; }

/* Read once when the library loads; the environment is not consulted on the hot path. */
__attribute__((constructor)) static void shmq_crash_init(void)
{
    const char *spec = getenv("SHMQ_CRASH_AT");
    if (!spec || !*spec)
        return;
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n >= sizeof crash_name)
        return;
    memcpy(crash_name, spec, n);
    crash_name[n] = 0;
    if (colon) {
        char *end = NULL;
        long c = strtol(colon + 1, &end, 10);
        crash_countdown = c > 0 ? c : 1;
        if (end && strcmp(end, ":stop") == 0)
            crash_signal = SIGSTOP;
    }
    shmq_crash_armed = 1;
}

void shmq_crash_hit(const char *name)
{
    if (strcmp(name, crash_name) != 0)
        return;
    /* Atomic so that several threads hitting the point kill exactly at the n-th hit. */
    if (__atomic_sub_fetch(&crash_countdown, 1, __ATOMIC_SEQ_CST) == 0)
        kill(getpid(), crash_signal); /* SIGSTOP: the whole process stops here until SIGCONT */
}
