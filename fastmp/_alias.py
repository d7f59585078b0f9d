"""How fastmp's modules stand in for the stdlib's ``multiprocessing.X``.

The helpers fastmp's modules use, and the aliasing of ``python -m fastmp``
(the one place both live):

* ``passthrough(__name__)``: the whole body of a module fastmp takes from
  the stdlib as it is (``fastmp/util.py``, ``fastmp/dummy.py`` ...):
  ``fastmp.X`` becomes the stdlib's ``multiprocessing.X`` module object
  itself, so its state is shared;
* ``forward_getattr(std, name)``: a module ``__getattr__`` that answers
  with the stdlib module's objects for the names a fastmp module does not
  define (private helpers the stdlib's own modules import by name);
* ``refuse(sub, name)``: FASTMP_NO_FALLBACK=1.  A public submodule that
  fastmp mirrors (``MIRRORED``) but implements only by passing the
  stdlib's through raises ModuleNotFoundError, to every
  importer, as ``fastmp.X`` and as ``multiprocessing.X``;
* ``stdlib_module(sub)``: the stdlib's module even where ``multiprocessing.X``
  means fastmp's (the stdlib SimpleQueue of ``fastmp.queues``);
* ``install()`` (``python -m fastmp``, the conformance runner):
  ``sys.modules['multiprocessing']`` becomes the fastmp package and
  ``import multiprocessing.X`` gives ``fastmp.X`` where fastmp has its own
  module, else the stdlib's file under its usual name.  fastmp's own
  modules are imported before the switch, so those building on the
  stdlib's namesake (``from multiprocessing import process as _std`` in
  ``fastmp/process.py``) get the stdlib's module, not themselves.  Every
  interpreter the stdlib starts (spawn children, the forkserver, the
  resource tracker) runs ``python [flags] -m fastmp -c CODE``: the flags
  end in ``-m fastmp``, which installs the aliasing and then runs CODE as
  ``-c`` would (see ``fastmp/__main__.py``).
"""

import importlib
import os
import sys

__all__ = []

# The stdlib's public submodules that fastmp mirrors: under
# FASTMP_NO_FALLBACK=1 one that fastmp only passes through is refused.
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

# fastmp's own modules that need not be imported before the switch (they
# take nothing by a ``multiprocessing.X`` name that must be the stdlib's):
# imported when a program first asks for them, so that an interpreter that
# never uses them (a spawn child, say) does not pay for them.
IMPORTED_LATE = frozenset(["managers"])

_PREFIX = "multiprocessing."
# What a passthrough module's text says (see passthrough()).
_PASSTHROUGH_CALL = "passthrough(__name__)"
_installed = False
_stdlib_dir = None


def no_fallback():
    return os.environ.get("FASTMP_NO_FALLBACK", "") not in ("", "0")


def refuse(sub, name):
    """Raise ModuleNotFoundError (for module ``name``) when
    FASTMP_NO_FALLBACK=1 forbids the stdlib's multiprocessing.<sub>."""
    if sub.split(".")[0] in MIRRORED and no_fallback():
        raise ModuleNotFoundError(
            "fastmp has no %r of its own and FASTMP_NO_FALLBACK is set"
            % sub.split(".")[0],
            name=name,
        )


def passthrough(name):
    """Make the module being imported as ``name`` (``fastmp.X``) the
    stdlib's ``multiprocessing.X`` module object itself, and likewise its
    submodules already loaded (``fastmp.dummy.connection``).

    Imported by its name, not through the attribute chain of ``import a.b
    as c``: under ``python -m fastmp``, ``multiprocessing`` is the fastmp
    package, and the stdlib's file is then loaded under its own name.
    A module file whose text calls ``passthrough(__name__)`` does not
    count as fastmp's own (``_fastmp_has``)."""
    sub = name[len("fastmp.") :]
    refuse(sub, name)
    std = importlib.import_module(_PREFIX + sub)
    for key, mod in list(sys.modules.items()):
        if key.startswith(std.__name__ + "."):
            sys.modules.setdefault(name + key[len(std.__name__) :], mod)
    sys.modules[name] = std
    return std


def forward_getattr(std, name):
    """A module ``__getattr__`` for the fastmp module ``name``: names it
    does not define are the stdlib module ``std``'s objects."""

    def __getattr__(attr):
        try:
            return getattr(std, attr)
        except AttributeError:
            raise AttributeError(
                "module %r has no attribute %r" % (name, attr)
            ) from None

    return __getattr__


_own = {}


def _fastmp_has(sub):
    """True when fastmp has its own module for multiprocessing.<sub>: a
    file that is not a passthrough (read, not imported)."""
    try:
        return _own[sub]
    except KeyError:
        pass
    own = False
    if not sub.startswith("_"):
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(
            "fastmp." + sub, [os.path.dirname(__file__)]
        )
        own = spec is not None
        if own and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                own = _PASSTHROUGH_CALL not in f.read()
    _own[sub] = own
    return own


