# Types of fastmp.pool, fastmp's own module: each public name the stdlib
# has has the type of the same name in the stdlib's multiprocessing.pool,
# so code typed against multiprocessing type-checks the same with fastmp;
# then the errors fastmp adds (docs/pool.md).  (imap's buffersize= is not
# typed here: the stdlib's Pool type lacks it before Python 3.15.)

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
from multiprocessing.pool import Pool as Pool
from multiprocessing.pool import ThreadPool as ThreadPool

__all__ = [
    "Pool",
    "ThreadPool",
]

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
