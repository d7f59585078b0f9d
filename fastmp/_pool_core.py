"""The machinery under ``fastmp.pool``: the worker process's loop, the
per-pool state shared by the Pool, its results, its helper thread and its
finalizer (``_Core``), and the lazy-input feeder.  See fastmp/pool.py for
the public API and docs/pool.md for how it works."""

import itertools
import mmap
import os
import signal
import sys
import threading
import time
import traceback
import types
from multiprocessing import (  # noqa: F401
    ProcessError,
    TimeoutError,
    context,
    reduction,
    util,
)
from queue import Empty

from . import _fastmp
from .queues import Queue as _Queue


def _stdlib_pool():
    alias = sys.modules.get("fastmp._alias")
    if alias is not None and alias.installed():
        return alias.stdlib_module("pool")
    import importlib

    return importlib.import_module("multiprocessing.pool")


_std = _stdlib_pool()

# The stdlib's own helpers, so that an exception pickled by a fastmp
# worker is the same class code already catches.
ExceptionWithTraceback = _std.ExceptionWithTraceback
MaybeEncodingError = _std.MaybeEncodingError
RemoteTraceback = _std.RemoteTraceback
rebuild_exc = _std.rebuild_exc
mapstar = _std.mapstar
starmapstar = _std.starmapstar
# The thread pool has no process-shared data path: it stays the stdlib's.
ThreadPool = _std.ThreadPool

__all__ = []

INIT = "INIT"
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

job_counter = itertools.count()

_dumps = _fastmp._dumps
_loads = _fastmp._loads
# Task payloads and results: lists of plain ints or floats (a map's chunks
# and their results, most often) in a compact form, anything else pickled.
_dumps_list = _fastmp._dumps_list
_loads_list = _fastmp._loads_list
_map_list = _fastmp._map_list
_loads_list_into = _fastmp._loads_list_into

# A map's result chunk already put in place by the dispatcher.
PLACED = object()

# How often the parent looks at its workers (and the longest a waiting
# thread sleeps before it looks around again): a dead worker's task fails
# within about two of these.
_TICK = 0.1

# Kinds of task a worker runs.
_CALL = 0  # func(*args, **kwds)
_ONE = 1  # func(arg)
_MAP = 2  # list(map(func, chunk))
_STARMAP = 3  # list(starmap(func, chunk))


class WorkerLostError(ProcessError):
    """A pool worker died while it ran a task (killed by a signal, ended
    by ``os._exit``, crashed in C code): that task's result.

    ``pid``, ``exitcode`` (negative: the signal number), ``worker`` (its
    name) and ``task`` (which task it was running) say what happened.
    A subclass of ``multiprocessing.ProcessError``."""

    __module__ = "fastmp.pool"

    def __init__(self, msg, pid=None, exitcode=None, worker=None, task=None):
        super().__init__(msg)
        self.pid = pid
        self.exitcode = exitcode
        self.worker = worker
        self.task = task

    def __reduce__(self):
        return (
            type(self),
            (self.args[0], self.pid, self.exitcode, self.worker, self.task),
        )


class PoolTerminatedError(ProcessError):
    """The pool was terminated before this task's result came back."""

    __module__ = "fastmp.pool"


# ---------------------------------------------------------------- worker


# Pickled functions by function (parent) and functions by pickle (worker):
# a function pickles by its name, so its pickle never changes, and
# pickling or unpickling it afresh for every task (a module and attribute
# look-up) costs more than a small task itself.
_FUNC_TYPES: tuple = (types.FunctionType, types.BuiltinFunctionType)
_func_pickles: dict = {}
_func_objects: dict = {}


def remember(cache, key, value, most=256):
    """cache[key] = value, the cache emptied first when it holds `most`
    entries (a bound, not an LRU); an unhashable key is not kept."""
    try:
        if len(cache) >= most:
            cache.clear()
        cache[key] = value
    except TypeError:
        pass


def _dump_func(func):
    if type(func) in _FUNC_TYPES:
        try:
            return _func_pickles[func]
        except (KeyError, TypeError):
            pass
        data = _dumps(func)
        remember(_func_pickles, func, data)
        return data
    return _dumps(func)


