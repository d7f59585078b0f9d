"""Cluster mode (docs/cluster.md): fastmp's Pool on a real Dask
LocalCluster on loopback (a scheduler and worker processes), and
``python -m fastmp --cluster`` on unchanged scripts, against a local
cluster and against a scheduler and workers started separately.

The in-process tests share one LocalCluster of two workers (one client per
address per process: every ``Pool(cluster="local:2")`` here reuses it)."""

import contextlib
import importlib.util
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from support import ROOT, SHARED, child_env, python_m_fastmp

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason="Dask distributed is not installed (pip install 'fastmp[cluster]')",
)

import fastmp  # noqa: E402
from fastmp.pool import (  # noqa: E402
    PoolTerminatedError,
    RemoteTraceback,
    WorkerLostError,
)

ADDRESS = "local:2"
LECTURE = os.path.join(SHARED, "lecture-examples", "s001_06_pool_map_cube.py")
PRIMES = os.path.join(ROOT, "examples", "cluster_primes.py")


@pytest.fixture(scope="module")
def pool():
    p = fastmp.Pool(cluster=ADDRESS)
    yield p
    p.terminate()


@pytest.fixture(scope="module", autouse=True)
def _cluster_goes_with_the_module():
    # What cluster mode leaves in this process goes with this module, so
    # that later tests see none of it: the local cluster's scheduler and
    # worker processes (kept for the run otherwise), and the reducers
    # importing Dask's distributed registers in copyreg (tblib's, for every
    # exception class: pickles of exceptions would then name tblib, which
    # a peer interpreter without it cannot load).
    import copyreg

    reducers = dict(copyreg.dispatch_table)
    yield
    from fastmp import _cluster

    _cluster.close_clients()
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(reducers)


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError("bad item %d" % x)
    return x


def sleep_return(x):
    time.sleep(x)
    return x


_init_value = None


def set_init(value):
    global _init_value
    _init_value = (value, os.getpid())


def get_init(_):
    return _init_value


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling for you")


def make_unpicklable(_):
    return Unpicklable()


# ------------------------------------------- the Pool parity tests, here

# test_pool.py's parity tests that make sense across machines, run as they
# are with a cluster pool (a context whose Pool() is one).  Left out, with
# the reason: test_pickling_errors (a lambda result travels in cluster
# mode), test_names_repr_and_size, test_default_size and every test of
# worker processes (Pool._pool lists the cluster's worker addresses, the
# cluster sizes itself), maxtasksperchild (ignored: Dask's workers live as
# long as the cluster), the dead-worker tests (Dask retries first; see
# test_killed_worker), Ctrl-C (a program of its own here: see
# test_ctrl_c_ends_a_waiting_map).
PARITY = [
    ("test_apply", {}),
    ("test_map_and_starmap", {}),
    ("test_map_keeps_every_item_and_its_type", {}),
    ("test_map_callbacks_run_before_wait_returns", {}),
    ("test_callback_without_a_waiter", {}),
    ("test_threads_share_a_pool", {}),
    ("test_callback_that_waits_for_another_result", {}),
    ("test_map_fails_as_a_whole_after_every_chunk", {}),
    ("test_imap", {}),
    ("test_imap_input_raising", {}),
    ("test_remote_traceback", {}),
    ("test_misuse_errors", {}),
    ("test_initializer_and_initargs", {}),
    ("test_terminate_fails_pending_results", {}),
    ("test_imap_buffersize_arguments", {}),
] + [
    (
        "test_imap_buffersize_infinite_input",
        {"unordered": unordered, "chunksize": chunksize},
    )
    for unordered in (False, True)
    for chunksize in (1, 3)
]


class ClusterContext(type(fastmp.get_context())):
    """fastmp's context, but its Pool() is a cluster pool on ADDRESS.
    (Named as fastmp's own, which test_pool's helpers look at to find the
    pool module.)"""

    __module__ = "fastmp.context"

    def Pool(self, *args, **kwds):
        return fastmp.Pool(*args, cluster=ADDRESS, **kwds)


