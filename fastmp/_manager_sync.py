"""Manager Barrier and Condition served without a round trip (see
_manager_fast).

A SyncManager ``Barrier`` made by a fastmp server on a Unix socket, with
no ``action`` (the stdlib runs it in the server), is one directory
segment (src/oplog.c) whose *cells* (src/oplog_cells.c) hold its state;
every process on the machine -- the server for its remote clients, each
process holding a proxy -- runs threading.Barrier's own algorithm on
them, under the directory's owner lock (a dead holder is taken over):

    cell 0   SEQ: the condition's sequence word: notify_all adds one and
             wakes its sleepers; a waiter reads it under the lock, unlocks
             and sleeps while it is unchanged (one slice at a time, so a
             lost wake-up only costs a slice).  Any process, under the
             lock.
    cell 1   PARTIES, cell 2 TIMEOUT_KIND (0 None, 1 float, 2 int),
             cell 3 TIMEOUT (the bits): written by the server before
             the name is handed out, read-only afterwards.
    cell 4   STATE + 2 (threading's 0 filling, 1 draining, -1
             resetting, -2 broken), under the lock.
    cell 5.. one slot per party: the owner value (pid, start token) of
             the process of a thread inside wait() -- the count is the
             number of taken slots, so no second word can disagree with
             it.  Taken and freed under the lock.

Every change is one store to one cell, so a process killed anywhere
leaves a state threading's algorithm knows.  A waiter killed while the
barrier fills still counts as a party (its server thread would, with the
stdlib's manager) until the barrier is released, reset or broken; from
then on its slot is freed by whoever waits for the barrier to drain, so
a dead process never holds the others up.  A process killed just after
taking the last slot (before releasing the others) is caught by the next
locker, which takes its lock over and releases them.
"""

import struct
import threading
import time

from . import _fastmp
from ._manager_fast import (
    _DIR_BYTES,
    SharedLock,
    SharedRLock,
    _open,
    unlink_segments,
)

__all__ = []

_OpLog = _fastmp._OpLog
_BrokenBarrierError = threading.BrokenBarrierError

SEQ = 0
PARTIES = 1
TIMEOUT_KIND = 2
TIMEOUT = 3
STATE = 4
SLOTS = 5
# Parties a Barrier's directory has slots for; a larger one is served by
# the server.
MAX_PARTIES = (_DIR_BYTES - 64) // 8 - SLOTS

_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2
_MASK32 = 0xFFFFFFFF


def plain_barrier_args(barrier):
    """The (parties, timeout kind, timeout bits) of the new
    threading.Barrier `barrier` when a SharedBarrier can serve it, else
    None (an action runs in the server; odd parties or timeouts keep
    threading's own behaviour)."""
    parties = barrier._parties
    timeout = barrier._timeout
    if barrier._action is not None or type(parties) is not int:
        return None
    if not 1 <= parties <= MAX_PARTIES:
        return None
    if timeout is None:
        return parties, 0, 0
    if type(timeout) is float:
        return parties, 1, struct.unpack("<Q", struct.pack("<d", timeout))[0]
    if type(timeout) is int and 0 <= timeout < 1 << 63:
        return parties, 2, timeout
    return None


class _Directory:
    """A directory segment of a manager object with no log."""

    __slots__ = ("_log", "_names", "_owner", "__weakref__")
    _bytes = _DIR_BYTES

    def _setup(self, names, create):
        self._names = names[:1]
        self._owner = create
        self._log = _OpLog(_open(names[0], create, self._bytes), create)

    def _fresh(self):
        pass

    def _unlink(self):
        unlink_segments(self._names)


