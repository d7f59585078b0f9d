"""Benchmark cases: one function per operation, over the public API only.

Each case is registered with ``@case(...)`` and is called as
``fn(mp, impl)`` in a fresh interpreter (see ``_worker.py``), where ``mp``
is the implementation module (``multiprocessing`` or ``fastmp``; ``None``
for a peer such as faster-fifo) and ``impl`` its name.  It returns either

* a ``Bench(run, close, n=None)``: ``run(n)`` performs the operation ``n``
  times and returns the elapsed wall time in seconds; the worker calibrates
  ``n`` to the target duration, unless the case fixes it (``n=``: a
  ``map()`` over a stated number of items); ``close()`` tears down helper
  processes; or
* a ``Direct(per_op, n)``: a per-op time the case measured itself (used by
  the import-time case, which times fresh interpreters).

A case whose API the implementation lacks raises ``NotAvailable(reason)``;
the table then shows n/a for it.  A case may run a stated stdlib baseline
instead (``baseline=``), e.g. the atomic ``add(1)`` is compared against the
stdlib's locked increment.

Two-process cases use the fork start method: helper processes are started
once, outside the timed region, and are driven through a control pipe
(``Workers``); per-op time is total wall time over total operations.
"""

import dataclasses
import importlib
import os
import statistics
import subprocess
import sys
import time
from itertools import repeat
from typing import Callable, Optional

perf = time.perf_counter
HERE = os.path.dirname(os.path.abspath(__file__))

CASES = {}
# The measurement's target duration and repeats (set by _worker.py), for
# the cases that measure in a child interpreter of their own.
TARGET = 0.1
REPEATS = 3


class NotAvailable(Exception):
    """The implementation lacks the API this case measures."""


class Bench:
    def __init__(self, run, close=None, n=None):
        self.run = run
        self.close = close or (lambda: None)
        self.n = n  # a fixed count: no calibration


class Direct:
    def __init__(self, per_op, n):
        self.per_op = per_op
        self.n = n


@dataclasses.dataclass
class Case:
    fn: Callable
    name: str
    group: str
    desc: str
    goal: Optional[float] = None  # minimum ratio stdlib/fastmp
    goal_text: str = ""  # as docs/performance.md states it
    peers: tuple = ()  # extra implementations (e.g. faster_fifo)
    baseline: Optional[str] = None  # what the stdlib column runs instead
    max_n: int = 10**8  # cap on the calibrated iteration count
    min_target: float = 0.0  # floor on the measurement duration
    nbytes: Optional[int] = None  # payload per op, for a throughput note
    beat_peers: bool = True  # the goal includes beating each peer
    peer_rounds: Optional[int] = None  # cap on the peers' rounds

    def __post_init__(self):
        self.peers = tuple(self.peers)


def case(name, group, desc, **options):
    """Register the decorated function as the case `name` (options: the
    fields of Case)."""

    def register(fn):
        CASES[name] = Case(fn, name, group, desc, **options)
        return fn

    return register


def submodule(mp, name):
    """``<impl>.<name>``, or the stdlib's module when the impl lacks it.

    This mirrors what fastmp's contexts do for factories: a module fastmp
    does not provide yet falls through to the stdlib's.
    """
    try:
        return importlib.import_module(mp.__name__ + "." + name)
    except ModuleNotFoundError as e:
        if e.name != mp.__name__ + "." + name:
            raise
        return importlib.import_module("multiprocessing." + name)


def loop_bench(op):
    """A Bench that calls ``op()`` n times."""

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            op()
        return perf() - t0

    return Bench(run)


# ---------------------------------------------------------------------------
# Helper processes driven through a control pipe (fork start method).


def _serve(conn, target, args):
    while True:
        n = conn.recv()
        if n is None:
            break
        target(n, *args)
        conn.send(True)
    conn.close()


class Workers:
    """``count`` forked helpers, each running ``target(n, *args)`` on demand.

    The control channel is the stdlib's Pipe in both implementations, so it
    costs the same for both and is outside the measured primitive.
    """

    def __init__(self, ctx, target, args=(), count=1):
        import multiprocessing as std

        self.conns = []
        self.procs = []
        for _ in range(count):
            a, b = std.Pipe()
            p = ctx.Process(target=_serve, args=(b, target, args), daemon=True)
            p.start()
            b.close()
            self.conns.append(a)
            self.procs.append(p)

    def start(self, n):
        """Ask every helper for n operations (an int or one per helper)."""
        ns = n if isinstance(n, (list, tuple)) else [n] * len(self.conns)
        for c, k in zip(self.conns, ns):
            c.send(k)

    def wait(self):
        for c in self.conns:
            c.recv()

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def fork_ctx(mp):
    return mp.get_context("fork")


# ---------------------------------------------------------------------------
# Locks, events, process start, import time.


@case(
    "lock",
    "locks",
    "Lock acquire+release, uncontended",
    goal=2.0,
    goal_text=">= 2x",
)
def _lock(mp, impl):
    lk = mp.Lock()
    acq, rel = lk.acquire, lk.release

    def op():
        acq()
        rel()

    return loop_bench(op)


