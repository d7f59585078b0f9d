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

import array
import hashlib
import os
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
                for name in names:
                    try:
                        _shm_unlink(name)
                    except OSError:
                        pass
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
        for name in self._names:
            try:
                _shm_unlink(name)
            except OSError:
                pass

    def __reduce__(self):
        # What the server sends for '#GETVALUE' and friends: a copy of
        # the value as the plain type.
        self._fresh()
        return self._plain()


#
# dict
#


class SharedDict(_Replica):
    """A dict; values kept pickled."""

    __slots__ = ()

    def _empty(self):
        return {}

    def _apply(self, code, arg, b):
        data = self._data
        if code == SET:
            data[arg] = b
        elif code == DEL:
            del data[arg]
        elif code == UPDATE:
            for k, v in arg:
                data[k] = v
        elif code == CLEAR:
            data.clear()
        elif code == SNAP:
            self._data = dict(arg)
        else:
            raise ValueError("corrupt manager log operation")

    def _snapshot(self):
        return list(self._data.items()), b""

    def _items(self):
        self._fresh()
        return list(self._data.items())

    def _value(self):
        return {k: _loads(v) for k, v in self._items()}

    def _plain(self):
        return dict, (self._value(),)

    # -- reads --------------------------------------------------------

    def __getitem__(self, key):
        if self._log.state() != self._state:
            self._fresh()
        return _loads(self._data[key])

    def get(self, key, default=None):
        if self._log.state() != self._state:
            self._fresh()
        b = self._data.get(key)
        if b is None:
            return default
        return _loads(b)

    def __contains__(self, key):
        self._fresh()
        return key in self._data

    def __len__(self):
        self._fresh()
        return len(self._data)

    def keys(self):
        return _loads(_dumps(list(self._items_keys())))

    def _items_keys(self):
        self._fresh()
        return list(self._data)

    def values(self):
        return [_loads(v) for _k, v in self._items()]

    def items(self):
        return list(self._value().items())

    def copy(self):
        return self._value()

    def __iter__(self):
        self._fresh()
        return _DictIterator(self, iter(self._data))

    def __reversed__(self):
        self._fresh()
        return _DictIterator(self, reversed(self._data))

    def __or__(self, other):
        return self._value() | other

    def __ror__(self, other):
        return other | self._value()

    def __repr__(self):
        return repr(self._value())

    __str__ = __repr__

    @staticmethod
    def fromkeys(iterable, value=None):
        return dict.fromkeys(iterable, value)

    # -- writes -------------------------------------------------------

    def __setitem__(self, key, value):
        # The hot path, written out: pickle outside the lock (as the
        # stdlib's client pickles its request), lock, catch up, store,
        # commit.
        if type(key) is str:
            a = key.encode("utf-8", "surrogatepass")
            code = SET | STRKEY
        else:
            a = _dumps(key)
            code = SET
        n = proxies_pickled[0]
        vb = _dumps(value)
        if proxies_pickled[0] != n and not self._owner:
            raise ViaServer
        me = _get_ident()
        if self._holder == me:
            self._reentered()
        log = self._log
        log.lock()
        self._holder = me
        try:
            if log.state() != self._state:
                self._sync()
            self._data[key] = vb
            st = log.commit(self._state, code, a, vb)
            if st < 0:
                self._commit(code, a, vb)
            else:
                self._state = st
        except BaseException:
            self._state = -1
            raise
        finally:
            self._holder = None
            log.unlock()

    def __delitem__(self, key):
        a = _dumps(key)
        self._lock()
        try:
            self._sync()
            data = self._data
            del data[key]
            self._commit(DEL, a, b"")
        finally:
            self._unlock()

    def pop(self, key, *default):
        if len(default) > 1:
            raise TypeError(
                "pop expected at most 2 arguments, got %d" % (1 + len(default))
            )
        a = _dumps(key)
        self._lock()
        try:
            self._sync()
            data = self._data
            if key not in data:
                if default:
                    return default[0]
                raise KeyError(key)
            b = data.pop(key)
            self._commit(DEL, a, b"")
        finally:
            self._unlock()
        return _loads(b)

    def popitem(self):
        self._lock()
        try:
            self._sync()
            if not self._data:
                raise KeyError("popitem(): dictionary is empty")
            key, b = self._data.popitem()
            try:
                a = _dumps(key)
            except BaseException:
                self._state = -1
                raise
            self._commit(DEL, a, b"")
        finally:
            self._unlock()
        return _loads(a), _loads(b)

    def setdefault(self, key, default=None):
        db = self._vdump(default)
        a = _dumps(key)
        self._lock()
        try:
            self._sync()
            data = self._data
            b = data.get(key)
            if b is None:
                data[key] = b = db
                self._commit(SET, a, db)
        finally:
            self._unlock()
        return _loads(b)

    def update(self, *args, **kwds):
        # dict.update's own argument handling, on a plain dict first (so
        # errors, ordering and duplicates are dict's).
        tmp = {}
        tmp.update(*args, **kwds)
        self._update(tmp)

    def _update(self, tmp):
        pairs = [(k, self._vdump(v)) for k, v in tmp.items()]
        if not pairs:
            return
        a = _dumps(pairs)
        self._lock()
        try:
            self._sync()
            data = self._data
            try:
                for k, v in pairs:
                    data[k] = v
            except BaseException:
                # (a key's __eq__ raised part-way: rebuild from the log)
                self._state = -1
                raise
            self._commit(UPDATE, a, b"")
        finally:
            self._unlock()

    def __ior__(self, other):
        tmp = {}
        # dict |= accepts what update accepts.
        tmp.update(other)
        self._update(tmp)
        return self

    def clear(self):
        self._mutate(CLEAR, None)


