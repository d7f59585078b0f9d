# Types of fastmp.heap: at runtime this is the stdlib's
# multiprocessing.heap itself, so its names are that module's.

from multiprocessing.heap import Arena as Arena
from multiprocessing.heap import BufferWrapper as BufferWrapper
from multiprocessing.heap import Heap as Heap
from multiprocessing.heap import rebuild_arena as rebuild_arena
from multiprocessing.heap import reduce_arena as reduce_arena

__all__ = [
    "BufferWrapper",
]
