"""Pool: the stdlib's behaviour (parity: the same test against
``multiprocessing`` and ``fastmp`` under each start method), then what
fastmp does better (a dead worker, SystemExit in a task, results that do
not unpickle, lazy imap with buffersize), then Ctrl-C and leaks.

Functions the workers run are module-level, so spawn and forkserver
children find them by name.
"""

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from support import METHODS, child_env, is_fastmp

import fastmp
from fastmp.pool import PoolTerminatedError, WorkerLostError

# --- functions run by workers ---------------------------------------------


def sqr(x, wait=0.0):
    if wait:
        time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def pid_of(_=None):
    return os.getpid()


def nap(seconds):
    time.sleep(seconds)
    return seconds


class Boom(ValueError):
    pass


def boom(x):
    raise Boom(x)  # the line the remote traceback shows


def unpicklable_result():
    return lambda: 42


def _refuse():
    raise RuntimeError("refused to unpickle")


class UnpicklesBadly:
    def __reduce__(self):
        return (_refuse, ())


def unpickles_badly():
    return UnpicklesBadly()


class PicklesBadly:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


_state = {}


def init_state(value):
    _state["value"] = value


def read_state(_=None):
    return _state.get("value")


def failing_init():
    raise RuntimeError("initializer failed")


def count_up(n):
    # An input generator run in the parent: records how far it was read.
    i = 0
    while True:
        n[0] = i
        yield i
        i += 1


def saywhen(total, when):
    for i in range(total):
        if i == when:
            raise Boom("said when")
        yield i


# Started event and pid slot, handed to workers by the initializer.
_shared = {}


def init_shared(started, pid):
    _shared["started"] = started
    _shared["pid"] = pid


def die(how):
    _shared["pid"].value = os.getpid()
    _shared["started"].set()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "os_exit":
        os._exit(7)
    elif how == "segfault":
        import ctypes
        import faulthandler

        faulthandler.disable()  # (inherited from pytest: no stack dump)
        ctypes.string_at(0)
    elif how == "sleep":
        time.sleep(60)
    elif how == "system_exit":
        sys.exit(3)
    elif how == "keyboard_interrupt":
        raise KeyboardInterrupt
    return how


def die_at(x):
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x


def _mod(ctx):
    """The implementation's pool module (multiprocessing.pool or
    fastmp.pool)."""
    import importlib

    top = type(ctx).__module__.split(".")[0]
    return importlib.import_module(top + ".pool")


@pytest.fixture
def pool(ctx):
    p = ctx.Pool(2)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


# --- parity: the stdlib's API and behaviour ---------------------------------


@pytest.mark.timeout(120)
def test_apply(pool, ctx):
    assert pool.apply(sqr, (5,)) == 25
    assert pool.apply(sqr, (), {"x": 3}) == 9
    assert pool.apply(mul, (6, 7)) == 42
    got = []
    r = pool.apply_async(sqr, (4,), callback=got.append)
    assert r.get(60) == 16
    assert r.ready() and r.successful()
    assert got == [16]
    errs = []
    r = pool.apply_async(boom, (1,), error_callback=errs.append)
    with pytest.raises(Boom):
        r.get(60)
    assert not r.successful()
    assert len(errs) == 1 and isinstance(errs[0], Boom)
    r = pool.apply_async(sqr, (2, 30))
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    t = time.monotonic()
    with pytest.raises(ctx.TimeoutError):
        r.get(0.2)
    assert time.monotonic() - t >= 0.2
    r.wait(0.05)
    assert not r.ready()


@pytest.mark.timeout(120)
def test_map_and_starmap(pool):
    assert pool.map(sqr, range(10)) == [x * x for x in range(10)]
    assert pool.map(sqr, range(100), chunksize=7) == [
        x * x for x in range(100)
    ]
    assert pool.map(sqr, (x for x in range(20))) == [x * x for x in range(20)]
    assert pool.map(sqr, []) == []
    pairs = list(zip(range(10), range(9, -1, -1)))
    assert pool.starmap(mul, pairs) == [a * b for a, b in pairs]
    assert pool.starmap(mul, pairs, 3) == [a * b for a, b in pairs]
    assert pool.starmap_async(mul, pairs).get(60) == [a * b for a, b in pairs]
    assert pool.map_async(sqr, range(5), 2).get(60) == [0, 1, 4, 9, 16]
    assert pool.map_async(sqr, []).get(60) == []


