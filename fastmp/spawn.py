"""``fastmp.spawn`` is the stdlib's ``multiprocessing.spawn`` (the spawn start
method's preparation and entry code): the module object itself, so its state
is shared.
"""

from ._alias import passthrough

passthrough(__name__)
