"""The `shmq` command as an operator drives it (issue 13 item 6): the installed entry point run
through a shell, its output piped into other programs, its exit status and stderr checked."""
import datetime
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import shmq

SHMQ = os.path.join(os.path.dirname(sys.executable), "shmq")   # the console script pip installed
VIS = 30.0


def sh(cmd, timeout=60):
    """Run a shell command line (bash, pipefail) with `shmq` meaning the installed entry point."""
    line = f"set -o pipefail; shmq() {{ {shlex.quote(SHMQ)} \"$@\"; }}; {cmd}"
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=timeout)


def clean(r):
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr and "Error" not in r.stderr, r.stderr


@pytest.fixture
def ackq(make_queue):
    def make(suffix="", **kw):
        kw.setdefault("visibility_timeout", VIS)
        kw.setdefault("capacity", "1MiB")
        return make_queue(suffix, ack=True, **kw)
    return make


def _table(stdout, head_first="NAME"):
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    i = next(k for k, ln in enumerate(lines) if ln.startswith(head_first))
    head = lines[i].split()
    return head, {ln.split()[0]: dict(zip(head, ln.split())) for ln in lines[i + 1:]}


def test_the_entry_point_is_installed():
    assert os.access(SHMQ, os.X_OK), SHMQ


def test_version():
    r = sh("shmq --version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"shmq {shmq.__version__}"


# ---------------------------------------------------------------- broken pipes

def test_piped_into_head_ends_quietly(make_queue, qname):
    q = make_queue(capacity="4MiB")
    for _ in range(3000):
        q.put(b"x" * 40)
    # more output than a pipe holds, so the writer meets the closed pipe
    for cmd in (f"shmq peek {qname} -n 3000 | head -1", "shmq top --interval 0.01 | head -2",
                f"shmq stat {qname} | head -1", "shmq ls | head -1"):
        r = sh(cmd)
        assert r.returncode == 0, (cmd, r.returncode, r.stderr)
        assert r.stdout, cmd
        clean(r)


# ---------------------------------------------------------------- names

def test_a_pasted_dev_shm_path_is_the_queue_name(make_queue, qname):
    q = make_queue(capacity="1MiB")
    q.put(b"hello")
    r = sh(f"shmq stat {q.path}")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^name\s+{re.escape(qname)}$", r.stdout, re.M)
    r = sh(f"shmq peek /dev/shm/shmq.{qname}")
    assert r.returncode == 0 and "size=5" in r.stdout, r.stderr
    r = sh(f"shmq rm /dev/shm/shmq.{qname}")
    assert r.returncode == 0 and not os.path.exists(q.path), r.stderr


def test_a_pasted_path_of_an_anonymous_queue():
    q = shmq.Queue(capacity="1MiB")
    try:
        q.put(b"x")
        r = sh(f"shmq peek {q.path}")
        assert r.returncode == 0 and "size=1" in r.stdout, r.stderr
    finally:
        q.close()


# ---------------------------------------------------------------- stat

def test_stat_is_readable_text(make_queue, qname):
    q = make_queue(capacity="1MiB", mode=0o640)
    r = sh(f"shmq stat {qname}")
    assert r.returncode == 0, r.stderr
    rows = dict(re.match(r"(\S+)\s+(.*)$", ln).groups() for ln in r.stdout.splitlines())
    assert rows["mode"] == "0o640"
    # ISO 8601 with the UTC offset, the creation time of this queue
    created = datetime.datetime.fromisoformat(rows["created_at"])
    assert created.tzinfo is not None
    assert abs(created.timestamp() - q.stats()["created_at"]) < 2
    # options that are not set: None, not 0 or ""
    for k in ("maxsize", "default_ttl", "dead_letter", "visibility_timeout", "max_deliveries"):
        assert rows[k] == "None", (k, rows[k])
    # aligned: every value starts in the same column
    starts = {len(ln) - len(ln.split(None, 1)[1]) for ln in r.stdout.splitlines()}
    assert len(starts) == 1, starts
    # --json keeps the numbers as they are
    st = json.loads(sh(f"shmq stat {qname} --json").stdout)
    assert st["mode"] == 0o640 and st["maxsize"] == 0


def test_stat_of_an_ack_queue(ackq, qname):
    q = ackq(ttl=60)
    r = sh(f"shmq stat {qname}")
    rows = dict(re.match(r"(\S+)\s+(.*)$", ln).groups() for ln in r.stdout.splitlines())
    assert rows["dead_letter"] == q.dead_letter_queue and rows["visibility_timeout"] == str(VIS)
    assert rows["default_ttl"] == "60.0" and rows["flags"].endswith("(ack)")
    r = sh(f"shmq stat {q.dead_letter_queue}")
    assert re.search(r"^dead_letter\s+None$", r.stdout, re.M), r.stdout


# ---------------------------------------------------------------- ls and top

def test_ls_and_top_show_held_messages_age_and_dead_letter_queues(ackq, make_queue, qname):
    q = ackq()
    plain = make_queue("-plain", capacity="1MiB")
    plain.put(b"p")
    q.send(b"ready")
    q.send(b"later", delay=60)
    q.send(b"taken")
    q.send(b"bad")
    ready = q.receive(timeout=5)            # "ready" is now in flight
    assert ready.body == b"ready"
    q.receive(timeout=5).nack(requeue=False)     # "taken" goes to the DLQ
    for cmd in ("shmq ls", "shmq top --iterations 1"):
        r = sh(cmd)
        assert r.returncode == 0, r.stderr
        head, rows = _table(r.stdout)
        assert {"IN_FLIGHT", "DELAYED", "AGE"} <= set(head), head
        a, d, p = rows[qname], rows[q.dead_letter_queue], rows[qname + "-plain"]
        assert (a["KIND"], a["DEPTH"], a["IN_FLIGHT"], a["DELAYED"]) == ("ack", "1", "1", "1"), (cmd, a)
        assert re.fullmatch(r"\d+\.\ds", a["AGE"]), a
        assert (d["KIND"], d["DEPTH"]) == ("dead-letter", "1"), d
        assert (p["KIND"], p["IN_FLIGHT"], p["DELAYED"]) == ("queue", "-", "-"), p
    rows = {row["name"]: row for row in json.loads(sh("shmq ls --json").stdout)}
    assert rows[qname]["in_flight"] == 1 and rows[qname]["delayed"] == 1 and rows[qname]["at_least_once"]
    assert rows[q.dead_letter_queue]["dead_letter_queue"] and not rows[qname]["dead_letter_queue"]
    assert rows[qname]["kind"] == "queue"           # list_queues()'s kind, unchanged
    ready.ack()


# ---------------------------------------------------------------- peek

def test_peek_shows_headers_delivery_counts_and_held_messages(ackq, qname):
    q = ackq()
    q.send(b"first", headers={"trace": "abc"})
    q.send({"k": 1}, delay=60)
    q.send(b"second")
    m = q.receive(timeout=5)                # "first": in flight, delivered once
    r = sh(f"shmq peek {qname} --unpickle")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{qname}: 1 ready, 1 in flight, 1 delayed"
    by_state = {re.match(r"state=(\S+)", ln).group(1): ln for ln in lines[1:]}
    assert set(by_state) == {"ready", "in-flight", "delayed"}, lines
    assert "deliveries=1" in by_state["in-flight"] and "headers={'trace': 'abc'}" in by_state["in-flight"]
    assert "value=b'first'" in by_state["in-flight"]
    assert "deliveries=0" in by_state["ready"] and "value=b'second'" in by_state["ready"]
    assert "value={'k': 1}" in by_state["delayed"]
    st = q.stats()
    assert (st["depth"], st["in_flight"], st["delayed"]) == (1, 1, 1)      # peek took nothing
    m.ack()


def test_peek_of_a_dead_letter_shows_why_it_died(ackq, qname):
    q = ackq()
    q.send(b"poison")
    q.receive(timeout=5).nack(requeue=False)
    r = sh(f"shmq peek {q.dead_letter_queue}")
    assert r.returncode == 0, r.stderr
    assert f"'x-dead-letter-source': '{qname}'" in r.stdout and "'x-dead-letter-reason': 'rejected'" in r.stdout


def test_peek_n_0_is_not_empty(make_queue, ackq, qname):
    q = make_queue(capacity="1MiB")
    q.put(b"x")
    r = sh(f"shmq peek {qname} -n 0")
    assert r.returncode == 0 and "(empty)" not in r.stdout and f"{qname}: 1 queued" in r.stdout, r.stdout
    a = ackq("-a")
    r = sh(f"shmq peek {qname}-a")
    assert r.returncode == 0 and "(empty)" in r.stdout
    a.send(b"y")
    r = sh(f"shmq peek {qname}-a -n 0")
    assert "(empty)" not in r.stdout and "1 ready" in r.stdout


def test_peek_escapes_header_values(ackq, qname):
    q = ackq()
    q.send(b"x", headers={"evil": "\x1b[2J\nforged"})
    r = sh(f"shmq peek {qname}")
    assert "\x1b" not in r.stdout and "\\x1b[2J\\nforged" in r.stdout


# ---------------------------------------------------------------- purge

def test_purge_all_empties_an_ack_queue(ackq, qname):
    q = ackq()
    q.send(b"ready")
    q.send(b"later", delay=60)
    q.send(b"held", dedup_id="d1")
    q.send(b"more")
    first = q.receive(timeout=5)
    held = q.receive(timeout=5)
    assert (first.body, held.body) == (b"ready", b"held")
    r = sh(f"shmq purge {qname}")
    assert r.returncode == 0 and "purged 1 message(s)" in r.stdout and "2 in flight and 1 delayed" in r.stdout
    r = sh(f"shmq purge --all {qname}")
    assert r.returncode == 0 and "purged 3 message(s)" in r.stdout, r.stdout
    st = q.stats()
    assert (st["depth"], st["in_flight"], st["delayed"]) == (0, 0, 0), st
    assert st["acked"] == 0 and st["dead_lettered"] == 0 and shmq.Queue(q.dead_letter_queue).qsize() == 0
    with pytest.raises(shmq.LeaseExpiredError):     # the purged delivery's lease ended
        first.ack()
    with pytest.raises(shmq.Empty):
        q.receive(timeout=0.2)
    # the queue works on, and a purged dedup id is still remembered as sent
    assert q.send(b"held again", dedup_id="d1") == held.id
    q.send(b"new")
    assert q.receive(timeout=5).body == b"new"


def test_purge_all_on_a_plain_queue(make_queue, qname):
    q = make_queue(capacity="1MiB")
    q.put(b"a")
    r = sh(f"shmq purge --all {qname}")
    assert r.returncode == 0 and "purged 1 message(s)" in r.stdout and q.qsize() == 0


# ---------------------------------------------------------------- redrive

def _dlq_state(q):
    d = shmq.Queue(q.dead_letter_queue)
    try:
        st = d.stats()
        return st["depth"], st["in_flight"], st["redelivered"]
    finally:
        d.close()


def _first_delivery_count(q):
    """Receive and ack the DLQ's next message: its delivery count says how often it was
    delivered before, plus this once."""
    d = shmq.Queue(q.dead_letter_queue)
    try:
        m = d.receive(timeout=5)
        m.ack()
        return m.delivery_count
    finally:
        d.close()


def test_redrive_failures_exit_1_in_cli_words_and_count_no_delivery(ackq, make_queue, qname):
    q = ackq()
    make_queue("-plain", capacity="1MiB")
    dlq = shmq.Queue(q.dead_letter_queue)
    try:
        dlq.send(b"no source")            # sent straight into the DLQ: no x-dead-letter-source
        before = _dlq_state(q)
        r = sh(f"shmq redrive {q.dead_letter_queue}")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert "--to" in r.stderr and "to=" not in r.stderr and "Traceback" not in r.stderr
        assert _dlq_state(q) == before == (1, 0, 0)
        for to, why in ((f"{qname}-missing", "no such queue"), (f"{qname}-plain", "not an at-least-once queue")):
            r = sh(f"shmq redrive {q.dead_letter_queue} --to {to}")
            assert r.returncode == 1 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
            assert _dlq_state(q) == before
        r = sh(f"shmq peek {q.dead_letter_queue}")
        assert "state=ready deliveries=0" in r.stdout, r.stdout
        r = sh(f"shmq redrive {qname}")           # the source queue, not its DLQ
        assert r.returncode == 1 and "not a dead-letter queue" in r.stderr and "--to" in r.stderr
        r = sh(f"shmq redrive {qname}-plain")
        assert r.returncode == 1 and "not a dead-letter queue" in r.stderr
        r = sh(f"shmq redrive {q.dead_letter_queue} --max -1")
        assert r.returncode == 2                  # a usage error stays one
        r = sh(f"shmq redrive {q.dead_letter_queue} --to {qname}")
        assert r.returncode == 0 and "moved 1 message(s)" in r.stdout, r.stderr
        m = q.receive(timeout=5)
        assert m.body == b"no source" and m.delivery_count == 1
        m.ack()
    finally:
        dlq.close()


def test_library_redrive_leaves_a_message_without_target_uncounted(ackq, qname):
    q = ackq()
    q.send(b"m")
    q.receive(timeout=5).nack(requeue=False)
    shmq.unlink(qname)          # its source is gone: the header names a queue that is not there
    with pytest.raises(shmq.QueueNotFound):
        shmq.redrive(q.dead_letter_queue)
    assert _dlq_state(q) == (1, 0, 0)
    assert _first_delivery_count(q) == 1         # this receive is its first delivery from the DLQ


def test_library_redrive_of_a_message_without_source_counts_no_delivery(ackq):
    q = ackq()
    d = shmq.Queue(q.dead_letter_queue)
    try:
        d.send(b"orphan")
        with pytest.raises(ValueError, match="to="):
            shmq.redrive(d)
        assert _dlq_state(q) == (1, 0, 0)
        assert _first_delivery_count(q) == 1
    finally:
        d.close()


def test_redrive_into_a_target_that_refuses_the_message_exits_1_and_keeps_it(ackq, qname):
    q = ackq()
    ackq("-small", max_message=1024)
    q.send(b"x" * 4000)
    q.receive(timeout=5).nack(requeue=False)
    r = sh(f"shmq redrive {q.dead_letter_queue} --to {qname}-small")
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert "max_message" in r.stderr and f"stays in '{q.dead_letter_queue}'" in r.stderr, r.stderr
    d, in_flight, _ = _dlq_state(q)
    assert (d, in_flight) == (1, 0)           # back in the dead-letter queue at once, not held for its lease


def test_peek_shows_printable_text_and_every_table_has_json(qname):
    q = shmq.Queue(qname, create=True, capacity="1MiB")
    try:
        q.put("hello")
        q.put(b"raw\x00bytes and spaces")
        r = subprocess.run([SHMQ, "peek", qname], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "text=" in lines[1] and "hello" in lines[1].split("text=")[1]      # pickled, not unpickled
        assert lines[2].split("text=")[1] == "raw.bytes.and.spaces"
        r = subprocess.run([SHMQ, "peek", qname, "--json"], capture_output=True, text=True, timeout=60)
        msgs = json.loads(r.stdout)
        assert len(msgs) == 2 and "hello" in msgs[0]["text"] and msgs[1]["hex"].startswith(b"raw".hex())
        r = subprocess.run([SHMQ, "top", "--json", "--iterations", "2", "--interval", "0.01"],
                           capture_output=True, text=True, timeout=60)
        frames = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(frames) == 2 and any(row["NAME"] == qname and row["DEPTH"] == "2" for row in frames[0]["queues"])
        for cmd in (["ls", "--json"], ["stat", qname, "--json"]):
            r = subprocess.run([SHMQ, *cmd], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and json.loads(r.stdout)
    finally:
        q.close()
        shmq.unlink(qname)
