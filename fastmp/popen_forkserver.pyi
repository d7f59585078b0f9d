# Types of fastmp.popen_forkserver: at runtime this is the stdlib's
# multiprocessing.popen_forkserver itself, so its names are that module's.

from multiprocessing.popen_forkserver import Popen as Popen

__all__ = [
    "Popen",
]
