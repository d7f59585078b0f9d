"""ctypes objects in process-shared memory, with synchronized wrappers.

The same API as ``multiprocessing.sharedctypes``.  Storage comes from
fastmp's arena, so objects reach children under every start method (by
inheritance under fork, by passing the arena's file descriptor while a
spawn or forkserver child starts).  The synchronized wrappers are C types:
``.value``, indexing and slicing take the lock once each, without a Python
frame.  Integer ``Value`` wrappers also have lock-free atomics: ``add``,
``fetch_add``, ``exchange``, ``compare_exchange``, ``load`` and ``store``
(see docs/sharedctypes.md).
"""

import ctypes
import operator
import weakref
from multiprocessing.context import assert_spawning, reduction

from . import _fastmp

__all__ = ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']

_ForkingPickler = reduction.ForkingPickler

typecode_to_type = {
    'c': ctypes.c_char,
    'u': ctypes.c_wchar,
    'b': ctypes.c_byte,
    'B': ctypes.c_ubyte,
    'h': ctypes.c_short,
    'H': ctypes.c_ushort,
    'i': ctypes.c_int,
    'I': ctypes.c_uint,
    'l': ctypes.c_long,
    'L': ctypes.c_ulong,
    'q': ctypes.c_longlong,
    'Q': ctypes.c_ulonglong,
    'f': ctypes.c_float,
    'd': ctypes.c_double,
}

# Element classes whose values the C wrappers convert themselves (exact
# classes only: subclasses and byte-swapped variants go through ctypes).
_FAST_TYPES = {
    cls: cls._type_
    for cls in (
        ctypes.c_bool,
        ctypes.c_char,
        ctypes.c_byte,
        ctypes.c_ubyte,
        ctypes.c_short,
        ctypes.c_ushort,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_long,
        ctypes.c_ulong,
        ctypes.c_longlong,
        ctypes.c_ulonglong,
        ctypes.c_float,
        ctypes.c_double,
    )
}


_NUMPY_KINDS = {}


def _numpy_kinds(numpy):
    """Element class -> (its dtype, the dtype numpy infers from its Python
    values), for the classes whose values always infer one dtype; others
    (c_char, unsigned 64-bit, structures, subclasses) are converted from
    their list of values."""
    if not _NUMPY_KINDS:
        ints = numpy.array([0]).dtype
        for cls in _FAST_TYPES:
            code = cls._type_
            if code in 'bBhHiIlq' and ctypes.sizeof(cls) <= 8:
                if code not in 'lq' or ctypes.sizeof(cls) == ints.itemsize:
                    _NUMPY_KINDS[cls] = (numpy.dtype(cls), ints)
            elif code in 'fd':
                _NUMPY_KINDS[cls] = (numpy.dtype(cls), numpy.dtype(float))
            elif code == '?':
                _NUMPY_KINDS[cls] = (numpy.dtype(cls), numpy.dtype(bool))
    return _NUMPY_KINDS


def _get_context():
    from .context import _default_context

    return _default_context.get_context()


def _fast_code(obj):
    if isinstance(obj, ctypes.Array):
        return _FAST_TYPES.get(obj._type_)
    return _FAST_TYPES.get(type(obj))


#
# Allocation
#


def _new_value(type_):
    size = ctypes.sizeof(type_)
    block = _fastmp._block_alloc(size)
    return rebuild_ctype(type_, block, None)


def RawValue(typecode_or_type, *args):
    '''
    Returns a ctypes object allocated from shared memory
    '''
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new_value(type_)  # arena memory is already zeroed
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    '''
    Returns a ctypes array allocated from shared memory
    '''
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        type_ = type_ * size_or_initializer
        return _new_value(type_)
    type_ = type_ * len(size_or_initializer)
    result = _new_value(type_)
    result.__init__(*size_or_initializer)
    return result


