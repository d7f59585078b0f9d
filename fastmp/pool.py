"""Process pools: ``fastmp.pool.Pool``, the stdlib's ``multiprocessing.pool``
API on fastmp's shared-memory queues.

Workers take tasks from one fastmp queue (a ring buffer in shared memory,
see fastmp/queues.py) and put results on another; there are no feeder
threads and at most one helper thread in the parent.  A thread waiting in
``get()``, ``wait()`` or ``next()`` reads the result queue itself, so a
result reaches it without a thread hand-off; the helper thread reads
results while nobody waits (for callbacks), feeds lazy ``imap`` input,
watches the workers and replaces those that exit.

What differs from the stdlib (docs/pool.md):

* each worker records the task it runs in shared memory; when a worker
  dies (a signal, ``os._exit``, a crash in C code) that task fails with
  ``WorkerLostError`` naming the worker, its exit code or signal and the
  task, and the pool starts a new worker;
* ``SystemExit`` and ``KeyboardInterrupt`` raised by a task are that
  task's exception;
* a result that cannot be pickled, or cannot be unpickled in the parent,
  is ``MaybeEncodingError`` on that result;
* ``imap``/``imap_unordered`` take ``buffersize=`` on every Python;
* results still pending when the pool is terminated fail with
  ``PoolTerminatedError`` instead of never becoming ready.
"""

import collections
import inspect
import os
import threading
import types
import warnings
from multiprocessing import TimeoutError, util

from . import _observe
from ._pool_core import (  # noqa: F401  (the stdlib's names, re-exported)
    _CALL,
    _MAP,
    _ONE,
    _STARMAP,
    CLOSE,
    INIT,
    PLACED,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    PoolTerminatedError,
    RemoteTraceback,
    ThreadPool,
    WorkerLostError,
    _chunks,
    _Core,
    _dump_func,
    _dumps,
    _dumps_list,
    _Feeder,
    _func_name,
    _terminate_pool,
    job_counter,
    mapstar,
    rebuild_exc,
    starmapstar,
    worker,
)

__all__ = ["Pool", "ThreadPool"]


# ---------------------------------------------------------------- results


