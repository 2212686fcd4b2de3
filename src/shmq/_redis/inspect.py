"""`shmq ls`, `shmq stat` and `shmq peek` for queues on a Redis server (--backend URL or
$SHMQ_BACKEND): read-only, nothing is taken, no lease changes, no delivery is counted.

A queue is found by its meta hash (``shmq:{NAME}:meta``, SCAN); its counters are its handle's
stats(); peek reads the keys of the layout in shmq._redis (docs/internals/redis.md) with plain
reads (LRANGE, XRANGE, XPENDING, ZRANGE, HGETALL), never the receive script. Everything read is
untrusted: an entry that is not a message of shmq is shown as such, never raises."""
from __future__ import annotations

import struct
from typing import Any, Optional

from .. import _codec, _core
from ..stats import QueueInfo
from . import client_name, connect, prefix
from .queue import _ITEM, _MHEAD, _io, _s

__all__ = ["scan", "open_any", "peek"]


def _names(r):
    out = set()
    for k in r.scan_iter(match="shmq:{*}:meta", count=1000):
        k = _s(k)
        if k.startswith("shmq:{") and k.endswith("}:meta"):
            out.add(k[len("shmq:{"):-len("}:meta")])
    return sorted(out)


def open_any(name, url):
    """A handle of the right class on queue `name` (shmq.open on the server)."""
    from .._open import open as _open
    return _open(name, backend=url)


def scan(url) -> list[tuple[QueueInfo, Optional[dict[str, Any]]]]:
    """[(QueueInfo, stats or None)] for every queue on the server, sorted by name (shmq ls)."""
    r = connect(url, client_name("admin"))
    try:
        with _io(url):
            names = _names(r)
    finally:
        r.close()
    out = []
    for name in names:
        try:
            h = open_any(name, url)
        except Exception as e:         # a queue that cannot be opened is listed, saying so, and never stops the listing
            out.append((QueueInfo(name, f"? ({type(e).__name__})", None, None, None, None, None, None), None))
            continue
        try:
            st = h.stats()
        finally:
            h.close()
        kind = {_core.KIND_QUEUE: "queue", _core.KIND_PRIORITY: "priority", _core.KIND_TOPIC: "topic"}.get(
            st.get("kind"), "queue")
        out.append((QueueInfo(name, kind, st["depth"], None, st.get("capacity"), None, None,
                              st.get("created_at"), None, st.get("consumers")), st))
    return out


def _info(mid, t_s, kind, payload, nbytes, unpickle, **extra):
    info = {"id": mid, "timestamp": t_s, "kind": _codec.KIND_NAMES.get(kind, "?"), "size": len(payload),
            "prefix": bytes(payload[:nbytes]), "decoded": False, "value": None}
    if unpickle:
        try:
            info["value"] = _codec.decode(kind, memoryview(payload), False, mid)
            info["decoded"] = True
        except Exception:
            pass
    info.update(extra)
    return info


def _from_fields(f, nbytes, unpickle, **extra):
    """An info dict of a stream entry's / message hash's fields (i, m), or None (not ours)."""
    try:
        mid, m = int(f[b"i"]), f[b"m"]
        kind, prio, t, hl = _MHEAD.unpack_from(m)
    except (KeyError, ValueError, TypeError, struct.error):
        return None
    end = _MHEAD.size + hl
    if end > len(m):
        return None
    return _info(mid, t / 1e3, kind, memoryview(m)[end:], nbytes, unpickle, priority=prio,
                 headers=bytes(m[_MHEAD.size:end]), **extra)


