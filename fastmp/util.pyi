# Types of fastmp.util: at runtime this is the stdlib's
# multiprocessing.util itself, so its names are that module's.

import sys
from multiprocessing.util import DEBUG as DEBUG
from multiprocessing.util import (
    DEFAULT_LOGGING_FORMAT as DEFAULT_LOGGING_FORMAT,
)
from multiprocessing.util import INFO as INFO
from multiprocessing.util import LOGGER_NAME as LOGGER_NAME
from multiprocessing.util import MAXFD as MAXFD
from multiprocessing.util import NOTSET as NOTSET
from multiprocessing.util import SUBDEBUG as SUBDEBUG
from multiprocessing.util import SUBWARNING as SUBWARNING
from multiprocessing.util import Finalize as Finalize
from multiprocessing.util import ForkAwareLocal as ForkAwareLocal
from multiprocessing.util import ForkAwareThreadLock as ForkAwareThreadLock
from multiprocessing.util import (
    abstract_sockets_supported as abstract_sockets_supported,
)
from multiprocessing.util import close_all_fds_except as close_all_fds_except
from multiprocessing.util import debug as debug
from multiprocessing.util import get_logger as get_logger
from multiprocessing.util import get_temp_dir as get_temp_dir
from multiprocessing.util import info as info
from multiprocessing.util import (
    is_abstract_socket_namespace as is_abstract_socket_namespace,
)
from multiprocessing.util import is_exiting as is_exiting
from multiprocessing.util import log_to_stderr as log_to_stderr
from multiprocessing.util import register_after_fork as register_after_fork
from multiprocessing.util import spawnv_passfds as spawnv_passfds
from multiprocessing.util import sub_debug as sub_debug
from multiprocessing.util import sub_warning as sub_warning

if sys.version_info >= (3, 14):
    from multiprocessing.util import WARNING as WARNING
    from multiprocessing.util import warn as warn

__all__ = [
    "sub_debug",
    "debug",
    "info",
    "sub_warning",
    "get_logger",
    "log_to_stderr",
    "get_temp_dir",
    "register_after_fork",
    "is_exiting",
    "Finalize",
    "ForkAwareThreadLock",
    "ForkAwareLocal",
    "close_all_fds_except",
    "SUBDEBUG",
    "SUBWARNING",
]

if sys.version_info >= (3, 14):
    __all__ += ["warn"]
