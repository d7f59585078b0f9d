"""Lock-free atomics on integer Values (fastmp only)."""

import ctypes

import pytest

N_PROCS = 4
N_ADDS = 100_000


def _adder(v, n, start):
    start.wait()
    add = v.add
    for _ in range(n):
        add(1)


def _cas_incr(v, n):
    for _ in range(n):
        while True:
            old = v.load()
            if v.compare_exchange(old, old + 1):
                break


@pytest.mark.timeout(120)
@pytest.mark.parametrize('code', ['i', 'Q'])
def test_add_under_contention(fctx, code):
    v = fctx.Value(code, 0)
    start = fctx.Event()
    procs = [
        fctx.Process(target=_adder, args=(v, N_ADDS, start))
        for _ in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(100)
        assert p.exitcode == 0
    assert v.value == N_PROCS * N_ADDS
    assert v.load() == N_PROCS * N_ADDS


@pytest.mark.timeout(120)
def test_compare_exchange_loop_under_contention(fctx):
    v = fctx.Value('l', 0)
    procs = [
        fctx.Process(target=_cas_incr, args=(v, 20_000)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    _cas_incr(v, 20_000)
    for p in procs:
        p.join(100)
        assert p.exitcode == 0
    assert v.value == 60_000


def test_return_values(fctx):
    v = fctx.Value('i', 10)
    assert v.add(5) == 15
    assert v.fetch_add(5) == 15
    assert v.value == 20
    assert v.add(-25) == -5
    assert v.exchange(7) == -5
    assert v.load() == 7
    assert v.compare_exchange(7, 8) is True
    assert v.value == 8
    assert v.compare_exchange(7, 9) is False
    assert v.value == 8
    assert v.store(3) is None
    assert v.value == 3


@pytest.mark.parametrize(
    'code,ctype',
    [
        ('b', ctypes.c_byte),
        ('B', ctypes.c_ubyte),
        ('h', ctypes.c_short),
        ('H', ctypes.c_ushort),
        ('i', ctypes.c_int),
        ('I', ctypes.c_uint),
        ('l', ctypes.c_long),
        ('L', ctypes.c_ulong),
        ('q', ctypes.c_longlong),
        ('Q', ctypes.c_ulonglong),
    ],
)
def test_width_and_signedness_wrap_like_c(fctx, code, ctype):
    bits = ctypes.sizeof(ctype) * 8
    signed = code.islower()
    top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    low = -(2 ** (bits - 1)) if signed else 0
    v = fctx.Value(code, top)
    assert v.add(1) == low  # wraps as the C type does
    assert v.value == ctype(top + 1).value
    assert v.fetch_add(-1) == low
    assert v.load() == top
    v.store(-1)
    assert v.value == ctype(-1).value
    assert v.exchange(2**bits + 3) == ctype(-1).value
    assert v.value == 3
    # expected/new are taken modulo the width too
    assert v.compare_exchange(3 + 2**bits, -1)
    assert v.value == ctype(-1).value
    assert v.compare_exchange(-1, 0)
    assert v.load() == 0
    v.add(2**200 + 1)  # huge n: masked like ctypes
    assert v.value == 1


def test_atomics_and_locked_access_see_each_other(fctx):
    v = fctx.Value('i', 0)
    v.add(5)
    with v.get_lock():
        v.value += 1
    assert v.load() == 6
    assert v.get_obj().value == 6


@pytest.mark.parametrize(
    'args',
    [('d', 1.0), ('f', 1.0), ('c', b'x'), (ctypes.c_bool, True), ('u', 'x')],
)
def test_non_integer_values_refuse(fctx, args):
    v = fctx.Value(*args)
    for call in (
        lambda: v.add(1),
        lambda: v.fetch_add(1),
        v.load,
        lambda: v.store(1),
        lambda: v.exchange(1),
        lambda: v.compare_exchange(1, 2),
    ):
        with pytest.raises(TypeError):
            call()


def test_bad_arguments(fctx):
    v = fctx.Value('i', 0)
    with pytest.raises(TypeError):
        v.add(1.5)
    with pytest.raises(TypeError):
        v.add('1')
    with pytest.raises(TypeError):
        v.compare_exchange(1)
    with pytest.raises(TypeError):
        v.store(None)
    assert v.value == 0
