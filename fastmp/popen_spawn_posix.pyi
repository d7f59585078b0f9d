# Types of fastmp.popen_spawn_posix: at runtime this is the stdlib's
# multiprocessing.popen_spawn_posix itself, so its names are that module's.

from multiprocessing.popen_spawn_posix import Popen as Popen

__all__ = [
    "Popen",
]
