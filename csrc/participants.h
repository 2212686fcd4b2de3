/* participants.h - the participant table: slots, liveness through OFD locks, attach/detach,
 * and the election of the repairer of a dead slot.
 *
 * Contract: any process may attach, detach or test liveness concurrently. A slot is taken by
 * locking its byte 2^40 + slot of the segment file on the handle's private open file
 * description (F_OFD_SETLK): the kernel drops it when the process dies, so "the byte is free but
 * the slot says ATTACHED" means "its owner died". Repairing slot S means taking S's byte: the
 * taker is the one repairer of S; if it dies too, the kernel drops the byte and the next one
 * redoes the (idempotent) work. This file knows no kind of queue: what a dead owner held is
 * returned by the kind's repair hook (seg->ops->repair_owner), registered by the kind.
 *
 * Crash windows: attach - a process killed between taking its byte and writing its slot leaves
 * a slot whose byte is free again: the next attacher re-initialises it (attach_locked).
 * Detach - the slot is folded (counters, waiter entries), then FREE, then the byte unlocked.
 */
#ifndef SHMQ_PARTICIPANTS_H
#define SHMQ_PARTICIPANTS_H

#include "segment.h"

/* Attach as a participant (takes a free slot and its lock byte; repairs a dead slot it reuses). */
int shmq_part_attach(shmq_seg_t *seg);
/* Detach: fold the slot, mark it FREE, release its byte. Idempotent. */
void shmq_part_detach(shmq_seg_t *seg);
/* 1 if the participant owning owner id is alive (or owner is 0), 0 if dead. */
int shmq_part_owner_alive(shmq_seg_t *seg, uint32_t owner);
/* 1 if slot s currently has a live holder. */
int shmq_part_slot_alive(shmq_seg_t *seg, uint32_t s);
/* Take / release slot s's lock byte without attaching (repairer election). */
int shmq_part_lock_slot(shmq_seg_t *seg, uint32_t s);
void shmq_part_unlock_slot(shmq_seg_t *seg, uint32_t s);
/* Fold slot s's counters and waiter entries into the header (detach and repair). */
void shmq_part_fold_slot(shmq_seg_t *seg, uint32_t s);
/* Live attached count, producers, consumers. */
void shmq_part_count(shmq_seg_t *seg, uint32_t *attached, uint32_t *producers, uint32_t *consumers);
/* Slots that took the consumer role: without system calls (alive = 0: ATTACHED slots, dead ones
 * not yet repaired included), or only live ones (alive = 1: one F_OFD_GETLK per candidate). */
uint32_t shmq_part_consumers(shmq_seg_t *seg, int alive);
/* Take a role before the first put or get (a responder is a consumer from its creation). */
void shmq_part_set_role(shmq_seg_t *seg, uint32_t role);
/* Repair every dead participant this handle can elect itself for (through seg->ops->repair_owner),
 * then free their slots; returns how many. */
int shmq_part_repair_dead(shmq_seg_t *seg);

#endif
