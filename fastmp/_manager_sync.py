"""Manager Barrier served without a round trip (see _manager_fast).

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
from ._manager_fast import _DIR_BYTES, _open, _shm_unlink

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

    def _setup(self, names, create):
        self._names = names[:1]
        self._owner = create
        self._log = _OpLog(_open(names[0], create, _DIR_BYTES), create)

    def _fresh(self):
        pass

    def _unlink(self):
        try:
            _shm_unlink(self._names[0])
        except OSError:
            pass


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
        if self.broken:
            return "<threading.Barrier at %#x: broken>" % id(self)
        return "<threading.Barrier at %#x: waiters=%d/%d>" % (
            id(self),
            self.n_waiting,
            self.parties,
        )

    def __reduce__(self):
        raise TypeError("cannot pickle '_thread.lock' object")
