"""``fastmp.dummy`` is the stdlib's ``multiprocessing.dummy`` (the same API
on threads), and ``fastmp.dummy.connection`` its ``connection`` module.

These names are the stdlib's module objects themselves, not copies.
"""

# Read by fastmp._alias: this module only hands out the stdlib's.
__fastmp_passthrough__ = "multiprocessing.dummy"

import importlib as _importlib
import sys as _sys

# By its name, not through the attribute chain of "import a.b as c": under
# python -m fastmp, "multiprocessing" is the fastmp package.
_std = _importlib.import_module("multiprocessing.dummy")
_std_connection = _importlib.import_module("multiprocessing.dummy.connection")

# Registered before the package name, so that ``import
# fastmp.dummy.connection`` finds it instead of loading a second copy of the
# stdlib's file from the stdlib package's __path__.
_sys.modules[__name__ + ".connection"] = _std_connection
_sys.modules[__name__] = _std
