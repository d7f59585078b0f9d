# Types of fastmp.process, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.process,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.process import BaseProcess as BaseProcess
from multiprocessing.process import active_children as active_children
from multiprocessing.process import current_process as current_process
from multiprocessing.process import parent_process as parent_process

__all__ = [
    "BaseProcess",
    "current_process",
    "active_children",
    "parent_process",
]
