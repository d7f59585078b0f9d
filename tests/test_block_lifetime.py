"""Shared blocks live exactly as long as some live process can use them.

A child's exit must not free what its own threads still use, and a process
that ends any way at all (os._exit, exec, SIGTERM, SIGKILL, a Pool's
terminate) must not pin shared memory forever.
"""

import os
import signal
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def _shmem():
    """The shared memory this process and its descendants hold: the
    resident bytes of every memfd or /dev/shm file they have open or
    mapped, each file once.  (Not /proc/meminfo's Shmem: that is the
    whole machine's, moved by every other program running.)"""
    import psutil

    seen, total = set(), 0
    pids = [os.getpid()] + [
        c.pid for c in psutil.Process().children(recursive=True)
    ]
    for pid in pids:
        for where in ("fd", "map_files"):
            d = "/proc/%d/%s" % (pid, where)
            try:
                names = os.listdir(d)
            except OSError:  # (ended meanwhile)
                continue
            for name in names:
                path = os.path.join(d, name)
                try:
                    target = os.readlink(path)
                    if not target.startswith(("/memfd:", "/dev/shm/")):
                        continue
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += st.st_blocks * 512
    return total


def _shmem_grown(start, limit):
    """How much the shared memory of this process tree grew since
    `start`; processes still ending are given a couple of seconds."""
    grown = _shmem() - start
    for _ in range(10):
        if grown < limit:
            break
        time.sleep(0.2)
        grown = min(grown, _shmem() - start)
    return grown


# ---- children (module level for spawn/forkserver) ----


def _writer_thread(objs, stop_at):
    while time.monotonic() < stop_at:
        for o in objs:
            o.value = 7


def _locker_thread(locks, stop_at):
    while time.monotonic() < stop_at:
        for lk in locks:
            lk.acquire()
            lk.release()


def _child_threads_outlive_target(ctx, kind, daemon, returned):
    stop_at = time.monotonic() + 1.0
    if kind == "value":
        objs = [ctx.Value("i", 7, lock=False) for _ in range(64)]
        t = threading.Thread(
            target=_writer_thread, args=(objs, stop_at), daemon=daemon
        )
    else:
        objs = [ctx.Lock() for _ in range(64)]
        t = threading.Thread(
            target=_locker_thread, args=(objs, stop_at), daemon=daemon
        )
    t.start()
    if daemon:
        # A daemon thread runs until the process ends: keep the process
        # alive past its exit handlers with an ordinary thread.
        threading.Thread(target=time.sleep, args=(1.0,)).start()
    returned.set()


@pytest.mark.parametrize("kind", ["value", "lock"])
@pytest.mark.parametrize("daemon", [False, True], ids=["thread", "daemon"])
def test_child_threads_outlive_target(ctx, kind, daemon):
    returned = ctx.Event()
    p = ctx.Process(
        target=_child_threads_outlive_target,
        args=(ctx, kind, daemon, returned),
    )
    p.start()
    assert returned.wait(60)
    # The child's target has returned and its exit handlers run while its
    # thread keeps using its objects: nothing of theirs may come back to
    # this process meanwhile.
    time.sleep(0.15)
    if kind == "value":
        mine = [ctx.Value("i", 0, lock=False) for _ in range(64)]
        time.sleep(0.5)
        overwritten = sum(1 for v in mine if v.value != 0)
    else:
        mine = [ctx.Lock() for _ in range(64)]
        for lk in mine:
            assert lk.acquire(False)
        time.sleep(0.5)
        # Each is still held: a second acquire fails.
        overwritten = sum(1 for lk in mine if lk.acquire(False))
    p.join(60)
    assert p.exitcode == 0
    assert overwritten == 0


def _exit_way(way):
    if way == "os._exit":
        os._exit(0)
    elif way == "exec":
        os.execv(sys.executable, [sys.executable, "-c", "pass"])
    elif way == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    elif way == "SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)


def _hold_and_end(objs, way):
    # Touch every object, so the child really uses them, then end.
    for o in objs:
        o[0] = 1
    _exit_way(way)


WAYS = ["os._exit", "exec", "SIGKILL", "SIGTERM"]


@pytest.mark.parametrize("way", WAYS)
def test_small_blocks_not_pinned_by_dead_child(fctx, way):
    # 32 KiB arrays live in shared pool segments.  A child holding them
    # ends without running any finalizer; once it is joined, the blocks
    # the parent frees must be reused, not pinned.
    from fastmp import _fastmp

    n = 256
    arrs = [fctx.RawArray("b", 32 * 1024) for _ in range(n)]
    for a in arrs:
        a[:] = b"\x01" * len(a)
    before = _fastmp._arena_stats()["resident"]
    for _ in range(3):
        p = fctx.Process(target=_hold_and_end, args=(arrs, way))
        p.start()
        p.join(60)
        assert p.exitcode is not None
        del arrs
        arrs = [fctx.RawArray("b", 32 * 1024) for _ in range(n)]
        for a in arrs:
            a[:] = b"\x01" * len(a)
    grown = _fastmp._arena_stats()["resident"] - before
    assert grown < 2 * MiB, "pinned %d bytes" % grown


def _fork_children_exit(ctx, nchildren, way):
    for _ in range(nchildren):
        p = ctx.Process(target=_exit_way, args=(way,))
        p.start()
        p.join(60)
        assert p.exitcode is not None