def _load_func(data):
    try:
        return _func_objects[data]
    except KeyError:
        pass
    func = _loads(data)
    if type(func) in _FUNC_TYPES:
        remember(_func_objects, data, func)
    return func


class _Slots:
    """The workers' task slots: 2 int64 words per worker (job, index of
    the task it runs; job -1 when idle), in a shared-memory file of the
    pool's own, so that any context's processes can take it (by
    inheritance under fork, by fd passing while spawning).

    Written by the worker (the index first, then the job), read by the
    parent once the worker has exited (and, for a look at who is busy,
    while it runs: a torn pair only makes a task look unrecorded for one
    look)."""

    def __init__(self, n, fd=None):
        if fd is None:
            fd = os.memfd_create("fastmp-pool", os.MFD_CLOEXEC)
            os.ftruncate(fd, 16 * n)
        self.n = n
        self.fd = fd
        self.map = mmap.mmap(fd, 16 * n)
        self.words = memoryview(self.map).cast("q")

    def __reduce__(self):
        context.assert_spawning(self)
        return _rebuild_slots, (self.n, reduction.DupFd(self.fd))

    def __del__(self):
        try:
            self.words.release()
            self.map.close()
            os.close(self.fd)
        except (AttributeError, OSError, BufferError):
            pass


def _rebuild_slots(n, dupfd):
    return _Slots(n, dupfd.detach())


def _describe_exit(code):
    if code is not None and code < 0:
        try:
            return "killed by signal %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exit code %s" % code


_in_task = False


def _on_sigint(signum, frame):
    # Ctrl-C reaches the whole process group: a worker waiting for work
    # ignores it (the parent decides), a task sees KeyboardInterrupt.
    if _in_task:
        raise KeyboardInterrupt


def worker(
    inq,
    outq,
    slots,
    k,
    initializer=None,
    initargs=(),
    maxtasks=None,
    wrap_exception=True,
):
    """The body of a pool worker process (slot k)."""
    global _in_task
    if maxtasks is not None and not (
        isinstance(maxtasks, int) and maxtasks >= 1
    ):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    if initializer is not None:
        initializer(*initargs)
    try:
        signal.signal(signal.SIGINT, _on_sigint)
    except (ValueError, OSError):  # pragma: no cover (not the main thread)
        pass
    rec = slots.words
    base = 2 * k
    get = inq.get
    put = outq.put
    dumps = _dumps_list
    loads = _loads_list
    map_list = _map_list
    load_func = _load_func
    # The parent (or, under forkserver, the forkserver, which leaves with
    # the parent): once it has gone, this process is someone else's child.
    ppid = os.getppid()
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            task = get(True, 1.0)
        except Empty:
            if os.getppid() != ppid:
                return
            continue
        except (EOFError, OSError):
            return
        if task is None:
            return
        job, i, kind, fdata, payload = task
        task = None
        # Before the task runs: the parent reads this if we die.
        rec[base + 1] = i
        rec[base] = job
        _in_task = True
        try:
            func = load_func(fdata)
            if kind == _ONE:
                result = func(loads(payload))
            elif kind == _MAP:
                result = map_list(func, payload)
            elif kind == _STARMAP:
                chunk = loads(payload)
                result = list(itertools.starmap(func, chunk))
            else:
                args, kwds = loads(payload)
                result = func(*args, **kwds)
            ok = True
        except BaseException as e:  # noqa: BLE001 (SystemExit too)
            _in_task = False
            if wrap_exception:
                e = ExceptionWithTraceback(e, e.__traceback__)
            ok, result = False, e
        _in_task = False
        fdata = payload = func = chunk = args = kwds = None
        try:
            data = dumps(result)
        except Exception as e:  # noqa: BLE001
            ok, data = False, dumps(MaybeEncodingError(e, result))
        result = None
        put((k, job, i, ok, data))
        data = None
        rec[base] = -1
        completed += 1


