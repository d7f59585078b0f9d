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
METHODS = [m for m in ("fork", "spawn", "forkserver")
           if m in multiprocessing.get_all_start_methods()]


def _load(name):
    return importlib.import_module(name)


@pytest.fixture(params=IMPLS)
def mp(request):
    """The implementation module itself (multiprocessing or fastmp)."""
    return _load(request.param)


@pytest.fixture(params=[(i, m) for i in IMPLS for m in METHODS],
                ids=lambda p: "%s-%s" % p)
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


# The folder fastmp under test was imported from (the installed package, or
# the source tree of an in-place build): what child interpreters need on
# their path.  The source tree alone has no compiled module.
import fastmp as _fastmp_pkg  # noqa: E402

FASTMP_PATH = os.path.dirname(os.path.dirname(_fastmp_pkg.__file__))
