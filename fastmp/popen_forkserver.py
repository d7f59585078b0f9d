"""``fastmp.popen_forkserver`` is the stdlib's
``multiprocessing.popen_forkserver`` (launching a child through the
forkserver): the module object itself, so its state is shared.
"""

from ._alias import passthrough

passthrough(__name__)
