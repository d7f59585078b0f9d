"""Cluster mode: every Pool of a program on a Dask distributed cluster.

``python -m fastmp --cluster ADDRESS script.py``, ``FASTMP_CLUSTER=ADDRESS``
or ``fastmp.Pool(..., cluster=ADDRESS)`` make ``Pool()`` a ``ClusterPool``:
the same API and semantics, its tasks run by Dask workers.  ADDRESS is
``tcp://host:port`` (a running scheduler) or ``local`` / ``local:N`` (a
``LocalCluster`` of N worker processes, one thread each, for this run).
Dask is imported only here, only when a cluster pool is made.

How it works (docs/cluster.md):

* A call (an ``apply_async``, a chunk of a ``map``, an item or chunk of
  an ``imap``) is pickled in the caller's thread with cloudpickle, so a
  lambda or closure travels and an object that must stay on this machine
  (a fastmp lock, queue, Value/Array, shared memory, process, pool) fails
  that call at once with a clear ``RuntimeError``.
* The pool's one helper thread takes the calls queued since its last look
  and sends them as at most ``4 * workers`` Dask tasks (a group of calls
  each, in order): the scheduler's per-task cost (milliseconds) is paid per
  group, not per call.  It also gathers finished groups (one request for
  all those finished meanwhile) and hands each call's result to its
  ``AsyncResult``/iterator (the classes of fastmp.pool), running callbacks.
* A worker lost mid-group: Dask retries the group on another worker up to
  ``distributed.scheduler.allowed-failures`` times (default 3), then every
  call of the group fails with ``fastmp.pool.WorkerLostError``.
* One Dask client (and local cluster) per address per process, reused by
  every pool and closed at exit.
"""

import atexit
import itertools
import os
import pickle
import queue
import threading
import time
import uuid
from multiprocessing import util

from . import _observe
from ._pool_core import (
    _CALL,
    _MAP,
    _ONE,
    _STARMAP,
    CLOSE,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    PoolTerminatedError,
    WorkerLostError,
    _chunks,
    fail_pending,
    remember,
    run_after,
)

INSTALL_HINT = "pip install 'fastmp[cluster]'"

# How long Pool() waits for a scheduler to answer.
CONNECT_TIMEOUT = float(os.environ.get("FASTMP_CLUSTER_TIMEOUT", "10"))
# Calls sent per batch: at most this many Dask tasks per worker thread.
GROUPS_PER_WORKER = 4
# A Dask task's own cost (scheduler, messages, gathering), roughly: a
# group is made long enough for this to be a 20th of its run time, once
# the function's time per call is known.
TASK_COST = 0.005
# imap read-ahead when buffersize is None: tasks in flight per worker.
READ_AHEAD_PER_WORKER = 64
_TICK = 0.1
# How long closing a client or a local cluster may take at exit.
CLOSE_TIMEOUT = 5


