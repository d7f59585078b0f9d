"""Process API parity: the same body against multiprocessing and fastmp,
under fork, spawn and forkserver (the ``ctx`` fixture)."""

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time

import pytest
from support import IMPLS, METHODS

import fastmp

# ---------------------------------------------------------------- helpers
# Everything a child runs is module-level so spawn/forkserver can pickle it.


def _noop():
    pass


def _sleep(t):
    time.sleep(t)


def _exit_with(code):
    sys.exit(code)


def _raise():
    sys.stderr = open(os.devnull, "w")  # keep the test output quiet
    raise RuntimeError("boom in child")


def _report(q_conn, impl):
    mod = __import__(impl)
    cur = mod.current_process()
    par = mod.parent_process()
    q_conn.send(
        {
            "name": cur.name,
            "pid": os.getpid(),
            "ident": cur.ident,
            "authkey": bytes(cur.authkey),
            "daemon": cur.daemon,
            "parent_pid": par.pid if par is not None else None,
            "parent_name": par.name if par is not None else None,
            "start_method": mod.get_start_method(),
            "active_children": len(mod.active_children()),
        }
    )
    q_conn.close()


def _send_args(conn, *args, **kwargs):
    conn.send((args, kwargs))
    conn.close()


def _pipe(ctx):
    # A plain stdlib pipe: these tests are about Process, not Connection.
    return multiprocessing.Pipe(duplex=False)


def _make_subclasses():
    """Module-level Process subclasses, one per (impl, method), so that
    spawn and forkserver can pickle them by name."""
    out = {}
    for impl in IMPLS:
        for method in METHODS:
            base = __import__(impl).get_context(method).Process
            name = "Sub_%s_%s" % (impl, method)

            def __init__(self, conn, value):
                type(self).__mro__[1].__init__(self)
                self.conn = conn
                self.value = value

            def run(self):
                self.conn.send(
                    (self.value * 2, type(self).__name__, self.name)
                )
                self.conn.close()

            cls = type(
                name,
                (base,),
                {"__init__": __init__, "run": run, "__module__": __name__},
            )
            cls.__qualname__ = name
            globals()[name] = out[(impl, method)] = cls
    return out


SUBCLASSES = _make_subclasses()


def _impl_method(ctx):
    impl = (
        "fastmp"
        if type(ctx).__module__.startswith("fastmp")
        else "multiprocessing"
    )
    return impl, ctx.get_start_method()


# ---------------------------------------------------------------- tests


def test_context_process_class(ctx):
    impl, method = _impl_method(ctx)
    p = ctx.Process(target=_noop)
    assert type(p).__module__.startswith(impl)
    assert p._start_method == method
    assert isinstance(p, multiprocessing.process.BaseProcess)


def test_start_join_exitcode(ctx):
    p = ctx.Process(target=_noop, name="worker-1")
    assert p.exitcode is None
    assert not p.is_alive()
    assert p.pid is None and p.ident is None
    assert "initial" in repr(p)
    p.start()
    assert isinstance(p.pid, int) and p.pid == p.ident
    assert isinstance(p.sentinel, int)
    p.join()
    assert p.exitcode == 0
    assert not p.is_alive()
    assert p.name == "worker-1"
    assert "stopped" in repr(p)
    with pytest.raises(AssertionError):
        p.start()
    p.close()
    with pytest.raises(ValueError):
        _ = p.pid
    p.close()  # a second close is fine


def test_join_timeout_terminate(ctx):
    p = ctx.Process(target=_sleep, args=(30,), daemon=True)
    p.start()
    t0 = time.monotonic()
    p.join(0.2)
    assert time.monotonic() - t0 < 5
    assert p.is_alive()
    assert p.exitcode is None
    assert "started" in repr(p)
    with pytest.raises(ValueError):
        p.close()  # cannot close a running process
    p.terminate()
    p.join(10)
    assert p.exitcode == -signal.SIGTERM
    assert not p.is_alive()


