"""``python -m fastmp``: runs unchanged multiprocessing scripts on fastmp,
in the parent and in every child, under each start method."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from support import METHODS, TESTS, fastmp_env, python_m_fastmp, run_fastmp

import fastmp
from fastmp import _alias


def fastmp_has(name):
    # fastmp's own module, not one that hands out the stdlib's.
    return _alias._fastmp_has(name)


MISSING = sorted(n for n in _alias.MIRRORED if not fastmp_has(n))
PRESENT = sorted(n for n in _alias.MIRRORED if fastmp_has(n))

IDENTITY = """
    import json, os, sys
    import multiprocessing
    import multiprocessing.context
    from multiprocessing import Process, current_process
    SUBS = %r

    def identity():
        import multiprocessing
        out = {"top": multiprocessing.__name__,
               "process_cls": Process.__module__,
               "main": __name__}
        for sub in SUBS:
            mod = __import__("multiprocessing." + sub, fromlist=["x"])
            out[sub] = mod.__name__
            sysmod = sys.modules["multiprocessing." + sub]
            out[sub + ":sysmod"] = sysmod.__name__
        return out

    def child(conn):
        conn.send(identity())
        conn.close()

    if __name__ == "__main__":
        results = {"parent": identity()}
        for m in %r:
            ctx = multiprocessing.get_context(m)
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=child, args=(w,))
            p.start()
            w.close()
            results[m] = r.recv()
            p.join()
            assert p.exitcode == 0
        print(json.dumps(results))
