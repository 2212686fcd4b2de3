/* tharness.h - a minimal test harness for the C core tests (no dependencies). */
#ifndef SHMQ_THARNESS_H
#define SHMQ_THARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
#define RUN(fn)                                  \
    do {                                         \
        int _before = th_failed;                 \
        setvbuf(stdout, NULL, _IONBF, 0);        \
        fn();                                    \
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

static void th_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/dev/shm/shmq.ctest-%s-%d", tag, (int)getpid());
}
#endif
