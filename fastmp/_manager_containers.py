"""The containers of fastmp._manager_fast: dict, list, set, Array,
Namespace and Value replicas (each a _Replica: its empty state, how an
effect applies, its snapshot, and the type's methods), and the
Namespace referent the server holds.  The log mechanism, the Lock-type
words, the server's and the proxies' side are in fastmp._manager_fast.
"""

import array

from ._manager_fast import (
    APPEND,
    CLEAR,
    DEL,
    ITEM,
    POP,
    SET,
    SNAP,
    STRKEY,
    UPDATE,
    VALUE,
    ViaServer,
    _dumps,
    _get_ident,
    _loads,
    _Replica,
    proxies_pickled,
)

__all__ = []

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