_PLAIN_KEYS = frozenset((str, int, float, bytes, bool, type(None)))


def _key_copy(key):
    # What a round trip returns: a copy (immutable builtins are their own).
    if type(key) in _PLAIN_KEYS:
        return key
    return _loads(_dumps(key))


class _DictIterator:
    """Iteration over a replicated dict's keys, as the server's iterator
    does it: lazily over the live dict, so a change of its size during
    the iteration raises RuntimeError."""

    __slots__ = ("_r", "_data", "_it")

    def __init__(self, r, it):
        self._r = r
        self._data = r._data
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        r = self._r
        r._fresh()
        if r._data is not self._data:
            # (rebuilt from a snapshot: the dict iterated over is gone)
            self._it = iter(())
            raise RuntimeError("dictionary changed size during iteration")
        return _key_copy(next(self._it))


#
# list
#


class SharedList(_Replica):
    """A list; items kept pickled.  Operations whose effect is more than
    an append, an item store or a removal log the whole new list."""

    __slots__ = ()

    def _empty(self):
        return []

    def _apply(self, code, arg, b):
        data = self._data
        if code == APPEND:
            data.append(b)
        elif code == ITEM:
            data[arg] = b
        elif code == POP:
            del data[arg]
        elif code == SNAP:
            self._data = list(arg)
        else:
            raise ValueError("corrupt manager log operation")

    def _snapshot(self):
        return self._data, b""

    def _value(self):
        self._fresh()
        return [_loads(b) for b in list(self._data)]

    def _plain(self):
        return list, (self._value(),)

    def _replace(self, fn):
        # Apply fn to the unpickled list (lock held) and log the result.
        self._lock()
        try:
            self._sync()
            value = [_loads(b) for b in self._data]
            result = fn(value)
            new = [self._vdump(v) for v in value]
            a = _dumps(new)
            self._data = new
            self._commit(SNAP, a, b"")
        finally:
            self._unlock()
        return result

    # -- reads --------------------------------------------------------

    def __getitem__(self, index):
        if self._log.state() != self._state:
            self._fresh()
        if type(index) is int:
            return _loads(self._data[index])
        if isinstance(index, slice):
            return [_loads(b) for b in self._data[index]]
        return _loads(self._data[index])

    def __len__(self):
        self._fresh()
        return len(self._data)

    def __contains__(self, item):
        return item in self._value()

    def count(self, item):
        return self._value().count(item)

    def index(self, item, *args):
        return self._value().index(item, *args)

    def copy(self):
        return self._value()

    def __add__(self, other):
        return self._value() + other

    def __mul__(self, n):
        return self._value() * n

    def __rmul__(self, n):
        return n * self._value()

    def __reversed__(self):
        return iter(self._value()[::-1])

    def __iter__(self):
        return iter(self._value())

    def __repr__(self):
        return repr(self._value())

    __str__ = __repr__

    # -- writes -------------------------------------------------------

    def append(self, item):
        n = proxies_pickled[0]
        b = _dumps(item)
        if proxies_pickled[0] != n and not self._owner:
            raise ViaServer
        me = _get_ident()
        if self._holder == me:
            self._reentered()
        log = self._log
        log.lock()
        self._holder = me
        try:
            if log.state() != self._state:
                self._sync()
            self._data.append(b)
            st = log.commit(self._state, APPEND, b"", b)
            if st < 0:
                self._commit(APPEND, b"", b)
            else:
                self._state = st
        except BaseException:
            self._state = -1
            raise
        finally:
            self._holder = None
            log.unlock()

    def __setitem__(self, index, value):
        if type(index) is not int:
            return self._replace(lambda v: v.__setitem__(index, value))
        b = self._vdump(value)
        self._lock()
        try:
            self._sync()
            data = self._data
            data[index] = b
            if index < 0:
                index += len(data)
            self._commit(ITEM, _dumps(index), b)
        finally:
            self._unlock()

    def __delitem__(self, index):
        if type(index) is not int:
            return self._replace(lambda v: v.__delitem__(index))
        self._lock()
        try:
            self._sync()
            data = self._data
            del data[index]
            if index < 0:
                index += len(data) + 1
            self._commit(POP, _dumps(index), b"")
        finally:
            self._unlock()

    def pop(self, *args):
        if len(args) > 1:
            raise TypeError(
                "pop expected at most 1 argument, got %d" % len(args)
            )
        index = args[0] if args else -1
        if type(index) is not int:
            return self._replace(lambda v: v.pop(index))
        self._lock()
        try:
            self._sync()
            data = self._data
            if not data:
                raise IndexError("pop from empty list")
            b = data.pop(index)
            if index < 0:
                index += len(data) + 1
            self._commit(POP, _dumps(index), b"")
        finally:
            self._unlock()
        return _loads(b)

    def extend(self, items):
        items = list(items)
        return self._replace(lambda v: v.extend(items))

    def insert(self, index, item):
        return self._replace(lambda v: v.insert(index, item))

    def remove(self, item):
        return self._replace(lambda v: v.remove(item))

    def reverse(self):
        return self._replace(lambda v: v.reverse())

    def sort(self, **kwds):
        return self._replace(lambda v: v.sort(**kwds))

    def clear(self):
        return self._replace(lambda v: v.clear())

    def __imul__(self, n):
        self._replace(lambda v: v.__imul__(n))
        return self

    def __iadd__(self, other):
        other = list(other)
        self._replace(lambda v: v.extend(other))
        return self