@case("rlock_with", "locks", "`with RLock`", goal=4.0, goal_text=">= 4x")
def _rlock_with(mp, impl):
    lk = mp.RLock()

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            with lk:
                pass
        return perf() - t0

    return Bench(run)


@case("semaphore", "locks", "Semaphore acquire+release, uncontended")
def _semaphore(mp, impl):
    s = mp.Semaphore(3)
    acq, rel = s.acquire, s.release

    def op():
        acq()
        rel()

    return loop_bench(op)


def _lock_contend(n, lk):
    acq, rel = lk.acquire, lk.release
    for _ in repeat(None, n):
        acq()
        rel()


@case(
    "lock_contended",
    "locks",
    "two processes contending on one Lock (per acquire+release)",
    goal=1.5,
    goal_text=">= 1.5x",
)
def _lock_contended(mp, impl):
    ctx = fork_ctx(mp)
    lk = ctx.Lock()
    w = Workers(ctx, _lock_contend, (lk,))

    def run(n):
        t0 = perf()
        w.start(n)
        _lock_contend(n, lk)
        w.wait()
        return (perf() - t0) / 2

    return Bench(run, w.close)


def _event_echo(n, e1, e2):
    for _ in repeat(None, n):
        e1.wait()
        e1.clear()
        e2.set()


@case(
    "event_handoff",
    "locks",
    "Event set/wait handoff between two processes (round trip)",
)
def _event_handoff(mp, impl):
    ctx = fork_ctx(mp)
    e1, e2 = ctx.Event(), ctx.Event()
    w = Workers(ctx, _event_echo, (e1, e2))

    def run(n):
        t0 = perf()
        w.start(n)
        for _ in repeat(None, n):
            e1.set()
            e2.wait()
            e2.clear()
        w.wait()
        return perf() - t0

    return Bench(run, w.close)


@case(
    "lock_create",
    "locks",
    "Lock creation (create and drop)",
    goal=10.0,
    goal_text=">= 10x",
)
def _lock_create(mp, impl):
    Lock = mp.Lock

    def op():
        Lock()

    return loop_bench(op)


def _noop():
    pass


def _process_case(method):
    def fn(mp, impl):
        if method not in mp.get_all_start_methods():
            raise NotAvailable(f"{method} not available")
        ctx = mp.get_context(method)
        # Warm up (starts the forkserver, imports in the parent).
        p = ctx.Process(target=_noop)
        p.start()
        p.join()

        def run(n):
            t0 = perf()
            for _ in repeat(None, n):
                p = ctx.Process(target=_noop)
                p.start()
                p.join()
            return perf() - t0

        return Bench(run)

    return fn


for _m in ("fork", "spawn", "forkserver"):
    case(
        "process_" + _m,
        "process",
        f"Process start+join ({_m})",
        goal=1.0,
        goal_text="no slower",
        max_n=2000,
    )(_process_case(_m))


def _interp_time(argv, env):
    t0 = perf()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return perf() - t0


def _import_time(code):
    pairs = int(os.environ.get("FASTMP_BENCH_IMPORT_PAIRS", "10"))
    env = dict(os.environ)
    py = sys.executable
    imp, base = [], []
    for _ in range(pairs):
        imp.append(_interp_time([py, "-c", code], env))
        base.append(_interp_time([py, "-c", "pass"], env))
    return Direct(
        max(statistics.median(imp) - statistics.median(base), 1e-9), pairs
    )


# ``import fastmp`` alone loads almost nothing: its names are loaded on
# first use (PEP 562).  This case measures that deferral, not the cost of a
# program that uses fastmp; ``import_first_use`` measures that.
@case(
    "import",
    "process",
    "`import X` alone (fastmp defers its modules to first use), in a "
    "fresh interpreter, minus `python -c pass`",
    goal=1.0,
    goal_text="no slower",
)
def _import(mp, impl):
    return _import_time("import " + impl)


@case(
    "import_first_use",
    "process",
    "`import X; X.Lock()` (import plus first use), in a fresh "
    "interpreter, minus `python -c pass`",
)
def _import_first_use(mp, impl):
    return _import_time("import %s; %s.Lock()" % (impl, impl))


# ---------------------------------------------------------------------------
# Shared ctypes and shared memory.


@case(
    "value_read",
    "shared",
    "`Value('i').value` read",
    goal=4.0,
    goal_text=">= 4x",
)
def _value_read(mp, impl):
    v = mp.Value("i", 7)

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            _ = v.value
        return perf() - t0

    return Bench(run)


@case("value_write", "shared", "`Value('i').value = x` write")
def _value_write(mp, impl):
    v = mp.Value("i", 7)

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            v.value = 3
        return perf() - t0

    return Bench(run)


def _locked_incr(n, v):
    lk = v.get_lock()
    for _ in repeat(None, n):
        with lk:
            v.value += 1


@case(
    "value_locked_incr",
    "shared",
    "`with v.get_lock(): v.value += 1`",
    goal=5.0,
    goal_text=">= 5x",
)
def _value_locked_incr(mp, impl):
    v = mp.Value("i", 0)

    def run(n):
        t0 = perf()
        _locked_incr(n, v)
        return perf() - t0

    return Bench(run)


