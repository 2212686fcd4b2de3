"""Running a measurement: forked children, barriers, the reap loop, the machine report, JSON."""
import json
import os
import platform
import signal
import sys
import time
import traceback

import multiprocessing as mp

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
BATCH = 64                  # put_many / get_many / receive_many / XREADGROUP COUNT / pipeline size
CHILD_TIMEOUT = 5.0         # every blocking call inside a child gives up after this
RUN_TIMEOUT = 60.0          # a whole run (all its children) gives up after this

ctx = mp.get_context("fork")


class Skip(Exception):
    """This peer cannot run this workload (the reason is reported)."""


class Mismatch(RuntimeError):
    """The consumers did not get exactly the messages that were sent: a correctness failure,
    reported as FAILED and turned into exit status 1 (a benchmark never asserts a speed)."""


def pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def cpus():
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def open_recv(chan, index):
    return chan.receiver(index) if getattr(chan, "indexed", False) else chan.receiver()


def open_send(chan, consumers):
    return chan.sender(consumers) if getattr(chan, "indexed", False) else chan.sender()


def _child(fn, chans, recv_spec, send_spec, cpu, b1, b2, b3, resq, idx, args):
    # returns normally (no os._exit): multiprocessing's exit path flushes Queue feeder threads
    signal.signal(signal.SIGTERM, signal.SIG_DFL)     # the parent's handler (stop_on_sigterm) is not ours
    try:
        pin(cpu)
        rx = [open_recv(chans[c], i) for c, i in recv_spec]
        b1.wait(CHILD_TIMEOUT * 2)
        tx = [open_send(chans[c], n) for c, n in send_spec]
        b2.wait(CHILD_TIMEOUT * 2)
        out = fn(rx, tx, *args)
        resq.put((idx, "ok", out))
        # Nobody closes an end before every role is done: a pyzmq PUSH connected to several
        # PULLs and closed with messages still queued was seen to drop some, despite LINGER.
        try:
            b3.wait(CHILD_TIMEOUT * 2)
        except Exception:
            pass
    except BaseException:
        try:
            resq.put((idx, "err", traceback.format_exc()))
        except Exception:
            pass
        raise
    finally:
        for c in chans:
            try:
                c.close_end()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()


def run(chans, roles, timeout=RUN_TIMEOUT):
    """Fork one child per role and return each role's result, in order.

    roles: [(fn, recv_spec, send_spec, cpu, args)]; a child opens its receiving ends
    (recv_spec: [(channel index, consumer index)]), meets the others at a barrier, opens its
    sending ends (send_spec: [(channel index, consumer count)]), meets them again, then runs
    fn(rx, tx, *args). Every child is joined, then terminated, then killed, whatever happens."""
    n = len(roles)
    b1, b2, b3 = ctx.Barrier(n), ctx.Barrier(n), ctx.Barrier(n)
    resq = ctx.Queue()
    procs = []
    results = [None] * n
    got = 0
    try:
        for i, (fn, rs, ss, cpu, args) in enumerate(roles):
            p = ctx.Process(target=_child, args=(fn, chans, rs, ss, cpu, b1, b2, b3, resq, i, args), daemon=True)
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"benchmark run did not finish in {timeout:.0f} s")
            try:
                idx, status, out = resq.get(timeout=min(left, 1.0))
            except Exception:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and resq.empty():
                    time.sleep(0.2)
                    if resq.empty():
                        raise RuntimeError(f"a benchmark child exited with code {dead[0].exitcode}") from None
                continue
            if status == "err":
                raise RuntimeError("benchmark child failed:\n" + out)
            results[idx] = out
            got += 1
        return results
    finally:
        if got < n:
            for b in (b1, b2, b3):
                try:
                    b.abort()       # a child still waiting at a barrier gives up at once
                except Exception:
                    pass
        for p in procs:
            p.join(CHILD_TIMEOUT * 2)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        resq.close()
        resq.join_thread()


class stop_on_sigterm:
    """While inside: SIGTERM raises SystemExit in the main thread, so the finally clauses that
    stop the children and the Redis server run (the default action would skip them)."""

    def __enter__(self):
        def on_term(signum, frame):
            raise SystemExit(128 + signum)
        try:
            self.old = signal.signal(signal.SIGTERM, on_term)
        except ValueError:          # not the main thread: leave the handler alone
            self.old = None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def host_info():
    """CPU model, cores, load, Python and kernel of this machine (every benchmark reports them)."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": cpu, "cores": os.cpu_count(), "usable_cpus": cpus(), "loadavg_at_start": load,
            "python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "kernel": platform.release()}


def write_json(res, path):
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
