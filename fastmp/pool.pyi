# Types of fastmp.pool, fastmp's own module: each public name the stdlib
# has has the type of the same name in the stdlib's multiprocessing.pool,
# so code typed against multiprocessing type-checks the same with fastmp;
# then the errors fastmp adds (docs/pool.md).  Pool is a subclass of the
# stdlib's Pool type with what fastmp's Pool takes besides: cluster= in
# its constructor (docs/cluster.md) and imap's buffersize= (docs/pool.md).
# (fastmp.Pool() returns the stdlib's Pool type, as multiprocessing.Pool()
# does: buffersize= is not typed there, the stdlib's type lacks it before
# Python 3.15.)

import multiprocessing.pool
from collections.abc import Callable, Iterable
from multiprocessing import ProcessError
from multiprocessing.pool import CLOSE as CLOSE
from multiprocessing.pool import INIT as INIT
from multiprocessing.pool import RUN as RUN
from multiprocessing.pool import TERMINATE as TERMINATE
from multiprocessing.pool import ApplyResult as ApplyResult
from multiprocessing.pool import AsyncResult as AsyncResult
from multiprocessing.pool import IMapIterator as IMapIterator
from multiprocessing.pool import IMapUnorderedIterator as IMapUnorderedIterator
from multiprocessing.pool import MapResult as MapResult
from multiprocessing.pool import ThreadPool as ThreadPool
from typing import Any, TypeVar

from typing_extensions import Self

__all__ = [
    "Pool",
    "ThreadPool",
]

_S = TypeVar("_S")
_T = TypeVar("_T")

class Pool(multiprocessing.pool.Pool):
    def __new__(
        cls,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any | None = None,
        cluster: str | None = None,
    ) -> Self: ...
    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any | None = None,
        cluster: str | None = None,
    ) -> None: ...
    def imap(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = 1,
        buffersize: int | None = None,
    ) -> IMapIterator[_T]: ...
    def imap_unordered(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = 1,
        buffersize: int | None = None,
    ) -> IMapIterator[_T]: ...
    # Defaults bound at definition (as in the stdlib's Pool), for a pool
    # collected while the interpreter exits.
    def __del__(
        self, _warn: Callable[..., object] = ..., RUN: str = "RUN"
    ) -> None: ...

class WorkerLostError(ProcessError):
    pid: int | None
    exitcode: int | None
    worker: str | None
    task: str | None
    def __init__(
        self,
        msg: str,
        pid: int | None = None,
        exitcode: int | None = None,
        worker: str | None = None,
        task: str | None = None,
    ) -> None: ...

class PoolTerminatedError(ProcessError): ...