@case(
    "value_atomic_add",
    "shared",
    "atomic `v.add(1)` (stdlib column: locked `+= 1`)",
    goal=15.0,
    goal_text=">= 15x the locked stdlib increment",
    baseline="with v.get_lock(): v.value += 1",
)
def _value_atomic_add(mp, impl):
    v = mp.Value("i", 0)
    if impl == "multiprocessing":

        def locked(n):
            t0 = perf()
            _locked_incr(n, v)
            return perf() - t0

        return Bench(locked)
    add = getattr(v, "add", None)
    if add is None:
        raise NotAvailable("Value has no add()")

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            add(1)
        return perf() - t0

    return Bench(run)


@case(
    "array_getitem",
    "shared",
    "`Array('d', 1000)[i]`",
    goal=10.0,
    goal_text=">= 10x",
)
def _array_getitem(mp, impl):
    a = mp.Array("d", 1000)

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            a[500]
        return perf() - t0

    return Bench(run)


@case(
    "array_slice_read",
    "shared",
    "`Array('i', 1000)[:]`",
    goal=10.0,
    goal_text=">= 10x",
)
def _array_slice_read(mp, impl):
    a = mp.Array("i", 1000)

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            a[:]
        return perf() - t0

    return Bench(run)


@case("array_slice_assign", "shared", "`Array('i', 1000)[:] = list_of_1000`")
def _array_slice_assign(mp, impl):
    a = mp.Array("i", 1000)
    data = list(range(1000))

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            a[:] = data
        return perf() - t0

    return Bench(run)


@case(
    "value_contended_incr",
    "shared",
    "two processes incrementing a Value under its lock (per increment)",
    goal=3.0,
    goal_text=">= 3x",
)
def _value_contended_incr(mp, impl):
    ctx = fork_ctx(mp)
    v = ctx.Value("i", 0)
    w = Workers(ctx, _locked_incr, (v,))

    def run(n):
        start = v.value
        t0 = perf()
        w.start(n)
        _locked_incr(n, v)
        w.wait()
        dt = perf() - t0
        if (v.value - start - 2 * n) % 2**32:  # 'i' wraps at 32 bits
            raise AssertionError("lost increments")
        return dt / 2

    return Bench(run, w.close)


@case(
    "shareable_list_getset",
    "shared",
    "`sl[i] = sl[i]` on a ShareableList",
    goal=10.0,
    goal_text=">= 10x",
)
def _shareable_list(mp, impl):
    sm = submodule(mp, "shared_memory")
    sl = sm.ShareableList([1, 2.5, "abc", b"xyz", None, 12345])

    def run(n):
        t0 = perf()
        for _ in repeat(None, n):
            sl[5] = sl[5]
        return perf() - t0

    def close():
        sl.shm.close()
        sl.shm.unlink()

    return Bench(run, close)


@case(
    "shm_create",
    "shared",
    "`SharedMemory` create+close+unlink (4 KiB)",
    goal=2.0,
    goal_text=">= 2x",
)
def _shm_create(mp, impl):
    SharedMemory = submodule(mp, "shared_memory").SharedMemory

    def op():
        s = SharedMemory(create=True, size=4096)
        s.close()
        s.unlink()

    return loop_bench(op)


@case("shm_attach", "shared", "`SharedMemory(name=...)` attach+close")
def _shm_attach(mp, impl):
    SharedMemory = submodule(mp, "shared_memory").SharedMemory
    owner = SharedMemory(create=True, size=4096)
    name = owner.name

    def op():
        SharedMemory(name=name).close()

    def close():
        owner.close()
        owner.unlink()

    return Bench(loop_bench(op).run, close)


# ---------------------------------------------------------------------------
# Connections and queues.

SMALL = (1, "ab", 2.5)


def _echo(n, conn):
    recv, send = conn.recv, conn.send
    for _ in repeat(None, n):
        send(recv())


@case(
    "pipe_pingpong",
    "connection",
    "Pipe round trip, small object, two processes",
    goal=2.5,
    goal_text=">= 2.5x",
)
def _pipe_pingpong(mp, impl):
    ctx = fork_ctx(mp)
    a, b = ctx.Pipe()
    w = Workers(ctx, _echo, (b,))
    send, recv = a.send, a.recv

    def run(n):
        t0 = perf()
        w.start(n)
        for _ in repeat(None, n):
            send(SMALL)
            recv()
        w.wait()
        return perf() - t0

    return Bench(run, w.close)


def _sink_bytes(n, conn):
    recv = conn.recv_bytes
    for _ in repeat(None, n):
        recv()
    conn.send_bytes(b"k")


def _bytes_case(size, label, goal=None, goal_text=""):
    def fn(mp, impl):
        ctx = fork_ctx(mp)
        a, b = ctx.Pipe()
        w = Workers(ctx, _sink_bytes, (b,))
        payload = b"x" * size
        send = a.send_bytes

        def run(n):
            t0 = perf()
            w.start(n)
            for _ in repeat(None, n):
                send(payload)
            a.recv_bytes()
            w.wait()
            return perf() - t0

        return Bench(run, w.close)

    case(
        "send_bytes_" + label,
        "connection",
        f"Pipe `send_bytes`/`recv_bytes` {label}, two processes",
        goal=goal,
        goal_text=goal_text,
        max_n=10**7 if size < 2**20 else 2000,
        nbytes=size,
    )(fn)


