"""``multiprocessing`` -> ``fastmp`` aliasing for ``python -m fastmp``.

After ``install()``:

* ``sys.modules['multiprocessing']`` is the fastmp package;
* ``import multiprocessing.X`` gives ``fastmp.X`` when fastmp has a module
  X, else the stdlib's ``multiprocessing/X.py`` loaded under its usual
  name (the stdlib's process-launch modules, util, reduction ...);
* with FASTMP_NO_FALLBACK=1, a public submodule that fastmp mirrors but
  lacks (synchronize, connection, queues, ...) raises ImportError for
  user code.  The stdlib's own modules and fastmp itself may still reach
  the stdlib's copy: that is plumbing, not the user's script;
* fastmp's own modules are imported before the switch, so that those
  building on the stdlib's namesake (``import multiprocessing.queues``
  inside ``fastmp/queues.py``) get the stdlib's module, not themselves;
  stdlib modules a fastmp module needs later should therefore be imported
  at its top level (or through ``stdlib_module()``);
* every interpreter the stdlib starts (spawn children, the forkserver, the
  resource tracker) runs ``python -m fastmp._boot -c ...``, which installs
  the aliasing before the stdlib's entry code runs.
"""

import importlib
import importlib.machinery
import os
import sys
import types

__all__ = []

# Submodules of multiprocessing that fastmp mirrors: user code importing one
# that fastmp lacks gets ImportError under FASTMP_NO_FALLBACK=1.
MIRRORED = frozenset(
    [
        "synchronize",
        "sharedctypes",
        "shared_memory",
        "connection",
        "queues",
        "pool",
        "managers",
        "context",
        "process",
    ]
)

_PREFIX = "multiprocessing."
_installed = False
_stdlib_dir = None
_IMPORTLIB_DIR = os.path.dirname(importlib.__file__)


def no_fallback():
    return os.environ.get("FASTMP_NO_FALLBACK", "") not in ("", "0")


def installed():
    """True when this process runs with multiprocessing aliased."""
    return _installed


_own = {}


def _fastmp_has(sub):
    """True when fastmp has its own module for multiprocessing.<sub>.

    A module that only hands out the stdlib's (``fastmp/pool.py`` while
    fastmp has no pool: it says ``__fastmp_passthrough__``) does not count:
    the stdlib's module is then reached under its own name, as for any
    submodule fastmp lacks, and FASTMP_NO_FALLBACK refuses it."""
    if sub.startswith("_"):
        return False
    try:
        return _own[sub]
    except KeyError:
        pass
    import fastmp

    mod = sys.modules.get("fastmp." + sub)
    if mod is not None:
        # A passthrough is the stdlib's module once imported, and says so
        # (first thing) while it runs.
        own = getattr(mod, "__name__", "").startswith(
            "fastmp"
        ) and not hasattr(mod, "__fastmp_passthrough__")
    else:
        spec = importlib.machinery.PathFinder.find_spec(
            "fastmp." + sub, fastmp.__path__
        )
        own = spec is not None
        if own and spec.origin and spec.origin.endswith(".py"):
            try:
                with open(spec.origin, encoding="utf-8") as f:
                    own = "__fastmp_passthrough__" not in f.read()
            except OSError:
                pass
    _own[sub] = own
    return own


_PKG_INIT = os.path.join(os.path.dirname(__file__), "__init__.py")


