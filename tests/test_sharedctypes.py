"""Value, Array, RawValue, RawArray: parity with the stdlib, children under
every start method, bad inputs and leaks."""
import ctypes
import gc
import os
import sys

import time

import pytest

from conftest import is_fastmp


class Point(ctypes.Structure):
    _fields_ = [('x', ctypes.c_int), ('y', ctypes.c_double)]


CODES = [
    ('c', b'x', b'y'), ('b', -5, 7), ('B', 200, 3), ('h', -232, 234),
    ('H', 65000, 1), ('i', 4343, -24234), ('I', 4000000000, 5),
    ('l', -2 ** 40, 2 ** 41), ('L', 2 ** 63, 9), ('q', 2 ** 33, -2 ** 34),
    ('Q', 2 ** 64 - 1, 0), ('f', 3.5, -4.25), ('d', 3.625, -4.25),
    ('u', 'a', 'z'),
]


def _set_values(values):
    for sv, (_, _, new) in zip(values, CODES):
        sv.value = new


def _double(x, y, foo, arr, string):
    x.value *= 2
    y.value *= 2
    foo.x *= 2
    foo.y *= 2
    string.value *= 2
    for i in range(len(arr)):
        arr[i] *= 2


def _prefix_sum(seq):
    for i in range(1, len(seq)):
        seq[i] += seq[i - 1]


def _raw_child(rv, ra):
    rv.value = 99
    ra[0] = 1.5
    ra[-1] = -1.5


def _run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize('raw', [False, True], ids=['Value', 'RawValue'])
def test_value_every_typecode_in_child(ctx, raw):
    make = ctx.RawValue if raw else ctx.Value
    values = [make(code, old) for code, old, _ in CODES]
    for sv, (_, old, _) in zip(values, CODES):
        assert sv.value == old
    _run(ctx, _set_values, values)
    for sv, (_, _, new) in zip(values, CODES):
        assert sv.value == new


@pytest.mark.timeout(60)
@pytest.mark.parametrize('lock', [False, True])
def test_sharedctypes_in_child(ctx, lock):
    x = ctx.Value('i', 7, lock=lock)
    y = ctx.Value(ctypes.c_double, 1.0 / 3.0, lock=lock)
    foo = ctx.Value(Point, 3, 2, lock=lock)
    arr = ctx.Array('d', list(range(10)), lock=lock)
    string = ctx.Array('c', 20, lock=lock)
    string.value = b'hello'
    _run(ctx, _double, x, y, foo, arr, string)
    assert x.value == 14
    assert y.value == pytest.approx(2.0 / 3.0)
    assert foo.x == 6
    assert foo.y == pytest.approx(4.0)
    assert [arr[i] for i in range(10)] == [2.0 * i for i in range(10)]
    assert string.value == b'hellohello'


@pytest.mark.timeout(60)
@pytest.mark.parametrize('raw', [False, True], ids=['Array', 'RawArray'])
def test_array_in_child(ctx, raw):
    seq = [680, 626, 934, 821, 150, 233, 548, 982, 714, 831]
    arr = ctx.RawArray('i', seq) if raw else ctx.Array('i', seq)
    assert len(arr) == len(seq)
    assert arr[3] == seq[3]
    assert list(arr[2:7]) == seq[2:7]
    import array
    arr[4:8] = seq[4:8] = array.array('i', [1, 2, 3, 4])
    assert list(arr[:]) == seq
    _prefix_sum(seq)
    _run(ctx, _prefix_sum, arr)
    assert list(arr[:]) == seq


@pytest.mark.timeout(60)
def test_raw_objects_in_child(ctx):
    rv = ctx.RawValue('i', 1)
    ra = ctx.RawArray('d', 4)
    _run(ctx, _raw_child, rv, ra)
    assert rv.value == 99
    assert ra[:] == [1.5, 0.0, 0.0, -1.5]


def test_array_from_size_is_zeroed(ctx):
    for _ in range(3):
        arr = ctx.Array('i', 10)
        assert len(arr) == 10
        assert list(arr) == [0] * 10
        arr[:] = range(10)
        assert list(arr) == list(range(10))
        del arr
    raw = ctx.RawArray('d', 50)
    assert list(raw) == [0.0] * 50