class _Feeder:
    """Lazy input of one imap job, read ahead at most `buffersize` tasks
    (or all of it, in the background, when that is None)."""

    __slots__ = (
        "it",
        "result",
        "kind",
        "func",
        "index",
        "consumed",
        "buffersize",
        "lock",
        "done",
    )

    def __init__(self, it, result, kind, func, buffersize):
        self.it = it
        self.result = result
        self.kind = kind
        self.func = func
        self.index = 0  # tasks made (written by the feeding thread only)
        self.consumed = 0  # results taken (next(), under the dispatch lock)
        self.buffersize = buffersize
        self.lock = threading.Lock()
        self.done = False

    def read(self, core, limit, bound):
        """Yield up to `limit` more (index, item) pairs of the input, as
        they are read, while at most `bound` tasks (None: no bound) are
        read beyond those consumed and `core`'s pool is not terminated.
        The input's own exception is its item's result, in its place,
        and ends the input; so does its end (``done``).  Called with
        ``lock`` held."""
        n = 0
        while n < limit and core.state != TERMINATE:
            if bound is not None and self.index - self.consumed >= bound:
                return
            i = self.index
            try:
                x = next(self.it)
            except StopIteration:
                self.done = True
                return
            except Exception as e:  # noqa: BLE001
                self.index += 1
                self.done = True
                core.local_set(self.result, i, (False, e))
                return
            self.index += 1
            n += 1
            yield i, x


def _chunks(iterable, size):
    # (Exact types: a subclass's own __iter__ is what the stdlib uses.)
    if type(iterable) in (list, tuple, range):
        for j in range(0, len(iterable), size):
            yield iterable[j : j + size]
        return
    it = iter(iterable)
    while True:
        x = tuple(itertools.islice(it, size))
        if not x:
            return
        yield x


def _func_name(func):
    if func is None:
        return "?"
    name = getattr(func, "__qualname__", None) or getattr(
        func, "__name__", None
    )
    return name if isinstance(name, str) else type(func).__name__


# ---------------------------------------------------------------- the core


