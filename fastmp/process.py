"""Process objects: the stdlib's, shared with fastmp.

fastmp starts processes with the stdlib's machinery, so there is one
process tree: ``current_process()``, ``active_children()`` and
``parent_process()`` see processes started by either package.  The Process
classes a context hands out are in ``fastmp.context``.
"""

from multiprocessing import process as _std
from multiprocessing.process import (  # noqa: F401
    BaseProcess,
    active_children,
    current_process,
    parent_process,
)

from ._alias import forward_getattr

__all__ = [
    "BaseProcess",
    "current_process",
    "active_children",
    "parent_process",
]


# Private names (_children, _current_process, AuthenticationString,
# ORIGINAL_DIR, ...) are the stdlib's own objects.
__getattr__ = forward_getattr(_std, __name__)
