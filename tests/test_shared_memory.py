"""SharedMemory: parity with the stdlib, and fastmp's fixes.

Cross-process cases run under every (implementation, start method) via
``ctx``; in-process API cases via ``mp``.  Behaviour where the stdlib is
wrong (gh-82300, close() with live views) is tested against fastmp alone.
"""

import gc
import importlib
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest
from support import TESTS, child_env, is_fastmp


def shm_module(obj):
    """The shared_memory module of the implementation behind obj."""
    pkg = "fastmp" if is_fastmp(obj) else "multiprocessing"
    return importlib.import_module(pkg + ".shared_memory")


def run_python(code, *args, timeout=60, python=sys.executable):
    """Run code in a fresh interpreter with this tree on the path."""
    env = child_env()
    return subprocess.run(
        [python, "-c", textwrap.dedent(code), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def shm_exists(name):
    return os.path.exists("/dev/shm/" + name.lstrip("/"))


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# ---- children (module level for spawn/forkserver) ----


def _child_write_by_name(impl, name, data):
    sm = importlib.import_module(impl + ".shared_memory")
    shm = sm.SharedMemory(name)
    shm.buf[: len(data)] = data
    shm.close()


def _child_write_obj(shm, data):
    shm.buf[: len(data)] = data
    shm.close()


def _impl_name(obj):
    return "fastmp" if is_fastmp(obj) else "multiprocessing"


# ---- in-process API ----


def test_create_attach_roundtrip(mp):
    sm = shm_module(mp)
    shm = sm.SharedMemory(create=True, size=512)
    try:
        assert not shm.name.startswith("/")
        assert shm.name.startswith("psm_")
        assert shm.size == 512
        assert len(shm.buf) == 512
        assert repr(shm) == f"SharedMemory({shm.name!r}, size=512)"
        shm.buf[:5] = b"howdy"
        other = sm.SharedMemory(shm.name)
        assert bytes(other.buf[:5]) == b"howdy"
        other.buf[0:1] = b"H"
        assert bytes(shm.buf[:5]) == b"Howdy"
        # size is ignored when attaching, as in the stdlib
        third = sm.SharedMemory(shm.name, size=20 * shm.size)
        assert third.size == shm.size
        third.close()
        other.close()
    finally:
        shm.close()
        shm.unlink()
    assert shm.buf is None
    shm.close()  # a second close is harmless
    assert not shm_exists(shm.name)


def test_named_create_and_exists(mp):
    sm = shm_module(mp)
    name = f"fmp_t_named_{os.getpid()}"
    shm = sm.SharedMemory(name, create=True, size=100)
    try:
        assert shm.name == name
        with pytest.raises(FileExistsError):
            sm.SharedMemory(name, create=True, size=100)
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        sm.SharedMemory(name)


def test_bad_inputs(mp):
    sm = shm_module(mp)
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        sm.SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        sm.SharedMemory(size=-2)
    with pytest.raises(ValueError, match="different from zero"):
        sm.SharedMemory(create=True, size=0)
    with pytest.raises(ValueError, match="different from zero"):
        sm.SharedMemory(create=True)
    with pytest.raises(ValueError, match="can only be None if create=True"):
        sm.SharedMemory(create=False)
    with pytest.raises(FileNotFoundError):
        sm.SharedMemory(f"fmp_t_not_there_{os.getpid()}")
    with pytest.raises(TypeError):
        sm.SharedMemory(create=True, size="10")
    with pytest.raises(TypeError):
        sm.SharedMemory(5)
    # embedded NUL: ValueError (3.13, fastmp everywhere); older stdlibs
    # pass the truncated name on and fail with FileNotFoundError
    exc = ValueError if is_fastmp(mp) else (ValueError, FileNotFoundError)
    with pytest.raises(exc):
        sm.SharedMemory("fmp_t_null\0a")


def test_pickle_by_name(mp):
    sm = shm_module(mp)
    shm = sm.SharedMemory(create=True, size=64)
    try:
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            shm.buf[:6] = b"pickle"
            other = pickle.loads(pickle.dumps(shm, protocol=proto))
            assert isinstance(other, sm.SharedMemory)
            assert other.name == shm.name
            other.buf[:6] = b"newval"
            assert bytes(shm.buf[:6]) == b"newval"
            other.close()
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(pickle.dumps(shm))


# ---- across processes ----


def test_across_processes(ctx):
    sm = shm_module(ctx)
    shm = sm.SharedMemory(create=True, size=512)
    try:
        p = ctx.Process(
            target=_child_write_by_name,
            args=(_impl_name(ctx), shm.name, b"howdy"),
        )
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert bytes(shm.buf[:5]) == b"howdy"
        p = ctx.Process(target=_child_write_obj, args=(shm, b"HELLO"))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert bytes(shm.buf[:5]) == b"HELLO"
        # the child's exit left the segment in place
        assert shm_exists(shm.name)
    finally:
        shm.close()
        shm.unlink()


# ---- fastmp-only: tracking (gh-82300) ----

ATTACH_AND_EXIT = """
import sys
from fastmp.shared_memory import SharedMemory
m = SharedMemory(sys.argv[1]{kw})
m.buf[0] = 7
m.close()
"""


@pytest.mark.parametrize("kw", ["", ", track=True", ", track=False"])
def test_attach_and_exit_never_unlinks(kw):
    from fastmp import shared_memory as sm

    shm = sm.SharedMemory(create=True, size=16)
    try:
        r = run_python(ATTACH_AND_EXIT.format(kw=kw), shm.name)
        assert r.returncode == 0, r.stderr
        assert "leaked" not in r.stderr
        assert shm_exists(shm.name)
        time.sleep(0.2)
        again = sm.SharedMemory(shm.name)
        assert again.buf[0] == 7
        again.close()
    finally:
        shm.close()
        shm.unlink()


def test_attach_in_fork_children_never_unlinks(fctx):
    from fastmp import shared_memory as sm

    shm = sm.SharedMemory(create=True, size=16)
    try:
        for _ in range(2):
            p = fctx.Process(
                target=_child_write_by_name, args=("fastmp", shm.name, b"x")
            )
            p.start()
            p.join(60)
            assert p.exitcode == 0
        assert shm_exists(shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_track_false_on_every_version():
    code = """
    from fastmp.shared_memory import SharedMemory
    m = SharedMemory(create=True, size=16, track=False)
    m.close()
    print(m.name)
    """
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    try:
        time.sleep(0.3)
        assert shm_exists(name)
        assert "leaked" not in r.stderr
    finally:
        os.unlink("/dev/shm/" + name)


def test_creator_exit_without_unlink_warns_and_cleans():
    code = """
    from fastmp.shared_memory import SharedMemory
    a = SharedMemory(create=True, size=16)
    b = SharedMemory(create=True, size=16)
    b.close()
    b.unlink()
    print(a.name)
    """
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert wait_until(lambda: not shm_exists(name))
    assert (
        "resource_tracker: There appear to be 1 leaked shared_memory "
        "objects to clean up at shutdown"
    ) in r.stderr


@pytest.mark.timeout(60)
def test_creator_killed_segment_cleaned():
    code = """
    import sys, time
    from fastmp.shared_memory import SharedMemory
    m = SharedMemory(create=True, size=16)
    print(m.name, flush=True)
    print("READY", flush=True)
    time.sleep(60)
    """
    env = child_env()
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as p:
        name = p.stdout.readline().strip()
        assert p.stdout.readline().strip() == "READY"
        assert shm_exists(name)
        p.kill()
        p.wait()
        assert wait_until(lambda: not shm_exists(name))
        err = p.stderr.read()
    assert "1 leaked shared_memory" in err


# ---- fastmp-only: close() with live views ----

CLOSE_WITH_VIEWS = """
from fastmp.shared_memory import SharedMemory
m = SharedMemory(create=True, size=4096)
view = m.buf[10:20]
m.close()
m.unlink()
assert m.buf is None
view[0] = 42
assert view[0] == 42
{extra}
del view
print("OK")
"""

NUMPY_EXTRA = """
import numpy as np
m2 = SharedMemory(create=True, size=8 * 1000)
arr = np.ndarray((1000,), dtype=np.int64, buffer=m2.buf)
arr[:] = np.arange(1000)
m2.close()
m2.unlink()
arr += 1
assert int(arr.sum()) == sum(range(1, 1001))
del arr
import gc; gc.collect()
"""


def test_close_with_live_memoryview_never_crashes():
    r = run_python(CLOSE_WITH_VIEWS.format(extra=""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"


def test_close_with_live_numpy_view_never_crashes():
    pytest.importorskip("numpy")
    r = run_python(CLOSE_WITH_VIEWS.format(extra=NUMPY_EXTRA))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"


# ---- leaks ----


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.timeout(120)
def test_no_leak_create_close_unlink():
    from fastmp import shared_memory as sm

    def cycle(n):
        for _ in range(n):
            m = sm.SharedMemory(create=True, size=4096)
            m.buf[0] = 1
            m.close()
            m.unlink()

    cycle(500)
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    shm_entries = set(os.listdir("/dev/shm"))
    rss = _rss_kb()
    cycle(10000)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    mine = [
        e
        for e in set(os.listdir("/dev/shm")) - shm_entries
        if e.startswith("psm_")
    ]
    # other engineers' tests may create psm_ entries concurrently; ours
    # are unlinked synchronously, so none of the 10,000 can remain
    # unless unlink failed, which would have raised.
    assert len(mine) < 50
    assert _rss_kb() - rss < 8 * 1024


def test_no_leak_drop_without_close():
    from fastmp import shared_memory as sm

    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(2000):
        m = sm.SharedMemory(create=True, size=4096)
        view = m.buf[:10]
        m.unlink()
        del m, view
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    with open("/proc/self/maps") as f:
        assert f.read().count("/dev/shm/psm_") < 10


# ---- CPython's own _TestSharedMemory with fastmp substituted ----


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_cpython_test_shared_memory(method):
    pytest.importorskip("test._test_multiprocessing")
    script = os.path.join(TESTS, "cpython_shared_memory.py")
    env = child_env()
    r = subprocess.run(
        [sys.executable, script, method],
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\nOK" in r.stderr


def test_tracker_program_on_its_own():
    # fastmp/_shm_tracker.py runs as the creator starts it (python -I -S
    # <file>: no fastmp on the path), reading the table at fd 3 and the
    # +name / -name lines on stdin; at the end of stdin it unlinks what is
    # still registered, and warns once.
    from fastmp import shared_memory as fsm

    segs = [fsm.SharedMemory(create=True, size=16, track=False)]
    segs += [fsm.SharedMemory(create=True, size=16, track=False)]
    segs += [fsm.SharedMemory(create=True, size=16, track=False)]
    in_table, over_pipe, forgotten = ("/" + m.name for m in segs)
    table = os.memfd_create("tracker-test")
    try:
        os.ftruncate(table, 4 * 512)
        # Slot 1 is taken (first byte 1, name from byte 4); slot 2 is free
        # but holds a stale name, which must not be unlinked.
        os.pwrite(table, b"\x01\0\0\0" + in_table.encode() + b"\0", 512)
        os.pwrite(table, b"\x00\0\0\0" + forgotten.encode() + b"\0", 1024)
        lines = "+%s\n+%s\n-%s\n" % (over_pipe, forgotten, forgotten)
        r_in, w_in = os.pipe()
        r_err, w_err = os.pipe()
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", fsm._TRACKER],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r_in, 0),
                (os.POSIX_SPAWN_DUP2, w_err, 2),
                (os.POSIX_SPAWN_DUP2, table, 3),
            ],
        )
        os.close(r_in)
        os.close(w_err)
        with open(w_in, "wb") as f:
            f.write(lines.encode())
        with open(r_err, "rb") as f:
            err = f.read().decode()
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(table)
    try:
        assert status == 0, err
        assert not shm_exists(segs[0].name)
        assert not shm_exists(segs[1].name)
        assert shm_exists(segs[2].name)
        assert err.count("leaked shared_memory") == 1, err
        assert "There appear to be 2 leaked" in err
    finally:
        for m in segs:
            m.close()
            if shm_exists(m.name):
                m.unlink()
