"""``import fastmp as multiprocessing`` is a complete spelling: every
submodule a multiprocessing user imports by name exists as ``fastmp.X``.

Where fastmp has nothing of its own, ``fastmp.X`` is the stdlib's module
object itself, so state such as util's finalizer registry is shared.
"""

import importlib
import multiprocessing
import subprocess
import sys
import textwrap

import pytest
from support import TESTS, child_env, run_fastmp

# Modules fastmp takes from the stdlib as they are.
PASSTHROUGH = [
    "dummy",
    "dummy.connection",
    "util",
    "reduction",
    "heap",
    "spawn",
    "popen_fork",
    "popen_spawn_posix",
    "popen_forkserver",
    "resource_tracker",
    "resource_sharer",
    "forkserver",
]
# fastmp's own.
OWN = [
    "context",
    "managers",
    "process",
    "synchronize",
    "sharedctypes",
    "shared_memory",
    "connection",
    "queues",
    "pool",
]


@pytest.mark.parametrize("name", PASSTHROUGH + OWN)
def test_import_module(name):
    mod = importlib.import_module("fastmp." + name)
    assert sys.modules["fastmp." + name] is mod
    if name in PASSTHROUGH:
        assert mod is importlib.import_module("multiprocessing." + name)
    else:
        assert mod.__name__ == "fastmp." + name


def test_from_import_and_attributes():
    import fastmp.dummy.connection

    from fastmp import managers, pool, util
    from fastmp.dummy import connection

    assert pool.__name__ == "fastmp.pool"
    # The thread pool is the stdlib's, re-exported.
    assert pool.ThreadPool is multiprocessing.pool.ThreadPool
    # fastmp's own managers (its server talks to the stdlib's over the
    # same protocol).
    assert managers.SharedMemoryManager.__module__ == "fastmp.managers"
    assert managers.SyncManager is fastmp.managers.SyncManager
    assert util is multiprocessing.util
    assert connection is fastmp.dummy.connection
    assert fastmp.dummy.Pool is multiprocessing.dummy.Pool


def test_util_state_is_the_stdlibs():
    import fastmp.util

    class Obj:
        pass

    calls = []
    o = Obj()
    f = fastmp.util.Finalize(o, calls.append, args=(1,))
    assert f in multiprocessing.util._finalizer_registry.values()
    f()
    assert calls == [1]


def _run(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=TESTS,
        timeout=120,
    )


def test_plain_import_has_context_process_reduction():
    # As with ``import multiprocessing``: these are attributes at once.
    r = _run("""
        import sys, fastmp
        print(fastmp.reduction.__name__, fastmp.process.__name__,
              fastmp.context.__name__)
        print(hasattr(fastmp, "reduction"), "reduction" in dir(fastmp))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "multiprocessing.reduction",
        "fastmp.process",
        "fastmp.context",
        "True",
        "True",
    ]


def test_import_fastmp_stays_light():
    # The submodule attributes are loaded on first access, not by
    # ``import fastmp``.
    r = _run("""
        import sys
        before = set(sys.modules)
        import fastmp
        new = sorted(m for m in set(sys.modules) - before
                     if "multiprocessing" in m or m.startswith("fastmp."))
        print(new)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["util", "reduction", "heap"])
def test_under_python_m_fastmp(tmp_path, name):
    # ``import multiprocessing.X`` and ``import fastmp.X`` give one module.
    r = run_fastmp(
        tmp_path,
        f"""
        import multiprocessing.{name}
        import fastmp.{name}
        m = multiprocessing.{name}
        print(m is fastmp.{name}, m.__name__)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "multiprocessing." + name]


def test_no_fallback_pool_and_managers_are_fastmps():
    # FASTMP_NO_FALLBACK=1: nothing falls through to the stdlib's; the Pool
    # and the managers are fastmp's own, so both work.
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import fastmp
        with fastmp.Pool(1) as p:
            print(p.apply(abs, (-2,)), type(p).__module__)
        import fastmp.util, fastmp.reduction
        with fastmp.Manager() as m:
            d = m.dict(a=1)
            print(type(m).__module__, d["a"])
        print("ok")
    """),
        ],
        capture_output=True,
        text=True,
        cwd=TESTS,
        timeout=120,
        env=child_env(FASTMP_NO_FALLBACK="1"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2 fastmp.pool",
        "fastmp.managers 1",
        "ok",
    ]


def test_stdlib_names_are_forwarded():
    # fastmp's context and process answer for the stdlib module's names
    # they do not define (private helpers the stdlib's own modules import
    # from them), with the stdlib's objects; other names fail as usual.
    import multiprocessing.context
    import multiprocessing.process

    import fastmp.context
    import fastmp.process

    assert fastmp.process._children is multiprocessing.process._children
    assert fastmp.process._cleanup is multiprocessing.process._cleanup
    assert fastmp.context._tls is multiprocessing.context._tls
    for mod in (fastmp.context, fastmp.process):
        with pytest.raises(AttributeError, match=repr(mod.__name__)):
            mod.no_such_name  # noqa: B018
