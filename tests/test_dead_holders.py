"""fastmp-only: a process that dies holding a Lock, RLock or Semaphore does
not hang its peers; a live holder is never robbed; Ctrl-C interrupts a
blocked acquire."""

import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
from support import child_env

import fastmp

pytestmark = pytest.mark.timeout(60)


def _hold(lock, ready, units):
    for _ in range(units):
        lock.acquire()
    ready.set()
    time.sleep(60)


def _take_and_exit(sem, done):
    sem.acquire()
    done.set()


def _start_holder(ctx, lock, units=1):
    ready = ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, ready, units), daemon=True)
    p.start()
    assert ready.wait(30)
    return p


def _assert_nothing_to_take(lock):
    """No unit is free and none is taken over (no AbandonedLockWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastmp.AbandonedLockWarning)
        assert lock.acquire(timeout=0.3) is False


def _acquire_after_kill(ctx, lock, units=1):
    p = _start_holder(ctx, lock, units)
    assert lock.acquire(False) is False
    p.kill()
    p.join(10)
    t0 = time.monotonic()
    with pytest.warns(fastmp.AbandonedLockWarning):
        got = [lock.acquire(timeout=5) for _ in range(units)]
    assert got == [True] * units
    return time.monotonic() - t0


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_killed_mutex_holder(fctx, kind):
    lock = getattr(fctx, kind)()
    elapsed = _acquire_after_kill(fctx, lock)
    assert elapsed <= 1.0
    # The lock now works normally.
    lock.release()
    assert lock.acquire(False) is True
    lock.release()


def test_killed_semaphore_holder(fctx):
    sem = fctx.Semaphore(3)
    assert sem.acquire()  # one unit held here, alive
    elapsed = _acquire_after_kill(fctx, sem, units=2)
    assert elapsed <= 1.0
    assert sem.get_value() == 0
    for _ in range(3):
        sem.release()
    assert sem.get_value() == 3  # nothing invented, nothing lost


def test_killed_waiter_blocked_in_acquire(fctx):
    # The waiter is already asleep when the holder dies.
    lock = fctx.Lock()
    p = _start_holder(fctx, lock)
    killer_delay = 0.3
    t0 = time.monotonic()
    import threading

    threading.Timer(killer_delay, p.kill).start()
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert lock.acquire(timeout=10) is True
    assert time.monotonic() - t0 <= killer_delay + 1.0
    p.join(10)
    lock.release()


def test_live_holder_never_robbed(fctx):
    for lock in (fctx.Lock(), fctx.RLock(), fctx.Semaphore(1)):
        p = _start_holder(fctx, lock)
        _assert_nothing_to_take(lock)
        p.kill()
        p.join(10)


def test_signal_semaphore_no_phantom_units(fctx):
    # Semaphore(0) used as a signal: units made by release() are never
    # "held", so a consumer killed after taking one gives nothing back.
    sem = fctx.Semaphore(0)
    sem.release()
    p = _start_holder(fctx, sem)
    p.kill()
    p.join(10)
    _assert_nothing_to_take(sem)


def test_units_paid_back_by_another_process(fctx):
    # A release in another process pays off the holder's record, so only
    # what the dead process still held comes back.
    sem = fctx.BoundedSemaphore(4)
    p = _start_holder(fctx, sem, units=3)
    sem.release()
    sem.release()
    p.kill()
    p.join(10)
    assert [sem.acquire(False) for _ in range(3)] == [True] * 3
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert sem.acquire(timeout=5) is True
    _assert_nothing_to_take(sem)
    for _ in range(4):
        sem.release()
    with pytest.raises(ValueError):
        sem.release()


def _churn(sem, n):
    for i in range(n):
        sem.acquire()
        # A second unit only if one is free: waiting for it while holding
        # one could deadlock with the other churners.
        if i % 3 == 0 and sem.acquire(False):
            sem.release()
        sem.release()


def test_records_exact_after_churn(fctx):
    # Many processes taking and giving back units at once leave the
    # records exact: a holder killed afterwards gives back exactly what
    # it held.
    sem = fctx.Semaphore(3)
    procs = [fctx.Process(target=_churn, args=(sem, 3000)) for _ in range(3)]
    for q in procs:
        q.start()
    _churn(sem, 3000)
    for q in procs:
        q.join(60)
        assert q.exitcode == 0
    assert sem.get_value() == 3
    p = _start_holder(fctx, sem, units=2)
    p.kill()
    p.join(10)
    assert sem.acquire(False) is True
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert sem.acquire(timeout=5) is True
    assert sem.acquire(timeout=5) is True
    _assert_nothing_to_take(sem)
    for _ in range(3):
        sem.release()
    assert sem.get_value() == 3


def test_normal_exit_units_not_recovered(fctx):
    sem = fctx.Semaphore(1)
    done = fctx.Event()
    p = fctx.Process(target=_take_and_exit, args=(sem, done))
    p.start()
    assert done.wait(30)
    p.join(30)
    assert p.exitcode == 0
    _assert_nothing_to_take(sem)


def test_warning_category():
    assert issubclass(fastmp.AbandonedLockWarning, RuntimeWarning)
    from fastmp import synchronize

    assert synchronize.AbandonedLockWarning is fastmp.AbandonedLockWarning


CHILD = textwrap.dedent("""
    import sys, time
    import fastmp
    lock = fastmp.get_context("fork").Lock()
    lock.acquire()
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        lock.acquire()
    except KeyboardInterrupt:
        print("KI %.3f" % (time.monotonic() - t0), flush=True)
        sys.exit(0)
    print("ACQUIRED", flush=True)
    """)


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "with"])
def test_ctrl_c_interrupts_blocked_acquire(kind):
    code = CHILD
    if kind == "Semaphore":
        code = code.replace("Lock()", "Semaphore(1)")
    elif kind == "RLock":
        # The holder is another thread, so the main thread really blocks.
        code = code.replace(
            "lock.acquire()\nprint(\"READY\"",
            "import threading\n"
            "threading.Thread(target=lock.acquire).start()\n"
            "time.sleep(0.2)\nprint(\"READY\"",
        )
        code = code.replace("Lock()", "RLock()")
    elif kind == "with":
        code = code.replace(
            "    lock.acquire()\nexcept",
            "    with lock:\n        pass\nexcept",
        )
    env = child_env()
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.2)  # let it block in acquire
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline().strip()
        elapsed = time.monotonic() - t0
        assert line.startswith("KI"), line
        assert elapsed < 0.5
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _take_lock_and_exit(lock):
    lock.acquire()


def test_lock_left_held_at_normal_exit_is_recovered(fctx):
    # Documented rule: a one-holder lock whose recorded holder process is
    # gone (killed or ended) is taken over, with the warning.
    lock = fctx.Lock()
    p = fctx.Process(target=_take_lock_and_exit, args=(lock,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    with pytest.warns(fastmp.AbandonedLockWarning):
        assert lock.acquire(timeout=5) is True
    lock.release()