def _stream_peek(r, stream, group, n, nbytes, unpickle, given_back):
    """(ready, held) info lists of one stream with its consumer group: the next n never
    delivered entries, and up to n pending ones with their delivery counts (in flight, or
    delayed when given back: nack(delay=), in the sorted set given_back)."""
    last = "0-0"
    if r.exists(stream):
        for g in r.xinfo_groups(stream):
            if _s(g["name"]) == group:
                last = _s(g["last-delivered-id"])
    ready = []
    for sid, f in r.xrange(stream, min="(" + last, count=n) if n else []:
        i = _from_fields(f, nbytes, unpickle, state="ready", delivery_count=0)
        if i is not None:
            ready.append(i)
    held = []
    if n and r.exists(stream):
        for p in r.xpending_range(stream, group, min="-", max="+", count=n):
            e = r.xrange(stream, min=p["message_id"], max=p["message_id"])
            if e:
                state = "delayed" if r.zscore(given_back, p["message_id"]) is not None else "in-flight"
                i = _from_fields(e[0][1], nbytes, unpickle, state=state, delivery_count=int(p["times_delivered"]))
                if i is not None:
                    held.append(i)
    return ready, held


def peek(name, url, n, nbytes, unpickle, seq=None):
    """(stats, kind word, [info]) of queue `name`: the next n ready messages (delivery order for
    a plain queue; a priority queue's highest level first), then (at least once) up to n in
    flight and n delayed; a topic's n messages from seq (default the oldest). Raises QueueNotFound."""
    h = open_any(name, url)
    try:
        st = h.stats()
        r, p = h._r, prefix(name)
        with _io(h):
            if st["kind"] == _core.KIND_TOPIC:
                return st, "topic", _topic_peek(h, n, nbytes, unpickle, seq)
            levels = st.get("levels")
            ack = bool(st["flags"] & _core.F_ACK)
            if not ack:
                keys = [p + f"q{k}" for k in range(len(levels))][::-1] if levels else [p + "q"]
                out = []
                for key in keys:
                    if len(out) >= n:
                        break
                    for item in r.lrange(key, 0, n - len(out) - 1):
                        try:
                            kind, ts = _ITEM.unpack_from(item)
                        except struct.error:
                            continue
                        out.append(_info(len(out), ts, kind, memoryview(item)[_ITEM.size:], nbytes, unpickle))
                return st, "queue", out
            streams = [(p + f"s{k}", p + f"w{k}") for k in range(len(levels))][::-1] if levels else [(p + "s", p + "w")]
            ready, held = [], []
            for stream, w in streams:
                a, b = _stream_peek(r, stream, "g", n, nbytes, unpickle, w)
                ready += a
                held += b
            # messages waiting behind their group's head (send(group=)): queued, after the stream's
            parked = []
            for g in (r.hkeys(p + "gh") if len(ready) < n else []):
                for mid in r.lrange(p.encode() + b"gq:" + g, 0, n - 1):
                    i = _from_fields(r.hgetall(p + "m:" + _s(mid)), nbytes, unpickle, state="ready", delivery_count=0)
                    if i is not None:
                        parked.append(i)
            ready = (ready + sorted(parked, key=lambda i: i["id"]))[:n]
            delayed = []
            for mid in r.zrange(p + "d", 0, n - 1) if n else []:
                i = _from_fields(r.hgetall(p + "m:" + _s(mid)), nbytes, unpickle, state="delayed", delivery_count=0)
                if i is not None:
                    delayed.append(i)
            held = sorted(held, key=lambda i: i["id"])[:n]
            return st, "ack", ready + held + delayed[:n]
    finally:
        h.close()


def _topic_peek(h, n, nbytes, unpickle, seq):
    out = []
    first = h.stats()["oldest_seq"] if seq is None else seq
    for sid, f in h._r.xrange(h._stream, min=f"{first}-0", count=n) if n else []:
        try:
            seq = int(_s(sid).split("-")[0])
            m = f[b"m"]
            kind, _prio, t, hl = _MHEAD.unpack_from(m)
        except (KeyError, ValueError, TypeError, struct.error):
            continue
        end = _MHEAD.size + hl
        if end <= len(m):
            out.append(_info(seq, t / 1e3, kind, memoryview(m)[end:], nbytes, unpickle, headers=bytes(m[_MHEAD.size:end])))
    return out