def _restart_busy_workers():
    # A test that left tasks running (naps of 30 or 60 s, which a
    # terminated cluster pool cannot interrupt: the scheduler forgets
    # them, the worker runs them to their end) gets those workers
    # replaced, so that the next test has the whole cluster: each busy
    # worker process is SIGKILLed and its nanny starts a new one.
    from fastmp import _cluster

    client = _cluster.get_client(ADDRESS)
    busy = [pid for pid in client.run(_busy_pid).values() if pid]
    for pid in busy:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while busy:
        try:
            pids = set(client.run(os.getpid).values())
        except Exception:  # noqa: BLE001 (a worker gone meanwhile)
            pids = set()
        if len(pids) == 2 and not pids & set(busy):
            break
        assert time.monotonic() < deadline, "the workers did not return"
        time.sleep(0.1)


def _busy_pid(dask_worker):
    return os.getpid() if dask_worker.state.executing else None


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name, params",
    PARITY,
    ids=[
        name + "".join("-%s" % v for v in params.values())
        for name, params in PARITY
    ],
)
def test_parity_in_cluster_mode(name, params):
    import inspect

    import test_pool

    test = getattr(test_pool, name)
    wants = inspect.signature(test).parameters
    ctx = ClusterContext()
    args = dict(params)
    for key in ("ctx", "fctx"):
        if key in wants:
            args[key] = ctx
    p = None
    if "pool" in wants:
        p = args["pool"] = ctx.Pool(2)
    try:
        test(**args)
    finally:
        if p is not None:
            p.terminate()
            p.join()
        _restart_busy_workers()


def test_is_a_pool(pool):
    assert isinstance(pool, fastmp.pool.Pool)
    assert type(pool).__name__ == "ClusterPool"
    assert "local:2" in repr(pool)


def test_chunksize(pool):
    for cs in (1, 2, 7, 1000):
        assert pool.map(square, range(50), chunksize=cs) == [
            x * x for x in range(50)
        ]
    with pytest.raises(ValueError):
        pool.imap(square, range(3), chunksize=0)


def test_imap_in_order_and_lazy(pool):
    assert list(pool.imap(square, range(30))) == [x * x for x in range(30)]
    assert list(pool.imap(square, range(30), chunksize=4)) == [
        x * x for x in range(30)
    ]
    # An infinite input: read ahead within the buffer only.
    read = []

    def gen():
        i = 0
        while True:
            read.append(i)
            yield i
            i += 1

    it = pool.imap(square, gen(), buffersize=5)
    assert [next(it) for _ in range(10)] == [x * x for x in range(10)]
    time.sleep(0.3)
    assert len(read) <= 10 + 5 + 1


def test_imap_read_on_after_close():
    # More than the read-ahead, never taken before close(): join() still
    # returns, and every result is there.
    p = fastmp.Pool(cluster=ADDRESS)
    n = 64 * 2 * 2 + 10
    it = p.imap(square, list(range(n)))
    un = p.imap_unordered(square, iter(range(n)))
    p.close()
    p.join()
    assert list(it) == [x * x for x in range(n)]
    assert sorted(un) == [x * x for x in range(n)]


def test_imap_error_in_place(pool):
    it = pool.imap(fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [4, 5]


def test_apply_async_and_callbacks(pool):
    got, errs = [], []
    r = pool.apply_async(add, (2, 3), callback=got.append)
    assert r.get(60) == 5
    assert got == [5]
    assert r.ready() and r.successful()
    r = pool.apply_async(fail_on, (3,), error_callback=errs.append)
    with pytest.raises(ValueError):
        r.get(60)
    assert len(errs) == 1 and isinstance(errs[0], ValueError)
    assert not r.successful()
    assert pool.apply(add, (1,), {"b": 2}) == 3
    rs = [pool.apply_async(square, (i,)) for i in range(200)]
    assert [r.get(60) for r in rs] == [i * i for i in range(200)]


def test_errors_keep_type_and_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad item 3") as info:
        pool.map(fail_on, range(10))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause)
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))


def test_unpicklable_result(pool):
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(make_unpicklable, (1,))


def test_lambdas_and_closures_travel(pool):
    k = 7
    assert pool.map(lambda x: x + k, range(5)) == [7, 8, 9, 10, 11]


def test_get_timeout(pool):
    r = pool.apply_async(sleep_return, (2,))
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(0.05)
    assert r.get(60) == 2


class Blob:
    def __init__(self, size):
        self.data = os.urandom(size)


def blob_size(blob, x):
    return len(blob.data) + x