def _internal_caller():
    """True when the import comes from the stdlib's multiprocessing modules
    or from fastmp itself rather than from user code."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if (
            fn.startswith("<frozen")
            or fn.startswith(_IMPORTLIB_DIR)
            or fn == __file__
            or fn == _PKG_INIT
        ):
            f = f.f_back
            continue
        name = f.f_globals.get("__name__") or ""
        return (
            name.startswith(_PREFIX)
            or name == "fastmp"
            or name.startswith("fastmp.")
        )
    return False


def _fallback_allowed(sub):
    return (
        not no_fallback()
        or sub.split(".")[0] not in MIRRORED
        or _internal_caller()
    )


_stdlib_names = {}
# The stdlib's modules loaded before the switch whose sys.modules entry now
# names fastmp's module of the same name.
_shadowed = {}


def _stdlib_has(sub):
    try:
        return _stdlib_names[sub]
    except KeyError:
        pass
    found = (
        not sub.startswith("_")
        and "." not in sub
        and importlib.machinery.PathFinder.find_spec(
            _PREFIX + sub, [_stdlib_dir]
        )
        is not None
    )
    _stdlib_names[sub] = found
    return found


def stdlib_module(sub):
    """The stdlib's multiprocessing.<sub>, aliased or not."""
    if not _installed:
        return importlib.import_module(_PREFIX + sub)
    name = _PREFIX + sub
    if name in _shadowed:
        return _shadowed[name]
    mod = sys.modules.get(name)
    if mod is not None and not mod.__name__.startswith("fastmp"):
        return mod
    spec = importlib.machinery.PathFinder.find_spec(name, [_stdlib_dir])
    if spec is None:
        raise ModuleNotFoundError("No module named %r" % name, name=name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def package_getattr(name):
    """Module __getattr__ of the fastmp package when it is multiprocessing.

    Submodules of the stdlib's loaded through the alias are reachable as
    attributes (never stored on the fastmp package itself)."""
    if _installed and not name.startswith("__"):
        if _fastmp_has(name):
            return importlib.import_module("fastmp." + name)
        if _fallback_allowed(name):
            mod = sys.modules.get(_PREFIX + name)
            if mod is not None:
                return mod
            if _stdlib_has(name):
                # ``from . import X`` in a stdlib module: the import system
                # would look for fastmp.X (the package's real name).
                return stdlib_module(name)
    raise AttributeError("module 'fastmp' has no attribute %r" % name)


class _AliasLoader:
    """Loader whose module is an already imported fastmp module."""

    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        mod = importlib.import_module(self.target)
        self._spec = mod.__spec__
        return mod

    def exec_module(self, module):
        # The import system stamped the alias spec on it: restore fastmp's.
        module.__spec__ = self._spec


class _Finder:
    """Meta path finder for the multiprocessing.* names."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname.startswith("fastmp."):
            # ``from multiprocessing import pool`` looks for fastmp.pool
            # (the package's real name): a module that only hands out the
            # stdlib's is a fall-through like any other.
            top = fullname[len("fastmp.") :].split(".")[0]
            if (
                top in MIRRORED
                and no_fallback()
                and not _fastmp_has(top)
                and not _internal_caller()
            ):
                raise ModuleNotFoundError(
                    "fastmp has no %r of its own and FASTMP_NO_FALLBACK is "
                    "set" % top,
                    name=fullname,
                )
            return None
        if not fullname.startswith(_PREFIX):
            return None
        sub = fullname[len(_PREFIX) :]
        top = sub.split(".")[0]
        if _fastmp_has(top):
            return importlib.machinery.ModuleSpec(
                fullname, _AliasLoader("fastmp." + sub)
            )
        if not _fallback_allowed(sub):
            raise ModuleNotFoundError(
                "fastmp has no %r and FASTMP_NO_FALLBACK is set" % sub,
                name=fullname,
            )
        search = [_stdlib_dir] if "." not in sub else path
        return importlib.machinery.PathFinder.find_spec(fullname, search)


class _AliasedPackage(types.ModuleType):
    """Class of the fastmp package while it stands in for multiprocessing:
    stdlib submodules loaded through it are not stored as its attributes
    (so FASTMP_NO_FALLBACK can refuse them to user code)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and getattr(
            value, "__name__", ""
        ).startswith(_PREFIX):
            return
        super().__setattr__(name, value)


_BOOT = ["-m", "fastmp._boot"]


def _args_with_boot(_orig):
    def _args_from_interpreter_flags():
        return _orig() + _BOOT

    _args_from_interpreter_flags.__wrapped__ = _orig
    return _args_from_interpreter_flags


def _export_path(parent):
    """Children run ``-m fastmp._boot`` before they know the parent's
    sys.path: when fastmp is not installed in site-packages (a source
    checkout found through the working directory, say), put its directory
    on PYTHONPATH so they find the same fastmp."""
    import site

    dirs = set()
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover (old virtualenvs)
        pass
    user = getattr(site, "USER_SITE", None)
    if user:
        dirs.add(user)
    dirs = {os.path.abspath(d) for d in dirs}
    current = os.environ.get("PYTHONPATH", "")
    entries = [os.path.abspath(e) for e in current.split(os.pathsep) if e]
    if parent in dirs or parent in entries:
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [parent] + ([current] if current else [])
    )


def _forward_missing(mod, std):
    """Objects of the stdlib's multiprocessing.X (functions, classes a
    fastmp module reuses) pickle by reference as ``multiprocessing.X.name``,
    which now means fastmp.X: let fastmp.X answer for the names it does not
    define itself with the stdlib module's objects."""
    if mod is std or "__getattr__" in vars(mod):
        return

    def __getattr__(name, _std=std, _mod=mod.__name__):
        try:
            return getattr(_std, name)
        except AttributeError:
            raise AttributeError(
                "module %r has no attribute %r" % (_mod, name)
            ) from None

    mod.__getattr__ = __getattr__


def install():
    """Make ``multiprocessing`` resolve to fastmp in this process and in
    every interpreter it starts.  Idempotent."""
    global _installed, _stdlib_dir
    if _installed:
        return
    import importlib.util  # noqa: F401  (used by stdlib_module)
    import multiprocessing as std
    import multiprocessing.util as util

    import fastmp
    import fastmp.context  # noqa: F401
    import fastmp.process  # noqa: F401

    _stdlib_dir = os.path.dirname(std.__file__)
    fastmp._stdlib_package = std
    # Import fastmp's own modules while ``multiprocessing`` is still the
    # stdlib: a fastmp module that builds on the stdlib's namesake
    # (``import multiprocessing.managers as _std``) must get the stdlib's,
    # not itself.  A module that fails here fails again, visibly, when the
    # program imports it.
    for sub in sorted(MIRRORED):
        if _fastmp_has(sub):
            try:
                importlib.import_module("fastmp." + sub)
            except Exception:  # noqa: BLE001
                pass
    for name in [n for n in sys.modules if n.startswith(_PREFIX)]:
        sub = name[len(_PREFIX) :]
        if _fastmp_has(sub.split(".")[0]):
            mod = importlib.import_module("fastmp." + sub)
            if sys.modules[name] is not mod:
                _shadowed[name] = sys.modules[name]
                _forward_missing(mod, sys.modules[name])
            sys.modules[name] = mod
        # A stdlib module loaded already (by fastmp's own modules) stays:
        # a second copy would give two classes of each name, and pickling
        # would then fail.  FASTMP_NO_FALLBACK cannot refuse it to an
        # import statement; it still refuses attribute access and
        # ``from multiprocessing import X`` (package_getattr).
    _export_path(
        os.path.dirname(os.path.dirname(os.path.abspath(fastmp.__file__)))
    )
    fastmp.__class__ = _AliasedPackage
    sys.modules["multiprocessing"] = fastmp
    sys.meta_path.insert(0, _Finder)
    util._args_from_interpreter_flags = _args_with_boot(
        util._args_from_interpreter_flags
    )
    _installed = True
