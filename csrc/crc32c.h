/* crc32c.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the journal's checksum.
 *
 * Contract: pure functions, no shared state beyond a dispatch pointer chosen once (a benign
 * race: every thread computes the same choice). shmq_crc32c uses the SSE4.2 crc32 instruction
 * when the CPU has it (checked at run time with cpuid, so one build runs everywhere) and the
 * slicing-by-8 table otherwise; both give identical results (tests/test_crc32c.c checks both
 * against the RFC 3720 vectors and against each other on random buffers).
 * Chaining: shmq_crc32c(shmq_crc32c(0, a, n), b, m) == shmq_crc32c(0, a||b, n + m).
 */
#ifndef SHMQ_CRC32C_H
#define SHMQ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t shmq_crc32c(uint32_t crc, const void *data, size_t n);
/* The two implementations, for tests and the benchmark. */
uint32_t shmq_crc32c_sw(uint32_t crc, const void *data, size_t n);
uint32_t shmq_crc32c_hw(uint32_t crc, const void *data, size_t n); /* only where shmq_crc32c_hw_available() */
int shmq_crc32c_hw_available(void);

#endif