def test_indexing_and_slicing(ctx):
    data = list(range(20))
    arr = ctx.Array('q', data)
    for key in (0, 5, -1, -20):
        assert arr[key] == data[key]
    for sl in (slice(None), slice(2, 9), slice(None, None, 3),
               slice(15, 2, -2), slice(-5, None), slice(30, 40),
               slice(None, None, -1)):
        assert arr[sl] == data[sl]
    arr[::4] = data[::4] = [-1, -2, -3, -4, -5]
    arr[10:2:-3] = data[10:2:-3] = [7, 8, 9]
    arr[-1] = data[-1] = 123
    assert arr[:] == data
    assert list(iter(arr)) == data
    with pytest.raises(IndexError):
        arr[20]
    with pytest.raises(IndexError):
        arr[-21]
    with pytest.raises(IndexError):
        arr[20] = 1
    with pytest.raises(ValueError):
        arr[0:3] = [1, 2]
    with pytest.raises(TypeError):
        arr[0] = 'x'
    with pytest.raises(TypeError):
        arr[0] = 1.5
    with pytest.raises(TypeError):
        arr[0:2] = [1, 'x']
    with pytest.raises(AttributeError):
        del arr[0]
    assert arr[2:] == data[2:]


def test_integer_wrap_like_ctypes(ctx):
    v = ctx.Value('b', 0)
    v.value = 200
    assert v.value == ctypes.c_byte(200).value
    u = ctx.Value('H', 0)
    u.value = -1
    assert u.value == 65535
    a = ctx.Array('B', 3)
    a[0] = 257
    a[1:3] = [-1, 2 ** 70 + 5]
    assert a[:] == [1, 255, 5]


def test_float_and_bool_and_char(ctx):
    d = ctx.Value('d', 1)
    assert d.value == 1.0 and isinstance(d.value, float)
    d.value = 7
    assert d.value == 7.0
    f = ctx.Value('f', 0.1)
    assert f.value == ctypes.c_float(0.1).value
    b = ctx.Value(ctypes.c_bool, 5)
    assert b.value is True
    b.value = 0
    assert b.value is False
    b.value = 'x'
    assert b.value is True
    c = ctx.Value('c', b'a')
    c.value = b'z'
    assert c.value == b'z'
    c.value = 65
    assert c.value == b'A'
    with pytest.raises(TypeError):
        c.value = 'no'
    with pytest.raises(TypeError):
        d.value = 'no'


def test_char_array(ctx):
    s = ctx.Array('c', 10)
    s.value = b'hello'
    assert s.value == b'hello'
    assert s.raw == b'hello' + b'\0' * 5
    assert s[1] == b'e'
    assert s[:3] == b'hel'
    assert s[::2] == b'hlo\0\0'
    s[0:2] = b'HE'
    assert s.value == b'HEllo'
    s.raw = b'0123456789'
    assert s.value == b'0123456789'
    t = ctx.Array(ctypes.c_char, b'abc')
    assert t.value == b'abc'
    w = ctx.Array('u', 'xyz')
    assert w[:] == 'xyz'
    assert w.get_obj().value == 'xyz'


def test_structure(ctx):
    p = ctx.Value(Point, 1, 2.5)
    assert (p.x, p.y) == (1, 2.5)
    p.x = 10
    assert p.get_obj().x == 10
    assert type(p).__name__ == 'SynchronizedPoint'
    with pytest.raises(AttributeError):
        p.nosuchfield
    n = ctx.Value(ctypes.c_char * 4, b'a', b'b')
    assert n.get_obj().value == b'ab'
    assert n.value == b'ab'
    pts = ctx.Array(Point, 3)
    pts[1] = Point(4, 5.0)
    assert pts[1].x == 4 and pts[1].y == 5.0


def test_repr(ctx):
    assert repr(ctx.Value('i', 5)) == '<Synchronized wrapper for c_int(5)>'
    assert repr(ctx.Value('d', 1.5)) == (
        '<Synchronized wrapper for c_double(1.5)>')
    r = repr(ctx.Array('i', 3))
    assert r.startswith('<SynchronizedArray wrapper for <')
    assert 'c_int_Array_3 object at' in r
    assert repr(ctx.Array('c', 2)).startswith(
        '<SynchronizedString wrapper for <')
    assert repr(ctx.RawValue('i', 5)) == 'c_int(5)'


def test_getobj_getlock(ctx):
    v1 = ctx.Value('i', 5)
    assert v1.get_obj().value == 5
    assert hasattr(v1.get_lock(), 'acquire')
    v2 = ctx.Value('i', 5, lock=None)
    assert hasattr(v2.get_lock(), 'acquire')
    lock = ctx.Lock()
    v3 = ctx.Value('i', 5, lock=lock)
    assert v3.get_lock() is lock
    rlock = ctx.RLock()
    a3 = ctx.Array('i', 3, lock=rlock)
    assert a3.get_lock() is rlock
    v4 = ctx.Value('i', 5, lock=False)
    assert not hasattr(v4, 'get_lock')
    assert not hasattr(v4, 'get_obj')
    assert isinstance(v4, ctypes.c_int)
    a4 = ctx.Array('i', range(10), lock=False)
    assert isinstance(a4, ctypes.Array)
    with pytest.raises(AttributeError):
        ctx.Value('i', 5, lock='navalue')
    with pytest.raises(AttributeError):
        ctx.Array('i', range(10), lock='notalock')
    r = ctx.RawValue('i', 5)
    assert not hasattr(r, 'get_lock')


