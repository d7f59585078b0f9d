"""``fastmp.popen_spawn_posix`` is the stdlib's
``multiprocessing.popen_spawn_posix`` (launching a child with the spawn
start method): the module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