# The stdlib's modules whose sys.modules entry now names fastmp's module
# of the same name (loaded before the switch, or by stdlib_module()).
_shadowed = {}


def installed():
    """True when this process runs with multiprocessing aliased."""
    return _installed


def stdlib_module(sub):
    """The stdlib's multiprocessing.<sub>, aliased or not.

    Aliased, where fastmp has its own module, the stdlib's is loaded
    beside it and ``multiprocessing.<sub>`` stays fastmp's."""
    name = _PREFIX + sub
    if not _installed:
        return importlib.import_module(name)
    if name in _shadowed:
        return _shadowed[name]
    mod = sys.modules.get(name)
    if mod is not None and not mod.__name__.startswith("fastmp"):
        return mod
    spec = importlib.machinery.PathFinder.find_spec(name, [_stdlib_dir])
    if spec is None:
        raise ModuleNotFoundError("No module named %r" % name, name=name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _shadowed[name] = mod
    return mod


def package_getattr(name):
    """Module __getattr__ of the fastmp package when it is multiprocessing:
    every submodule of the stdlib's package is an attribute, as
    ``fastmp.X`` (fastmp's own module or the stdlib's passed through)."""
    if _installed and not name.startswith("_"):
        try:
            return importlib.import_module("fastmp." + name)
        except ModuleNotFoundError as e:
            if e.name != "fastmp." + name:
                raise
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
        if not fullname.startswith(_PREFIX):
            return None
        sub = fullname[len(_PREFIX) :]
        if _fastmp_has(sub.split(".")[0]):
            return importlib.machinery.ModuleSpec(
                fullname, _AliasLoader("fastmp." + sub)
            )
        refuse(sub, fullname)
        search = [_stdlib_dir] if "." not in sub else path
        return importlib.machinery.PathFinder.find_spec(fullname, search)


def _args_with_fastmp(_orig):
    # The flags the stdlib puts before ``-c CODE`` when it starts an
    # interpreter: ``-m fastmp`` last.
    def _args_from_interpreter_flags():
        return [*_orig(), "-m", "fastmp"]

    _args_from_interpreter_flags.__wrapped__ = _orig
    return _args_from_interpreter_flags


def _export_path(parent):
    """Children run ``-m fastmp`` before they know the parent's sys.path:
    when fastmp is not installed in site-packages (a source checkout found
    through the working directory, say), put its directory on PYTHONPATH
    so they find the same fastmp."""
    import site

    dirs = set(getattr(site, "getsitepackages", list)())  # (old venvs)
    if getattr(site, "USER_SITE", None):
        dirs.add(site.USER_SITE)
    dirs = {os.path.abspath(d) for d in dirs}
    current = os.environ.get("PYTHONPATH", "")
    entries = [os.path.abspath(e) for e in current.split(os.pathsep) if e]
    if parent in dirs or parent in entries:
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [parent] + ([current] if current else [])
    )


def install():
    """Make ``multiprocessing`` resolve to fastmp in this process and in
    every interpreter it starts.  Idempotent."""
    global _installed, _stdlib_dir
    if _installed:
        return
    # Not imported with this module: passthrough() and forward_getattr()
    # are all that most processes need.
    import importlib.machinery
    import importlib.util  # noqa: F401  (used by stdlib_module)
    import multiprocessing as std
    import multiprocessing.util as util

    import fastmp
    import fastmp.context  # noqa: F401
    import fastmp.process  # noqa: F401

    _stdlib_dir = os.path.dirname(std.__file__)
    # Import fastmp's own modules while ``multiprocessing`` is still the
    # stdlib.  A module that fails here fails again, visibly, when the
    # program imports it.  (Not those in IMPORTED_LATE.)
    for sub in sorted(MIRRORED - IMPORTED_LATE):
        if _fastmp_has(sub):
            try:
                importlib.import_module("fastmp." + sub)
            except Exception:  # noqa: BLE001
                pass
    for name in [n for n in sys.modules if n.startswith(_PREFIX)]:
        sub = name[len(_PREFIX) :]
        if _fastmp_has(sub.split(".")[0]):
            mod = importlib.import_module("fastmp." + sub)
            std_mod = sys.modules[name]
            if std_mod is not mod:
                # Objects of the stdlib's module pickle by reference as
                # ``multiprocessing.X.name``, which now means fastmp.X.
                _shadowed[name] = std_mod
                if "__getattr__" not in vars(mod):
                    mod.__getattr__ = forward_getattr(std_mod, mod.__name__)
            sys.modules[name] = mod
        # A stdlib module loaded already (by fastmp's own modules) stays:
        # a second copy would give two classes of each name, and pickling
        # would then fail.
    _export_path(
        os.path.dirname(os.path.dirname(os.path.abspath(fastmp.__file__)))
    )
    sys.modules["multiprocessing"] = fastmp
    sys.meta_path.insert(0, _Finder)
    util._args_from_interpreter_flags = _args_with_fastmp(
        util._args_from_interpreter_flags
    )
    _installed = True