class ApplyResult:
    """The result of ``Pool.apply_async()``."""

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._core = pool._core
        self._job = next(job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._ready = False
        self._what = None
        self._cache[self._job] = self

    def ready(self):
        return self._ready

    def successful(self):
        if not self._ready:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def _is_ready(self):
        return self._ready

    def wait(self, timeout=None):
        if not self._ready:
            self._core.wait_for(self._is_ready, timeout)

    def get(self, timeout=None):
        if not self._ready:
            self._core.wait_for(self._is_ready, timeout)
            if not self._ready:
                raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, i, obj):
        # Called with the pool's dispatch lock held; returns what to run
        # once it is released (callbacks, then readiness).
        self._success, self._value = obj
        del self._cache[self._job]
        return self._finish

    def _finish(self):
        try:
            if self._success:
                if self._callback:
                    self._callback(self._value)
            elif self._error_callback:
                self._error_callback(self._value)
        finally:
            self._ready = True
            self._pool = None

    def _describe(self, i):
        return "apply(%s)" % _func_name(self._what)

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``Pool.map_async()`` and ``Pool.starmap_async()``."""

    def __init__(self, pool, chunksize, length, callback, error_callback):
        ApplyResult.__init__(self, pool, callback, error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._ready = True
            del self._cache[self._job]
            self._pool = None
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _into(self, i):
        # Where chunk i's items go while the map is a success: (list,
        # start), for the dispatcher (see _Core.dispatch).
        if self._success:
            return self._value, i * self._chunksize
        return None

    def _set(self, i, success_result):
        self._number_left -= 1
        success, result = success_result
        if success and self._success and result is not PLACED:
            cs = self._chunksize
            self._value[i * cs : (i + 1) * cs] = result
        elif not success and self._success:
            # Only the first exception is kept.
            self._success = False
            self._value = result
        if self._number_left == 0:
            del self._cache[self._job]
            return self._finish
        return None

    def _describe(self, i):
        return "chunk %d of map(%s)" % (i, _func_name(self._what))


class IMapIterator:
    """The iterator ``Pool.imap()`` returns."""

    def __init__(self, pool):
        self._pool = pool
        self._core = pool._core
        self._job = next(job_counter)
        self._cache = pool._cache
        self._items = collections.deque()
        self._index = 0
        self._length = None
        self._unsorted = {}
        self._feeder = None
        self._what = None
        self._cache[self._job] = self

    def __iter__(self):
        return self

    def _has_item(self):
        return bool(self._items) or self._index == self._length

    def next(self, timeout=None):
        core = self._core
        if not self._items:
            if self._index == self._length:
                self._pool = None
                raise StopIteration from None
            f = self._feeder
            if f is not None and not f.done:
                core.feed(f, 64 if f.buffersize is None else 1)
            core.wait_for(self._has_item, timeout)
        f = self._feeder
        with core.dlock:
            try:
                item = self._items.popleft()
            except IndexError:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                raise TimeoutError from None
            if f is not None:
                f.consumed += 1
        if f is not None and not f.done:
            # Room in the buffer (or more input to read): feed it here
            # rather than wait for the helper thread.
            core.feed(f, 64 if f.buffersize is None else 1)
        success, value = item
        if success:
            return value
        raise value

    __next__ = next

    def _set(self, i, obj):
        if self._index == i:
            self._items.append(obj)
            self._index += 1
            while self._index in self._unsorted:
                self._items.append(self._unsorted.pop(self._index))
                self._index += 1
        else:
            self._unsorted[i] = obj
        if self._index == self._length:
            self._done()
        return None

    def _set_length(self, length):
        self._length = length
        if self._index == self._length:
            self._done()

    def _done(self):
        self._cache.pop(self._job, None)
        self._pool = None

    def _describe(self, i):
        return "item %d of imap(%s)" % (i, _func_name(self._what))


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``Pool.imap_unordered()`` returns."""

    def _set(self, i, obj):
        self._items.append(obj)
        self._index += 1
        if self._index == self._length:
            self._done()
        return None


# ---------------------------------------------------------------- the pool


def _terminate_and_report(core, insight):
    _terminate_pool(core)
    insight.report()


def _is_address(cluster):
    """Whether Pool's cluster= asks for cluster mode: anything but None
    and an empty string (no address, as an empty FASTMP_CLUSTER)."""
    return cluster is not None and not (type(cluster) is str and not cluster)


