# Types of fastmp's top-level names.  Each name fastmp shares with the
# stdlib's multiprocessing has that name's type there (fastmp is that
# package with a faster core), so code typed against multiprocessing
# type-checks the same with ``import fastmp as multiprocessing``.  The
# runtime serves these names lazily (a module __getattr__); this stub is
# what type checkers see instead: no __getattr__, so a misspelt name is
# an error.  The submodules imported here are the ones the stdlib's stubs
# load with the package, so ``multiprocessing.queues.Queue`` in an
# annotation resolves the same way with either package.  One name has
# more: ``Pool`` takes fastmp's ``cluster=`` (docs/cluster.md) and returns
# the stdlib's Pool type, so what follows types as it does there.

from collections.abc import Callable, Iterable
from multiprocessing import Array as Array
from multiprocessing import AuthenticationError as AuthenticationError
from multiprocessing import Barrier as Barrier
from multiprocessing import BoundedSemaphore as BoundedSemaphore
from multiprocessing import BufferTooShort as BufferTooShort
from multiprocessing import Condition as Condition
from multiprocessing import Event as Event
from multiprocessing import JoinableQueue as JoinableQueue
from multiprocessing import Lock as Lock
from multiprocessing import Manager as Manager
from multiprocessing import Pipe as Pipe
from multiprocessing import Process as Process
from multiprocessing import ProcessError as ProcessError
from multiprocessing import Queue as Queue
from multiprocessing import RawArray as RawArray
from multiprocessing import RawValue as RawValue
from multiprocessing import RLock as RLock
from multiprocessing import Semaphore as Semaphore
from multiprocessing import SimpleQueue as SimpleQueue
from multiprocessing import TimeoutError as TimeoutError
from multiprocessing import Value as Value
from multiprocessing import active_children as active_children
from multiprocessing import (
    allow_connection_pickling as allow_connection_pickling,
)
from multiprocessing import cpu_count as cpu_count
from multiprocessing import current_process as current_process
from multiprocessing import freeze_support as freeze_support
from multiprocessing import get_all_start_methods as get_all_start_methods
from multiprocessing import get_context as get_context
from multiprocessing import get_logger as get_logger
from multiprocessing import get_start_method as get_start_method
from multiprocessing import log_to_stderr as log_to_stderr
from multiprocessing import parent_process as parent_process
from multiprocessing import pool as _std_pool
from multiprocessing import reducer as reducer
from multiprocessing import set_executable as set_executable
from multiprocessing import set_forkserver_preload as set_forkserver_preload
from multiprocessing import set_start_method as set_start_method
from typing import Any

from fastmp import connection as connection
from fastmp import context as context
from fastmp import managers as managers
from fastmp import pool as pool
from fastmp import popen_fork as popen_fork
from fastmp import popen_forkserver as popen_forkserver
from fastmp import popen_spawn_posix as popen_spawn_posix
from fastmp import process as process
from fastmp import queues as queues
from fastmp import reduction as reduction
from fastmp import resource_sharer as resource_sharer
from fastmp import shared_memory as shared_memory
from fastmp import sharedctypes as sharedctypes
from fastmp import spawn as spawn
from fastmp import synchronize as synchronize
from fastmp import util as util
from fastmp._fastmp import AbandonedLockWarning as AbandonedLockWarning

__version__: str

def Pool(
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    maxtasksperchild: int | None = None,
    *,
    cluster: str | None = None,
) -> _std_pool.Pool: ...

__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]
