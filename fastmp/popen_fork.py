"""``fastmp.popen_fork`` is the stdlib's ``multiprocessing.popen_fork``
(launching a child with the fork start method): the module object itself, so
its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
