/* topic.h - a broadcast log: publish appends, every subscription reads with its own cursor.
 *
 * What it is: the topic kind (SHMQ_KIND_TOPIC). Its state is one region (SHMQ_REGION_TOPIC):
 * a header, a ring of n_entries log entries (one per message: seq, payload position, size,
 * time), a table of named subscriptions (cursor, missed, flags, name), a membership bitmap
 * (per participant slot, one bit per named subscription it consumes from) and a data ring of
 * data_size bytes holding each payload once, contiguous (a payload never wraps: the rest of
 * the ring is skipped). Area 0 of the segment is unused (the smallest area). Layout diagram:
 * docs/internals/topics.md.
 *
 * Sequence numbers: 1, 2, 3 ... per topic, never reused. head_seq = the next seq to publish
 * (so 1 .. head_seq-1 were published); tail_seq = the oldest seq whose entry and payload are
 * still intact. Both only grow.
 *
 * Who may call what concurrently: any number of publishers (serialised by pub_lock, an
 * owner-stamped robust lock, lock.h) and any number of readers in any processes. Readers hold
 * nothing shared: a private subscription's cursor is process-local; a named subscription's
 * cursor is advanced by CAS after the messages were copied (read, then claim), so several
 * members of a group may copy the same message and only the CAS winner delivers it.
 *
 * Overwrite rule: a publisher that needs an entry or bytes still held by messages first moves
 * tail_seq past them (store, then a full fence, then the writes), so a reader that copied a
 * message and then (acquire fence) still sees tail_seq <= its seq knows its copy is intact;
 * otherwise it discards the copy and counts the overwritten messages in missed (seqlock).
 * Blocking rule: tail_seq never passes the cursor of a named subscription with on_slow=block
 * (the gate); a publisher that would have to sleeps on not_full (or returns SHMQ_FULL /
 * SHMQ_TIMEOUT). Retention: entries older than retention_ns (wall clock) are dropped by the
 * publisher and skipped by readers even past the gate (counted in missed).
 *
 * Progress: readers are lock-free (a SIGSTOPped reader stalls nobody, except a publisher
 * gated by a block subscription it consumes); publishers take pub_lock (a SIGSTOPped
 * publisher holding it stalls other publishers: known limit). Blocking calls wait on the
 * header's not_empty (readers) and not_full (gated publishers) with absolute deadlines.
 *
 * Crash windows (crash point names in brackets):
 *   publish: lock taken, tail moved, entry and payload written [topic_mid_publish], head_seq
 *     not yet stored [topic_before_commit]: nothing is visible (readers stop at head_seq); the
 *     next publisher steals the lock (EAGAIN) and writes over it - nothing to rebuild, since
 *     head_seq is the commit and data_head/tail_seq only ever move forward.
 *   published, wake-up not sent [topic_after_commit]: the next publish (or a sleeper's
 *     liveness slice) wakes the sleepers.
 *   named read: messages copied, cursor not yet advanced [topic_before_advance]: the position
 *     is not lost; another member (or the restarted one) delivers the same messages.
 *   subscription create/delete: under sub_lock and pub_lock; the entry's state is written last.
 * Repair of a dead participant clears its membership bits (consumers count).
 * Everything read from the region is untrusted: shmq_topic_valid checks the header at open and
 * every entry is bounds-checked at use (grep "untrusted:").
 */
#ifndef SHMQ_TOPIC_H
#define SHMQ_TOPIC_H

#include "hist.h"
#include "queue.h"
#include "segment.h"

#define SHMQ_TOPIC_MAGIC 0x63706f74514d4853ULL /* "SHMQtopc" */
#define SHMQ_TOPIC_VERSION 1u
#define SHMQ_TOPIC_MAX_SUBS 64u   /* one bit each in a slot's membership word */
#define SHMQ_TOPIC_NAME_MAX 100u  /* subscription name bytes */
#define SHMQ_TOPIC_ALIGN 8u       /* payloads start 8-byte aligned in the data ring */

/* subscription states */
#define SHMQ_TSUB_FREE 0u
#define SHMQ_TSUB_LIVE 1u
/* subscription flags */
#define SHMQ_TSUB_BLOCK 0x1u /* on_slow="block": gates publishers */
#define SHMQ_TSUB_ACK 0x2u   /* ack=True: deliveries under leases (the lease pool) */

