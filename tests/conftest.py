"""Shared fixtures.

Parity first: a behaviour test asks for ``ctx`` and runs once per
(implementation, start method): the stdlib's ``multiprocessing`` and
``fastmp``, each under fork, spawn and forkserver.  Helpers that run in
children must be module-level functions so spawn/forkserver can pickle them.
"""

import importlib
import signal

import pytest
from support import IMPLS, METHODS

# A run started with SIGINT ignored (as a background job is) would pass
# that on to every child, and Python then never raises KeyboardInterrupt:
# the Ctrl-C tests, and CPython's own, would test nothing.  A handler set
# here is reset to the default in exec'd children, so they start as under
# a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
