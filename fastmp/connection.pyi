# Types of fastmp.connection, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.connection,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.connection import Client as Client
from multiprocessing.connection import Connection as Connection
from multiprocessing.connection import Listener as Listener
from multiprocessing.connection import Pipe as Pipe
from multiprocessing.connection import answer_challenge as answer_challenge
from multiprocessing.connection import deliver_challenge as deliver_challenge
from multiprocessing.connection import wait as wait

__all__ = [
    "Client",
    "Listener",
    "Pipe",
    "wait",
]
