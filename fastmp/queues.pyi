# Types of fastmp.queues, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.queues,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.queues import JoinableQueue as JoinableQueue
from multiprocessing.queues import Queue as Queue
from multiprocessing.queues import SimpleQueue as SimpleQueue

__all__ = [
    "Queue",
    "SimpleQueue",
    "JoinableQueue",
]
