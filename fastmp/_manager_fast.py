"""Manager containers served without a round trip: replicated referents.

A SyncManager ``dict``, ``list``, ``Namespace`` or ``Value`` made by a
fastmp server is a *replicated referent*: the server creates, per
container, a shared operation log (``_fastmp._OpLog``, src/oplog.c) in two
named segments, and every process that uses the container -- the server
itself, for remote clients, and each process holding a proxy on the same
machine -- keeps a local replica (a real dict or list whose values are
kept pickled, so every read returns a fresh copy as the stdlib's round
trip does) and its position in the log.

* A mutation takes the log's owner lock (a dead holder is taken over),
  replays the entries it has not seen, applies the operation to its
  replica, appends the operation's pickled *effect* and publishes the new
  tail with one atomic store -- the commit point: a process killed before
  it leaves nothing visible.
* A read compares the published commit word with its own (one atomic
  load); when equal it reads the replica without the lock, else it takes
  the lock and catches up first.
* Keys are compared by each process's own Python (``1``, ``1.0`` and
  ``True`` are one key; str hashes may differ between processes): only
  operations travel, never hashes or table layouts.
* When the log is full the writer writes a snapshot into the other log
  segment (its size fitted to the data) and publishes it with a new
  generation in the same single store.

The segments' names are derived from the server's address and the
object's id (``segment_names``); the server creates them, registers them
with fastmp's shared-memory tracker (so a server killed by SIGKILL still
has them unlinked) and unlinks them when the object's last reference goes
or the server stops.  A proxy that cannot attach them (a remote client,
another machine, a stdlib server) goes through the server as before.
"""

import hashlib
import os
import queue
import threading
import weakref
from os import getpid

from . import _fastmp

__all__ = []

_dumps = _fastmp._dumps
_loads = _fastmp._loads
_OpLog = _fastmp._OpLog
_shm_open = _fastmp._shm_open
_shm_unlink = _fastmp._shm_unlink
_get_ident = threading.get_ident

_DIR_BYTES = 4096
_LOG_MIN = 1 << 20
_START = 64
_TAIL = (1 << 40) - 1
_GEN_SHIFT = 40
_MODE = 0o600

# Operation codes of log entries: (code, a = pickled arguments, b = a
# pickled value).  Each is an effect, the same in every process.
SET = 1  # a: key; b: value
DEL = 2  # a: key
UPDATE = 3  # a: [(key, value bytes) ...]
CLEAR = 4
SNAP = 5  # a: the whole state (the type's own form); b: a Value's value
APPEND = 6  # b: item
ITEM = 7  # a: index >= 0; b: item
POP = 8  # a: index >= 0
VALUE = 9  # b: value
STRKEY = 0x100  # flag: a is a str key in UTF-8 (not a pickle)


def segment_names(address, ident):
    """The (directory, log 0, log 1) names of container `ident` of the
    server at `address`."""
    digest = hashlib.sha1(repr(address).encode()).hexdigest()[:16]
    base = "/fmpm_%s_%s_" % (digest, ident)
    return base + "d", base + "0", base + "1"


def _open(name, create, size=0):
    return _shm_open(name, create, size, _MODE)


def unlink_segments(names):
    """Remove these segments' names, those already gone or never made
    included (the server, when an object's last reference goes)."""
    for name in names:
        try:
            _shm_unlink(name)
        except OSError:
            pass


def _resize(name, size):
    import _posixshmem

    fd = _posixshmem.shm_open(name, os.O_RDWR, _MODE)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class ViaServer(Exception):
    """Raised by a client replica for a value holding a proxy: the
    operation goes to the server, which keeps that proxy's referent alive
    (as the stdlib's server does)."""


# Bumped by BaseProxy.__reduce__: a value that pickled a proxy.
proxies_pickled = [0]