"""


def test_identity_parent_and_children(tmp_path):
    subs = sorted(_alias.MIRRORED)
    r = run_fastmp(tmp_path, IDENTITY % (subs, METHODS))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"parent", *METHODS}
    for where, ident in res.items():
        assert ident["top"] == "fastmp", where
        assert ident["process_cls"] == "fastmp.context", where
        assert ident["main"] == (
            "__main__" if where in ("parent", "fork") else "__mp_main__"
        ), where
        for sub in subs:
            # fastmp's module where fastmp has one, the stdlib's otherwise.
            want = ("fastmp." if sub in PRESENT else "multiprocessing.") + sub
            assert ident[sub] == want, (where, sub)
            assert ident[sub + ":sysmod"] == want, (where, sub)


def test_nested_spawn_children_stay_aliased(tmp_path):
    r = run_fastmp(
        tmp_path,
        """
        import multiprocessing as mp

        def grandchild(conn):
            import multiprocessing
            conn.send(multiprocessing.__name__)

        def child(conn):
            ctx = mp.get_context("spawn")
            p = ctx.Process(target=grandchild, args=(conn,))
            p.start()
            p.join()

        if __name__ == "__main__":
            ctx = mp.get_context("forkserver")
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=child, args=(w,))
            p.start()
            print(r.recv())
            p.join()
            print(p.exitcode)
    """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fastmp", "0"]


def test_argv_main_and_exit_code(tmp_path):
    r = run_fastmp(
        tmp_path,
        """
        import sys, os
        print(__name__, os.path.basename(sys.argv[0]), sys.argv[1:])
        print(os.path.basename(sys.path[0]) == os.path.basename(
            os.path.dirname(os.path.abspath(__file__))))
        sys.exit(7)
    """,
        "a",
        "--b",
    )
    assert r.returncode == 7, r.stderr
    assert r.stdout.splitlines() == ["__main__ script.py ['a', '--b']", "True"]


def test_traceback_like_python(tmp_path):
    src = """
        def f():
            raise ValueError("boom")
        f()
    """
    r = run_fastmp(tmp_path, src)
    plain = subprocess.run(
        [sys.executable, str(tmp_path / "script.py")],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert r.returncode == plain.returncode == 1
    assert r.stderr == plain.stderr
    assert "fastmp" not in r.stderr


def test_stdout_flushed_before_children_finalize(tmp_path):
    # Buffered output of the parent comes before the output a non-daemon
    # child prints while the parent's atexit handlers join it, exactly as
    # with plain python.
    src = """
        import multiprocessing, time
        def f():
            time.sleep(0.3)
            print("child")
        if __name__ == "__main__":
            multiprocessing.Process(target=f).start()
            print("parent")
    """
    r = run_fastmp(tmp_path, src, env={"PYTHONUNBUFFERED": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["parent", "child"]


@pytest.mark.parametrize("method", METHODS)
def test_start_method_option(tmp_path, method):
    r = run_fastmp(
        tmp_path,
        """
        import multiprocessing
        def f(conn):
            conn.send(multiprocessing.get_start_method())
        if __name__ == "__main__":
            print(multiprocessing.get_start_method())
            r, w = multiprocessing.Pipe(duplex=False)
            p = multiprocessing.Process(target=f, args=(w,))
            p.start()
            print(r.recv())
            p.join()
    """,
        opts=["--start-method", method],
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [method, method]


def test_script_may_still_set_start_method(tmp_path):
    r = run_fastmp(
        tmp_path,
        """
        import multiprocessing
        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            print(multiprocessing.get_start_method())
    """,
        opts=["--start-method=forkserver"],
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["spawn"]


def test_module_option(tmp_path):
    (tmp_path / "mymod.py").write_text(
        textwrap.dedent("""
        import sys, multiprocessing
        def f():
            import multiprocessing
            assert multiprocessing.__name__ == "fastmp"
        if __name__ == "__main__":
            p = multiprocessing.get_context("spawn").Process(target=f)
            p.start(); p.join()
            print(multiprocessing.__name__, sys.argv[1:], p.exitcode)
    """)
    )
    r = python_m_fastmp("-m", "mymod", "x", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fastmp", "['x']", "0"]


def test_usage_errors(tmp_path):
    for args in (
        [],
        ["--start-method"],
        ["--start-method", "bogus", "x.py"],
        ["--bogus", "x.py"],
    ):
        r = python_m_fastmp(*args, cwd=tmp_path, timeout=60)
        assert r.returncode != 0, args
        assert r.stdout == ""
    r = python_m_fastmp("missing.py", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "can't open file" in r.stderr


FALLTHROUGH = """
    import multiprocessing
    import multiprocessing.{sub} as mod
    from multiprocessing import Process
    def f():
        pass
    if __name__ == "__main__":
        p = Process(target=f); p.start(); p.join(5)
        print(mod.__name__, p.exitcode)
