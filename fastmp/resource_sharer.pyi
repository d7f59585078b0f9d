# Types of fastmp.resource_sharer: at runtime this is the stdlib's
# multiprocessing.resource_sharer itself, so its names are that module's.

from multiprocessing.resource_sharer import DupFd as DupFd
from multiprocessing.resource_sharer import stop as stop

__all__ = [
    "stop",
]
__all__ = [
    "DupFd",
]
