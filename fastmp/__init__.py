"""fastmp: multiprocessing with a faster, harder-to-break C core.

Use it as ``import fastmp as multiprocessing``, or run an unchanged script
with ``python -m fastmp script.py``.  The top-level names are the stdlib's;
they are loaded on first use (PEP 562), so ``import fastmp`` itself costs
less than ``import multiprocessing``.
"""

import sys as _sys

# The one place the version is written (pyproject.toml reads it).
__version__ = "0.1.0"

# The same list, in the same order, as the stdlib's multiprocessing.__all__
# (identical on every supported Python).
__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]

SUBDEBUG = 5
SUBWARNING = 25

# As the stdlib does: the main module is reachable as __mp_main__ too.
if "__main__" in _sys.modules:
    _sys.modules["__mp_main__"] = _sys.modules["__main__"]

_public = frozenset(__all__)
# Submodules the stdlib's package has as attributes after a plain ``import
# multiprocessing``; here they are imported on first access instead.
_submodules = frozenset(["context", "process", "reduction"])


def __getattr__(name):
    if name == "AbandonedLockWarning":
        # fastmp's own warning category (see docs/dead-holders.md).
        from ._fastmp import AbandonedLockWarning

        globals()[name] = AbandonedLockWarning
        return AbandonedLockWarning
    if name in _public:
        from . import context

        value = getattr(context._default_context, name)
        if name != "reducer":  # a property: always read it afresh
            globals()[name] = value
        return value
    if name in _submodules:
        import importlib

        return importlib.import_module("fastmp." + name)
    alias = _sys.modules.get("fastmp._alias")
    if alias is not None:
        # Under ``python -m fastmp`` this package is ``multiprocessing``:
        # the stdlib's own submodules are reachable through it.
        return alias.package_getattr(name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__():
    return sorted(
        set(globals()) | _public | _submodules | {"AbandonedLockWarning"}
    )