def require_distributed():
    """The ``distributed`` package, or ImportError saying what to
    install."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            "fastmp cluster mode needs Dask distributed (%s): %s"
            % (e, INSTALL_HINT)
        ) from e
    return distributed


def check_installed():
    """Exit-worthy ImportError unless Dask distributed can be imported;
    does not import it (python -m fastmp checks before the aliasing, and
    Dask must import multiprocessing after it)."""
    import importlib.util

    for name in ("distributed", "cloudpickle"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(
                "fastmp cluster mode needs Dask distributed (no module "
                "named %r): %s" % (name, INSTALL_HINT)
            )


def parse_address(address):
    """("local", N or None) or ("remote", address); ValueError if it is
    neither."""
    if not isinstance(address, str):
        raise TypeError(
            "cluster address must be a str, not %s" % type(address).__name__
        )
    if not address:
        raise ValueError("cluster address must not be empty")
    if address == "local":
        return "local", None
    if address.startswith("local:"):
        n = address[6:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(
                "cluster address %r: local:N needs N >= 1" % address
            )
        return "local", int(n)
    if "://" in address or ":" in address:
        return "remote", address
    raise ValueError(
        "cluster address %r: expected tcp://host:port, local or local:N"
        % address
    )


# ---------------------------------------------------------------- clients

_clients = {}  # address -> (client, cluster or None)
_clients_lock = threading.Lock()


def get_client(address, processes=None):
    """This process's Dask client for `address` (made on first use,
    closed at exit).  An unreachable scheduler raises OSError within
    CONNECT_TIMEOUT seconds."""
    kind, n = parse_address(address)
    if kind == "local" and n is None:
        n = processes or os.cpu_count() or 1
        address = "local:%d" % n
    with _clients_lock:
        entry = _clients.get(address)
        if entry is not None and entry[0].status == "running":
            return entry[0]
        distributed = require_distributed()
        cluster = None
        if kind == "local":
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port
                silence_logs=40,  # errors only
            )
            target = cluster
        else:
            target = address
        try:
            client = distributed.Client(
                target, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        except OSError as e:
            if cluster is not None:
                cluster.close()
            raise OSError(
                "fastmp: cannot reach the Dask scheduler at %s within %g s"
                " (%s)" % (address, CONNECT_TIMEOUT, e)
            ) from e
        if not _clients:
            atexit.register(close_clients)
        _clients[address] = (client, cluster)
        return client


def close_clients():
    """Close every client (and local cluster) this process made."""
    with _clients_lock:
        entries = list(_clients.values())
        _clients.clear()
    for client, cluster in entries:
        # With timeouts: closing a LocalCluster whose worker was just
        # killed can wait forever on its nanny (seen with Dask 2024.8);
        # what is left then are daemonic processes, ended at exit.
        for obj in (client, cluster):
            if obj is None:
                continue
            try:
                obj.close(timeout=CLOSE_TIMEOUT)
            except Exception:  # noqa: BLE001 (at exit: best effort)
                pass


# ---------------------------------------------------------------- pickling


def _local_types():
    """The fastmp types whose objects live on this machine only."""
    from multiprocessing.process import BaseProcess

    from . import _fastmp, connection, pool, queues, shared_memory

    types = [
        BaseProcess,
        pool.Pool,
        queues.Queue,
        queues.SimpleQueue,
        connection.Connection,
        shared_memory.SharedMemory,
        shared_memory.ShareableList,
    ]
    for name in dir(_fastmp):
        t = getattr(_fastmp, name)
        if isinstance(t, type) and not issubclass(t, BaseException):
            types.append(t)
    from . import synchronize

    for name in ("Condition", "Barrier"):
        t = getattr(synchronize, name, None)
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


_LOCAL = None
_Pickler = None


def _pickler_class():
    global _LOCAL, _Pickler
    if _Pickler is None:
        import cloudpickle

        _LOCAL = _local_types()

        class Pickler(cloudpickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, _LOCAL):
                    t = type(obj)
                    raise RuntimeError(
                        "fastmp cluster mode: a %s (%s.%s) cannot be sent to"
                        " a cluster worker: processes, locks, queues, "
                        "Values/Arrays and shared memory stay on this "
                        "machine (see docs/cluster.md)"
                        % (t.__name__, t.__module__, t.__qualname__)
                    )
                return super().reducer_override(obj)

        _Pickler = Pickler
    return _Pickler


def dumps(obj):
    """cloudpickle's pickle of obj; RuntimeError for a local object."""
    import io

    buf = io.BytesIO()
    _pickler_class()(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


# Function pickles are kept for reuse (client side: function -> pickle;
# worker side: pickle -> function), at most 256 of each (remember()), and
# only small ones: a closure or partial over large data is pickled (and
# unpickled) per batch instead of staying in memory for the rest of the
# program.
FUNC_CACHE_BYTES = 64 * 1024


_func_pickles: dict = {}


def _dump_func(func):
    # A function's pickle never changes: made once per function.
    try:
        return _func_pickles[func]
    except (KeyError, TypeError):
        pass
    data = dumps(func)
    if len(data) <= FUNC_CACHE_BYTES:
        remember(_func_pickles, func, data)
    return data


# ---------------------------------------------------------------- workers

_worker_funcs: dict = {}  # function pickle -> function (worker side)


def _load_func(data):
    func = _worker_funcs.get(data)
    if func is None:
        func = pickle.loads(data)
        if len(data) <= FUNC_CACHE_BYTES:
            remember(_worker_funcs, data, func)
    return func


def _call(fdata, kind, payload):
    func = _load_func(fdata)
    if kind == _ONE:
        return func(pickle.loads(payload))
    if kind == _MAP:
        return list(map(func, pickle.loads(payload)))
    if kind == _STARMAP:
        return list(itertools.starmap(func, pickle.loads(payload)))
    args, kwds = pickle.loads(payload)
    return func(*args, **kwds)


def run_group(calls, timed=False):
    """A Dask task: run each (function pickle, kind, arguments pickle) in
    order; a list of result pickles, each ``(True, value)`` or ``(False,
    exception with its traceback)``.  With `timed` (insight: the functions
    are wrapped in _observe.Timed), also the calls' timings."""
    import cloudpickle

    out = []
    t0 = time.perf_counter()
    for fdata, kind, payload in calls:
        try:
            res = (True, _call(fdata, kind, payload))
        except BaseException as e:  # noqa: BLE001 (SystemExit too)
            res = (False, ExceptionWithTraceback(e, e.__traceback__))
        try:
            data = cloudpickle.dumps(res)
        except Exception as e:  # noqa: BLE001
            data = cloudpickle.dumps((False, MaybeEncodingError(e, res[1])))
        out.append(data)
    elapsed = time.perf_counter() - t0
    return out, elapsed, _observe.take_records() if timed else None


def _initializer_plugin(initializer, initargs):
    """A Dask worker plugin running a pool's initializer once per worker
    process (and in workers that join later)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class Initializer(WorkerPlugin):
        def setup(self, worker):
            initializer(*initargs)

    return Initializer()


# ---------------------------------------------------------------- the core


class _Core:
    """A cluster pool's state, shared by the pool, its results (the
    classes of fastmp.pool, which call wait_for/feed/dlock) and the
    helper thread."""

    def __init__(self, client, nworkers, insight):
        self.client = client
        self.nworkers = nworkers
        self.insight = insight
        self.state = RUN
        self.cache = {}
        self.feeders = []
        self.dlock = threading.Lock()
        self.cv = threading.Condition(self.dlock)
        self.inbox = queue.SimpleQueue()  # calls to send, finished futures
        # Dask future -> ([(result, index) of its calls], function pickle)
        self.futures = {}
        # hash of a function pickle -> its time per call, in seconds (see
        # ngroups; the hash, so that a large pickle is not kept for it)
        self.cost = {}
        self.thread = None
        self.plugin = None

    # -- what the result classes call

    def wait_for(self, pred, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if threading.current_thread() is self.thread:
            # A callback waiting for another result: this thread is the
            # one that sends calls and delivers results, so it goes on
            # doing that while it waits.
            while not pred():
                left = _TICK
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        return
                self.step(left)
            return
        with self.cv:
            while not pred():
                if deadline is None:
                    self.cv.wait(_TICK)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.cv.wait(min(left, _TICK))

    def after(self, fn):
        run_after(fn)
        with self.cv:
            self.cv.notify_all()

    def local_set(self, r, i, obj):
        with self.dlock:
            after = r._set(i, obj)
        self.after(after)

    def feed(self, f, limit):
        """Read up to `limit` more items of imap feeder f, within its
        buffer (buffersize, or READ_AHEAD_PER_WORKER per worker)."""
        if f.done or not f.lock.acquire(False):
            return
        try:
            if f not in self.feeders:
                # (a list's feeder too: the helper reads on when the
                # caller does not)
                with self.dlock:
                    self.feeders.append(f)
            bound = f.buffersize
            if bound is None:
                # After close(), the rest of the input is read whether or
                # not results are taken, so that join() returns.
                bound = READ_AHEAD_PER_WORKER * self.nworkers
                if self.state != RUN:
                    bound = None
            r = f.result
            items = list(f.read(self, limit, bound))
            if items:
                self.submit(r, f.kind, f.func, items)
            if f.done:
                f.it = None
                with self.dlock:
                    r._set_length(f.index)
                    if f in self.feeders:
                        self.feeders.remove(f)
                    self.cv.notify_all()
        finally:
            f.lock.release()

    def wake(self):
        self.inbox.put(None)

    # -- sending

    def submit(self, r, kind, func, items):
        """Queue the calls (i, arguments) of result r, pickled here (an
        error is that call's result), all at once: the helper sends them
        in one batch."""
        calls = []
        failed = []
        try:
            fdata = _dump_func(func)
        except Exception as e:  # noqa: BLE001
            fdata, ferr = None, e
        for i, args in items:
            try:
                if fdata is None:
                    raise ferr
                calls.append((r, i, (fdata, kind, dumps(args))))
            except Exception as e:  # noqa: BLE001
                failed.append((i, e))
        if calls:
            self.inbox.put(calls)
        for i, e in failed:
            self.local_set(r, i, (False, e))

    def ngroups(self, calls):
        """How many Dask tasks to make of these calls: GROUPS_PER_WORKER
        per worker thread at most; fewer (not under one per worker
        thread) when the calls' functions are known to be quick, so that
        a task runs at least 20 x TASK_COST."""
        n = len(calls)
        most = min(n, GROUPS_PER_WORKER * self.nworkers)
        total = 0.0
        cost = self.cost
        for c in calls:
            t = cost.get(hash(c[2][0]))
            if t is None:
                return most
            total += t
        # A whole number of tasks per worker thread: equal shares.
        w = self.nworkers
        fit = int(total / (20 * TASK_COST)) // w * w
        return max(min(n, w), min(most, fit))

    def send(self, calls):
        """Send the calls as Dask tasks (see ngroups), each a run of
        consecutive calls."""
        ngroups = self.ngroups(calls)
        size, extra = divmod(len(calls), ngroups)
        groups = []
        j = 0
        for g in range(ngroups):
            k = j + size + (g < extra)
            groups.append(calls[j:k])
            j = k
        futs = self.client.map(
            run_group,
            [[c[2] for c in grp] for grp in groups],
            timed=self.insight is not None,
            pure=False,
            key=["fastmp-%s" % uuid.uuid4().hex for _ in groups],
        )
        put = self.inbox.put
        for fut, grp in zip(futs, groups):
            self.futures[fut] = ([(c[0], c[1]) for c in grp], grp[0][2][0])
            fut.add_done_callback(put)

    # -- receiving

    def deliver(self, done):
        ok = [f for f in done if f.status == "finished"]
        values = {}
        if ok:
            try:
                values = dict(zip(ok, self.client.gather(ok)))
            except Exception:  # noqa: BLE001
                # One of them was lost meanwhile: one by one (a lost one
                # is failed by group_error below).
                for f in ok:
                    try:
                        values[f] = f.result(timeout=60)
                    except Exception:  # noqa: BLE001
                        pass
        for fut in done:
            entry = self.futures.pop(fut, None)
            if entry is None:
                continue
            targets, fdata = entry
            if fut in values:
                out, elapsed, records = values[fut]
                if records is not None:
                    self.insight.add(records)
                # The function's time per call, for the next batches'
                # grouping (20 x TASK_COST per group: see ngroups).
                per = elapsed / max(1, len(targets))
                key = hash(fdata)
                old = self.cost.get(key)
                remember(
                    self.cost, key, per if old is None else (old + per) / 2
                )
                for (r, i), data in zip(targets, out):
                    try:
                        res = pickle.loads(data)
                    except Exception as e:  # noqa: BLE001
                        err = MaybeEncodingError(e, None)
                        err.value = "<the result of %s>" % r._describe(i)
                        res = (False, err)
                    self.local_set(r, i, res)
                continue
            err = self.group_error(fut, targets)
            for r, i in targets:
                self.local_set(r, i, (False, err))

    def group_error(self, fut, targets):
        try:
            exc = fut.exception(timeout=5)
        except Exception as e:  # noqa: BLE001 (cancelled, lost)
            exc = e
        from distributed.scheduler import KilledWorker

        what = ", ".join(r._describe(i) for r, i in targets[:3])
        if len(targets) > 3:
            what += " and %d more" % (len(targets) - 3)
        if isinstance(exc, KilledWorker):
            last = getattr(exc, "last_worker", None)
            name = getattr(last, "address", None) or str(last)
            err = WorkerLostError(
                "cluster worker %s died while running %s (Dask gave up "
                "after %s allowed failures)"
                % (name, what, getattr(exc, "allowed_failures", "?")),
                worker=name,
                task=what,
            )
            err.__cause__ = exc
            return err
        if self.state == TERMINATE:
            return PoolTerminatedError(
                "the pool was terminated before this task's result came back"
            )
        if exc is None or fut.status in ("cancelled", "lost", "finished"):
            # The scheduler dropped it (gone, restarted) or its result
            # was lost with a worker.
            err = WorkerLostError(
                "the cluster lost %s (task %s, status %s)"
                % (what, fut.key, fut.status),
                task=what,
            )
            err.__cause__ = exc
            return err
        return exc

    # -- the helper thread

    def run(self):
        """The helper thread's body."""
        while self.state != TERMINATE:
            try:
                self.loop()
                return
            except Exception:  # noqa: BLE001
                # Keep delivering whatever went wrong here.
                if self.state == TERMINATE:
                    return
                import traceback

                traceback.print_exc()
                time.sleep(_TICK)

    def loop(self):
        while self.state != TERMINATE:
            for f in list(self.feeders):
                self.feed(f, 64)
            if self.state == CLOSE:
                with self.dlock:
                    if not self.cache and not self.feeders:
                        return
            self.step(_TICK)

    def step(self, timeout):
        """Take what arrived within `timeout` (calls to send, finished
        tasks): send the calls, deliver the results."""
        get = self.inbox.get
        try:
            items = [get(True, timeout)]
        except queue.Empty:
            return
        while True:
            try:
                items.append(get(False))
            except queue.Empty:
                break
        if self.state == TERMINATE:
            return
        calls = [c for x in items if type(x) is list for c in x]
        if calls:
            try:
                self.send(calls)
            except Exception as e:  # noqa: BLE001 (client closed ...)
                for r, i, _ in calls:
                    self.local_set(r, i, (False, e))
        done = [x for x in items if x is not None and type(x) is not list]
        if done:
            self.deliver(done)

    def terminate(self):
        self.state = TERMINATE
        self.wake()
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        futs = list(self.futures)
        self.futures.clear()
        if futs:
            try:
                self.client.cancel(futs, force=True)
            except Exception:  # noqa: BLE001 (client gone at exit)
                pass
        self.unregister()
        fail_pending(self.dlock, self.cache)
        self.feeders.clear()
        with self.cv:
            self.cv.notify_all()

    def unregister(self):
        name, self.plugin = self.plugin, None
        if name is not None:
            try:
                self.client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 (client gone at exit)
                pass


def _terminate(core):
    util.debug("terminating cluster pool")
    core.terminate()
    if core.insight is not None:
        core.insight.report()


# ---------------------------------------------------------------- the pool


def make_pool_class():
    """ClusterPool, a subclass of fastmp.pool.Pool (made on first use, as
    fastmp.pool imports this module lazily)."""
    from . import pool as _pool

    class ClusterPool(_pool.Pool):
        """A Pool whose tasks run on a Dask cluster (fastmp.pool.Pool's
        API and semantics; see docs/cluster.md for what differs)."""

        def __init__(
            self,
            processes=None,
            initializer=None,
            initargs=(),
            maxtasksperchild=None,
            context=None,
            cluster=None,
        ):
            self._pool = []
            self._state = "INIT"
            if not _pool._is_address(cluster):
                cluster = os.environ.get("FASTMP_CLUSTER")
            if processes is not None and processes < 1:
                raise ValueError("Number of processes must be at least 1")
            if maxtasksperchild is not None:
                if (
                    not isinstance(maxtasksperchild, int)
                    or maxtasksperchild <= 0
                ):
                    raise ValueError(
                        "maxtasksperchild must be a positive int or None"
                    )
            if initializer is not None and not callable(initializer):
                raise TypeError("initializer must be a callable")
            self._cluster = cluster
            client = get_client(cluster, processes)
            nthreads = client.nthreads()
            self._pool = sorted(nthreads)
            nworkers = max(1, sum(nthreads.values()))
            self._processes = nworkers
            insight = self._insight = _observe.insight_for(self, nworkers)
            core = self._core = _Core(client, nworkers, insight)
            self._cache = core.cache
            self._progress = _observe.progress()
            if initializer is not None:
                name = "fastmp-init-%s" % uuid.uuid4().hex
                plugin = _initializer_plugin(initializer, initargs)
                try:
                    register = client.register_plugin
                except AttributeError:  # older distributed
                    register = client.register_worker_plugin
                core.plugin = name
                try:
                    register(plugin, name=name)
                except BaseException:
                    # The initializer raised in a worker: Pool() fails
                    # with its exception; nothing stays registered.
                    core.unregister()
                    raise
            self._state = RUN
            t = core.thread = threading.Thread(
                target=core.run, name="fastmp-cluster-helper", daemon=True
            )
            t.start()
            self._terminate = util.Finalize(
                self, _terminate, args=(core,), exitpriority=15
            )

        def __repr__(self):
            cls = self.__class__
            return (
                f"<{cls.__module__}.{cls.__qualname__} "
                f"state={self._state} cluster={self._cluster!r} "
                f"workers={self._processes}>"
            )

        def apply_async(
            self,
            func,
            args=(),
            kwds={},  # noqa: B006 (the stdlib's)
            callback=None,
            error_callback=None,
        ):
            """Asynchronous version of apply(): returns an AsyncResult."""
            if self._state != RUN:
                raise ValueError("Pool not running")
            result = _pool.ApplyResult(self, callback, error_callback)
            result._what = func
            if self._insight is not None:
                func = self._insight.wrap(func)
            self._core.submit(result, _CALL, func, [(-1, (args, kwds))])
            return result

        def _map_async(
            self,
            func,
            iterable,
            kind,
            chunksize=None,
            callback=None,
            error_callback=None,
        ):
            result, func, iterable, chunksize = self._map_result(
                func, iterable, kind, chunksize, callback, error_callback
            )
            if chunksize <= 0:
                return result
            n = len(iterable)
            try:
                items = list(enumerate(_chunks(iterable, chunksize)))
            except Exception as e:  # noqa: BLE001 (the input raised)
                total = n // chunksize + bool(n % chunksize)
                for i in range(total):
                    self._core.local_set(result, i, (False, e))
                return result
            self._core.submit(result, kind, func, items)
            return result

        def _imap(self, cls, func, iterable, chunksize, buffersize):
            it = _pool.Pool._imap(
                self, cls, func, iterable, chunksize, buffersize
            )
            self._core.wake()
            return it

        def close(self):
            """No more tasks: the pool ends once the queued ones are
            done."""
            if self._state == RUN:
                self._state = CLOSE
                self._core.state = CLOSE
                self._core.wake()

        def join(self):
            """Wait for the queued tasks (after close() or
            terminate())."""
            if self._state == RUN:
                raise ValueError("Pool is still running")
            elif self._state not in (CLOSE, TERMINATE):
                raise ValueError("In unknown state")
            t = self._core.thread
            if t is not None and t is not threading.current_thread():
                t.join()
            self._terminate()

    ClusterPool.__module__ = "fastmp.pool"
    ClusterPool.__qualname__ = "ClusterPool"
    return ClusterPool


_ClusterPool = None


def pool_class():
    global _ClusterPool
    if _ClusterPool is None:
        _ClusterPool = make_pool_class()
    return _ClusterPool
