"""Queue, JoinableQueue and SimpleQueue on a ring buffer in shared memory.

The stdlib's queues send pickles through a pipe from a feeder thread;
fastmp's pickle in the caller and copy the bytes into a ring buffer in
shared memory (``fastmp._fastmp._Ring``), so:

* an unpicklable item raises in ``put()``;
* once ``put()`` returns, the item is in shared memory: it survives the
  putter's exit or death, and a process that put data may be joined
  before anyone reads it;
* ``qsize()`` is exact;
* there is no feeder thread: ``close()`` only stops this process from
  using the queue, ``join_thread()`` and ``cancel_join_thread()`` have
  nothing to wait for.  See docs/queues.md.
"""

import sys
import types
from multiprocessing import context, reduction
from queue import Empty, Full  # noqa: F401  (names the stdlib module has)

from . import _fastmp

# The stdlib's order.
__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]  # noqa: RUF022


def _rebuild(cls, dupfd):
    # The queue's shared-memory file, passed to this process while it
    # started (inherited under spawn, over the forkserver's socket).
    return _fastmp._Ring.__new__(cls, 0, False, dupfd.detach())


def _reduce(q):
    context.assert_spawning(q)
    return _rebuild, (type(q), reduction.DupFd(q._fileno()))


def _queue_args(maxsize=0, *, ctx):
    return maxsize


