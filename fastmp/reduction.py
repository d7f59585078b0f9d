"""``fastmp.reduction`` is the stdlib's ``multiprocessing.reduction``
(ForkingPickler, the reducers, fd passing): the module object itself, so its
state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
