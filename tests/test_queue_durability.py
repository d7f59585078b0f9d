"""fastmp queues under exits, kills, Ctrl-C and long runs."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib

import pytest

import fastmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- children ------------------------------------------------------------

def _put_then_exit(q, n, size):
    for i in range(n):
        q.put((i, bytes([i % 251]) * size))
    os._exit(0)


def _item(seq, size):
    payload = os.urandom(16) * (size // 16)
    return (seq, zlib.crc32(payload), payload)


def _put_forever(q, size, ready):
    seq = 0
    ready.set()
    while True:
        q.put(_item(seq, size))
        seq += 1


def _get_forever(q, ready):
    ready.set()
    while True:
        q.get()


def _check(item):
    seq, crc, payload = item
    assert zlib.crc32(payload) == crc
    return seq


# ---- durability -------------------------------------------------------

@pytest.mark.timeout(120)
def test_child_puts_20mb_and_exits_before_reading(fctx):
    q = fctx.Queue()
    n, size = 20, 1 << 20
    p = fctx.Process(target=_put_then_exit, args=(q, n, size))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.qsize() == n
    for i in range(n):
        seq, data = q.get(timeout=5)
        assert seq == i and data == bytes([i % 251]) * size
    assert q.empty()


@pytest.mark.timeout(120)
def test_sigkill_putters(fctx):
    q = fctx.Queue()
    size = 256 * 1024
    for round_ in range(4):
        ready = fctx.Event()
        p = fctx.Process(target=_put_forever, args=(q, size, ready))
        p.start()
        assert ready.wait(30)
        time.sleep(0.05 + 0.03 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        # Every delivered item is whole, and in order.
        n = q.qsize()
        seqs = [_check(q.get(timeout=10)) for _ in range(n)]
        assert seqs == list(range(len(seqs)))
        assert q.empty()
        # The queue is still usable by everyone else.
        q.put(("after", round_))
        assert q.get(timeout=10) == ("after", round_)


@pytest.mark.timeout(120)
def test_sigkill_getters(fctx):
    q = fctx.Queue()
    size = 256 * 1024
    total = 0
    for round_ in range(4):
        for _ in range(40):
            q.put(_item(total, size))
            total += 1
        ready = fctx.Event()
        p = fctx.Process(target=_get_forever, args=(q, ready))
        p.start()
        assert ready.wait(30)
        time.sleep(0.01 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        # What is left is whole and in order, ending with the last put.
        n = q.qsize()
        seqs = [_check(q.get(timeout=10)) for _ in range(n)]
        assert seqs == list(range(total - n, total))
        q.put("still works")
        assert q.get(timeout=10) == "still works"


# ---- Ctrl-C -----------------------------------------------------------

_BLOCKED = textwrap.dedent("""
    import sys, time
    import fastmp
    ctx = fastmp.get_context(sys.argv[1])
    kind = sys.argv[2]
    q = ctx.JoinableQueue() if kind == "join" else ctx.Queue(1)
    if kind in ("join", "put_full"):
        q.put(1)
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        if kind == "get":
            q.get()
        elif kind == "get_timeout":
            q.get(timeout=60)
        elif kind == "put_full":
            q.put(2)
        else:
            q.join()
    except KeyboardInterrupt:
        print("INTERRUPTED %.3f" % (time.monotonic() - t0), flush=True)
        sys.exit(0)
    print("RETURNED", flush=True)
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["get", "get_timeout", "put_full", "join"])
def test_ctrl_c_in_blocking_call(fctx, kind):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED, fctx.get_start_method(), kind],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        assert line.startswith("INTERRUPTED"), (line, proc.stderr.read())
        assert elapsed < 0.5 + 0.5   # 0.5 s goal, plus scheduling slack
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- leaks ------------------------------------------------------------

def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _shm_entries():
    """fastmp's /dev/shm entries, and this process's mappings of any.

    (/dev/shm is shared with other processes on the machine, so only
    entries that could be ours are counted.)"""
    try:
        names = {n for n in os.listdir("/dev/shm") if "fastmp" in n}
    except FileNotFoundError:
        names = set()
    with open("/proc/self/maps") as f:
        maps = {line.split(None, 5)[-1].strip() for line in f
                if "/dev/shm/" in line}
    return names | maps


@pytest.mark.timeout(120)
def test_create_drop_many_queues():
    ctx = fastmp.get_context()

    def churn(n):
        for i in range(n):
            q = ctx.JoinableQueue() if i % 3 == 0 else ctx.Queue()
            q.put(i)
            assert q.get() == i
            s = ctx.SimpleQueue()
            s.put(b"x" * 100)
            s.get()
            del q, s

    churn(300)               # warm up allocator and caches
    fds = len(os.listdir("/proc/self/fd"))
    shm = _shm_entries()
    rss = _rss_kib()
    churn(3000)
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert _shm_entries() <= shm
    assert _rss_kib() - rss < 20 * 1024


@pytest.mark.timeout(120)
def test_consumed_memory_is_given_back():
    q = fastmp.Queue()
    chunk = b"m" * (1 << 20)
    rss0 = _rss_kib()
    for _ in range(8):
        for _ in range(32):
            q.put(chunk)
        for _ in range(32):
            q.get()
    # 256 MiB went through; far less stays resident.
    assert _rss_kib() - rss0 < 96 * 1024


def _die_holding_lock(q):
    q.put("before")
    q._debug_hold_lock()
    os._exit(0)


@pytest.mark.timeout(60)
def test_lock_holder_dies(fctx):
    q = fctx.Queue()
    p = fctx.Process(target=_die_holding_lock, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    t0 = time.monotonic()
    q.put("after")
    assert time.monotonic() - t0 < 5
    assert q.qsize() == 2
    assert q.get(timeout=5) == "before"
    assert q.get(timeout=5) == "after"
