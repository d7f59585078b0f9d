# Types of fastmp.synchronize, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.synchronize,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.synchronize import Barrier as Barrier
from multiprocessing.synchronize import BoundedSemaphore as BoundedSemaphore
from multiprocessing.synchronize import Condition as Condition
from multiprocessing.synchronize import Event as Event
from multiprocessing.synchronize import Lock as Lock
from multiprocessing.synchronize import RLock as RLock
from multiprocessing.synchronize import Semaphore as Semaphore
from multiprocessing.synchronize import SemLock as SemLock

# As fastmp.synchronize.__all__, which also lists Barrier (the stdlib's
# leaves it out).
__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
]
