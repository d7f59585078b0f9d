"""Parity tests for Lock, RLock, Semaphore, BoundedSemaphore, Condition,
Event and Barrier: every test runs against the stdlib and fastmp under
fork, spawn and forkserver."""

import pickle
import re
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(60)


# ---- helpers run in children (module level for spawn/forkserver) ----


def _count_under_lock(lock, counter, n):
    for _ in range(n):
        with lock:
            v = counter.value
            time.sleep(0)
            counter.value = v + 1


def _hold_sem(sem, inside, peak, guard, release_evt):
    with sem:
        with guard:
            inside.value += 1
            peak.value = max(peak.value, inside.value)
        release_evt.wait(60)
        with guard:
            inside.value -= 1


def _cond_waiter(cond, ready, woken):
    with cond:
        ready.release()
        if cond.wait(10):
            woken.release()


def _event_setter(evt, delay):
    time.sleep(delay)
    evt.set()


def _barrier_party(barrier, out):
    try:
        i = barrier.wait(10)
        out.put(("ok", i))
    except Exception as e:  # noqa: BLE001 (report any failure to parent)
        out.put(("err", type(e).__name__))


def _release_from_child(sem):
    sem.release()


def _try_acquire(lock, q):
    q.put(lock.acquire(False))


# ---- Lock ----


def test_lock_basic(ctx):
    lock = ctx.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.01) is False
    assert lock.release() is None
    with pytest.raises((ValueError, threading.ThreadError)):
        lock.release()
    with lock:
        assert lock.acquire(False) is False
    assert lock.acquire(block=False) is True
    lock.release()


def test_lock_locked(ctx):
    lock = ctx.Lock()
    if not hasattr(lock, "locked"):
        pytest.skip("locked() arrived in the stdlib in 3.14")
    assert lock.locked() is False
    lock.acquire()
    assert lock.locked() is True
    lock.release()
    assert lock.locked() is False


def test_lock_repr(ctx):
    lock = ctx.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    lock.acquire()
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    lock.release()


def test_rlock_basic_and_repr(ctx):
    lock = ctx.RLock()
    assert repr(lock) == "<RLock(None, 0)>"
    assert lock.acquire() and lock.acquire() and lock.acquire()
    assert repr(lock) == "<RLock(MainProcess, 3)>"
    assert lock._semlock._count() == 3
    assert lock._semlock._is_mine()
    for _ in range(3):
        lock.release()
    assert lock._semlock._count() == 0
    with pytest.raises((AssertionError, RuntimeError)):
        lock.release()
    with lock, lock:
        pass


def test_rlock_release_other_thread(ctx):
    lock = ctx.RLock()
    lock.acquire()
    err = []

    def other():
        try:
            lock.release()
        except AssertionError as e:
            err.append(str(e))
        err.append(lock.acquire(False))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert err == [
        "attempt to release recursive lock not owned by thread",
        False,
    ]
    assert "SomeOtherThread" not in repr(lock)
    lock.release()


@pytest.mark.parametrize(
    "factory", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"]
)
def test_context_manager_protocol(ctx, factory):
    import contextlib

    make = getattr(ctx, factory)
    # A lock made in the `with` line itself lives until the block ends.
    with make() as entered:
        assert entered is True
    lk = make()
    # Looked up on the type, __enter__/__exit__ take the lock explicitly.
    cls = type(lk)
    assert cls.__enter__(lk) is True
    assert lk._semlock._is_zero()
    assert cls.__exit__(lk, None, None, None) is None
    assert not lk._semlock._is_zero()
    # Bound: the lock is __self__, two bindings compare equal.
    assert lk.__enter__.__self__ is lk
    assert lk.__enter__ == lk.__enter__
    assert lk.__enter__ != lk.__exit__
    assert lk.__enter__() is True
    if sys.version_info >= (3, 10):  # 3.9's takes any arguments
        with pytest.raises(TypeError):
            lk.__exit__(None, None, None, None)
    lk.__exit__()
    with pytest.raises(TypeError):
        lk.__enter__(1)
    # contextlib drives the protocol through the type.
    with contextlib.ExitStack() as stack:
        assert stack.enter_context(lk) is True
        if factory in ("Lock", "BoundedSemaphore"):
            assert lk.acquire(False) is False
    assert lk.acquire(False) is True
    lk.release()
    # An exception in the block releases and propagates.
    with pytest.raises(KeyError):
        with lk:
            raise KeyError("x")
    assert lk.acquire(False) is True
    lk.release()