def _largest_worker_cache():
    from fastmp import _cluster

    return max(map(len, _cluster._worker_funcs), default=0)


def test_large_closures_are_not_kept(pool):
    # A partial (or closure) over large data is a new function per call:
    # neither the client nor the workers keep it, or its pickle, after
    # its call (they keep small ones, for reuse).
    import functools
    import gc
    import weakref

    from fastmp import _cluster

    refs = []
    for i in range(4):
        blob = Blob(1 << 20)
        refs.append(weakref.ref(blob))
        f = functools.partial(blob_size, blob)
        assert pool.apply(f, (i,)) == (1 << 20) + i
        del blob, f
    gc.collect()
    assert [r() for r in refs] == [None] * 4
    assert all(
        len(v) <= _cluster.FUNC_CACHE_BYTES
        for v in _cluster._func_pickles.values()
    )
    client = _cluster.get_client(ADDRESS)
    sizes = client.run(_largest_worker_cache).values()
    assert max(sizes) <= _cluster.FUNC_CACHE_BYTES
    # Small functions are kept and reused.
    assert pool.map(square, range(3)) == [0, 1, 4]
    assert square in _cluster._func_pickles


def test_local_lock_is_refused(pool):
    lock = fastmp.Lock()
    with pytest.raises(RuntimeError, match="cluster worker") as info:
        pool.apply(square, (lock,))
    assert "Lock" in str(info.value)
    with pytest.raises(RuntimeError, match="stay on this machine"):
        pool.map(square, [1, fastmp.Value("i", 1)])
    with pytest.raises(RuntimeError, match="Queue"):
        pool.apply(square, (fastmp.Queue(),))
    # The pool goes on.
    assert pool.map(square, range(3)) == [0, 1, 4]


def test_initializer_once_per_worker():
    with fastmp.Pool(
        cluster=ADDRESS, initializer=set_init, initargs=("hello",)
    ) as p:
        got = p.map(get_init, range(20), chunksize=1)
    assert {g[0] for g in got} == {"hello"}
    # The workers are processes other than this one.
    assert os.getpid() not in {g[1] for g in got}
    with pytest.raises(TypeError):
        fastmp.Pool(cluster=ADDRESS, initializer=3)


def bad_init():
    raise KeyError("no init")


def test_initializer_that_raises_fails_pool():
    with pytest.raises(KeyError, match="no init"):
        fastmp.Pool(cluster=ADDRESS, initializer=bad_init)
    # The cluster is still fine for other pools.
    with fastmp.Pool(cluster=ADDRESS) as p:
        assert p.map(square, range(3)) == [0, 1, 4]


def test_context_manager_terminates():
    with fastmp.Pool(cluster=ADDRESS) as p:
        r = p.apply_async(sleep_return, (5,))
        assert p.map(square, range(4)) == [0, 1, 4, 9]
    with pytest.raises(PoolTerminatedError):
        r.get(10)
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, range(3))
    with pytest.raises(ValueError, match="Pool not running"):
        with p:
            pass


def test_close_join():
    p = fastmp.Pool(cluster=ADDRESS)
    r = p.map_async(sleep_return, [0.2, 0.1])
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(square, (1,))
    p.join()
    assert r.ready() and r.get(0) == [0.2, 0.1]