/* Lease pool (ack=True subscriptions): one entry per message in flight, any subscription.
 * word = lgen:22 | sub:6 | state:4 | owner:32; every change is a CAS on it, and lgen is bumped
 * by every new delivery and extend, so a token (entry index, lgen) names one delivery.
 *   FREE -> CLAIM(me)        a receiver reserves it, then writes seq, then claims the group's cursor
 *   CLAIM -> INFLIGHT(me)    the cursor CAS won: delivered under a lease until deadline_ns
 *   READY | expired INFLIGHT -> SETTLING(me) -> INFLIGHT(me)   redelivery (deliveries + 1)
 *   INFLIGHT -> SETTLING(me) -> FREE | READY | INFLIGHT      ack | nack | extend
 *   SETTLING(me) -> DEAD(me)  past max_deliveries: the Python layer copies it to the dead-letter
 *                             queue (deduplicated on topic, subscription, seq), then acks it
 * Repair of a dead owner: CLAIM without a seq -> FREE; anything else it held -> READY. */
#define SHMQ_TL_FREE 0u
#define SHMQ_TL_CLAIM 1u
#define SHMQ_TL_INFLIGHT 2u
#define SHMQ_TL_READY 3u
#define SHMQ_TL_SETTLING 4u
#define SHMQ_TL_DEAD 5u
#define SHMQ_TOPIC_LEASES 4096u /* at most; one per KiB of capacity, at least 64 */
#define SHMQ_TL_NO_SEQ UINT64_MAX
typedef struct {
    uint64_t word;
    uint64_t seq;           /* SHMQ_TL_NO_SEQ while free or being claimed */
    uint64_t deadline_ns;   /* monotonic lease end (INFLIGHT) */
    uint32_t deliveries;
    uint32_t sub_gen;       /* the subscription generation it belongs to */
} shmq_topic_lease_t;
_Static_assert(sizeof(shmq_topic_lease_t) == 32, "lease entry layout");

/* subscribe start kinds */
#define SHMQ_TSTART_LATEST 0u
#define SHMQ_TSTART_EARLIEST 1u
#define SHMQ_TSTART_SEQ 2u
#define SHMQ_TSTART_TIME 3u

typedef struct {
    /* --- geometry and options: written once before the file is linked into place --- */
    uint64_t magic;
    uint32_t version;
    uint32_t max_subs;
    uint32_t n_entries;     /* power of two */
    uint32_t max_slots;     /* membership words (the header's max_slots) */
    uint64_t data_size;     /* bytes of the data ring, a multiple of 64 */
    uint64_t retention_ns;  /* 0 = keep what fits */
    uint64_t max_message;   /* largest payload (header block + body) */
    uint64_t ents_off;      /* offsets from the region start */
    uint64_t subs_off;
    uint64_t members_off;
    uint64_t data_off;
    uint64_t leases_off;    /* ack=True subscriptions: the lease pool (n_leases entries) */
    uint32_t n_leases;
    uint32_t _pad_l;
    uint8_t _pad0[128 - 96];
    /* --- publishers (written under pub_lock; head_seq read by every reader) --- */
    uint32_t pub_lock;      /* owner-stamped lock (lock.h): one publisher at a time */
    uint32_t sub_lock;      /* owner-stamped lock: subscription table changes */
    uint64_t head_seq;      /* next seq; the release store of it commits a publish */
    uint64_t data_head;     /* monotonic byte position of the next payload */
    uint64_t last_ts;       /* wall clock of the newest message (timestamps never go back) */
    uint64_t published;     /* messages published (== head_seq - 1 unless forged) */
    uint64_t gate_seq;      /* a lower bound of every block subscription's cursor (UINT64_MAX: none) */
    uint8_t _pad1[128 - 48];
    /* --- the oldest intact message (publishers write, readers check after each copy) --- */
    uint64_t tail_seq;
    uint64_t dropped;       /* messages the log dropped (overwritten or expired) */
    uint8_t _pad2[128 - 16];
    uint8_t _pad3[128];     /* keeps the first entries off the tail's line */
} shmq_topic_hdr_t;
_Static_assert(sizeof(shmq_topic_hdr_t) == 512, "topic header layout");
_Static_assert(offsetof(shmq_topic_hdr_t, pub_lock) == 128, "publisher block");
_Static_assert(offsetof(shmq_topic_hdr_t, tail_seq) == 256, "tail block");

typedef struct {
    uint64_t seq;           /* the message in this entry; a reader checks it equals the seq it wants */
    uint64_t pos;           /* monotonic byte position of the payload (data ring offset = pos % data_size) */
    uint64_t timestamp_ns;  /* wall clock at publish */
    uint32_t size;          /* payload bytes: header block, then body */
    uint16_t hdr_size;      /* header block bytes */
    uint8_t kind;           /* payload kind tag of the Python layer */
    uint8_t flags;
} shmq_topic_ent_t;
_Static_assert(sizeof(shmq_topic_ent_t) == 32, "log entry layout");

