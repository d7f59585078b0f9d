"""numpy over Array/RawArray memory: views share the memory, also with
children."""

import ctypes

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


def test_wrapper_exports_buffer(fctx):
    arr = fctx.Array('i', range(5))
    a = np.frombuffer(arr, dtype=np.int32)
    assert a.tolist() == list(range(5))
    b = np.asarray(arr)
    assert b.dtype == np.int32 and b.tolist() == list(range(5))
    v = fctx.Value('d', 2.5)
    assert np.frombuffer(v, dtype=np.float64)[0] == 2.5


def test_view_outlives_wrapper(fctx):
    arr = fctx.Array('d', 1000)
    a = np.frombuffer(arr.get_obj())
    del arr
    a[:] = 1.0  # the ctypes object (and its block) stay alive
    assert a.sum() == 1000.0
