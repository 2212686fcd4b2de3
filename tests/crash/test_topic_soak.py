"""Randomized SIGKILL soak on a topic with three kinds of subscription (a block group, a
drop_oldest group, private readers, and an ack=True group) and two publishers: afterwards nothing torn was ever
delivered, sequence numbers were never reused, the block group delivered every published
message once (except at most one per member killed between its claim and its record), and
the ack=True group acked every published message (a message acked twice only after a
redelivery: at most one first delivery per message), and the log still works. SHMQ_TOPIC_SOAK_KILLS sets the number of kills (CI budget by default)."""
import os
import random
import signal
import sys
import time

import shmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _topic_worker import check, payload  # noqa: E402

KILLS = int(os.environ.get("SHMQ_TOPIC_SOAK_KILLS", "40"))


def _child(fn):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _publisher(name, pub, start, path):
    def run():
        t = shmq.Topic(name)
        with open(path, "a", buffering=1) as f:
            i = start
            while True:
                seqs = t.publish_many([payload(pub, i + j) for j in range(4)], timeout=2)
                f.write("".join(f"P {s} {pub} {i + j}\n" for j, s in enumerate(seqs)))
                i += 4
    return run


def _reader(name, sub, on_slow, path, idle):
    def run():
        t = shmq.Topic(name)
        s = t.subscribe(sub, on_slow=on_slow) if sub else t.subscribe()
        with open(path, "a", buffering=1) as f:
            while True:
                try:
                    msgs = s.get_many(8, timeout=idle)
                except shmq.Empty:
                    return
                f.write("".join(f"R {m.seq} {' '.join(map(str, check(m.body)))}\n" if check(m.body)
                                else f"BAD {m.seq}\n" for m in msgs))
    return run


def _acker(name, path):
    def run():
        t = shmq.Topic(name)
        s = t.subscribe("acked", ack=True)
        with open(path, "a", buffering=1) as f:
            while True:
                try:
                    m = s.get(timeout=30)
                except shmq.Empty:
                    return
                pi = check(m.body)
                # recorded before the ack: a member killed in between gets it redelivered
                f.write(f"A {m.seq} {m.delivery_count}\n" if pi else f"BAD {m.seq}\n")
                m.ack()
    return run


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.endswith("\n")]   # a line cut by the kill is ignored


def test_random_sigkill_soak_on_a_topic(qname, tmp_path):
    rnd = random.Random(int(os.environ.get("SHMQ_SOAK_SEED", "7")))
    t = shmq.Topic(qname, create=True, capacity="256KiB")
    kids = {}
    try:
        t.subscribe("block", start="earliest").close()
        t.subscribe("lossy", start="earliest", on_slow="drop_oldest").close()
        t.subscribe("acked", start="earliest", ack=True).close()
        runs = {"pub0": 0, "pub1": 0, "blk0": 0, "blk1": 0, "lossy": 0, "priv": 0, "ack0": 0, "ack1": 0}
        next_i = {"pub0": 0, "pub1": 0}
        killed_block = 0

        def start(role):
            runs[role] += 1
            path = str(tmp_path / f"{role}-{runs[role]}")
            if role.startswith("pub"):
                pub = int(role[3])
                # a restarted publisher continues its numbering past anything it may have published
                next_i[role] += 1000000
                fn = _publisher(qname, pub, next_i[role], path)
            elif role.startswith("blk"):
                fn = _reader(qname, "block", "block", path, 30)
            elif role.startswith("ack"):
                fn = _acker(qname, path)
            elif role == "lossy":
                fn = _reader(qname, "lossy", "drop_oldest", path, 30)
            else:
                fn = _reader(qname, None, None, path, 30)
            kids[role] = _child(fn)

        for role in runs:
            start(role)
        for _ in range(KILLS):
            time.sleep(rnd.uniform(0.001, 0.03))
            role = rnd.choice(sorted(kids))
            os.kill(kids[role], signal.SIGKILL)
            os.waitpid(kids[role], 0)
            killed_block += role.startswith("blk")
            start(role)
        for role in ("pub0", "pub1"):               # publishers stop; readers drain and stop
            os.kill(kids.pop(role), signal.SIGKILL)
        for role in ("blk0", "blk1", "lossy", "priv", "ack0", "ack1"):
            os.kill(kids.pop(role), signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        # the readers were killed too (their last batch may be unrecorded): drain the block group here
        tail = t.subscribe("block")
        rest = []
        while True:
            try:
                rest += [m.seq for m in tail.get_many(256, timeout=0.2)]
            except shmq.Empty:
                break
        tail.close()
        killed_block += 2
        t._repair()                        # what the killed ack members held goes back to the group
        acks = t.subscribe("acked", ack=True)
        acked_rest = []
        while True:
            try:
                m = acks.get(timeout=0.3)
            except shmq.Empty:
                break
            acked_rest.append((m.seq, m.delivery_count))
            m.ack()
        acks.close()

        published, delivered, bad, acked = [], [], [], list(acked_rest)
        for f in sorted(os.listdir(tmp_path)):
            recs = _lines(str(tmp_path / f))
            bad += [r for r in recs if r[0] == "BAD"]
            if f.startswith("pub"):
                published += [int(r[1]) for r in recs if r[0] == "P"]
            else:
                seqs = [int(r[1]) for r in recs if r[0] == "R"]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{f}: order broken"
                if f.startswith("blk"):
                    delivered += seqs
            if f.startswith("ack"):
                acked += [(int(r[1]), int(r[2])) for r in recs if r[0] == "A"]
        assert not bad, "a torn message was delivered"
        assert len(set(published)) == len(published), "a sequence number was given out twice"
        assert published, "no publish returned"
        group = delivered + rest
        assert len(set(group)) == len(group), "the block group delivered a message twice"
        missing = set(published) - set(group)
        # at most a batch (8) per block member killed between its claim and its record
        assert len(missing) <= 8 * killed_block, (len(missing), killed_block)
        info = {i.name: i for i in t.subscriptions()}
        assert info["block"].lag == 0 and info["block"].missed == 0
        # at-least-once: every published message was acked; a second ack only after a redelivery
        assert set(published) <= {seq for seq, _ in acked}, "an ack=True member lost a message"
        firsts = [seq for seq, count in acked if count == 1]   # every other delivery is a redelivery
        assert len(firsts) == len(set(firsts)), "a message was delivered twice as a first delivery"
        assert t.stats()["subscriptions"]["acked"]["in_flight"] == 0
        # the log still works after all the kills
        probe = t.subscribe()
        seq = t.publish(b"alive", timeout=5)
        assert probe.get(timeout=5).seq == seq
    finally:
        for pid in kids.values():
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        t.close()
        shmq.unlink(qname)