def test_lock_timeout_honoured(ctx):
    lock = ctx.Lock()
    lock.acquire()
    t0 = time.monotonic()
    assert lock.acquire(True, 0.2) is False
    dt = time.monotonic() - t0
    assert 0.15 <= dt < 2.0
    assert lock.acquire(True, -1) is False  # negative: no wait
    lock.release()


def test_lock_bad_timeout_type(ctx):
    lock = ctx.Lock()
    lock.acquire()
    with pytest.raises(TypeError):
        lock.acquire(True, "x")
    lock.release()


def test_lock_mutual_exclusion(ctx):
    lock = ctx.Lock()
    counter = ctx.RawValue("i", 0) if hasattr(ctx, "RawValue") else None
    ps = [
        ctx.Process(target=_count_under_lock, args=(lock, counter, 200))
        for _ in range(2)
    ]
    for p in ps:
        p.start()
    _count_under_lock(lock, counter, 200)
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    assert counter.value == 600


def test_lock_seen_from_child(ctx):
    lock = ctx.Lock()
    q = ctx.SimpleQueue()
    lock.acquire()
    p = ctx.Process(target=_try_acquire, args=(lock, q))
    p.start()
    assert q.get() is False
    p.join(30)
    lock.release()
    p = ctx.Process(target=_try_acquire, args=(lock, q))
    p.start()
    assert q.get() is True
    p.join(30)


# ---- Semaphore ----


def test_semaphore_basic(ctx):
    sem = ctx.Semaphore(2)
    assert repr(sem) == "<Semaphore(value=2)>"
    assert sem.acquire() and sem.acquire()
    assert sem.get_value() == 0
    assert sem.acquire(False) is False
    assert sem.acquire(timeout=0.05) is False
    sem.release()
    assert sem.get_value() == 1
    sem.release()
    sem.release()  # unbounded: above the initial value is fine
    assert sem.get_value() == 3


def test_bounded_semaphore(ctx):
    sem = ctx.BoundedSemaphore(2)
    assert repr(sem) == "<BoundedSemaphore(value=2, maxvalue=2)>"
    sem.acquire()
    sem.release()
    with pytest.raises(
        ValueError, match="semaphore or lock released too many times"
    ):
        sem.release()


def test_semaphore_bad_arguments(ctx):
    with pytest.raises(OSError):
        ctx.Semaphore(-1)
    with pytest.raises(TypeError):
        ctx.Semaphore("a")
    with pytest.raises(TypeError):
        ctx.Semaphore(1.5)


def test_semaphore_released_by_other_process(ctx):
    sem = ctx.Semaphore(0)
    p = ctx.Process(target=_release_from_child, args=(sem,))
    p.start()
    assert sem.acquire(timeout=30) is True
    p.join(30)


def test_semaphore_limits_holders(ctx):
    sem = ctx.Semaphore(2)
    guard = ctx.Lock()
    inside = ctx.RawValue("i", 0)
    peak = ctx.RawValue("i", 0)
    go = ctx.Event()
    ps = [
        ctx.Process(target=_hold_sem, args=(sem, inside, peak, guard, go))
        for _ in range(3)
    ]
    for p in ps:
        p.start()
    # Two holders get in, however slowly the children start; the third
    # stays out while they hold the semaphore.
    deadline = time.monotonic() + 60
    while inside.value < 2:
        assert time.monotonic() < deadline, "two holders never got in"
        time.sleep(0.01)
    time.sleep(0.3)
    assert inside.value == 2
    go.set()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert peak.value == 2
    assert inside.value == 0
    assert sem.get_value() == 2


# ---- Condition ----


def test_condition_repr_and_errors(ctx):
    cond = ctx.Condition()
    assert re.fullmatch(r"<Condition\(<RLock\(None, 0\)>, 0\)>", repr(cond))
    with pytest.raises(AssertionError):
        cond.wait(0.01)
    with pytest.raises(AssertionError):
        cond.notify()
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: 7) == 7
        assert cond.wait_for(lambda: 0, timeout=0.05) == 0