class _Core:
    """A pool's state shared by the Pool object, its results, the helper
    thread and the finalizer (which must not keep the Pool alive)."""

    def __init__(self, ctx, processes, initializer, initargs, maxtasks):
        self.ctx = ctx
        self.processes = processes
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasks = maxtasks
        self.state = INIT
        self.cache = {}
        self.workers = []
        self.inq = _Queue(ctx=ctx)
        self.outq = _Queue(ctx=ctx)
        # Per worker slot: the (job, index) of the task it runs, job -1
        # when idle.  Written by the worker, read by the parent once the
        # worker is dead.
        self.slots = _Slots(processes)
        self.rec = self.slots.words
        for j in range(processes):
            self.rec[2 * j] = -1
        # Last result dispatched per slot: a dead worker's recorded task
        # that already has its result is not failed.
        self.last_done = [None] * processes
        self.dlock = threading.Lock()  # result and cache state
        self.wlock = threading.RLock()  # the workers list
        # Who reads the result queue; reentrant, so that a callback run by
        # a reader can wait for another result.
        self.rtoken = threading.RLock()
        self.cv = threading.Condition(threading.Lock())
        self.cv_waiting = 0
        self.waiters = 0
        # Threads putting a map's tasks: the helper leaves the results to
        # the caller meanwhile (no GIL ping-pong with a busy submitter).
        self.submitting = 0
        self.parked = False
        self.kick = threading.Event()
        self.feeders = []
        self.dead = {}  # slot -> when it was first seen dead
        # Every task put and not yet answered: (job, index) -> its place in
        # the task queue (the queue is FIFO), for finding a task a worker
        # took from the queue and died before recording (see lost_check).
        self.plock = threading.Lock()
        self.nput = 0
        self.outstanding = {}
        self.lost_checks = 0
        self.suspects = None
        self.last_death = None
        self.sentinels_sent = False
        self.thread = None
        self.worker_class = None
        self.Process = None
        self.wrap_exception = True

    # -- workers

    def start_worker(self, k):
        w = self.Process(
            self.ctx,
            target=worker,
            args=(
                self.inq,
                self.outq,
                self.slots,
                k,
                self.initializer,
                self.initargs,
                self.maxtasks,
                self.wrap_exception,
            ),
        )
        w.name = w.name.replace("Process", "PoolWorker")
        w.daemon = True
        self.rec[2 * k] = -1
        self.last_done[k] = None
        w.start()
        return w

    def put_task(self, job, i, kind, fdata, adata):
        """Queue one task (raises what pickling it raised)."""
        key = (job, i)
        with self.plock:
            self.outstanding[key] = self.nput
            try:
                self.inq.put((job, i, kind, fdata, adata))
            except BaseException:
                del self.outstanding[key]
                raise
            self.nput += 1

    def repopulate(self):
        """Start a worker in every slot whose worker has exited (after
        failing the task a dead one was running)."""
        with self.wlock:
            for k, w in enumerate(self.workers):
                if w.exitcode is None:
                    continue
                self.bury(k, w)
                if self.state == TERMINATE:
                    return
                self.workers[k] = self.start_worker(k)

    def bury(self, k, w):
        """Account for worker k, which has exited: fail the task it was
        running unless its result came back."""
        w.join()
        self.dead.pop(k, None)
        job, i = self.rec[2 * k], self.rec[2 * k + 1]
        if job < 0 or self.last_done[k] == (job, i):
            return
        self.rec[2 * k] = -1
        self.fail_lost(job, i, w, "while running")

    def fail_lost(self, job, i, w, how):
        with self.dlock:
            self.outstanding.pop((job, i), None)
            r = self.cache.get(job)
            if r is None:
                return
            what = r._describe(i)
            err = WorkerLostError(
                "pool worker %s (pid %s) died (%s) %s %s"
                % (w.name, w.pid, _describe_exit(w.exitcode), how, what),
                pid=w.pid,
                exitcode=w.exitcode,
                worker=w.name,
                task=what,
            )
            after = r._set(i, (False, err))
        self.after(after)

    def lost_check(self):
        """After a death: a task taken from the queue by a worker that
        died before it recorded it (a window of a few bytecodes) is in
        no slot and has no result.  The tasks taken from the queue are the
        first ``nput - qsize()`` put (the queue is FIFO); those with no
        result and in no live worker's slot at two looks in a row, with
        the result queue read before each, are lost."""
        # (A thread holding the token is reading results as they come.)
        token = self.rtoken.acquire(False)
        try:
            if token:
                self.drain()
            # Not while a thread is putting a long map's tasks: the next
            # look will do (the helper must keep looking at the workers).
            if not self.plock.acquire(False):
                return
            try:
                taken = self.nput - self.inq.qsize()
                live = set()
                with self.wlock:
                    for k in range(len(self.workers)):
                        if self.rec[2 * k] >= 0:
                            live.add((self.rec[2 * k], self.rec[2 * k + 1]))
                with self.dlock:
                    found = {
                        key
                        for key, seq in self.outstanding.items()
                        if seq < taken and key not in live
                    }
            finally:
                self.plock.release()
        finally:
            if token:
                self.rtoken.release()
        self.lost_checks -= 1
        if found and found == self.suspects:
            for job, i in sorted(found):
                self.fail_lost(
                    job, i, self.last_death, "after taking from the queue"
                )
            found = None
        self.suspects = found or None
        if self.suspects:
            self.lost_checks = max(self.lost_checks, 1)

    def check_workers(self):
        """The helper's periodic look: a worker seen dead at one look is
        buried at the next, so that a result it put just before dying is
        read first."""
        now = time.monotonic()
        keep = self.state == RUN or (
            self.state == CLOSE and (self.cache or self.feeders)
        )
        with self.wlock:
            for k, w in enumerate(self.workers):
                if w.exitcode is None:
                    continue
                seen = self.dead.setdefault(k, now)
                if now - seen < _TICK * 0.9 and self.rec[2 * k] >= 0:
                    continue
                if self.rtoken.acquire(False):
                    try:
                        self.drain()
                    finally:
                        self.rtoken.release()
                self.bury(k, w)
                if w.exitcode != 0:
                    self.last_death = w
                    self.lost_checks = 3
                if keep and self.state != TERMINATE:
                    self.workers[k] = self.start_worker(k)
        if self.lost_checks > 0 and self.state != TERMINATE:
            self.lost_check()

    # -- results

    def drain(self):
        get = self.outq.get_nowait
        while True:
            try:
                item = get()
            except Empty:
                return
            self.dispatch(item)

    def dispatch(self, item):
        """Deliver one message from the result queue."""
        if item is None:  # a wake-up
            return
        k, job, i, ok, data = item
        try:
            # A map's chunk of plain numbers goes straight into the
            # result's list (the result, looked up without the lock, may
            # have failed or gone meanwhile: then that list is dropped).
            into = getattr(self.cache.get(job), "_into", None) if ok else None
            into = into and into(i)
            if into and _loads_list_into(data, *into):
                res = (True, PLACED)
            else:
                res = (ok, _loads_list(data))
            bad = None
        except Exception as e:  # noqa: BLE001 (gh-79492)
            bad = e
        with self.dlock:
            self.last_done[k] = (job, i)
            self.outstanding.pop((job, i), None)
            r = self.cache.get(job)
            if r is None:
                return
            if bad is not None:
                # The result (or exception) came back but cannot be
                # unpickled here: that is this result's error.
                err = MaybeEncodingError(bad, None)
                err.value = "<the result of %s>" % r._describe(i)
                res = (False, err)
            after = r._set(i, res)
        if after is not None:
            self.after(after)
        elif self.cv_waiting:
            # An imap item: a thread waiting without the token may want it.
            with self.cv:
                self.cv.notify_all()

    def after(self, fn):
        run_after(fn)
        if self.cv_waiting:
            with self.cv:
                self.cv.notify_all()

    def local_set(self, r, i, obj):
        with self.dlock:
            after = r._set(i, obj)
        self.after(after)

    def wait_for(self, pred, timeout=None):
        """Wait until pred() is true or the timeout passes, reading the
        result queue meanwhile unless another thread does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.dlock:
            self.waiters += 1
        try:
            self._wait_loop(pred, deadline)
        except KeyboardInterrupt as e:
            # Ctrl-C may land while the loop handles its own poll timeout
            # (queue.Empty): that is no context of the user's interrupt.
            raise e from None
        finally:
            with self.dlock:
                self.waiters -= 1
                wake = self.waiters == 0 and self.parked and self.cache
            if wake:
                self.kick.set()

    def _wait_loop(self, pred, deadline):
        while not pred():
            slice_ = _TICK
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                slice_ = min(slice_, left)
            if self.rtoken.acquire(False):
                try:
                    get = self.outq.get
                    dispatch = self.dispatch
                    try:
                        item = get(True, slice_)
                        dispatch(item)
                        # Whatever else has come, while holding the
                        # token.
                        while not pred():
                            dispatch(get(False))
                    except Empty:
                        continue
                finally:
                    self.rtoken.release()
                    if self.cv_waiting:
                        with self.cv:
                            self.cv.notify_all()
            else:
                with self.cv:
                    self.cv_waiting += 1
                    try:
                        if not pred():
                            self.cv.wait(slice_)
                    finally:
                        self.cv_waiting -= 1

    def wake(self):
        self.kick.set()
        try:
            self.outq.put(None)
        except Exception:  # noqa: BLE001
            pass

    # -- lazy input

    def feed(self, f, limit):
        """Put up to `limit` more tasks of feeder f (within its buffer)."""
        if f.done or not f.lock.acquire(False):
            return
        try:
            r = f.result
            for i, x in f.read(self, limit, f.buffersize):
                try:
                    fdata = _dump_func(f.func)
                    self.put_task(r._job, i, f.kind, fdata, _dumps_list(x))
                except Exception as e:  # noqa: BLE001
                    self.local_set(r, i, (False, e))
            if f.done:
                f.it = None
                with self.dlock:
                    r._set_length(f.index)
                    if f in self.feeders:
                        self.feeders.remove(f)
                if self.cv_waiting:
                    with self.cv:
                        self.cv.notify_all()
        finally:
            f.lock.release()

    # -- the helper thread

    def run(self):
        """The helper thread's body."""
        while self.state != TERMINATE:
            try:
                if self.loop():
                    return
            except Exception:  # noqa: BLE001
                # Keep watching the workers whatever went wrong here.
                if self.state == TERMINATE:
                    return
                traceback.print_exc()
                time.sleep(_TICK)

    def loop(self):
        """The helper's work until it returns True (done after close())
        or raises."""
        next_check = time.monotonic() + _TICK
        while self.state != TERMINATE:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _TICK
                self.check_workers()
            if self.state == CLOSE:
                if self.finish_close():
                    return True
                if self.sentinels_sent:
                    # Only the workers' exits are awaited now (in
                    # finish_close, on their sentinels).
                    continue
            busy = False
            for f in list(self.feeders):
                self.feed(f, 64)
                busy = busy or (
                    not f.done
                    and (
                        f.buffersize is None
                        or f.index - f.consumed < f.buffersize
                    )
                )
            if self.waiters or self.submitting:
                self.parked = True
                self.kick.wait(0 if busy else max(0, next_check - now))
                self.kick.clear()
                self.parked = False
                continue
            if not self.rtoken.acquire(False):
                self.parked = True
                self.kick.wait(0 if busy else _TICK)
                self.kick.clear()
                self.parked = False
                continue
            try:
                try:
                    if busy:
                        item = self.outq.get_nowait()
                    else:
                        item = self.outq.get(
                            True, max(0.001, next_check - time.monotonic())
                        )
                except Empty:
                    continue
                self.dispatch(item)
            finally:
                self.rtoken.release()
                if self.cv_waiting:
                    with self.cv:
                        self.cv.notify_all()

    def finish_close(self):
        """After close(): once every task is done, stop the workers and
        end the helper.  Returns True when that is done."""
        if self.cache or self.feeders:
            return False
        with self.wlock:
            if not self.sentinels_sent:
                self.sentinels_sent = True
                for _ in self.workers:
                    self.inq.put(None)
            alive = [w for w in self.workers if w.exitcode is None]
        if alive:
            from multiprocessing.connection import wait

            wait([w.sentinel for w in alive], _TICK)
            return False
        return True

    # -- the end

    def terminate(self):
        """Stop everything now: the helper thread, then the workers
        (SIGTERM), then fail what is still pending."""
        self.state = TERMINATE
        # No wake-up through the result queue: terminate() takes no
        # process-shared lock (a stopped worker could hold one).  The
        # thread reading it (the helper, or a waiter) is woken by a flag
        # of this process's queue object instead, which takes none.
        self.kick.set()
        self.outq._interrupt_get()
        t = self.thread
        if t is threading.current_thread():
            t = None
        if t is not None:
            t.join(1.0 + 2 * _TICK)
        with self.wlock:
            workers = list(self.workers)
        for w in workers:
            if w.exitcode is None:
                w.terminate()
        for w in workers:
            w.join(1.0)
            if w.exitcode is None:
                w.kill()
                w.join()
        if t is not None:
            t.join(5.0)
        fail_pending(self.dlock, self.cache)
        self.feeders.clear()
        self.outstanding.clear()
        # (A waiter that read the queue again meanwhile: its result is
        # failed now.)
        self.outq._interrupt_get()
        if self.cv_waiting:
            with self.cv:
                self.cv.notify_all()


def run_after(fn):
    """Run what a result's _set() returned (its callbacks, then its
    readiness), if anything: a callback that raised is reported as a
    thread would report it."""
    if fn is not None:
        try:
            fn()
        except Exception:  # noqa: BLE001
            traceback.print_exc()


def fail_pending(dlock, cache):
    """Fail every result still pending in `cache` (a pool terminated) with
    PoolTerminatedError: an imap iterator keeps what came back, then gives
    the error, then ends."""
    err = PoolTerminatedError(
        "the pool was terminated before this task's result came back"
    )
    with dlock:
        pending = list(cache.values())
    for r in pending:
        with dlock:
            if r._job not in cache:
                continue
            if hasattr(r, "_set_length"):  # an imap iterator
                if r._feeder is not None:
                    r._feeder.done = True
                r._unsorted.clear()
                r._items.append((False, err))
                r._set_length(r._index)
                continue
            r._pool = None
            r._success, r._value = False, err
            r._ready = True
            cache.pop(r._job, None)


def _terminate_pool(core):
    util.debug("terminating pool")
    core.terminate()
