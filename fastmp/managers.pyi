# Types of fastmp.managers, fastmp's own module: each public name has the
# type of the same name in the stdlib's multiprocessing.managers, so code
# typed against multiprocessing type-checks the same with fastmp.

import sys
from multiprocessing.managers import BaseListProxy as BaseListProxy
from multiprocessing.managers import BaseManager as BaseManager
from multiprocessing.managers import BaseProxy as BaseProxy
from multiprocessing.managers import DictProxy as DictProxy
from multiprocessing.managers import ListProxy as ListProxy
from multiprocessing.managers import Namespace as Namespace
from multiprocessing.managers import RemoteError as RemoteError
from multiprocessing.managers import Server as Server
from multiprocessing.managers import SharedMemoryManager as SharedMemoryManager
from multiprocessing.managers import SharedMemoryServer as SharedMemoryServer
from multiprocessing.managers import SyncManager as SyncManager
from multiprocessing.managers import Token as Token
from multiprocessing.managers import ValueProxy as ValueProxy

if sys.version_info >= (3, 14):
    from multiprocessing.managers import SetProxy as SetProxy

__all__ = [
    "BaseManager",
    "SyncManager",
    "BaseProxy",
    "Token",
    "SharedMemoryManager",
]