def test_condition_notify_across_processes(ctx):
    cond = ctx.Condition()
    ready = ctx.Semaphore(0)
    woken = ctx.Semaphore(0)
    ps = [
        ctx.Process(target=_cond_waiter, args=(cond, ready, woken))
        for _ in range(2)
    ]
    for p in ps:
        p.start()
    for _ in ps:
        assert ready.acquire(timeout=30)
    with cond:  # both are now inside wait()
        cond.notify()
    assert woken.acquire(timeout=10)
    assert not woken.acquire(timeout=0.1)
    with cond:
        cond.notify_all()
    assert woken.acquire(timeout=10)
    for p in ps:
        p.join(30)
        assert p.exitcode == 0


# ---- Event ----


def test_event(ctx):
    evt = ctx.Event()
    has_repr = type(evt).__repr__ is not object.__repr__  # 3.10+
    assert not has_repr or re.fullmatch(
        r"<Event at 0x[0-9a-f]+ unset>", repr(evt)
    )
    assert evt.is_set() is False
    assert evt.wait(0.05) is False
    evt.set()
    assert evt.is_set() is True
    assert evt.wait() is True
    assert not has_repr or re.fullmatch(
        r"<Event at 0x[0-9a-f]+ set>", repr(evt)
    )
    evt.clear()
    assert evt.wait(0) is False


def test_event_set_by_child(ctx):
    evt = ctx.Event()
    p = ctx.Process(target=_event_setter, args=(evt, 0.1))
    p.start()
    assert evt.wait(30) is True
    p.join(30)


# ---- Barrier ----


def test_barrier_across_processes(ctx):
    barrier = ctx.Barrier(3)
    assert barrier.parties == 3 and barrier.n_waiting == 0
    assert not barrier.broken
    q = ctx.SimpleQueue()
    ps = [
        ctx.Process(target=_barrier_party, args=(barrier, q)) for _ in range(2)
    ]
    for p in ps:
        p.start()
    me = barrier.wait(30)
    got = sorted([q.get(), q.get()])
    for p in ps:
        p.join(30)
    assert sorted([me] + [i for _, i in got]) == [0, 1, 2]
    assert [s for s, _ in got] == ["ok", "ok"]


def test_barrier_action_timeout_abort_reset(ctx):
    hits = []
    barrier = ctx.Barrier(1, action=lambda: hits.append(1))
    assert barrier.wait() == 0
    assert hits == [1]
    b2 = ctx.Barrier(2, timeout=0.05)
    with pytest.raises(threading.BrokenBarrierError):
        b2.wait()
    assert b2.broken
    b2.reset()
    assert not b2.broken
    b2.abort()
    with pytest.raises(threading.BrokenBarrierError):
        b2.wait()
    assert "Barrier" in repr(b2)
    if type(b2).__repr__ is not object.__repr__:  # 3.11+
        assert repr(b2).endswith(": broken>")


def test_barrier_abort_wakes_child(ctx):
    barrier = ctx.Barrier(3)
    q = ctx.SimpleQueue()
    p = ctx.Process(target=_barrier_party, args=(barrier, q))
    p.start()
    deadline = time.monotonic() + 30
    while barrier.n_waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    barrier.abort()
    assert q.get() == ("err", "BrokenBarrierError")
    p.join(30)


# ---- pickling ----


@pytest.mark.parametrize(
    "factory",
    ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event"],
)
def test_pickling_outside_spawning_raises(ctx, factory):
    obj = getattr(ctx, factory)()
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(obj)


def test_get_value_and_is_zero(ctx):
    for obj in (ctx.Semaphore(3), ctx.Lock(), ctx.RLock()):
        sl = obj._semlock
        start = sl._get_value()
        assert not sl._is_zero()
        obj.acquire()
        assert sl._get_value() == start - 1
        obj.release()
    sem = ctx.Semaphore(0)
    assert sem._semlock._is_zero()
    assert sem._semlock.kind == 1 and ctx.RLock()._semlock.kind == 0
    assert ctx.Lock()._semlock.maxvalue == 1
    assert ctx.BoundedSemaphore(4)._semlock.maxvalue == 4


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_after_fork_resets_count(ctx):
    lock = ctx.RLock()
    lock.acquire()
    lock._semlock._after_fork()
    assert lock._semlock._count() == 0
    assert not lock._semlock._is_mine()


def test_semlock_attributes(ctx):
    sl = ctx.Lock()._semlock
    assert isinstance(sl.handle, int)
    assert sl.name is None or isinstance(sl.name, str)
    mod = sys.modules[type(ctx.Lock()).__module__]
    assert mod.SEM_VALUE_MAX == 2147483647
    assert ctx.Semaphore(1)._semlock.maxvalue == mod.SEM_VALUE_MAX