class Queue(_fastmp._Ring):
    """A process-shared FIFO queue (the stdlib's multiprocessing.Queue)."""

    def __new__(cls, *args, **kwargs):
        if cls in (Queue, JoinableQueue):
            maxsize = _queue_args(*args, **kwargs)
        else:
            # A subclass with a signature of its own (concurrent.futures'
            # _SafeQueue passes max_size= and more); its __init__ checks
            # the arguments.
            maxsize = (
                args[0]
                if args
                else kwargs.get("maxsize", kwargs.get("max_size", 0))
            )
        return _fastmp._Ring.__new__(cls, maxsize, cls._joinable)

    def __init__(self, maxsize=0, *, ctx):
        self._ctx = ctx

    _joinable = False

    def __reduce__(self):
        return _reduce(self)

    def close(self):
        """Stop using the queue from this process.

        Items already put stay in the queue for the other processes."""
        self._close()

    def join_thread(self):
        """Nothing to wait for: put() has already stored every item.

        As after the stdlib's, empty() then raises OSError if this
        process put items."""
        assert self._closed, self
        self._finish_close()

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread."""

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        """The stdlib's hook for an item that cannot be pickled.

        Queue.put() raises such an error itself; a subclass that overrides
        this hook (as concurrent.futures' _SafeQueue does) has it called
        instead, from put(), and the item is dropped, as the stdlib's
        feeder thread does."""
        import traceback

        traceback.print_exc()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._on_queue_feeder_error is not Queue._on_queue_feeder_error:
            for name in ("put", "put_nowait"):
                if name not in vars(cls):
                    setattr(cls, name, vars(_Reporting)[name])

    def _terminate_broken(self):
        """Close the queue after its readers died (the stdlib's
        ProcessPoolExecutor calls it on 3.12+).  Nothing is blocked on a
        reader here: close() and join_thread() are all there is to do."""
        self.close()
        self.join_thread()

    # The stdlib's 3.11 ProcessPoolExecutor closes its call queue's reading
    # end after a worker died (gh-94777), so that the feeder thread stops
    # writing to a pipe nobody reads.  A ring has neither: see _ReadEnd.
    @property
    def _reader(self):
        return _ReadEnd()

    __class_getitem__ = classmethod(types.GenericAlias)


class _ReadEnd:
    """Queue._reader: only close(), a no-op (no pipe, no feeder thread)."""

    __slots__ = ()

    def close(self):
        pass


class _Pickled:
    """An item pickled already: it unpickles to the item."""

    __slots__ = ("_data",)

    def __init__(self, data):
        self._data = data

    def __reduce__(self):
        return _fastmp._loads, (self._data,)


def _report_unpicklable(q, obj):
    """obj pickled, or None after handing the error to the queue's
    _on_queue_feeder_error (the stdlib's feeder thread calls it from an
    except block too)."""
    if q._closed:
        raise ValueError(f"Queue {q!r} is closed")
    try:
        return _Pickled(_fastmp._dumps(obj))
    except Exception as e:  # noqa: BLE001  (as the stdlib's feeder)
        q._on_queue_feeder_error(e, obj)
        return None


class _Reporting:
    """put() and put_nowait() of a Queue subclass that overrides
    _on_queue_feeder_error."""

    def put(self, obj, block=True, timeout=None):
        item = _report_unpicklable(self, obj)
        if item is not None:
            _fastmp._Ring.put(self, item, block, timeout)

    def put_nowait(self, obj):
        item = _report_unpicklable(self, obj)
        if item is not None:
            _fastmp._Ring.put_nowait(self, item)


class JoinableQueue(Queue):
    """A Queue with task_done() and join()."""

    _joinable = True
    task_done = _fastmp._Ring._task_done
    join = _fastmp._Ring._join


# The stdlib modules whose SimpleQueue must be the stdlib's (see
# _stdlib_caller) and the fastmp module between them and __new__.
_PIPE_USERS = frozenset(["multiprocessing.pool", "concurrent.futures.process"])
_FACTORY = "fastmp.context"


def _stdlib_caller():
    """Must ``SimpleQueue(ctx=...)`` give the stdlib's SimpleQueue here?

    Called by SimpleQueue.__new__ only.  The requester is the code that
    called the factory: the frame above __new__, or above the context's
    ``SimpleQueue()`` method (module fastmp.context) when the request came
    through a context.  Returns True when the requester is a function of
    ``multiprocessing.pool`` (the stdlib's Pool, in
    ``Pool._setup_queues``) or ``concurrent.futures.process``
    (ProcessPoolExecutor); False for every other requester: the user's
    code (through a context, ``fastmp.SimpleQueue()`` or the class), code
    the stdlib merely calls back (a ThreadPoolExecutor running
    ``ctx.SimpleQueue``), fastmp's own modules, other stdlib modules.

    Why: those two use their SimpleQueue's pipe ends directly (``_reader``,
    ``_writer``, ``_rlock``; ProcessPoolExecutor waits on the reader's file
    descriptor with connection.wait), which a ring buffer does not have.
    They get the stdlib's SimpleQueue made with the fastmp context (so its
    lock is fastmp's).  Under ``python -m fastmp`` the stdlib's pool module
    is still named ``multiprocessing.pool`` (fastmp has no pool of its own)
    while fastmp's modules keep their ``fastmp.X`` names.
    """
    f = sys._getframe(2)
    if f is not None and f.f_globals.get("__name__") == _FACTORY:
        f = f.f_back
    return f is not None and f.f_globals.get("__name__") in _PIPE_USERS


def _stdlib_simple_queue(ctx):
    """The stdlib's SimpleQueue made with ``ctx``, for the requesters
    _stdlib_caller() names."""
    from . import _alias

    cls = _alias.stdlib_module("queues").SimpleQueue
    if (
        _alias.installed()
        and cls not in reduction.ForkingPickler._extra_reducers
    ):
        # Under ``python -m fastmp`` its name, multiprocessing.queues.
        # SimpleQueue, means fastmp's class: it crosses to children by
        # this module's functions instead.
        reduction.ForkingPickler.register(cls, _reduce_stdlib_simple_queue)
    return cls(ctx=ctx)


def _reduce_stdlib_simple_queue(q):
    return _rebuild_stdlib_simple_queue, (q.__getstate__(),)


def _rebuild_stdlib_simple_queue(state):
    from ._alias import stdlib_module

    q = object.__new__(stdlib_module("queues").SimpleQueue)
    q.__setstate__(state)
    return q


class SimpleQueue(_fastmp._Ring):
    """A simplified queue: put(), get(), empty(), close()."""

    def __new__(cls, *, ctx=None):
        if cls is SimpleQueue and _stdlib_caller():
            return _stdlib_simple_queue(ctx)
        return _fastmp._Ring.__new__(cls, 0, False)

    def __init__(self, *, ctx):
        self._ctx = ctx

    def __reduce__(self):
        return _reduce(self)

    get = _fastmp._Ring._simple_get
    put = _fastmp._Ring._simple_put

    def close(self):
        """Stop using the queue from this process."""
        self._close_all()

    __class_getitem__ = classmethod(types.GenericAlias)
