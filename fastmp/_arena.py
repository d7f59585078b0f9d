"""Pickling support and process-lifetime hooks for arena segments.

A Segment (a memfd mapping) can cross to a child only while that child is
being started: its file descriptor travels with the stdlib's fd-passing
machinery (the child gets it by inheritance under spawn, over the
forkserver's socket under forkserver).  Anywhere else pickling raises the
stdlib's RuntimeError, as for the stdlib's locks.

Every module that creates arena objects imports this one, so the hooks are
in place before such an object exists.
"""

import copyreg
import os

from . import _fastmp

__all__ = []


def _reduce_segment(seg):
    from multiprocessing import context, reduction

    context.assert_spawning(seg)
    return _rebuild_segment, (reduction.DupFd(seg.fileno()), seg.size)


def _rebuild_segment(dupfd, size):
    return _fastmp._segment_attach(dupfd.detach(), size)


def sweep():
    """Give back the shared blocks that ended processes still held.

    Called after a child is joined; the arena also does it by itself
    (when it needs a holder slot, and at most once a second before it
    carves fresh memory), so this only makes it prompt.
    """
    _fastmp._arena_sweep()


def _after_fork_child():
    # Runs in every fork child (os.register_at_fork): the child now holds
    # a reference on each object it inherited.
    _fastmp._after_fork_child()


copyreg.pickle(_fastmp.Segment, _reduce_segment)
os.register_at_fork(after_in_child=_after_fork_child)
