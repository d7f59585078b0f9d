"""Manager Queue and JoinableQueue served without a round trip (see
_manager_fast).

A SyncManager ``Queue`` or ``JoinableQueue`` (the server's is a
queue.Queue for both) made by a fastmp server on a Unix socket is one of
fastmp's queue rings (``_fastmp._Ring``, src/ring.c: an MPMC ring of
pickled items under the project's owner lock, whose state a process
killed anywhere leaves consistent) in one named segment, created, sized
and unlinked by the server.  Every process that holds a proxy on the
machine opens the segment by name (one file descriptor, which the ring
keeps to follow its growth) and puts and gets without the server; the
server's own referent is the same ring, for remote clients and for
``_callmethod``.

queue.Queue's semantics are kept on top of the ring's: a timeout is only
looked at when the call may wait (a negative one is queue.Queue's
ValueError), ``maxsize <= 0`` is unbounded, ``task_done``/``join`` work
on both types, the exceptions are queue.Empty and queue.Full.  An item
is pickled by the caller, as the proxy's request would be; one whose
pickle holds a proxy goes through the server, which keeps that proxy's
referent alive while the item is queued, as the stdlib's server does.
"""

import _posixshmem
import os

from . import _fastmp
from ._manager_fast import _MODE, ViaServer, proxies_pickled, unlink_segments

__all__ = []

_Ring = _fastmp._Ring
_dumps = _fastmp._dumps


def plain_queue_args(q):
    """The (maxsize,) of the new queue.Queue `q` when a SharedQueue can
    serve it, else None (a maxsize that is not an int keeps queue.Queue's
    own behaviour)."""
    maxsize = q.maxsize
    if type(maxsize) is not int or maxsize >= 1 << 62:
        return None
    if hasattr(q, "shutdown"):
        # queue.Queue.shutdown() (Python 3.13+) has no counterpart in the
        # ring: there the server serves the queue, shutdown() and all.
        return None
    return (max(maxsize, 0),)


class SharedQueue:
    """A manager Queue or JoinableQueue: a fastmp ring in a named
    segment, with queue.Queue's semantics."""

    __slots__ = ("_ring", "_names", "_owner", "_maxsize", "__weakref__")

    def _setup(self, names, create):
        self._names = names[:1]
        self._owner = create
        if not create:
            fd = _posixshmem.shm_open(names[0], os.O_RDWR, _MODE)
            self._ring = _Ring(0, True, fd)  # (the ring owns fd)
            self._maxsize = self._ring._maxsize

    def _init(self, maxsize):
        # The server, before the name is handed out.
        fd = _posixshmem.shm_open(
            self._names[0], os.O_RDWR | os.O_CREAT | os.O_EXCL, _MODE
        )
        self._ring = _Ring(maxsize, True, fd, True)
        self._maxsize = maxsize

    def _fresh(self):
        pass

    def _unlink(self):
        unlink_segments(self._names)

    # -- queue.Queue ----------------------------------------------------

    def put(self, item, block=True, timeout=None):
        if block and timeout is not None and self._maxsize > 0:
            if timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
        else:
            # (queue.Queue looks at a timeout only when it may wait)
            timeout = None
        n = proxies_pickled[0]
        data = _dumps(item)
        if proxies_pickled[0] != n and not self._owner:
            raise ViaServer
        self._ring._put_pickled(data, block, timeout)

    def get(self, block=True, timeout=None):
        if not block:
            return self._ring.get(False)
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return self._ring.get(True, timeout)

    def put_nowait(self, item):
        return self.put(item, block=False)

    def get_nowait(self):
        return self._ring.get(False)

    def qsize(self):
        return self._ring.qsize()

    def empty(self):
        return self._ring.empty()

    def full(self):
        return self._ring.full()

    def task_done(self):
        self._ring._task_done()

    def join(self):
        self._ring._join()

    def __repr__(self):
        return "<queue.Queue object at %#x>" % id(self)

    def __reduce__(self):
        raise TypeError("cannot pickle '_thread.lock' object")


# Argument errors name queue.Queue's methods, as the server's do.
for _name in (
    "put",
    "get",
    "put_nowait",
    "get_nowait",
    "qsize",
    "empty",
    "full",
    "task_done",
    "join",
):
    getattr(SharedQueue, _name).__qualname__ = "Queue." + _name