def test_locked_everywhere(ctx):
    if not hasattr(ctx.Lock(), "locked"):
        pytest.skip("locked() arrived in the stdlib in 3.14")
    for obj in (
        ctx.Lock(),
        ctx.RLock(),
        ctx.Semaphore(1),
        ctx.BoundedSemaphore(1),
    ):
        assert obj.locked() is False
        obj.acquire()
        assert obj.locked() is True
        obj.release()


# ---- set() then clear() wakes whoever was waiting ----


def _event_waiter(evt, ready, out):
    ready.release()
    out.put(("proc", evt.wait()))


@pytest.mark.timeout(120)
def test_event_set_then_clear_wakes_every_waiter(ctx):
    evt = ctx.Event()
    ready = ctx.Semaphore(0)
    out = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=_event_waiter, args=(evt, ready, out))
        for _ in range(2)
    ]
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(("thread", evt.wait())), daemon=True
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            assert ready.acquire(timeout=60)
        for t in threads:
            t.start()
        # Let every waiter get into wait() (not an assertion on timing: a
        # waiter that arrived late would simply wait for the next set()).
        time.sleep(0.5)
        evt.set()
        evt.clear()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        results += [out.get() for _ in procs]
        assert len(results) == 4
        # Woken by set(): threading.Event says True.  The stdlib's
        # multiprocessing Event reports the flag as it finds it afterwards
        # (False when clear() came first), so only fastmp is held to True.
        assert all(isinstance(r, bool) for _, r in results)
        if "fastmp" in type(evt).__module__:
            assert all(r is True for _, r in results), results
        assert not evt.is_set()
    finally:
        evt.set()  # never leave a waiter behind
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)


# ---- Barrier(0) and negative parties ----


@pytest.mark.parametrize("parties", [0, -1])
def test_barrier_parties_must_be_positive(ctx, parties):
    if "fastmp" in ctx.__module__ or "fastmp" in type(ctx).__module__:
        with pytest.raises(ValueError, match=r"parties must be > 0"):
            ctx.Barrier(parties)
    elif sys.version_info >= (3, 13):
        # What fastmp follows on every version (the stdlib's own
        # multiprocessing.Barrier does not check).
        with pytest.raises(ValueError, match=r"parties must be > 0"):
            threading.Barrier(parties)


# ---- acquire() arguments ----


@pytest.mark.parametrize(
    "factory", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"]
)
def test_acquire_nan_timeout(ctx, factory):
    import errno
    import platform

    nan = float("nan")
    lock = getattr(ctx, factory)()
    # A free lock is taken at once: the timeout never matters.
    assert lock.acquire(timeout=nan) is True
    if factory == "RLock":
        assert lock.acquire(True, nan) is True
        return
    assert lock.acquire(False, nan) is False
    if platform.machine() in ("x86_64", "AMD64"):
        # Waiting on a held one: the stdlib's sem_timedwait rejects the
        # deadline NaN makes (on x86-64; elsewhere it may not).
        with pytest.raises(OSError) as info:
            lock.acquire(True, nan)
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("block", [[], (), 0.0, 1.5, None, "", "x", 2**40])
def test_acquire_block_argument_like_the_stdlib(ctx, block):
    lock = ctx.Lock()
    held = ctx.Lock()
    held.acquire()
    if sys.version_info >= (3, 12):
        # A bool argument: any object, by its truth value.
        assert lock.acquire(block) is True
        assert held.acquire(block=block, timeout=0.01) is False
        lock.release()
    else:
        # An int argument.
        exc = OverflowError if isinstance(block, int) else TypeError
        with pytest.raises(exc):
            lock.acquire(block)
        with pytest.raises(exc):
            held.acquire(block=block)
        assert lock.acquire(False) is True


def _event_pong(ping, pong, n):
    for _ in range(n):
        if not ping.wait(30):
            raise SystemExit(3)
        ping.clear()
        pong.set()


@pytest.mark.timeout(120)
def test_event_handoff_stays_in_step(ctx):
    # Two processes hand a turn back and forth through two events.  A wait
    # must return only for a set() of its own round: a late wake-up from
    # the previous round would put the two out of step (and hang them).
    n = 3000
    ping, pong = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_event_pong, args=(ping, pong, n))
    p.start()
    for i in range(n):
        ping.set()
        assert pong.wait(30), "round %d" % i
        pong.clear()
        assert not pong.is_set()
    p.join(30)
    assert p.exitcode == 0
