"""``fastmp.dummy`` is the stdlib's ``multiprocessing.dummy`` (the same API on
threads; ``fastmp.dummy.connection`` is its ``connection``): the module
object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