class _Replica:
    """The replicated state of one container in one process.

    ``_data`` is the replica; ``_state`` the commit word it reflects (-1:
    rebuild from the log's start).  Subclasses give ``_empty()``,
    ``_apply(op, b)`` (an effect, the same in every process) and
    ``_snapshot()`` (an op that rebuilds the whole state)."""

    __slots__ = (
        "_log",
        "_names",
        "_state",
        "_data",
        "_holder",
        "_owner",
        "__weakref__",
    )

    def _setup(self, names, create):
        self._names = names
        self._state = -1
        self._holder = None
        self._data = self._empty()
        self._owner = create
        if create:
            dmap = _open(names[0], True, _DIR_BYTES)
            try:
                log = _OpLog(dmap, True)
                for name in names[1:]:
                    m = _open(name, True, _LOG_MIN)
                    _OpLog(dmap, False).set_log(m, True)
                log.set_log(_open(names[1], False), False)
            except BaseException:
                unlink_segments(names)
                raise
            self._log = log
            log.publish(_START)
            self._state = _START
        else:
            log = _OpLog(_open(names[0], False), False)
            self._log = log

    def _vdump(self, value):
        # A user value, pickled outside the lock (its __reduce__ may do
        # anything).
        n = proxies_pickled[0]
        b = _dumps(value)
        if proxies_pickled[0] != n and not self._owner:
            raise ViaServer
        return b

    # -- the log ------------------------------------------------------

    def _attach_gen(self, gen):
        # The log segment of generation gen (they alternate).
        m = _open(self._names[1 + (gen & 1)], False)
        self._log.set_log(m, False)

    def _sync(self):
        """Bring the replica up to the published state (lock held)."""
        log = self._log
        st = log.state()
        mine = self._state
        if st == mine:
            return
        tail = st & _TAIL
        gen = st >> _GEN_SHIFT
        if mine < 0 or mine >> _GEN_SHIFT != gen:
            self._state = -1
            self._attach_gen(gen)
            self._data = self._empty()
            pos = _START
        else:
            pos = mine & _TAIL
        read = log.read
        apply = self._apply
        try:
            while pos < tail:
                code, a, b, pos = read(pos, tail)
                if code & STRKEY:
                    apply(code ^ STRKEY, a.decode("utf-8", "surrogatepass"), b)
                else:
                    apply(code, _loads(a) if a else None, b)
        except BaseException:
            self._state = -1
            raise
        self._state = st

    def _lock(self):
        if self._holder == _get_ident():
            self._reentered()
        # True: taken over from a dead holder, whose unpublished bytes
        # past the tail nobody reads: nothing to repair.
        self._log.lock()
        self._holder = _get_ident()

    def _reentered(self):
        raise RuntimeError(
            "a manager container was used from inside one of its own "
            "operations (a key's __eq__ or __hash__)"
        )

    def _unlock(self):
        self._holder = None
        self._log.unlock()

    def _fresh(self):
        """Make the replica current for a read."""
        if self._log.state() != self._state:
            self._lock()
            try:
                self._sync()
            finally:
                self._unlock()

    def _commit(self, code, a, b):
        """Log (code, a, b), already applied to the replica, and publish
        it (lock held).  On failure the replica is rebuilt at its next
        use."""
        try:
            st = self._log.commit(self._state, code, a, b)
            if st < 0:
                self._compact(self._state)
            else:
                self._state = st
        except BaseException:
            self._state = -1
            raise

    def _compact(self, st):
        # Write the whole state into the other log segment, sized for it,
        # and switch to it with one store (lock held).
        snap, b = self._snapshot()
        snap = _dumps(snap)
        gen = (st >> _GEN_SHIFT) + 1
        name = self._names[1 + (gen & 1)]
        need = _START + len(snap) + len(b) + 16
        size = _LOG_MIN
        while size < 4 * need:
            size *= 2
        m = _open(name, False)
        if m.size < size or m.size > 4 * size:
            _resize(name, size)
            m = _open(name, False)
        log = self._log
        log.set_log(m, False)
        pos = log.append(_START, SNAP, snap, b)
        if pos < 0:
            raise MemoryError("manager log: snapshot does not fit")
        st = (gen << _GEN_SHIFT) | pos
        log.publish(st)
        self._state = st

    def _mutate(self, code, arg, b=b""):
        """Apply the effect (code, arg, b) and log it."""
        a = _dumps(arg) if arg is not None else b""
        self._lock()
        try:
            self._sync()
            self._apply(code, arg, b)
            self._commit(code, a, b)
        finally:
            self._unlock()

    def _unlink(self):
        """The server: remove the segments' names (mappings stay valid in
        the processes that have them)."""
        unlink_segments(self._names)

    def __reduce__(self):
        # What the server sends for '#GETVALUE' and friends: a copy of
        # the value as the plain type.
        self._fresh()
        return self._plain()


