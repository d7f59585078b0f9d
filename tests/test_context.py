"""Contexts and the top-level namespace of fastmp."""

import concurrent.futures
import multiprocessing
import subprocess
import sys
import textwrap

import pytest
from support import METHODS, TESTS, child_env

import fastmp


def _square(x):
    return x * x


def _child_start_method(conn):
    import fastmp

    conn.send(
        (fastmp.get_start_method(), type(fastmp.get_context()).__module__)
    )
    conn.close()


def run_py(code, env=None, timeout=120):
    e = child_env(**(env or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=TESTS,
    )


def test_all_matches_stdlib():
    assert fastmp.__all__ == multiprocessing.__all__
    for name in fastmp.__all__:
        assert hasattr(fastmp, name), name
    assert set(fastmp.__all__) <= set(dir(fastmp))


def test_from_import_every_name():
    ns = {}
    exec("from fastmp import *", ns)
    assert set(fastmp.__all__) <= set(ns)


def test_exceptions_are_the_stdlibs():
    for name in (
        "ProcessError",
        "BufferTooShort",
        "TimeoutError",
        "AuthenticationError",
    ):
        assert getattr(fastmp, name) is getattr(multiprocessing, name)
    assert issubclass(fastmp.BufferTooShort, fastmp.ProcessError)


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        fastmp.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from fastmp import no_such_name", {})


def test_contexts_are_fastmps():
    for m in METHODS:
        ctx = fastmp.get_context(m)
        assert type(ctx).__module__ == "fastmp.context"
        assert ctx.get_start_method() == m
        assert ctx.Process._start_method == m
        assert type(ctx.Process).__module__  # a class
        assert ctx.Process.__module__ == "fastmp.context"
        # Switching from one fastmp context to another stays in fastmp.
        for m2 in METHODS:
            assert fastmp.get_context(m).get_context(m2) is fastmp.get_context(
                m2
            )
    with pytest.raises(ValueError):
        fastmp.get_context("nope")
    assert (
        fastmp.get_all_start_methods()
        == multiprocessing.get_all_start_methods()
    )


def test_default_start_method_follows_python():
    r = run_py("""
        import fastmp, multiprocessing
        assert fastmp.get_start_method(allow_none=True) is None
        print(fastmp.get_start_method(), multiprocessing.get_start_method())
    """)
    assert r.returncode == 0, r.stderr
    a, b = r.stdout.split()
    assert a == b


def test_import_is_lazy():
    r = run_py("""
        import sys, fastmp
        print(sorted(m for m in sys.modules
                     if m.startswith(("multiprocessing", "fastmp."))))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("method", METHODS)
def test_set_start_method_is_fastmps(method):
    # fastmp.Process must follow fastmp's default context, not the
    # stdlib's, and the child's default is the method that started it.
    r = run_py(
        """
        import fastmp, multiprocessing, sys
        sys.path.insert(0, %r)
        from test_context import _child_start_method
        if __name__ == "__main__":
            fastmp.set_start_method(%r)
            try:
                fastmp.set_start_method("fork")
            except RuntimeError as e:
                print("again:", e)
            r, w = multiprocessing.Pipe(duplex=False)
            p = fastmp.Process(target=_child_start_method, args=(w,))
            p.start()
            w.close()
            print(*r.recv())
            p.join()
            print(type(p._popen).__module__.rsplit(".", 1)[-1], p.exitcode)
    """
        % (TESTS, method)
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "again: context has already been set"
    assert lines[1] == "%s fastmp.context" % method
    popen = {
        "fork": "popen_fork",
        "spawn": "popen_spawn_posix",
        "forkserver": "popen_forkserver",
    }[method]
    assert lines[2] == "%s 0" % popen


def test_set_start_method_force_none():
    r = run_py("""
        import fastmp
        fastmp.set_start_method("spawn")
        fastmp.set_start_method(None, force=True)
        print(fastmp.get_start_method(allow_none=True))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None"


def test_helpers():
    assert fastmp.cpu_count() == multiprocessing.cpu_count()
    assert fastmp.get_logger() is multiprocessing.get_logger()
    fastmp.freeze_support()  # a no-op outside frozen Windows programs
    fastmp.allow_connection_pickling()
    assert fastmp.current_process() is multiprocessing.current_process()
    assert fastmp.parent_process() is None
    assert fastmp.reducer is multiprocessing.reducer


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor(method):
    ctx = fastmp.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(_square, range(10))) == [x * x for x in range(10)]


def test_submodules():
    import fastmp.context
    import fastmp.process

    assert (
        fastmp.process.current_process
        is multiprocessing.process.current_process
    )
    assert fastmp.process.__all__ == multiprocessing.process.__all__
    assert fastmp.process.BaseProcess is multiprocessing.process.BaseProcess
    # The stdlib's modules import these from multiprocessing.context.
    for name in (
        "reduction",
        "assert_spawning",
        "get_spawning_popen",
        "set_spawning_popen",
        "BaseContext",
        "_force_start_method",
        "ProcessError",
    ):
        assert hasattr(fastmp.context, name), name