"""


@pytest.mark.skipif(not MISSING, reason="fastmp implements every module")
def test_fall_through_to_stdlib(tmp_path):
    sub = MISSING[0]
    r = run_fastmp(tmp_path, FALLTHROUGH.format(sub=sub))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["multiprocessing." + sub, "0"]


@pytest.mark.skipif(not MISSING, reason="fastmp implements every module")
def test_no_fallback_refuses_missing_module(tmp_path):
    for sub in MISSING:
        r = run_fastmp(
            tmp_path,
            FALLTHROUGH.format(sub=sub),
            env={"FASTMP_NO_FALLBACK": "1"},
        )
        assert r.returncode == 1, (sub, r.stderr)
        assert "ModuleNotFoundError" in r.stderr, (sub, r.stderr)
        assert "FASTMP_NO_FALLBACK" in r.stderr
        r = run_fastmp(
            tmp_path,
            f"""
            import multiprocessing
            try:
                from multiprocessing import {sub}
            except ImportError:
                print("ImportError")
            try:
                multiprocessing.{sub}
            except AttributeError:
                print("AttributeError")
        """,
            env={"FASTMP_NO_FALLBACK": "1"},
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["ImportError", "AttributeError"], sub


@pytest.mark.skipif("pool" not in MISSING, reason="fastmp has its own pool")
def test_no_fallback_refuses_the_stdlibs_own_modules_too(tmp_path):
    # No importer is exempt: the stdlib's dummy.Pool() builds on the
    # stdlib's pool, and is refused as the script's own import would be;
    # without the variable it works.
    src = """
        import multiprocessing.dummy
        try:
            with multiprocessing.dummy.Pool(1) as p:
                print(p.map(abs, [-1]))
        except ImportError as e:
            print(type(e).__name__, "FASTMP_NO_FALLBACK" in str(e))
    """
    r = run_fastmp(tmp_path, src, env={"FASTMP_NO_FALLBACK": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ModuleNotFoundError", "True"]
    r = run_fastmp(tmp_path, src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[1]"]


def test_no_fallback_factory_raises(tmp_path):
    missing = [
        n for n in ("queues", "connection", "synchronize") if n in MISSING
    ]
    if not missing:
        pytest.skip("fastmp implements queues, connection and synchronize")
    call = {
        "queues": "multiprocessing.Queue()",
        "connection": "multiprocessing.Pipe()",
        "synchronize": "multiprocessing.Lock()",
    }[missing[0]]
    r = run_fastmp(
        tmp_path,
        """
        import multiprocessing
        try:
            %s
        except ImportError as e:
            print("ImportError")
    """
        % call,
        env={"FASTMP_NO_FALLBACK": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ImportError"]


@pytest.mark.parametrize("method", METHODS)
def test_no_fallback_process_api(tmp_path, method):
    # Process, join(timeout), terminate, sentinel: everything that needs
    # only what fastmp provides works with no fall-through, in every child.
    r = run_fastmp(
        tmp_path,
        """
        import time, sys
        import multiprocessing
        from multiprocessing import Process
        def f(x):
            import multiprocessing
            assert multiprocessing.__name__ == "fastmp"
            time.sleep(x)
        if __name__ == "__main__":
            ctx = multiprocessing.get_context(%r)
            p = ctx.Process(target=f, args=(30,)); p.start()
            p.join(0.1)
            assert p.is_alive()
            p.terminate(); p.join()
            q = ctx.Process(target=f, args=(0,)); q.start(); q.join(30)
            print(p.exitcode, q.exitcode)
    """
        % method,
        env={"FASTMP_NO_FALLBACK": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-15", "0"]


@pytest.mark.timeout(60)
def test_ctrl_c_in_join(tmp_path):
    # Ctrl-C while the script waits in join(): KeyboardInterrupt, and the
    # same exit status as plain python, within a bound.
    import signal
    import time

    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import multiprocessing, time
        def f():
            time.sleep(60)
        if __name__ == "__main__":
            p = multiprocessing.Process(target=f, daemon=True)
            p.start()
            print("READY", flush=True)
            p.join()
    """)
    )
    codes = []
    for cmd in (
        [sys.executable, "-m", "fastmp", str(script)],
        [sys.executable, str(script)],
    ):
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=fastmp_env(),
            cwd=str(tmp_path),
        )
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("%s did not stop on SIGINT" % cmd)
        assert time.monotonic() - t0 < 5
        assert "KeyboardInterrupt" in err
        codes.append(proc.returncode)
    assert codes[0] == codes[1]


@pytest.mark.timeout(300)
def test_cpython_suite_runner():
    # The conformance runner itself: one small class, its last line, and
    # the honesty table (a class counts only when its objects are fastmp's).
    pytest.importorskip("test._test_multiprocessing")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(TESTS, "cpython_suite.py"),
            "--start-method",
            "fork",
            "--classes",
            "_TestSubclassingProcess",
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        env=fastmp_env(),
        timeout=280,
    )
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("3 passed, 0 failed, 0 skipped, 0 not "), (
        r.stdout + r.stderr
    )
    assert "_TestSubclassingProcess" in r.stdout
    row = [
        ln for ln in lines if ln.strip().startswith("_TestSubclassingProcess")
    ]
    assert len(row) == 1 and row[0].rstrip().endswith("fastmp"), lines
    assert r.returncode == 0


