"""concurrent.futures.ProcessPoolExecutor on fastmp.

Two ways in: ``ProcessPoolExecutor(mp_context=fastmp.get_context(m))``
(the executor's queues are the stdlib's, its processes, locks and
semaphores fastmp's), run here side by side with the stdlib's contexts;
and a plain ``ProcessPoolExecutor()`` in a script run with ``python -m
fastmp``, where ``concurrent.futures.process`` subclasses fastmp's Queue
(``_SafeQueue``) and waits on its workers through fastmp's connection
module, run as a real child interpreter.
"""

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest
from support import METHODS, run_fastmp

# A hang is a failure, not a wait: every result() has this bound.
TIMEOUT = 60


def _square(x):
    return x * x


def _add(a, b, *, c=0):
    return a + b + c


def _pid(_=None):
    return os.getpid()


def _raise_in_worker(x):
    raise ValueError("bad item %r" % (x,))


def _lock_result(_):
    return threading.Lock()


def _sleep_return(x, seconds):
    time.sleep(seconds)
    return x


_initialized = None


def _init(value):
    global _initialized
    _initialized = value


def _read_initialized(_=None):
    return _initialized


def _failing_init():
    raise RuntimeError("initializer failed")


def _report_and_block(path):
    # READY handshake: the parent kills this worker once the file exists.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, path)
    time.sleep(TIMEOUT)
    return "not killed"


