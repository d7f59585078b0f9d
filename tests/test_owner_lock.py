"""The owner lock never robs a live holder, however long it stalls, and
recovers from a dead one.

Every lock fastmp holds while it changes shared state is the same owner
lock (docs/dead-holders.md).  A test hook makes the next acquisition in a
process stall while holding it: for a while, or by stopping the process
(SIGSTOP).  These tests stall a holder of a Lock, an RLock and the arena's
allocator lock; the queue ring and the ShareableList writer lock have
their own in test_queues.py and test_shareable_list.py.
"""

import os
import signal
import threading
import time
import warnings

import pytest

pytestmark = pytest.mark.timeout(120)


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_stopped(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) == "T":
            return
        time.sleep(0.01)
    raise AssertionError("child %d never stopped" % pid)


# ---- children ----


def _take_and_stall(lock, stall, ready, done):
    from fastmp import _fastmp

    ready.set()
    _fastmp._owner_stall(stall)
    lock.acquire()
    done.value = 1
    lock.release()


def _alloc_and_stall(stall, ready, out):
    import fastmp
    from fastmp import _fastmp

    ready.set()
    _fastmp._owner_stall(stall)
    v = fastmp.RawValue("i", 41)
    v.value += 1
    out.value = v.value


def _stopped_arena_holder(fctx):
    """A fork child stopped while it holds the allocator lock of the pool
    segment it shares with us: (process, its result value)."""
    if fctx.get_start_method() != "fork":
        pytest.skip("only a fork child allocates from the parent's segment")
    import fastmp

    fastmp.RawValue("i", 0)  # the pool segment exists before fork
    ready, out = fctx.Event(), fctx.RawValue("i", 0)
    p = fctx.Process(target=_alloc_and_stall, args=(-1, ready, out))
    p.start()
    assert ready.wait(60)
    _wait_stopped(p.pid)
    return p, out


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_stalled_lock_holder_not_robbed(fctx, kind):
    lock = getattr(fctx, kind)()
    ready, done = fctx.Event(), fctx.Value("i", 0)
    p = fctx.Process(target=_take_and_stall, args=(lock, 0.6, ready, done))
    p.start()
    assert ready.wait(60)
    # Wait for the child to hold the lock, then compete for it.
    deadline = time.monotonic() + 60
    while lock.acquire(False):
        lock.release()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The holder stalls 0.6 s: a waiter must not take it over.
        assert lock.acquire(timeout=30)
    assert done.value == 1
    lock.release()
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_stopped_lock_holder_not_robbed_then_killed(fctx, kind):
    lock = getattr(fctx, kind)()
    ready, done = fctx.Event(), fctx.Value("i", 0)
    p = fctx.Process(target=_take_and_stall, args=(lock, -1, ready, done))
    p.start()
    assert ready.wait(60)
    _wait_stopped(p.pid)
    # Stopped while holding: waiting longer than any liveness check
    # interval must not take it over.
    assert not lock.acquire(timeout=0.5)
    assert done.value == 0
    # Killed while holding: the next waiter takes it over.
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    import fastmp

    with pytest.warns(fastmp.AbandonedLockWarning):
        assert lock.acquire(timeout=10)
    lock.release()


def test_stopped_arena_holder_not_robbed(fctx):
    import fastmp

    p, out = _stopped_arena_holder(fctx)
    made = []
    t = threading.Thread(target=lambda: made.append(fastmp.RawValue("i", 7)))
    t.start()
    t.join(0.5)
    # The child holds the allocator lock while it is stopped: we wait.
    assert t.is_alive()
    os.kill(p.pid, signal.SIGCONT)
    t.join(30)
    assert not t.is_alive()
    p.join(30)
    assert p.exitcode == 0
    assert out.value == 42
    assert made[0].value == 7


def test_killed_arena_holder_recovered(fctx):
    import fastmp

    p, _ = _stopped_arena_holder(fctx)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    made = []
    t = threading.Thread(
        target=lambda: made.append(
            [fastmp.RawValue("i", i) for i in range(100)]
        )
    )
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert [v.value for v in made[0]] == list(range(100))


def test_waiting_for_a_stopped_arena_holder_is_interruptible(fctx):
    import fastmp

    p, out = _stopped_arena_holder(fctx)
    try:
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        prev_alarm = signal.signal(
            signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT)
        )
        try:
            with pytest.raises(KeyboardInterrupt):
                fastmp.RawValue("i", 1)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, prev_alarm)
            signal.signal(signal.SIGINT, old)
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.join(30)
    assert p.exitcode == 0 and out.value == 42
    assert fastmp.RawValue("i", 3).value == 3
