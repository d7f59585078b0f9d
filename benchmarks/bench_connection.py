"""Connection benchmarks: ping-pong and send_bytes throughput, fastmp vs
the stdlib, measured in the same run (medians of several rounds)."""

import multiprocessing
import statistics
import sys
import time

import fastmp

N_PING = 5000


def _echo(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)


def _sink(conn, n):
    for _ in range(n):
        conn.recv_bytes()
    conn.send_bytes(b"done")


def pingpong(mod, method="fork"):
    ctx = mod.get_context(method)
    a, b = ctx.Pipe()
    p = ctx.Process(target=_echo, args=(b,))
    p.start()
    item = (1, "x", 2.0)
    for _ in range(200):
        a.send(item)
        a.recv()
    t = time.perf_counter()
    for _ in range(N_PING):
        a.send(item)
        a.recv()
    dt = (time.perf_counter() - t) / N_PING
    a.send(None)
    p.join()
    return dt


def bulk(mod, size, n, method="fork"):
    ctx = mod.get_context(method)
    a, b = ctx.Pipe()
    p = ctx.Process(target=_sink, args=(b, n + 5))
    p.start()
    buf = b"\0" * size
    for _ in range(5):
        a.send_bytes(buf)
    t = time.perf_counter()
    for _ in range(n):
        a.send_bytes(buf)
    a.recv_bytes()
    dt = (time.perf_counter() - t) / n
    p.join()
    return dt


def med(f, *a, rounds=5):
    return statistics.median(f(*a) for _ in range(rounds))


def main():
    rows = [("Pipe ping-pong, small object", pingpong, ())]
    for size, n in (
        (1024, 20000),
        (65536, 2000),
        (1 << 20, 200),
        (64 << 20, 4),
    ):
        rows.append(("send_bytes %d B" % size, bulk, (size, n)))
    print("| operation | stdlib | fastmp | ratio |")
    print("|---|---:|---:|---:|")
    for name, f, args in rows:
        s = med(f, multiprocessing, *args)
        m = med(f, fastmp, *args)
        print(
            "| %s | %.1f us | %.1f us | %.2fx |"
            % (name, s * 1e6, m * 1e6, s / m)
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