def test_unreachable_scheduler():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    code = (
        "import fastmp\n"
        "try:\n"
        "    fastmp.Pool(cluster='tcp://127.0.0.1:%d')\n"
        "except OSError as e:\n"
        "    print('OSError', e)\n" % port
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(FASTMP_CLUSTER_TIMEOUT="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.startswith("OSError fastmp: cannot reach"), r
    assert "127.0.0.1:%d" % port in r.stdout
    assert time.monotonic() - t0 < 30


class PoolSubclass(fastmp.pool.Pool):
    pass


def test_bad_address():
    with pytest.raises(ValueError):
        fastmp.Pool(cluster="local:0")
    for bad in (3, b"local:2", ["local"]):
        with pytest.raises(TypeError, match="must be a str, not"):
            fastmp.Pool(cluster=bad)
    # A subclass of Pool runs locally: cluster= is refused, not ignored.
    with pytest.raises(TypeError, match="PoolSubclass runs locally"):
        PoolSubclass(1, cluster=ADDRESS)
    # An empty address is no address, as an empty FASTMP_CLUSTER.
    with fastmp.Pool(1, cluster="") as p:
        assert type(p) is fastmp.pool.Pool
        assert p.apply(abs, (-3,)) == 3
    r = _fastmp(["--cluster", "nowhere", "-c", "pass"])
    assert r.returncode != 0 and "tcp://host:port" in r.stderr


def test_without_dask_the_message_says_what_to_install():
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "sys.argv = ['fastmp', '--cluster', 'local:2', '-c', 'pass']\n"
        "from fastmp.__main__ import main; main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "pip install 'fastmp[cluster]'" in r.stderr


# ----------------------------------------------------- unchanged scripts


def _fastmp(args, timeout=180, **env):
    return python_m_fastmp(
        *args, env=dict(PYTHONUNBUFFERED="1", **env), timeout=timeout
    )


def _lecture_lines(out):
    # The result line, and the last item of each worker line (unbuffered
    # workers' lines may run together).
    items = re.findall(r"processed values \[(?:\d, )*(\d)\]", out)
    return out.splitlines()[-1], sorted(items)


@pytest.mark.skipif(not os.path.exists(LECTURE), reason="no lecture examples")
def test_lecture_pool_script_same_output():
    plain = _fastmp([LECTURE])
    cl = _fastmp(["--cluster", ADDRESS, LECTURE])
    assert plain.returncode == 0 and cl.returncode == 0, cl.stderr
    # The result line exact; each item processed once (pids differ).
    assert _lecture_lines(cl.stdout) == _lecture_lines(plain.stdout)
    assert _lecture_lines(cl.stdout)[1] == ["1", "2", "3", "4", "5", "6"]
    assert cl.stderr == ""


def test_cpu_example_same_output():
    plain = _fastmp([PRIMES, "200000"])
    cl = _fastmp(["--cluster", ADDRESS, PRIMES, "200000"])
    assert plain.returncode == 0, plain.stderr
    assert cl.returncode == 0, cl.stderr
    assert cl.stdout == plain.stdout
    assert "primes below 200000: 17984" in cl.stdout


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from multiprocessing import Pool
    from fastmp.pool import WorkerLostError

    MARK = %r

    def die_once(x):
        if not os.path.exists(MARK):
            open(MARK, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 10

    def die(x):
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        with Pool() as p:
            print("retried:", p.apply(die_once, (4,)))
            try:
                p.map(die, [1, 2])
            except WorkerLostError as e:
                print("lost:", type(e).__name__, "died" in str(e))
            print("after:", p.map(abs, [-1, -2]))
    """
)


def test_killed_worker(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT % str(tmp_path / "mark"))
    # One retry allowed: a task that kills its worker once is rerun
    # elsewhere and succeeds; one that always does fails with
    # WorkerLostError; nothing hangs and the pool goes on.
    r = _fastmp(
        ["--cluster", ADDRESS, str(script)],
        DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "retried: 40",
        "lost: WorkerLostError True",
        "after: [1, 2]",
    ]


def _dask(module, *args):
    return subprocess.Popen(
        [sys.executable, "-m", module] + list(args),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def _separate_cluster(tmp_path):
    """A Dask scheduler and two one-thread workers started as their own
    processes (as on other machines); yields the scheduler's address and
    its process."""
    sfile = tmp_path / "scheduler.json"
    scheduler = _dask(
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-address",
        ":0",
        "--scheduler-file",
        str(sfile),
    )
    procs = [scheduler]
    try:
        deadline = time.monotonic() + 60
        while not sfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(sfile.read_text())["address"]
        procs.append(
            _dask(
                "distributed.cli.dask_worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
            )
        )
        yield address, scheduler
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_separate_scheduler_tcp(tmp_path):
    with _separate_cluster(tmp_path) as (address, _):
        plain = _fastmp([PRIMES, "200000"])
        cl = _fastmp(["--cluster", address, PRIMES, "200000"])
        assert cl.returncode == 0, cl.stderr
        assert cl.stdout == plain.stdout
        # FASTMP_CLUSTER does the same.
        env = _fastmp([PRIMES, "200000"], FASTMP_CLUSTER=address)
        assert env.stdout == plain.stdout
        if os.path.exists(LECTURE):
            plain = _fastmp([LECTURE])
            cl = _fastmp(["--cluster", address, LECTURE])
            assert cl.returncode == 0, cl.stderr
            # The result line; what the tasks print goes to the workers'
            # own output, as on other machines (docs/cluster.md).
            assert (
                _lecture_lines(cl.stdout)[0] == _lecture_lines(plain.stdout)[0]
            )


def _signalled(args, ready, act):
    """Run ``python -m fastmp ARGS``; once it printed the line `ready`,
    wait half a second, call act(proc), and let it end (within 90 s);
    (the rest of stdout, stderr, exit code)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmp"] + args,
        env=child_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline() == ready
        time.sleep(0.5)
        act(proc)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out, err, proc.returncode


MANAGER_QUEUE = textwrap.dedent(
    """
    import multiprocessing, sys
    from multiprocessing import Pool
    from multiprocessing.managers import SyncManager

    KEY = b"shared secret"

    def init(key):
        multiprocessing.current_process().authkey = key

    def work(q, i):
        q.put(i * i)
        return i

    if __name__ == "__main__":
        init_args = (init, (KEY,)) if sys.argv[1] == "share" else ()
        with SyncManager(address=("127.0.0.1", 0), authkey=KEY) as m:
            q = m.Queue()
            with Pool(2, *init_args) as p:
                try:
                    print(sorted(p.starmap(work, [(q, i) for i in range(5)])))
                except Exception as e:
                    print("error", type(e).__name__)
            print(sorted(q.get() for _ in range(q.qsize())))
    """
)


def test_manager_across_machines(tmp_path):
    # A manager started with a TCP address is reachable from a separate
    # cluster's workers once they hold its authkey (set here by the
    # pool's initializer); without it, AuthenticationError (docs/
    # cluster.md).
    script = tmp_path / "mq.py"
    script.write_text(MANAGER_QUEUE)
    with _separate_cluster(tmp_path) as (address, _):
        # (In this order: what an initializer sets stays in the workers.)
        alone = _fastmp(["--cluster", address, str(script), "alone"])
        shared = _fastmp(["--cluster", address, str(script), "share"])
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.splitlines() == [
        "[0, 1, 2, 3, 4]",
        "[0, 1, 4, 9, 16]",
    ]
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines() == ["error AuthenticationError", "[]"]


SCHEDULER_DIES = textwrap.dedent(
    """
    import sys, time
    from multiprocessing import Pool

    def slow(x):
        time.sleep(0.5)
        return x

    if __name__ == "__main__":
        with Pool() as p:
            print("first", p.map(abs, [-1, -2]), flush=True)
            try:
                p.map(slow, range(40), 1)
            except Exception as e:
                print("error", type(e).__name__, flush=True)
    """
)


def test_scheduler_killed_mid_job(tmp_path):
    # The scheduler SIGKILLed while a map runs: the map fails with
    # WorkerLostError once the client sees its scheduler gone, and the
    # program ends; nothing hangs.
    script = tmp_path / "dies.py"
    script.write_text(SCHEDULER_DIES)
    with _separate_cluster(tmp_path) as (address, scheduler):
        out, err, code = _signalled(
            ["--cluster", address, str(script)],
            "first [1, 2]\n",
            lambda proc: os.killpg(scheduler.pid, signal.SIGKILL),
        )
    assert out == "error WorkerLostError\n", err
    assert code == 0, err


CTRL_C = textwrap.dedent(
    """
    import time
    from multiprocessing import Pool

    def nap(x):
        time.sleep(60)
        return x

    if __name__ == "__main__":
        with Pool(2) as p:
            p.apply(abs, (-1,))
            print("READY", flush=True)
            p.map(nap, range(4))
    """
)


def test_ctrl_c_ends_a_waiting_map(tmp_path):
    # Ctrl-C in the program while a map's tasks run on the cluster: one
    # KeyboardInterrupt traceback and the program ends (its local cluster
    # closed at exit, the tasks still running there ended with it).
    script = tmp_path / "ctrlc.py"
    script.write_text(CTRL_C)
    _, err, code = _signalled(
        ["--cluster", ADDRESS, str(script)],
        "READY\n",
        lambda proc: os.kill(proc.pid, signal.SIGINT),
    )
    assert code == -signal.SIGINT, err
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.rstrip().endswith("KeyboardInterrupt"), err


def test_worker_lost_error_type():
    assert issubclass(WorkerLostError, multiprocessing.ProcessError)