#
# Lock
#


class SharedLock:
    """A manager Lock (the server's is a threading.Lock): the owner word
    of a directory segment, no log.  Any process may release it; a
    holder that died is taken over with AbandonedLockWarning (as with
    fastmp's Lock)."""

    __slots__ = ("_log", "_names", "_owner", "__weakref__")

    def _setup(self, names, create):
        self._names = names
        self._owner = create
        self._log = _OpLog(_open(names[0], create, _DIR_BYTES), create)
        if isinstance(self, SharedSemaphore):
            self._bound = self._log.sem_bound()

    def _fresh(self):
        pass

    def acquire(self, blocking=True, timeout=-1):
        if timeout is None or (timeout != -1 and type(timeout) is not int):
            # threading.Lock's own checks and messages (a fresh lock:
            # valid arguments return at once).
            threading.Lock().acquire(blocking, timeout)
            if timeout is None:
                timeout = -1
        elif timeout != -1:
            threading.Lock().acquire(blocking, timeout)
        return self._log.acquire(blocking, timeout)

    def release(self):
        self._log.release_any()

    def locked(self):
        return self._log.locked()

    def __enter__(self):
        return self._log.acquire(True, -1)

    def __exit__(self, *args):
        self._log.release_any()

    def _unlink(self):
        unlink_segments(self._names[:1])

    def __repr__(self):
        return "<%s %s object at %#x>" % (
            "locked" if self.locked() else "unlocked",
            "_thread.lock",
            id(self),
        )

    def __reduce__(self):
        raise TypeError("cannot pickle '_thread.lock' object")


class SharedEvent(SharedLock):
    """A manager Event (the server's is a threading.Event): a flag word
    in a directory segment, waited on with a futex."""

    __slots__ = ()

    def is_set(self):
        return self._log.event_is_set()

    def set(self):
        self._log.event_set()

    def clear(self):
        self._log.event_clear()

    def wait(self, timeout=None):
        if timeout is not None and type(timeout) not in (int, float):
            if self._log.event_is_set():
                return True
            # threading's own error for such a timeout, if it has one.
            threading.Event().wait(timeout)
        return self._log.event_wait(timeout)

    def __repr__(self):
        e = threading.Event()
        if self.is_set():
            e.set()
        return repr(e)

    def __reduce__(self):
        return _event, (self.is_set(),)


def _event(flag):
    e = threading.Event()
    if flag:
        e.set()
    return e


class SharedRLock(SharedLock):
    """A manager RLock (the server's is a threading.RLock, owned by the
    server thread of the caller's connection, i.e. by the calling thread):
    the owner word of a directory segment names the holding process, the
    header its thread and the recursion count."""

    __slots__ = ()

    def acquire(self, blocking=True, timeout=-1):
        if timeout is None or timeout != -1:
            # threading.RLock's own checks and messages (a fresh lock:
            # valid arguments return at once).
            probe = threading.RLock()
            probe.acquire(blocking, timeout)
            if timeout is None:
                timeout = -1
        return self._log.rlock_acquire(blocking, timeout)

    def release(self):
        self._log.rlock_release()

    def __enter__(self):
        return self._log.rlock_acquire(True, -1)

    def __exit__(self, *args):
        self._log.rlock_release()

    def __repr__(self):
        held, count, _mine = self._log.rlock_state()
        return "<%s _thread.RLock object owner=%d count=%d at %#x>" % (
            "locked" if held else "unlocked",
            0,
            count,
            id(self),
        )

    def __reduce__(self):
        raise TypeError("cannot pickle '_thread.RLock' object")