def ident(x):
    return x


class MyInt(int):
    pass


@pytest.mark.timeout(120)
def test_map_keeps_every_item_and_its_type(pool):
    """Chunks and results of plain ints and floats travel in a compact
    form: what comes back is what went in, type for type, wherever a
    chunk holds something else, an int beyond 64 bits or a float's odd
    values."""
    nan = float("nan")
    cases = [
        list(range(-5, 5)),
        [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**200],
        [0.5, -0.0, 0.0, float("inf"), float("-inf"), 1e308, 5e-324],
        [1, 2.0, True, False, None, "x", b"y", MyInt(7), 3],
        [True, 1, 0, False],
        [1.0, 2.0, 3],
        [3, 4, 5.0],
    ]
    for items in cases:
        for chunksize in (1, 2, 100):
            got = pool.map(ident, items, chunksize)
            assert got == items
            assert [type(x) for x in got] == [type(x) for x in items]
        got = list(pool.imap(ident, items, 3))
        assert [type(x) for x in got] == [type(x) for x in items]
    got = pool.map(ident, [nan, 1.5], 2)
    assert got[0] != got[0] and got[1] == 1.5
    assert str(pool.map(ident, [-0.0], 1)[0]) == "-0.0"
    # Lists as single items (apply, imap with chunksize 1) and as results.
    assert pool.apply(ident, ([1, 2, 3],)) == [1, 2, 3]
    assert list(pool.imap(ident, [[1, 2], [0.5], [True]])) == [
        [1, 2],
        [0.5],
        [True],
    ]
    assert type(pool.apply(ident, ([True],))[0]) is bool


@pytest.mark.timeout(120)
def test_map_callbacks_run_before_wait_returns(pool):
    calls = []
    pool.map_async(
        int, ["1", "2"], callback=calls.append, error_callback=calls.append
    ).wait()
    assert calls == [[1, 2]]
    pool.map_async(
        int, ["1", "a"], callback=calls.append, error_callback=calls.append
    ).wait()
    assert len(calls) == 2 and isinstance(calls[1], ValueError)
    calls.clear()
    pool.starmap_async(mul, [(2, 3)], callback=calls.append).wait()
    assert calls == [[6]]


@pytest.mark.timeout(120)
def test_callback_without_a_waiter(pool):
    got = []
    done = threading.Event()

    def cb(v):
        got.append(v)
        done.set()

    pool.apply_async(sqr, (9,), callback=cb)
    assert done.wait(30)
    assert got == [81]


@pytest.mark.timeout(120)
def test_threads_share_a_pool(pool):
    errors = []
    results = {}

    def applier(n):
        try:
            results[n] = [pool.apply(mul, (n, j)) for j in range(40)]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def imapper():
        try:
            results["imap"] = list(pool.imap(sqr, iter(range(200)), 3))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=applier, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=imapper))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    for n in range(4):
        assert results[n] == [n * j for j in range(40)]
    assert results["imap"] == [x * x for x in range(200)]


_inner = []


def _callback_waits_for_another(pool, v):
    # A callback that waits for another result (run by whichever thread
    # delivers the first one).
    _inner.append((v, pool.apply_async(sqr, (v,)).get(30)))


@pytest.mark.timeout(120)
def test_callback_that_waits_for_another_result(fctx):
    # (The stdlib's result thread deadlocks on this.)
    _inner.clear()
    with fctx.Pool(2) as p:
        r = p.apply_async(
            sqr, (3,), callback=lambda v: _callback_waits_for_another(p, v)
        )
        r.get(30)
        assert _inner == [(9, 81)]


