"""Shared fixtures.

Parity first: a behaviour test asks for ``ctx`` and runs once per
(implementation, start method): the stdlib's ``multiprocessing`` and
``fastmp``, each under fork, spawn and forkserver.  Helpers that run in
children must be module-level functions so spawn/forkserver can pickle them.
"""

import importlib
import multiprocessing
import os
import signal

import pytest

# A run started with SIGINT ignored (as a background job is) would pass
# that on to every child, and Python then never raises KeyboardInterrupt:
# the Ctrl-C tests, and CPython's own, would test nothing.  A handler set
# here is reset to the default in exec'd children, so they start as under
# a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

IMPLS = ["multiprocessing", "fastmp"]
METHODS = [
    m
    for m in ("fork", "spawn", "forkserver")
    if m in multiprocessing.get_all_start_methods()
]


def _load(name):
    return importlib.import_module(name)


@pytest.fixture(params=IMPLS)
def mp(request):
    """The implementation module itself (multiprocessing or fastmp)."""
    return _load(request.param)


@pytest.fixture(
    params=[(i, m) for i in IMPLS for m in METHODS], ids=lambda p: "%s-%s" % p
)
def ctx(request):
    """A context of one implementation under one start method."""
    impl, method = request.param
    return _load(impl).get_context(method)


@pytest.fixture(params=METHODS)
def fctx(request):
    """A fastmp context under each start method (fastmp-only behaviour)."""
    return _load("fastmp").get_context(request.param)


def is_fastmp(obj):
    """True when a context/module belongs to fastmp."""
    mod = getattr(type(obj), "__module__", "") or ""
    name = getattr(obj, "__name__", "") or ""
    return mod.startswith("fastmp") or name.startswith("fastmp")


TESTS = os.path.dirname(os.path.abspath(__file__))

# The folder fastmp under test was imported from (the installed package, or
# the source tree of an in-place build): what child interpreters need on
# their path.  The source tree alone has no compiled module, so it is never
# put on a child's path by itself.
try:
    import fastmp as _fastmp_pkg  # noqa: E402
    import fastmp._fastmp  # noqa: E402,F401
except ImportError as e:  # pragma: no cover (a setup error, not a test)
    raise ImportError(
        "fastmp under test has no compiled extension (%s). Install it "
        "(pip install '.[test]') and run the tests from the tests folder "
        "(cd tests && python -m pytest): run from the repository's root, "
        "`python -m pytest` imports the uncompiled source tree instead." % e
    ) from e

FASTMP_PATH = os.path.dirname(
    os.path.dirname(os.path.abspath(_fastmp_pkg.__file__))
)


def _site_dirs():
    import site

    dirs = set()
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover (old virtualenvs)
        pass
    if getattr(site, "ENABLE_USER_SITE", False) and site.USER_SITE:
        dirs.add(site.USER_SITE)
    return {os.path.realpath(d) for d in dirs}


# True when fastmp comes from site-packages: a child finds it by itself.
FASTMP_INSTALLED = os.path.realpath(FASTMP_PATH) in _site_dirs()


def child_env(env=None, **extra):
    """Environment for a child interpreter that must import the fastmp
    under test: ``env`` (default os.environ) with FASTMP_PATH first on
    PYTHONPATH unless fastmp is installed in site-packages, then ``extra``."""
    e = dict(os.environ if env is None else env)
    if not FASTMP_INSTALLED:
        e["PYTHONPATH"] = os.pathsep.join(
            [FASTMP_PATH] + [p for p in [e.get("PYTHONPATH")] if p]
        )
    e.update(extra)
    return e


# A child started with ``python -c`` has the working directory first on its
# path.  Run from the repository's root, that is the uncompiled source tree,
# which would shadow the installed package: work from this folder instead.
if os.path.isfile(
    os.path.join(os.getcwd(), "fastmp", "__init__.py")
) and os.path.realpath(os.getcwd()) != os.path.realpath(FASTMP_PATH):
    os.chdir(TESTS)
