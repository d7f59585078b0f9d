"""``fastmp.forkserver`` is the stdlib's ``multiprocessing.forkserver`` (the
forkserver process): the module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
