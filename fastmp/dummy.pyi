# Types of fastmp.dummy: at runtime this is the stdlib's
# multiprocessing.dummy itself, so its names are that module's.

from multiprocessing.dummy import Array as Array
from multiprocessing.dummy import Barrier as Barrier
from multiprocessing.dummy import BoundedSemaphore as BoundedSemaphore
from multiprocessing.dummy import Condition as Condition
from multiprocessing.dummy import DummyProcess as DummyProcess
from multiprocessing.dummy import Event as Event
from multiprocessing.dummy import JoinableQueue as JoinableQueue
from multiprocessing.dummy import Lock as Lock
from multiprocessing.dummy import Manager as Manager
from multiprocessing.dummy import Namespace as Namespace
from multiprocessing.dummy import Pipe as Pipe
from multiprocessing.dummy import Pool as Pool
from multiprocessing.dummy import Process as Process
from multiprocessing.dummy import Queue as Queue
from multiprocessing.dummy import RLock as RLock
from multiprocessing.dummy import Semaphore as Semaphore
from multiprocessing.dummy import Value as Value
from multiprocessing.dummy import active_children as active_children
from multiprocessing.dummy import current_process as current_process
from multiprocessing.dummy import freeze_support as freeze_support
from multiprocessing.dummy import shutdown as shutdown

__all__ = [
    "Process",
    "current_process",
    "active_children",
    "freeze_support",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
    "Queue",
    "Manager",
    "Pipe",
    "Pool",
    "JoinableQueue",
]