@pytest.mark.timeout(120)
def test_map_fails_as_a_whole_after_every_chunk(pool):
    with pytest.raises(Boom):
        pool.map(boom, range(4), chunksize=1)
    r = pool.map_async(sqr, range(4))
    assert r.get(60) == [0, 1, 4, 9]


@pytest.mark.timeout(120)
def test_imap(pool, ctx):
    assert list(pool.imap(sqr, range(10))) == [x * x for x in range(10)]
    assert list(pool.imap(sqr, iter(range(50)), 7)) == [
        x * x for x in range(50)
    ]
    assert sorted(pool.imap_unordered(sqr, range(30))) == [
        x * x for x in range(30)
    ]
    assert sorted(pool.imap_unordered(sqr, iter(range(30)), 4)) == [
        x * x for x in range(30)
    ]
    assert list(pool.imap(sqr, [])) == []
    assert list(pool.imap_unordered(sqr, iter([]))) == []
    it = pool.imap(sqr, range(3))
    assert [next(it), it.next(), it.next(60)] == [0, 1, 4]
    with pytest.raises(StopIteration):
        next(it)
    it = pool.imap(sqr, [(1)], 1)
    assert iter(it) is it
    it = pool.imap(nap, [30])
    with pytest.raises(ctx.TimeoutError):
        it.next(0.2)


@pytest.mark.timeout(120)
def test_imap_input_raising(pool):
    it = pool.imap(sqr, saywhen(10, 3))
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(Boom):
        next(it)
    it = pool.imap(sqr, saywhen(20, 7), 2)
    assert [next(it) for _ in range(6)] == [x * x for x in range(6)]
    with pytest.raises(Boom):
        next(it)
    it = pool.imap_unordered(sqr, saywhen(10, 0))
    with pytest.raises(Boom):
        next(it)
    with pytest.raises(Boom):
        pool.map(sqr, saywhen(10, 3))


@pytest.mark.timeout(120)
def test_remote_traceback(ctx):
    with ctx.Pool(1) as p:
        with pytest.raises(Boom) as info:
            p.apply(boom, (5,))
    p.join()
    cause = info.value.__cause__
    assert type(cause) is _mod(ctx).RemoteTraceback
    assert "raise Boom(x)  # the line the remote traceback shows" in cause.tb


@pytest.mark.timeout(120)
def test_pickling_errors(pool, ctx):
    with pytest.raises(RuntimeError, match="cannot pickle"):
        pool.map(sqr, [PicklesBadly()] * 3)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        pool.apply(sqr, (PicklesBadly(),))
    errs = []
    r = pool.apply_async(unpicklable_result, error_callback=errs.append)
    with pytest.raises(_mod(ctx).MaybeEncodingError) as info:
        r.get(60)
    assert errs and errs[0] is info.value
    assert "lambda" in str(info.value)
    # The worker survived it.
    assert pool.apply(sqr, (3,)) == 9


@pytest.mark.timeout(120)
def test_misuse_errors(ctx):
    for n in (0, -1):
        with pytest.raises(
            ValueError, match="Number of processes must be at least 1"
        ):
            ctx.Pool(n)
    # The stdlib checks maxtasksperchild from 3.10 (3.9's workers fail
    # later instead); fastmp checks it on every version.
    if is_fastmp(ctx) or sys.version_info >= (3, 10):
        for bad in (0, -1, 0.5, "12"):
            with pytest.raises(
                ValueError, match="maxtasksperchild must be a positive int"
            ):
                ctx.Pool(1, maxtasksperchild=bad)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ctx.Pool(1, initializer=1)
    p = ctx.Pool(1)
    try:
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            p.imap(sqr, range(3), 0)
        with pytest.raises(ValueError, match="still running"):
            p.join()
        with pytest.raises(NotImplementedError):
            import pickle

            pickle.dumps(p)
        p.close()
        for call in (
            lambda: p.apply(sqr, (1,)),
            lambda: p.apply_async(sqr, (1,)),
            lambda: p.map(sqr, [1]),
            lambda: p.map_async(sqr, [1]),
            lambda: p.starmap(mul, [(1, 2)]),
            lambda: p.imap(sqr, [1]),
            lambda: p.imap_unordered(sqr, [1]),
        ):
            with pytest.raises(ValueError, match="Pool not running"):
                call()
        with pytest.raises(ValueError):
            with p:
                pass
    finally:
        p.terminate()
        p.join()


