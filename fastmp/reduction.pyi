# Types of fastmp.reduction: at runtime this is the stdlib's
# multiprocessing.reduction itself, so its names are that module's.

import sys
from multiprocessing.reduction import HAVE_SEND_HANDLE as HAVE_SEND_HANDLE
from multiprocessing.reduction import AbstractReducer as AbstractReducer
from multiprocessing.reduction import DupFd as DupFd
from multiprocessing.reduction import ForkingPickler as ForkingPickler
from multiprocessing.reduction import dump as dump
from multiprocessing.reduction import recv_handle as recv_handle
from multiprocessing.reduction import recvfds as recvfds
from multiprocessing.reduction import register as register
from multiprocessing.reduction import send_handle as send_handle
from multiprocessing.reduction import sendfds as sendfds

if sys.version_info < (3, 14):
    from multiprocessing.reduction import ACKNOWLEDGE as ACKNOWLEDGE

__all__ = [
    "send_handle",
    "recv_handle",
    "ForkingPickler",
    "register",
    "dump",
    "DupFd",
    "sendfds",
    "recvfds",
]
