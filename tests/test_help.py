"""help() on fastmp's factory functions shows fastmp's documentation, not
the text of the stdlib's context methods."""

import inspect
import multiprocessing
import pydoc

import pytest

import fastmp

# factory -> the fastmp object it hands out, whose documentation it shows.
FACTORIES = {
    "Lock": "fastmp.synchronize.Lock",
    "RLock": "fastmp.synchronize.RLock",
    "Semaphore": "fastmp.synchronize.Semaphore",
    "BoundedSemaphore": "fastmp.synchronize.BoundedSemaphore",
    "Condition": "fastmp.synchronize.Condition",
    "Event": "fastmp.synchronize.Event",
    "Barrier": "fastmp.synchronize.Barrier",
    "Queue": "fastmp.queues.Queue",
    "JoinableQueue": "fastmp.queues.JoinableQueue",
    "SimpleQueue": "fastmp.queues.SimpleQueue",
    "Pipe": "fastmp.connection.Pipe",
    "Value": "fastmp.sharedctypes.Value",
    "Array": "fastmp.sharedctypes.Array",
    "RawValue": "fastmp.sharedctypes.RawValue",
    "RawArray": "fastmp.sharedctypes.RawArray",
}


def _target(path):
    mod, name = path.rsplit(".", 1)
    return getattr(__import__(mod, fromlist=[name]), name)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_help_shows_fastmps_documentation(name):
    factory = getattr(fastmp, name)
    text = pydoc.plain(pydoc.render_doc(factory))
    doc = inspect.getdoc(factory)
    assert doc != inspect.getdoc(getattr(multiprocessing, name))
    # It names the object handed out and carries the first line of that
    # object's own documentation.
    assert FACTORIES[name] in " ".join(text.split())
    first = inspect.getdoc(_target(FACTORIES[name])).splitlines()[0]
    first = first.rstrip(".")
    assert " ".join(first.split()) in " ".join(doc.split()), (first, doc)
    # The same for an explicit context's factory.
    ctx = fastmp.get_context("spawn")
    assert inspect.getdoc(getattr(ctx, name)) == doc


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_signature_is_the_stdlibs(name):
    assert inspect.signature(getattr(fastmp, name)) == inspect.signature(
        getattr(multiprocessing, name)
    )
