/* stress_dedup.c - deduplicated sends under a SIGKILL storm: two sender processes send the
 * same K keys (each key's body is its number), the parent SIGKILLs a random sender every few
 * milliseconds and restarts it a little before where it was. Nobody consumes meanwhile, so
 * dedup.h's promise applies in full: afterwards the queue holds every key exactly once (no
 * loss, no second copy), whatever instant the senders died at (mid_dedup, holding the dedup
 * lock, between the put and the finish).
 * usage: stress_dedup [keys] */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "../dedup.h"
#include "../lease.h"
#include "tharness.h"

static long K = 6000; /* below the 8 MiB queue's 8192 descriptors: nobody consumes during the storm */
static char path[128];
static void sender(int who);
static long *progress; /* per sender: the next key it will send (shared); [2 + w]: where the parent (re)started it */

static pid_t start_sender(int w)
{
    progress[2 + w] = progress[w];
    pid_t pid = th_fork();
    if (pid == 0)
        sender(w);
    return pid;
}

static void sender(int who)
{
    shmq_seg_t q;
    if (shmq_open(&q, path, -1) != SHMQ_OK || shmq_attach(&q) != SHMQ_OK)
        _exit(10);
    long start = __atomic_load_n(&progress[who], __ATOMIC_SEQ_CST) - 3; /* some already sent again */
    for (long i = start < 0 ? 0 : start; i < K; i++) {
        uint32_t v = (uint32_t)i;
        uint8_t key[16];
        shmq_hash128(&v, sizeof v, key);
        shmq_iov_t iov = {&v, sizeof v};
        shmq_send_opts_t o = {.delay_ns = 0, .ttl_ns = 0, .hdr = NULL, .hdr_size = 0, .priority = 0, .dedup_key = key};
        uint64_t id;
        int dup, rc;
        while ((rc = shmq_send(&q, &iov, 1, 1, &o, th_after_ms(5000), &id, &dup)) == SHMQ_TIMEOUT) {
        } /* the other sender's PENDING entry: it finishes, or dies and is resolved */
        if (rc != SHMQ_OK)
            _exit(11);
        __atomic_store_n(&progress[who], i + 1, __ATOMIC_SEQ_CST);
        struct timespec ts = {0, 50000}; /* paced, so the storm lasts long enough to land kills mid-send */
        nanosleep(&ts, NULL);
    }
    shmq_close(&q);
    _exit(0);
}

static void test_dedup_kill_storm(void)
{
    th_path(path, sizeof path, "dstorm");
    shmq_create_opts_t o = th_ack_opts(path, 8 << 20, 60000 * TH_MS, 5, NULL);
    o.dedup_window_ns = 600000 * TH_MS;
    shmq_seg_t *q = th_create(&o);
    CHECK(q != NULL);
    progress = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(progress != MAP_FAILED);
    pid_t s[2];
    int done[2] = {0, 0}, bad = 0;
    long kills = 0;
    for (int w = 0; w < 2; w++)
        s[w] = start_sender(w);
    uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull, give_up = th_after_ms(90000);
    while (!(done[0] && done[1]) && shmq_now_mono_ns() < give_up) {
        th_sleep_ms(1 + (unsigned)(seed % 4));
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        for (int w = 0; w < 2; w++) { /* reap those that finished */
            int st;
            if (!done[w] && waitpid(s[w], &st, WNOHANG) == s[w]) {
                th_forget_kid(s[w]);
                if (th_exited_ok(st))
                    done[w] = 1;
                else /* failed on its own: counted, restarted */
                    s[w] = start_sender(w);
                bad += !th_exited_ok(st);
            }
        }
        int w = (int)(seed % 2);
        if (done[w])
            continue;
        /* only a sender that got past its overlap since it started: however slow the machine,
         * the storm cannot keep it from finishing */
        if (__atomic_load_n(&progress[w], __ATOMIC_SEQ_CST) <= __atomic_load_n(&progress[2 + w], __ATOMIC_SEQ_CST))
            continue;
        kill(s[w], SIGKILL);
        int st = th_wait(s[w], 10000);
        if (th_exited_ok(st)) {
            done[w] = 1; /* finished just before the kill */
            continue;
        }
        if (!th_killed(st))
            bad++;
        kills++;
        s[w] = start_sender(w);
    }
    CHECK(done[0] && done[1]);
    CHECK_EQ(bad, 0);
    shmq_repair_dead(q); /* a sender killed between READY and the ring publish left an orphan */
    static uint8_t count[1 << 20];
    CHECK(K <= (long)sizeof count);
    memset(count, 0, (size_t)K);
    long total = 0;
    for (;;) {
        shmq_msg_t m;
        int rc = shmq_receive_begin(q, &m, 0);
        if (rc == SHMQ_EMPTY)
            break;
        CHECK_EQ(rc, SHMQ_OK);
        uint32_t v;
        CHECK_EQ(m.size, sizeof v);
        memcpy(&v, m.data, sizeof v);
        uint64_t token = m.handle, id = m.id;
        CHECK_EQ(shmq_receive_end(q, &m), SHMQ_OK);
        CHECK(v < (uint32_t)K);
        if (count[v] < 255)
            count[v]++;
        total++;
        CHECK_EQ(shmq_ack(q, token, id), SHMQ_OK);
    }
    long missing = 0, doubled = 0;
    for (long i = 0; i < K; i++) {
        missing += count[i] == 0;
        doubled += count[i] > 1;
    }
    shmq_stats_t st;
    shmq_stats(q, &st);
    printf("dedup kill storm: %ld keys, %ld kills, %llu duplicates answered, %ld messages\n", K, kills,
           (unsigned long long)st.dedup_hits, total);
    CHECK_EQ(missing, 0);
    CHECK_EQ(doubled, 0);
    CHECK_EQ(total, K);
    CHECK(kills >= 10);
    munmap(progress, 4096);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        K = atol(argv[1]);
    if (K < 1 || K > 8000)
        return 2;
    RUN(test_dedup_kill_storm);
    TH_SUMMARY();
}