@pytest.mark.timeout(120)
def test_subclass_with_its_own_arguments(ctx):
    # A subclass's __init__ may take arguments Pool does not.
    import inspect

    Pool = _mod(ctx).Pool

    class Tagged(Pool):
        def __init__(self, tag, *, size=1):
            self.tag = tag
            super().__init__(size, context=ctx)

    assert str(inspect.signature(Tagged)) == "(tag, *, size=1)"
    assert list(inspect.signature(Pool).parameters)[:5] == [
        "processes",
        "initializer",
        "initargs",
        "maxtasksperchild",
        "context",
    ]
    p = Tagged("t", size=2)
    try:
        assert p.tag == "t" and p.apply(sqr, (4,)) == 16
    finally:
        p.terminate()
        p.join()


@pytest.mark.timeout(120)
def test_names_repr_and_size(ctx):
    p = ctx.Pool(3)
    try:
        assert len(p._pool) == 3
        kind = type(p._pool[0]).__name__.replace("Process", "")
        for w in p._pool:
            assert w.name.startswith(kind + "PoolWorker-"), w.name
            assert w.daemon
        assert "state=RUN pool_size=3" in repr(p)
        assert repr(p).startswith("<") and ".Pool " in repr(p)
        p.close()
        assert "state=CLOSE" in repr(p)
        p.join()
    finally:
        p.terminate()
    assert "state=TERMINATE" in repr(p)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_fastmp_pool_with_a_stdlib_context(method):
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    with fastmp.pool.Pool(2, context=ctx) as p:
        assert type(p._pool[0]).__module__.startswith("multiprocessing")
        assert p.map(sqr, range(10), 3) == [x * x for x in range(10)]
        assert p.apply(mul, (3, 4)) == 12


@pytest.mark.timeout(120)
def test_default_size(ctx):
    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    with ctx.Pool() as p:
        assert len(p._pool) == cpus


@pytest.mark.timeout(120)
def test_initializer_and_initargs(ctx):
    with ctx.Pool(2, init_state, ("ready",)) as p:
        assert set(p.map(read_state, range(8), 1)) == {"ready"}


@pytest.mark.timeout(120)
def test_maxtasksperchild_recycles_workers(ctx):
    p = ctx.Pool(2, maxtasksperchild=1)
    try:
        first = {w.pid for w in p._pool}
        pids = [p.apply_async(pid_of).get(60) for _ in range(6)]
        assert len(set(pids)) == 6  # one task per worker
        p.close()
        p.join()
        assert not first & {w.pid for w in p._pool}
        assert all(w.exitcode is not None for w in p._pool)
    finally:
        p.terminate()


@pytest.mark.timeout(120)
def test_close_join_finishes_queued_work(ctx):
    p = ctx.Pool(2, maxtasksperchild=2)
    rs = [p.apply_async(sqr, (i, 0.05)) for i in range(8)]
    p.close()
    p.join()
    assert [r.get(0) for r in rs] == [i * i for i in range(8)]
    assert all(not w.is_alive() for w in p._pool)


@pytest.mark.timeout(120)
def test_context_manager_terminates(ctx):
    with ctx.Pool(2) as p:
        p.apply_async(nap, (60,))
        workers = list(p._pool)
    t = time.monotonic()
    p.join()
    assert time.monotonic() - t < 10
    assert all(not w.is_alive() for w in workers)
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(sqr, (1,))


@pytest.mark.timeout(120)
def test_terminate_while_busy(ctx):
    p = ctx.Pool(2)
    p.map_async(nap, [60] * 50, chunksize=1)
    time.sleep(0.2)
    t = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - t < 10
    assert all(not w.is_alive() for w in p._pool)


