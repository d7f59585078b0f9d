"""fastmp queues under exits, kills, Ctrl-C and long runs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib

import pytest
from support import TESTS, child_env

import fastmp

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
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED, fctx.get_start_method(), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        assert line.startswith("INTERRUPTED"), (line, proc.stderr.read())
        assert elapsed < 0.5 + 0.5  # 0.5 s goal, plus scheduling slack
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
        maps = {
            line.split(None, 5)[-1].strip()
            for line in f
            if "/dev/shm/" in line
        }
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

    churn(300)  # warm up allocator and caches
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


# ---- address space and volume -------------------------------------------


def _run_child(body, limit_bytes=None, timeout=120):
    """Run `body` in a fresh interpreter, its address space limited to
    `limit_bytes` (RLIMIT_AS, as batch schedulers set it) unless None.
    Returns the CompletedProcess."""
    code = textwrap.dedent(body)
    if limit_bytes is not None and "libasan" in os.environ.get(
        "LD_PRELOAD", ""
    ):
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    if limit_bytes is not None:
        code = (
            textwrap.dedent(
                """
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (%d, %d))
        """
                % (limit_bytes, limit_bytes)
            )
            + code
        )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS,
    )


_FIFTY_QUEUES = """
    import %s as mp
    qs = [mp.Queue() for _ in range(50)]
    for i, q in enumerate(qs):
        q.put(i)
    for i, q in enumerate(qs):
        assert q.get(timeout=30) == i
    print("OK", flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("impl", ["multiprocessing", "fastmp"])
def test_fifty_queues_under_2gib_address_space(impl):
    r = _run_child(_FIFTY_QUEUES % impl, 2 << 30)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


_PUT_UNTIL_NO_MEMORY = """
    import queue
    import fastmp
    q = fastmp.Queue()
    chunk = b"m" * (64 << 20)
    n = 0
    try:
        for _ in range(100):       # 6.4 GiB: more than the limit
            q.put(chunk)
            n += 1
        print("NEVER FAILED")
    except MemoryError as e:
        assert "queue" in str(e), repr(e)
        print("MEMORYERROR", repr(e), flush=True)
    # The queue is intact: everything put before the failure comes out.
    assert n > 0 and q.qsize() == n
    for _ in range(n):
        assert q.get_nowait() == chunk
    try:
        q.get_nowait()
        raise AssertionError("not empty")
    except queue.Empty:
        pass
    q.put("after")
    assert q.get_nowait() == "after"
    print("OK", flush=True)
"""


@pytest.mark.timeout(120)
def test_ring_out_of_address_space_raises_memoryerror():
    r = _run_child(_PUT_UNTIL_NO_MEMORY, 1 << 30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("MEMORYERROR") and lines[-1] == "OK", r.stdout


def _put_many_big(q, n, size):
    chunk = b"v" * size
    for _ in range(n):
        q.put(chunk)


def _rss_shmem_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(180)
def test_unbounded_queue_takes_5gib_without_blocking():
    # 80 items of 64 MiB (5 GiB, more than the old 4 GiB reservation)
    # from a child that exits before anyone reads: put() never blocks.
    ctx = fastmp.get_context("spawn")
    q = ctx.Queue()
    n, size = 80, 64 << 20
    p = ctx.Process(target=_put_many_big, args=(q, n, size))
    p.start()
    p.join(120)
    if p.exitcode is None:
        p.kill()
        p.join()
    assert p.exitcode == 0
    assert q.qsize() == n
    for _ in range(n):
        assert len(q.get_nowait()) == size
    assert q.empty()
    # Drained: the ring shrank back, its pages are given back.
    assert _rss_shmem_kib() < 64 * 1024


# ---- the queue lock is the owner lock ------------------------------------


def _stall_then_put(q, seconds, item, done):
    from fastmp import _fastmp

    _fastmp._owner_stall(seconds)  # the next lock taken here stalls
    q.put(item)
    done.set()


def _put_one(q, item):
    q.put(item)


def _proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _wait_until(pred, limit=30):
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _drain(q):
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except Exception:
            return items


@pytest.mark.timeout(60)
def test_stalled_lock_holder_is_not_robbed(fctx):
    # A holder that sleeps 0.3 s inside the lock (far longer than any
    # liveness slice) is alive: the other putter waits for it.
    q = fctx.Queue()
    done = fctx.Event()
    p = fctx.Process(target=_stall_then_put, args=(q, 0.3, 1, done))
    p.start()
    # Put while the child holds the lock, when that moment is seen.
    _wait_until(lambda: q._lock_owner() == p.pid or done.is_set())
    q.put(2)
    p.join(30)
    assert p.exitcode == 0
    assert q.qsize() == 2
    assert sorted(_drain(q)) == [1, 2]
    assert q.empty()


@pytest.mark.timeout(60)
def test_stopped_lock_holder_is_not_robbed(fctx):
    q = fctx.Queue()
    done = fctx.Event()
    p = fctx.Process(target=_stall_then_put, args=(q, -1, 1, done))
    p.start()
    other = None
    try:
        # The child stops itself (SIGSTOP) holding the lock.
        _wait_until(lambda: _proc_state(p.pid) == "T")
        assert q._lock_owner() == p.pid
        other = fctx.Process(target=_put_one, args=(q, 2))
        other.start()
        time.sleep(0.5)
        # Ten liveness slices later the other putter still waits.
        assert other.is_alive()
        assert q._lock_owner() == p.pid
    finally:
        os.kill(p.pid, signal.SIGCONT)
    p.join(30)
    other.join(30)
    assert p.exitcode == 0 and other.exitcode == 0
    assert q.qsize() == 2
    assert sorted(_drain(q)) == [1, 2]
    assert q.empty()


@pytest.mark.timeout(60)
def test_killed_lock_holder_is_taken_over(fctx):
    q = fctx.Queue()
    q.put("before")
    done = fctx.Event()
    p = fctx.Process(target=_stall_then_put, args=(q, -1, "lost", done))
    p.start()
    try:
        _wait_until(lambda: _proc_state(p.pid) == "T")
        assert q._lock_owner() == p.pid
    finally:
        os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    other = fctx.Process(target=_put_one, args=(q, "after"))
    other.start()
    other.join(10)  # takes the lock over within a few seconds
    assert other.exitcode == 0
    assert q.qsize() == 2 and not q.empty()
    assert q.get(timeout=5) == "before"
    assert q.get(timeout=5) == "after"
    assert q.qsize() == 0 and q.empty()
    assert q._lock_owner() == 0


# ---- waits on one CPU ----------------------------------------------------

_ONE_CPU_GETS = """
    import os, queue, time
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import fastmp
    q = fastmp.Queue()
    for _ in range(200):
        try:
            q.get(timeout=0)
        except queue.Empty:
            pass
    t0 = time.process_time()
    for _ in range(5000):
        try:
            q.get(timeout=0)
        except queue.Empty:
            pass
    print("%.6f" % (time.process_time() - t0), flush=True)
"""


@pytest.mark.timeout(60)
def test_get_does_not_spin_on_one_cpu():
    # On one CPU nobody else can deliver while a waiter spins: a get() that
    # finds the queue empty goes to sleep at once.  5000 of them used to
    # burn 50 us of CPU each (0.25 s); without the spin each is a system
    # call or two.
    r = _run_child(_ONE_CPU_GETS)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 0.125
