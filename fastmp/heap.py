"""``fastmp.heap`` is the stdlib's ``multiprocessing.heap`` (the heap behind
the stdlib's sharedctypes): the module object itself, so its state is
shared.
"""

from ._alias import passthrough

passthrough(__name__)
