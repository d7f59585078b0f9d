"""The C core's shared helpers: argument errors worded as the stdlib's
(src/pyutil.c, fastmp_parse_args) and OSError naming the failed system
call (fastmp_oserror_syscall)."""

import errno
import multiprocessing
import os

import pytest

import fastmp
from fastmp import _fastmp

# Calls that bind their arguments wrongly, per object kind.  Each must
# raise TypeError with the stdlib's message.
BAD_CALLS = {
    "lock": [
        lambda l: l.acquire(1, 2, 3),
        lambda l: l.acquire(foo=1),
        lambda l: l.acquire(True, block=1),
        lambda l: l.acquire(block=1, timeout=2, foo=3),
    ],
    "event": [
        lambda e: e.wait(1, 2),
        lambda e: e.wait(foo=1),
        lambda e: e.wait(1, timeout=2),
    ],
    "queue": [
        lambda q: q.put(),
        lambda q: q.put(1, 2, 3, 4),
        lambda q: q.put(1, obj=2),
        lambda q: q.put(1, foo=2),
        lambda q: q.get(1, 2, 3),
        lambda q: q.get(foo=1),
    ],
    "joinable": [
        lambda q: q.put(),
        lambda q: q.put(1, 2, 3, 4),
        lambda q: q.get(1, 2, 3),
    ],
    "conn": [
        lambda c: c.poll(1, 2),
        lambda c: c.poll(foo=1),
        lambda c: c.recv_bytes(1, 2),
        lambda c: c.recv_bytes(foo=1),
        lambda c: c.send_bytes(),
        lambda c: c.send_bytes(b"", 0, None, 4),
        lambda c: c.send_bytes(b"", buf=1),
        lambda c: c.send_bytes(offset=0),
    ],
}


def _make(mod, kind):
    if kind == "lock":
        return mod.Lock(), None
    if kind == "event":
        return mod.Event(), None
    if kind == "queue":
        return mod.Queue(), None
    if kind == "joinable":
        return mod.JoinableQueue(), None
    a, b = mod.Pipe()
    return a, b


def _messages(mod, kind):
    obj, other = _make(mod, kind)
    out = []
    for call in BAD_CALLS[kind]:
        with pytest.raises(TypeError) as ei:
            call(obj)
        out.append(str(ei.value))
    for o in (obj, other):
        if hasattr(o, "close"):
            o.close()
    return out


@pytest.mark.parametrize("kind", sorted(BAD_CALLS))
def test_argument_errors_match_the_stdlib(kind):
    assert _messages(fastmp, kind) == _messages(multiprocessing, kind)


def test_oserror_names_the_syscall():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as ei:
        _fastmp._segment_attach(fd, 1 << 20)
    assert ei.value.errno == errno.EBADF
    assert ei.value.filename == "(originated from fstat)"
