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

from multiprocessing import util

from . import _fastmp

__all__ = []


def _reduce_segment(seg):
    from multiprocessing import context, reduction

    context.assert_spawning(seg)
    return _rebuild_segment, (reduction.DupFd(seg.fileno()), seg.size)


def _rebuild_segment(dupfd, size):
    return _fastmp._segment_attach(dupfd.detach(), size)


def _register_release():
    # Drop this process's shared references when it ends normally
    # (multiprocessing runs util._exit_function at the end of every child
    # and at the main process's exit), so blocks it inherited or attached
    # can be reused by the processes that remain.  Lowest priority: after
    # every other finalizer that might still use a lock.
    util.Finalize(None, _fastmp._release_all, exitpriority=-(2 ** 31))


class _ForkHook:
    """A long-lived weakref-able anchor for util.register_after_fork."""


_hook = _ForkHook()


def _after_fork_child():
    # Runs in every fork child (os.register_at_fork): the child now holds
    # a reference on each object it inherited.
    _fastmp._after_fork_child()


copyreg.pickle(_fastmp.Segment, _reduce_segment)
os.register_at_fork(after_in_child=_after_fork_child)
# A multiprocessing child clears inherited finalizers in _bootstrap, then
# runs the after-fork callbacks: register the release again there.
util.register_after_fork(_hook, lambda _: _register_release())
_register_release()