typedef struct {
    uint32_t state;         /* FREE / LIVE, written last (release) */
    uint32_t flags;         /* SHMQ_TSUB_* */
    uint32_t gen;           /* bumped at each create and delete: an old handle notices */
    uint32_t name_len;
    uint64_t created_ns;    /* wall clock */
    char name[SHMQ_TOPIC_NAME_MAX + 4];
    /* --- the group's position (members CAS it), on its own line --- */
    uint64_t cursor;        /* next seq to deliver to the group */
    uint64_t missed;        /* messages overrun (drop_oldest) or expired before delivery */
    uint64_t delivered;
    /* --- ack=True (SHMQ_TSUB_ACK): options written at create, counters by settlers --- */
    uint64_t visibility_ns;
    uint32_t max_deliveries;
    uint32_t _pad2;
    uint64_t acked;
    uint64_t redelivered;   /* failed deliveries put back (lease expiry, nack, a member's death) */
    uint64_t dead_lettered;
    uint8_t _pad1[128 - 64];
} shmq_topic_sub_t;
_Static_assert(sizeof(shmq_topic_sub_t) == 256, "subscription entry layout");
_Static_assert(offsetof(shmq_topic_sub_t, cursor) == 128, "cursor alone");

/* Per-handle state of a topic (seg->kstate). */
typedef struct {
    shmq_topic_hdr_t *th;
    shmq_topic_ent_t *ents;
    shmq_topic_sub_t *subs;
    uint64_t *members;
    uint8_t *data;
    shmq_topic_lease_t *leases;
    uint32_t n_leases;
    uint32_t n_entries, max_subs, max_slots;
    uint64_t data_size, max_message, retention_ns;
    int pub_busy, sub_busy; /* process-local lock guards (lock.h) */
    uint64_t pend_vis;      /* shmq_topic_subscribe_ack's options for the entry it may create */
    uint32_t pend_maxd;
    shmq_hist_topic_t hist; /* latency parts (hist.h), checked at bind; NULL pointers: none */
} shmq_topic_t;

/* One message as a reader got it: data points into the caller's buffer. */
typedef struct {
    uint64_t seq;
    uint64_t timestamp_ns;
    const uint8_t *data;    /* header block (hdr_size bytes), then the body */
    uint32_t size;
    uint32_t hdr_size;
    uint32_t kind;
    uint64_t ticks;         /* the publish's shmq_ticks() (0: not recorded) */
} shmq_topic_msg_t;

/* One message to publish: its pieces back to back (header block first). */
typedef struct {
    const shmq_iov_t *iov;
    uint32_t n_iov;
    uint32_t kind;
    uint32_t hdr_size;
} shmq_topic_pub_t;

/* kinds.c: the region a create asks for (capacity = bytes of the region; retention_ns;
 * max_message 0 = default); bind an opened segment (validates the region). */
int shmq_topic_region(uint64_t capacity, uint64_t max_message, uint64_t retention_ns, uint32_t max_slots,
                      shmq_region_req_t *req);
int shmq_topic_bind(shmq_seg_t *t);
/* kinds.c: the histogram region of the topic topic_req describes (hist.h: slot blocks for the
 * private subscriptions, one block per subscription entry, a tick word per log entry, a
 * delivery time per lease entry). */
void shmq_topic_hist_region(const shmq_region_req_t *topic_req, uint32_t max_slots, shmq_region_req_t *req);
/* The latency figures of subscription entry idx (its block, whatever its state): SHMQ_OK,
 * SHMQ_EINVAL (no such entry, or the segment has no subscription blocks). Lock-free. */
int shmq_topic_sub_hist(shmq_seg_t *t, uint32_t idx, shmq_hist_sum_t *out);
int shmq_topic_valid(shmq_seg_t *t);
shmq_topic_t *shmq_topic_of(shmq_seg_t *t); /* NULL for any other kind */

/* Publish msgs[0..n) in order under one lock hold. *done = how many were published (their seqs
 * are *first .. *first + *done - 1). SHMQ_OK (all), SHMQ_FULL / SHMQ_TIMEOUT (a block
 * subscription gates the rest), SHMQ_ETOOBIG (msgs[*done] can never fit), SHMQ_EINTR. */
int shmq_topic_publish(shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                       uint32_t *done, uint64_t *first);
/* The same, with each published message's seq in seqs[0 .. *done): a batch that a block
 * subscription split across lock holds is not contiguous (other publishers ran meanwhile). */
int shmq_topic_publish_seqs(shmq_seg_t *t, const shmq_topic_pub_t *msgs, uint32_t n, uint64_t deadline_ns,
                            uint32_t *done, uint64_t *first, uint64_t *seqs);

