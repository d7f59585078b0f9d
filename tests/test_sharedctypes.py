"""Value, Array, RawValue, RawArray: parity with the stdlib, children under
every start method, bad inputs and leaks."""

import ctypes
import gc
import os
import sys
import time

import pytest


class Point(ctypes.Structure):
    _fields_ = [('x', ctypes.c_int), ('y', ctypes.c_double)]


CODES = [
    ('c', b'x', b'y'),
    ('b', -5, 7),
    ('B', 200, 3),
    ('h', -232, 234),
    ('H', 65000, 1),
    ('i', 4343, -24234),
    ('I', 4000000000, 5),
    ('l', -(2**40), 2**41),
    ('L', 2**63, 9),
    ('q', 2**33, -(2**34)),
    ('Q', 2**64 - 1, 0),
    ('f', 3.5, -4.25),
    ('d', 3.625, -4.25),
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
    for sl in (
        slice(None),
        slice(2, 9),
        slice(None, None, 3),
        slice(15, 2, -2),
        slice(-5, None),
        slice(30, 40),
        slice(None, None, -1),
    ):
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
    a[1:3] = [-1, 2**70 + 5]
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
        p.nosuchfield  # noqa: B018 (the attribute read is the test)
    n = ctx.Value(ctypes.c_char * 4, b'a', b'b')
    assert n.get_obj().value == b'ab'
    assert n.value == b'ab'
    pts = ctx.Array(Point, 3)
    pts[1] = Point(4, 5.0)
    assert pts[1].x == 4 and pts[1].y == 5.0


def test_repr(ctx):
    assert repr(ctx.Value('i', 5)) == '<Synchronized wrapper for c_int(5)>'
    assert repr(ctx.Value('d', 1.5)) == (
        '<Synchronized wrapper for c_double(1.5)>'
    )
    r = repr(ctx.Array('i', 3))
    assert r.startswith('<SynchronizedArray wrapper for <')
    assert 'c_int_Array_3 object at' in r
    assert repr(ctx.Array('c', 2)).startswith(
        '<SynchronizedString wrapper for <'
    )
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
    v.value = 1  # recursive lock: the owner may re-enter
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
        with arr.get_lock():  # a two-step update under the lock
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
        'SynchronizedString'
    )
    assert sorted(sc.__all__) == sorted(
        ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']
    )


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
        ctx.RawArray('d', 2**62)
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
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(v)


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
    objs = [
        std.RawValue('i', 1),
        fctx.RawValue('i', 2),
        std.RawValue('d', 3.0),
        fctx.Value('d', 4.0),
        std.Value('i', 5, ctx=sctx),
        fctx.RawValue('i', 6),
    ]
    _run(fctx, _bump_all, objs)
    assert [o.value for o in objs] == [11, 12, 13.0, 14.0, 15, 16]


