"""Request-reply: two responder processes serve a request queue; one requester sends requests
with request() and submit(), and handles a remote error and a dead responder."""
import multiprocessing as mp
import os
import signal

import shmq

NAME = f"example-rpc-{os.getpid()}"


def responder(ready):
    with shmq.Responder(NAME) as srv:
        ready.set()
        for req in srv:
            if req.body == "crash":
                os.kill(os.getpid(), signal.SIGKILL)     # dies holding the request
            elif req.body == "bad":
                req.fail("bad input")
            else:
                req.reply((req.body.upper(), os.getpid()))


def main():
    shmq.Responder(NAME, create=True).close()
    workers = []
    for _ in range(2):
        ready = mp.Event()
        p = mp.Process(target=responder, args=(ready,))
        p.start()
        ready.wait(10)
        workers.append(p)
    try:
        with shmq.Requester(NAME) as cli:
            print(cli.request("hello", timeout=5))
            futures = [cli.submit(f"job {i}", timeout=5) for i in range(10)]
            print(sorted(f.result()[0] for f in futures)[:3], "...")
            try:
                cli.request("bad", timeout=5)
            except shmq.RemoteError as e:
                print("remote error:", e)
            try:
                cli.request("crash", timeout=5)
            except shmq.ResponderDiedError as e:
                print("responder died:", e)
            print(cli.request("still served", timeout=5))
            st = cli.stats()
            print({k: st[k] for k in ("sent", "replied", "remote_errors", "responder_died")})
    finally:
        for p in workers:
            p.kill()
            p.join(10)
        shmq.unlink(NAME)
        shmq.unlink(NAME + ".dlq")


if __name__ == "__main__":
    main()