class SharedBarrier(_Directory):
    """A manager Barrier (the server's is a threading.Barrier without an
    action): threading.Barrier's algorithm over the cells of a directory
    segment, whichever process runs it."""

    __slots__ = ("_parties", "_timeout")

    def _setup(self, names, create):
        _Directory._setup(self, names, create)
        if not create:
            self._load()

    def _init(self, parties, kind, bits):
        # The server, before the name is handed out.
        log = self._log
        log.cell_set(PARTIES, parties)
        log.cell_set(TIMEOUT_KIND, kind)
        log.cell_set(TIMEOUT, bits)
        log.cell_set(STATE, _FILLING + 2)
        self._load()

    def _load(self):
        log = self._log
        self._parties = log.cell(PARTIES)
        kind = log.cell(TIMEOUT_KIND)
        bits = log.cell(TIMEOUT)
        if kind == 1:
            self._timeout = struct.unpack("<d", struct.pack("<Q", bits))[0]
        elif kind == 2:
            self._timeout = bits
        else:
            self._timeout = None
        if not 1 <= self._parties <= MAX_PARTIES:
            raise ValueError("not a fastmp manager Barrier")

    # -- the lock and the condition (lock held unless said) -----------

    def _lock(self):
        if self._log.lock():
            self._repair()

    def _relock(self):
        # Take the lock back after a wait, whatever happens meanwhile
        # (threading's Condition.wait does the same): the caller's
        # cleanup runs with it held.
        err = None
        while True:
            try:
                taken_over = self._log.lock()
                break
            except BaseException as e:  # noqa: BLE001
                if err is None:
                    err = e
        if taken_over:
            self._repair()
        if err is not None:
            raise err

    def _repair(self):
        # The lock was taken over from a process that died holding it:
        # it may have taken the last slot without releasing the others.
        if self._state() == _FILLING and self._count() >= self._parties:
            self._set_state(_DRAINING)
            self._notify_all()

    def _cond_wait(self, timeout):
        """Condition.wait(timeout), but it may also return early (one
        slice): every caller waits for a predicate."""
        log = self._log
        seq = log.cell(SEQ) & _MASK32
        log.unlock()
        try:
            log.cell_wait(SEQ, seq, timeout)
        finally:
            self._relock()

    def _notify_all(self):
        log = self._log
        log.cell_add(SEQ, 1)
        log.cell_wake(SEQ, -1)

    def _state(self):
        return self._log.cell(STATE) - 2

    def _set_state(self, state):
        self._log.cell_set(STATE, state + 2)

    def _count(self):
        cell = self._log.cell
        return sum(
            1 for i in range(SLOTS, SLOTS + self._parties) if cell(i) != 0
        )

    def _take_slot(self):
        log = self._log
        for i in range(SLOTS, SLOTS + self._parties):
            if log.cell(i) == 0:
                log.cell_set(i, log.owner_self())
                return i
        raise AssertionError("manager Barrier: no free slot")

    def _reap(self):
        # Free the slots of dead processes once the barrier no longer
        # fills (their server threads would have left by now).
        log = self._log
        freed = False
        for i in range(SLOTS, SLOTS + self._parties):
            v = log.cell(i)
            if v != 0 and log.owner_dead(v):
                log.cell_set(i, 0)
                freed = True
        if freed:
            self._exit()

    # -- threading.Barrier --------------------------------------------

    def wait(self, timeout=None):
        if timeout is None:
            timeout = self._timeout
        self._lock()
        try:
            self._enter()  # Block while the barrier drains.
            index = self._count()
            slot = self._take_slot()
            try:
                if index + 1 == self._parties:
                    # We release the barrier
                    self._set_state(_DRAINING)
                    self._notify_all()
                else:
                    # We wait until someone releases us
                    self._wait(timeout)
                return index
            finally:
                self._log.cell_set(slot, 0)
                # Wake up any threads waiting for barrier to drain.
                self._exit()
        finally:
            self._log.unlock()

    def _enter(self):
        while self._state() in (_RESETTING, _DRAINING):
            self._cond_wait(None)
            if self._state() in (_RESETTING, _DRAINING):
                self._reap()
        if self._state() < 0:
            raise _BrokenBarrierError

    def _wait(self, timeout):
        # Condition.wait_for(lambda: state != 0, timeout)
        endtime = None
        waittime = timeout
        result = self._state() != _FILLING
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self._cond_wait(waittime)
            result = self._state() != _FILLING
        if not result:
            self._break()
            raise _BrokenBarrierError
        if self._state() < 0:
            raise _BrokenBarrierError

    def _exit(self):
        if self._count() == 0:
            if self._state() in (_RESETTING, _DRAINING):
                self._set_state(_FILLING)
                self._notify_all()

    def _break(self):
        self._set_state(_BROKEN)
        self._notify_all()

    def reset(self):
        self._lock()
        try:
            if self._count() > 0:
                if self._state() in (_FILLING, _BROKEN):
                    self._set_state(_RESETTING)
            else:
                self._set_state(_FILLING)
            self._notify_all()
        finally:
            self._log.unlock()

    def abort(self):
        self._lock()
        try:
            self._break()
        finally:
            self._log.unlock()

    @property
    def parties(self):
        return self._parties

    @property
    def n_waiting(self):
        if self._state() == _FILLING:
            return self._count()
        return 0

    @property
    def broken(self):
        return self._state() == _BROKEN

    def __repr__(self):
        if "__repr__" not in threading.Barrier.__dict__:
            # (Python 3.9 and 3.10: object's repr)
            return "<threading.Barrier object at %#x>" % id(self)
        if self.broken:
            return "<threading.Barrier at %#x: broken>" % id(self)
        return "<threading.Barrier at %#x: waiters=%d/%d>" % (
            id(self),
            self.n_waiting,
            self.parties,
        )

    def __reduce__(self):
        raise TypeError("cannot pickle '_thread.lock' object")