@pytest.mark.timeout(120)
def test_failing_initializer_keeps_replacing_workers(ctx, capfd):
    # The stdlib's behaviour, kept: each worker dies with the initializer's
    # traceback and is replaced; the pool can still be terminated.
    p = ctx.Pool(1, initializer=failing_init)
    try:
        r = p.apply_async(sqr, (2,))
        with pytest.raises(ctx.TimeoutError):
            r.get(1.0)
    finally:
        p.terminate()
        p.join()
    if ctx.get_start_method() != "forkserver":
        # (A forkserver's children write to the forkserver's stderr.)
        assert "initializer failed" in capfd.readouterr().err


@pytest.mark.timeout(120)
def test_resource_warning_for_a_running_pool(ctx):
    p = ctx.Pool(1)
    p.terminate()
    p.join()
    p._state = _mod(ctx).RUN
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = None
        gc.collect()
    assert any(
        issubclass(x.category, ResourceWarning)
        and "unclosed running multiprocessing pool" in str(x.message)
        for x in w
    )


_AT_EXIT = textwrap.dedent("""
    import %(impl)s as mp
    def sqr(x):
        return x * x
    if __name__ == "__main__":
        mp.set_start_method(%(method)r)
        pool = mp.Pool(2)
        print(pool.map(sqr, range(4)), flush=True)
    """)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_finalizer_at_exit(mp, method, tmp_path):
    script = tmp_path / "at_exit.py"
    script.write_text(_AT_EXIT % {"impl": mp.__name__, "method": method})
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[0, 1, 4, 9]\n"
    assert "Traceback" not in out.stderr


# --- fastmp: a dead worker fails its task, and the pool goes on -----------


def _wait_replaced(p, dead):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [w.pid for w in p._pool]
        if dead not in pids and all(w.is_alive() for w in p._pool):
            break
        time.sleep(0.02)
    assert len(p._pool) == 2
    assert dead not in [w.pid for w in p._pool]
    assert all(w.is_alive() for w in p._pool)


def _dying_pool(fctx):
    started = fctx.Event()
    pid = fctx.Value("i", 0)
    p = fctx.Pool(2, init_shared, (started, pid))
    return p, started, pid


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "how,code", [("sigkill", -9), ("os_exit", 7), ("segfault", -11)]
)
def test_dead_worker_fails_its_task(fctx, how, code):
    p, started, pid = _dying_pool(fctx)
    try:
        r = p.apply_async(die, (how,))
        assert started.wait(60)
        t = time.monotonic()
        with pytest.raises(WorkerLostError) as info:
            r.get(30)
        assert time.monotonic() - t < 1.0
        e = info.value
        assert isinstance(e, fastmp.ProcessError)
        assert e.pid == pid.value and e.exitcode == code
        assert str(pid.value) in str(e) and "die" in str(e)
        if code < 0:
            assert signal.Signals(-code).name in str(e)
        else:
            assert "exit code %d" % code in str(e)
        # Serving, and the dead worker replaced.
        assert p.apply(sqr, (7,)) == 49
        _wait_replaced(p, pid.value)
    finally:
        p.terminate()
        p.join()


@pytest.mark.timeout(120)
def test_worker_killed_from_outside(fctx):
    p, started, pid = _dying_pool(fctx)
    try:
        r = p.apply_async(die, ("sleep",))
        assert started.wait(60)
        os.kill(pid.value, signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            r.get(30)
        assert time.monotonic() - t < 1.0
        assert p.map(sqr, range(6)) == [x * x for x in range(6)]
    finally:
        p.terminate()
        p.join()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "how,exc", [("system_exit", SystemExit), ("keyboard_interrupt", None)]
)
def test_exit_exceptions_are_the_tasks(fctx, how, exc):
    exc = exc or KeyboardInterrupt
    p, started, pid = _dying_pool(fctx)
    try:
        workers = [w.pid for w in p._pool]
        t = time.monotonic()
        with pytest.raises(exc):
            p.apply(die, (how,))
        assert time.monotonic() - t < 30
        assert p.apply(sqr, (4,)) == 16
        # Nobody died for it.
        assert [w.pid for w in p._pool] == workers
    finally:
        p.terminate()
        p.join()


