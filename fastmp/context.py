"""Contexts: the stdlib's context classes with fastmp's primitives.

Process launching (fork, spawn, forkserver popen machinery) is the
stdlib's; every synchronisation and data object a context creates is
fastmp's.  A name fastmp does not implement yet falls through to the
stdlib's implementation, unless FASTMP_NO_FALLBACK=1 is set, in which case
it raises ImportError.

The Process classes here are subclasses of the stdlib's, bound to fastmp's
own default context: ``fastmp.set_start_method('spawn')`` followed by
``fastmp.Process(...).start()`` uses spawn, whatever the stdlib's default
context says.
"""

import importlib
import sys
from multiprocessing import context as _std

# Re-exported so code written against multiprocessing.context finds them.
from multiprocessing.context import (  # noqa: F401
    AuthenticationError,
    BaseContext,
    BufferTooShort,
    ProcessError,
    TimeoutError,
    assert_spawning,
    get_spawning_popen,
    reduction,
    set_spawning_popen,
)

from . import _arena  # (also registers pickling and fork hooks)
from ._alias import forward_getattr

__all__ = ()


def _fastmp_module(name):
    """fastmp.<name>, imported on first use.  A module fastmp only passes
    through raises ImportError here under FASTMP_NO_FALLBACK=1 (see
    fastmp/_alias.py)."""
    return importlib.import_module("fastmp." + name)


#
# Process classes bound to fastmp's contexts
#


def _bootstrap_start_method(proc):
    # A child's default context is the one that started it (the stdlib
    # does the same for its own default context in _bootstrap).
    method = proc._start_method or proc.__dict__.pop("_fastmp_method", None)
    if method is not None:
        _force_start_method(method)


class _JoinSweeps:
    """join() then gives back the shared blocks the child still held
    (however it ended: see fastmp/_arena.py)."""

    def join(self, timeout=None):
        super().join(timeout)
        if self._popen is not None and self._popen.returncode is not None:
            _arena.sweep()