def test_acquire_release_and_with(ctx):
    v = ctx.Value('i', 0)
    assert v.acquire()
    v.value = 1            # recursive lock: the owner may re-enter
    v.release()
    with v:
        v.value += 1
    with v.get_lock():
        v.value += 1
    assert v.value == 3
    assert v.acquire(timeout=1)
    v.release()
    lock = ctx.Lock()
    w = ctx.Value('i', 0, lock=lock)
    assert w.acquire(False)
    assert not lock.acquire(False)
    w.release()
    assert lock.acquire(False)
    lock.release()


def test_lock_held_by_another_thread_is_waited_for(ctx):
    # The owner thread re-enters freely; any other thread of the same
    # process waits for it, for every kind of access.
    import threading
    v = ctx.Value('i', 0)
    a = ctx.Array('i', 3)
    holding, done = threading.Event(), []

    def other():
        holding.wait(10)
        v.value = 5
        a[:] = [5, 5, 5]
        done.append((v.value, a[:]))

    t = threading.Thread(target=other)
    t.start()
    with v.get_lock(), a.get_lock():
        holding.set()
        v.value = 1
        a[0] = 1
        time.sleep(0.3)
        assert done == []
        assert (v.value, a[0]) == (1, 1)
    t.join(10)
    assert done == [(5, [5, 5, 5])]


def _pair_writer(arr, val, rounds, started):
    raw_arr, raw_val = arr.get_obj(), val.get_obj()
    started.set()
    for k in range(1, rounds + 1):
        with arr.get_lock():        # a two-step update under the lock
            raw_arr[0] = k
            raw_arr[1] = k
        with val.get_lock():
            raw_val.value = -k
            raw_val.value = k


@pytest.mark.timeout(120)
@pytest.mark.parametrize('locktype', ['RLock', 'Lock'])
def test_reads_never_see_half_an_update(ctx, locktype):
    """A locked read (v.value, a[i], a[:], a[::2]) never sees a
    multi-step update made under the same lock half done."""
    arr = ctx.Array('i', 4, lock=getattr(ctx, locktype)())
    val = ctx.Value('i', 0, lock=getattr(ctx, locktype)())
    started = ctx.Event()
    rounds = 5000
    p = ctx.Process(target=_pair_writer, args=(arr, val, rounds, started))
    p.start()
    assert started.wait(60)
    seen = 0
    while p.is_alive() or seen == 0:
        a, b = arr[:2]
        assert a == b
        c = arr[::1]
        assert c[0] == c[1]
        assert val.value >= 0
        seen += 1
    p.join(60)
    assert p.exitcode == 0
    assert arr[:2] == [rounds, rounds]
    assert arr[0] == arr[1] == val.value == rounds


def test_get_obj_shares_memory(ctx):
    arr = ctx.Array('i', 4)
    obj = arr.get_obj()
    obj[2] = 9
    assert arr[2] == 9
    arr[3] = 7
    assert obj[3] == 7
    ctypes.memmove(ctypes.addressof(obj), (ctypes.c_int * 1)(5), 4)
    assert arr[0] == 5
    v = ctx.Value('i', 1)
    ctypes.pointer(v.get_obj())[0] = 42
    assert v.value == 42


