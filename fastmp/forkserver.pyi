# Types of fastmp.forkserver: at runtime this is the stdlib's
# multiprocessing.forkserver itself, so its names are that module's.

from multiprocessing.forkserver import MAXFDS_TO_SEND as MAXFDS_TO_SEND
from multiprocessing.forkserver import SIGNED_STRUCT as SIGNED_STRUCT
from multiprocessing.forkserver import ForkServer as ForkServer
from multiprocessing.forkserver import (
    connect_to_new_process as connect_to_new_process,
)
from multiprocessing.forkserver import ensure_running as ensure_running
from multiprocessing.forkserver import get_inherited_fds as get_inherited_fds
from multiprocessing.forkserver import main as main
from multiprocessing.forkserver import read_signed as read_signed
from multiprocessing.forkserver import (
    set_forkserver_preload as set_forkserver_preload,
)
from multiprocessing.forkserver import write_signed as write_signed

__all__ = [
    "ensure_running",
    "get_inherited_fds",
    "connect_to_new_process",
    "set_forkserver_preload",
]