#
# set
#


def _set_reader(name):
    # set's own method on a copy of the replica; a copy of the result.
    def method(self, *args):
        return _loads(_dumps(getattr(self._value(), name)(*args)))

    method.__name__ = name
    return method


def _set_writer(name):
    def method(self, *args):
        return self._inplace(name, args)

    method.__name__ = name
    return method


class SharedSet(_Replica):
    """A set, kept as the keys of a dict: every replica holds the same
    elements in the same order whatever its hashes (the writer logs the
    order).  add/discard/remove/pop log the element; the other in-place
    operations log the whole new set."""

    __slots__ = ()

    def _empty(self):
        return {}

    def _apply(self, code, arg, b):
        data = self._data
        if code == SET:
            data[arg] = None
        elif code == DEL:
            del data[arg]
        elif code == CLEAR:
            data.clear()
        elif code == SNAP:
            self._data = dict.fromkeys(arg)
        else:
            raise ValueError("corrupt manager log operation")

    def _snapshot(self):
        return list(self._data), b""

    def _value(self):
        self._fresh()
        return set(self._data)

    def _plain(self):
        return set, (list(self._value()),)

    def __len__(self):
        self._fresh()
        return len(self._data)

    def __contains__(self, item):
        self._fresh()
        return item in self._data

    def __iter__(self):
        return iter(_loads(_dumps(list(self._value()))))

    def __repr__(self):
        return repr(self._value())

    __str__ = __repr__

    def add(self, item):
        a = _dumps(item)
        self._lock()
        try:
            self._sync()
            data = self._data
            if item not in data:
                data[item] = None
                self._commit(SET, a, b"")
        finally:
            self._unlock()

    def discard(self, item):
        self._discard(item, False)

    def remove(self, item):
        self._discard(item, True)

    def _discard(self, item, missing_is_error):
        a = _dumps(item)
        self._lock()
        try:
            self._sync()
            data = self._data
            if item in data:
                del data[item]
                self._commit(DEL, a, b"")
            elif missing_is_error:
                raise KeyError(item)
        finally:
            self._unlock()

    def pop(self):
        self._lock()
        try:
            self._sync()
            data = self._data
            if not data:
                raise KeyError("pop from an empty set")
            item = next(iter(data))
            a = _dumps(item)
            del data[item]
            self._commit(DEL, a, b"")
        finally:
            self._unlock()
        return _loads(a)

    def clear(self):
        self._mutate(CLEAR, None)

    def _inplace(self, name, args):
        # set's own method on a copy (its errors, its semantics), then
        # the result as the new state (lock held throughout).
        self._lock()
        try:
            self._sync()
            new = set(self._data)
            result = getattr(new, name)(*args)
            order = [e for e in self._data if e in new]
            order += [e for e in new if e not in self._data]
            a = _dumps(order)
            self._data = dict.fromkeys(order)
            self._commit(SNAP, a, b"")
        finally:
            self._unlock()
        return self if result is new else result

    __and__ = _set_reader("__and__")
    __or__ = _set_reader("__or__")
    __sub__ = _set_reader("__sub__")
    __xor__ = _set_reader("__xor__")
    __rand__ = _set_reader("__rand__")
    __ror__ = _set_reader("__ror__")
    __rsub__ = _set_reader("__rsub__")
    __rxor__ = _set_reader("__rxor__")
    __ge__ = _set_reader("__ge__")
    __gt__ = _set_reader("__gt__")
    __le__ = _set_reader("__le__")
    __lt__ = _set_reader("__lt__")
    copy = _set_reader("copy")
    difference = _set_reader("difference")
    intersection = _set_reader("intersection")
    isdisjoint = _set_reader("isdisjoint")
    issubset = _set_reader("issubset")
    issuperset = _set_reader("issuperset")
    symmetric_difference = _set_reader("symmetric_difference")
    union = _set_reader("union")
    __iand__ = _set_writer("__iand__")
    __ior__ = _set_writer("__ior__")
    __isub__ = _set_writer("__isub__")
    __ixor__ = _set_writer("__ixor__")
    difference_update = _set_writer("difference_update")
    intersection_update = _set_writer("intersection_update")
    symmetric_difference_update = _set_writer("symmetric_difference_update")
    update = _set_writer("update")


