#define _GNU_SOURCE
#include "participants.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "atomic.h"
#include "crashpoint.h"
#include "wait.h"

static int lock_byte(int fd, uint32_t s, short type, int cmd, struct flock *out)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)(SHMQ_LOCK_BYTE_BASE + s);
    fl.l_len = 1;
    int r = fcntl(fd, cmd, &fl);
    if (out)
        *out = fl;
    return r;
}

int shmq_part_lock_slot(shmq_seg_t *seg, uint32_t s)
{
    if (s >= seg->max_slots)
        return SHMQ_EINVAL;
    return lock_byte(seg->fd, s, F_WRLCK, F_OFD_SETLK, NULL) == 0 ? SHMQ_OK : SHMQ_EAGAIN;
}

void shmq_part_unlock_slot(shmq_seg_t *seg, uint32_t s)
{
    if (s < seg->max_slots && s != seg->slot)
        lock_byte(seg->fd, s, F_UNLCK, F_OFD_SETLK, NULL);
}

int shmq_part_slot_alive(shmq_seg_t *seg, uint32_t s)
{
    if (s >= seg->max_slots)
        return 0;
    if (s == seg->slot)
        return 1; /* our own lock never conflicts with ourselves: GETLK would say "free" */
    struct flock fl;
    if (lock_byte(seg->fd, s, F_WRLCK, F_OFD_GETLK, &fl) != 0)
        return 1; /* cannot tell: assume alive (never steal on doubt) */
    return fl.l_type != F_UNLCK;
}

int shmq_part_owner_alive(shmq_seg_t *seg, uint32_t owner)
{
    if (owner == 0)
        return 1; /* nobody: nothing to steal */
    uint32_t s = shmq_owner_slot(owner);
    if (s == UINT32_MAX)
        return 0; /* untrusted: a non-zero stamp naming no slot is garbage */
    if (s >= seg->max_slots) /* untrusted: a stamp naming no slot cannot be alive */
        return 0;
    shmq_slot_t *sl = &seg->slots[s];
    if (shmq_load_acquire(&sl->state) != SHMQ_SLOT_ATTACHED)
        return 0;
    if ((shmq_load_acquire(&sl->gen) & SHMQ_OWNER_GEN_MASK) != shmq_owner_gen(owner))
        return 0; /* the slot was re-used since: the owner is gone */
    return shmq_part_slot_alive(seg, s);
}

static void fold_slot(shmq_seg_t *seg, shmq_slot_t *sl);

static int try_take_slot(shmq_seg_t *seg, uint32_t s)
{
    if (lock_byte(seg->fd, s, F_WRLCK, F_OFD_SETLK, NULL) != 0)
        return 0; /* held by a live participant (or one attaching right now) */
    SHMQ_CRASH_POINT(attach_locked);
    shmq_slot_t *sl = &seg->slots[s];
    /* The lock byte was free: a slot that says ATTACHED belonged to a process that died. */
    int was_dead = shmq_load_acquire(&sl->state) == SHMQ_SLOT_ATTACHED;
    uint32_t old_gen = shmq_load_relaxed(&sl->gen);
    if (was_dead)
        fold_slot(seg, sl); /* its counters and waiter entries, before we reset them */
    uint32_t gen = (old_gen + 1) & SHMQ_OWNER_GEN_MASK;
    if (gen == 0)
        gen = 1;
    shmq_store_relaxed(&sl->pid, (int32_t)getpid());
    sl->role = 0;
    sl->cpu = (uint32_t)shmq_current_cpu();
    sl->run_state = SHMQ_RUN_RUNNING;
    sl->waiting = 0;
    sl->unit_busy = 0;
    sl->attach_ns = shmq_now_wall_ns();
    sl->enqueued = 0;
    sl->dequeued = 0;
    sl->last_put = 0;
    shmq_store_release(&sl->gen, gen);
    shmq_store_seq(&sl->state, SHMQ_SLOT_ATTACHED);
    seg->slot = s;
    seg->owner = shmq_owner_make(s, gen);
    uint32_t hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    while (hwm < s + 1 && !shmq_cas_acq_rel(&seg->hdr->slot_hwm, &hwm, s + 1))
        ;
    /* Repair after attaching: the dead owner (s, old_gen) now differs from us (s, gen) in
     * generation, so its stamps read as dead and we act under our own live id. */
    if (was_dead && seg->ops && seg->ops->repair_owner)
        seg->ops->repair_owner(seg, shmq_owner_make(s, old_gen));
    return 1;
}

