"""SharedMemory / ShareableList: stdlib vs fastmp, same run.

    PYTHONPATH=. python benchmarks/bench_shared_memory.py

Prints per-operation times (best of 5 repeats) and the ratio
stdlib/fastmp.
"""

import timeit
from multiprocessing import shared_memory as std

from fastmp import shared_memory as fast


def best(stmt, number, repeat=5):
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def bench_list_get_set(mod):
    sl = mod.ShareableList([1, 2.5, "text", b"raw", None, True] * 10)
    try:

        def run():
            sl[3] = sl[3]
            sl[0] = sl[0]
            sl[2] = sl[2]
            sl[1] = sl[1]

        return best(run, 20000) / 4
    finally:
        sl.shm.close()
        sl.shm.unlink()


def bench_list_get(mod):
    sl = mod.ShareableList([1, 2.5, "text", b"raw"])
    try:
        return best(lambda: (sl[0], sl[1], sl[2], sl[3]), 20000) / 4
    finally:
        sl.shm.close()
        sl.shm.unlink()


def bench_create_close_unlink(mod):
    def run():
        m = mod.SharedMemory(create=True, size=4096)
        m.close()
        m.unlink()

    run()  # start the tracker outside the measurement
    return best(run, 2000)


def bench_attach(mod):
    m = mod.SharedMemory(create=True, size=4096)
    name = m.name
    try:

        def run():
            a = mod.SharedMemory(name)
            a.close()

        return best(run, 2000)
    finally:
        m.close()
        m.unlink()


CASES = [
    ("ShareableList get+set", bench_list_get_set),
    ("ShareableList get", bench_list_get),
    ("SharedMemory create+close+unlink", bench_create_close_unlink),
    ("SharedMemory attach+close", bench_attach),
]


def main():
    print(f"{'operation':<34} {'stdlib':>12} {'fastmp':>12} {'ratio':>8}")
    for label, fn in CASES:
        s = fn(std)
        f = fn(fast)
        print(f"{label:<34} {s * 1e6:10.2f}us {f * 1e6:10.2f}us {s / f:7.1f}x")


if __name__ == "__main__":
    main()
