"""``fastmp.reduction`` is the stdlib's ``multiprocessing.reduction``
(ForkingPickler, the reducers, fd passing).

fastmp uses the stdlib's: this name is the stdlib's module object itself,
not a copy, so its state is shared with every user of
``multiprocessing.reduction``.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.reduction"

import importlib as _importlib
import sys as _sys

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.reduction")

_sys.modules[__name__] = _std
