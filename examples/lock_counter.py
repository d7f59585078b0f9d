"""A plain multiprocessing script: four processes add to a shared counter
under a lock.  Run it unchanged on fastmp with

    python -m fastmp lock_counter.py
"""

import multiprocessing


def work(counter, lock, n):
    for _ in range(n):
        with lock:
            counter.value += 1


if __name__ == "__main__":
    lock = multiprocessing.Lock()
    counter = multiprocessing.Value("i", 0, lock=False)
    procs = [
        multiprocessing.Process(target=work, args=(counter, lock, 50_000))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print("counter =", counter.value, "(expected 200000)")
    print("running on", multiprocessing.__name__)
