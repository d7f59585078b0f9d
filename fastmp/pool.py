"""``fastmp.pool`` is the stdlib's ``multiprocessing.pool`` (Pool, ThreadPool
and AsyncResult; fastmp has none of its own yet): the module object itself,
so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
