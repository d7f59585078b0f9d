"""``fastmp.popen_forkserver`` is the stdlib's
``multiprocessing.popen_forkserver`` (launching a child through the
forkserver).

fastmp uses the stdlib's: this name is the stdlib's module object itself,
not a copy, so its state is shared with every user of
``multiprocessing.popen_forkserver``.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.popen_forkserver"

import importlib as _importlib
import sys as _sys

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.popen_forkserver")

_sys.modules[__name__] = _std
