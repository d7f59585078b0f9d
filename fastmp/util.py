"""``fastmp.util`` is the stdlib's ``multiprocessing.util`` (finalizers,
loggers, the at-fork registry): the module object itself, so its state is
shared.
"""

from ._alias import passthrough

passthrough(__name__)