class Process(_JoinSweeps, _std.Process):
    """A process object started through fastmp's default context."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        ctx = _default_context.get_context()
        # Travels with the pickled object, for the child's default context.
        process_obj._fastmp_method = ctx._name
        try:
            return ctx.Process._Popen(process_obj)
        finally:
            process_obj.__dict__.pop("_fastmp_method", None)

    if hasattr(_std.Process, "_after_fork"):

        @staticmethod
        def _after_fork():
            return _default_context.get_context().Process._after_fork()

    def _bootstrap(self, *args, **kwds):
        _bootstrap_start_method(self)
        return super()._bootstrap(*args, **kwds)


class ForkProcess(_JoinSweeps, _std.ForkProcess):
    def _bootstrap(self, *args, **kwds):
        _bootstrap_start_method(self)
        return super()._bootstrap(*args, **kwds)


class SpawnProcess(_JoinSweeps, _std.SpawnProcess):
    def _bootstrap(self, *args, **kwds):
        _bootstrap_start_method(self)
        return super()._bootstrap(*args, **kwds)


class ForkServerProcess(_JoinSweeps, _std.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        # Have the forkserver import fastmp once, so that its children do
        # not each import it again when they unpickle this object.
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        preload = getattr(server, "_preload_modules", None)
        if isinstance(preload, list) and "fastmp.context" not in preload:
            server._preload_modules = preload + ["fastmp.context"]
        return _std.ForkServerProcess._Popen(process_obj)

    def _bootstrap(self, *args, **kwds):
        _bootstrap_start_method(self)
        return super()._bootstrap(*args, **kwds)


class _FastmpContextMixin:
    """Factory methods returning fastmp objects bound to this context."""

    def get_context(self, method=None):
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError("cannot find context for %r" % method) from None
        ctx._check_available()
        return ctx

    def Lock(self):
        """Returns a non-recursive lock object: a fastmp.synchronize.Lock.

        A non-recursive lock shared by processes.  It is a futex word in
        fastmp's shared arena (no named semaphore, no /dev/shm entry, no
        resource tracker); a lock whose holder died is handed to the next
        acquirer with a fastmp.AbandonedLockWarning.
        """
        return _fastmp_module("synchronize").Lock(ctx=self.get_context())

    def RLock(self):
        """Returns a recursive lock object: a fastmp.synchronize.RLock.

        A recursive lock shared by processes, on a futex word in fastmp's
        shared arena; a dead holder is handled as for Lock.
        """
        return _fastmp_module("synchronize").RLock(ctx=self.get_context())

    def Condition(self, lock=None):
        """Returns a condition object: a fastmp.synchronize.Condition.

        A condition variable built, as the stdlib's, on three semaphores
        (fastmp's); lock defaults to a new fastmp RLock.
        """
        return _fastmp_module("synchronize").Condition(
            lock, ctx=self.get_context()
        )

    def Semaphore(self, value=1):
        """Returns a semaphore object: a fastmp.synchronize.Semaphore.

        A semaphore shared by processes, on a futex word in fastmp's shared
        arena instead of a named POSIX semaphore.
        """
        return _fastmp_module("synchronize").Semaphore(
            value, ctx=self.get_context()
        )

    def BoundedSemaphore(self, value=1):
        """Returns a bounded semaphore object: a
        fastmp.synchronize.BoundedSemaphore.

        A bounded semaphore shared by processes: release() above the
        initial value raises ValueError, as the stdlib's does.
        """
        return _fastmp_module("synchronize").BoundedSemaphore(
            value, ctx=self.get_context()
        )

    def Event(self):
        """Returns an event object: a fastmp.synchronize.Event.

        An event shared by processes; wait() watches for the change before
        sleeping, so a quick set() is seen without a kernel round trip.
        """
        return _fastmp_module("synchronize").Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        """Returns a barrier object: a fastmp.synchronize.Barrier.

        threading.Barrier's algorithm over a process-shared Condition.
        """
        return _fastmp_module("synchronize").Barrier(
            parties, action, timeout, ctx=self.get_context()
        )

    def Queue(self, maxsize=0):
        """Returns a queue object: a fastmp.queues.Queue.

        A process-shared FIFO queue (the stdlib's multiprocessing.Queue),
        on a shared ring buffer instead of a pipe and a feeder thread; same
        methods, same exceptions (queue.Empty, queue.Full).
        """
        return _fastmp_module("queues").Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        """Returns a queue object: a fastmp.queues.JoinableQueue.

        A Queue with task_done() and join().
        """
        return _fastmp_module("queues").JoinableQueue(
            maxsize, ctx=self.get_context()
        )

    def SimpleQueue(self):
        """Returns a queue object: a fastmp.queues.SimpleQueue.

        A simplified queue: put(), get(), empty(), close().
        """
        return _fastmp_module("queues").SimpleQueue(ctx=self.get_context())

    def Pipe(self, duplex=True):
        """Returns two connection objects connected by a pipe:
        fastmp.connection.Connection objects (see fastmp.connection.Pipe).

        Returns pair of connection objects at either end of a pipe; duplex
        (the default) is a socket pair, else a one-way pipe.  The wire
        format is the stdlib's, with the send and receive paths in C.
        """
        return _fastmp_module("connection").Pipe(duplex)

    def RawValue(self, typecode_or_type, *args):
        """Returns a shared object: see fastmp.sharedctypes.RawValue.

        Returns a ctypes object allocated from shared memory (fastmp's
        shared arena), with no lock.
        """
        return _fastmp_module("sharedctypes").RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        """Returns a shared array: see fastmp.sharedctypes.RawArray.

        Returns a ctypes array allocated from shared memory (fastmp's
        shared arena), with no lock.
        """
        return _fastmp_module("sharedctypes").RawArray(
            typecode_or_type, size_or_initializer
        )

    def Value(self, typecode_or_type, *args, lock=True):
        """Returns a synchronized shared object: see
        fastmp.sharedctypes.Value.

        Return a synchronization wrapper for a Value: fastmp's wrapper is
        in C, and an integer value also has lock-free atomic operations
        (add, fetch_add, exchange, compare_exchange, load, store).
        """
        return _fastmp_module("sharedctypes").Value(
            typecode_or_type, *args, lock=lock, ctx=self.get_context()
        )

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        """Returns a synchronized shared array: see
        fastmp.sharedctypes.Array.

        Return a synchronization wrapper for a RawArray: fastmp's wrapper
        is in C (indexing and slicing without a Python frame).
        """
        return _fastmp_module("sharedctypes").Array(
            typecode_or_type,
            size_or_initializer,
            lock=lock,
            ctx=self.get_context(),
        )

    def Manager(self):
        """Returns a manager associated with a running server process

        The returned manager object corresponds to a spawned child process
        and has methods which will create shared objects and return
        corresponding proxies: a started fastmp.managers.SyncManager (its
        server and proxies are fastmp's, over fastmp Connections).
        """
        m = _fastmp_module("managers").SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Pool(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        cluster=None,
    ):
        """Returns a process pool object (with cluster=ADDRESS, or
        FASTMP_CLUSTER set, one whose tasks run on a Dask cluster: see
        docs/cluster.md)"""
        return _fastmp_module("pool").Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context=self.get_context(),
            cluster=cluster,
        )


class ForkContext(_FastmpContextMixin, _std.ForkContext):
    Process = ForkProcess


class SpawnContext(_FastmpContextMixin, _std.SpawnContext):
    Process = SpawnProcess


class ForkServerContext(_FastmpContextMixin, _std.ForkServerContext):
    Process = ForkServerProcess


_concrete_contexts = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


class DefaultContext(_FastmpContextMixin, _std.DefaultContext):
    """The default context: follows the running Python's default method."""

    Process = Process

    def get_context(self, method=None):
        if method is None:
            if self._actual_context is None:
                self._actual_context = self._default_context
            return self._actual_context
        return super().get_context(method)

    def set_start_method(self, method, force=False):
        if self._actual_context is not None and not force:
            raise RuntimeError("context has already been set")
        if method is None and force:
            self._actual_context = None
            return
        self._actual_context = self.get_context(method)


# The running Python's default start method (forkserver on Linux from 3.14).
_default_context = DefaultContext(
    _concrete_contexts[_std._default_context._default_context._name]
)


def _force_start_method(method):
    _default_context._actual_context = _concrete_contexts[method]


# Anything else the stdlib's context module has (private helpers that the
# stdlib's own modules import from ``multiprocessing.context``).
__getattr__ = forward_getattr(_std, __name__)


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("fastmp does not support Windows yet")