int shmq_part_attach(shmq_seg_t *seg)
{
    if (seg->slot != UINT32_MAX)
        return SHMQ_OK;
    /* First the slots that look free (no system call on the live ones), then the rest. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t s = 0; s < seg->max_slots; s++) {
            uint32_t st = shmq_load_acquire(&seg->slots[s].state);
            if ((pass == 0) != (st == SHMQ_SLOT_FREE))
                continue;
            if (try_take_slot(seg, s))
                return SHMQ_OK;
        }
    }
    seg->slot = UINT32_MAX;
    return SHMQ_ESLOTS;
}

static void fold_slot(shmq_seg_t *seg, shmq_slot_t *sl)
{
    shmq_header_t *h = seg->hdr;
    __atomic_fetch_add(&h->enq_folded, shmq_load_relaxed(&sl->enqueued), __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->deq_folded, shmq_load_relaxed(&sl->dequeued), __ATOMIC_RELAXED);
    shmq_store_relaxed(&sl->enqueued, 0);
    shmq_store_relaxed(&sl->dequeued, 0);
    uint32_t w = shmq_exchange_seq(&sl->waiting, 0);
    if (w & 0xffffu)
        __atomic_fetch_sub(&h->not_empty.waiters, w & 0xffffu, __ATOMIC_SEQ_CST);
    if (w >> 16)
        __atomic_fetch_sub(&h->not_full.waiters, w >> 16, __ATOMIC_SEQ_CST);
}

void shmq_part_fold_slot(shmq_seg_t *seg, uint32_t s) { fold_slot(seg, &seg->slots[s]); }

void shmq_part_detach(shmq_seg_t *seg)
{
    if (seg->slot == UINT32_MAX || !seg->slots)
        return;
    shmq_slot_t *sl = &seg->slots[seg->slot];
    fold_slot(seg, sl);
    shmq_store_seq(&sl->state, SHMQ_SLOT_FREE);
    lock_byte(seg->fd, seg->slot, F_UNLCK, F_OFD_SETLK, NULL);
    seg->slot = UINT32_MAX;
    seg->owner = 0;
}

void shmq_part_count(shmq_seg_t *seg, uint32_t *attached, uint32_t *producers, uint32_t *consumers)
{
    uint32_t a = 0, p = 0, c = 0, hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    if (hwm > seg->max_slots)
        hwm = seg->max_slots; /* untrusted */
    /* slots at or above slot_hwm were never attached (stats of 1,000 queues: not 1,023 slots each) */
    for (uint32_t s = 0; s < hwm; s++) {
        shmq_slot_t *sl = &seg->slots[s];
        if (shmq_load_acquire(&sl->state) != SHMQ_SLOT_ATTACHED || !shmq_part_slot_alive(seg, s))
            continue;
        a++;
        uint32_t r = shmq_load_relaxed(&sl->role);
        p += (r & SHMQ_ROLE_PRODUCER) != 0;
        c += (r & SHMQ_ROLE_CONSUMER) != 0;
    }
    *attached = a;
    *producers = p;
    *consumers = c;
}


uint32_t shmq_part_consumers(shmq_seg_t *seg, int alive)
{
    uint32_t n = 0, hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    if (hwm > seg->max_slots)
        hwm = seg->max_slots; /* untrusted */
    for (uint32_t s = 0; s < hwm; s++) {
        shmq_slot_t *sl = &seg->slots[s];
        if (shmq_load_acquire(&sl->state) != SHMQ_SLOT_ATTACHED || !(shmq_load_relaxed(&sl->role) & SHMQ_ROLE_CONSUMER))
            continue;
        n += !alive || shmq_part_slot_alive(seg, s);
    }
    return n;
}

void shmq_part_set_role(shmq_seg_t *seg, uint32_t role)
{
    if (seg->slot != UINT32_MAX)
        __atomic_fetch_or(&seg->slots[seg->slot].role, role & (SHMQ_ROLE_PRODUCER | SHMQ_ROLE_CONSUMER),
                          __ATOMIC_RELAXED);
}

int shmq_part_repair_dead(shmq_seg_t *seg)
{
    int n = 0;
    if (seg->slot == UINT32_MAX)
        return 0; /* an inspector has no owner id to act under */
    uint32_t hwm = shmq_load_relaxed(&seg->hdr->slot_hwm);
    if (hwm > seg->max_slots)
        hwm = seg->max_slots; /* untrusted */
    for (uint32_t s = 0; s < hwm; s++) {
        if (s == seg->slot || shmq_load_acquire(&seg->slots[s].state) != SHMQ_SLOT_ATTACHED)
            continue;
        if (shmq_part_slot_alive(seg, s))
            continue;
        /* Elect the repairer: whoever takes the dead slot's lock byte. If this process dies while
         * repairing, the kernel drops the byte and the next one redoes the (idempotent) work. */
        if (shmq_part_lock_slot(seg, s) != SHMQ_OK)
            continue;
        shmq_slot_t *sl = &seg->slots[s];
        if (shmq_load_acquire(&sl->state) == SHMQ_SLOT_ATTACHED) {
            uint32_t dead = shmq_owner_make(s, shmq_load_relaxed(&sl->gen));
            if (seg->ops && seg->ops->repair_owner)
                seg->ops->repair_owner(seg, dead);
            shmq_part_fold_slot(seg, s);
            shmq_store_seq(&sl->state, SHMQ_SLOT_FREE);
            n++;
        }
        shmq_part_unlock_slot(seg, s);
    }
    return n;
}