@pytest.mark.parametrize("method", METHODS)
def test_fastmp_module_built_on_stdlib_namesake(tmp_path, method):
    # A fastmp module that reuses its stdlib namesake (here a pool.py that
    # wraps multiprocessing.pool) gets the stdlib's module, not itself, and
    # the stdlib objects it hands out still pickle to every child.
    import shutil

    pkg = tmp_path / "site" / "fastmp"
    shutil.copytree(
        os.path.dirname(fastmp.__file__),
        str(pkg),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if fastmp_has("pool"):
        pytest.skip("fastmp has its own pool module")
    (pkg / "pool.py").write_text(
        textwrap.dedent("""
        import multiprocessing.pool as _std
        Pool = _std.Pool
    """)
    )
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import multiprocessing, multiprocessing.pool
        def sq(x):
            return x * x
        if __name__ == "__main__":
            print(multiprocessing.pool.__name__,
                  multiprocessing.pool._std.__name__)
            with multiprocessing.Pool(2) as p:
                print(p.map(sq, range(5)))
    """)
    )
    env = fastmp_env(PYTHONPATH=str(tmp_path / "site"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastmp",
            "--start-method",
            method,
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "fastmp.pool multiprocessing.pool",
        "[0, 1, 4, 9, 16]",
    ]


_EXECUTOR_SCRIPT = '''
import concurrent.futures, multiprocessing, sys

def square(x):
    return x * x

if __name__ == "__main__":
    m = sys.argv[1]
    ctx = multiprocessing.get_context(m)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        print(list(ex.map(square, range(5))))
    with ctx.Pool(2) as p:
        print(p.map(square, range(5)))
    print(multiprocessing.__name__)
    # Still fastmp's after the stdlib's pools took the stdlib's SimpleQueue.
    from multiprocessing.queues import Queue
    print(sys.modules["multiprocessing.queues"].__name__, Queue.__module__)
'''


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_stdlib_pools_under_python_m_fastmp(tmp_path, method):
    # ProcessPoolExecutor and the stdlib's Pool subclass or drive
    # multiprocessing.queues objects by name; under aliasing those names are
    # fastmp's, and both must still work in every start method.
    script = tmp_path / "pools.py"
    script.write_text(_EXECUTOR_SCRIPT)
    r = subprocess.run(
        [sys.executable, "-m", "fastmp", str(script), method],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == [
        "[0, 1, 4, 9, 16]",
        "[0, 1, 4, 9, 16]",
        "fastmp",
        "fastmp.queues fastmp.queues",
    ]


# ---- python -m fastmp is the interpreter's twin -------------------------

_INTROSPECT = """
import os, sys
print(repr(__file__), sys.argv, os.path.realpath(sys.path[0] or "."))
"""


def _both(tmp_path, args, cwd=None):
    """(python ARGS, python -m fastmp ARGS), from ``cwd``."""
    cwd = str(cwd or tmp_path)
    env = fastmp_env()
    plain = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    fm = subprocess.run(
        [sys.executable, "-m", "fastmp", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return plain, fm


@pytest.mark.parametrize("rel", ["s.py", "sub/s.py", "./sub/../s.py"])
def test_script_file_argv_and_path_as_python(tmp_path, rel):
    (tmp_path / "sub").mkdir()
    (tmp_path / "s.py").write_text(_INTROSPECT)
    (tmp_path / "sub" / "s.py").write_text(_INTROSPECT)
    plain, fm = _both(tmp_path, [rel, "a"])
    assert plain.returncode == fm.returncode == 0, fm.stderr
    assert fm.stdout == plain.stdout
    # As the interpreter does since 3.9: __file__ is absolute.
    assert fm.stdout.startswith(repr(os.path.join(str(tmp_path), rel)))


def test_script_dirname_file_pattern(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    (tmp_path / "s.py").write_text(
        textwrap.dedent("""
        import os
        here = os.path.dirname(__file__)
        with open(os.path.join(here, "data.txt")) as f:
            print(f.read())
    """)
    )
    os.mkdir(str(tmp_path / "elsewhere"))
    # Relative to a working directory that the script then leaves.
    (tmp_path / "s.py").write_text(
        "import os\nos.chdir('/')\n" + (tmp_path / "s.py").read_text()
    )
    plain, fm = _both(tmp_path, ["s.py"])
    assert plain.stdout == fm.stdout == "hello\n", fm.stderr


def test_traceback_of_a_relative_script_like_python(tmp_path):
    (tmp_path / "s.py").write_text(
        textwrap.dedent("""
        def f():
            raise ValueError("boom")
        f()
    """)
    )
    plain, fm = _both(tmp_path, ["s.py"])
    assert plain.returncode == fm.returncode == 1
    assert fm.stderr == plain.stderr
    assert str(tmp_path / "s.py") in fm.stderr


def test_dash_c(tmp_path):
    code = textwrap.dedent("""
        import sys, multiprocessing
        print(sys.argv, repr(sys.path[0]), "__file__" in globals(),
              __name__)
        print(multiprocessing.__name__)
    """)
    plain, fm = _both(tmp_path, ["-c", code, "x", "-y"])
    assert plain.returncode == fm.returncode == 0, fm.stderr
    p, f = plain.stdout.splitlines(), fm.stdout.splitlines()
    assert f[0] == p[0] == "['-c', 'x', '-y'] '' False __main__"
    assert (p[1], f[1]) == ("multiprocessing", "fastmp")
    plain, fm = _both(tmp_path, ["-c", "1/0"])
    assert plain.returncode == fm.returncode == 1
    assert fm.stderr == plain.stderr


def test_dash_m_argv_as_python(tmp_path):
    (tmp_path / "mod.py").write_text(
        textwrap.dedent("""
        import os, sys
        print(sys.argv, __name__, repr(__file__))
    """)
    )
    plain, fm = _both(tmp_path, ["-m", "mod", "a", "--b"])
    assert plain.returncode == fm.returncode == 0, fm.stderr
    assert fm.stdout == plain.stdout
    assert fm.stdout.startswith(
        "[%r, 'a', '--b'] __main__" % str(tmp_path / "mod.py")
    )


def test_version_and_help(tmp_path):
    r = python_m_fastmp("--version", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[:2] == ["fastmp", fastmp.__version__]
    r = python_m_fastmp("--help", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = r.stdout
    assert out.count("usage: python -m fastmp") == 1, out
    for opt in (
        "--start-method",
        "-c CODE",
        "-m module",
        "--version",
        "--help",
    ):
        assert opt in out
    assert max(len(ln) for ln in out.splitlines()) <= 79


_CHILD_FAILS = """
import multiprocessing, sys

def target():
    raise ValueError("child boom")

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    # A target the child cannot find (defined under __main__ only):
    # unpickling fails before the child's own code runs.
    if sys.argv[2] == "unpicklable":
        def g():
            pass
        g.__qualname__ = "g_missing"
        import __main__
        __main__.g_missing = g
        tgt = g
    else:
        tgt = target
    p = ctx.Process(target=tgt)
    p.start()
    p.join()
    print("exit", p.exitcode)
"""


@pytest.mark.parametrize("what", ["raises", "unpicklable"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "fork"])
def test_child_traceback_has_no_fastmp_frames(tmp_path, method, what):
    (tmp_path / "s.py").write_text(_CHILD_FAILS)
    plain, fm = _both(tmp_path, ["s.py", method, what])
    assert plain.returncode == fm.returncode == 0, fm.stderr
    assert plain.stdout == fm.stdout == "exit 1\n"
    assert "Traceback" in plain.stderr
    assert fm.stderr == plain.stderr
    assert "fastmp" not in fm.stderr