def Value(typecode_or_type, *args, lock=True, ctx=None):
    '''
    Return a synchronization wrapper for a Value
    '''
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    if lock in (True, None):
        ctx = ctx or _get_context()
        lock = ctx.RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    '''
    Return a synchronization wrapper for a RawArray
    '''
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    if lock in (True, None):
        ctx = ctx or _get_context()
        lock = ctx.RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def copy(obj):
    new_obj = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj, lock=None, ctx=None):
    assert not isinstance(obj, SynchronizedBase), 'object already synchronized'
    ctx = ctx or _get_context()

    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    elif isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    else:
        cls = type(obj)
        try:
            scls = class_cache[cls]
        except KeyError:
            names = [field[0] for field in cls._fields_]
            d = {name: make_property(name) for name in names}
            classname = 'Synchronized' + cls.__name__
            scls = class_cache[cls] = type(classname, (SynchronizedBase,), d)
        return scls(obj, lock, ctx)


#
# Pickling: a ctypes object travels as (type, Block, length); the Block
# travels as (Segment, offset, size) and the Segment as its file
# descriptor, which is only possible while a child is being spawned.
#


def reduce_ctype(obj):
    assert_spawning(obj)
    if isinstance(obj, ctypes.Array):
        return rebuild_ctype, (obj._type_, obj._wrapper, obj._length_)
    return rebuild_ctype, (type(obj), obj._wrapper, None)


def rebuild_ctype(type_, wrapper, length):
    if length is not None:
        type_ = type_ * length
    _ForkingPickler.register(type_, reduce_ctype)
    obj = type_.from_buffer(wrapper.create_memoryview())
    obj._wrapper = wrapper
    return obj


def _reduce_block(block):
    return _fastmp._block_attach, (block.segment, block.offset, block.size)


_ForkingPickler.register(_fastmp.Block, _reduce_block)


#
# Field access for synchronized structures (cold path: a frame per access)
#


def make_property(name):
    try:
        return prop_cache[name]
    except KeyError:

        def fset(self, value):
            self._setfield(name, value)

        prop = property(operator.methodcaller('_getfield', name), fset)
        prop_cache[name] = prop
        return prop


prop_cache = {}
class_cache = weakref.WeakKeyDictionary()


#
# Synchronized wrappers: C types; Python adds construction and pickling.
#


class SynchronizedBase(_fastmp.SynchronizedBase):
    def __init__(self, obj, lock=None, ctx=None):
        if not lock:
            ctx = ctx or _get_context()
            lock = ctx.RLock()
        super().__init__(obj, lock, _fast_code(obj))

    def __reduce__(self):
        assert_spawning(self)
        return synchronized, (self._obj, self._lock)


class Synchronized(SynchronizedBase, _fastmp.Synchronized):
    __doc__ = _fastmp.Synchronized.__doc__


class SynchronizedArray(SynchronizedBase, _fastmp.SynchronizedArray):
    __doc__ = _fastmp.SynchronizedArray.__doc__

    def __array__(self, dtype=None, copy=None):
        """A snapshot for numpy, taken under one acquisition of the lock.

        ``numpy.asarray(arr)`` is a copy, as with multiprocessing (where
        numpy reads the items one by one, each under the lock), with the
        dtype numpy infers from the values.  A view of the shared memory
        that bypasses the lock is ``numpy.frombuffer(arr.get_obj(), ...)``
        or a RawArray.
        """
        if copy is False:
            raise ValueError(
                "Unable to avoid copy while creating an array as requested:"
                " a synchronized array is copied under its lock; use"
                " get_obj() for a view of the shared memory"
            )
        import numpy

        obj = self.get_obj()
        kinds = _numpy_kinds(numpy).get(obj._type_) if dtype is None else None
        with self:
            if kinds is not None:
                return numpy.array(numpy.frombuffer(obj, kinds[0]), kinds[1])
            values = list(obj)
        return numpy.array(values, dtype)


class SynchronizedString(SynchronizedArray, _fastmp.SynchronizedString):
    __doc__ = _fastmp.SynchronizedString.__doc__
