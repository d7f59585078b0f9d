# Types of fastmp.resource_tracker: at runtime this is the stdlib's
# multiprocessing.resource_tracker itself, so its names are that module's.

from multiprocessing.resource_tracker import ResourceTracker as ResourceTracker
from multiprocessing.resource_tracker import ensure_running as ensure_running
from multiprocessing.resource_tracker import getfd as getfd
from multiprocessing.resource_tracker import main as main
from multiprocessing.resource_tracker import register as register
from multiprocessing.resource_tracker import unregister as unregister

__all__ = [
    "ensure_running",
    "register",
    "unregister",
]