_bytes_case(1024, "1KiB")
_bytes_case(64 * 1024, "64KiB")
_bytes_case(1024 * 1024, "1MiB", goal=3.0, goal_text=">= 3x")
_bytes_case(64 * 1024 * 1024, "64MiB")


def _consume(n, q):
    get = q.get
    for _ in repeat(None, n):
        get()


def _produce(n, q, item):
    put = q.put
    for _ in repeat(None, n):
        put(item)


def _queue_1to1(item):
    def fn(mp, impl):
        ctx = fork_ctx(mp)
        q = ctx.Queue()
        w = Workers(ctx, _consume, (q,))

        def run(n):
            t0 = perf()
            w.start(n)
            _produce(n, q, item)
            w.wait()
            return perf() - t0

        return Bench(run, w.close)

    return fn


case(
    "queue_1to1_small",
    "queue",
    "Queue, 1 producer -> 1 consumer process, small items (per item)",
    goal=5.0,
    goal_text=">= 5x",
)(_queue_1to1(SMALL))
case(
    "queue_1to1_1MiB",
    "queue",
    "Queue, 1 producer -> 1 consumer process, 1 MiB items (per item)",
    max_n=2000,
    nbytes=1 << 20,
)(_queue_1to1(b"x" * (1 << 20)))


def _split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _many_to_many(
    make_queue,
    ctx,
    producers,
    consumers,
    item,
    produce=_produce,
    consume=_consume,
):
    """Per-message time of `producers` processes putting `item` and
    `consumers` processes taking messages from one queue.  `produce(n, q,
    item)` and `consume(n, q)` are the helpers' loops."""
    q = make_queue()
    prod = Workers(ctx, produce, (q, item), producers)
    cons = Workers(ctx, consume, (q,), consumers)

    def run(n):
        done = max(n, producers * consumers)
        t0 = perf()
        cons.start(_split(done, consumers))
        prod.start(_split(done, producers))
        prod.wait()
        cons.wait()
        return (perf() - t0) * n / done

    def close():
        prod.close()
        cons.close()

    return Bench(run, close)


@case(
    "queue_4to4",
    "queue",
    "Queue, 4 producers -> 4 consumers, small items (per item)",
    goal=5.0,
    goal_text=">= 5x",
    min_target=0.2,
)
def _queue_4to4(mp, impl):
    ctx = fork_ctx(mp)
    return _many_to_many(ctx.Queue, ctx, 4, 4, SMALL)


def _consume_done(n, q):
    get, done = q.get, q.task_done
    for _ in repeat(None, n):
        get()
        done()


@case(
    "joinable_queue",
    "queue",
    "JoinableQueue put / get+task_done (other process) / join (per item)",
)
def _joinable(mp, impl):
    ctx = fork_ctx(mp)
    q = ctx.JoinableQueue()
    w = Workers(ctx, _consume_done, (q,))

    def run(n):
        t0 = perf()
        w.start(n)
        _produce(n, q, SMALL)
        q.join()
        w.wait()
        return perf() - t0

    return Bench(run, w.close)


# faster-fifo's own many-to-many comparison: 20 producers, 20 consumers,
# messages are (i,) * 5 tuples, consumers take one message per get().
FF_PRODUCERS = 20
FF_CONSUMERS = 20
FF_MSG = (12345,) * 5


def _ff_queue():
    import faster_fifo

    return faster_fifo.Queue(1000 * 1000)


def _ff_consume(n, q):
    get = q.get
    for _ in repeat(None, n):
        get(True, 60.0)


def _ff_produce(n, q, item):
    put = q.put
    for _ in repeat(None, n):
        put(item, True, 60.0)


@case(
    "fasterfifo_20to20",
    "queue",
    "faster-fifo's workload: 20 producers -> 20 consumers, (i,)*5 "
    "tuples, one get() per message (per message)",
    goal_text="ahead of faster-fifo",
    peers=("faster_fifo",),
    min_target=0.5,
)
def _fasterfifo(mp, impl):
    if impl == "faster_fifo":
        try:
            make = _ff_queue
            make().close()
        except ImportError:
            raise NotAvailable("faster-fifo is not installed") from None
        import multiprocessing as std

        ctx = std.get_context("fork")
    else:
        ctx = fork_ctx(mp)
        make = ctx.Queue
    return _many_to_many(
        make, ctx, FF_PRODUCERS, FF_CONSUMERS, FF_MSG, _ff_produce, _ff_consume
    )


# ---------------------------------------------------------------------------
# Pool and ProcessPoolExecutor: whatever Pool the implementation has (the
# stdlib's falls through until fastmp has its own), with mpire's WorkerPool
# and loky's reusable executor as peers where the operation makes sense.
# Every pool is started once, outside the timed region, and warmed up.

