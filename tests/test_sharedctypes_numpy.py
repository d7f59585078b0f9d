"""numpy over Array/RawArray memory: views share the memory, also with
children."""

import ctypes
import threading

import pytest

np = pytest.importorskip('numpy')


def _fill(arr, n):
    a = np.frombuffer(arr.get_obj(), dtype=np.float64)
    a[:] = np.arange(n) * 2.0


def _fill_raw(raw):
    np.ctypeslib.as_array(raw)[:] += 1


def _run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0


def test_frombuffer_shares_memory(ctx):
    arr = ctx.Array('d', 8)
    a = np.frombuffer(arr.get_obj())
    a[:] = np.arange(8)
    assert arr[:] == [float(i) for i in range(8)]
    arr[3] = -1.0
    assert a[3] == -1.0


def test_ctypeslib_as_array(ctx):
    arr = ctx.Array('i', range(6))
    a = np.ctypeslib.as_array(arr.get_obj())
    assert a.dtype == np.dtype(ctypes.c_int)
    assert a.tolist() == list(range(6))
    a *= 3
    assert arr[:] == [3 * i for i in range(6)]
    raw = ctx.RawArray(ctypes.c_double, 4)
    r = np.ctypeslib.as_array(raw)
    r[1] = 2.5
    assert raw[1] == 2.5


@pytest.mark.timeout(60)
def test_child_writes_through_numpy(ctx):
    arr = ctx.Array('d', 100)
    _run(ctx, _fill, arr, 100)
    assert np.array_equal(np.frombuffer(arr.get_obj()), np.arange(100) * 2.0)
    raw = ctx.RawArray('q', 10)
    _run(ctx, _fill_raw, raw)
    assert raw[:] == [1] * 10


NUMPY_CASES = [
    ('i', range(5)),
    ('d', [1.5, 2.0]),
    ('f', [1.1]),
    ('b', [-1, 2]),
    ('Q', [1, 2]),
    ('L', [1, 2**63]),
    ('q', [-(2**63), 5]),
    ('c', b'ab'),
    ('u', 'ab'),
    (ctypes.c_bool, [True, False]),
    (ctypes.c_int * 2, 2),
]


@pytest.mark.parametrize(
    'typecode, init', NUMPY_CASES, ids=[str(c[0]) for c in NUMPY_CASES]
)
def test_asarray_is_a_snapshot(ctx, typecode, init):
    """np.asarray of a synchronized array is a copy with the dtype numpy
    infers from the values, as with multiprocessing; writes to either side
    afterwards don't reach the other."""
    arr = ctx.Array(typecode, init)
    expected = np.array([arr[i] for i in range(len(arr))])
    a = np.asarray(arr)
    assert a.dtype == expected.dtype
    assert a.tolist() == expected.tolist()
    if a.ndim == 1 and a.dtype.kind in 'if':
        a[0] = 42
        assert arr[0] != 42
        arr[0] = 7
        assert a[0] == 42


def test_asarray_snapshot_with_dtype(ctx):
    arr = ctx.Array('i', [1, 300])
    assert np.asarray(arr, dtype=np.float32).tolist() == [1.0, 300.0]
    assert np.asarray(arr, dtype=np.float32).dtype == np.float32
    with pytest.raises(OverflowError):
        np.array(arr, dtype=np.int8)


def test_asarray_never_a_view(ctx):
    if np.lib.NumpyVersion(np.__version__) < '2.0.0':
        pytest.skip('copy=False means "copy if needed" before numpy 2')
    with pytest.raises(ValueError, match='Unable to avoid copy'):
        np.asarray(ctx.Array('d', 3), copy=False)


def test_asarray_waits_for_the_lock(ctx):
    """The snapshot is taken under the wrapper's lock: a half-written state
    guarded by the lock is never seen."""
    arr = ctx.Array('d', 4)
    got = []
    with arr.get_lock():
        t = threading.Thread(target=lambda: got.append(np.asarray(arr)))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not got
        arr.get_obj()[:] = [1.0, 2.0, 3.0, 4.0]
    t.join(30)
    assert got[0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_wrappers_export_no_buffer(ctx):
    """As with multiprocessing, the wrappers are not buffers (a buffer
    would bypass the lock); the ctypes object is."""
    arr = ctx.Array('d', [1.0, 2.0])
    with pytest.raises(TypeError):
        memoryview(arr)
    with pytest.raises(TypeError):
        np.frombuffer(ctx.Value('d', 2.5))
    assert np.frombuffer(arr.get_obj()).tolist() == [1.0, 2.0]
    assert repr(np.asarray(ctx.Value('i', 3))).startswith('array(<Synch')


def test_view_outlives_wrapper(fctx):
    arr = fctx.Array('d', 1000)
    a = np.frombuffer(arr.get_obj())
    del arr
    a[:] = 1.0  # the ctypes object (and its block) stay alive
    assert a.sum() == 1000.0