def test_copy_and_synchronized(mp):
    from importlib import import_module
    sc = import_module(mp.__name__ + '.sharedctypes')
    foo = Point(2, 5.0)
    bar = sc.copy(foo)
    foo.x = 0
    foo.y = 0
    assert (bar.x, bar.y) == (2, 5.0)
    raw = sc.RawValue('i', 3)
    s = sc.synchronized(raw)
    assert s.value == 3
    assert type(s).__name__ == 'Synchronized'
    with pytest.raises(AssertionError):
        sc.synchronized(s)
    assert type(sc.synchronized(sc.RawArray('c', 3))).__name__ == (
        'SynchronizedString')
    assert sorted(sc.__all__) == sorted(
        ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized'])


def test_bad_inputs(ctx):
    with pytest.raises(TypeError):
        ctx.Value('x')
    with pytest.raises(TypeError):
        ctx.RawArray('x', 3)
    with pytest.raises(ValueError):
        ctx.Array('i', -1)
    with pytest.raises((OverflowError, MemoryError)):
        ctx.Array('i', sys.maxsize)
    with pytest.raises((OverflowError, MemoryError)):
        ctx.RawArray('d', 2 ** 62)
    with pytest.raises(TypeError):
        ctx.Value('i', 'a')
    with pytest.raises(TypeError):
        ctx.Value('d', 'a')
    with pytest.raises(TypeError):
        ctx.Array('i', ['a', 'b'])
    with pytest.raises(TypeError):
        ctx.Array('i', 3.5)
    with pytest.raises(TypeError):
        ctx.Value('i', 1, 2)


def test_pickling_outside_spawn_fails(ctx):
    import pickle
    from multiprocessing.reduction import ForkingPickler
    v = ctx.Value('i', 1)
    with pytest.raises(RuntimeError):
        ForkingPickler.dumps(v)
    with pytest.raises(RuntimeError):
        ForkingPickler.dumps(ctx.RawArray('i', 2))
    with pytest.raises(Exception):
        pickle.dumps(v)


def test_wrapper_buffer_protocol(fctx):
    arr = fctx.Array('d', [1.0, 2.0, 3.0])
    m = memoryview(arr)
    assert m.shape == (3,) and m.itemsize == 8
    m = m.cast('B').cast('d')
    assert m.tolist() == [1.0, 2.0, 3.0]
    m[0] = 9.0
    assert arr[0] == 9.0
    m.release()
    v = fctx.Value('i', 7)
    assert memoryview(v).cast('B').tobytes() == (7).to_bytes(4, sys.byteorder)


def _fd_count():
    return len(os.listdir('/proc/self/fd'))


def _shm_count():
    # /dev/shm is shared by every process on the machine: count what this
    # process maps from it (segments and named semaphores) instead.
    with open('/proc/self/maps') as f:
        return sum(1 for line in f if '/dev/shm/' in line)


def _fastmp_blocks():
    from fastmp import _fastmp
    return _fastmp._arena_stats()['blocks']


def _rss_kib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(120)
def test_no_leaks(fctx):
    lock = fctx.RLock()

    def churn(n):
        for i in range(n):
            v = fctx.Value('i', i, lock=lock)
            a = fctx.Array('d', 16, lock=lock)
            r = fctx.RawArray('b', 100)
            v.value += 1
            a[3] = 1.0
            r[0] = 1
            del v, a, r
    churn(500)
    gc.collect()
    fds, shm, rss = _fd_count(), _shm_count(), _rss_kib()
    blocks = _fastmp_blocks()
    churn(10000)
    gc.collect()
    # 30,000 objects were made: a leak would show as thousands of blocks
    # (a few may belong to other tests' objects still being released).
    assert _fastmp_blocks() - blocks < 50
    assert _fd_count() <= fds
    assert _shm_count() <= shm
    assert _rss_kib() - rss < 8 * 1024


def _bump_all(objs):
    for o in objs:
        o.value += 10


@pytest.mark.timeout(60)
def test_mixed_with_stdlib_objects(fctx):
    # The stdlib and fastmp register picklers for the same ctypes classes;
    # whichever registered last, both kinds of object reach the child.
    import multiprocessing
    import multiprocessing.sharedctypes as std
    sctx = multiprocessing.get_context(fctx.get_start_method())
    objs = [std.RawValue('i', 1), fctx.RawValue('i', 2),
            std.RawValue('d', 3.0), fctx.Value('d', 4.0),
            std.Value('i', 5, ctx=sctx), fctx.RawValue('i', 6)]
    _run(fctx, _bump_all, objs)
    assert [o.value for o in objs] == [11, 12, 13.0, 14.0, 15, 16]


def test_weakref_and_gc(fctx):
    import weakref
    v = fctx.Value('i', 1)
    a = fctx.Array('i', 3)
    rv, ra = weakref.ref(v), weakref.ref(a)
    v.self_ref = v          # a cycle through the instance dict
    del v, a
    gc.collect()
    assert rv() is None and ra() is None


_BLOCKED_SCRIPT = r'''
import sys, {impl} as mp
lock = mp.Lock()
v = mp.Value('i', 0, lock=lock)
a = mp.Array('i', 4, lock=lock)
lock.acquire()
print('READY', flush=True)
try:
    {expr}
except KeyboardInterrupt:
    print('INTERRUPTED', flush=True)
    sys.exit(3)
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize('expr', ['v.value', 'a[1:3]', 'v.value = 5'])
def test_ctrl_c_while_waiting_for_the_lock(mp, expr):
    import signal
    import subprocess
    import time
    from conftest import child_env
    env = child_env()
    p = subprocess.Popen(
        [sys.executable, '-c',
         _BLOCKED_SCRIPT.format(impl=mp.__name__, expr=expr)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == 'READY'
        time.sleep(0.2)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        assert time.monotonic() - t0 < 2.0
        assert 'INTERRUPTED' in out, err
        assert p.returncode == 3
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
