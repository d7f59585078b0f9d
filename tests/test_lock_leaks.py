"""fastmp-only: creating and dropping many locks leaves no fds, no /dev/shm
entries and no memory growth behind."""

import gc
import os

import pytest

import fastmp

pytestmark = pytest.mark.timeout(120)


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _shm():
    """/dev/shm entries this process maps or holds open.

    (/dev/shm itself is shared with every other process on the machine,
    so its listing is not a per-test measure.)"""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            if "/dev/shm/" in line:
                found.add(line.split("/dev/shm/", 1)[1].strip())
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.add(target)
    return found


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _churn(ctx, n):
    for _i in range(n):
        lock = ctx.Lock()
        lock.acquire()
        lock.release()
        rl = ctx.RLock()
        with rl:
            pass
        sem = ctx.Semaphore(2)
        sem.acquire()
        sem.release()
        del lock, rl, sem
    gc.collect()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ten_thousand_locks_leave_nothing(method):
    ctx = fastmp.get_context(method)
    _churn(ctx, 1000)  # warm up allocator and caches
    fds, shm, rss = _fds(), _shm(), _rss_kib()
    for _ in range(4):
        _churn(ctx, 2500)
    assert _fds() == fds
    assert _shm() <= shm  # nothing new in /dev/shm
    assert _rss_kib() - rss < 2048


def test_conditions_events_barriers_leave_nothing():
    ctx = fastmp.get_context("fork")
    for _ in range(200):
        ctx.Condition(), ctx.Event(), ctx.Barrier(2)
    gc.collect()
    fds, shm, rss = _fds(), _shm(), _rss_kib()
    for _ in range(2000):
        c = ctx.Condition()
        with c:
            c.notify_all()
        e = ctx.Event()
        e.set()
        b = ctx.Barrier(1)
        b.wait()
        del c, e, b
    gc.collect()
    assert _fds() == fds
    assert _shm() <= shm
    assert _rss_kib() - rss < 2048
