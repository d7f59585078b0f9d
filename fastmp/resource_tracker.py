"""``fastmp.resource_tracker`` is the stdlib's
``multiprocessing.resource_tracker`` (the process that unlinks leaked named
resources): the module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
