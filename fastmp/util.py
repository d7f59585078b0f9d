"""``fastmp.util`` is the stdlib's ``multiprocessing.util`` (finalizers,
loggers, the at-fork registry).

fastmp uses the stdlib's: this name is the stdlib's module object itself,
not a copy, so its state is shared with every user of
``multiprocessing.util``.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.util"

import importlib as _importlib
import sys as _sys

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.util")

_sys.modules[__name__] = _std
