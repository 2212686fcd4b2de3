#include "crc32c.h"

#include <string.h>

static uint32_t table[8][256];
static int table_ready;

static void build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
    /* release: the table is complete before the flag says so (threads racing here build the same table) */
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t shmq_crc32c_sw(uint32_t crc, const void *data, size_t n)
{
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE))
        build_table();
    const uint8_t *p = data;
    crc = ~crc;
    while (n >= 8) { /* slicing by 8: one table look-up per byte, eight independent ones per step */
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t shmq_crc32c_hw(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

int shmq_crc32c_hw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
uint32_t shmq_crc32c_hw(uint32_t crc, const void *data, size_t n) { return shmq_crc32c_sw(crc, data, n); }
int shmq_crc32c_hw_available(void) { return 0; }
#endif

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn chosen;

uint32_t shmq_crc32c(uint32_t crc, const void *data, size_t n)
{
    crc_fn f = __atomic_load_n(&chosen, __ATOMIC_RELAXED); /* relaxed: every thread picks the same one */
    if (__builtin_expect(f == NULL, 0)) {
        f = shmq_crc32c_hw_available() ? shmq_crc32c_hw : shmq_crc32c_sw;
        __atomic_store_n(&chosen, f, __ATOMIC_RELAXED);
    }
    return f(crc, data, n);
}
