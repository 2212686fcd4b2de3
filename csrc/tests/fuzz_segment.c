/* fuzz_segment.c - libFuzzer-style entry point over segment validation and use, plus a
 * self-contained mutation driver so gcc+ASan can run it without clang (build with
 * -DSHMQ_FUZZ_DRIVER). The input is a segment image: it is written to a file, opened through
 * the normal validation path and, if it validates, used (attach, get, put, stats, check).
 * Whatever the bytes, the core must answer with an error code, never read or write outside
 * the mapping (ASan) or hit undefined behaviour (UBSan).
 *
 * driver usage: fuzz_segment SECONDS [SEED] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../queue.h"
#include "../kinds.h"
#include "../participants.h"

static char fuzz_path[128];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fuzz_path[0])
        snprintf(fuzz_path, sizeof fuzz_path, "/dev/shm/shmq.fuzz-%d", (int)getpid());
    int fd = open(fuzz_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    close(fd);
    shmq_seg_t q;
    if (shmq_open(&q, fuzz_path, -1) == SHMQ_OK) {
        if (shmq_validate(&q) == SHMQ_OK && shmq_attach(&q) == SHMQ_OK) {
            shmq_msg_t m;
            for (int i = 0; i < 4; i++) {
                if (shmq_get_begin(&q, &m, 0) == SHMQ_OK) {
                    volatile uint8_t sink = 0;
                    for (uint64_t k = 0; k < m.size; k += 61)
                        sink ^= m.data[k];
                    (void)sink;
                    shmq_get_end(&q, &m);
                }
            }
            uint8_t buf[300];
            memset(buf, 7, sizeof buf);
            shmq_iov_t iov = {buf, sizeof buf};
            shmq_put(&q, &iov, 1, 1, 0, NULL);
            iov.len = 10;
            shmq_put(&q, &iov, 1, 1, 0, NULL);
            shmq_stats_t st;
            shmq_stats(&q, &st);
            shmq_check_t ck;
            shmq_check(&q, &ck);
            shmq_peek_t pk;
            shmq_peek(&q, 0, &pk, buf, sizeof buf);
            shmq_repair_dead(&q);
        }
        shmq_close(&q);
    }
    unlink(fuzz_path);
    return 0;
}

#ifdef SHMQ_FUZZ_DRIVER
/* A valid image to mutate: a small queue with a few messages of both storage kinds. */
static uint8_t *seed_image(size_t *len)
{
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/shmq.fuzzseed-%d", (int)getpid());
    shmq_create_opts_t o = {.path = path, .kind = SHMQ_KIND_QUEUE, .flags = 0, .capacity = 96 << 10, .mode = 0600};
    shmq_seg_t q;
    int created;
    if (shmq_create(&q, &o, 0, &created) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        exit(2);
    uint8_t big[2000];
    memset(big, 0xab, sizeof big);
    for (int i = 0; i < 6; i++) {
        shmq_iov_t iov = {big, i % 2 ? 20 : sizeof big};
        shmq_put(&q, &iov, 1, 1, 0, NULL);
    }
    shmq_msg_t m;
    shmq_get_begin(&q, &m, 0);
    shmq_get_end(&q, &m);
    shmq_close(&q);
    int fd = open(path, O_RDONLY);
    off_t n = lseek(fd, 0, SEEK_END);
    uint8_t *img = malloc((size_t)n);
    if (pread(fd, img, (size_t)n, 0) != n)
        exit(2);
    close(fd);
    unlink(path);
    *len = (size_t)n;
    return img;
}

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL);
    if (!rng_state)
        rng_state = 1;
    size_t len;
    uint8_t *seed = seed_image(&len);
    uint8_t *img = malloc(len);
    /* Mutations concentrate on the structured front (header, slots, area header, cells,
     * descriptors) where the parsing happens; the arena gets a share too. */
    static const uint64_t interesting[] = {0, 1, 0xff, 0x7fffffff, 0xffffffff, 0x80000000, UINT64_MAX, 4096, 65536, 1ull << 40};
    long runs = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > seconds)
            break;
        memcpy(img, seed, len);
        size_t use = len;
        int nmut = 1 + (int)(rnd() % 8);
        for (int k = 0; k < nmut; k++) {
            size_t span = (rnd() % 4) ? 16384 : len;
            if (span > len)
                span = len;
            size_t off = (size_t)(rnd() % span);
            switch (rnd() % 5) {
            case 0:
                img[off] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:
                img[off] = (uint8_t)rnd();
                break;
            case 2: {
                uint64_t v = interesting[rnd() % (sizeof interesting / sizeof interesting[0])];
                size_t w = (rnd() % 2) ? 4 : 8;
                off &= ~(w - 1);
                if (off + w <= len)
                    memcpy(img + off, &v, w);
                break;
            }
            case 3: {
                uint64_t v = rnd();
                off &= ~(size_t)7;
                if (off + 8 <= len)
                    memcpy(img + off, &v, 8);
                break;
            }
            default:
                if (rnd() % 4 == 0)
                    use = (size_t)(rnd() % len); /* truncation */
                break;
            }
        }
        LLVMFuzzerTestOneInput(img, use);
        runs++;
    }
    printf("fuzz_segment: %ld inputs, no crash\n1 passed, 0 failed\n", runs);
    free(img);
    free(seed);
    return 0;
}
#endif
