"""``fastmp.managers`` is the stdlib's ``multiprocessing.managers`` (Manager,
the proxies, SharedMemoryManager; fastmp has none of its own yet): the
module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
