/* group.h - message groups of an at-least-once queue: per group key, messages are delivered in
 * send order and at most one of them is out of the queue's hands (ready, in flight, delayed
 * for a retry, being dead-lettered) at a time.
 *
 * What it is: a table in region SHMQ_REGION_GROUP (header flag SHMQ_F_GROUPS): one entry per
 * group that has messages, open addressing on the 128-bit hash of the key, linear probing.
 * An entry names the group's head (the one message that may be delivered) and its tail. The
 * members form a chain: each grouped message's payload carries a group block (its key, its
 * sequence number in the group, and the next member's descriptor and id). Only the head is
 * ever published to a ring; the others are PARKED: DELAYED with deadline_ns >= SHMQ_GROUP_PARK,
 * which no timer scan, repair or lease touches. Descriptor flag SHMQ_DF_GROUP marks members.
 *
 * Who may call what concurrently: any participant; link, settle and rebuild hold the table's
 * robust lock (lock.h), never across a payload copy or a wait for room: a send parks its
 * message first (an ordinary delayed put) and links it afterwards. Releasing a member (making
 * it the head) is the kind's callback (lease.c publishes it), run under the lock; it never
 * blocks. Receive, nack, extend and lease expiry never take the lock: the head stays the head.
 *
 * The table is a cache of what the descriptors say: the chain order is the members' sequence
 * numbers, the head is the member that is not parked. So any doubt is settled by a rebuild
 * from the descriptors (O(descriptors), under the lock), run when the lock is taken over from
 * a dead holder, when a participant's death is repaired, when an operation finds the table
 * inconsistent (a member gone without settling: a corrupt payload) and when the table
 * has no free entry left (it drops the tombstones).
 *
 * Send, step by step (crash point names in brackets):
 *   1. put the message PARKED with its group block (sequence 0 = not linked) [group_after_put]
 *   2. lock; sequence = the group's next; the tail's block points at us, or, for an idle group,
 *      we become the head and are released (published)                      [group_mid_link]
 * Settle (ack, dead-letter move, TTL drop, plain get), the message still held by the settler:
 *   lock; if it is its group's head, the next member becomes the head and is released
 *   [group_mid_settle]; its block is marked "left" so no rebuild counts it again.
 * Crash windows: 1-2: a parked message with sequence 0 whose sender is dead is appended to its
 * group by the rebuild that the sender's repair runs (the send had not returned). Inside a
 * locked step: the lock is taken over and the table rebuilt. A settler killed before it took
 * the lock (READING(dead)): the repair's rebuild no longer counts that message and releases
 * the next one. A member released but not yet published (SETTLING(dead)): the queue's repair
 * puts it back like any interrupted settle.
 * Known limits: a group's order is the order in which its sends linked (per sender: send
 * order). A parked member's TTL is applied when it becomes the head. A table with no room for
 * another group refuses the send with SHMQ_FULL (full_why SHMQ_WHY_GROUPS).
 * untrusted: every block, entry and chain link is checked before use; a bad one triggers a
 * rebuild, never a read or write outside the mapping.
 */
#ifndef SHMQ_GROUP_H
#define SHMQ_GROUP_H

#include "queue_int.h"

#define SHMQ_GROUP_KEY_MAX 128u
#define SHMQ_GROUP_DEFAULT_SLOTS 4096u
/* deadline_ns of a parked member: far beyond any real deadline (now + 2^62 ns = 146 years) */
#define SHMQ_GROUP_PARK (1ull << 62)
#define SHMQ_GROUP_LEFT UINT64_MAX /* block seq of a member that has settled (left its group) */

/* The group block in a member's payload (after the meta block and the dedup key). */
typedef struct {
    uint64_t seq;           /* 1, 2, 3 ... in its group; 0 = not linked yet; LEFT = settled */
    uint64_t next_id;       /* the next member's message id, 0 = none yet */
    uint64_t not_before_ns; /* monotonic: the send's delay, honoured when it becomes the head */
    uint32_t next_h;        /* the next member: area:8 | descriptor index:24 */
    uint8_t key_type;       /* 0 = str (UTF-8), 1 = bytes */
    uint8_t key_len;        /* <= SHMQ_GROUP_KEY_MAX */
    uint16_t _pad0;
    uint8_t key[SHMQ_GROUP_KEY_MAX];
} shmq_group_blk_t;
_Static_assert(sizeof(shmq_group_blk_t) == 160, "group block layout");
#define SHMQ_GROUP_BLOCK ((uint32_t)sizeof(shmq_group_blk_t))

#define SHMQ_GROUP_EMPTY 0u
#define SHMQ_GROUP_USED 1u
#define SHMQ_GROUP_DELETED 2u