@pytest.mark.timeout(120)
def test_worker_killed_inside_map(fctx):
    with fctx.Pool(2) as p:
        t = time.monotonic()
        with pytest.raises(WorkerLostError, match="map\\(die_at\\)"):
            p.map(die_at, range(20), chunksize=1)
        assert time.monotonic() - t < 1.0 + 20 * 0.01
        assert p.map(sqr, range(10), 3) == [x * x for x in range(10)]
        r = p.map_async(die_at, range(10), 5)
        with pytest.raises(WorkerLostError):
            r.get(30)
        assert list(p.imap(sqr, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(120)
def test_imap_item_of_a_dead_worker(fctx):
    with fctx.Pool(2) as p:
        it = p.imap(die_at, range(10))
        got = []
        with pytest.raises(WorkerLostError):
            for x in it:
                got.append(x)
        assert got == list(range(7))
        assert p.apply(sqr, (2,)) == 4


class ExitsWhenUnpickled:
    def __reduce__(self):
        return (os._exit, (5,))


@pytest.mark.timeout(120)
def test_worker_dead_before_recording_its_task(fctx):
    # A task message whose unpickling ends the worker: it dies after taking
    # the task from the queue and before recording it in its slot.
    with fctx.Pool(2) as p:
        r = fastmp.pool.ApplyResult(p, None, None)
        p._core.put_task(
            r._job, -1, 0, fastmp.pool._dump_func(sqr), ExitsWhenUnpickled()
        )
        t = time.monotonic()
        with pytest.raises(WorkerLostError, match="after taking") as info:
            r.get(30)
        assert time.monotonic() - t < 1.0
        assert info.value.exitcode == 5
        assert p.map(sqr, range(10), 1) == [x * x for x in range(10)]


@pytest.mark.timeout(120)
def test_result_that_does_not_unpickle(fctx):
    # gh-79492: the stdlib's result handler dies and get() hangs.
    with fctx.Pool(2) as p:
        for _ in range(3):
            errs = []
            r = p.apply_async(unpickles_badly, error_callback=errs.append)
            with pytest.raises(fastmp.pool.MaybeEncodingError) as info:
                r.get(30)
            assert "refused to unpickle" in str(info.value)
            assert errs == [info.value]
        with pytest.raises(fastmp.pool.MaybeEncodingError):
            p.map(unpickles_badly_each, range(4))
        assert p.apply(sqr, (5,)) == 25


def unpickles_badly_each(_):
    return UnpicklesBadly()


@pytest.mark.timeout(120)
def test_terminate_fails_pending_results(fctx):
    p = fctx.Pool(1)
    r = p.apply_async(nap, (60,))
    it = p.imap(nap, [60, 60])
    m = p.map_async(nap, [60, 60])
    time.sleep(0.1)
    p.terminate()
    for call in (lambda: r.get(5), lambda: next(it), lambda: m.get(5)):
        with pytest.raises(PoolTerminatedError):
            call()
    p.join()


@pytest.mark.timeout(120)
def test_terminate_with_a_stopped_worker(fctx):
    p = fctx.Pool(2)
    try:
        p.apply(sqr, (1,))
        for w in p._pool:
            os.kill(w.pid, signal.SIGSTOP)
        t = time.monotonic()
        p.terminate()
        p.join()
        assert time.monotonic() - t < 10
        for w in p._pool:
            assert w.exitcode in (-signal.SIGTERM, -signal.SIGKILL)
    finally:
        for w in p._pool:
            if w.exitcode is None:
                os.kill(w.pid, signal.SIGKILL)


# --- fastmp: lazy imap with buffersize --------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unordered", [False, True])
@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_buffersize_infinite_input(fctx, unordered, chunksize):
    read = [0]
    with fctx.Pool(2) as p:
        imap = p.imap_unordered if unordered else p.imap
        it = imap(sqr, count_up(read), chunksize, buffersize=4)
        got = list(itertools.islice(it, 60))
        if unordered:
            assert len(set(got)) == 60
        else:
            assert got == [x * x for x in range(60)]
        time.sleep(0.3)  # the helper thread must not read further either
        # Read ahead at most buffersize tasks beyond those consumed.
        consumed_tasks = -(-60 // chunksize)
        assert read[0] < (consumed_tasks + 4 + 1) * chunksize


@pytest.mark.timeout(120)
def test_imap_buffersize_arguments(fctx):
    with fctx.Pool(1) as p:
        with pytest.raises(TypeError):
            p.imap(sqr, range(3), buffersize=1.5)
        with pytest.raises(ValueError):
            p.imap_unordered(sqr, range(3), buffersize=0)
        assert list(p.imap(sqr, range(5), buffersize=1)) == [0, 1, 4, 9, 16]
        assert list(p.imap(sqr, iter(range(5)), 2, 2)) == [0, 1, 4, 9, 16]


# --- Ctrl-C in the parent ---------------------------------------------------

_CTRL_C = textwrap.dedent("""
    import sys, time
    import fastmp

    def nap(x):
        time.sleep(60)
        return x

    if __name__ == "__main__":
        ctx = fastmp.get_context(sys.argv[1])
        with ctx.Pool(2) as p:
            p.apply(abs, (-1,))
            print("READY", flush=True)
            p.%s
    """)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "call", ["map(nap, range(4), chunksize=1)", "apply_async(nap, (1,)).get()"]
)
def test_ctrl_c_in_the_parent(method, call, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C % call)
    p = subprocess.Popen(
        [sys.executable, str(script), method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,
    )
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.3)
        t = time.monotonic()
        # As a terminal's Ctrl-C: to the whole process group.
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert time.monotonic() - t < 1.0 + 1.0  # generous on a busy box
        assert p.returncode == -signal.SIGINT, err
        assert err.count("Traceback") == 1, err
        assert err.rstrip().endswith("KeyboardInterrupt"), err
        # Nothing of the group is left (the stdlib's forkserver and
        # resource tracker leave when the parent has gone).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("processes left in the group")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# --- leaks ------------------------------------------------------------------


# The 1,000 pools run in a fresh interpreter: forking a small process is
# what a program does, forking the test runner's large one costs most of
# the time.  It prints what it measured before and after.
_MANY_POOLS = """
import gc, json, os, sys, threading, time, warnings
import fastmp

def sqr(x):
    return x * x

def nfds():
    return len(os.listdir("/proc/self/fd"))

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

if __name__ == "__main__":
    ctx = fastmp.get_context(sys.argv[1])
    n = int(sys.argv[2])
    with ctx.Pool(2) as p:
        p.map(sqr, range(4))
    p.join()
    gc.collect()
    before = (nfds(), threading.active_count(), rss())
    for i in range(n):
        p = ctx.Pool(2)
        assert p.map(sqr, range(8)) == [x * x for x in range(8)]
        if i % 3 == 0:
            p.close()
        else:
            p.terminate()
        p.join()
        if i % 3 == 2:
            # Abandoned without close(): the finalizer ends it.
            q = ctx.Pool(1)
            q.apply(sqr, (1,))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del q
                gc.collect()
    p = None
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = (nfds(), threading.active_count(), rss())
    print(json.dumps({
        "children": len(fastmp.active_children()),
        "before": before,
        "after": after,
    }))
"""


@pytest.mark.timeout(300)
def test_many_pools_leave_nothing_behind(fctx, tmp_path):
    # 1,000 under fork; spawn and forkserver start an interpreter or a
    # fork per worker, so fewer.
    method = fctx.get_start_method()
    n = 1000 if method == "fork" else 30
    script = tmp_path / "many_pools.py"
    script.write_text(_MANY_POOLS)
    r = subprocess.run(
        [sys.executable, str(script), method, str(n)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=str(tmp_path),
        timeout=280,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    (fds, threads, rss), (fds1, threads1, rss1) = got["before"], got["after"]
    assert got["children"] == 0
    assert fds1 <= fds + 2
    # Memory settles: what a pool used (its queues' memfds, its slots, its
    # thread) went back; a few MiB of allocator noise is allowed.
    assert rss1 - rss < 16 << 20
    assert threads1 <= threads