def test_kill(ctx):
    p = ctx.Process(target=_sleep, args=(30,))
    p.start()
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def test_exitcodes(ctx):
    procs = [
        ctx.Process(target=_exit_with, args=(a,))
        for a in (0, 3, "message", None)
    ]
    procs.append(ctx.Process(target=_raise))
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 3, 1, 0, 1]


def test_child_sees_itself_and_parent(ctx):
    impl, method = _impl_method(ctx)
    r, w = _pipe(ctx)
    p = ctx.Process(target=_report, args=(w, impl), name="reporter")
    assert not p.daemon
    p.start()
    w.close()
    info = r.recv()
    p.join(30)
    assert p.exitcode == 0
    assert info["name"] == "reporter"
    assert info["pid"] == p.pid == info["ident"]
    assert info["authkey"] == bytes(p.authkey)
    assert bytes(p.authkey) == bytes(ctx.current_process().authkey)
    assert info["parent_pid"] == os.getpid()
    assert info["parent_name"] == ctx.current_process().name
    assert info["start_method"] == method
    assert info["active_children"] == 0


def test_current_parent_active_children(ctx):
    assert ctx.current_process().name == "MainProcess"
    assert ctx.parent_process() is None
    p = ctx.Process(target=_sleep, args=(30,), daemon=True)
    p.start()
    try:
        assert p in ctx.active_children()
        # One process tree: both packages see the same children.
        assert p in multiprocessing.active_children()
        assert p in fastmp.active_children()
    finally:
        p.terminate()
        p.join(10)
    assert p not in ctx.active_children()


def test_daemon_flag(ctx):
    p = ctx.Process(target=_noop)
    p.daemon = True
    assert p.daemon
    p.start()
    with pytest.raises(AssertionError):
        p.daemon = False
    p.join(30)
    assert p.exitcode == 0


def test_args_kwargs(ctx):
    r, w = _pipe(ctx)
    p = ctx.Process(
        target=_send_args, args=(w, 1, "two"), kwargs={"three": [3]}
    )
    p.start()
    w.close()
    assert r.recv() == ((1, "two"), {"three": [3]})
    p.join(30)


def test_subclass_run(ctx):
    impl, method = _impl_method(ctx)
    cls = SUBCLASSES[(impl, method)]
    r, w = _pipe(ctx)
    p = cls(w, 21)
    p.start()
    w.close()
    value, clsname, name = r.recv()
    p.join(30)
    assert (value, clsname) == (42, cls.__name__)
    assert name == p.name
    assert p.exitcode == 0


def _local_target_process(ctx):
    def local():
        pass

    return ctx.Process(target=local)


def test_unpicklable_target_fails_at_start(ctx):
    impl, method = _impl_method(ctx)
    if method == "fork":
        pytest.skip("fork does not pickle the target")
    p = _local_target_process(ctx)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        p.start()
    assert p.pid is None
    assert p not in ctx.active_children()


def test_unpicklable_argument_fails_at_start(ctx):
    impl, method = _impl_method(ctx)
    if method == "fork":
        pytest.skip("fork does not pickle the arguments")
    p = ctx.Process(target=_sleep, args=(threading.Lock(),))
    with pytest.raises(TypeError):
        p.start()
    assert p.pid is None


def test_join_current_process_and_unstarted(ctx):
    with pytest.raises(AssertionError):
        ctx.current_process().join()
    with pytest.raises(AssertionError):
        ctx.Process(target=_noop).join()


def test_bad_arguments(ctx):
    with pytest.raises(TypeError):
        ctx.Process(target=_noop, unknown=1)
    with pytest.raises(AssertionError):
        ctx.Process(group=object())
    p = ctx.Process(target=_noop)
    with pytest.raises(AssertionError):
        p.name = 3


def test_sentinel_ready_after_exit(ctx):
    from multiprocessing.connection import wait

    p = ctx.Process(target=_sleep, args=(0.1,))
    p.start()
    assert wait([p.sentinel], timeout=30) == [p.sentinel]
    p.join()
    assert p.exitcode == 0
