"""``fastmp.managers`` is the stdlib's ``multiprocessing.managers`` (Manager,
the proxies, SharedMemoryManager).

fastmp has no managers of its own yet: this name is the stdlib's module
object itself, not a copy, so its state is shared with every user of
``multiprocessing.managers``.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.managers"

import importlib as _importlib
import os as _os
import sys as _sys

if _os.environ.get("FASTMP_NO_FALLBACK", "") not in ("", "0"):
    # As for any module fastmp lacks: no silent fall-through (this is what
    # fastmp.Manager() and the like report as ImportError).
    raise ModuleNotFoundError(
        "fastmp has no 'managers' of its own and FASTMP_NO_FALLBACK is set",
        name=__name__,
    )

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.managers")

_sys.modules[__name__] = _std