typedef struct {
    uint64_t k0, k1;    /* hash of (key_type, key) */
    uint64_t head_id;   /* the member that may be delivered */
    uint64_t tail_id;   /* the last linked member */
    uint32_t head_h;    /* area:8 | index:24 */
    uint32_t tail_h;
    uint64_t next_seq;  /* the sequence number the next linked member gets */
    uint32_t state;     /* EMPTY, USED, DELETED */
    uint32_t count;     /* members linked and not settled */
    uint64_t _pad0;     /* 64 bytes: one entry per line */
} shmq_group_ent_t;
_Static_assert(sizeof(shmq_group_ent_t) == 64, "group entry layout");

typedef struct {
    uint32_t slots;     /* entries, a power of two (written once before the file is linked) */
    uint32_t lock;      /* robust owner-stamped lock over the table and the chains */
    uint32_t used;      /* entries not EMPTY */
    uint32_t live;      /* entries USED (groups with members) */
    uint32_t dirty;     /* 1: the next lock holder rebuilds first (a settle could not take the lock) */
    uint32_t _pad0;
    uint64_t rebuilds;  /* rebuilds from the descriptors so far */
    uint8_t _pad1[128 - 32];
} shmq_group_hdr_t;
_Static_assert(sizeof(shmq_group_hdr_t) == 128, "group header layout");

/* What the kind over the groups does with a member that becomes its group's head: d is PARKED
 * (DELAYED), it must be made deliverable (published, or delayed until not_before). Must not
 * block; called with the table's lock held. */
typedef void (*shmq_group_release_fn)(shmq_seg_t *q, shmq_area_t *a, shmq_desc_t *d, const shmq_group_blk_t *b);

typedef struct shmq_group {
    shmq_group_hdr_t *hdr;
    shmq_group_ent_t *tab;
    uint32_t slots;               /* validated copy */
    int busy;                     /* process-local guard of the lock (lock.h) */
    shmq_group_release_fn release;
} shmq_group_t;

/* Region of a create (every at-least-once queue has one), and binding an opened segment. */
int shmq_group_region(const shmq_create_opts_t *o, shmq_region_req_t *req);
/* NULL *out when the segment has no group region (created before groups existed). */
int shmq_group_bind(shmq_seg_t *q, shmq_group_t **out, shmq_group_release_fn release);
int shmq_group_valid(shmq_seg_t *q);

/* The block of a member (payload offset given by the kind: meta + dedup key). */
static inline shmq_group_blk_t *shmq_group_blk(shmq_area_t *a, shmq_desc_t *d, uint32_t off)
{
    return (shmq_group_blk_t *)(shmq_q_payload(a, d) + off);
}
/* Fill a block for a send. SHMQ_EINVAL: key too long or bad type. */
int shmq_group_blk_init(shmq_group_blk_t *b, const uint8_t *key, uint32_t len, uint32_t type, uint64_t not_before_ns);
static inline int shmq_group_parked(const shmq_desc_t *d, uint64_t w)
{
    return (d->flags & SHMQ_DF_GROUP) && shmq_desc_state(w) == SHMQ_D_DELAYED && d->deadline_ns >= SHMQ_GROUP_PARK;
}

/* Step 2 of a send: link our parked member h (area:8|index:24) into its group; releases it
 * when the group was idle. SHMQ_OK, SHMQ_FULL (no entry for another group), SHMQ_TIMEOUT (lock). */
int shmq_group_link(shmq_seg_t *q, shmq_group_t *g, uint32_t area, uint32_t idx, uint64_t deadline_ns);
/* A member leaves the queue (the caller holds its descriptor); a payload that fails validation
 * schedules a rebuild instead. */
void shmq_group_settle(shmq_seg_t *q, shmq_group_t *g, shmq_area_t *a, shmq_desc_t *d);
/* Rebuild from the descriptors now (repair of a dead participant runs it first). */
void shmq_group_rebuild(shmq_seg_t *q, shmq_group_t *g);
/* A purge of held messages (inspect.c) frees members without settling them one by one: it holds
 * the table (SHMQ_OK, or SHMQ_TIMEOUT after 1 s: then it must not free members), drops each
 * member it frees (lock held), and unholds, which rebuilds the groups from what is left. No send
 * can link to a member while it is being freed. */
int shmq_group_hold(shmq_seg_t *q, shmq_group_t *g);
void shmq_group_drop_locked(shmq_group_t *g, shmq_area_t *a, shmq_desc_t *d);
void shmq_group_unhold(shmq_seg_t *q, shmq_group_t *g);
/* Figures for stats and tests: groups with members, rebuilds so far. */
void shmq_group_counts(shmq_group_t *g, uint64_t *groups, uint64_t *rebuilds);

#endif