/* A reader's position: a private one (sub == UINT32_MAX, *cursor process-local) or named
 * subscription index sub of generation gen. */
typedef struct {
    uint32_t sub;
    uint32_t gen;
    uint64_t cursor;        /* private: next seq; named: unused */
    uint64_t missed;        /* private: overrun count */
} shmq_topic_reader_t;

/* Copy up to max messages (and at most bufsize bytes; bufsize >= max_message) at the reader's
 * position into buf and advance it. SHMQ_OK (*n >= 1), SHMQ_EMPTY / SHMQ_TIMEOUT, SHMQ_EINTR,
 * SHMQ_ECLOSED (the named subscription was deleted, or the handle closes). */
int shmq_topic_read(shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out,
                    uint32_t max, uint32_t *n, uint64_t deadline_ns);

/* Named subscriptions. subscribe: find or create name (start applies only on creation:
 * SHMQ_TSTART_* with arg = seq or wall ns), mark this slot a member; *idx, *gen, *created.
 * SHMQ_EINVAL (bad name), SHMQ_FULL (table full), SHMQ_TIMEOUT (a lock stayed held). If it
 * exists with other flags: SHMQ_EINCOMPAT, *idx set. */
int shmq_topic_subscribe(shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                         uint64_t arg, uint32_t *idx, uint32_t *gen, int *created);
/* ack=True subscriptions. subscribe_ack: as shmq_topic_subscribe with SHMQ_TSUB_ACK and the
 * lease options (used only on creation). receive: like shmq_topic_read for one message, under a
 * lease: *token names the delivery, *deliveries counts it, *dead = 1 when it is past
 * max_deliveries (the caller dead-letters it, then acks the token). SHMQ_FULL: every lease
 * entry is in use (too many in flight): treated as nothing to deliver until one is settled. */
int shmq_topic_subscribe_ack(shmq_seg_t *t, const char *name, uint32_t name_len, uint32_t flags, uint32_t start,
                             uint64_t arg, uint64_t visibility_ns, uint32_t max_deliveries, uint32_t *idx,
                             uint32_t *gen, int *created);
int shmq_topic_receive(shmq_seg_t *t, shmq_topic_reader_t *r, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out,
                       uint64_t *token, uint32_t *deliveries, int *dead, uint64_t deadline_ns);
/* SHMQ_OK, SHMQ_ESTALE (the lease expired and the message was delivered again, or settled). */
int shmq_topic_ack(shmq_seg_t *t, uint64_t token);
int shmq_topic_nack(shmq_seg_t *t, uint64_t token); /* put back for redelivery now */
int shmq_topic_extend(shmq_seg_t *t, uint64_t *token, uint64_t ns); /* a new token on success */
/* Messages of subscription idx held under leases now. */
uint32_t shmq_topic_in_flight(shmq_seg_t *t, uint32_t idx);

/* This slot stops being a member of idx (the handle's last Subscription of it closed). */
void shmq_topic_leave(shmq_seg_t *t, uint32_t idx);
/* Delete a named subscription: SHMQ_OK, SHMQ_EMPTY (no such name). */
int shmq_topic_unsubscribe(shmq_seg_t *t, const char *name, uint32_t name_len);
/* Seq of the next message to publish (a private subscription's "latest"). */
uint64_t shmq_topic_head(shmq_seg_t *t);
uint64_t shmq_topic_tail(shmq_seg_t *t);

typedef struct {
    uint32_t idx, gen, flags, consumers;
    char name[SHMQ_TOPIC_NAME_MAX + 1];
    uint64_t cursor, missed, delivered, lag, created_ns;
    uint64_t acked, redelivered, dead_lettered, visibility_ns;
    uint32_t in_flight, max_deliveries;
} shmq_topic_subinfo_t;
/* Snapshot of subscription entry i (no lock): SHMQ_OK, SHMQ_EMPTY (free), SHMQ_EINVAL (i out of range). */
int shmq_topic_subinfo(shmq_seg_t *t, uint32_t i, shmq_topic_subinfo_t *out);

typedef struct {
    uint64_t head_seq, tail_seq, published, dropped, data_size, data_used, n_entries, max_message, retention_ns;
    uint32_t max_subs, subs;
} shmq_topic_stats_t;
void shmq_topic_stats(shmq_seg_t *t, shmq_topic_stats_t *st);

/* Copy message seq (peek; no cursor moves): SHMQ_OK, SHMQ_EMPTY (not in the log: gone or not yet). */
int shmq_topic_peek(shmq_seg_t *t, uint64_t seq, uint8_t *buf, uint64_t bufsize, shmq_topic_msg_t *out);

#endif
