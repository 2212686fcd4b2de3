"""Timeouts, bounded capacity and the errors shmq raises, each caught as its builtin too."""
import os
import queue

import shmq

NAME = f"example-errors-{os.getpid()}"


def main():
    q = shmq.Queue(2)                      # maxsize 2, like multiprocessing.Queue(2)
    try:
        q.put("a")
        q.put("b")
        try:
            q.put("c", timeout=0.05)       # full for 50 ms: queue.Full, as multiprocessing raises
        except queue.Full:
            print("Full after the timeout (a queue.Full)")
        print(q.get(), q.get())
        try:
            q.get(timeout=0.05)
        except queue.Empty:
            print("Empty after the timeout (a queue.Empty)")
        try:
            q.get(timeout=-1)
        except ValueError as e:
            print("negative timeout:", e)
    finally:
        q.close()
    try:
        q.put("after close")
    except ValueError as e:               # shmq.QueueClosedError is a ValueError and an OSError
        print("closed:", type(e).__name__)

    bounded = shmq.Queue(NAME, create=True, capacity="256KiB")   # fixed size; max_message = 64 KiB
    try:
        print("capacity", bounded.stats()["capacity"], "max_message", bounded.stats()["max_message"])
        try:
            bounded.put(b"x" * 100_000)
        except shmq.MessageTooLargeError as e:   # also a ValueError
            print("too large:", e)
        try:
            shmq.Queue(NAME, create=True)
        except FileExistsError:                  # shmq.QueueExistsError
            print("exists: open it with exist_ok=True or without create")
    finally:
        bounded.close()
        shmq.unlink(NAME)
    try:
        shmq.Queue(NAME)
    except FileNotFoundError:                    # shmq.QueueNotFound
        print("gone after unlink")
    try:
        shmq.Queue("bad/name", create=True)
    except ValueError as e:
        print("bad name:", e)


if __name__ == "__main__":
    main()