class Pool:
    """A pool of worker processes to which jobs can be submitted (the
    stdlib's multiprocessing.pool.Pool, on fastmp's queues; see the
    module docstring for how it differs)."""

    _wrap_exception = True
    _progress = None
    _insight = None

    def __new__(cls, *args, **kwds):
        # Cluster mode (docs/cluster.md): Pool(cluster=ADDRESS), or every
        # Pool when FASTMP_CLUSTER is set (python -m fastmp --cluster).
        # Any arguments: a subclass's __init__ may take others.
        if "cluster" in kwds:
            cluster = kwds["cluster"]
        else:
            cluster = args[5] if len(args) > 5 else None
        if cls is Pool and (
            _is_address(cluster) or os.environ.get("FASTMP_CLUSTER")
        ):
            from . import _cluster

            cls = _cluster.pool_class()
        return object.__new__(cls)

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

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
        self._state = INIT
        if _is_address(cluster):
            # (Pool() itself is a ClusterPool then: a subclass got here.)
            raise TypeError(
                "%s runs locally: cluster= is taken by fastmp.pool.Pool "
                "itself, not by its subclasses (docs/cluster.md)"
                % type(self).__name__
            )
        if context is None:
            from .context import _default_context

            context = _default_context.get_context()
        self._ctx = context
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs
        if processes is None:
            cpus = getattr(os, "process_cpu_count", os.cpu_count)
            processes = cpus() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError(
                    "maxtasksperchild must be a positive int or None"
                )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._progress = _observe.progress()
        self._insight = _observe.insight_for(self, processes, local=True)
        core = self._core = _Core(
            context, processes, initializer, initargs, maxtasksperchild
        )
        core.Process = self.Process
        core.wrap_exception = self._wrap_exception
        self._cache = core.cache
        self._pool = core.workers
        try:
            for k in range(processes):
                core.workers.append(core.start_worker(k))
        except Exception:
            for p in core.workers:
                if p.exitcode is None:
                    p.terminate()
            for p in core.workers:
                p.join()
            raise
        core.state = RUN
        self._state = RUN
        t = core.thread = threading.Thread(
            target=core.run, name="fastmp-pool-helper", daemon=True
        )
        t.start()
        if self._insight is None:
            fin, args = _terminate_pool, (core,)
        else:
            fin, args = _terminate_and_report, (core, self._insight)
        self._terminate = util.Finalize(self, fin, args=args, exitpriority=15)

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if getattr(self, "_state", None) == RUN:
            _warn(
                f"unclosed running multiprocessing pool {self!r}",
                ResourceWarning,
                source=self,
            )

    def __repr__(self):
        cls = self.__class__
        return (
            f"<{cls.__module__}.{cls.__qualname__} "
            f"state={self._state} pool_size={len(self._pool)}>"
        )

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled"
        )

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _repopulate_pool(self):
        self._core.repopulate()

    # -- submitting

    def apply(self, func, args=(), kwds={}):  # noqa: B006 (the stdlib's)
        """Equivalent of func(*args, **kwds); waits for the result."""
        return self.apply_async(func, args, kwds).get()

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
        result = ApplyResult(self, callback, error_callback)
        result._what = func
        if self._insight is not None:
            func = self._insight.wrap(func)
        try:
            self._core.put_task(
                result._job, -1, _CALL, _dump_func(func), _dumps((args, kwds))
            )
        except Exception as e:  # noqa: BLE001
            self._core.local_set(result, -1, (False, e))
        if callback is not None or error_callback is not None:
            self._nudge()
        return result

    def _nudge(self):
        core = self._core
        if core.parked and not core.waiters:
            core.kick.set()

    def map(self, func, iterable, chunksize=None):
        """Apply func to each element of iterable, collecting the results
        in a list that is returned."""
        return self._map_async(func, iterable, _MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """Like map(), with the elements of iterable unpacked as
        arguments: [func(*a) for a in iterable]."""
        return self._map_async(func, iterable, _STARMAP, chunksize).get()

    def map_async(
        self,
        func,
        iterable,
        chunksize=None,
        callback=None,
        error_callback=None,
    ):
        """Asynchronous version of map(): returns a MapResult."""
        return self._map_async(
            func, iterable, _MAP, chunksize, callback, error_callback
        )

    def starmap_async(
        self,
        func,
        iterable,
        chunksize=None,
        callback=None,
        error_callback=None,
    ):
        """Asynchronous version of starmap(): returns a MapResult."""
        return self._map_async(
            func, iterable, _STARMAP, chunksize, callback, error_callback
        )

    def _map_result(
        self, func, iterable, kind, chunksize, callback, error_callback
    ):
        """What every map starts with: the checks, the input as a sequence,
        the stdlib's default chunksize (4 chunks per worker), the
        MapResult (0 items: ready at once), progress and insight.  Returns
        (result, func to send, input, chunksize)."""
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        n = len(iterable)
        if chunksize is None:
            chunksize, extra = divmod(n, self._processes * 4)
            if extra:
                chunksize += 1
        if n == 0:
            chunksize = 0
        result = MapResult(self, chunksize, n, callback, error_callback)
        result._what = func
        if self._progress is not None:
            self._progress.track(result, n, kind, func)
        if chunksize > 0 and self._insight is not None:
            func = self._insight.wrap(func)
        return result, func, iterable, chunksize

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
        core = self._core
        job = result._job
        failed = []  # (index, exception): set once the put lock is free
        i = 0
        with core.dlock:
            core.submitting += 1
        try:
            try:
                fdata = _dump_func(func)
            except Exception as e:  # noqa: BLE001
                fdata, fail = None, e
            # The whole map under the put lock (see _Core.put_task), in one
            # tight loop.
            with core.plock:
                outstanding = core.outstanding
                put = core.inq.put
                seq = core.nput
                # A list's chunks are written from the list itself (no
                # slice made): there, a chunk is its start.
                whole = iterable if type(iterable) is list else None
                if whole is not None:
                    chunks = range(0, len(whole), chunksize)
                else:
                    chunks = _chunks(iterable, chunksize)
                try:
                    for chunk in chunks:
                        key = (job, i)
                        try:
                            if fdata is None:
                                raise fail
                            if whole is not None:
                                data = _dumps_list(
                                    whole, chunk, chunk + chunksize
                                )
                            else:
                                data = _dumps_list(chunk)
                            outstanding[key] = seq
                            put((job, i, kind, fdata, data))
                            seq += 1
                        except Exception as e:  # noqa: BLE001
                            outstanding.pop(key, None)
                            failed.append((i, e))
                        i += 1
                finally:
                    core.nput = seq
        except Exception as e:  # noqa: BLE001 (the input itself raised)
            # This chunk and those never made fail with the input's error.
            failed.append((i, e))
            n = len(iterable)
            total = n // chunksize + bool(n % chunksize)
            failed.extend((j, e) for j in range(i + 1, total))
        finally:
            with core.dlock:
                core.submitting -= 1
        for j, e in failed:
            core.local_set(result, j, (False, e))
        if callback is not None or error_callback is not None:
            self._nudge()
        return result

    def imap(self, func, iterable, chunksize=1, buffersize=None):
        """Equivalent of map(), lazily: returns an iterator of the results
        in order.  With buffersize, at most that many tasks are read ahead
        of the results consumed."""
        return self._imap(IMapIterator, func, iterable, chunksize, buffersize)

    def imap_unordered(self, func, iterable, chunksize=1, buffersize=None):
        """Like imap(), but the results come in the order they are
        ready."""
        return self._imap(
            IMapUnorderedIterator, func, iterable, chunksize, buffersize
        )

    def _imap(self, cls, func, iterable, chunksize, buffersize):
        self._check_running()
        if buffersize is not None:
            if not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if chunksize != 1 and chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result = cls(self)
        result._what = func
        if self._progress is not None:
            total = len(iterable) if hasattr(iterable, "__len__") else None
            self._progress.track(result, total, _ONE, func, chunksize)
        if self._insight is not None:
            func = self._insight.wrap(func)
        core = self._core
        if chunksize == 1:
            it, kind = iter(iterable), _ONE
        else:
            it, kind = _chunks(iterable, chunksize), _MAP
        f = _Feeder(it, result, kind, func, buffersize)
        result._feeder = f
        if buffersize is None and isinstance(iterable, (list, tuple)):
            # Nothing lazy about a list: put it all now.
            core.feed(f, len(iterable) + 1)
        else:
            with core.dlock:
                core.feeders.append(f)
            core.feed(f, buffersize or 64)
            core.wake()
        if chunksize == 1:
            return result
        return (item for chunk in result for item in chunk)

    # -- ending

    def close(self):
        """No more tasks: the workers exit once the queued ones are
        done."""
        util.debug("closing pool")
        if self._state == RUN:
            self._state = CLOSE
            self._core.state = CLOSE
            self._core.wake()

    def terminate(self):
        """Stop the workers now (SIGTERM); pending results fail."""
        util.debug("terminating pool")
        self._state = TERMINATE
        self._terminate()
        if self._insight is not None:
            self._insight.report()

    def join(self):
        """Wait for the workers to exit (after close() or terminate())."""
        util.debug("joining pool")
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        t = self._core.thread
        if t is not None and t is not threading.current_thread():
            t.join()
        for p in list(self._pool):
            p.join()
        if self._insight is not None:
            self._insight.report()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


# inspect.signature(Pool) reads __new__ first: show __init__'s parameters
# (after cls, as a __new__ takes them).
_init_params = list(inspect.signature(Pool.__init__).parameters.values())
Pool.__new__.__signature__ = inspect.Signature(
    [_init_params[0].replace(name="cls"), *_init_params[1:]]
)
del _init_params