def _gone(pid):
    """The process has ended and been reaped (a zombie still answers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_file(path):
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "worker never started"
        time.sleep(0.01)
    with open(path) as f:
        return int(f.read())


def test_submit_result(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert ex.submit(_square, 7).result(TIMEOUT) == 49
        assert ex.submit(_add, 1, 2, c=3).result(TIMEOUT) == 6
        futures = [ex.submit(_square, i) for i in range(50)]
        assert [f.result(TIMEOUT) for f in futures] == [
            i * i for i in range(50)
        ]
        assert ex.submit(_pid).result(TIMEOUT) != os.getpid()


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_chunksize(ctx, chunksize):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        got = ex.map(_square, range(200), chunksize=chunksize, timeout=TIMEOUT)
        assert list(got) == [i * i for i in range(200)]
        got = ex.map(_add, range(30), range(30, 60), chunksize=chunksize)
        assert list(got) == [a + b for a, b in zip(range(30), range(30, 60))]
        assert list(ex.map(_square, [], chunksize=chunksize)) == []


def test_exception_keeps_remote_traceback(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fut = ex.submit(_raise_in_worker, 3)
        with pytest.raises(ValueError, match="bad item 3") as info:
            fut.result(TIMEOUT)
        # The worker's traceback travels as the exception's cause.
        cause = info.value.__cause__
        assert type(cause).__name__ == "_RemoteTraceback"
        assert "_raise_in_worker" in str(cause)
        assert "Traceback (most recent call last)" in str(cause)
        # In map(), the first failing item raises when it is reached.
        it = ex.map(_raise_in_worker, [1, 2], chunksize=1)
        with pytest.raises(ValueError, match="bad item 1"):
            next(it)
        # The pool keeps serving.
        assert ex.submit(_square, 5).result(TIMEOUT) == 25


def test_unpicklable_argument_and_result(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        # The argument fails to pickle on its way to the worker: that
        # future's error, and the pool keeps serving.
        bad = ex.submit(_square, threading.Lock())
        with pytest.raises(TypeError, match="pickle"):
            bad.result(TIMEOUT)
        assert ex.submit(_square, 6).result(TIMEOUT) == 36
        # The result fails to pickle in the worker: the same.
        with pytest.raises(TypeError, match="pickle"):
            ex.submit(_lock_result, 0).result(TIMEOUT)
        assert ex.submit(_square, 8).result(TIMEOUT) == 64


def test_initializer(ctx):
    with ProcessPoolExecutor(
        2, mp_context=ctx, initializer=_init, initargs=("ready",)
    ) as ex:
        assert list(ex.map(_read_initialized, range(6))) == ["ready"] * 6
    assert _initialized is None  # it ran in the workers only


def test_failing_initializer_breaks_pool(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx, initializer=_failing_init)
    try:
        with pytest.raises(BrokenProcessPool):
            ex.submit(_square, 2).result(TIMEOUT)
        with pytest.raises(BrokenProcessPool):
            ex.submit(_square, 3)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+"
)
def test_max_tasks_per_child(ctx):
    if ctx.get_start_method() == "fork":
        # The stdlib refuses the combination; so does fastmp's context.
        with pytest.raises(ValueError, match="fork"):
            ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2)
        return
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(_pid).result(TIMEOUT) for _ in range(6)]
    # Each worker ran two tasks, then was replaced.
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]
    for pid in pids:
        assert _gone(pid)


def test_shutdown_wait(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    futures = [ex.submit(_sleep_return, i, 0.05) for i in range(8)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(0) for f in futures] == list(range(8))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_square, 1)


def test_shutdown_cancel_futures(ctx):
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    first = ex.submit(_sleep_return, "first", 0.2)
    assert first.result(TIMEOUT) == "first"  # the worker is up
    rest = [ex.submit(_sleep_return, i, 0.2) for i in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    # What was handed to the worker already (the task it runs and the call
    # queue's max_workers + 1) runs to completion; the rest is cancelled
    # without running.
    ran = [f for f in rest if not f.cancelled()]
    assert len(ran) <= 3
    for f in ran:
        assert f.result(0) == rest.index(f)
    for f in rest:
        if f.cancelled():
            with pytest.raises(CancelledError):
                f.result(0)


def test_shutdown_without_wait_then_exit(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    fut = ex.submit(_sleep_return, "done", 0.2)
    ex.shutdown(wait=False)
    assert fut.result(TIMEOUT) == "done"


def test_killed_worker_breaks_pool(ctx, tmp_path):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    try:
        # The worker to kill is the first one, up before any other: the
        # stdlib's executor thread may miss the sentinel of a worker that
        # submit() starts while the thread is already waiting (a race in
        # concurrent.futures itself, whatever the context).
        first = ex.submit(_pid).result(TIMEOUT)
        # Both workers up, each blocked in a task.
        paths = [str(tmp_path / ("w%d" % i)) for i in range(2)]
        blocked = [ex.submit(_report_and_block, p) for p in paths]
        pids = [_wait_file(p) for p in paths]
        assert len(set(pids)) == 2 and first in pids
        queued = [ex.submit(_square, i) for i in range(5)]
        os.kill(first, signal.SIGKILL)
        # Every pending future fails, as the stdlib's, and the pool stays
        # broken.
        for f in blocked + queued:
            with pytest.raises(BrokenProcessPool):
                f.result(TIMEOUT)
        with pytest.raises(BrokenProcessPool):
            ex.submit(_square, 1)
    finally:
        ex.shutdown(wait=True)
    # No worker is left behind, running or unreaped.
    for pid in pids:
        assert _gone(pid)


# The same, as an unchanged program run with ``python -m fastmp``: the
# executor's call queue is then a subclass of fastmp's Queue.
_SCRIPT = '''
import json, os, signal, sys, threading, time
import concurrent.futures.process as cfp
import multiprocessing
import multiprocessing.queues
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

T = 60

def square(x):
    return x * x

def fail(x):
    raise ValueError("bad item %r" % (x,))

def pid(_=None):
    return os.getpid()

def init(v):
    global INIT
    INIT = v

def read_init(_):
    return INIT

def block(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(T)

def gone(p):
    try:
        os.kill(p, 0)
    except ProcessLookupError:
        return True
    return False

def report(**kw):
    print(json.dumps(kw), flush=True)

if __name__ == "__main__":
    report(
        mp=multiprocessing.__name__,
        method=multiprocessing.get_start_method(),
        queue=multiprocessing.queues.Queue.__module__,
        safe_queue_is_fastmp=issubclass(
            cfp._SafeQueue, sys.modules["fastmp.queues"].Queue),
    )
    with ProcessPoolExecutor(2, initializer=init, initargs=(5,)) as ex:
        report(
            submit=ex.submit(square, 7).result(T),
            map=list(ex.map(square, range(20), chunksize=3, timeout=T)),
            init=list(ex.map(read_init, range(4))),
        )
        try:
            ex.submit(fail, 3).result(T)
        except ValueError as e:
            report(exc=str(e), remote="fail" in str(e.__cause__))
        try:
            ex.submit(square, threading.Lock()).result(T)
        except TypeError as e:
            report(unpicklable="pickle" in str(e))
        report(after=ex.submit(square, 9).result(T))
    method = multiprocessing.get_start_method()
    if sys.version_info >= (3, 11) and method != "fork":
        with ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
            pids = [ex.submit(pid).result(T) for _ in range(4)]
        report(recycled=[pids.count(p) for p in dict.fromkeys(pids)])
    ex = ProcessPoolExecutor(1)
    first = ex.submit(time.sleep, 0.3)
    rest = [ex.submit(time.sleep, 0.3) for _ in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    report(first=first.result(0),
           cancelled=sum(f.cancelled() for f in rest) >= 8)
    ex = ProcessPoolExecutor(2)
    first = ex.submit(pid).result(T)  # (see test_killed_worker_breaks_pool)
    paths = [os.path.join(sys.argv[1], "w%d" % i) for i in range(2)]
    futs = [ex.submit(block, p) for p in paths]
    pids = []
    for p in paths:
        while not os.path.exists(p):
            time.sleep(0.01)
        with open(p) as f:
            pids.append(int(f.read()))
    os.kill(first, signal.SIGKILL)
    broken = 0
    for f in futs:
        try:
            f.result(T)
        except BrokenProcessPool:
            broken += 1
    ex.shutdown(wait=True)
    report(broken=broken, first_killed=first in pids,
           gone=[gone(p) for p in pids])
'''


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_plain_executor_under_python_m_fastmp(tmp_path, method):
    r = run_fastmp(
        tmp_path,
        _SCRIPT,
        str(tmp_path),
        opts=("--start-method", method),
        timeout=230,
    )
    assert r.returncode == 0, r.stderr
    # Nothing went wrong quietly (a manager thread's exception, say).
    assert "Traceback" not in r.stderr, r.stderr
    got = {}
    for line in r.stdout.splitlines():
        got.update(json.loads(line))
    expect = {
        "mp": "fastmp",
        "method": method,
        "queue": "fastmp.queues",
        "safe_queue_is_fastmp": True,
        "submit": 49,
        "map": [i * i for i in range(20)],
        "init": [5] * 4,
        "exc": "bad item 3",
        "remote": True,
        "unpicklable": True,
        "after": 81,
        "first": None,
        "cancelled": True,
        "broken": 2,
        "first_killed": True,
        "gone": [True, True],
    }
    if sys.version_info >= (3, 11) and method != "fork":
        expect["recycled"] = [2, 2]
    assert got == expect


def test_queue_subclass_feeder_error_hook(fctx):
    # The stdlib's hook for a subclass: called from put() with the error
    # and the item, which is dropped; the queue goes on.
    from fastmp.queues import Queue

    seen = []

    class SafeQueue(Queue):
        @staticmethod
        def _on_queue_feeder_error(e, obj):
            seen.append((type(e), obj))

    lock = threading.Lock()
    q = SafeQueue(ctx=fctx)
    q.put(lock)
    q.put_nowait(lock)
    q.put("after")
    assert [t for t, _ in seen] == [TypeError, TypeError]
    assert all(o is lock for _, o in seen)
    assert q.get(timeout=TIMEOUT) == "after"
    assert q.empty()
    # Picklable items go through unchanged, in order.
    for i in range(5):
        q.put({"i": i})
    assert [q.get(timeout=TIMEOUT) for _ in range(5)] == [
        {"i": i} for i in range(5)
    ]
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(lock)
    assert len(seen) == 2
    # The plain Queue still raises in put().
    plain = Queue(ctx=fctx)
    with pytest.raises(TypeError):
        plain.put(lock)


def test_queue_subclass_hook_calls_base(fctx, capfd):
    # As _SafeQueue does for items that are not its own: the base hook
    # prints the error, as the stdlib's feeder thread does.
    from fastmp.queues import Queue

    seen = []

    class LoggingQueue(Queue):
        def _on_queue_feeder_error(self, e, obj):
            seen.append(obj)
            super()._on_queue_feeder_error(e, obj)

    q = LoggingQueue(ctx=fctx)
    q.put(threading.Lock())
    q.put(1)
    assert q.get(timeout=TIMEOUT) == 1
    assert len(seen) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "TypeError" in err


def test_terminate_broken_closes(fctx):
    # What the stdlib's ProcessPoolExecutor calls on its call queue once a
    # worker died (3.12+; 3.11 closes ``_reader``).
    from fastmp.queues import Queue

    q = Queue(ctx=fctx)
    q.put(1)
    q._reader.close()
    q.put(2)  # closing the reading end does not stop puts
    q._terminate_broken()
    with pytest.raises(ValueError, match="is closed"):
        q.put(3)
    q._terminate_broken()  # twice, as the 3.12+ executor may