class SharedSemaphore(SharedLock):
    """A manager Semaphore or BoundedSemaphore (the server's are
    threading's): a value word in a directory segment.  As threading's,
    a unit taken by a process that dies is not given back."""

    __slots__ = ("_bound",)

    def acquire(self, blocking=True, timeout=None):
        if timeout is not None:
            if not blocking:
                raise ValueError(
                    "can't specify timeout for non-blocking acquire"
                )
            if type(timeout) not in (int, float):
                if self._log.sem_acquire(False, None):
                    return True
                threading.Semaphore(0).acquire(blocking, timeout)
        return self._log.sem_acquire(blocking, timeout)

    def release(self):
        self._log.sem_release()

    def __enter__(self):
        return self._log.sem_acquire(True, None)

    def __exit__(self, *args):
        self._log.sem_release()

    def _plain_object(self):
        value = self._log.sem_value()
        if self._bound:
            sem = threading.BoundedSemaphore(self._bound)
            for _ in range(self._bound - value):
                sem.acquire(False)
        else:
            sem = threading.Semaphore(value)
        return sem

    def __repr__(self):
        return repr(self._plain_object())

    def __reduce__(self):
        raise TypeError("cannot pickle a manager's semaphore")


# typeid -> replica class, for the SyncManager types served this way
# (filled at first use: the containers' module builds on this one).
_REPLICATED = {}


def replicated_types():
    """The typeid -> replica class table."""
    if not _REPLICATED:
        from . import _manager_containers as c
        from . import _manager_queue, _manager_sync

        _REPLICATED.update(
            {
                "dict": c.SharedDict,
                "list": c.SharedList,
                "Namespace": c.SharedNamespaceState,
                "Value": c.SharedValue,
                "set": c.SharedSet,
                "Array": c.SharedArray,
                "Lock": SharedLock,
                "RLock": SharedRLock,
                "Event": SharedEvent,
                "Semaphore": SharedSemaphore,
                "BoundedSemaphore": SharedSemaphore,
                "Barrier": _manager_sync.SharedBarrier,
                "Condition": _manager_sync.SharedCondition,
                "Queue": _manager_queue.SharedQueue,
                "JoinableQueue": _manager_queue.SharedQueue,
            }
        )
    return _REPLICATED


def replicated(address, typeid, registration):
    """Is typeid, registered as registration (callable, exposed,
    method_to_typeid, proxytype), a SyncManager container served this
    way by the server at address?  Only the SyncManager's own
    registrations are, and only on a server listening on a Unix socket
    (its clients are on this machine): a custom type, another callable
    under the same typeid, or a TCP server's objects go through the
    server."""
    from . import managers

    if not isinstance(address, (str, bytes)):
        return False
    expected = {
        "dict": (dict, managers.DictProxy),
        "list": (list, managers.ListProxy),
        "Namespace": (managers.Namespace, managers.NamespaceProxy),
        "Value": (managers.Value, managers.ValueProxy),
        "Lock": (threading.Lock, managers.AcquirerProxy),
        "set": (set, managers.SetProxy),
        "Array": (managers.Array, managers.ArrayProxy),
        "Event": (threading.Event, managers.EventProxy),
        "RLock": (threading.RLock, managers.AcquirerProxy),
        "Semaphore": (threading.Semaphore, managers.AcquirerProxy),
        "BoundedSemaphore": (
            threading.BoundedSemaphore,
            managers.AcquirerProxy,
        ),
        "Barrier": (threading.Barrier, managers.BarrierProxy),
        "Condition": (threading.Condition, managers.ConditionProxy),
        "Queue": (queue.Queue, managers.AutoProxy),
        "JoinableQueue": (queue.Queue, managers.AutoProxy),
    }.get(typeid)
    if expected is None:
        return False
    callable, _exposed, _m2t, proxytype = registration
    return callable is expected[0] and proxytype is expected[1]