POOL_WORKERS = 2
MAP_ITEMS = 200_000  # pool_map: one map() call over this many items
MAP1_ITEMS = 5_000  # pool_map_chunksize1: fewer, each its own task
# mpire and loky take seconds per measurement here (starting, or mapping
# 200,000 items at several µs each): they run this many rounds only, so
# that the whole run stays within minutes.  The stdlib/fastmp ratio still
# has every round.
PEER_ROUNDS = 3


def _trivial(x):
    return x


def _require(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NotAvailable(f"{module} is not installed") from None


class _Pool:
    """One pool of `workers` processes, whichever library provides it, with
    the operations the cases time.  Peers: mpire's WorkerPool (fork, kept
    alive between calls) and loky's reusable executor (its own start
    method).  Each case warms its pool up with its own operation (mpire's
    kept-alive workers do not take an imap_unordered() after a map())."""

    def __init__(self, mp, impl, workers=POOL_WORKERS):
        self.impl = impl
        if impl == "mpire":
            self.pool = _require("mpire").WorkerPool(
                n_jobs=workers, start_method="fork", keep_alive=True
            )
        elif impl == "loky":
            self.pool = _require("loky").get_reusable_executor(
                max_workers=workers
            )
        else:
            self.pool = fork_ctx(mp).Pool(workers)

    def map(self, fn, items, chunksize=None):
        if self.impl == "mpire":
            return self.pool.map(fn, items, chunk_size=chunksize)
        if self.impl == "loky":
            if chunksize is None:
                # Executor.map's default is 1 item per task: give loky the
                # Pool's default instead (4 tasks per worker).
                chunksize = -(-len(items) // (4 * POOL_WORKERS))
            return list(self.pool.map(fn, items, chunksize=chunksize))
        return self.pool.map(fn, items, chunksize)

    def imap_unordered(self, fn, items, chunksize=1):
        if self.impl == "mpire":
            return self.pool.imap_unordered(fn, items, chunk_size=chunksize)
        return self.pool.imap_unordered(fn, items, chunksize)

    def apply_async_get(self, fn, arg):
        if self.impl == "mpire":
            return self.pool.apply_async(fn, (arg,)).get()
        if self.impl == "loky":
            return self.pool.submit(fn, arg).result()
        return self.pool.apply_async(fn, (arg,)).get()

    def close(self):
        if self.impl == "mpire":
            self.pool.terminate()
        elif self.impl == "loky":
            self.pool.shutdown(wait=True, kill_workers=True)
        else:
            self.pool.terminate()
            self.pool.join()


def _map_bench(pool, fn, size, chunksize=None):
    """A Bench whose op is one item of a map() over `size` items: each run
    is one such call (a fixed n, no calibration)."""
    pool.map(fn, list(range(100)), chunksize)  # workers up, imports done

    def run(n):
        items = list(range(n))
        t0 = perf()
        pool.map(fn, items, chunksize)
        return perf() - t0

    return Bench(run, pool.close, n=size)


@case(
    "pool_map",
    "pool",
    f"`Pool(2).map` of a trivial function over {MAP_ITEMS:,} items, "
    "default chunksize (per item)",
    goal=2.0,
    goal_text=">= 2x, ahead of mpire and loky",
    peers=("mpire", "loky"),
    peer_rounds=PEER_ROUNDS,
    min_target=0.3,
)
def _pool_map(mp, impl):
    return _map_bench(_Pool(mp, impl), _trivial, MAP_ITEMS)


@case(
    "pool_map_chunksize1",
    "pool",
    f"`Pool(2).map(f, items, chunksize=1)`, trivial function, "
    f"{MAP1_ITEMS:,} items (per item)",
    goal=5.0,
    goal_text=">= 5x, ahead of mpire and loky",
    peers=("mpire", "loky"),
    peer_rounds=PEER_ROUNDS,
)
def _pool_map1(mp, impl):
    return _map_bench(_Pool(mp, impl), _trivial, MAP1_ITEMS, chunksize=1)


@case(
    "pool_apply_async",
    "pool",
    "`Pool.apply_async(f, (x,)).get()` round trip (loky: "
    "`submit(f, x).result()`)",
    goal=10.0,
    goal_text=">= 10x, ahead of mpire and loky",
    peers=("mpire", "loky"),
    peer_rounds=PEER_ROUNDS,
)
def _pool_apply(mp, impl):
    pool = _Pool(mp, impl)
    apply_get = pool.apply_async_get
    apply_get(_trivial, 1)  # workers up, imports done

    def op():
        apply_get(_trivial, 1)

    return Bench(loop_bench(op).run, pool.close)


@case(
    "pool_imap_unordered",
    "pool",
    "`for r in Pool(2).imap_unordered(f, generator)`, trivial function, "
    "default chunksize 1 (per item)",
    peers=("mpire",),
    peer_rounds=PEER_ROUNDS,
    beat_peers=False,
)
def _pool_imap_unordered(mp, impl):
    pool = _Pool(mp, impl)
    imap = pool.imap_unordered
    for _ in imap(_trivial, (i for i in range(100))):  # workers up
        pass

    def run(n):
        t0 = perf()
        for _ in imap(_trivial, (i for i in range(n))):
            pass
        return perf() - t0

    return Bench(run, pool.close)


def _pool_close(ctx):
    pool = ctx.Pool(POOL_WORKERS)
    pool.close()
    pool.join()


def _pool_with_map(ctx):
    # The common idiom: the with block's exit is terminate().
    with ctx.Pool(POOL_WORKERS) as pool:
        pool.map(_trivial, range(8))


def _pool_create_case(method, life=_pool_close):
    def fn(mp, impl):
        if method not in mp.get_all_start_methods():
            raise NotAvailable(f"{method} not available")
        ctx = mp.get_context(method)

        def once():
            life(ctx)

        once()  # starts the forkserver, imports in the parent

        def run(n):
            t0 = perf()
            for _ in repeat(None, n):
                once()
            return perf() - t0

        return Bench(run)

    return fn


for _m in ("fork", "spawn", "forkserver"):
    case(
        "pool_create_" + _m,
        "pool",
        f"`Pool(2)` created, then `close()` + `join()` ({_m})",
        max_n=200,
    )(_pool_create_case(_m))

case(
    "pool_with_map_fork",
    "pool",
    "`with Pool(2) as p: p.map(f, range(8))`, the block's exit terminating "
    "the pool (fork)",
    max_n=200,
)(_pool_create_case("fork", _pool_with_map))


# A CPU-bound task of a few milliseconds: how close the pool comes to
# (task time / cores) per task, dispatch and all.
CPU_TASK_LOOPS = 40_000


def _cpu_task(seed):
    x = seed
    for i in range(CPU_TASK_LOOPS):
        x = (x * 1103515245 + i) & 0xFFFFFFFF
    return x


@case(
    "pool_cpu_bound",
    "pool",
    "CPU-bound tasks of about 5 ms, one worker per core, "
    "`map(f, items, chunksize=1)` (per task)",
    goal=1.0,
    goal_text="no slower",
    peers=("mpire", "loky"),
    peer_rounds=PEER_ROUNDS,
    beat_peers=False,
    max_n=2000,
)
def _pool_cpu_bound(mp, impl):
    cores = len(os.sched_getaffinity(0))
    pool = _Pool(mp, impl, workers=cores)
    pool.map(_cpu_task, list(range(cores)), 1)  # workers up

    def run(n):
        # At least a round of tasks per worker, so that all cores work.
        tasks = max(n, 2 * cores)
        t0 = perf()
        pool.map(_cpu_task, list(range(tasks)), 1)
        return (perf() - t0) * n / tasks

    return Bench(run, pool.close)


def _executor(mp, impl):
    if impl == "loky":
        return _require("loky").get_reusable_executor(max_workers=POOL_WORKERS)
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(POOL_WORKERS, mp_context=fork_ctx(mp))


def _executor_close(ex, impl):
    if impl == "loky":
        return lambda: ex.shutdown(wait=True, kill_workers=True)
    return lambda: ex.shutdown(wait=True)


@case(
    "executor_submit",
    "pool",
    "`ProcessPoolExecutor(2, mp_context=ctx).submit(f, x).result()` "
    "round trip",
    goal=1.0,
    goal_text="no slower",
    peers=("loky",),
    peer_rounds=PEER_ROUNDS,
    beat_peers=False,
)
def _executor_submit(mp, impl):
    ex = _executor(mp, impl)
    list(ex.map(_trivial, range(10)))  # workers up
    submit = ex.submit

    def op():
        submit(_trivial, 1).result()

    return Bench(loop_bench(op).run, _executor_close(ex, impl))


@case(
    "executor_map",
    "pool",
    "`ProcessPoolExecutor(2, mp_context=ctx).map(f, items)`, trivial "
    "function, default chunksize 1 (per item)",
    goal=1.0,
    goal_text="no slower",
    peers=("loky",),
    peer_rounds=PEER_ROUNDS,
    beat_peers=False,
)
def _executor_map(mp, impl):
    ex = _executor(mp, impl)
    list(ex.map(_trivial, range(10)))  # workers up

    def run(n):
        t0 = perf()
        for _ in ex.map(_trivial, range(n)):
            pass
        return perf() - t0

    return Bench(run, _executor_close(ex, impl))


# The same two operations in an unchanged program: a plain
# ProcessPoolExecutor in `python script` against `python -m fastmp script`,
# where the executor's call queue is a subclass of fastmp's Queue (the ring
# buffer; no feeder thread).  The program measures itself in a child
# interpreter (calibrating to the harness's target, best of its repeats).

_EXECUTOR_PROGRAM = """
import sys, time, multiprocessing
from concurrent.futures import ProcessPoolExecutor

def f(x):
    return x

def submit(ex, n):
    t0 = time.perf_counter()
    for _ in range(n):
        ex.submit(f, 1).result()
    return time.perf_counter() - t0

def map_(ex, n):
    t0 = time.perf_counter()
    for _ in ex.map(f, range(n)):
        pass
    return time.perf_counter() - t0

if __name__ == "__main__":
    op = {"submit": submit, "map": map_}[sys.argv[1]]
    target, repeats = float(sys.argv[2]), int(sys.argv[3])
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(f, range(10)))  # workers up
        n = 16
        while True:
            dt = op(ex, n)
            if dt >= target / 2:
                break
            n = max(2 * n, int(n * target / 2 / max(dt, 1e-6)))
        n = max(1, int(n * target / dt))
        print(min(op(ex, n) / n for _ in range(repeats)), n)
"""


def _executor_program_case(op):
    def fn(mp, impl):
        argv = [sys.executable]
        if impl == "fastmp":
            argv += ["-m", "fastmp"]
        argv += ["-c", _EXECUTOR_PROGRAM, op, repr(TARGET), str(REPEATS)]
        out = subprocess.run(
            argv, check=True, capture_output=True, text=True, cwd=HERE
        ).stdout.split()
        return Direct(float(out[0]), int(out[1]))

    return fn


case(
    "executor_submit_program",
    "pool",
    "plain `ProcessPoolExecutor(2).submit(f, x).result()` in `python "
    "prog.py` vs `python -m fastmp prog.py` (fork)",
    goal=1.0,
    goal_text="no slower",
)(_executor_program_case("submit"))
case(
    "executor_map_program",
    "pool",
    "plain `ProcessPoolExecutor(2).map(f, items)` in `python prog.py` vs "
    "`python -m fastmp prog.py` (fork, chunksize 1, per item)",
    goal=1.0,
    goal_text="no slower",
)(_executor_program_case("map"))


# ---------------------------------------------------------------------------
# Manager: containers served without a round trip (a manager started by
# this process, on a Unix socket), UltraDict as the peer for the dict; the
# TCP-connected dict still goes through the server.


def _ultradict():
    try:
        from UltraDict import UltraDict
    except ImportError:
        raise NotAvailable("UltraDict is not installed") from None
    return UltraDict()


def _manager_bench(mp, make, op_of):
    m = fork_ctx(mp).Manager()
    op = op_of(make(m))
    return Bench(loop_bench(op).run, m.shutdown)


def _dict_op(d):
    def op():
        d["k"] = 1
        d["k"]

    return op


@case(
    "manager_dict",
    "manager",
    "`Manager().dict()` set+get (per pair)",
    goal=15.0,
    goal_text=">= 15x, ahead of UltraDict",
    peers=("UltraDict",),
)
def _manager_dict(mp, impl):
    if impl == "UltraDict":
        u = _ultradict()
        return Bench(loop_bench(_dict_op(u)).run, u.unlink)
    return _manager_bench(mp, lambda m: m.dict(), _dict_op)


@case(
    "manager_list",
    "manager",
    "`Manager().list()`: `append(1)` then `l[-1]` (per pair)",
)
def _manager_list(mp, impl):
    def op_of(lst):
        append = lst.append

        def op():
            append(1)
            lst[-1]

        return op

    return _manager_bench(mp, lambda m: m.list(), op_of)


@case(
    "manager_namespace",
    "manager",
    "Manager `Namespace`: `ns.x = 1; ns.x` (per pair)",
    goal=10.0,
    goal_text=">= 10x",
)
def _manager_namespace(mp, impl):
    def op_of(ns):
        def op():
            ns.x = 1
            ns.x  # noqa: B018

        return op

    return _manager_bench(mp, lambda m: m.Namespace(), op_of)


@case(
    "manager_lock",
    "manager",
    "Manager `Lock` acquire+release",
    goal=10.0,
    goal_text=">= 10x",
)
def _manager_lock(mp, impl):
    def op_of(lk):
        acq, rel = lk.acquire, lk.release

        def op():
            acq()
            rel()

        return op

    return _manager_bench(mp, lambda m: m.Lock(), op_of)


@case(
    "manager_queue",
    "manager",
    "Manager `Queue` put+get",
)
def _manager_queue(mp, impl):
    def op_of(q):
        put, get = q.put, q.get

        def op():
            put(1)
            get()

        return op

    return _manager_bench(mp, lambda m: m.Queue(), op_of)


@case(
    "manager_remote_dict",
    "manager",
    "dict set+get on a manager at ('127.0.0.1', port), connected with "
    "`connect()` (through the server, per pair)",
    goal=2.0,
    goal_text=">= 2x",
)
def _manager_remote_dict(mp, impl):
    managers = submodule(mp, "managers")
    server = managers.SyncManager(
        address=("127.0.0.1", 0), authkey=b"bench", ctx=fork_ctx(mp)
    )
    server.start()
    client = managers.SyncManager(address=server.address, authkey=b"bench")
    client.connect()
    d = client.dict()
    # (the lambda keeps the manager object, and so its server, alive)
    return Bench(loop_bench(_dict_op(d)).run, lambda: server.shutdown())


# ---------------------------------------------------------------------------
# Cluster mode (docs/cluster.md): fastmp's Pool on a Dask LocalCluster of
# two worker processes (`Pool(cluster="local:2")`, what `python -m fastmp
# --cluster local:2` gives every Pool), against Ray's Pool
# (`ray.util.multiprocessing.Pool(2)`) and raw Dask futures
# (`client.submit` per task on a LocalCluster of the same size); the
# stdlib column is the stdlib's local Pool(2), for orientation.  Each
# cluster is started once, outside the timed region.

CLUSTER_MAP_ITEMS = MAP_ITEMS
# Raw Dask futures pay milliseconds per item: a map of fewer.
DASK_MAP_ITEMS = 1_000


class _ClusterPeer:
    """A pool-like front for the cluster cases: fastmp in cluster mode,
    the stdlib's local Pool, Ray's Pool or raw Dask futures."""

    def __init__(self, mp, impl):
        self.impl = impl
        if impl == "ray":
            ray = _require("ray")
            ray.init(
                num_cpus=POOL_WORKERS,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self.ray = ray
            self.pool = _require("ray.util.multiprocessing").Pool(POOL_WORKERS)
        elif impl == "dask":
            distributed = _require("distributed")
            self.cluster = distributed.LocalCluster(
                n_workers=POOL_WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
            )
            self.client = distributed.Client(self.cluster)
        elif impl == "fastmp":
            _require("distributed")
            self.pool = mp.Pool(cluster="local:%d" % POOL_WORKERS)
        else:
            self.pool = fork_ctx(mp).Pool(POOL_WORKERS)

    def apply_many(self, fn, n):
        """n tasks submitted, then every result awaited."""
        if self.impl == "dask":
            submit = self.client.submit
            futs = [submit(fn, i, pure=False) for i in range(n)]
            return self.client.gather(futs)
        apply_async = self.pool.apply_async
        rs = [apply_async(fn, (i,)) for i in range(n)]
        return [r.get() for r in rs]

    def map(self, fn, items):
        if self.impl == "dask":
            return self.client.gather(self.client.map(fn, items, pure=False))
        return self.pool.map(fn, items)

    def close(self):
        if self.impl == "dask":
            self.client.close()
            self.cluster.close()
            return
        self.pool.terminate()
        if self.impl == "ray":
            self.ray.shutdown()
        elif self.impl == "fastmp":
            from fastmp import _cluster

            _cluster.close_clients()


@case(
    "cluster_apply_async",
    "cluster",
    "n x `apply_async(f, (i,))`, then every `get()`, trivial f, 2 workers "
    "(per task; fastmp: `Pool(cluster='local:2')`; Dask: `client.submit`)",
    goal_text="cheaper than Ray's Pool",
    peers=("ray", "dask"),
    peer_rounds=PEER_ROUNDS,
    max_n=20_000,
)
def _cluster_apply(mp, impl):
    pool = _ClusterPeer(mp, impl)
    pool.apply_many(_trivial, 10)  # workers up, imports done

    def run(n):
        t0 = perf()
        pool.apply_many(_trivial, n)
        return perf() - t0

    return Bench(run, pool.close)


@case(
    "cluster_map",
    "cluster",
    f"`map(f, items)` of a trivial function, default chunksize, "
    f"{CLUSTER_MAP_ITEMS:,} items (Dask: `client.map`, "
    f"{DASK_MAP_ITEMS:,} items), 2 workers (per item)",
    goal_text="cheaper than Ray's Pool",
    peers=("ray", "dask"),
    peer_rounds=PEER_ROUNDS,
)
def _cluster_map(mp, impl):
    pool = _ClusterPeer(mp, impl)
    pool.map(_trivial, list(range(100)))  # workers up, imports done

    def run(n):
        items = list(range(n))
        t0 = perf()
        pool.map(_trivial, items)
        return perf() - t0

    size = DASK_MAP_ITEMS if impl == "dask" else CLUSTER_MAP_ITEMS
    return Bench(run, pool.close, n=size)


def _cluster_cpu_case(tasks):
    def fn(mp, impl):
        if impl == "fastmp":
            pool = _ClusterPeer(mp, impl)
        else:
            # The baseline: fastmp's own local pool.
            pool = _ClusterPeer(importlib.import_module("fastmp"), "local")
        items = list(range(tasks))
        pool.pool.map(_cpu_task, items[:4], 1)  # workers up

        def run(n):
            t0 = perf()
            for _ in repeat(None, n):
                pool.pool.map(_cpu_task, items, 1)
            return perf() - t0

        return Bench(run, pool.close)

    return fn


# A job of about 0.1 s on two cores, and one of about 0.5 s: Dask's fixed
# cost per job (tens of ms on a busy 2-core machine) weighs on the first.
for _name, _tasks in (
    ("cluster_cpu_bound", 40),
    ("cluster_cpu_bound_long", 200),
):
    case(
        _name,
        "cluster",
        f"a CPU-bound job: `map(f, range({_tasks}), chunksize=1)`, "
        "tasks of about 5 ms, fastmp `Pool(cluster='local:2')` against "
        "fastmp's local `Pool(2)` (per job)",
        goal=1 / 1.3,
        goal_text="within 1.3x of fastmp's Pool(2)",
        baseline="fastmp's local Pool(2)",
        max_n=20,
    )(_cluster_cpu_case(_tasks))
