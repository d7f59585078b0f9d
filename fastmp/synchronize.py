"""Locks, semaphores, conditions, events and barriers shared by processes.

The stdlib's ``multiprocessing.synchronize`` API on fastmp's C SemLock: the
lock word lives in process-shared memory (an arena block), not in a named
POSIX semaphore, so creating a lock costs microseconds, nothing appears in
/dev/shm and nothing is registered with the resource tracker.

Where fastmp differs: a lock or semaphore held by a process that dies is
handed to the next waiter with a ``fastmp.AbandonedLockWarning`` (see
docs/dead-holders.md) instead of blocking that waiter forever.
"""

import sys
import threading
import time
from multiprocessing import context, process, util

from . import _fastmp

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
]

RECURSIVE_MUTEX = _fastmp.RECURSIVE_MUTEX
SEMAPHORE = _fastmp.SEMAPHORE
SEM_VALUE_MAX = _fastmp.SemLock.SEM_VALUE_MAX
AbandonedLockWarning = _fastmp.AbandonedLockWarning


# A process that ends normally forgets the semaphore units it still holds
# (they are not handed out again after its death; see
# docs/dead-holders.md).  Fork children need the finalizer registered
# again: the stdlib clears the registry when a child starts.
class _ExitHook:
    pass


_exit_hook = _ExitHook()


def _register_forget(_obj=None):
    util.Finalize(None, _fastmp._semlock_forget_all, exitpriority=-50)


_register_forget()
util.register_after_fork(_exit_hook, _register_forget)

# The lock and semaphore types are C types (subtypes of the C SemLock):
# acquire/release and ``with lock:`` run straight in C.  Where the stdlib
# wraps a separate SemLock object in ``_semlock``, here ``_semlock`` is the
# object itself.  A fork child's acquisition count starts at zero (the
# C type checks the pid), so no after-fork hook is needed.
SemLock = _fastmp.SemLock
Lock = _fastmp.Lock
RLock = _fastmp.RLock
Semaphore = _fastmp.Semaphore
BoundedSemaphore = _fastmp.BoundedSemaphore
# Event is a flag on a futex word (set() wakes every waiter directly)
# rather than the stdlib's Condition plus Semaphore.
Event = _fastmp.Event


def _reduce(self):
    context.assert_spawning(self)
    return type(self)._rebuild, self._state()


def _owner_name():
    name = process.current_process().name
    thread = threading.current_thread().name
    if thread != "MainThread":
        name += "|" + thread
    return name


def _repr(self):
    cls = type(self).__name__
    if isinstance(self, Event):
        state = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {state}>"
    sl = self
    if isinstance(self, Semaphore):
        try:
            value = sl._get_value()
        except Exception:  # noqa: BLE001 (a repr never raises)
            value = "unknown"
        if isinstance(self, BoundedSemaphore):
            return f"<{cls}(value={value}, maxvalue={sl.maxvalue})>"
        return f"<{cls}(value={value})>"
    try:
        if sl._is_mine():
            owner, count = _owner_name(), sl._count()
        elif sl._get_value() == 1:
            owner, count = "None", 0
        elif sl._count() > 0:
            owner, count = "SomeOtherThread", "nonzero"
        else:
            owner, count = "SomeOtherProcess", "nonzero"
    except Exception:  # noqa: BLE001 (a repr never raises)
        owner, count = "unknown", "unknown"
    if isinstance(self, RLock):
        return f"<{cls}({owner}, {count})>"
    return f"<{cls}(owner={owner})>"


def _default_ctx(ctx):
    if ctx is None:
        from . import context as _ctx

        ctx = _ctx._default_context.get_context()
    return ctx


def wait_for(cond, predicate, timeout=None):
    """Condition.wait_for on anything with the Condition's wait(timeout)
    (a Condition, or a manager's Condition proxy): wait until predicate()
    is true, or the timeout has passed; return predicate()'s last value."""
    result = predicate()
    if result:
        return result
    endtime = None if timeout is None else time.monotonic() + timeout
    waittime = None
    while not result:
        if endtime is not None:
            waittime = endtime - time.monotonic()
            if waittime <= 0:
                break
        cond.wait(waittime)
        result = predicate()
    return result


class Condition:
    """A condition variable built, as the stdlib's, on three semaphores."""

    def __init__(self, lock=None, *, ctx=None):
        ctx = _default_ctx(ctx)
        self._lock = lock or ctx.RLock()
        self._sleeping_count = ctx.Semaphore(0)
        self._woken_count = ctx.Semaphore(0)
        self._wait_semaphore = ctx.Semaphore(0)
        self._make_methods()

    def __getstate__(self):
        context.assert_spawning(self)
        return (
            self._lock,
            self._sleeping_count,
            self._woken_count,
            self._wait_semaphore,
        )

    def __setstate__(self, state):
        (
            self._lock,
            self._sleeping_count,
            self._woken_count,
            self._wait_semaphore,
        ) = state
        self._make_methods()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def _make_methods(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __repr__(self):
        try:
            waiting = (
                self._sleeping_count._semlock._get_value()
                - self._woken_count._semlock._get_value()
            )
        except Exception:  # noqa: BLE001 (a repr never raises)
            waiting = "unknown"
        return f"<{type(self).__name__}({self._lock}, {waiting})>"

    def wait(self, timeout=None):
        assert self._lock._semlock._is_mine(), (
            "must acquire() condition before using wait()"
        )
        # Announce the sleeper, then let go of the lock entirely.
        self._sleeping_count.release()
        depth = self._lock._semlock._count()
        for _ in range(depth):
            self._lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(depth):
                self._lock.acquire()

    def notify(self, n=1):
        assert self._lock._semlock._is_mine(), "lock is not owned"
        assert not self._wait_semaphore.acquire(False), (
            "notify: Should not have been able to acquire _wait_semaphore"
        )
        # Sleepers that timed out since the last notify have woken
        # without being told: take them off the sleeping count.
        while self._woken_count.acquire(False):
            ok = self._sleeping_count.acquire(False)
            assert ok, (
                "notify: Bug in sleeping_count.acquire"
                "- res should not be False"
            )
        woken = 0
        while woken < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            woken += 1
        if woken:
            for _ in range(woken):
                self._woken_count.acquire()
            # Drop signals nobody took (their sleeper timed out).
            while self._wait_semaphore.acquire(False):
                pass

    def notify_all(self):
        self.notify(n=sys.maxsize)

    def wait_for(self, predicate, timeout=None):
        return wait_for(self, predicate, timeout)


class Barrier(threading.Barrier):
    """threading.Barrier's algorithm over a process-shared Condition.

    The barrier's two shared ints (state, count) live in the shared block
    of the condition's own lock and are only touched under that lock.
    """

    def __init__(self, parties, action=None, timeout=None, *, ctx=None):
        # threading.Barrier checks this from 3.13 on; fastmp does on every
        # version (the stdlib's multiprocessing.Barrier never does).
        if parties < 1:
            raise ValueError("parties must be > 0")
        ctx = _default_ctx(ctx)
        cond = ctx.Condition()
        self.__setstate__((parties, action, timeout, cond))
        self._state = 0
        self._count = 0

    def __setstate__(self, state):
        (self._parties, self._action, self._timeout, self._cond) = state
        self._array = memoryview(self._cond._lock._semlock).cast("i")

    def __getstate__(self):
        return (self._parties, self._action, self._timeout, self._cond)

    @property
    def _state(self):
        return self._array[0]

    @_state.setter
    def _state(self, value):
        self._array[0] = value

    @property
    def _count(self):
        return self._array[1]

    @_count.setter
    def _count(self, value):
        self._array[1] = value