#
# Condition
#
# Its directory (64 KiB, sparse) holds, in its header, the Condition's
# own RLock when it was made without a lock (the RLock container's words,
# src/oplog.c), and in its cells:
#
#   cell 0   LOCK_KIND: 0 its own RLock, 1 a manager Lock, 2 a manager
#            RLock, whose object id is
#   cell 1   LOCK_ID.  Both written by the server before the name is
#            handed out; the lock's segments stay while the Condition
#            does (the server keeps the lock's proxy, as the stdlib's
#            threading.Condition does).
#   cell 2   TICKETS: the last waiter's ticket (an atomic add): waiters
#            are notified in the order they came, as threading's.
#   cell 3   HIGH: the slots ever used (bumped by CAS), what notify scans.
#   cell 4.. three per slot: STATE (FREE, WAITING, NOTIFIED; the futex
#            word its waiter sleeps on), its TICKET and OWNER (the owner
#            value of the waiter's process; 0: the slot is free).  A
#            waiter takes a free slot by a CAS of OWNER, writes TICKET,
#            then STATE; a notifier moves STATE from WAITING to NOTIFIED
#            by CAS and wakes it; a waiter whose time is up moves it
#            back to FREE by CAS (failing: it was notified), then frees
#            OWNER.  A notifier skips, and frees, the slot of a waiter
#            whose process died: it never takes a notification away
#            from a live one.

LOCK_KIND = 0
LOCK_ID = 1
TICKETS = 2
HIGH = 3
SLOT0 = 4
_COND_BYTES = 1 << 16
_FREE, _WAITING, _NOTIFIED = 0, 1, 2
_LOCK_TYPES = {1: SharedLock, 2: SharedRLock}


def condition_lock(server, cond):
    """(lock kind, lock id, lock proxy) of the new threading.Condition
    `cond` made by server from a manager's arguments, when a
    SharedCondition can serve it, else None: its lock is its own RLock,
    or a Lock or RLock proxy of this server served without a round
    trip."""
    from .managers import AcquirerProxy

    lock = cond._lock
    if type(lock) is type(threading.RLock()):
        return 0, 0, None
    if not isinstance(lock, AcquirerProxy):
        return None
    r = lock._r
    token = lock._token
    if token.address != server.address or type(r) not in (
        SharedLock,
        SharedRLock,
    ):
        return None
    return (1 if type(r) is SharedLock else 2), int(token.id, 16), lock