#
# Array
#


class SharedArray(_Replica):
    """A manager Array (the server's is an array.array): the replica is
    an array.array (its items are numbers or characters, immutable: no
    pickled copies needed)."""

    __slots__ = ()

    def _empty(self):
        return array.array("b")

    def _apply(self, code, arg, b):
        if code == ITEM:
            self._data[arg[0]] = arg[1]
        elif code == SNAP:
            self._data = array.array(arg[0], arg[1])
        else:
            raise ValueError("corrupt manager log operation")

    def _snapshot(self):
        return (self._data.typecode, self._data.tobytes()), b""

    def _plain(self):
        self._fresh()
        data = self._data
        return array.array, (data.typecode, data.tobytes())

    def __len__(self):
        if self._log.state() != self._state:
            self._fresh()
        return len(self._data)

    def __getitem__(self, index):
        if self._log.state() != self._state:
            self._fresh()
        return self._data[index]

    def __setitem__(self, index, value):
        self._lock()
        try:
            self._sync()
            data = self._data
            if type(index) is int:
                data[index] = value  # (array's own checks)
                if index < 0:
                    index += len(data)
                self._commit(ITEM, _dumps((index, data[index])), b"")
            else:
                new = array.array(data.typecode, data)
                new[index] = value
                a = _dumps((new.typecode, new.tobytes()))
                self._data = new
                self._commit(SNAP, a, b"")
        finally:
            self._unlock()

    def __repr__(self):
        self._fresh()
        return repr(self._data)

    __str__ = __repr__


#
# Namespace and Value
#


