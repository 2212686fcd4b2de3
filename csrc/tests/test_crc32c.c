/* test_crc32c.c - CRC-32C: RFC 3720 vectors, hardware == software, chaining. */
#include "tharness.h"
#include "../crc32c.h"

static void test_vectors(void)
{
    uint8_t buf[48];
    memset(buf, 0, 32);
    CHECK_EQ(shmq_crc32c_sw(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32);
    CHECK_EQ(shmq_crc32c_sw(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    CHECK_EQ(shmq_crc32c_sw(0, buf, 32), 0x46DD794Eu);
    CHECK_EQ(shmq_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ(shmq_crc32c(0, "123456789", 9), 0xE3069283u);
}

static void test_hw_matches_sw(void)
{
    if (!shmq_crc32c_hw_available()) {
        printf("# no SSE4.2: hardware path not tested\n");
        CHECK_EQ(shmq_crc32c(0, "a", 1), shmq_crc32c_sw(0, "a", 1));
        return;
    }
    uint8_t buf[1024];
    unsigned s = 12345;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(rand_r(&s) % 1024);
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)rand_r(&s);
        size_t off = n ? (size_t)rand_r(&s) % n : 0; /* unaligned starts too */
        CHECK_EQ(shmq_crc32c_hw(7, buf + off, n - off), shmq_crc32c_sw(7, buf + off, n - off));
    }
}

static void test_chaining(void)
{
    const char *s = "the quick brown fox jumps over the lazy dog";
    size_t n = strlen(s);
    for (size_t cut = 0; cut <= n; cut++)
        CHECK_EQ(shmq_crc32c(shmq_crc32c(0, s, cut), s + cut, n - cut), shmq_crc32c(0, s, n));
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_vectors);
    RUN(test_hw_matches_sw);
    RUN(test_chaining);
    TH_SUMMARY();
}