class SharedCondition(_Directory):
    """A manager Condition (the server's is a threading.Condition over
    its own RLock, or over a manager Lock or RLock): threading's
    Condition with its waiters in the slots of a directory segment,
    whichever process runs it."""

    __slots__ = ("_lock", "_lockproxy", "_kind", "_nslots")
    _bytes = _COND_BYTES

    def _setup(self, names, create):
        _Directory._setup(self, names, create)
        self._nslots = (self._bytes - 64) // 8 // 3 - 2
        self._lockproxy = None
        if not create:
            log = self._log
            self._bind(log.cell(LOCK_KIND), log.cell(LOCK_ID), None)

    def _init(self, kind, ident, proxy):
        # The server, before the name is handed out.
        self._log.cell_set(LOCK_KIND, kind)
        self._log.cell_set(LOCK_ID, ident)
        self._bind(kind, ident, proxy)

    def _bind(self, kind, ident, proxy):
        self._kind = kind
        if kind == 0:
            lock = SharedRLock.__new__(SharedRLock)
            lock._log = self._log
            lock._names = self._names
            lock._owner = False
        elif proxy is not None:
            # The server: the lock proxy's own replica, which the proxy
            # (kept here) keeps alive.
            self._lockproxy = proxy
            lock = proxy._r
        elif kind in _LOCK_TYPES:
            digest = self._names[0].split("_")[1]
            cls = _LOCK_TYPES[kind]
            lock = cls.__new__(cls)
            lock._setup(("/fmpm_%s_%x_d" % (digest, ident),), False)
        else:
            raise ValueError("not a fastmp manager Condition")
        self._lock = lock

    # -- the lock -----------------------------------------------------

    def acquire(self, *args):
        return self._lock.acquire(*args)

    def release(self):
        return self._lock.release()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    # A Condition over a manager Lock or RLock holds the lock's proxy in
    # the stdlib's server, which has no _is_owned, _release_save or
    # _acquire_restore: threading.Condition's generic ones serve it (so
    # one over a manager RLock held by the caller is not "owned": its
    # acquire(False) succeeds, as the stdlib's does).

    def _is_owned(self):
        if self._kind == 0:
            return self._lock._log.rlock_state()[2]
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def _release_save(self):
        if self._kind != 0:
            self._lock.release()
            return 1
        log = self._log
        count = log.rlock_state()[1]
        for _ in range(count):
            log.rlock_release()
        return count

    def _acquire_restore(self, count):
        lock = self._lock
        for _ in range(count):
            lock.acquire()

    # -- the waiters --------------------------------------------------

    def _claim(self):
        # A slot for the calling thread, WAITING with the next ticket.
        log = self._log
        me = log.owner_self()
        while True:
            high = log.cell(HIGH)
            for i in range(high):
                owner = SLOT0 + 3 * i + 2
                if log.cell(owner) == 0 and log.cell_cas(owner, 0, me):
                    break
            else:
                if high >= self._nslots:
                    raise RuntimeError(
                        "too many waiters on a manager Condition"
                    )
                log.cell_cas(HIGH, high, high + 1)
                continue
            base = SLOT0 + 3 * i
            log.cell_set(base + 1, log.cell_add(TICKETS, 1))
            log.cell_set(base, _WAITING)
            return base

    def _leave(self, base):
        # Free the slot; was its waiter notified?
        log = self._log
        got = not log.cell_cas(base, _WAITING, _FREE)
        log.cell_set(base, _FREE)
        log.cell_set(base + 2, 0)
        return got

    def _sleep(self, base, timeout):
        log = self._log
        end = None if timeout is None else time.monotonic() + timeout
        remaining = None
        while log.cell(base) == _WAITING:
            if end is not None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
            if not log.cell_wait(base, _WAITING, remaining):
                return

    def _waiting(self):
        log = self._log
        out = []
        for i in range(log.cell(HIGH)):
            base = SLOT0 + 3 * i
            if log.cell(base) == _WAITING:
                out.append((log.cell(base + 1), base))
        return out

    # -- threading.Condition ------------------------------------------

    def wait(self, timeout=None):
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        base = self._claim()
        # (as threading's: a failing release leaves the waiter in place)
        saved = self._release_save()
        try:
            if timeout is None:
                self._sleep(base, None)
            elif timeout > 0:
                self._sleep(base, timeout)
        finally:
            gotit = self._leave(base)
            self._acquire_restore(saved)
        return gotit

    def wait_for(self, predicate, timeout=None):
        from .synchronize import wait_for

        return wait_for(self, predicate, timeout)

    def notify(self, n=1):
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        log = self._log
        me = log.owner_self()
        waiters = sorted(self._waiting())
        i = 0
        while i < len(waiters) and n > 0:
            base = waiters[i][1]
            i += 1
            owner = log.cell(base + 2)
            if owner != me and log.owner_dead(owner):
                # Its process died waiting: the slot goes, the
                # notification goes to the next waiter.
                if log.cell_cas(base, _WAITING, _FREE):
                    log.cell_set(base + 2, 0)
                continue
            if log.cell_cas(base, _WAITING, _NOTIFIED):
                log.cell_wake(base, -1)
                n -= 1

    def notify_all(self):
        self.notify(len(self._waiting()))

    def __repr__(self):
        # (a lock proxy's str() is its referent's repr)
        return "<Condition(%r, %d)>" % (self._lock, len(self._waiting()))

    def __reduce__(self):
        # What '#GETVALUE' sends: threading.Condition's pickle, which has
        # its lock (a proxy pickles; threading's RLock does not) and no
        # waiter.
        if self._lockproxy is None:
            raise TypeError("cannot pickle '_thread.RLock' object")
        return threading.Condition, (self._lockproxy,)


# Argument errors name threading's methods, as the server's do.
for _name in ("wait", "reset", "abort"):
    getattr(SharedBarrier, _name).__qualname__ = "Barrier." + _name
for _name in ("wait", "wait_for", "notify", "notify_all"):
    getattr(SharedCondition, _name).__qualname__ = "Condition." + _name
