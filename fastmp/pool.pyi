# Types of fastmp.pool: at runtime this is the stdlib's
# multiprocessing.pool itself, so its names are that module's.

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