def test_weakref_and_gc(fctx):
    import weakref

    v = fctx.Value('i', 1)
    a = fctx.Array('i', 3)
    rv, ra = weakref.ref(v), weakref.ref(a)
    v.self_ref = v  # a cycle through the instance dict
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

    from support import child_env

    env = child_env()
    p = subprocess.Popen(
        [
            sys.executable,
            '-c',
            _BLOCKED_SCRIPT.format(impl=mp.__name__, expr=expr),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
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


# ---- wrappers never use memory that moved or went away ----


def _sc(mp):
    from importlib import import_module

    return import_module(mp.__name__ + '.sharedctypes')


def test_synchronized_follows_a_resized_object(mp):
    # ctypes.resize() moves the memory a ctypes object owns: a wrapper must
    # use the object's memory as it is now, not where it was.
    # (Simple values are left out: ctypes itself misreads a resized one.)
    sc = _sc(mp)
    arr = (ctypes.c_double * 64)(*range(64))
    sa = sc.synchronized(arr)
    ctypes.resize(arr, 1 << 20)
    sa[3] = -1.0
    sa[10:13] = [7.0, 8.0, 9.0]
    assert arr[3] == -1.0 and arr[10:13] == [7.0, 8.0, 9.0]
    arr[0] = 42.0
    assert sa[0] == 42.0 and sa[:5] == [42.0, 1.0, 2.0, -1.0, 4.0]
    assert sa[:] == arr[:]
    p = Point(1, 2.0)
    sp = sc.synchronized(p)
    ctypes.resize(p, 4096)
    sp.x = 11
    assert p.x == 11 and sp.y == 2.0


def test_atomics_follow_a_resized_object():
    import fastmp.sharedctypes as sc

    v = ctypes.c_long(5)
    sv = sc.synchronized(v)
    ctypes.resize(v, 1 << 16)

    def now():
        return ctypes.c_long.from_address(ctypes.addressof(v)).value

    assert now() == 5 and sv._address == ctypes.addressof(v)
    assert sv.add(2) == 7 and now() == 7
    sv.store(40)
    assert now() == 40 and sv.load() == 40
    assert sv.exchange(1) == 40 and sv.compare_exchange(1, 3)
    assert now() == 3 and sv.fetch_add(1) == 3 and now() == 4


class _FreshSemlockLock:
    """A lock whose `_semlock` is a new fastmp Lock at every access, the
    lock itself being a real (stdlib or fastmp) RLock."""

    def __init__(self, real):
        self._real = real

    @property
    def _semlock(self):
        import fastmp

        return fastmp.Lock()

    def acquire(self, *args, **kwargs):
        return self._real.acquire(*args, **kwargs)

    def release(self):
        self._real.release()

    def __enter__(self):
        return self._real.__enter__()

    def __exit__(self, *args):
        return self._real.__exit__(*args)


def _add_under_wrapper(v, a, n):
    for _ in range(n):
        with v:
            v.value += 1
        with a:
            a[0] += 1.0


@pytest.mark.timeout(120)
def test_lock_with_computed_semlock(ctx):
    v = ctx.Value('i', 0, lock=_FreshSemlockLock(ctx.RLock()))
    a = ctx.Array('d', 4, lock=_FreshSemlockLock(ctx.RLock()))
    gc.collect()
    v.value = 3
    a[1:3] = [1.5, 2.5]
    assert v.value == 3 and a[:] == [0.0, 1.5, 2.5, 0.0]
    real = v.get_lock()._real
    with v:
        # The wrapper takes the lock itself, not some other lock.
        assert real._semlock._is_mine()
    assert not real._semlock._is_mine()
    ps = [
        ctx.Process(target=_add_under_wrapper, args=(v, a, 200))
        for _ in range(3)
    ]
    for p in ps:
        p.start()
    _add_under_wrapper(v, a, 200)
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert v.value == 3 + 800 and a[0] == 800.0


_COMPUTED_SEMLOCK_SCRIPT = r'''
import gc, sys
import {impl} as mp
sys.path.insert(0, {tests!r})
from test_sharedctypes import _FreshSemlockLock
for i in range(200):
    v = mp.Value('i', i, lock=_FreshSemlockLock(mp.RLock()))
    a = mp.Array('d', 8, lock=_FreshSemlockLock(mp.RLock()))
    gc.collect()
    junk = [mp.Lock() for _ in range(4)]
    v.value += 1
    a[2:4] = [1.0, 2.0]
    with v:
        v.value += 1
    with a:
        a[0] = a[3]
    assert v.value == i + 2 and a[:4] == [2.0, 0.0, 1.0, 2.0], (v, a[:])
print('OK', flush=True)
'''


@pytest.mark.timeout(120)
def test_lock_with_computed_semlock_debug_malloc(mp):
    # PYTHONMALLOC=debug overwrites freed memory: a lock used after it was
    # freed crashes or hangs instead of passing by luck.
    import subprocess

    from support import FASTMP_PATH

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONMALLOC='debug', PYTHONPATH=FASTMP_PATH)
    r = subprocess.run(
        [
            sys.executable,
            '-c',
            _COMPUTED_SEMLOCK_SCRIPT.format(impl=mp.__name__, tests=tests),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
    )
    assert r.returncode == 0 and r.stdout == 'OK\n', r.stderr[-3000:]


class _Reinit(int):
    """An int whose conversion to float re-runs a wrapper's __init__."""

    def __new__(cls, value, wrapper, obj, lock):
        self = super().__new__(cls, value)
        self.args = (wrapper, obj, lock)
        return self

    def __float__(self):
        wrapper, obj, lock = self.args
        wrapper.__init__(obj, lock)
        return float(int(self))


class _ReinitIndex:
    def __init__(self, i, wrapper, obj, lock):
        self.i, self.args = i, (wrapper, obj, lock)

    def __index__(self):
        wrapper, obj, lock = self.args
        wrapper.__init__(obj, lock)
        return self.i


def test_init_reentered_during_slice_assignment(mp):
    sc = _sc(mp)
    lock = mp.RLock()
    arr = sc.Array('d', 64, lock=lock)
    old = arr.get_obj()
    small = sc.RawArray('d', 2)
    neighbour = sc.RawArray('d', 64)
    values = [_Reinit(1, arr, small, lock)] + [2.0] * 63
    arr[:] = values
    # As with the stdlib: the assignment goes to the array it started on.
    assert old[:] == [1.0] + [2.0] * 63
    assert small[:] == [0.0, 0.0] and neighbour[:] == [0.0] * 64
    assert len(arr) == 2 and arr.get_obj() is small
    assert lock.acquire(False)
    lock.release()
    # The same through a strided slice and a single item.
    arr.__init__(old, lock)
    arr[::2] = [_Reinit(5, arr, small, lock)] + [6.0] * 31
    assert old[0:4] == [5.0, 2.0, 6.0, 2.0] and small[:] == [0.0, 0.0]
    arr.__init__(old, lock)
    arr[63] = _Reinit(9, arr, small, lock)
    assert old[63] == 9.0 and small[:] == [0.0, 0.0]
    assert neighbour[:] == [0.0] * 64


def test_init_reentered_during_index_conversion(mp):
    sc = _sc(mp)
    lock = mp.RLock()
    arr = sc.Array('i', list(range(64)), lock=lock)
    old = arr.get_obj()
    small = sc.RawArray('i', 2)
    assert arr[_ReinitIndex(50, arr, small, lock)] == 50
    arr.__init__(old, lock)
    arr[_ReinitIndex(60, arr, small, lock)] = -1
    assert old[60] == -1 and small[:] == [0, 0]
    v = sc.Value('d', 1.0, lock=lock)
    vold = v.get_obj()
    vsmall = sc.RawValue('d', 0.0)
    v.value = _Reinit(3, v, vsmall, lock)
    assert vold.value == 3.0 and vsmall.value == 0.0
    assert lock.acquire(False)
    lock.release()


def test_init_reentered_with_another_lock_releases_the_first():
    import fastmp
    import fastmp.sharedctypes as sc

    first, second = fastmp.Lock(), fastmp.Lock()
    arr = sc.Array('d', 16, lock=first)
    old = arr.get_obj()
    small = sc.RawArray('d', 1)
    arr[0:16] = [_Reinit(1, arr, small, second)] + [3.0] * 15
    assert old[:2] == [1.0, 3.0] and small[:] == [0.0]
    assert arr.get_lock() is second
    assert first.acquire(False) and second.acquire(False)
    v = sc.Value('q', 1, lock=first)
    first.release()
    vsmall = sc.RawValue('q', 0)
    assert v.add(_ReinitIndex(4, v, vsmall, second)) == 5
    assert v.get_obj() is vsmall and vsmall.value == 0


class _Shrinker(int):
    def __new__(cls, value, lst):
        self = super().__new__(cls, value)
        self.lst = lst
        return self

    def __float__(self):
        del self.lst[:]
        return float(int(self))


def test_list_emptied_during_slice_assignment(mp):
    arr = mp.Array('d', 8)
    values = [1.0, 2.0]
    values.insert(0, _Shrinker(7, values))
    with pytest.raises(IndexError):
        arr[0:3] = values
    assert arr[3:] == [0.0] * 5


class _Seq:
    def __len__(self):
        return 2

    def __getitem__(self, i):
        if i >= 2:
            raise IndexError(i)
        return 10 + i


@pytest.mark.parametrize('code', ['i', 'd', 'c'])
def test_slice_assignment_from_iterables(mp, code):
    one = b'a' if code == 'c' else 1
    arr = mp.Array(code, 5)
    raw = mp.RawArray(code, 5)
    for target in (arr, raw):
        for it in ((x for x in (one, one)), iter([one, one])):
            with pytest.raises(
                ValueError, match='Can only assign sequence of same size'
            ):
                target[1:3] = it
        if code != 'c':
            target[1:3] = range(2)
            target[3:5] = _Seq()
            assert target[:] == [0, 0, 1, 10, 11]


@pytest.mark.parametrize(
    'make', ['Value', 'Array', 'RawArray', 'ArrayC', 'RawArrayC']
)
def test_index_errors_match_the_stdlib(mp, make):
    import multiprocessing as std

    code = 'c' if make.endswith('C') else 'i'
    name = make[:-1] if make.endswith('C') else make

    def outcome(mod, op):
        obj = (
            getattr(mod, name)(code, 3)
            if name != 'Value'
            else (mod.Value(code, 1) if code == 'i' else mod.Value('c'))
        )
        try:
            op(obj)
        except Exception as e:  # noqa: BLE001 (the outcome is compared)
            return type(e), str(e)
        return None

    ops = []
    for key in ('a', 1.5, None, 3, -4, 2**100):
        ops.append(lambda o, k=key: o[k])
        ops.append(lambda o, k=key: o.__setitem__(k, o[0]))
    ops.append(lambda o: o.__delitem__(0))
    for op in ops:
        assert outcome(mp, op) == outcome(std, op)
