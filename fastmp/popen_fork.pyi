# Types of fastmp.popen_fork: at runtime this is the stdlib's
# multiprocessing.popen_fork itself, so its names are that module's.

from multiprocessing.popen_fork import Popen as Popen

__all__ = [
    "Popen",
]