class SharedNamespaceState(SharedDict):
    """A Namespace's attributes (a SharedDict of names)."""

    __slots__ = ()

    def _plain(self):
        from .managers import Namespace

        return _namespace, (Namespace, self._value())

    def getattr(self, name):
        if self._log.state() != self._state:
            self._fresh()
        try:
            b = self._data[name]
        except (KeyError, TypeError):
            raise AttributeError(
                "'Namespace' object has no attribute %r" % (name,)
            ) from None
        return _loads(b)

    def setattr(self, name, value):
        if not isinstance(name, str):
            raise TypeError(
                "attribute name must be string, not '%s'" % type(name).__name__
            )
        self.__setitem__(name, value)

    def delattr(self, name):
        if not isinstance(name, str):
            raise TypeError(
                "attribute name must be string, not '%s'" % type(name).__name__
            )
        try:
            self.__delitem__(name)
        except KeyError:
            raise AttributeError(
                "'Namespace' object has no attribute %r" % (name,)
            ) from None

    def __repr__(self):
        temp = sorted(
            "%s=%r" % (name, value)
            for name, value in self._value().items()
            if not name.startswith("_")
        )
        return "Namespace(%s)" % ", ".join(temp)

    __str__ = __repr__


def _namespace(cls, attrs):
    ns = cls()
    ns.__dict__.update(attrs)
    return ns


class SharedValue(_Replica):
    """A manager Value: its typecode and its value, pickled."""

    __slots__ = ()

    def _empty(self):
        return [None, _dumps(None)]

    def _apply(self, code, arg, b):
        if code == VALUE:
            self._data[1] = b
        elif code == SNAP:
            self._data = [arg, b]
        else:
            raise ValueError("corrupt manager log operation")

    def _snapshot(self):
        return self._data[0], self._data[1]

    def get(self):
        if self._log.state() != self._state:
            self._fresh()
        return _loads(self._data[1])

    def set(self, value):
        b = self._vdump(value)
        self._lock()
        try:
            if self._log.state() != self._state:
                self._sync()
            self._data[1] = b
            self._commit(VALUE, b"", b)
        finally:
            self._unlock()

    value = property(get, set)

    def _plain(self):
        from .managers import Value

        self._fresh()
        return Value, (self._data[0], _loads(self._data[1]))

    def __repr__(self):
        self._fresh()
        return "Value(%r, %r)" % (self._data[0], _loads(self._data[1]))


#
# The referents the server holds, and the proxies' side
#


class ServedNamespace:
    """The server's referent of a Namespace: attribute access goes to the
    replicated state (the proxy's __getattribute__ calls land here)."""

    def __init__(self, state):
        object.__setattr__(self, "_fastmp_r", state)

    def __getattribute__(self, name):
        if name.startswith("__") or name.startswith("_fastmp"):
            return object.__getattribute__(self, name)
        return object.__getattribute__(self, "_fastmp_r").getattr(name)

    def __setattr__(self, name, value):
        object.__getattribute__(self, "_fastmp_r").setattr(name, value)

    def __delattr__(self, name):
        object.__getattribute__(self, "_fastmp_r").delattr(name)

    def __repr__(self):
        return repr(object.__getattribute__(self, "_fastmp_r"))

    def __reduce__(self):
        return object.__getattribute__(self, "_fastmp_r").__reduce__()


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
        try:
            _shm_unlink(self._names[0])
        except OSError:
            pass

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


# typeid -> replica class, for the SyncManager types served this way.
REPLICATED = {
    "dict": SharedDict,
    "list": SharedList,
    "Namespace": SharedNamespaceState,
    "Value": SharedValue,
    "Lock": SharedLock,
    "set": SharedSet,
    "Array": SharedArray,
    "Event": SharedEvent,
    "RLock": SharedRLock,
    "Semaphore": SharedSemaphore,
    "BoundedSemaphore": SharedSemaphore,
}


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
    }.get(typeid)
    if expected is None:
        return False
    callable, _exposed, _m2t, proxytype = registration
    return callable is expected[0] and proxytype is expected[1]


def server_create(server, typeid, args, kwds):
    """The server's referent for a replicated typeid: (object, replica).
    The object's id names its segments."""
    cls = REPLICATED[typeid]
    r = cls.__new__(cls)
    obj = r
    if typeid == "dict":
        initial = [(k, _dumps(v)) for k, v in dict(*args, **kwds).items()]
        op = (UPDATE, initial, b"")
    elif typeid == "list":
        op = (SNAP, [_dumps(v) for v in list(*args, **kwds)], b"")
    elif typeid == "Namespace":
        from .managers import Namespace

        ns = Namespace(*args, **kwds)
        op = (UPDATE, [(k, _dumps(v)) for k, v in vars(ns).items()], b"")
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
    for name in names:
        # Left by a server killed before it could unlink (same address
        # and id): not ours to keep.
        try:
            _shm_unlink(name)
        except OSError:
            pass
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
    cls = REPLICATED.get(token.typeid)
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
