/* test_ack_hold.c - lease.h shmq_ack_keep / shmq_ack_release: the ack of a delivery whose
 * payload is still viewed (receive(copy=False)): acked at once, storage kept until release. */
#define _GNU_SOURCE
#include "../queue.h"
#include "tharness.h"

static void test_hold_then_release(void)
{
    char path[128];
    th_path(path, sizeof path, "hold");
    shmq_create_opts_t o = th_ack_opts(path, 1 << 20, 10000 * TH_MS, 5, NULL);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    char big[4096];
    memset(big, 7, sizeof big);
    shmq_iov_t iov = {big, sizeof big};
    shmq_send_opts_t so = {.delay_ns = SHMQ_USE_DEFAULT, .ttl_ns = SHMQ_USE_DEFAULT};
    uint64_t id;
    int dup;
    CHECK_EQ(shmq_send(q, &iov, 1, 0, &so, 0, &id, &dup), SHMQ_OK);
    shmq_msg_t m;
    CHECK_EQ(shmq_receive_begin(q, &m, 0), SHMQ_OK);
    CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
    shmq_desc_t *d = th_desc_by_id(q, id);
    CHECK(d != NULL);
    CHECK_EQ(shmq_ack_keep(q, m.handle, m.id), SHMQ_OK);
    CHECK_EQ(shmq_desc_state(d->word), SHMQ_D_READING);
    CHECK_EQ(shmq_ack(q, m.handle, m.id), SHMQ_ESTALE);   /* settled: a second ack changes nothing */
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.acked, 1u);
    CHECK_EQ(st.in_flight, 0u);
    CHECK(st.bytes_used >= sizeof big);                  /* the payload is kept */
    CHECK(((const char *)m.data)[100] == 7);
    shmq_ack_release(q, m.handle);
    CHECK_EQ(shmq_desc_state(d->word), SHMQ_D_FREE);
    shmq_stats(q, &st);
    CHECK_EQ(st.bytes_used, 0u);
    shmq_ack_release(q, m.handle);                       /* no longer ours: nothing happens */
    CHECK_EQ(shmq_desc_state(d->word), SHMQ_D_FREE);
    CHECK_EQ(shmq_validate(q), SHMQ_OK);
}

static void test_dead_holder_is_freed_by_repair(void)
{
    char path[128];
    th_path(path, sizeof path, "holdk");
    shmq_create_opts_t o = th_ack_opts(path, 1 << 20, 10000 * TH_MS, 5, NULL);
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    char big[4096] = {0};
    shmq_iov_t iov = {big, sizeof big};
    shmq_send_opts_t so = {.delay_ns = SHMQ_USE_DEFAULT, .ttl_ns = SHMQ_USE_DEFAULT};
    uint64_t id;
    int dup;
    CHECK_EQ(shmq_send(q, &iov, 1, 0, &so, 0, &id, &dup), SHMQ_OK);
    pid_t pid = th_fork();
    if (pid == 0) {
        shmq_seg_t c;
        memset(&c, 0, sizeof c);
        c.fd = -1;
        shmq_msg_t m;
        if (shmq_open(&c, path, -1) != SHMQ_OK || shmq_attach(&c) != SHMQ_OK || shmq_receive_begin(&c, &m, 0) != SHMQ_OK ||
            shmq_receive_end(&c, &m) != SHMQ_OK || shmq_ack_keep(&c, m.handle, m.id) != SHMQ_OK)
            _exit(2);
        raise(SIGKILL);
    }
    CHECK(th_killed(th_wait(pid, 10000)));
    shmq_repair_dead(q);
    shmq_stats_t st;
    shmq_stats(q, &st);
    CHECK_EQ(st.acked, 1u);
    CHECK_EQ(st.bytes_used, 0u);
    CHECK_EQ(st.depth, 0u);
    CHECK_EQ(st.in_flight, 0u);
}

int main(void)
{
    RUN(test_hold_then_release);
    RUN(test_dead_holder_is_freed_by_repair);
    TH_SUMMARY();
}
