# Types of fastmp.shared_memory, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.shared_memory,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.shared_memory import ShareableList as ShareableList
from multiprocessing.shared_memory import SharedMemory as SharedMemory

__all__ = [
    "SharedMemory",
    "ShareableList",
]