def server_create(server, typeid, args, kwds):
    """The server's referent for a replicated typeid: (object, replica),
    or (object, None) for one that the server serves (a Barrier with an
    action).  The object's id names its segments."""
    cls = replicated_types()[typeid]
    r = cls.__new__(cls)
    obj = r
    if typeid in ("Barrier", "Condition", "Queue", "JoinableQueue"):
        from . import _manager_queue, _manager_sync

        if typeid == "Barrier":
            plain = threading.Barrier(*args, **kwds)
            init = _manager_sync.plain_barrier_args(plain)
        elif typeid == "Condition":
            plain = threading.Condition(*args, **kwds)
            init = _manager_sync.condition_lock(server, plain)
        else:
            plain = queue.Queue(*args, **kwds)
            init = _manager_queue.plain_queue_args(plain)
        if init is None:
            # (no name of this id may stay from a killed server: a proxy
            # would attach to it)
            ident = "%x" % id(plain)
            unlink_segments(segment_names(server.address, ident)[:1])
            return plain, None
        op = None
    elif typeid == "dict":
        initial = [(k, _dumps(v)) for k, v in dict(*args, **kwds).items()]
        op = (UPDATE, initial, b"")
    elif typeid == "list":
        op = (SNAP, [_dumps(v) for v in list(*args, **kwds)], b"")
    elif typeid == "Namespace":
        from .managers import Namespace

        ns = Namespace(*args, **kwds)
        op = (UPDATE, [(k, _dumps(v)) for k, v in vars(ns).items()], b"")
        from ._manager_containers import ServedNamespace

        obj = ServedNamespace(r)
    elif typeid == "Array":
        from .managers import Array

        arr = Array(*args, **kwds)
        op = (SNAP, (arr.typecode, arr.tobytes()), b"")
    elif typeid == "set":
        op = (SNAP, list(set(*args, **kwds)), b"")
    elif typeid in ("Lock", "RLock", "Event"):
        getattr(threading, typeid)(*args, **kwds)  # (its argument errors)
        op = None
    elif typeid in ("Semaphore", "BoundedSemaphore"):
        sem = getattr(threading, typeid)(*args, **kwds)
        bound = sem._initial_value if typeid == "BoundedSemaphore" else 0
        if sem._value > 0x7FFFFFFF:
            raise OverflowError("semaphore value too large")
        op = None
    else:
        from .managers import Value

        v = Value(*args, **kwds)
        op = (SNAP, v._typecode, _dumps(v._value))
    ident = "%x" % id(obj)
    names = segment_names(server.address, ident)
    # Left by a server killed before it could unlink (same address and
    # id): not ours to keep.
    unlink_segments(names)
    r._setup(names, True)
    _all.add(r)
    try:
        if op is not None:
            r._mutate(*op)
        else:
            names = names[:1]
            if isinstance(r, SharedSemaphore):
                r._bound = bound
                r._log.sem_init(sem._value, bound)
            elif typeid in ("Barrier", "Condition", "Queue", "JoinableQueue"):
                r._init(*init)
        _track(names)
    except BaseException:
        r._unlink()
        raise
    return obj, r


def _track(names):
    from . import shared_memory

    for name in names:
        shared_memory._track(name)


def server_release(r):
    """The server: the container's last reference went."""
    from . import shared_memory

    r._unlink()
    for name in r._names:
        try:
            shared_memory._untrack(name)
        except KeyError:
            pass


# Every replica of this process (weakly), for the fork child's reset.
_all = weakref.WeakSet()


def _after_fork_child():
    # A thread of the parent may have been inside an operation at the
    # fork: its replica may be part-way (rebuilt at the next use), and
    # its holder's thread id means nothing here.
    for r in list(_all):
        if getattr(r, "_holder", None) is not None:
            r._holder = None
            r._state = -1


os.register_at_fork(after_in_child=_after_fork_child)

# (address, id) -> replica, per process: proxies of one container share
# one replica.
_replicas = {}
_replicas_pid = None
_replicas_mutex = threading.Lock()


def attach(token):
    """The replica of the container named by token, or None when it is
    not served this way here (remote server, stdlib server, other
    type)."""
    global _replicas_pid
    cls = replicated_types().get(token.typeid)
    if cls is None:
        return None
    if not isinstance(token.address, (str, bytes)):
        # A TCP manager: its clients may be anywhere; they all go
        # through the server (one path for all of them).
        return None
    key = (token.address, token.id)
    with _replicas_mutex:
        if _replicas_pid != getpid():
            _replicas.clear()
            _replicas_pid = getpid()
        ref = _replicas.get(key)
        r = ref() if ref is not None else None
        if r is not None:
            return r
        try:
            names = segment_names(token.address, token.id)
            r = cls.__new__(cls)
            r._setup(names, False)
            r._fresh()
        except (OSError, ValueError):
            return None
        _all.add(r)
        _replicas[key] = weakref.ref(r, lambda _r, key=key: _forget(key))
        return r


def _forget(key):
    ref = _replicas.get(key)
    if ref is not None and ref() is None:
        _replicas.pop(key, None)
