"""``fastmp.resource_sharer`` is the stdlib's
``multiprocessing.resource_sharer`` (sharing fds and sockets with other
processes): the module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
