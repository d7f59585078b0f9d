"""``fastmp.resource_tracker`` is the stdlib's
``multiprocessing.resource_tracker`` (the process that unlinks leaked named
resources).

fastmp uses the stdlib's: this name is the stdlib's module object itself,
not a copy, so its state is shared with every user of
``multiprocessing.resource_tracker``.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.resource_tracker"

import importlib as _importlib
import sys as _sys

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.resource_tracker")

_sys.modules[__name__] = _std