@pytest.mark.parametrize("size", [64 * MiB, 8 * MiB], ids=["64MiB", "8MiB"])
def test_os_exit_children_leave_shmem(fctx, size):
    # 200 children end with os._exit while an array is alive; the memory
    # goes back to the system when the array goes.  (Small blocks go back
    # to fastmp's free lists for reuse: test_small_blocks_not_pinned...)
    count = max(1, (64 * MiB) // size)
    start = _shmem()
    for _ in range(2 if fctx.get_start_method() == "fork" else 1):
        arrs = [fctx.RawArray("b", size) for _ in range(count)]
        for a in arrs:
            a[0] = 1
            a[len(a) - 1] = 1
        _fork_children_exit(
            fctx, 200 if fctx.get_start_method() == "fork" else 20, "os._exit"
        )
        del arrs, a
    grown = _shmem_grown(start, 8 * MiB)
    assert grown < 8 * MiB, "shared memory grew by %.1f MiB" % (grown / MiB)


def _square(x):
    return x * x


@pytest.mark.parametrize("size", [64 * MiB, 8 * MiB], ids=["64MiB", "8MiB"])
def test_pool_blocks_leave_shmem(fctx, size):
    # `with Pool(2)` terminates its workers with SIGTERM.
    start = _shmem()
    arr = fctx.RawArray("b", size)
    arr[0] = 1
    arr[len(arr) - 1] = 1
    small = [fctx.Value("i", i) for i in range(100)]
    rounds = 50 if fctx.get_start_method() == "fork" else 8
    for _ in range(rounds):
        with fctx.Pool(2) as pool:
            assert pool.map(_square, range(4)) == [0, 1, 4, 9]
    del arr, small
    grown = _shmem_grown(start, 8 * MiB)
    assert grown < 8 * MiB, "shared memory grew by %.1f MiB" % (grown / MiB)


def _report_value(v, q):
    q.put(v.value)


def test_spawned_child_attaches_and_parent_reuses(fctx):
    # A child that rebuilt objects from its pickle holds them until it
    # ends; then the parent's frees are real.
    from fastmp import _fastmp

    vals = [fctx.Value("i", i) for i in range(50)]
    q = fctx.Queue()
    p = fctx.Process(target=_report_value, args=(vals[7], q))
    p.start()
    assert q.get(timeout=60) == 7
    p.join(60)
    assert p.exitcode == 0
    before = _fastmp._arena_stats()["resident"]
    for _ in range(20):
        del vals
        vals = [fctx.Value("i", i) for i in range(50)]
    assert vals[49].value == 49
    assert _fastmp._arena_stats()["resident"] - before < MiB


# ---- address space --------------------------------------------------------

_LOCKS_AND_VALUES = """
    import %s as mp
    locks = [mp.Lock() for _ in range(200)]
    values = [mp.Value("d", i) for i in range(200)]
    arrays = [mp.Array("i", 1000) for _ in range(20)]
    big = mp.RawArray("b", 32 << 20)
    big[len(big) - 1] = 1
    with locks[7]:
        values[3].value += 1
    assert values[3].value == 4
    print("OK", flush=True)
"""


@pytest.mark.parametrize("impl", ["multiprocessing", "fastmp"])
def test_locks_and_values_under_1gib_address_space(impl):
    from test_queue_durability import _run_child

    r = _run_child(_LOCKS_AND_VALUES % impl, 1 << 30)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


_ARRAY_TOO_BIG = """
    import fastmp
    small = fastmp.Value("i", 5)
    try:
        fastmp.RawArray("b", 2 << 30)
        print("NEVER FAILED")
    except MemoryError as e:
        assert "shared memory" in str(e), repr(e)
    # What exists still works, and smaller objects still fit.
    small.value += 1
    assert small.value == 6 and fastmp.Value("i", 1).value == 1
    print("OK", flush=True)
"""


def test_exhausted_address_space_is_a_clear_memoryerror():
    from test_queue_durability import _run_child

    r = _run_child(_ARRAY_TOO_BIG, 1 << 30)
    assert r.returncode == 0 and r.stdout.strip() == "OK", (r.stdout, r.stderr)


def _hold_until(v, idx, ready, go):
    v[idx] = idx + 1
    ready.release()
    go.wait(120)
    # Untouched although the parent dropped its reference and allocated
    # more: exit code 3 says it was reused under us.
    sys.exit(0 if v[idx] == idx + 1 else 3)


def test_more_holders_than_slots(fctx):
    # A pool segment records 48 holders by slot; more live holders are
    # counted one by one.  Either way nothing is freed while held.
    if fctx.get_start_method() != "fork":
        pytest.skip("fork children share the parent's pool segment")
    from fastmp import _fastmp

    n = 52
    arr = fctx.RawArray("i", n)
    ready, go = fctx.Semaphore(0), fctx.Event()
    procs = [
        fctx.Process(target=_hold_until, args=(arr, i, ready, go))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for _ in range(n):
        assert ready.acquire(timeout=60)
    del arr
    # Freed only if nobody held it: new objects must not land on it.
    fresh = [fctx.RawArray("i", n) for _ in range(20)]
    for f in fresh:
        f[:] = [-1] * n
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(list(f) == [-1] * n for f in fresh)
    _fastmp._arena_sweep()
